"""Raw TCP streams for the bulk data of the ZeroMQ transport (zero-copy, pipelined).

ZeroMQ costs two extra copies of every large message (into its message on send, out
of it into the destination on receive) and moves it as one unit. On a link that the
CPU can barely keep up with, those copies are the limit. So for large payloads each
pair of ranks also shares ``streams`` TCP connections (``DEEPSEEK_TCP_STREAMS``,
default 2) that carry frames ``[header (authenticated, as the ZeroMQ header) |
payload]``; frame ``k`` of a pair goes on stream ``k % streams``, so the pipeline's
chunks take turns on them. Several streams, for a link that one cannot fill (a
per-flow limit, TCP's small-queue limit per socket under a shaper, a NIC that spreads
flows over queues and cores): on the 10 Gbit/s tbf-shaped veth of the 2-core test
machine, in six interleaved runs of scripts/bench_multihost.py, two streams were
faster in most runs for 1-16 MiB (up to 2.3x) and within the (large) noise of the
shared machine at 64-256 MiB (0.8-1.5x); in the quietest run faster at every size,
1.04-1.65x; see docs/multihost.md:

* send: one ``sendmsg([header, payload])`` straight from the numpy buffer (the
  kernel's copy is the only one), on a sender thread per connection (which takes
  every frame queued by then into one ``sendmsg``), so a rank sends and
  receives at once and the caller goes on computing; every send returns a ticket the
  caller waits on before it writes the buffer again (and before the collective
  returns);
* receive: ``recv_into(..., MSG_WAITALL)`` straight into the destination (or a
  reduction scratch): one system call per frame part on a blocking socket.

Connections: every rank listens on its advertised address; rank ``i`` connects to
every rank ``j > i``, once per stream. The acceptor sends a fresh 16-byte challenge and
the connector answers with its rank, the stream index and
``BLAKE2b(key=K_ij, "bulk" + stream + challenge)`` under the pair key
of the ZeroMQ transport (so a replayed answer never verifies). Connections that fail
the proof are closed; the job's ranks are awaited until the deadline.

Frames carry a per-pair counter under the same tag as ZeroMQ messages, so frames are
checked in order across the streams. Receives wait in short slices (``SO_RCVTIMEO``) and call
``idle()`` in between: the ZeroMQ transport checks aborts, lost peers and the deadline
there. A stream that ends (the peer died) raises at once, naming the peer.
"""
import hashlib
import hmac
import os
import queue
import socket
import struct
import threading
import time

_PROOF = struct.Struct("!ii32s")  # rank, stream, proof
_SLICE = 0.05           # seconds a blocked receive waits before calling idle()
_SOCKBUF = 4 << 20      # socket buffers: several chunks in flight on a fast link
_TIMEVAL = struct.pack("@ll", 0, int(_SLICE * 1e6))  # SO_RCVTIMEO: one slice
_BATCH = 256            # frames per sendmsg at most (2 iovecs each; IOV_MAX is 1024)


class BulkError(Exception):
    """A bulk stream broke (``peer`` is the group rank at the other end)."""

    def __init__(self, msg, peer):
        super().__init__(msg)
        self.peer = peer


class _Ticket:
    __slots__ = ("event", "error")

    def __init__(self):
        self.event, self.error = threading.Event(), None


def _tune(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)
        except OSError:
            pass


def _recv_exact(s, n, deadline):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        k = s.recv_into(view[got:])
        if not k:
            raise ConnectionError("closed during the bulk handshake")
        got += k
    return bytes(buf)


class BulkLinks:
    """``streams`` authenticated TCP streams to every peer; see the module docstring.

    ``tx_key[r]`` / ``rx_key[r]`` are the ZeroMQ transport's pair keys; ``publish`` and
    ``lookup`` put this rank's port in the store and read the peers'; ``streams``
    connections per peer.
    """

    def __init__(self, rank, size, bind_ip, host, tx_key, rx_key, publish, lookup,
                 timeout, streams=1):
        if not isinstance(streams, int) or streams < 1:
            raise ValueError(f"streams must be a positive integer, got {streams!r}")
        self.rank, self.size, self.streams = rank, size, streams
        self.socks, self._queues, self._threads = {}, {}, []
        self._tx_n, self._rx_n = {}, {}  # frames sent to / taken from each peer
        fam = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
        lst = socket.socket(fam, socket.SOCK_STREAM)
        try:
            lst.bind(("" if bind_ip == "*" else bind_ip, 0))
            lst.listen(max(8, size * streams))
            publish(lst.getsockname()[1])
            deadline = time.monotonic() + timeout
            ports = lookup()
            for r in range(rank + 1, size):     # connect up, accept from below
                for i in range(streams):
                    self._connect(r, i, ports[r], host[r], tx_key[r], deadline)
            self._accept(lst, rx_key, deadline)
        except BaseException:
            self.close()
            raise
        finally:
            lst.close()
        for (r, i), s in self.socks.items():
            # Blocking sockets (no Python timeout): a receive is one recv(MSG_WAITALL)
            # per frame part, where Python's timeouts would poll() before every recv
            # and return whatever is queued (many syscalls per chunk, each taking the
            # GIL). SO_RCVTIMEO bounds each wait to a slice, so a receive still gets
            # back to idle() regularly; sends block in the kernel (close() shuts the
            # socket down, which wakes them).
            s.settimeout(None)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL)
            q = self._queues[r, i] = queue.SimpleQueue()
            t = threading.Thread(target=self._sender, args=(s, q), daemon=True,
                                 name=f"deepseek-bulk-send-{r}.{i}")
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ set-up
    def _connect(self, r, i, port, host, key, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                s = socket.create_connection((host, port),
                                             timeout=max(0.1, deadline - time.monotonic()))
                challenge = _recv_exact(s, 16, deadline)
                s.sendall(_PROOF.pack(self.rank, i, _proof(key, i, challenge)))
                _tune(s)
                s.settimeout(None)
                self.socks[r, i] = s
                return
            except OSError as e:
                last = e
                time.sleep(0.05)
        raise BulkError(f"cannot open the bulk TCP stream to group rank {r} at "
                        f"{host}:{port}: {last}", r)

    def _accept(self, lst, rx_key, deadline):
        want = {(r, i) for r in range(self.rank) for i in range(self.streams)}
        while want:
            left = deadline - time.monotonic()
            if left <= 0:
                late = sorted({r for r, _ in want})
                raise BulkError(f"group rank(s) {late} did not open their bulk TCP "
                                f"stream(s) to rank {self.rank} in time", late[0])
            lst.settimeout(left)
            try:
                s, _ = lst.accept()
            except socket.timeout:
                continue
            try:
                challenge = os.urandom(16)
                s.settimeout(min(5.0, max(0.1, left)))
                s.sendall(challenge)
                src, i, proof = _PROOF.unpack(_recv_exact(s, _PROOF.size,
                                                          time.monotonic() + 5.0))
                ok = (src, i) in want and hmac.compare_digest(
                    proof, _proof(rx_key[src], i, challenge))
            except (OSError, ConnectionError, struct.error):
                ok = False
            if not ok:  # an outsider, or garbage: drop it and keep waiting
                s.close()
                continue
            _tune(s)
            s.settimeout(None)
            self.socks[src, i] = s
            want.discard((src, i))

    # ------------------------------------------------------------------ sending
    @staticmethod
    def _sender(s, q):
        while True:
            batch = [q.get()]
            # take every frame queued by now (a pipeline queues a whole segment's
            # chunks at once): one sendmsg for all of them, one wake-up of this thread
            while len(batch) < _BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            frames = [f for f in batch if f is not None]
            if frames:
                _send_frames(s, frames)
            if stop:
                return

    def send(self, dst, head, view):
        """Queue ``head`` + ``view`` (bytes-like, kept alive until sent) to ``dst`` as
        its next frame; a ticket to :meth:`wait` on before ``view``'s memory is written
        again. Not thread-safe per peer (frames are numbered in call order)."""
        t = _Ticket()
        k = self._tx_n.get(dst, 0)
        self._tx_n[dst] = k + 1
        self._queues[dst, k % self.streams].put((head, view, t))
        return t

    def next_stream(self, src):
        """The stream that ``src``'s next frame arrives on (advances the count): pass
        it to every :meth:`recv_into` of that frame's parts."""
        k = self._rx_n.get(src, 0)
        self._rx_n[src] = k + 1
        return k % self.streams

    def wait(self, tickets, idle):
        """Wait until every ticket's data has been handed to the kernel."""
        for t in tickets:
            while not t.event.wait(_SLICE):
                idle()

    # ------------------------------------------------------------------ receiving
    def recv_into(self, src, view, idle, stream=0):
        """Fill ``view`` (a writable memoryview of bytes) from ``src``'s ``stream``;
        ``idle()`` runs whenever a wait lasts (it may raise)."""
        s = self.socks[src, stream]
        n, got = len(view), 0
        while got < n:
            try:
                # MSG_WAITALL: the kernel fills the whole rest in one call unless the
                # slice (SO_RCVTIMEO) runs out first, which returns what came so far
                k = s.recv_into(view[got:], n - got, socket.MSG_WAITALL)
            except (BlockingIOError, socket.timeout):  # a slice with nothing at all
                idle()
                continue
            except InterruptedError:
                continue
            except OSError as e:
                raise BulkError(f"the bulk TCP stream from group rank {src} failed: {e}",
                                src) from None
            if k == 0:
                raise BulkError(f"group rank {src} closed its bulk TCP stream (the "
                                f"process ended or died)", src)
            got += k
            if got < n:
                idle()  # a slice ran out part-way: check aborts and peers, go on

    # ------------------------------------------------------------------ lifetime
    def close(self):
        """Stop the senders and close every stream (idempotent)."""
        for q in self._queues.values():
            q.put(None)
        for s in self.socks.values():
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a sender blocked in the kernel
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=2.0)
        for s in self.socks.values():
            try:
                s.close()
            except OSError:
                pass
        self.socks.clear()
        self._queues.clear()
        self._threads = []


def _send_frames(s, frames):
    """Send ``frames`` ([(head, view, ticket)]) as one byte stream: header and payload
    of each in one ``sendmsg`` (with TCP_NODELAY a separate header send would go out
    as a packet of its own), straight from the callers' memory; the loop finishes
    partial sends. Every ticket is set when its frame is in the kernel, or carries the
    error."""
    parts = []
    for head, view, _ in frames:
        parts += (head, view)
    sizes = [len(head) + len(view) for head, view, _ in frames]
    done, sent, left = 0, 0, sum(sizes)  # frames finished, bytes of them, bytes left
    try:
        while left:
            k = s.sendmsg(parts)
            left -= k
            sent += k
            while done < len(frames) and sent >= sizes[done]:
                sent -= sizes[done]
                frames[done][2].event.set()  # the caller may reuse this buffer now
                done += 1
            if left:
                parts = _advance(parts, k)
    except OSError as e:
        for _, _, t in frames[done:]:
            t.error = e
            t.event.set()
        return
    for _, _, t in frames[done:]:
        t.event.set()


def _proof(key, stream, challenge):
    """The connector's answer to ``challenge`` for ``stream`` under the pair ``key``."""
    return hashlib.blake2b(b"bulk" + stream.to_bytes(4, "big") + challenge, key=key,
                           digest_size=32).digest()


def _advance(parts, k):
    """``parts`` (bytes-like) less their first ``k`` bytes (after a partial send)."""
    out = []
    for p in parts:
        m = memoryview(p).cast("B")
        if k >= len(m):
            k -= len(m)
            continue
        out.append(m[k:])
        k = 0
    return out
