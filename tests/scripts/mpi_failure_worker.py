"""One rank misbehaves in an allreduce loop, under ``mpiexec -n N`` (test_mpi_failures).

    mpiexec -n 3 python tests/scripts/mpi_failure_worker.py MODE [STEP]

MODE is ``raise`` (rank 1 raises at STEP), ``exit0`` (rank 1 calls sys.exit(0) at
STEP while the others go on), ``sleep`` (init_process_group(timeout=2); rank 1 sleeps
8 s at STEP, the others must raise CollectiveTimeoutError) or ``ok`` (everyone
finishes and rank 1 leaves first, without destroy_process_group: the others' later
work that does not need it must still succeed). Rank 1 prints
``FAIL-AT <unix time>`` just before it misbehaves, so the test can time the job's end
from there.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from deepseek import collectives as C  # noqa: E402


def _user_hook(etype, value, tb):
    print(f"USER-HOOK {etype.__name__}", file=sys.stderr, flush=True)
    sys.__excepthook__(etype, value, tb)


def main():
    mode = sys.argv[1]
    step_at = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    if mode == "raise":
        sys.excepthook = _user_hook  # set before init: deepseek's hook must chain to it
    pg = C.init_process_group(timeout=2 if mode == "sleep" else None)
    assert pg.backend == "mpi", pg
    x = np.ones(4)
    for step in range(2 * step_at):
        if pg.rank == 1 and step == step_at and mode != "ok":
            print(f"FAIL-AT {time.time():.3f}", flush=True)
            if mode == "raise":
                raise RuntimeError(f"boom at step {step}")
            if mode == "exit0":
                sys.exit(0)
            time.sleep(8)
        try:
            pg.allreduce(x)
        except C.CollectiveTimeoutError as e:
            print(f"TIMEOUT-OK rank {pg.rank} op={e.op} seq={e.seq} group={e.group} "
                  f"rank={e.rank}: {e}", flush=True)
            time.sleep(0.5)  # let the other waiting rank print too
            raise
    if mode == "ok":
        _leave_without_destroy(pg)
    print(f"DONE {pg.rank}", flush=True)


def _leave_without_destroy(pg):
    """Rank 1 leaves first; what the others still do without it must work."""
    sub = C.new_group([0, 2])
    if pg.rank == 1:
        for i in range(3):
            pg.send(np.full(2, i, np.float64), 0, tag=i)
        return  # exits without destroy_process_group: a leave notice goes out
    time.sleep(0.5 + 0.05 * pg.rank)  # rank 1 is gone; rank 0 waits in the slow path
    y = np.ones(3)
    for _ in range(20):
        sub.allreduce(y)  # a group without rank 1: its notice must not matter
    assert (y == 2 ** 20).all(), y
    if pg.rank == 0:
        for i in range(3):  # sent before rank 1 left: still received
            got = np.empty(2)
            pg.recv(got, 1, tag=i)
            assert (got == i).all(), got
        t = time.perf_counter()
        try:
            pg.recv(got, 1, tag=3)  # never sent: the notice says so, no timeout
        except C.PeerFailureError as e:
            assert time.perf_counter() - t < 5, e
            print(f"RECV-FAILS-FAST {e}", flush=True)
        else:
            raise AssertionError("a receive from a rank that left succeeded")


if __name__ == "__main__":
    main()
