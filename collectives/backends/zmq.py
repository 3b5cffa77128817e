"""ZeroMQ TCP transport for ranks on different hosts (part of the ``cpu`` backend).

Every rank binds one PULL socket and connects one PUSH socket to each peer; addresses
travel through the store. Messages are ``[header, payload]`` where the header names
the sender and a key -- ``(collective counter, step)`` for collectives, the tag for
point-to-point -- and a receiver stashes messages that arrive before they are asked
for. Algorithms are direct exchanges (every rank talks to every rank): for allreduce
of large messages a reduce-scatter + allgather that moves ``2(n-1)/n`` of the message
per rank, for small ones an allgather and a local reduction. Reductions add the
contributions in rank order, so results are the same bits as the shared-memory path.
"""
import os
import socket
import struct
import threading
import time

import numpy as np
import zmq

from ..errors import CollectiveArgumentError, PeerFailureError
from ..reduce_ops import reduce_into
from .base import Backend

_HDR = struct.Struct("!iBqq")  # src, kind, a, b
_COLL, _P2P, _ABORT = 0, 1, 2


class ZmqTransport(Backend):
    name = "zmq"

    def __init__(self, rank, size, store, prefix, host=None, timeout=300.0):
        super().__init__(rank, size)
        self._zctx = zmq.Context()
        self._pull = self._zctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        bind_host = os.environ.get("DEEPSEEK_ZMQ_BIND", "0.0.0.0")
        port = self._pull.bind_to_random_port(f"tcp://{bind_host}")
        host = host or os.environ.get("DEEPSEEK_ZMQ_HOST") or _my_address()
        store.set(f"{prefix}/zmq/{rank}", f"tcp://{host}:{port}")
        addrs = store.multi_get([f"{prefix}/zmq/{r}" for r in range(size)], timeout=timeout)
        self._push = {}
        for r, a in enumerate(addrs):
            if r != rank:
                s = self._zctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, 2000)
                s.connect(a.decode())
                self._push[r] = s
        self._send_locks = {r: threading.Lock() for r in self._push}
        self._recv_lock = threading.Lock()
        self._stash = {}
        self._aborted = None
        self._cseq = 0
        self.rs_elems = 1024

    # --- messaging -----------------------------------------------------------
    def _send(self, dst, kind, a, b, payload):
        hdr = _HDR.pack(self.rank, kind, a, b)
        with self._send_locks[dst]:
            self._push[dst].send_multipart([hdr, payload.view(np.uint8)], copy=True)

    def _recv(self, ctx, src, kind, a, b):
        key = (src, kind, a, b)
        while True:
            with self._recv_lock:
                q = self._stash.get(key)
                if q:
                    msg = q.pop(0)
                    if not q:
                        del self._stash[key]
                    return msg
                if self._aborted:
                    p, reason = self._aborted
                    raise PeerFailureError(
                        f"{ctx.describe()}: group rank {p} aborted the group: {reason}",
                        peers=[p])
                if self._pull.poll(20):
                    while True:
                        try:
                            hdr, payload = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        s, k, x, y = _HDR.unpack(hdr.bytes)
                        if k == _ABORT:
                            self._aborted = (s, bytes(payload.buffer).decode("utf-8", "replace"))
                            continue
                        self._stash.setdefault((s, k, x, y), []).append(payload.buffer)
                    continue
            if time.perf_counter() >= ctx.deadline:
                raise ctx.timeout_error([src])

    def _recv_into(self, ctx, src, a, b, dest):
        buf = self._recv(ctx, src, _COLL, a, b)
        dest[...] = np.frombuffer(buf, dtype=dest.dtype)

    def _recv_arr(self, ctx, src, a, b, dtype):
        return np.frombuffer(self._recv(ctx, src, _COLL, a, b), dtype=dtype)

    def _next(self):
        self._cseq += 1
        return self._cseq

    def abort(self, reason):
        for r in self._push:
            try:
                self._send(r, _ABORT, 0, 0, str(reason).encode()[:400])
            except Exception:  # noqa: BLE001 - best effort while failing
                pass

    # --- collectives -------------------------------------------------------------
    def barrier(self, ctx):
        c = self._next()
        one = np.zeros(1, np.uint8)
        for r in self._push:
            self._send(r, _COLL, c, 0, one)
        for r in self._push:
            self._recv(ctx, r, _COLL, c, 0)

    def _allgather_list(self, ctx, x, c, step=0):
        for r in self._push:
            self._send(r, _COLL, c, step, x)
        return [x if r == self.rank else self._recv_arr(ctx, r, c, step, x.dtype)
                for r in range(self.size)]

    def allreduce(self, ctx, x, op):
        n, c = self.size, self._next()
        if x.size < max(n, self.rs_elems):
            parts = self._allgather_list(ctx, x.copy(), c)
            reduce_into(x, parts, op)
            return
        bounds = [x.size * r // n for r in range(n + 1)]
        seg = lambda r: slice(bounds[r], bounds[r + 1])  # noqa: E731
        for r in self._push:
            self._send(r, _COLL, c, 0, x[seg(r)])
        me = seg(self.rank)
        parts = [x[me].copy() if r == self.rank else self._recv_arr(ctx, r, c, 0, x.dtype)
                 for r in range(n)]
        reduce_into(x[me], parts, op)
        for r in self._push:
            self._send(r, _COLL, c, 1, x[me])
        for r in self._push:
            self._recv_into(ctx, r, c, 1, x[seg(r)])

    def reduce(self, ctx, x, root, op):
        c = self._next()
        if self.rank != root:
            self._send(root, _COLL, c, 0, x)
            return
        parts = [x.copy() if r == root else self._recv_arr(ctx, r, c, 0, x.dtype)
                 for r in range(self.size)]
        reduce_into(x, parts, op)

    def broadcast(self, ctx, x, root):
        c = self._next()
        if self.rank == root:
            for r in self._push:
                self._send(r, _COLL, c, 0, x)
        else:
            self._recv_into(ctx, root, c, 0, x)

    def allgather(self, ctx, out, x):
        parts = self._allgather_list(ctx, x, self._next())
        m = x.size
        for r, p in enumerate(parts):
            out[r * m:(r + 1) * m] = p

    def gather(self, ctx, out, x, root):
        c, m = self._next(), x.size
        if self.rank != root:
            self._send(root, _COLL, c, 0, x)
            return
        for r in range(self.size):
            if r == root:
                out[r * m:(r + 1) * m] = x
            else:
                self._recv_into(ctx, r, c, 0, out[r * m:(r + 1) * m])

    def scatter(self, ctx, out, x, root):
        c, m = self._next(), out.size
        if self.rank == root:
            for r in self._push:
                self._send(r, _COLL, c, 0, x[r * m:(r + 1) * m])
            out[...] = x[root * m:(root + 1) * m]
        else:
            self._recv_into(ctx, root, c, 0, out)

    def reduce_scatter(self, ctx, out, x, op):
        c, m, me = self._next(), out.size, self.rank
        for r in self._push:
            self._send(r, _COLL, c, 0, x[r * m:(r + 1) * m])
        parts = [x[me * m:(me + 1) * m] if r == me else self._recv_arr(ctx, r, c, 0, x.dtype)
                 for r in range(self.size)]
        reduce_into(out, parts, op)

    def all_to_all(self, ctx, out, x):
        c, me = self._next(), self.rank
        m = x.size // self.size
        for r in self._push:
            self._send(r, _COLL, c, 0, x[r * m:(r + 1) * m])
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
        for s in self._push.values():
            s.close()
        self._pull.close()
        self._zctx.term()


def _my_address():
    """An address peers on other hosts can reach (best effort: the hostname's IP)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
