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


def _inputs(rank, n, dt):
    rng = np.random.default_rng(100 + rank)
    if dt.startswith("int"):
        return rng.integers(-5, 6, n).astype(dt)
    return (rng.random(n) + 0.5).astype(dt)  # positive: PRODUCT stays finite


def nccl_backend_direct(rank, world):
    """Every NcclBackend method called directly (ProcessGroup skips the backend for a
    world of one), results checked against numpy on every rank's known inputs."""
    import cupy

    from deepseek import collectives as C
    from deepseek.collectives._context import OpContext

    pg = C.init_process_group(backend="nccl")
    b = pg._backend
    ctx = OpContext("direct", 1, 60.0, "default", rank, list(range(world)))
    ufunc = {"SUM": np.add, "MAX": np.maximum, "MIN": np.minimum, "PRODUCT": np.multiply}
    for dt in ("float16", "float32", "float64", "int32", "int64"):
        n = 1027
        mine = [_inputs(r, n, dt) for r in range(world)]
        for opname in ("SUM", "AVG", "MAX", "MIN", "PRODUCT"):
            if opname == "AVG" and dt.startswith("int"):
                continue
            want = mine[0].astype("float64")
            for other in mine[1:]:
                want = ufunc.get(opname, np.add)(want, other.astype("float64"))
            if opname == "AVG":
                want = want / world
            x = cupy.asarray(mine[rank])
            b.allreduce(ctx, x, C.ReduceOp[opname])
            tol = 1e-2 if dt == "float16" else 1e-6
            np.testing.assert_allclose(cupy.asnumpy(x).astype("float64"), want, rtol=tol,
                                       err_msg=f"allreduce {opname} {dt}")
            x = cupy.asarray(mine[rank])
            b.reduce(ctx, x, world - 1, C.ReduceOp[opname])
            if rank == world - 1:
                np.testing.assert_allclose(cupy.asnumpy(x).astype("float64"), want,
                                           rtol=tol, err_msg=f"reduce {opname} {dt}")
        x = cupy.asarray(mine[rank])
        b.broadcast(ctx, x, 0)
        np.testing.assert_array_equal(cupy.asnumpy(x), mine[0])
        out = cupy.empty(n * world, dtype=dt)
        b.allgather(ctx, out, cupy.asarray(mine[rank]))
        np.testing.assert_array_equal(cupy.asnumpy(out), np.concatenate(mine))
        full = [np.concatenate([_inputs(r, 5, dt)] * world) for r in range(world)]
        rs = cupy.empty(5, dtype=dt)
        b.reduce_scatter(ctx, rs, cupy.asarray(full[rank]), C.ReduceOp.SUM)
        np.testing.assert_allclose(cupy.asnumpy(rs).astype("float64"),
                                   sum(f[:5].astype("float64") for f in full), rtol=1e-2)
    # the grouped point-to-point ops (a rank may send to itself inside a group)
    x = cupy.arange(6, dtype="float32") + 10 * rank
    g = cupy.zeros(6 * world, dtype="float32") if rank == 0 else None
    b.gather(ctx, g, x, 0)
    if rank == 0:
        np.testing.assert_array_equal(
            cupy.asnumpy(g), np.concatenate([np.arange(6) + 10 * r for r in range(world)]))
    src = cupy.arange(4 * world, dtype="int64") if rank == 0 else None
    o = cupy.zeros(4, dtype="int64")
    b.scatter(ctx, o, src, 0)
    np.testing.assert_array_equal(cupy.asnumpy(o), np.arange(4) + 4 * rank)
    a2a = cupy.arange(3 * world, dtype="int32") + 100 * rank
    o = cupy.zeros(3 * world, dtype="int32")
    b.all_to_all(ctx, o, a2a)
    np.testing.assert_array_equal(
        cupy.asnumpy(o), np.concatenate([np.arange(3 * rank, 3 * rank + 3) + 100 * r
                                         for r in range(world)]))
    b.barrier(ctx)
    b.allreduce(ctx, cupy.empty(0, dtype="float32"), C.ReduceOp.SUM)  # empty: no-op
    C.destroy_process_group()
    return True


def test_nccl_backend_methods_direct():
    world = 2 if _gpus() >= 2 else 1
    assert spawn_ranks(nccl_backend_direct, world, timeout=200) == [True] * world


def nccl_peer_never_arrives(rank, world):
    import cupy

    from deepseek import collectives as C

    pg = C.init_process_group(backend="nccl", timeout=30)
    if rank == 1:
        import time

        time.sleep(8)  # never joins rank 0's allreduce below
        return "skipped"
    try:
        pg.allreduce(cupy.ones(1 << 10, dtype="float32"), timeout=3)
    except C.CollectiveTimeoutError as e:
        return str(e)
    return "no error"


@pytest.mark.skipif(not _nccl.available() or _gpus() < 2, reason="needs two GPUs")
def test_nccl_peer_that_never_arrives_times_out():
    out = spawn_ranks(nccl_peer_never_arrives, 2, timeout=120)
    assert "timed out after 3s in allreduce" in out[0], out

