"""The ``mpi`` backend: mpi4py on an MPI communicator.

Chosen automatically under mpirun/srun when mpi4py is importable. Install it with the
``mpi`` extra (``pip install deepseek[mpi]``: mpi4py plus the ``mpich`` wheel). MPI has
no float16/bfloat16 reductions, so those travel as float32 (accumulating in float32,
as the other backends do) and are rounded once at the end; AVG is a SUM followed by a
division.

Waits never block inside MPI: every op is started non-blocking (``Iallreduce``,
``Isend``, ...) and :meth:`MpiBackend._wait` polls it with ``Test`` -- a pure spin for
the first ``SPIN_S`` seconds (small messages complete there, at the latency of the
blocking call), then a backoff that sleeps from 10 us up to 1 ms between tests. In the
backoff the wait honours the op's deadline (``CollectiveTimeoutError`` naming op, seq,
group and rank) and reads the peers' leave notices (``PeerFailureError`` at once when
a peer it needs has left; see :mod:`deepseek.collectives.mpi_abort`, which also aborts
the job on an uncaught exception). Setting up the world installs those hooks.

A wait that times out leaves its MPI request pending (MPI cannot cancel a collective):
the group is broken, and the buffer must be considered owned by MPI until the job ends.
"""
import time

import numpy as np

from .. import mpi_abort
from .._context import OpContext
from ..errors import CollectiveArgumentError, PeerFailureError
from ..reduce_ops import ReduceOp, _HALF
from .base import Backend

#: seconds of pure spinning on Test before a wait starts to sleep
SPIN_S = 1e-3
_SLEEP_MIN, _SLEEP_MAX = 1e-5, 1e-3


def _mpi():
    from mpi4py import MPI  # imported lazily: MPI_Init happens here

    return MPI


class MpiBackend(Backend):
    """A group on one MPI communicator.

    ``ranks`` are the members' ranks in ``COMM_WORLD``; ``gen``/``cid`` name the
    communicator alike on every member (for leave notices); ``coll_done``, ``sent`` and
    ``recvd`` count what this rank completed (per peer, by group rank for the latter).
    """

    name = "mpi"

    def __init__(self, comm, ranks=None, gen=None, cid=None):
        MPI = _mpi()
        super().__init__(comm.Get_rank(), comm.Get_size())
        self.comm = comm
        self.ranks = list(range(self.size)) if ranks is None else list(ranks)
        self.gen, self.cid = gen, cid
        self.coll_started = self.coll_done = 0
        self.sent = [0] * self.size
        self.recvd = [0] * self.size
        self._nsub = 0
        self._ops = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.MAX: MPI.MAX,
                     ReduceOp.MIN: MPI.MIN, ReduceOp.PRODUCT: MPI.PROD}
        self._in_place = MPI.IN_PLACE
        self._closed = False
        if gen is not None:
            mpi_abort.register(self)

    @classmethod
    def world(cls):
        """The backend on ``COMM_WORLD``; installs the abort / leave-notice hooks."""
        MPI = _mpi()
        mpi_abort.install()
        gen = mpi_abort.new_generation()
        return cls(MPI.COMM_WORLD, gen=gen, cid=f"{gen}.0")

    def subgroup(self, ranks, timeout):
        """A backend on the sub-communicator of ``ranks`` (collective over all ranks).

        ``Split`` blocks inside MPI, so an ``Ibarrier`` (which polls, with ``timeout``
        seconds: the new group's timeout) makes sure every rank is there first.
        """
        comm = self.comm
        self._nsub += 1
        ctx = OpContext("new_group", self.coll_started + 1, timeout, "default", self.rank,
                        self.ranks)
        self.barrier(ctx)
        color = 0 if comm.Get_rank() in ranks else _mpi().UNDEFINED
        key = ranks.index(comm.Get_rank()) if color == 0 else 0
        sub = comm.Split(color, key)
        if color != 0:
            return None
        return MpiBackend(sub, [self.ranks[r] for r in ranks], self.gen,
                          f"{self.gen}.{self._nsub}")

    # ------------------------------------------------------------------ waiting
    def _wait(self, ctx, req, peer=None, kind="coll"):
        """Poll ``req`` until done, the deadline, or a leave notice that dooms it.

        ``kind`` is "coll", "send" or "recv" (``peer``: the group rank of the other
        side); it says which counts of a notice matter.
        """
        test = req.Test
        if test():
            return
        now = time.perf_counter()
        spin_end = now + SPIN_S
        while now < spin_end:
            if test():
                return
            now = time.perf_counter()
        delay, seen = _SLEEP_MIN, -1
        while not test():
            version = mpi_abort.poll()
            if version != seen:
                seen = version
                self._check_notices(ctx, peer, kind)
            if time.perf_counter() >= ctx.deadline:
                if peer is not None:
                    raise ctx.timeout_error([peer], "peer")
                raise ctx.timeout_error([r for r in range(self.size) if r != self.rank],
                                        "one or more of peers")
            time.sleep(delay)
            delay = min(delay * 2, _SLEEP_MAX)

    def _check_notices(self, ctx, peer, kind):
        if self.gen is None:
            return
        got = mpi_abort.notices(self.gen)
        if not got:
            return
        index = {g: i for i, g in enumerate(self.ranks)}
        for g, info in got.items():
            i = index.get(g)
            counts = info["comms"].get(self.cid)
            if i is None or i == self.rank or counts is None:
                continue
            coll, sent_me, recvd_from_me = counts
            if kind == "coll" and self.coll_started > coll:
                what = (f"after completing {coll} collectives of this group; this is "
                        f"collective {self.coll_started}, which it will never join")
            elif kind == "recv" and i == peer and self.recvd[i] >= sent_me:
                what = (f"after sending {sent_me} messages to this rank, all received; "
                        "this receive can never be matched")
            elif kind == "send" and i == peer and self.sent[i] >= recvd_from_me:
                what = (f"after receiving {recvd_from_me} messages from this rank; this "
                        "send can never be received")
            else:
                continue
            raise PeerFailureError(
                f"{ctx.describe()}: group rank {i} (global rank {g}) {info['why']} "
                f"{what}", peers=[i])

    def _coll(self, ctx, req):
        """Wait for a collective this rank just started (counted for leave notices)."""
        self.coll_started += 1
        self._wait(ctx, req)
        self.coll_done += 1

    # ------------------------------------------------------------------ collectives
    @staticmethod
    def _wide(x):
        return x.astype(np.float32) if x.dtype in _HALF else None

    def _finish(self, x, wide, op):
        if op is ReduceOp.AVG:
            t = wide if wide is not None else x
            np.divide(t, t.dtype.type(self.size), out=t)
        if wide is not None:
            np.copyto(x, wide, casting="unsafe")

    def allreduce(self, ctx, x, op):
        wide = self._wide(x)
        buf = wide if wide is not None else x
        self._coll(ctx, self.comm.Iallreduce(self._in_place, buf, self._ops[op]))
        self._finish(x, wide, op)

    def reduce(self, ctx, x, root, op):
        wide = self._wide(x)
        buf = wide if wide is not None else x
        if self.rank == root:
            self._coll(ctx, self.comm.Ireduce(self._in_place, buf, self._ops[op], root=root))
            self._finish(x, wide, op)
        else:
            self._coll(ctx, self.comm.Ireduce(buf, None, self._ops[op], root=root))

    def broadcast(self, ctx, x, root):
        self._coll(ctx, self.comm.Ibcast(x.view(np.uint8), root=root))

    def allgather(self, ctx, out, x):
        self._coll(ctx, self.comm.Iallgather(x.view(np.uint8), out.view(np.uint8)))

    def gather(self, ctx, out, x, root):
        self._coll(ctx, self.comm.Igather(
            x.view(np.uint8), out.view(np.uint8) if self.rank == root else None, root=root))

    def scatter(self, ctx, out, x, root):
        self._coll(ctx, self.comm.Iscatter(
            x.view(np.uint8) if self.rank == root else None, out.view(np.uint8), root=root))

    def reduce_scatter(self, ctx, out, x, op):
        wide_x = self._wide(x)
        target = np.empty(out.size, np.float32) if wide_x is not None else out
        self._coll(ctx, self.comm.Ireduce_scatter_block(
            wide_x if wide_x is not None else x, target, self._ops[op]))
        self._finish(out, target if wide_x is not None else None, op)

    def all_to_all(self, ctx, out, x):
        self._coll(ctx, self.comm.Ialltoall(x.view(np.uint8), out.view(np.uint8)))

    def barrier(self, ctx):
        self._coll(ctx, self.comm.Ibarrier())

    # ------------------------------------------------------------------ point to point
    def send(self, ctx, x, dst, tag):
        self._wait(ctx, self.comm.Isend(x.view(np.uint8), dest=dst, tag=tag), dst, "send")
        self.sent[dst] += 1

    def recv(self, ctx, x, src, tag):
        MPI = _mpi()
        status = MPI.Status()
        data = x.view(np.uint8)
        # Iprobe, not Improbe: a wrong-size message stays queued (an argument error
        # leaves the group usable); one receiving thread per group, so nobody else
        # can take the probed message before the Irecv below
        self._wait(ctx, _Probe(self.comm, src, tag, status), src, "recv")
        if status.Get_count() != data.size:
            raise CollectiveArgumentError(
                f"{ctx.describe()}: message from {src} with tag {tag} has "
                f"{status.Get_count()} bytes, the receive buffer {data.size}")
        # the message is there, but a big one still streams in: poll this wait too
        self._wait(ctx, self.comm.Irecv(data, source=src, tag=tag), src, "recv")
        self.recvd[src] += 1

    # ------------------------------------------------------------------ lifetime
    def abort(self, reason):
        """Send this communicator's leave notice: peers that need more of this rank
        than it completed fail at once (see mpi_abort) instead of timing out."""
        if self._closed or self.gen is None or self.size == 1:
            return
        mpi_abort.send_notices([self], f"gave up ({reason})", grace=0.5)

    def close(self):
        MPI = _mpi()
        self._closed = True
        mpi_abort.unregister(self)
        if self.comm != MPI.COMM_WORLD and not MPI.Is_finalized():
            try:
                self.comm.Free()
            except Exception:  # noqa: BLE001
                pass


class _Probe:
    """A request-like ``Iprobe`` so that a receive waits in the same loop as the rest."""

    __slots__ = ("comm", "src", "tag", "status")

    def __init__(self, comm, src, tag, status):
        self.comm, self.src, self.tag, self.status = comm, src, tag, status

    def Test(self):  # noqa: N802 - the MPI.Request name
        return self.comm.Iprobe(source=self.src, tag=self.tag, status=self.status)
