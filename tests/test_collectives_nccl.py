"""The nccl backend (cupy arrays on GPUs). Skips cleanly without cupy or a GPU.

One GPU: a world of one rank (NCCL refuses two ranks on one device); two or more GPUs:
a world of two, one device per rank (LOCAL_RANK picks it).
"""
import numpy as np
import pytest

from deepseek.collectives.backends import nccl as _nccl
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not _nccl.available(), reason="needs cupy, NCCL and a GPU")]


def _gpus():
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


def nccl_ops(rank, world):
    import cupy

    from deepseek import collectives as C

    pg = C.init_process_group(backend="nccl")
    assert pg.backend == "nccl"
    for dt in ("float32", "float16", "float64", "int32", "int64"):
        for n in (0, 1, 1027, (1 << 20) + 3):
            x = cupy.full(n, rank + 1, dtype=dt)
            pg.allreduce(x)
            assert bool((x == sum(range(1, world + 1))).all())
    x = cupy.full(10, rank + 1.0, dtype="float32")
    pg.allreduce(x, C.ReduceOp.AVG)
    assert cupy.allclose(x, sum(range(1, world + 1)) / world)
    x = cupy.full(5, rank + 1.0, dtype="float32")
    pg.allreduce(x, C.ReduceOp.MAX)
    assert bool((x == world).all())
    b = cupy.arange(7, dtype="float32") * (rank + 1)
    pg.broadcast(b, src=0)
    assert cupy.allclose(b, cupy.arange(7))
    out = cupy.empty(3 * world, dtype="int32")
    pg.allgather(out, cupy.full(3, rank, dtype="int32"))
    assert cupy.asnumpy(out).tolist() == [r for r in range(world) for _ in range(3)]
    rs = cupy.empty(4, dtype="float32")
    pg.reduce_scatter(rs, cupy.ones(4 * world, dtype="float32"))
    assert bool((rs == world).all())
    w = pg.allreduce(cupy.ones(1 << 16, dtype="float32"), async_op=True)
    w.wait(60)
    pg.barrier()
    # a numpy array on the nccl backend is a clear argument error
    try:
        pg.allreduce(np.ones(3, np.float32))
    except C.CollectiveArgumentError:
        pass
    else:
        raise AssertionError("numpy array accepted by the nccl backend")
    C.destroy_process_group()
    return True


def test_nccl_backend():
    world = 2 if _gpus() >= 2 else 1
    assert spawn_ranks(nccl_ops, world, timeout=200) == [True] * world
