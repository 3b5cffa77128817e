"""Run under ``mpiexec -n N python tests/mpi_collectives_script.py`` (test_collectives_mpi).

init_process_group() must pick the mpi backend by itself; the checks are the same rank
functions as the cpu backend's tests. Prints "MPI-OK <rank>" at the end.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import collectives_cases as cases  # noqa: E402
from deepseek import collectives as C  # noqa: E402


def main():
    from mpi4py import MPI

    rank, world = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    n = cases.all_ops(rank, world, sizes=(0, 1, 7, 1000), big=1 << 20, exact=False)
    pg = C.init_process_group()
    assert pg.backend == "mpi", pg
    sub = C.new_group([0])
    if rank == 0:
        x = np.ones(3)
        sub.allreduce(x)
        assert (x == 1).all()
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    got = np.empty(100, np.float32)
    w1 = pg.send(np.full(100, rank, np.float32), nxt, tag=3, async_op=True)
    w2 = pg.recv(got, prv, tag=3, async_op=True)
    w1.wait(30)
    w2.wait(30)
    assert (got == prv).all()
    # a big message (rendezvous protocol) through the polled Isend / Iprobe + Irecv
    big = np.empty(1 << 20, np.float32)
    w1 = pg.send(np.full(1 << 20, rank, np.float32), nxt, tag=4, async_op=True)
    pg.recv(big, prv, tag=4)
    w1.wait(30)
    assert (big == prv).all()
    # setting up the MPI world installed the abort-on-uncaught-exception hook
    from deepseek.collectives import mpi_abort

    assert mpi_abort.installed() and sys.excepthook is mpi_abort._excepthook
    ws = [pg.allreduce(np.full(1000, i, np.float64), async_op=True) for i in range(20)]
    for w in ws:
        w.wait(30)
    C.destroy_process_group()
    # deterministic on MPI: allgather + rank-order reduction, bitwise like the reference
    pg = C.init_process_group(deterministic=True)
    data = [cases.inputs(99, r, 5001, np.dtype(np.float32)) for r in range(world)]
    x = data[rank].copy()
    pg.allreduce(x)
    cases.check_equal(x, cases.reference(data, C.ReduceOp.SUM), "mpi deterministic")
    C.destroy_process_group()
    print(f"MPI-OK {rank} {n}", flush=True)


if __name__ == "__main__":
    main()
