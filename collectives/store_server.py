"""The rendezvous store's server (``deepseek.collectives.store_server``).

Import it from :mod:`deepseek.collectives.store` (``from deepseek.collectives.store
import StoreServer``); the wire protocol, the errors and the client live there, this
module only serves them.

One daemon thread runs a :mod:`selectors` loop (epoll on Linux) over every connection,
so a connection costs a socket and a few small buffers, never a thread: 10,000 idle
sockets do not slow a legitimate client down. Blocking ``get``/``wait`` requests do not
hold a thread either: the request is parked on the first key it misses and answered
when that key appears (or its timeout passes, or the server closes).

Floods from outside the job are cheap to turn away:

* a connection that has not proved the token within ``handshake_timeout`` seconds
  (default 2) is closed; authenticated connections are kept however idle they are
  (workers hold one for the whole job);
* at most ``max_connections`` connections are open (default: half of this process's
  soft ``RLIMIT_NOFILE``, at most 65,536, since the store often shares its process with
  rank 0). When full, the oldest unauthenticated connection is dropped to make room;
  if every connection is authenticated, the newcomer is refused. Running out of file
  descriptors anyway (``EMFILE``) is handled the same way, never by spinning;
* refusals are logged without flooding the log: the first at once with the peer
  address, then at most one summary line every ``refusal_log_interval`` seconds
  (default 10) -- "refused K connections from HOST (n), ... in the last N s".

Within one connection requests are answered strictly in order (replies carry no
sequence number): while a request is parked, later requests from the same connection
wait behind it, exactly as with a blocking server.

Thread safety: the loop thread owns the sockets. The data, the de-duplication table and
the list of keys to wake are guarded by one lock, so ``_handle`` may also be called from
another thread (tests do); the keys it touches are woken by the loop.
"""
from __future__ import annotations

import collections
import errno
import heapq
import hmac
import hashlib
import itertools
import math
import os
import selectors
import socket
import struct
import threading
import time

from .store import (
    DEFAULT_MAX_VALUE, StoreError, _ADD, _AUTH, _CAS, _CHECK, _CLIENT_ID, _DELETE, _ERR,
    _F64, _GET, _HEADER, _I64, _LEN, _MAGIC, _MULTIGET, _MUTATING, _NONCE, _NUMKEYS, _OK,
    _OVERHEAD, _PING, _SET, _TIMEOUT, _WAIT, _reply, _token_bytes, _unpack_fields, log,
)

__all__ = ["StoreServer"]

_HANDSHAKE_LIMIT = 256          # the client's answer is 48 bytes; anything huge is garbage
_RECV_CHUNK = 1 << 18
# Up to this size a reply goes out in one piece with its length prefix, and a request
# is gathered in the connection's buffer; larger requests get a buffer of their own.
_SMALL = 1 << 16
_ACCEPT_BURST = 256             # accepts per wake-up, so a flood cannot starve requests
_FD_PAUSE = 0.1                 # seconds without accepting after EMFILE with nothing to drop
_MAX_CONNECTIONS_CAP = 65536
# accept() errors that mean "no descriptor or memory for a new socket right now".
_NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _positive(name, value):
    try:
        ok = float(value) > 0 and not math.isnan(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"StoreServer: {name} must be a positive number of seconds, "
                         f"got {value!r}")
    return float(value)


def _default_max_connections() -> int:
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 4096
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return _MAX_CONNECTIONS_CAP
    # Leave half the descriptors to the process we live in (rank 0 trains here).
    return max(64, min(_MAX_CONNECTIONS_CAP, soft // 2))


def _peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else peer[0]
        return f"{host}:{peer[1]}"
    return str(peer)


def _peer_host(peer) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class _RefusalLog:
    """Logs refused connections without flooding: the first at once, then summaries.

    After a line is written, refusals are only counted (by peer host and reason) until
    ``interval`` seconds have passed; then one summary line covers them all. A quiet
    interval ends the episode, so the next refusal is again logged at once.
    """

    def __init__(self, logger, interval: float):
        self._log = logger
        self.interval = interval
        self._since = 0.0                      # when the last line was written
        self._due: float | None = None         # when the next summary may be written
        self._count = 0
        self._hosts: collections.Counter = collections.Counter()
        self._reasons: collections.Counter = collections.Counter()

    @property
    def due(self) -> float | None:
        """When :meth:`flush` next has something to do (``None``: nothing pending)."""
        return self._due

    def refuse(self, peer, reason: str, now: float) -> None:
        if self._due is None:
            self._log.warning("store: refused connection from %s: %s (further refusals "
                              "are summarised every %g s)", _peer_text(peer), reason,
                              self.interval)
            self._since, self._due = now, now + self.interval
            return
        self._count += 1
        self._hosts[_peer_host(peer)] += 1
        self._reasons[reason] += 1

    def flush(self, now: float, force: bool = False) -> None:
        if self._due is None or (now < self._due and not force):
            return
        if not self._count:
            self._due = None                   # a quiet interval: the episode is over
            return
        hosts = ", ".join(f"{h} ({n})" for h, n in self._hosts.most_common(5))
        if len(self._hosts) > 5:
            hosts += f" and {len(self._hosts) - 5} more hosts"
        reasons = ", ".join(f"{r}: {n}" for r, n in self._reasons.most_common())
        self._log.warning("store: refused %d connections from %s in the last %.3g s (%s)",
                          self._count, hosts, now - self._since, reasons)
        self._since, self._due = now, now + self.interval
        self._count = 0
        self._hosts.clear()
        self._reasons.clear()


class _Conn:
    """One client connection: its socket, buffers and handshake/parking state."""

    __slots__ = ("sock", "peer", "nonce", "client_id", "deadline", "rbuf", "big",
                 "big_got", "out", "waiter", "closing", "events", "closed")

    def __init__(self, sock, peer, nonce, deadline):
        self.sock = sock
        self.peer = peer
        self.nonce = nonce
        self.client_id: bytes | None = None    # set once the handshake succeeded
        self.deadline = deadline               # handshake deadline
        self.rbuf = bytearray()
        self.big: bytearray | None = None      # a large frame's body, being received
        self.big_got = 0
        self.out: collections.deque = collections.deque()   # memoryviews still to send
        self.waiter: _Waiter | None = None     # the parked request, if any
        self.closing = False                   # close once ``out`` is flushed
        self.events = 0                        # what the selector watches for
        self.closed = False


class _Waiter:
    """A parked get/multi_get/wait: answered when its keys exist or time runs out."""

    __slots__ = ("conn", "op", "keys", "deadline", "key", "done")

    def __init__(self, conn, op, keys, deadline):
        self.conn = conn
        self.op = op
        self.keys = keys
        self.deadline = deadline
        self.key = None        # the key it is registered under (the first one missing)
        self.done = False


class _Park:
    """What ``_handle`` returns for a blocking request that cannot be answered yet."""

    __slots__ = ("op", "keys", "deadline")

    def __init__(self, op, keys, deadline):
        self.op, self.keys, self.deadline = op, keys, deadline


class StoreServer:
    """Hosts the job's store from one daemon thread of this process (see module doc)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token=None, *,
                 max_value_size: int = DEFAULT_MAX_VALUE, handshake_timeout: float = 2.0,
                 max_connections: int | None = None, refusal_log_interval: float = 10.0):
        self.host = host
        self._port = port
        self._token = _token_bytes(token)
        if not isinstance(max_value_size, int) or max_value_size < 0:
            raise ValueError(f"StoreServer: max_value_size must be a non-negative int, "
                             f"got {max_value_size!r}")
        if max_connections is not None and (not isinstance(max_connections, int)
                                            or max_connections < 1):
            raise ValueError(f"StoreServer: max_connections must be a positive int or "
                             f"None, got {max_connections!r}")
        self.max_value_size = max_value_size
        self._frame_limit = max_value_size + _OVERHEAD
        self._handshake_timeout = _positive("handshake_timeout", handshake_timeout)
        self._max_connections = max_connections
        self._refusals = _RefusalLog(log, _positive("refusal_log_interval",
                                                    refusal_log_interval))
        # Guarded by _lock: the data, the per-client last replies, keys to wake.
        self._lock = threading.RLock()
        self._data: dict[str, bytes] = {}
        self._last: dict[bytes, tuple[int, bytes]] = {}   # client id -> (seq, reply)
        self._touched: list[str] = []
        # Owned by the loop thread.
        self._conns: set[_Conn] = set()
        self._pending: dict[_Conn, None] = {}  # unauthenticated, oldest (= due) first
        self._waiting: dict[str, dict[_Waiter, None]] = {}
        self._timers: list = []                # heap of (deadline, n, waiter)
        self._dead_timers = 0                  # entries of waiters answered early
        self._tick = itertools.count()
        self._accept_paused_until: float | None = None
        self._fd_warned = -math.inf
        self._scratch = bytearray(_RECV_CHUNK)           # the loop's receive buffer
        self._scratch_view = memoryview(self._scratch)
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r = self._wake_w = None
        self._thread: threading.Thread | None = None
        self._loop_ident = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "StoreServer":
        """Bind and start serving; ``OSError`` if the port is busy. Returns ``self``."""
        if self._closed:
            raise StoreError("this StoreServer was closed; make a new one")
        if self._listener is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # REUSEADDR only lets us rebind a port in TIME_WAIT; a live listener on the
            # port still makes bind() fail, which is what "busy port" detection needs.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            # A deep backlog (the kernel caps it at somaxconn): a burst of connections
            # must not overflow it, or a legitimate SYN waits a 1 s retransmit.
            sock.listen(4096)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        if self._max_connections is None:
            self._max_connections = _default_max_connections()
        self._listener = sock
        self._port = sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._thread = threading.Thread(target=self._loop, name="deepseek-store",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    @property
    def num_connections(self) -> int:
        """Open client connections (authenticated or still in the handshake)."""
        return len(self._conns)

    def close(self) -> None:
        """Stop serving (idempotent): parked waiters get an error, connections close."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:               # never started
            return
        self._poke()
        if self._thread is not threading.current_thread():
            self._thread.join(10)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            log.warning("store: the server loop did not stop within 10 s")

    def __enter__(self):
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass        # full: a wake-up is already pending (or we are shutting down)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        self._loop_ident = threading.get_ident()
        try:
            while not self._closed:
                events = self._sel.select(self._next_timeout())
                with self._lock:
                    if self._closed:
                        break
                    for key, mask in events:
                        conn = key.data
                        if conn is None:
                            self._accept()
                        elif conn is self._wake_r:
                            self._drain_wake()
                        else:
                            self._on_event(conn, mask)
                    # Cheap checks first: a plain request leaves nothing to wake or expire.
                    if self._touched:
                        if self._waiting:
                            self._wake_touched()
                        else:
                            self._touched.clear()
                    if self._pending or self._timers or self._refusals.due is not None \
                            or self._accept_paused_until is not None:
                        self._expire(time.monotonic())
        except Exception:   # a bug here must not kill the job silently
            log.exception("store: the server loop failed")
        finally:
            self._shutdown()

    def _next_timeout(self):
        due = self._refusals.due
        for t in (self._accept_paused_until,
                  next(iter(self._pending)).deadline if self._pending else None,
                  self._timers[0][0] if self._timers else None):
            if t is not None and (due is None or t < due):
                due = t
        return None if due is None else max(0.0, due - time.monotonic())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _expire(self, now: float) -> None:
        # Handshake deadlines: _pending is in accept order, which is deadline order.
        while self._pending:
            conn = next(iter(self._pending))
            if conn.deadline > now:
                break
            self._refuse(conn, f"no handshake within {self._handshake_timeout:g} s", now)
        while self._timers and self._timers[0][0] <= now:
            _, _, w = heapq.heappop(self._timers)
            if w.done:
                self._dead_timers -= 1
            else:
                w.deadline = math.inf          # its entry is gone: not a dead one
                missing = [k for k in w.keys if k not in self._data]
                self._finish(w, _reply(_TIMEOUT, *(k.encode() for k in missing)))
        self._refusals.flush(now)
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._sel.register(self._listener, selectors.EVENT_READ, None)

    def _shutdown(self) -> None:
        # Runs on the loop thread, also after a crash of the loop.
        self._closed = True
        with self._lock:
            for w in [w for ws in self._waiting.values() for w in ws]:
                self._finish(w, _reply(_ERR, b"store is shutting down"))
            self._refusals.flush(time.monotonic(), force=True)
            for conn in list(self._conns):
                self._flush(conn)              # best effort: error replies are small
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._close(conn)
        for s in (self._listener, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        self._sel.close()

    # ------------------------------------------------------------------ connections
    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(_ACCEPT_BURST):
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno not in _NO_RESOURCES:
                    continue                   # e.g. ECONNABORTED: that peer is gone
                if self._evict("out of file descriptors", now):
                    continue
                # Nothing to drop: stop accepting for a moment instead of spinning on a
                # listener that stays readable.
                if now - self._fd_warned > self._refusals.interval:
                    self._fd_warned = now
                    log.warning("store: out of file descriptors (%s) with %d connections "
                                "open; pausing accept for %g s", e.strerror,
                                len(self._conns), _FD_PAUSE)
                self._sel.unregister(self._listener)
                self._accept_paused_until = now + _FD_PAUSE
                return
            if len(self._conns) >= self._max_connections and \
                    not self._evict("too many connections", now):
                self._refusals.refuse(peer, "too many connections", now)
                sock.close()
                continue
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            conn = _Conn(sock, peer, os.urandom(_NONCE), now + self._handshake_timeout)
            self._conns.add(conn)
            self._pending[conn] = None
            self._set_events(conn)
            self._send(conn, _MAGIC + conn.nonce, framed=False)

    def _evict(self, reason: str, now: float) -> bool:
        """Drop the oldest unauthenticated connection to make room; False if none."""
        if not self._pending:
            return False
        self._refuse(next(iter(self._pending)), f"dropped unauthenticated ({reason})", now)
        return True

    def _refuse(self, conn: _Conn, reason: str, now: float) -> None:
        self._refusals.refuse(conn.peer, reason, now)
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._pending.pop(conn, None)
        if conn.waiter is not None:
            self._unpark(conn.waiter)
        if conn.events:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.events = 0
        conn.out.clear()
        try:
            conn.sock.close()
        except OSError:
            pass

    def _set_events(self, conn: _Conn) -> None:
        """Watch for what the connection can use: output to flush, input to read."""
        if conn.closed:
            return
        want = 0
        if conn.out:
            want |= selectors.EVENT_WRITE
        blocked = conn.waiter is not None or conn.out
        # A connection whose requests are held up (parked, or replies not read) may
        # buffer one frame ahead, no more: reading on would let it grow our memory.
        if not conn.closing and not (blocked and len(conn.rbuf) > self._frame_limit + 4):
            want |= selectors.EVENT_READ
        if want == conn.events:
            return
        if conn.events and want:
            self._sel.modify(conn.sock, want, conn)
        elif want:
            self._sel.register(conn.sock, want, conn)
        else:
            self._sel.unregister(conn.sock)
        conn.events = want

    def _on_event(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE and not conn.closed:
                self._flush(conn)
                self._process(conn)
            if mask & selectors.EVENT_READ and not conn.closed:
                self._read(conn)
        except Exception:   # never let one connection take the server down
            log.exception("store: unexpected error serving %s", _peer_text(conn.peer))
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        # Into one reused buffer: recv(256 KiB) would allocate (and, above malloc's
        # mmap threshold, map and unmap) 256 KiB per call, which doubled the cost of a
        # small request.
        big = conn.big
        try:
            if big is not None:     # the body of a large frame goes straight into place
                n = conn.sock.recv_into(memoryview(big)[conn.big_got:])
            else:
                n = conn.sock.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            if conn.client_id is None:
                self._refuse(conn, "disconnected before authenticating", time.monotonic())
            else:
                self._close(conn)
            return
        if big is None:
            conn.rbuf += self._scratch_view[:n]
        else:
            conn.big_got += n
            if conn.big_got < len(big):
                return
            conn.big = None
            self._answer(conn, memoryview(big))
        self._process(conn)

    def _process(self, conn: _Conn) -> None:
        """Answer the complete frames buffered on ``conn``, in order.

        Stops at a parked request or at replies the peer has not read yet (it resumes
        when those clear), and at a frame that is not complete yet.
        """
        buf = conn.rbuf
        while not conn.closed and not conn.closing and conn.waiter is None and not conn.out:
            if len(buf) < 4:
                break
            (n,) = _LEN.unpack_from(buf)
            handshake = conn.client_id is None
            if n > (_HANDSHAKE_LIMIT if handshake else self._frame_limit):
                del buf[:]
                if handshake:
                    self._authenticate(conn, b"")
                else:
                    # We cannot skip the body without reading it: answer and hang up.
                    log.warning("store: request of %d bytes from %s exceeds the limit",
                                n, _peer_text(conn.peer))
                    conn.closing = True
                    self._send(conn, _reply(_ERR, b"request too large (%d bytes, limit %d)"
                                            % (n, self._frame_limit)))
                break
            if len(buf) < 4 + n:
                if n > _SMALL:
                    # A large frame: receive the rest of its body into a buffer of its
                    # own size (no growing and copying of rbuf on every chunk).
                    conn.big = bytearray(n)
                    conn.big_got = len(buf) - 4
                    conn.big[:conn.big_got] = memoryview(buf)[4:]
                    del buf[:]
                break
            with memoryview(buf) as view:
                payload = bytes(view[4:4 + n])
            del buf[:4 + n]
            self._answer(conn, payload)
        if conn.events != selectors.EVENT_READ or conn.out or conn.waiter is not None:
            self._set_events(conn)      # the common case (all answered) changes nothing

    def _answer(self, conn: _Conn, payload) -> None:
        """Act on one complete frame: the handshake answer, or a request."""
        if conn.client_id is None:
            self._authenticate(conn, bytes(payload))
            return
        reply = self._handle(conn.client_id, payload)
        if isinstance(reply, _Park):
            self._park(conn, reply)
        else:
            self._send(conn, reply)

    def _authenticate(self, conn: _Conn, answer: bytes) -> None:
        expected = hmac.new(self._token, conn.nonce, hashlib.sha256).digest()
        if len(answer) != _NONCE + _CLIENT_ID or not hmac.compare_digest(answer[:_NONCE],
                                                                         expected):
            self._refusals.refuse(conn.peer, "bad token", time.monotonic())
            self._pending.pop(conn, None)
            conn.closing = True
            self._send(conn, _reply(_AUTH, b"authentication failed"))
            return
        self._pending.pop(conn, None)
        conn.client_id = answer[_NONCE:]
        self._send(conn, _reply(_OK))

    def _send(self, conn: _Conn, payload: bytes, framed: bool = True) -> None:
        """Queue ``payload`` (as a frame unless ``framed`` is false) and send what fits."""
        if conn.closed:
            return
        if framed:
            if len(payload) <= _SMALL:
                # One segment for prefix and reply; small copies are cheaper than sends.
                payload = _LEN.pack(len(payload)) + payload
            else:
                conn.out.append(memoryview(_LEN.pack(len(payload))))
        if not conn.out:
            # The usual case: nothing queued, and the reply fits in the socket buffer.
            try:
                sent = conn.sock.send(payload)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent == len(payload):
                if conn.closing:
                    self._close(conn)
                return
            payload = memoryview(payload)[sent:]
        conn.out.append(memoryview(payload))
        self._flush(conn)
        if conn.out or conn.events & selectors.EVENT_WRITE:
            self._set_events(conn)

    def _flush(self, conn: _Conn) -> None:
        """Send queued output until the socket is full; close if that was the last."""
        out = conn.out
        try:
            while out:
                head = out[0]
                sent = conn.sock.send(head)
                if sent < len(head):
                    out[0] = head[sent:]
                    return
                out.popleft()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.closing:
            self._close(conn)

    # ------------------------------------------------------------------ parking
    def _park(self, conn: _Conn, park: _Park) -> None:
        w = _Waiter(conn, park.op, park.keys, park.deadline)
        conn.waiter = w
        if w.deadline != math.inf:
            heapq.heappush(self._timers, (w.deadline, next(self._tick), w))
        self._retry(w)

    def _retry(self, w: _Waiter) -> None:
        """Answer ``w`` if all its keys exist, else register it on the first missing."""
        data = self._data
        for k in w.keys:
            if k not in data:
                w.key = k
                self._waiting.setdefault(k, {})[w] = None
                return
        if w.op == _WAIT:
            self._finish(w, _reply(_OK))
        else:
            self._finish(w, _reply(_OK, *(data[k] for k in w.keys)))

    def _unpark(self, w: _Waiter) -> None:
        w.done = True
        if w.deadline != math.inf:
            # Answered before its timeout: its heap entry is dead. Compact the heap once
            # most entries are, so many short waits with long timeouts cost no memory.
            self._dead_timers += 1
            if self._dead_timers > 1024 and self._dead_timers * 2 > len(self._timers):
                self._timers = [e for e in self._timers if not e[2].done]
                heapq.heapify(self._timers)
                self._dead_timers = 0
        w.conn.waiter = None
        ws = self._waiting.get(w.key)
        if ws is not None:
            ws.pop(w, None)
            if not ws:
                del self._waiting[w.key]

    def _finish(self, w: _Waiter, reply: bytes) -> None:
        self._unpark(w)
        conn = w.conn
        try:
            self._send(conn, reply)
            self._process(conn)      # requests that queued up behind the parked one
        except Exception:            # one connection's trouble must not stop the loop
            log.exception("store: unexpected error serving %s", _peer_text(conn.peer))
            self._close(conn)

    def _wake_touched(self) -> None:
        # Answering a waiter may run requests queued behind it, which touch more keys.
        while self._touched:
            keys, self._touched = self._touched, []
            for k in dict.fromkeys(keys):
                ws = self._waiting.pop(k, None)
                for w in ws or ():
                    w.key = None
                    if not w.done:
                        self._retry(w)

    # ------------------------------------------------------------------ requests
    def _handle(self, client_id: bytes, payload: bytes):
        """Answer one request: the reply frame's payload, or a :class:`_Park`."""
        try:
            if len(payload) < _HEADER.size:
                raise ValueError("short request")
            op, seq, nargs = _HEADER.unpack_from(payload)
            args = _unpack_fields(payload, _HEADER.size, nargs)
            if not isinstance(payload, bytes):     # a large frame's buffer: own the data
                args = [bytes(a) for a in args]
        except (ValueError, struct.error) as e:
            return _reply(_ERR, f"malformed request: {e}".encode())
        with self._lock:
            if op in _MUTATING:
                last = self._last.get(client_id)
                if last is not None and last[0] == seq:
                    return last[1]          # a resend after a reconnect: apply once
            touched = len(self._touched)
            try:
                reply = self._dispatch(op, args)
            except StoreError as e:
                reply = _reply(_ERR, str(e).encode())
            except (ValueError, UnicodeDecodeError, struct.error, IndexError) as e:
                reply = _reply(_ERR, f"bad arguments for op {op}: {e}".encode())
            if op in _MUTATING:
                self._last[client_id] = (seq, reply)
            if len(self._touched) > touched and threading.get_ident() != self._loop_ident \
                    and self._thread is not None:
                self._poke()                # the loop wakes the waiters on those keys
            return reply

    def _dispatch(self, op: int, args: list[bytes]):
        # Caller holds _lock.
        data = self._data
        if self._closed:
            raise StoreError("store is shutting down")

        if op == _SET:
            key, value = args
            if len(value) > self.max_value_size:
                raise StoreError(f"value for {key.decode()!r} is {len(value)} bytes, "
                                 f"over the limit of {self.max_value_size}")
            key = key.decode()
            data[key] = value
            self._touched.append(key)
            return _reply(_OK)
        if op in (_GET, _MULTIGET, _WAIT):
            (timeout,) = _F64.unpack(args[0])
            keys = [f.decode() for f in args[1:]]
            missing = [k for k in keys if k not in data]
            if not missing:
                return _reply(_OK) if op == _WAIT else _reply(_OK, *(data[k] for k in keys))
            timeout = max(0.0, timeout)     # NaN and negative mean "do not wait"
            if timeout <= 0:
                return _reply(_TIMEOUT, *(k.encode() for k in missing))
            return _Park(op, keys, time.monotonic() + timeout)
        if op == _ADD:
            key, amount = args
            (amount,) = _I64.unpack(amount)
            key = key.decode()
            try:
                value = int(data.get(key, b"0")) + amount
            except ValueError:
                raise StoreError(f"add: value of key {key!r} is not an integer") from None
            data[key] = str(value).encode()
            self._touched.append(key)
            return _reply(_OK, _I64.pack(value))
        if op == _CAS:
            key, expected, desired = args
            key = key.decode()
            current = data.get(key)
            if (current is None and expected == b"") or current == expected:
                data[key] = desired
                self._touched.append(key)
                return _reply(_OK, desired)
            return _reply(_OK, b"" if current is None else current)
        if op == _CHECK:
            return _reply(_OK, *(f for f in args if f.decode() not in data))
        if op == _DELETE:
            (key,) = args
            return _reply(_OK, b"1" if data.pop(key.decode(), None) is not None else b"0")
        if op == _NUMKEYS:
            return _reply(_OK, _I64.pack(len(data)))
        if op == _PING:
            return _reply(_OK)
        raise StoreError(f"unknown op {op}")
