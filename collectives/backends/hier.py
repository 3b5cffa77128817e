"""Hierarchical transport for groups that span hosts with several ranks on some
(part of the ``cpu`` backend; chosen automatically by ``make_cpu_backend``).

Shared memory moves bytes 10-100x faster than a network link, so an allreduce over
``H`` hosts x ``L`` local ranks should put every byte on the link as few times as it
can, and let the link carry as many streams as there are ranks. The transport holds:

* ``local``: a :class:`ShmTransport` over the ranks of this host;
* ``rails``: rail ``j`` is a :class:`ZmqTransport` over the ranks with local index
  ``j`` on every host (one rank per host; NCCL calls these "rails"). With the same
  ``L`` on every host there are ``L`` rails; otherwise only rail 0 (the leaders);
* ``flat``: a :class:`ZmqTransport` over the whole group, for every op but allreduce.

Allreduce of ``N`` elements (large enough: ``DEEPSEEK_HIER_SPLIT_BYTES``, and several
rails):

1. local reduce-scatter: local rank ``j`` holds the host's sum of shard ``j``
   (``N/L`` elements);
2. rail ``j`` allreduces shard ``j`` across the hosts -- all ``L`` rails at once, in
   parallel TCP streams, each host sending ``2(H-1)/H`` of the message in total;
3. local allgather: every rank gets every shard.

The ``N mod L`` elements left over, and whole messages that are small or on hosts
with one rail, take the leader path: local allreduce, rail 0 allreduces across hosts,
local broadcast from the leader. Every rank decides by the message size alone, so all
ranks take the same path. AVG is summed through the stages and divided once at the
end (averages of averages would be wrong for unequal hosts).

Measured (scripts/bench_multihost.py --suite hier, 2 namespaces x 2 ranks, veth shaped
to 10 Gbit/s, shared 2-core machine): busbw 0.42 / 0.61 / 0.62 / 0.66 GB/s at 1 / 4 / 16
/ 64 MiB, against 0.26 / 0.51 / 0.51 / 0.49 for the flat ZeroMQ mesh and 0.17 / 0.37 /
0.46 / 0.42 for gloo in the same run.

Sequence numbers: each sub-transport counts its own calls (every member makes the same
calls in the same order), and sub-contexts keep the group call's deadline; their
errors name the sub-group ("default/host1", "default/rail0") and the global ranks.
``abort`` goes to every sub-transport, so the ranks of a host whose leader lost a
remote host fail fast instead of waiting in shared memory.

Reductions are not in global rank order (host sums are added across hosts), so
``rank_ordered`` is False: ``deterministic`` groups take ProcessGroup's
allgather-and-add path.
"""
import numpy as np

from .._context import OpContext
from ..reduce_ops import ReduceOp, reduce_into
from .base import Backend


class _Sub:
    """A sub-transport with its own call counter and naming for its contexts."""

    __slots__ = ("t", "name", "ranks", "seq")

    def __init__(self, transport, name, ranks):
        self.t, self.name, self.ranks, self.seq = transport, name, list(ranks), 0

    def ctx(self, parent):
        self.seq += 1
        c = OpContext(parent.op, self.seq, parent.timeout, self.name, self.t.rank,
                      self.ranks)
        c.deadline = parent.deadline
        return c


class HierTransport(Backend):
    """See the module docstring. The parts are built by ``make_cpu_backend``:
    ``local`` (shared memory, this host), ``rail`` (ZeroMQ, this rank's rail; None
    when its local index has no rail), ``flat`` (ZeroMQ, the group); ``n_rails`` is
    how many rails there are and ``host_of`` every group rank's host index."""

    name = "hier"
    rank_ordered = False

    def __init__(self, rank, size, group_name, ranks, host_of, local, rail, n_rails, flat,
                 split_bytes):
        super().__init__(rank, size)
        self.host_of = list(host_of)
        self.hosts = max(self.host_of) + 1
        me = self.host_of[rank]
        mine = [g for g in range(size) if self.host_of[g] == me]
        self.local_rank, self.local_size = mine.index(rank), len(mine)
        self.n_rails = n_rails
        self.local = _Sub(local, f"{group_name}/host{me}", [ranks[g] for g in mine])
        j = self.local_rank
        self.rail = None
        if rail is not None:
            members = [ranks[g] for g in rail_members(self.host_of, j)]
            self.rail = _Sub(rail, f"{group_name}/rail{j}", members)
        self.flat = flat
        self.split_bytes = int(split_bytes)
        self._scratch = {}

    # ------------------------------------------------------------------ allreduce
    def _buf(self, dtype, n):
        b = self._scratch.get(dtype)
        if b is None or b.size < n:
            b = self._scratch[dtype] = np.empty(max(n, 1), dtype)
        return b[:n]

    def allreduce(self, ctx, x, op):
        red = ReduceOp.SUM if op is ReduceOp.AVG else op
        L = self.local_size
        m = x.size // L if self.n_rails == L and L > 1 and x.nbytes >= self.split_bytes \
            else 0
        body = m * L
        loc, rail = self.local, self.rail
        if m:
            shard = self._buf(x.dtype, m)
            loc.t.reduce_scatter(loc.ctx(ctx), shard, x[:body], red)
            if self.hosts > 1:
                rail.t.allreduce(rail.ctx(ctx), shard, red)
        if body < x.size:
            tail = x[body:]
            loc.t.allreduce(loc.ctx(ctx), tail, red)
            if self.local_rank == 0 and self.hosts > 1:
                rail.t.allreduce(rail.ctx(ctx), tail, red)
            loc.t.broadcast(loc.ctx(ctx), tail, 0)
        if m:
            loc.t.allgather(loc.ctx(ctx), x[:body], shard)
        if op is ReduceOp.AVG:
            reduce_into(x, [x], ReduceOp.AVG, avg_divisor=self.size)

    # ------------------------------------------------------------------ the rest: flat
    def broadcast(self, ctx, x, root):
        self.flat.broadcast(ctx, x, root)

    def reduce(self, ctx, x, root, op):
        self.flat.reduce(ctx, x, root, op)

    def allgather(self, ctx, out, x):
        self.flat.allgather(ctx, out, x)

    def gather(self, ctx, out, x, root):
        self.flat.gather(ctx, out, x, root)

    def scatter(self, ctx, out, x, root):
        self.flat.scatter(ctx, out, x, root)

    def reduce_scatter(self, ctx, out, x, op):
        self.flat.reduce_scatter(ctx, out, x, op)

    def all_to_all(self, ctx, out, x):
        self.flat.all_to_all(ctx, out, x)

    def barrier(self, ctx):
        self.flat.barrier(ctx)

    def send(self, ctx, x, dst, tag):
        self.flat.send(ctx, x, dst, tag)

    def recv(self, ctx, x, src, tag):
        self.flat.recv(ctx, x, src, tag)

    # ------------------------------------------------------------------ lifetime
    def _parts(self):
        return [t for t in (self.flat, self.rail and self.rail.t, self.local.t) if t]

    def abort(self, reason):
        for t in self._parts():
            try:
                t.abort(reason)
            except Exception:  # noqa: BLE001 - best effort while failing
                pass

    def close(self):
        for t in self._parts():
            t.close()


def local_index(host_of, g):
    """Local index of group rank ``g`` on its host (its position among that host's
    ranks in group order)."""
    return sum(1 for k in range(g) if host_of[k] == host_of[g])


def rail_members(host_of, j):
    """Group ranks of rail ``j``, by host index (the rank with local index ``j`` on
    every host; every host must have one)."""
    out = {}
    for g, h in enumerate(host_of):
        if local_index(host_of, g) == j:
            out[h] = g
    return [out[h] for h in range(max(host_of) + 1)]
