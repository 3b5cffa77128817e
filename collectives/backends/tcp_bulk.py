"""Raw TCP streams for the bulk data of the ZeroMQ transport (zero-copy, pipelined).

ZeroMQ costs two extra copies of every large message (into its message on send, out
of it into the destination on receive) and moves it as one unit. On a link that the
CPU can barely keep up with, those copies are the limit. So for large payloads each
pair of ranks also shares one TCP connection that carries frames
``[header (authenticated, as the ZeroMQ header) | payload]``:

* send: ``sendmsg`` straight from the numpy buffer (the kernel's copy is the only
  one), on a sender thread per peer, so a rank sends and receives at once and the
  caller goes on computing; every send returns a ticket the caller waits on before it
  writes the buffer again (and before the collective returns);
* receive: ``recv_into`` straight into the destination (or a reduction scratch).

Connections: every rank listens on its advertised address; rank ``i`` connects to
every rank ``j > i``. The acceptor sends a fresh 16-byte challenge and the connector
answers with its rank and ``BLAKE2b(key=K_ij, "bulk" + challenge)`` under the pair key
of the ZeroMQ transport (so a replayed answer never verifies). Connections that fail
the proof are closed; the job's ranks are awaited until the deadline.

Frames carry a per-stream counter under the same tag as ZeroMQ messages, so frames are
checked in order. Waits poll in short slices and call ``idle()`` in between: the
ZeroMQ transport checks aborts, lost peers and the deadline there. A stream that ends
(the peer died) raises at once, naming the peer.
"""
import hashlib
import hmac
import os
import queue
import socket
import struct
import threading
import time

_PROOF = struct.Struct("!i32s")
_SLICE = 0.05           # seconds a blocked receive waits before calling idle()
_SOCKBUF = 4 << 20      # socket buffers: several chunks in flight on a fast link


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
    """One authenticated TCP stream to every peer; see the module docstring.

    ``tx_key[r]`` / ``rx_key[r]`` are the ZeroMQ transport's pair keys; ``publish`` and
    ``lookup`` put this rank's port in the store and read the peers'.
    """

    def __init__(self, rank, size, bind_ip, host, tx_key, rx_key, publish, lookup,
                 timeout):
        self.rank, self.size = rank, size
        self.socks, self._queues, self._threads = {}, {}, []
        fam = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
        lst = socket.socket(fam, socket.SOCK_STREAM)
        try:
            lst.bind(("" if bind_ip == "*" else bind_ip, 0))
            lst.listen(max(8, size))
            publish(lst.getsockname()[1])
            deadline = time.monotonic() + timeout
            ports = lookup()
            for r in range(rank + 1, size):     # connect up, accept from below
                self._connect(r, ports[r], host[r], tx_key[r], deadline)
            self._accept(lst, rx_key, deadline)
        except BaseException:
            self.close()
            raise
        finally:
            lst.close()
        self._tx = {}
        for r, s in self.socks.items():
            # the receiving side polls in slices (a timeout on its socket object); the
            # sender gets its own object on a dup of the fd with a long timeout, so
            # neither ever has to call settimeout again (both keep the shared fd
            # non-blocking, as Python's timeouts do)
            s.settimeout(_SLICE)
            tx = self._tx[r] = s.dup()
            tx.settimeout(3600.0)
            q = self._queues[r] = queue.SimpleQueue()
            t = threading.Thread(target=self._sender, args=(tx, q), daemon=True,
                                 name=f"deepseek-bulk-send-{r}")
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ set-up
    def _connect(self, r, port, host, key, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                s = socket.create_connection((host, port),
                                             timeout=max(0.1, deadline - time.monotonic()))
                challenge = _recv_exact(s, 16, deadline)
                proof = hashlib.blake2b(b"bulk" + challenge, key=key,
                                        digest_size=32).digest()
                s.sendall(_PROOF.pack(self.rank, proof))
                _tune(s)
                s.settimeout(None)
                self.socks[r] = s
                return
            except OSError as e:
                last = e
                time.sleep(0.05)
        raise BulkError(f"cannot open the bulk TCP stream to group rank {r} at "
                        f"{host}:{port}: {last}", r)

    def _accept(self, lst, rx_key, deadline):
        want = set(range(self.rank))
        while want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BulkError(f"group rank(s) {sorted(want)} did not open their bulk "
                                f"TCP stream to rank {self.rank} in time", min(want))
            lst.settimeout(left)
            try:
                s, _ = lst.accept()
            except socket.timeout:
                continue
            try:
                challenge = os.urandom(16)
                s.settimeout(min(5.0, max(0.1, left)))
                s.sendall(challenge)
                src, proof = _PROOF.unpack(_recv_exact(s, _PROOF.size,
                                                       time.monotonic() + 5.0))
                ok = src in want and hmac.compare_digest(
                    proof, hashlib.blake2b(b"bulk" + challenge, key=rx_key[src],
                                           digest_size=32).digest())
            except (OSError, ConnectionError, struct.error):
                ok = False
            if not ok:  # an outsider, or garbage: drop it and keep waiting
                s.close()
                continue
            _tune(s)
            s.settimeout(None)
            self.socks[src] = s
            want.discard(src)

    # ------------------------------------------------------------------ sending
    @staticmethod
    def _sender(s, q):
        while True:
            item = q.get()
            if item is None:
                return
            head, view, ticket = item
            try:
                s.sendall(head)
                s.sendall(view)  # straight from the caller's memory
            except OSError as e:
                ticket.error = e
            ticket.event.set()

    def send(self, dst, head, view):
        """Queue ``head`` + ``view`` (bytes-like, kept alive until sent) to ``dst``; a
        ticket to :meth:`wait` on before ``view``'s memory is written again."""
        t = _Ticket()
        self._queues[dst].put((head, view, t))
        return t

    def wait(self, tickets, idle):
        """Wait until every ticket's data has been handed to the kernel."""
        for t in tickets:
            while not t.event.wait(_SLICE):
                idle()

    # ------------------------------------------------------------------ receiving
    def recv_into(self, src, view, idle):
        """Fill ``view`` (a writable memoryview of bytes) from ``src``'s stream;
        ``idle()`` runs whenever a wait lasts (it may raise)."""
        s = self.socks[src]
        n, got = len(view), 0
        while got < n:
            try:
                k = s.recv_into(view[got:], n - got)
            except socket.timeout:
                idle()
                continue
            except OSError as e:
                raise BulkError(f"the bulk TCP stream from group rank {src} failed: {e}",
                                src) from None
            if k == 0:
                raise BulkError(f"group rank {src} closed its bulk TCP stream (the "
                                f"process ended or died)", src)
            got += k

    # ------------------------------------------------------------------ lifetime
    def close(self):
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=2.0)
        for s in list(self.socks.values()) + list(getattr(self, "_tx", {}).values()):
            try:
                s.close()
            except OSError:
                pass
        self.socks.clear()
