"""Rank functions for test_mesh.py and test_tensor_parallel.py."""
import numpy as np


def mesh_groups(rank, world):
    import deepseek.distributed as dist

    mesh = dist.init_device_mesh(mesh_shape=(2, 2), mesh_dim_names=("dp", "tp"))
    out = {n: (mesh[n].ranks, mesh.get_local_rank(n), mesh.size(n)) for n in ("dp", "tp")}
    x = np.array([float(rank)])
    mesh["tp"].allreduce(x)
    out["tp_sum"] = float(x[0])
    try:
        dist.init_device_mesh(mesh_shape=(3, 2), mesh_dim_names=("dp", "tp"))
    except ValueError as e:
        out["bad"] = str(e)
    return out


def tp_layers(rank, world):
    """Each tensor-parallel layer's output and full gradients, built from seed 0."""
    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek import nn
    from deepseek.distributed import tensor_parallel as tpl
    from deepseek.testing.collective_calls import counted_allreduces

    dist.init_process_group()
    g = dist.new_group(list(range(world)))
    res = {}
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((3, 5, 16)).astype(np.float32)

    def run(make, x=x_np, gathered=lambda y: y):
        ds.manual_seed(0)
        layer = make()
        xt = ds.from_numpy(x.copy())
        if x.dtype.kind == "f":
            xt.requires_grad_(True)
        y = gathered(layer(xt))
        (y * ds.from_numpy(np.linspace(-1, 1, y.numel()).reshape(y.shape).astype(
            np.float32))).sum().backward()
        grads = {}
        for mname, mod in layer.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                grads[f"{mname}.{pname}" if mname else pname] = (
                    p.grad.array.copy(), getattr(mod, "shard_dims", {}).get(pname))
        return y.array.copy(), grads, (xt.grad.array.copy() if xt.grad is not None else None)

    res["column"] = run(lambda: tpl.ColumnParallelLinear(16, 8, group=g, gather_output=True))
    res["row"] = run(lambda: tpl.RowParallelLinear(16, 8, group=g, input_is_parallel=False))
    ids = rng.integers(0, 12, size=(3, 5))
    res["embedding"] = run(lambda: tpl.VocabParallelEmbedding(12, 6, group=g), x=ids)
    res["attention"] = run(lambda: tpl.ParallelAttention(16, 4, group=g))
    # the full weight after sharding, put together, equals nn.Linear's with that seed
    ds.manual_seed(0)
    col = tpl.ColumnParallelLinear(16, 8, group=g)
    res["init"] = col.weight.array.copy()
    # vocab-parallel cross-entropy: loss and gradient of the logits shard
    logits = rng.standard_normal((4, 7, 12)).astype(np.float32)
    target = rng.integers(0, 12, size=(4, 7))
    lt = ds.from_numpy(np.ascontiguousarray(tpl.shard(logits, g, 2)))
    lt.requires_grad_(True)
    loss = tpl.vocab_parallel_cross_entropy(lt, ds.from_numpy(target), group=g)
    loss.backward()
    res["ce"] = (float(loss.item()), lt.grad.array.copy())
    # parallelize_module on a plain MLP, and the count of tp all-reduces per step
    ds.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    tpl.parallelize_module(mlp, g, {"0": tpl.ColwiseParallel(), "2": tpl.RowwiseParallel()})
    with counted_allreduces(g) as calls:
        xt = ds.from_numpy(x_np.copy()).requires_grad_(True)
        y = mlp(xt)
        fwd = len(calls)
        y.sum().backward()
    res["mlp"] = (y.array.copy(), xt.grad.array.copy(), fwd, len(calls) - fwd,
                  type(mlp[0]).__name__, type(mlp[2]).__name__)
    return res
