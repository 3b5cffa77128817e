"""Latency of deepseek's mpi backend against raw mpi4py, under ``mpiexec -n N``.

    mpiexec -n 2 python tests/scripts/mpi_latency.py [--iters 20000] [--bytes 8]

Prints one line on rank 0 -- mpi4py's blocking Allreduce, mpi4py's Iallreduce polled
with Test, deepseek's mpi backend: for each the median over 5 rounds of the mean time
per in-place float64 allreduce, in microseconds. A measurement tool (used to check that
polling waits keep the small-message latency of the blocking MPI calls), not a test.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def _rounds(fn, iters, barrier):
    for _ in range(min(iters, 500)):
        fn()
    out = []
    for _ in range(5):
        barrier()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t) / iters * 1e6)
    return sorted(out)[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--bytes", type=int, default=8)
    a = ap.parse_args()
    from mpi4py import MPI

    from deepseek import collectives as C

    comm = MPI.COMM_WORLD
    x = np.ones(max(1, a.bytes // 8))
    raw = _rounds(lambda: comm.Allreduce(MPI.IN_PLACE, x, MPI.SUM), a.iters, comm.Barrier)

    def polled():
        req = comm.Iallreduce(MPI.IN_PLACE, x, MPI.SUM)
        while not req.Test():
            pass
    raw_nb = _rounds(polled, a.iters, comm.Barrier)
    pg = C.init_process_group(backend="mpi")
    ours = _rounds(lambda: pg.allreduce(x), a.iters, comm.Barrier)
    C.destroy_process_group()
    if comm.Get_rank() == 0:
        print(f"{x.nbytes} B allreduce, {comm.Get_size()} ranks: mpi4py Allreduce "
              f"{raw:.2f} us, mpi4py Iallreduce+Test {raw_nb:.2f} us, deepseek mpi backend "
              f"{ours:.2f} us", flush=True)


if __name__ == "__main__":
    main()
