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

With the native kernels (``deepseek._native.p2p_send`` / ``p2p_recv``,
native/src/dsn_p2p.c) the eager protocol runs in C, on the same words: one call per
message, every chunk, waiting with the GIL released (spin, then futex), and returning
to Python only to check aborts, dead peers and the deadline when a wait lasts
(``_p2p_drive``), or to hand over a message that is not the one asked for (another
tag or size, a single-copy header: the Python path stashes it or raises). The
ProcessGroup calls the kernels directly for blocking sends and receives. Both paths
read the chunk counters from the channel words themselves (only this rank writes its
``sent`` and ``acked`` words), so they interleave freely.
"""
import ctypes
import os
import time

import numpy as np

from ... import env as envvars
from ..errors import CollectiveArgumentError, CollectiveError

_K = 2  # p2p slots per channel
_CMA = -1  # header word 2 of a single-copy message
_M32, _H32 = 0xFFFFFFFF, 0x80000000
# int32 words inside a channel block
_SENT, _ACK = 0, 2
# words of the C kernels' state array and their statuses (native/src/dsn_p2p.h)
(_G_BASE, _G_N, _G_ME, _G_CHAN, _G_SLOTS, _G_P, _G_SPIN_MAX, _G_SPIN_CUR, _G_CMA,
 _G_SEND_DONE, _G_RECV_DONE, _G_YIELD_NS, _G_WORDS) = range(13)
P2P_DONE, P2P_PENDING, P2P_ABORT, P2P_OTHER, P2P_NOT_ELIGIBLE = 0, 1, 2, 3, -1
#: what the first kernel call of a message may wait (ns) before Python checks the
#: deadline and the peers; later calls wait at most 50 ms each
FIRST_BUDGET_NS = 20_000_000
_NO_CMA = 2 ** 62
#: a waiting kernel spins this long before it also yields the core between polls
YIELD_AFTER_NS = 2000


def _wrap(v):
    return ((v + _H32) & _M32) - _H32


def p2p_kernels():
    """(send, recv) of deepseek._native, or (None, None) when the native kernels are
    not in use (extension not built, ``DEEPSEEK_NATIVE=0``): the Python path runs."""
    try:
        from deepseek import native as _native
        from deepseek import _native as _ext
    except ImportError:
        return None, None
    if not _native.available():
        return None, None
    return getattr(_ext, "p2p_send", None), getattr(_ext, "p2p_recv", None)


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
        # the C kernels' geometry and resumable progress (native/src/dsn_p2p.h)
        g = self._p2p_state = np.zeros(_G_WORDS, np.int64)
        g[_G_BASE], g[_G_N], g[_G_ME] = self._addr, n, me
        g[_G_CHAN], g[_G_SLOTS], g[_G_P] = self._chan_off, self._p2p_off, self.P
        g[_G_SPIN_MAX] = g[_G_SPIN_CUR] = int(min(self.spin_s, 1.0) * 1e9)
        g[_G_CMA] = _NO_CMA
        g[_G_YIELD_NS] = YIELD_AFTER_NS
        self.p2p_state_addr = g.ctypes.data
        #: the C send / recv (None: the Python protocol below)
        self.p2p_send_kernel, self.p2p_recv_kernel = p2p_kernels()
        #: single-copy sends from this size on, when probe_cma found them usable
        #: (DEEPSEEK_SHM_P2P_CMA_BYTES; 0: never)
        want = envvars.get("DEEPSEEK_SHM_P2P_CMA_BYTES")
        self.p2p_cma_bytes = max(want, _K * self.P + 1) if want else float("inf")
        self.p2p_cma = False
        self.p2p_single_copy = 0  # messages received by the single-copy path (stats)
        # async sends of up to one slot run inline when their slot is free: the
        # receiver then has the data after one copy. Handing a 128 KiB send to the
        # send thread cost the caller 0.23-0.35 ms on the loaded 2-core VM against
        # 0.1-0.13 ms for the copy inline, and the data came later; the pipeline's
        # activations are such sends (docs/parallelism.md)
        self.eager_inline_bytes = self.P

    @property
    def p2p_cma(self):
        """Whether sends of ``p2p_cma_bytes`` and more take the single-copy path (set
        by ShmTransport.probe_cma); the C kernels leave those to Python."""
        return self._p2p_cma

    @p2p_cma.setter
    def p2p_cma(self, on):
        self._p2p_cma = bool(on)
        cut = self.p2p_cma_bytes if on else float("inf")
        self._p2p_state[_G_CMA] = _NO_CMA if cut == float("inf") else int(cut)

    def _p2p_drive(self, ctx, kernel, x, peer, tag, st):
        """Finish a C send/recv whose first call returned ``st``: call it again (it
        resumes where it stopped) in slices of at most 50 ms, between which the
        peers' aborts, their liveness and the deadline are checked. True when done,
        False when the Python path must take the message (nothing was consumed)."""
        clock = time.perf_counter
        addr = self.p2p_state_addr
        next_alive = clock() + 0.5
        while st:
            if st == P2P_OTHER or st == P2P_NOT_ELIGIBLE:
                return False
            if st == P2P_ABORT:
                self._check_abort(ctx)
            now = clock()
            if now >= ctx.deadline:
                raise ctx.timeout_error([peer])
            if now >= next_alive:
                next_alive = now + 0.5
                self._check_alive(ctx, [peer])
            st = kernel(addr, x, peer, tag,
                        int(min(0.05, max(ctx.deadline - now, 0.0)) * 1e9) + 1000)
        return True

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
        s = _wrap(seq + 1)
        idx = self._o_sent[dst]
        w = self._w
        w[idx] = s
        if w[idx + 1]:
            self._post_word(idx, idx + 1, s)  # a sleeper: clear its flag, wake it
        return s

    def slot_free(self, nbytes, dst):
        """Whether a message of ``nbytes`` to ``dst`` would go out now without a wait:
        it fits one slot (at most ``eager_inline_bytes``) and that slot is free. Only
        the receiver changes the answer, and only from False to True."""
        if nbytes > self.eager_inline_bytes:
            return False
        seq = self._w[self._o_sent[dst]]
        return ((self._w[self._o_ack[dst]] - _wrap(seq - _K + 1)) & _M32) < _H32

    def send_nowait(self, ctx, x, dst, tag):
        """Send a small message (at most ``eager_inline_bytes``) if its slot is free
        right now; False (nothing done) when the send would have to wait. Lets an
        async send complete on the calling thread, without the worker's handoff."""
        data = x.view(np.uint8) if x.dtype.itemsize != 1 or x.dtype.kind != "u" else x
        if not self.slot_free(data.size, dst):
            return False
        self.send(ctx, data, dst, tag)
        return True

    def _in_c(self, ctx, kernel, x, peer, tag):
        """True when ``kernel`` (the C send or recv, None when not in use) moved the
        message: a first time budget, then resumed slices (``_p2p_drive``)."""
        if kernel is None:
            return False
        st = kernel(self.p2p_state_addr, x, peer, tag, FIRST_BUDGET_NS)
        return st == P2P_DONE or self._p2p_drive(ctx, kernel, x, peer, tag, st)

    def send(self, ctx, x, dst, tag):
        """Send ``x`` to ``dst`` (in C when the kernels are in use)."""
        if not self._in_c(ctx, self.p2p_send_kernel, x, dst, tag):
            self._send_py(ctx, x, dst, tag)

    def _send_py(self, ctx, x, dst, tag):
        data = x.view(np.uint8) if x.dtype.itemsize != 1 or x.dtype.kind != "u" else x
        total = data.size
        q, mv, P = self._q, self._mv, self.P
        if total <= P:  # one chunk: the latency path, _slot_free/_publish inlined
            w = self._w
            seq = w[self._o_sent[dst]]
            if ((w[self._o_ack[dst]] - seq + _K - 1) & _M32) >= _H32:
                self._slot_free(ctx, dst, seq)
            base = self._o_slot[dst][seq % _K]
            qi = base >> 3
            q[qi], q[qi + 1], q[qi + 2] = tag, total, total
            if total:
                mv[base + 64: base + 64 + total] = data
            s = ((seq + 1 + _H32) & _M32) - _H32
            idx = self._o_sent[dst]
            w[idx] = s
            if w[idx + 1]:
                self._post_word(idx, idx + 1, s)  # a sleeper: clear its flag, wake it
            return
        if self.p2p_cma and total >= self.p2p_cma_bytes:
            seq = self._w[self._o_sent[dst]]
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
            seq = self._w[self._o_sent[dst]]
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
        seq = self._w[self._i_ack[src]]
        idx = self._i_sent[src]
        target = _wrap(seq + 1)
        if ((self._w[idx] - target) & _M32) >= _H32:
            self._wait_word(ctx, idx, idx + 1, target, src, self._missing[src])
        return self._i_slot[src][seq % _K]

    def _release(self, src):
        idx = self._i_ack[src]
        w = self._w
        a = _wrap(w[idx] + 1)
        w[idx] = a
        if w[idx + 1]:
            self._post_word(idx, idx + 1, a)

    def recv(self, ctx, x, src, tag):
        """Receive into ``x`` the next message from ``src`` with this ``tag`` (in C
        when the kernels are in use and no message of another tag is stashed)."""
        if self._stash or not self._in_c(ctx, self.p2p_recv_kernel, x, src, tag):
            self._recv_py(ctx, x, src, tag)

    def _recv_py(self, ctx, x, src, tag):
        data = x.view(np.uint8) if x.dtype.itemsize != 1 or x.dtype.kind != "u" else x
        if not self._stash:  # the latency path, _arrived/_release inlined
            w = self._w
            seq = w[self._i_ack[src]]
            idx = self._i_sent[src]
            if ((w[idx] - seq - 1) & _M32) >= _H32:
                self._wait_word(ctx, idx, idx + 1, _wrap(seq + 1), src, self._missing[src])
            base = self._i_slot[src][seq % _K]
            q, qi = self._q, base >> 3
            if q[qi] == tag and q[qi + 1] == data.size and q[qi + 2] == data.size:
                k = data.size  # one chunk, ours
                if k:
                    memoryview(data)[:] = self._mv[base + 64: base + 64 + k]
                a = ((seq + 1 + _H32) & _M32) - _H32
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
