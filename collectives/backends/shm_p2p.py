"""Point-to-point send/recv of the shared-memory transport (a mixin of ShmTransport).

Each ordered pair (src, dst) has a channel block (``sent`` / ``acked`` counters and
their sleeper flags) and ``K`` = 2 slots of 64 header bytes + ``P`` data bytes. The
header holds three int64 words: tag, total message bytes, bytes in this chunk (or
``_CMA``, see below), and a fourth: the address of the sender's data for ``_CMA``.

- Eager (message up to ``K * P`` bytes, the default ``DEEPSEEK_SHM_P2P_BYTES`` 1 MiB):
  the sender copies each chunk into slot ``seq % K`` once the receiver has acked
  message ``seq - K``, then bumps ``sent``; the receiver copies it out and bumps
  ``acked``. Two copies; a send returns as soon as its chunks are in the slots.
- Single copy (opt-in, ``DEEPSEEK_SHM_P2P_CMA_BYTES``: larger messages, when the
  group found that ranks can read each other's memory with process_vm_readv:
  ``ShmTransport.probe_cma``): the sender publishes only the header with the address
  of its array and waits until the receiver has read the array straight into its
  destination and acked. Such a send
  already needed the receiver before (the slots hold only the first ``K * P``
  bytes), so what may deadlock is unchanged; each byte is copied once, by the kernel,
  instead of twice. Off by default: with a core per rank the eager pipeline, where
  the receiver copies chunk k out while the sender copies k+1 in, measured faster
  (2 ranks, 4 MiB: 1.13-1.24x MPICH against 0.84-0.86x single copy; 64 MiB:
  1.05-1.15x against 1.01-1.07x); single copy moves half the bytes, for oversubscribed
  hosts or memory-bound jobs.

The common case -- one chunk, the expected tag and size, no stashed messages -- runs
through precomputed word indices and memoryviews (no numpy temporaries, no
closures): at 8 bytes the Python cost per send or recv is a few microseconds. Anything
else (another tag first, a size mismatch, several chunks) takes the general path,
which stashes messages of other tags for a later recv of that tag.
"""
import ctypes
import os

import numpy as np

from ... import env as envvars
from ..errors import CollectiveArgumentError, CollectiveError

_K = 2  # p2p slots per channel
_CMA = -1  # header word 2 of a single-copy message
_M32, _H32 = 0xFFFFFFFF, 0x80000000
# int32 words inside a channel block
_SENT, _ACK = 0, 2


def _wrap(v):
    return ((v + _H32) & _M32) - _H32


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _load_readv():
    try:
        fn = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    fn.restype = ctypes.c_ssize_t
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                   ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
    return fn


_readv = _load_readv()


def cma_read(pid, remote, dest):
    """Copy ``dest.nbytes`` bytes at address ``remote`` in process ``pid`` into the
    numpy array ``dest`` (process_vm_readv; the GIL is released during the copy).
    Raises CollectiveError naming the errno when the kernel refuses."""
    n = dest.nbytes
    base = dest.ctypes.data
    local, far = _IoVec(), _IoVec()
    done = 0
    while done < n:
        local.base, local.len = base + done, n - done
        far.base, far.len = remote + done, n - done
        got = _readv(pid, ctypes.byref(local), 1, ctypes.byref(far), 1, 0)
        if got <= 0:
            err = ctypes.get_errno()
            raise CollectiveError(
                f"single-copy receive (process_vm_readv of {n} bytes from pid {pid}) "
                f"failed after {done} bytes: {os.strerror(err) if got < 0 else 'no data'}")
        done += got


class ShmP2P:
    """send/recv over the segment's p2p slots; ShmTransport provides ``_w`` (int32
    words), ``_q`` (int64 words), ``_u8``, ``_chan_word``, ``_wait_word``,
    ``_post_word``, ``_ctrl_word``, ``_check_abort`` and ``_p2p_off``."""

    def _p2p_init(self):
        """Precompute every peer's channel words and slot offsets (called once the
        segment views exist)."""
        from .shm import _PID, HDR_BYTES  # shm imports this module: not at the top

        n, me = self.size, self.rank
        self._slot_stride = HDR_BYTES + self.P
        self._pid_word = [self._ctrl_word(r, _PID) for r in range(n)]
        self._mv = memoryview(self.seg.buf).cast("B")
        self._o_sent = [self._chan_word(me, d, _SENT) for d in range(n)]
        self._o_ack = [self._chan_word(me, d, _ACK) for d in range(n)]
        self._i_sent = [self._chan_word(s, me, _SENT) for s in range(n)]
        self._i_ack = [self._chan_word(s, me, _ACK) for s in range(n)]
        self._o_slot = [[self._p2p_slot(me, d, k) for k in range(_K)] for d in range(n)]
        self._i_slot = [[self._p2p_slot(s, me, k) for k in range(_K)] for s in range(n)]
        self._missing = [(lambda p=p: [p]) for p in range(n)]
        #: single-copy sends from this size on, when probe_cma found them usable
        #: (DEEPSEEK_SHM_P2P_CMA_BYTES; 0: never)
        self.p2p_cma = False
        want = envvars.get("DEEPSEEK_SHM_P2P_CMA_BYTES")
        self.p2p_cma_bytes = max(want, _K * self.P + 1) if want else float("inf")
        self.p2p_single_copy = 0  # messages received by the single-copy path (stats)
        # async sends up to this size run inline when their slot is free: copying 64
        # KiB costs about what the worker thread's wake-up does
        self.eager_inline_bytes = min(self.P, 64 << 10)

    def _p2p_slot(self, src, dst, k):
        return self._p2p_off + ((src * self.size + dst) * _K + k) * self._slot_stride

    # --- send ----------------------------------------------------------------------
    def _slot_free(self, ctx, dst, seq):
        """Wait until slot ``seq % K`` to ``dst`` is free (message seq - K acked)."""
        ack = self._o_ack[dst]
        target = _wrap(seq - _K + 1)
        if ((self._w[ack] - target) & _M32) >= _H32:
            self._wait_word(ctx, ack, ack + 1, target, dst, self._missing[dst])

    def _publish(self, dst, seq):
        s = self._sent[dst] = _wrap(seq + 1)
        idx = self._o_sent[dst]
        w = self._w
        w[idx] = s
        if w[idx + 1]:
            self._post_word(idx, idx + 1, s)  # a sleeper: clear its flag, wake it
        return s

    def send_nowait(self, ctx, x, dst, tag):
        """Send a small message (at most ``eager_inline_bytes``) if its slot is free
        right now; False (nothing done) when the send would have to wait. Lets an
        async send complete on the calling thread, without the worker's handoff."""
        data = x.view(np.uint8) if x.dtype.itemsize != 1 or x.dtype.kind != "u" else x
        total = data.size
        if total > self.eager_inline_bytes:
            return False
        seq = self._sent[dst]
        if ((self._w[self._o_ack[dst]] - _wrap(seq - _K + 1)) & _M32) >= _H32:
            return False
        self.send(ctx, data, dst, tag)
        return True

    def send(self, ctx, x, dst, tag):
        data = x.view(np.uint8) if x.dtype.itemsize != 1 or x.dtype.kind != "u" else x
        total = data.size
        q, mv, P = self._q, self._mv, self.P
        if total <= P:  # one chunk: the latency path, _slot_free/_publish inlined
            seq = self._sent[dst]
            w = self._w
            if ((w[self._o_ack[dst]] - seq + _K - 1) & _M32) >= _H32:
                self._slot_free(ctx, dst, seq)
            base = self._o_slot[dst][seq % _K]
            qi = base >> 3
            q[qi], q[qi + 1], q[qi + 2] = tag, total, total
            if total:
                mv[base + 64: base + 64 + total] = data
            s = self._sent[dst] = ((seq + 1 + _H32) & _M32) - _H32
            idx = self._o_sent[dst]
            w[idx] = s
            if w[idx + 1]:
                self._post_word(idx, idx + 1, s)  # a sleeper: clear its flag, wake it
            return
        if self.p2p_cma and total >= self.p2p_cma_bytes:
            seq = self._sent[dst]
            self._slot_free(ctx, dst, seq)
            base = self._o_slot[dst][seq % _K]
            qi = base >> 3
            q[qi], q[qi + 1], q[qi + 2], q[qi + 3] = tag, total, _CMA, data.ctypes.data
            s = self._publish(dst, seq)
            # the receiver reads our array in place: it must stay until acked
            ack = self._o_ack[dst]
            if ((self._w[ack] - s) & _M32) >= _H32:
                self._wait_word(ctx, ack, ack + 1, s, dst, self._missing[dst])
            return
        off = 0
        while off < total:
            k = min(P, total - off)
            seq = self._sent[dst]
            self._slot_free(ctx, dst, seq)
            base = self._o_slot[dst][seq % _K]
            qi = base >> 3
            q[qi], q[qi + 1], q[qi + 2] = tag, total, k
            mv[base + 64: base + 64 + k] = data[off: off + k]
            self._publish(dst, seq)
            off += k

    # --- recv ----------------------------------------------------------------------
    def _arrived(self, ctx, src):
        """Wait for the next chunk from ``src``; returns its slot's byte offset."""
        seq = self._acked[src]
        idx = self._i_sent[src]
        target = _wrap(seq + 1)
        if ((self._w[idx] - target) & _M32) >= _H32:
            self._wait_word(ctx, idx, idx + 1, target, src, self._missing[src])
        return self._i_slot[src][seq % _K]

    def _release(self, src):
        a = self._acked[src] = _wrap(self._acked[src] + 1)
        idx = self._i_ack[src]
        w = self._w
        w[idx] = a
        if w[idx + 1]:
            self._post_word(idx, idx + 1, a)

    def recv(self, ctx, x, src, tag):
        data = x.view(np.uint8) if x.dtype.itemsize != 1 or x.dtype.kind != "u" else x
        if not self._stash:  # the latency path, _arrived/_release inlined
            seq, w = self._acked[src], self._w
            idx = self._i_sent[src]
            if ((w[idx] - seq - 1) & _M32) >= _H32:
                self._wait_word(ctx, idx, idx + 1, _wrap(seq + 1), src, self._missing[src])
            base = self._i_slot[src][seq % _K]
            q, qi = self._q, base >> 3
            if q[qi] == tag and q[qi + 1] == data.size and q[qi + 2] == data.size:
                k = data.size  # one chunk, ours
                if k:
                    memoryview(data)[:] = self._mv[base + 64: base + 64 + k]
                a = self._acked[src] = ((seq + 1 + _H32) & _M32) - _H32
                idx = self._i_ack[src]
                w[idx] = a
                if w[idx + 1]:
                    self._post_word(idx, idx + 1, a)
                return
        else:
            pending = self._stash.get((src, tag))
            if pending:
                buf = pending.pop(0)
                if not pending:
                    del self._stash[(src, tag)]
                if buf.size != data.size:
                    raise CollectiveArgumentError(
                        f"{ctx.describe()}: message from {src} with tag {tag} has "
                        f"{buf.size} bytes, the receive buffer {data.size}")
                data[...] = buf
                return
        while True:
            got_tag, buf = self._peek_and_read(ctx, src, tag, data)
            if got_tag == tag:
                if buf is not data:
                    raise CollectiveArgumentError(
                        f"{ctx.describe()}: message from {src} with tag {tag} has "
                        f"{buf.size} bytes, the receive buffer {data.size}")
                return
            self._stash.setdefault((src, got_tag), []).append(buf)

    def _peek_and_read(self, ctx, src, tag, data):
        # read the header first to decide whether the message lands in ``data``
        base = self._arrived(ctx, src)
        got_tag, total = self._q[base >> 3], self._q[(base >> 3) + 1]
        dest = data if (got_tag == tag and total == data.size) else np.empty(total, np.uint8)
        off = 0
        while True:
            q, qi = self._q, base >> 3
            k = q[qi + 2]
            if k == _CMA:  # single copy, straight from the sender's array
                cma_read(self._w[self._pid_word[src]], q[qi + 3], dest)
                # a sender that gave up (timeout) aborted before its array could change
                # under us: then what we read may be torn, so fail instead of returning it
                self._check_abort(ctx)
                self.p2p_single_copy += 1
                self._release(src)
                return got_tag, dest
            if k:
                dest[off: off + k] = self._u8[base + 64: base + 64 + k]
            off += k
            self._release(src)
            if off >= total:
                return got_tag, dest
            base = self._arrived(ctx, src)
