"""ZeroMQ TCP transport for ranks on different hosts (part of the ``cpu`` backend).

Every rank binds one PULL socket and connects one PUSH socket to each peer; addresses
travel through the store. Messages are ``[header, payload]`` where the header names
the sender and a key -- ``(collective seq, step)`` for collectives, the tag for
point-to-point -- and a receiver stashes messages that arrive before they are asked
for. Algorithms are direct exchanges (every rank talks to every rank): for allreduce
of large messages a reduce-scatter + allgather that moves ``2(n-1)/n`` of the message
per rank, for small ones an allgather and a local reduction. Reductions add the
contributions in rank order, so results are the same bits as the shared-memory path.

Large allreduces (per-peer segments of ``DEEPSEEK_ZMQ_BULK_BYTES``, default 256 KiB,
and up) do not go through ZeroMQ: every pair of ranks also shares a raw TCP stream
(backends/tcp_bulk.py, authenticated by a challenge under the pair key) that sends
straight from the numpy buffer on a sender thread and receives straight into the
destination, in chunks of ``DEEPSEEK_TCP_CHUNK_BYTES`` (1 MiB): chunk k of this rank's
segment is reduced and sent on while chunk k+1 still arrives (chunks take turns on
``DEEPSEEK_TCP_STREAMS`` connections per pair, default 2). Measured between two
network namespaces on the shared 2-core machine, 16 MiB: 102 ms through ZeroMQ
(two extra copies), 24-40 ms over the streams; at 1 Gbit/s 95-99% of the link.
Frame headers are the ZeroMQ header with its tag and a per-stream counter, and carry
the call's signature, so mismatches raise the same way.

Lost peers: each PUSH socket has a monitor; a connection that goes away (the peer
died: its kernel closed the socket) or stops answering ZeroMQ heartbeats
(``DEEPSEEK_ZMQ_HEARTBEAT``, default every 2 s, lost after 5 missed: a partition) fails
a wait for that peer with ``PeerFailureError`` naming its rank and address, after
``_LOST_GRACE`` s without its message (a peer that finished normally may still be
flushing its last messages). A bulk stream that ends fails at once.

Addresses (:mod:`deepseek.collectives.netaddr`): each rank listens only on the address
it advertises -- the interface that routes to ``MASTER_ADDR``, ``DEEPSEEK_SOCKET_IFNAME``
or ``DEEPSEEK_ZMQ_HOST`` -- unless ``DEEPSEEK_ZMQ_BIND`` says otherwise.

Security. The PULL socket is reachable by anyone who can reach the address, so nothing
that arrives is trusted until it is authenticated:

* Keys. ``K = HMAC-SHA256(job token, "deepseek/zmq/v1" + group prefix)``; every rank
  publishes a fresh random 16-byte nonce with its address through the (authenticated)
  store, and messages from rank ``s`` to rank ``d`` carry a 16-byte keyed BLAKE2b tag
  under ``K_sd = BLAKE2b(key=K, "s>d" + nonce_s + nonce_d)``. The tag covers the whole
  header: sender, kind, collective seq / tag, step, the call's signature, a per-pair
  message counter and the payload length. A message from another job, another group,
  an earlier incarnation of this one, or sent to a different rank does not verify.
* Replays. The counter must grow on every message of a pair (one PUSH socket per pair
  keeps them in order), so a recorded message is refused when played again.
* Refused messages -- wrong frame count or size, unknown sender, bad tag, old counter,
  wrong payload length -- are dropped and counted (``refused``, by reason in
  ``refused_by``) and logged on logger ``deepseek.collectives.zmq`` at most every 10 s.
  They never reach the collectives, so an outsider can neither corrupt results nor
  abort the job nor crash a rank.
* Only the header is authenticated, not the payload, and nothing is encrypted: that
  stops anyone who can connect but cannot watch the traffic (measured choice: CURVE,
  which encrypts everything, cost 4x in bandwidth; the tag costs microseconds per
  message). On networks where others can watch or alter traffic, use a private network.

Startup handshake: every rank sends HELLO to every peer and answers each HELLO with an
ACK; a rank is ready when every peer has acknowledged, i.e. both directions of every
pair work. A peer that does not answer within ``DEEPSEEK_ZMQ_CONNECT_TIMEOUT`` (default
60 s, at most the group timeout) fails the group with an error naming its rank and the
address tried.

Mismatched collectives. The header carries the call's signature -- op, reduce op,
root, dtype, bytes -- and the group's sequence number; a receiver compares it with its
own call for that sequence number and raises ``CollectiveMismatchError`` (built by
``OpContext.mismatch_error``, as the debug mode does) instead of misreading the bytes.
The abort it then sends carries the message, so peers that did not see the mismatch
themselves raise ``CollectiveMismatchError`` too.
"""
import hashlib
import hmac
import logging
import os
import struct
import threading
import time

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from ... import env as envvars
from .. import netaddr
from .._context import OpContext
from ..errors import (CollectiveArgumentError, CollectiveError, CollectiveMismatchError,
                      PeerFailureError)
from ..reduce_ops import ReduceOp, reduce_into
from .base import Backend

log = logging.getLogger("deepseek.collectives.zmq")

# magic, version, src, kind, flags, op, reduce, root, dtype, nbytes, a, b, counter, len
_HDR = struct.Struct("!2sBiBBBBi16sqqqQQ")
_MAC = 16
_HDR_LEN = _HDR.size + _MAC
_MAGIC, _VERSION = b"DZ", 1
_COLL, _P2P, _ABORT, _HELLO, _ACK = range(5)
_KINDS = frozenset(range(5))
_F_MISMATCH = 1  # abort flag: the payload is a mismatch report

_OPS = ("", "barrier", "allreduce", "reduce", "broadcast", "allgather", "gather",
        "scatter", "reduce_scatter", "all_to_all")
_OP_CODE = {name: i for i, name in enumerate(_OPS)}
_REDUCE = (None,) + tuple(ReduceOp)
_RED_CODE = {op: i for i, op in enumerate(_REDUCE)}
_NOSIG = (0, 0, -1, b"\0" * 16, 0)
_DRAIN_MAX = 256          # messages handled per poll wake-up before re-checking waits
_LOG_EVERY = 10.0         # seconds between warnings about refused messages
_PAST = 16                # signatures of recent collectives kept for late messages
_LINGER = 2.0             # seconds a closing socket keeps sending what it queued
# A lost connection fails a wait for that peer only after this long without its
# message: a peer that finished and closed normally may still be flushing its last
# messages (for up to _LINGER) after its listening socket has gone.
_LOST_GRACE = _LINGER + 1.0


def _heartbeat_seconds():
    """DEEPSEEK_ZMQ_HEARTBEAT: seconds between pings on idle connections (0: off)."""
    return envvars.get("DEEPSEEK_ZMQ_HEARTBEAT")


_DTYPE_FIELD = {}


def _dtype_field(dtype):
    """The dtype's name as the header's 16-byte field (cached: ``dtype.name`` is slow)."""
    f = _DTYPE_FIELD.get(dtype)
    if f is None:
        # padded as struct's 16s pads it, so equal calls give equal tuples
        f = _DTYPE_FIELD[dtype] = dtype.name.encode()[:16].ljust(16, b"\0")
    return f


def _sig_dict(sig):
    """A readable form of a signature tuple, for mismatch errors."""
    op, red, root, dtype, nbytes = sig
    d = {"op": _OPS[op] if op < len(_OPS) else f"#{op}"}
    if op != _OP_CODE["barrier"]:
        d["dtype"] = dtype.rstrip(b"\0").decode("ascii", "replace")
        d["nbytes"] = nbytes
    if red:
        d["reduce"] = _REDUCE[red].name if red < len(_REDUCE) else f"#{red}"
    if root >= 0:
        d["root"] = root
    return d


class ZmqTransport(Backend):
    name = "zmq"

    def __init__(self, rank, size, store, prefix, host=None, timeout=300.0):
        super().__init__(rank, size)
        token = getattr(store, "_token", None) or (envvars.get("DEEPSEEK_TOKEN") or "")
        if isinstance(token, str):
            token = token.encode()
        if not token:
            raise CollectiveError(
                "the ZeroMQ transport needs the job's secret (the store client's token "
                "or DEEPSEEK_TOKEN) to authenticate peers; none was found")
        connect_timeout = min(float(timeout),
                              envvars.get("DEEPSEEK_ZMQ_CONNECT_TIMEOUT"))
        host = host or netaddr.advertise_address(
            rendezvous_host=getattr(store, "host", None))
        bind_ip = netaddr.bind_address(host)
        self._zctx = zmq.Context()
        self._pull = self._zctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        try:
            if ":" in bind_ip:
                self._pull.setsockopt(zmq.IPV6, 1)
            bind_ep = f"tcp://[{bind_ip}]" if ":" in bind_ip else f"tcp://{bind_ip}"
            try:
                port = self._pull.bind_to_random_port(bind_ep)
            except zmq.ZMQError as e:
                raise CollectiveError(
                    f"ZeroMQ transport: cannot listen on {bind_ip} (advertised address "
                    f"{host}): {e}; set {netaddr.ENV_IFNAME}, {netaddr.ENV_HOST} or "
                    f"{netaddr.ENV_BIND} to an address of this host") from None
            self._nonce = os.urandom(16)
            me = netaddr.zmq_endpoint(host, port)
            store.set(f"{prefix}/zmq/{rank}", f"{me} {self._nonce.hex()}")
            vals = store.multi_get([f"{prefix}/zmq/{r}" for r in range(size)],
                                   timeout=timeout)
            self._addrs, nonces = {}, {}
            for r, v in enumerate(vals):
                ep, _, nonce = v.decode("ascii", "replace").partition(" ")
                try:
                    nonces[r] = bytes.fromhex(nonce)
                except ValueError:
                    nonces[r] = b""
                if len(nonces[r]) != 16 or not ep.startswith("tcp://"):
                    raise CollectiveError(
                        f"ZeroMQ transport: group rank {r} published a bad address record "
                        f"{v[:80]!r} in the store (expected 'tcp://host:port <32 hex>')")
                self._addrs[r] = ep
            gkey = hmac.new(token, b"deepseek/zmq/v1\0" + prefix.encode(),
                            hashlib.sha256).digest()

            def pair(s, d):
                return hashlib.blake2b(b"%d>%d" % (s, d) + nonces[s] + nonces[d],
                                       key=gkey, digest_size=32).digest()
            self._tx_key = {r: pair(rank, r) for r in range(size) if r != rank}
            self._rx_key = {r: pair(r, rank) for r in range(size) if r != rank}
            self._push = {}
            self._monitors, self._monitored = {}, {}
            self._lost = {}  # peer -> monotonic time its connection went away
            hb = _heartbeat_seconds()
            for r in self._tx_key:
                s = self._zctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, int(_LINGER * 1000))
                if hb:
                    # pings on an idle link; no answer within 5 intervals closes the
                    # connection, which the monitor reports (a partition, a dead host)
                    s.setsockopt(zmq.HEARTBEAT_IVL, int(hb * 1000))
                    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(5 * hb * 1000))
                    s.setsockopt(zmq.HEARTBEAT_TTL, int(5 * hb * 1000))
                # connection events of this peer: its death shows up here at once
                self._monitors[r] = s.get_monitor_socket(
                    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
                self._monitored[r] = s
                if ":" in self._addrs[r].split("//", 1)[-1].rsplit(":", 1)[0]:
                    s.setsockopt(zmq.IPV6, 1)
                try:
                    s.connect(self._addrs[r])
                except zmq.ZMQError as e:
                    s.close()
                    raise CollectiveError(f"ZeroMQ transport: cannot connect to group rank "
                                          f"{r} at {self._addrs[r]!r}: {e}") from None
                self._push[r] = s
            self._send_locks = {r: threading.Lock() for r in self._push}
            self._tx_ctr = {r: 0 for r in self._push}
            self._rx_ctr = {r: 0 for r in self._push}
            self._recv_lock = threading.Lock()
            self._stash = {}
            self._aborted = None
            self._mismatch = None       # (src, seq, their sig), found while draining
            self._mismatch_text = None  # what we raised, sent with our abort
            self._cur = (None, None)    # (seq, signature) of the running collective
            self._past = {}             # seq -> (op name, signature), recent ones
            self._acked = set()
            self.refused = 0
            self.refused_by = {}
            self._refused_logged = 0
            self._last_log = 0.0
            self.rs_elems = 1024
            self._bulk = None
            self._handshake(connect_timeout)
            self._start_bulk(store, prefix, bind_ip, connect_timeout)
        except BaseException:
            self.close()
            raise

    # --- authentication ----------------------------------------------------------
    def _refuse(self, reason, detail):
        """Count (by the fixed ``reason``, so an intruder cannot grow the table) and
        log, at most every _LOG_EVERY seconds, a refused message."""
        self.refused += 1
        self.refused_by[reason] = self.refused_by.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            log.warning("group rank %d: refused %d ZeroMQ message(s) since the last report "
                        "(%d in all; latest: %s: %s)", self.rank,
                        self.refused - self._refused_logged, self.refused, reason, detail)
            self._last_log, self._refused_logged = now, self.refused

    def _send(self, dst, kind, a, b, payload, sig=_NOSIG, flags=0):
        data = payload.view(np.uint8) if isinstance(payload, np.ndarray) else payload
        op, red, root, dtype, nbytes = sig
        with self._send_locks[dst]:
            # counter and send under one lock: the counter order is the wire order
            ctr = self._tx_ctr[dst] + 1
            self._tx_ctr[dst] = ctr
            body = _HDR.pack(_MAGIC, _VERSION, self.rank, kind, flags, op, red, root, dtype,
                             nbytes, a, b, ctr, len(data))
            tag = hashlib.blake2b(body, key=self._tx_key[dst], digest_size=_MAC).digest()
            self._push[dst].send_multipart([body + tag, data], copy=True)

    def _accept(self, frames):
        """Verify one received message; the parsed header, or None (refused)."""
        if len(frames) != 2:
            return self._refuse("frame count", f"{len(frames)} frames, expected 2")
        hdr, payload = frames
        raw = hdr.bytes
        if len(raw) != _HDR_LEN or raw[:2] != _MAGIC:
            return self._refuse("malformed header",
                                f"{len(raw)} bytes starting {raw[:8]!r}, expected "
                                f"{_HDR_LEN} starting {_MAGIC!r}")
        body = raw[:_HDR.size]
        f = _HDR.unpack(body)
        src = f[2]
        key = self._rx_key.get(src)
        if key is None:
            return self._refuse("unknown sender", f"sender {src} is not a peer of rank "
                                f"{self.rank} in a group of {self.size}")
        want = hashlib.blake2b(body, key=key, digest_size=_MAC).digest()
        if not hmac.compare_digest(want, raw[_HDR.size:]):
            return self._refuse("bad authentication tag", f"claimed sender {src}")
        # authentic from here on; still checked, since a bug must not crash a peer
        if f[1] != _VERSION or f[3] not in _KINDS:
            return self._refuse("unknown version or kind",
                                f"version {f[1]}, kind {f[3]} from rank {src}")
        if f[12] <= self._rx_ctr[src]:
            return self._refuse("replayed", f"counter {f[12]} from rank {src}, already "
                                f"at {self._rx_ctr[src]}")
        self._rx_ctr[src] = f[12]
        if f[13] != len(payload.buffer):
            return self._refuse("payload length", f"{len(payload.buffer)} bytes from rank "
                                f"{src}, its header says {f[13]}")
        return f

    def _drain(self):
        """Handle what the PULL socket holds (at most _DRAIN_MAX messages)."""
        for _ in range(_DRAIN_MAX):
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            f = self._accept(frames)
            if f is None:
                continue
            src, kind, flags, a, b = f[2], f[3], f[4], f[10], f[11]
            payload = frames[1].buffer
            if kind == _COLL:
                sig = (f[5], f[6], f[7], f[8], f[9])
                past = self._past.get(a)
                if past is not None and past[1] != sig and self._mismatch is None:
                    self._mismatch = (src, a, sig)
                self._stash.setdefault((src, kind, a, b), []).append((sig, payload))
            elif kind == _P2P:
                self._stash.setdefault((src, kind, a, b), []).append((None, payload))
            elif kind == _ABORT:
                if self._aborted is None:
                    self._aborted = (src, bytes(payload).decode("utf-8", "replace"), flags)
            elif kind == _HELLO:
                self._send(src, _ACK, 0, 0, b"")
            elif kind == _ACK:
                self._acked.add(src)

    def _handshake(self, timeout):
        for r in self._push:
            self._send(r, _HELLO, 0, 0, b"")
        deadline = time.monotonic() + timeout
        with self._recv_lock:
            while len(self._acked) < len(self._push):
                if self._pull.poll(20):
                    self._drain()
                elif time.monotonic() >= deadline:
                    missing = sorted(set(self._push) - self._acked)
                    where = ", ".join(f"group rank {r} at {self._addrs[r]}" for r in missing)
                    hint = ""
                    if any(netaddr.is_loopback(self._addrs[r].split("//")[-1]
                                               .rsplit(":", 1)[0].strip("[]"))
                           for r in missing):
                        hint = (f" (a loopback address: on a multi-host job set "
                                f"{netaddr.ENV_IFNAME} or {netaddr.ENV_HOST})")
                    raise PeerFailureError(
                        f"ZeroMQ transport on group rank {self.rank}: no handshake with "
                        f"{where} within {timeout:g}s{hint}; is the address reachable "
                        f"from this host and the peer alive?", peers=missing)

    # --- mismatches ----------------------------------------------------------------
    def _begin(self, ctx, op, x=None, nbytes=0, red=None, root=-1):
        """Start collective ``ctx.seq``: its signature, checked against early arrivals."""
        sig = (_OP_CODE[op], _RED_CODE[red], root,
               _dtype_field(x.dtype) if x is not None else _NOSIG[3], nbytes)
        c = ctx.seq
        self._cur = (c, sig)
        self._past[c] = (op, sig)
        self._past.pop(c - _PAST, None)
        if self._stash:  # early arrivals for this collective: compare them now
            with self._recv_lock:
                if self._mismatch is None:
                    for (s, k, a, _), q in self._stash.items():
                        if k == _COLL and a == c and q and q[0][0] != sig:
                            self._mismatch = (s, c, q[0][0])
                            break
        if self._mismatch is not None:
            self._raise_mismatch(ctx)
        return c, sig

    def _raise_mismatch(self, ctx):
        src, c, theirs = self._mismatch
        op, mine = self._past.get(c, (ctx.op, self._cur[1]))
        if c != ctx.seq:  # found on a message of an earlier collective
            ctx = OpContext(op, c, ctx.timeout, ctx.group, ctx.rank, ctx.ranks)
        calls = [{} for _ in range(self.size)]
        calls[self.rank], calls[src] = _sig_dict(mine), _sig_dict(theirs)
        err = ctx.mismatch_error(calls, source="collective check (ZeroMQ)")
        self._mismatch_text = str(err)
        raise err

    # --- messaging -----------------------------------------------------------
    def _recv(self, ctx, src, kind, a, b):
        key = (src, kind, a, b)
        while True:
            with self._recv_lock:
                if self._mismatch is not None and kind == _COLL:
                    self._raise_mismatch(ctx)
                q = self._stash.get(key)
                if q:
                    sig, msg = q.pop(0)
                    if not q:
                        del self._stash[key]
                    return msg
                if self._aborted:
                    self._raise_aborted(ctx)
                if self._pull.poll(20):
                    self._drain()
                    continue
                self._check_source(ctx, src)
            if time.perf_counter() >= ctx.deadline:
                raise ctx.timeout_error([src])

    def _check_source(self, ctx, src):
        """While waiting on ``src``: raise once its connection has been lost for longer
        than the grace period (a dead host, a partition)."""
        self._check_connections()
        lost = self._lost.get(src)
        if lost is not None and time.monotonic() - lost >= _LOST_GRACE:
            raise self._lost_error(ctx, src, lost)

    def _raise_aborted(self, ctx):
        p, reason, flags = self._aborted
        if flags & _F_MISMATCH:
            raise CollectiveMismatchError(
                f"{ctx.describe()}: group rank {p} found that the ranks called "
                f"different collectives:\n{reason}")
        raise PeerFailureError(
            f"{ctx.describe()}: group rank {p} aborted the group: {reason}", peers=[p])

    # --- bulk data over raw TCP (backends/tcp_bulk.py) -----------------------------
    def _start_bulk(self, store, prefix, bind_ip, timeout):
        from ... import env as envvars
        from .tcp_bulk import BulkLinks

        self.bulk_bytes = envvars.get("DEEPSEEK_ZMQ_BULK_BYTES")
        self._chunk_bytes = envvars.get("DEEPSEEK_TCP_CHUNK_BYTES")
        self._bulk = None
        if self.size < 2 or self.bulk_bytes <= 0:
            return
        hosts = {r: ep.split("//", 1)[-1].rsplit(":", 1)[0].strip("[]")
                 for r, ep in self._addrs.items()}
        keys = [f"{prefix}/bulk/{r}" for r in range(self.size)]
        self._bulk = BulkLinks(
            self.rank, self.size, bind_ip, hosts, self._tx_key, self._rx_key,
            lambda port: store.set(keys[self.rank], str(port)),
            lambda: [int(v) for v in store.multi_get(keys, timeout=timeout)], timeout,
            streams=envvars.get("DEEPSEEK_TCP_STREAMS"))
        self._bulk_tx = {r: 0 for r in self._push}
        self._bulk_rx = {r: 0 for r in self._push}
        self._bulk_hdr = bytearray(_HDR_LEN)
        self._scratch = {}

    def _bulk_idle(self, ctx, src):
        """Between slices of a bulk wait: aborts, lost peers, the deadline."""
        with self._recv_lock:
            if self._pull.poll(0):
                self._drain()
            if self._aborted:
                self._raise_aborted(ctx)
            self._check_source(ctx, src)
        if time.perf_counter() >= ctx.deadline:
            raise ctx.timeout_error([src])

    def _bulk_failed(self, ctx, e):
        """A bulk stream broke: the peer's abort reason if it sent one, else its loss."""
        from .tcp_bulk import BulkError

        end = time.monotonic() + 0.5
        while time.monotonic() < end and not self._aborted:
            with self._recv_lock:
                if self._pull.poll(20):
                    self._drain()
        if self._aborted:
            self._raise_aborted(ctx)
        peer = e.peer if isinstance(e, BulkError) else None
        raise PeerFailureError(f"{ctx.describe()}: {e}",
                               peers=[peer] if peer is not None else []) from None

    def _bulk_send(self, dst, c, b, view, sig):
        op, red, root, dtype, nbytes = sig
        ctr = self._bulk_tx[dst] = self._bulk_tx[dst] + 1
        data = view.view(np.uint8)
        body = _HDR.pack(_MAGIC, _VERSION, self.rank, _COLL, 0, op, red, root, dtype,
                         nbytes, c, b, ctr, data.size)
        tag = hashlib.blake2b(body, key=self._tx_key[dst], digest_size=_MAC).digest()
        return self._bulk.send(dst, body + tag, data)

    def _bulk_wait(self, ctx, tickets):
        try:
            self._bulk.wait(tickets, lambda: self._bulk_idle(ctx, self.rank))
        except OSError as e:
            self._bulk_failed(ctx, e)
        for t in tickets:
            if t.error is not None:
                self._bulk_failed(ctx, t.error)

    def _bulk_recv(self, ctx, src, c, b, dest, sig):
        """Receive frame ``(c, b)`` from ``src`` straight into ``dest``."""
        from .tcp_bulk import BulkError

        idle = lambda: self._bulk_idle(ctx, src)  # noqa: E731
        hb = self._bulk_hdr
        st = self._bulk.next_stream(src)  # header and payload come on one stream
        try:
            self._bulk.recv_into(src, memoryview(hb), idle, st)
            raw = bytes(hb)
            body = raw[:_HDR.size]
            want = hashlib.blake2b(body, key=self._rx_key[src], digest_size=_MAC).digest()
            f = _HDR.unpack(body) if raw[:2] == _MAGIC else None
            if f is None or not hmac.compare_digest(want, raw[_HDR.size:]) \
                    or f[12] != self._bulk_rx[src] + 1:
                # the stream is authenticated at connect time and TCP keeps order, so
                # this is corruption, not an outsider: the stream cannot be trusted
                raise BulkError(f"bad frame on the bulk TCP stream from group rank "
                                f"{src}", src)
            self._bulk_rx[src] = f[12]
            theirs = (f[5], f[6], f[7], f[8], f[9])
            if theirs != sig or f[10] != c or f[11] != b:
                self._mismatch = (src, c, theirs)
                self._raise_mismatch(ctx)
            if f[13] != dest.nbytes:
                raise CollectiveMismatchError(
                    f"{ctx.describe()}: group rank {src} sent {f[13]} bytes, expected "
                    f"{dest.nbytes}")
            self._bulk.recv_into(src, memoryview(dest.view(np.uint8)), idle, st)
        except (BulkError, OSError) as e:
            self._bulk_failed(ctx, e)

    def _scratch_buf(self, dtype, n):
        b = self._scratch.get(dtype)
        if b is None or b.size < n:
            b = self._scratch[dtype] = np.empty(max(n, 1), dtype)
        return b[:n]

    def _allreduce_bulk(self, ctx, x, op, c, sig):
        """Reduce-scatter + allgather, chunk by chunk over the bulk streams: chunk k of
        this rank's segment is reduced (in rank order) and sent on while chunk k+1 is
        still arriving; the allgather receives straight into ``x``."""
        n, me = self.size, self.rank
        peers = [r for r in range(n) if r != me]
        bounds = [x.size * r // n for r in range(n + 1)]
        segs = [x[bounds[r]:bounds[r + 1]] for r in range(n)]
        ce = max(1, self._chunk_bytes // x.itemsize)

        def chunks(m):
            return [(lo, min(lo + ce, m)) for lo in range(0, m, ce)]
        sent = {r: [self._bulk_send(r, c, k, segs[r][lo:hi], sig)
                    for k, (lo, hi) in enumerate(chunks(segs[r].size))] for r in peers}
        mine = segs[me]
        scratch = self._scratch_buf(x.dtype, n * ce)
        out_tickets = []
        gather_base = 1 << 32
        for k, (lo, hi) in enumerate(chunks(mine.size)):
            m = hi - lo
            parts = []
            for r in range(n):
                if r == me:
                    parts.append(mine[lo:hi])
                    continue
                buf = scratch[r * ce:r * ce + m]
                self._bulk_recv(ctx, src=r, c=c, b=k, dest=buf, sig=sig)
                parts.append(buf)
            if me <= 1:
                # out may alias the first input; rank 1 may go first too, since a + b
                # and b + a are the same bits (IEEE operations are commutative), so
                # the result is still that of rank order -- and no copy is needed
                if me == 1:
                    parts[0], parts[1] = parts[1], parts[0]
                reduce_into(mine[lo:hi], parts, op)
            else:
                tmp = scratch[me * ce:me * ce + m]
                reduce_into(tmp, parts, op)
                mine[lo:hi] = tmp
            out_tickets += [self._bulk_send(r, c, gather_base + k, mine[lo:hi], sig)
                            for r in peers]
        for r in peers:
            self._bulk_wait(ctx, sent[r])  # before its segment is overwritten
            for k, (lo, hi) in enumerate(chunks(segs[r].size)):
                self._bulk_recv(ctx, r, c, gather_base + k, segs[r][lo:hi], sig)
        self._bulk_wait(ctx, out_tickets)

    def _recv_arr(self, ctx, src, a, b, dtype, count):
        buf = self._recv(ctx, src, _COLL, a, b)
        if len(buf) != count * dtype.itemsize:
            # signatures agreed, so this is a bug or a peer gone wrong: never misread it
            raise CollectiveMismatchError(
                f"{ctx.describe()}: group rank {src} sent {len(buf)} bytes, expected "
                f"{count} x {dtype}")
        return np.frombuffer(buf, dtype=dtype)

    def _recv_into(self, ctx, src, a, b, dest):
        dest[...] = self._recv_arr(ctx, src, a, b, dest.dtype, dest.size)

    def _check_connections(self):
        """Note connections to peers that went away (or came back), from the monitors."""
        for r, mon in self._monitors.items():
            while mon.poll(0):
                try:
                    ev = recv_monitor_message(mon, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if ev["event"] == zmq.EVENT_DISCONNECTED:
                    self._lost.setdefault(r, time.monotonic())
                elif ev["event"] == zmq.EVENT_CONNECTED:
                    self._lost.pop(r, None)

    def _lost_error(self, ctx, src, since):
        return PeerFailureError(
            f"{ctx.describe()}: lost the connection to group rank {src} (global rank "
            f"{ctx.ranks[src]}) at {self._addrs[src]} {time.monotonic() - since:.1f}s "
            f"ago and it sent nothing since: the peer process died or its host became "
            f"unreachable", peers=[src])

    def abort(self, reason):
        text, flags = str(reason).encode()[:400], 0
        if self._mismatch_text is not None:  # peers raise the mismatch too
            text, flags = self._mismatch_text.encode()[:4000], _F_MISMATCH
        for r in self._push:
            try:
                self._send(r, _ABORT, 0, 0, text, flags=flags)
            except Exception:  # noqa: BLE001 - best effort while failing
                pass

    # --- collectives -------------------------------------------------------------
    def barrier(self, ctx):
        c, sig = self._begin(ctx, "barrier")
        one = np.zeros(1, np.uint8)
        for r in self._push:
            self._send(r, _COLL, c, 0, one, sig)
        for r in self._push:
            self._recv(ctx, r, _COLL, c, 0)

    def _allgather_list(self, ctx, x, c, sig, step=0):
        for r in self._push:
            self._send(r, _COLL, c, step, x, sig)
        return [x if r == self.rank else self._recv_arr(ctx, r, c, step, x.dtype, x.size)
                for r in range(self.size)]

    def allreduce(self, ctx, x, op):
        n = self.size
        c, sig = self._begin(ctx, "allreduce", x, x.nbytes, red=op)
        if x.size < max(n, self.rs_elems):
            parts = self._allgather_list(ctx, x.copy(), c, sig)
            reduce_into(x, parts, op)
            return
        if self._bulk is not None and x.nbytes // n >= self.bulk_bytes:
            return self._allreduce_bulk(ctx, x, op, c, sig)
        bounds = [x.size * r // n for r in range(n + 1)]
        seg = lambda r: slice(bounds[r], bounds[r + 1])  # noqa: E731
        for r in self._push:
            self._send(r, _COLL, c, 0, x[seg(r)], sig)
        me = seg(self.rank)
        cnt = bounds[self.rank + 1] - bounds[self.rank]
        parts = [x[me].copy() if r == self.rank else
                 self._recv_arr(ctx, r, c, 0, x.dtype, cnt) for r in range(n)]
        reduce_into(x[me], parts, op)
        for r in self._push:
            self._send(r, _COLL, c, 1, x[me], sig)
        for r in self._push:
            self._recv_into(ctx, r, c, 1, x[seg(r)])

    def reduce(self, ctx, x, root, op):
        c, sig = self._begin(ctx, "reduce", x, x.nbytes, red=op, root=root)
        if self.rank != root:
            self._send(root, _COLL, c, 0, x, sig)
            return
        parts = [x.copy() if r == root else self._recv_arr(ctx, r, c, 0, x.dtype, x.size)
                 for r in range(self.size)]
        reduce_into(x, parts, op)

    def broadcast(self, ctx, x, root):
        c, sig = self._begin(ctx, "broadcast", x, x.nbytes, root=root)
        if self.rank == root:
            for r in self._push:
                self._send(r, _COLL, c, 0, x, sig)
        else:
            self._recv_into(ctx, root, c, 0, x)

    def allgather(self, ctx, out, x):
        c, sig = self._begin(ctx, "allgather", x, x.nbytes)
        parts = self._allgather_list(ctx, x, c, sig)
        m = x.size
        for r, p in enumerate(parts):
            out[r * m:(r + 1) * m] = p

    def gather(self, ctx, out, x, root):
        c, sig = self._begin(ctx, "gather", x, x.nbytes, root=root)
        m = x.size
        if self.rank != root:
            self._send(root, _COLL, c, 0, x, sig)
            return
        for r in range(self.size):
            if r == root:
                out[r * m:(r + 1) * m] = x
            else:
                self._recv_into(ctx, r, c, 0, out[r * m:(r + 1) * m])

    def scatter(self, ctx, out, x, root):
        c, sig = self._begin(ctx, "scatter", out, out.nbytes, root=root)
        m = out.size
        if self.rank == root:
            for r in self._push:
                self._send(r, _COLL, c, 0, x[r * m:(r + 1) * m], sig)
            out[...] = x[root * m:(root + 1) * m]
        else:
            self._recv_into(ctx, root, c, 0, out)

    def reduce_scatter(self, ctx, out, x, op):
        c, sig = self._begin(ctx, "reduce_scatter", out, out.nbytes, red=op)
        m, me = out.size, self.rank
        for r in self._push:
            self._send(r, _COLL, c, 0, x[r * m:(r + 1) * m], sig)
        parts = [x[me * m:(me + 1) * m] if r == me else
                 self._recv_arr(ctx, r, c, 0, x.dtype, m) for r in range(self.size)]
        reduce_into(out, parts, op)

    def all_to_all(self, ctx, out, x):
        c, sig = self._begin(ctx, "all_to_all", x, x.nbytes)
        me = self.rank
        m = x.size // self.size
        for r in self._push:
            self._send(r, _COLL, c, 0, x[r * m:(r + 1) * m], sig)
        out[me * m:(me + 1) * m] = x[me * m:(me + 1) * m]
        for r in self._push:
            self._recv_into(ctx, r, c, 0, out[r * m:(r + 1) * m])

    # --- point to point ------------------------------------------------------------
    def send(self, ctx, x, dst, tag):
        self._send(dst, _P2P, tag, 0, x.view(np.uint8))

    def recv(self, ctx, x, src, tag):
        buf = self._recv(ctx, src, _P2P, tag, 0)
        data = x.view(np.uint8)
        if len(buf) != data.size:
            raise CollectiveArgumentError(
                f"{ctx.describe()}: message from {src} with tag {tag} has {len(buf)} "
                f"bytes, the receive buffer {data.size}")
        data[...] = np.frombuffer(buf, np.uint8)

    def close(self):
        if getattr(self, "_bulk", None) is not None:
            self._bulk.close()
            self._bulk = None
        for r, s in getattr(self, "_push", {}).items():
            if r in self._monitored:
                try:
                    self._monitored[r].disable_monitor()
                except zmq.ZMQError:
                    pass
            s.close()
        for mon in getattr(self, "_monitors", {}).values():
            mon.close(0)
        self._pull.close()
        self._zctx.term()
