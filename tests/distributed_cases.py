"""Rank functions for test_distributed_collectives.py (deepseek tensors)."""
import numpy as np


def tensor_ops(rank, world):
    import deepseek
    import deepseek.distributed as dist

    dist.init_process_group()
    assert dist.is_initialized() and dist.get_rank() == rank
    assert dist.get_world_size() == world
    t = deepseek.from_numpy(np.full(5, rank + 1.0, np.float32))
    v = t._version
    dist.all_reduce(t)
    assert t._version > v
    assert np.allclose(t.numpy(), sum(range(1, world + 1)))
    w = dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
    w.wait()
    b = deepseek.from_numpy(np.arange(4, dtype=np.float64) * (rank + 1))
    dist.broadcast(b, src=world - 1)
    assert np.allclose(b.numpy(), np.arange(4) * world)
    outs = [deepseek.from_numpy(np.zeros(3, np.int64)) for _ in range(world)]
    dist.all_gather(outs, deepseek.from_numpy(np.full(3, rank, np.int64)))
    assert [int(o.numpy()[0]) for o in outs] == list(range(world))
    big = deepseek.from_numpy(np.zeros(world * 2, np.float32))
    dist.all_gather_into_tensor(big, deepseek.from_numpy(np.full(2, rank, np.float32)))
    assert big.numpy().tolist() == [float(r) for r in range(world) for _ in range(2)]
    rs = deepseek.from_numpy(np.zeros(2, np.float32))
    dist.reduce_scatter_tensor(rs, deepseek.from_numpy(np.ones(2 * world, np.float32)))
    assert (rs.numpy() == world).all()
    rs2 = deepseek.from_numpy(np.zeros(2, np.float32))
    dist.reduce_scatter(rs2, [deepseek.from_numpy(np.full(2, r, np.float32))
                              for r in range(world)])
    assert (rs2.numpy() == rank * world).all()
    ins = [deepseek.from_numpy(np.full(2, rank * 10 + j, np.int32)) for j in range(world)]
    outs = [deepseek.from_numpy(np.zeros(2, np.int32)) for _ in range(world)]
    dist.all_to_all(outs, ins)
    assert [int(o.numpy()[0]) for o in outs] == [j * 10 + rank for j in range(world)]
    r = deepseek.from_numpy(np.full(3, rank, np.float32))
    dist.reduce(r, dst=0)
    if rank == 0:
        assert (r.numpy() == sum(range(world))).all()
    if world > 1:
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        got = deepseek.from_numpy(np.zeros(4, np.float32))
        ws = dist.isend(deepseek.from_numpy(np.full(4, rank, np.float32)), nxt, tag=1)
        wr = dist.irecv(got, prv, tag=1)
        ws.wait()
        wr.wait()
        assert (got.numpy() == prv).all()
    objs = [None, None]
    if rank == 0:
        objs = [{"lr": 0.1, "name": "adam"}, [1, 2, 3]]
    dist.broadcast_object_list(objs, src=0)
    assert objs == [{"lr": 0.1, "name": "adam"}, [1, 2, 3]]
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "s": "x" * rank})
    assert gathered == [{"rank": q, "s": "x" * q} for q in range(world)]
    try:
        dist.all_gather_object(gathered, object())
    except dist.CollectiveError:
        pass
    else:
        raise AssertionError("non-JSON object accepted")
    sub = dist.new_group([0])
    if rank == 0:
        s = deepseek.from_numpy(np.ones(2, np.float32))
        dist.all_reduce(s, group=sub)
        assert (s.numpy() == 1).all()
    else:
        assert sub is None
    dist.barrier()
    dist.destroy_process_group()
    return True


def symmetric_tensor(rank, world):
    import deepseek
    import deepseek.distributed as dist

    dist.init_process_group()
    t = dist.symmetric_empty(64, 512)
    assert t.shape == (64, 512) and t.dtype == deepseek.float32
    assert not t.numpy().any()
    t.numpy()[...] = rank + 1
    dist.all_reduce(t)
    half = t[:32]  # a slice at the same place on every rank
    half.numpy()[...] = 1.0
    dist.all_reduce(half, op=dist.ReduceOp.AVG)
    assert (t.numpy()[:32] == 1.0).all() and (t.numpy()[32:] == sum(range(1, world + 1))).all()
    from deepseek.collectives import get_default_group
    zero_copy = get_default_group()._backend.sym_allreduces  # both all_reduces above
    return dist.get_backend(), zero_copy, \
        dist.symmetric_empty((3,), dtype=deepseek.int64).dtype == deepseek.int64
