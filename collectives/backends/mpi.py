"""The ``mpi`` backend: mpi4py on an MPI communicator.

Chosen automatically under mpirun/srun when mpi4py is importable. Install it with the
``mpi`` extra (``pip install deepseek[mpi]``: mpi4py plus the ``mpich`` wheel). MPI has
no float16/bfloat16 reductions, so those travel as float32 (accumulating in float32,
as the other backends do) and are rounded once at the end; AVG is a SUM followed by a
division.
"""
import numpy as np

from ..errors import CollectiveArgumentError
from ..reduce_ops import ReduceOp, _HALF
from .base import Backend


def _mpi():
    from mpi4py import MPI  # imported lazily: MPI_Init happens here

    return MPI


class MpiBackend(Backend):
    name = "mpi"

    def __init__(self, comm):
        MPI = _mpi()
        super().__init__(comm.Get_rank(), comm.Get_size())
        self.comm = comm
        self._ops = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.MAX: MPI.MAX,
                     ReduceOp.MIN: MPI.MIN, ReduceOp.PRODUCT: MPI.PROD}
        self._in_place = MPI.IN_PLACE

    @classmethod
    def world(cls):
        return cls(_mpi().COMM_WORLD)

    def subgroup(self, ranks):
        """A backend on the sub-communicator of ``ranks`` (collective over all ranks)."""
        comm = self.comm
        color = 0 if comm.Get_rank() in ranks else _mpi().UNDEFINED
        key = ranks.index(comm.Get_rank()) if color == 0 else 0
        sub = comm.Split(color, key)
        return MpiBackend(sub) if color == 0 else None

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
        self.comm.Allreduce(self._in_place, wide if wide is not None else x, self._ops[op])
        self._finish(x, wide, op)

    def reduce(self, ctx, x, root, op):
        wide = self._wide(x)
        buf = wide if wide is not None else x
        if self.rank == root:
            self.comm.Reduce(self._in_place, buf, self._ops[op], root=root)
            self._finish(x, wide, op)
        else:
            self.comm.Reduce(buf, None, self._ops[op], root=root)

    def broadcast(self, ctx, x, root):
        self.comm.Bcast(x.view(np.uint8), root=root)

    def allgather(self, ctx, out, x):
        self.comm.Allgather(x.view(np.uint8), out.view(np.uint8))

    def gather(self, ctx, out, x, root):
        self.comm.Gather(x.view(np.uint8), out.view(np.uint8) if self.rank == root else None,
                         root=root)

    def scatter(self, ctx, out, x, root):
        self.comm.Scatter(x.view(np.uint8) if self.rank == root else None, out.view(np.uint8),
                          root=root)

    def reduce_scatter(self, ctx, out, x, op):
        wide_x = self._wide(x)
        if wide_x is not None:
            wide_out = np.empty(out.size, np.float32)
            self.comm.Reduce_scatter_block(wide_x, wide_out, self._ops[op])
            self._finish(out, wide_out, op)
        else:
            self.comm.Reduce_scatter_block(x, out, self._ops[op])
            self._finish(out, None, op)

    def all_to_all(self, ctx, out, x):
        self.comm.Alltoall(x.view(np.uint8), out.view(np.uint8))

    def barrier(self, ctx):
        self.comm.Barrier()

    def send(self, ctx, x, dst, tag):
        self.comm.Send(x.view(np.uint8), dest=dst, tag=tag)

    def recv(self, ctx, x, src, tag):
        status = _mpi().Status()
        data = x.view(np.uint8)
        self.comm.Probe(source=src, tag=tag, status=status)
        if status.Get_count() != data.size:
            raise CollectiveArgumentError(
                f"{ctx.describe()}: message from {src} with tag {tag} has "
                f"{status.Get_count()} bytes, the receive buffer {data.size}")
        self.comm.Recv(data, source=src, tag=tag)

    def abort(self, reason):
        pass  # MPI offers only Abort() of the whole job; the caller decides

    def close(self):
        MPI = _mpi()
        if self.comm != MPI.COMM_WORLD and not MPI.Is_finalized():
            try:
                self.comm.Free()
            except Exception:  # noqa: BLE001
                pass
