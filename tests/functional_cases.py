"""Rank functions and single-process references for test_distributed_functional.py.

Every case is a collective ``op(x)`` followed by a rank-specific loss
``L_r = sum(tanh(out_r) * w_r)``. On the ranks, each rank feeds its own ``x_r``; the
reference builds every rank's ``x_r`` in one process, computes each ``out_r`` with
plain engine ops (sum, cat, chunk), and backpropagates the job's loss ``sum_r L_r``.
The collectives must give the same outputs and the same input gradients.
"""
import numpy as np

SHAPE = (6, 12)  # divisible by 2 and 3 along both dims


def _x(rank, dtype=np.float64):
    return np.random.default_rng(10 + rank).standard_normal(SHAPE).astype(dtype)


def _w(rank, shape, dtype=np.float64):
    return np.random.default_rng(1000 + rank).standard_normal(shape).astype(dtype)


# case name -> (call on a rank: f(dfn, x, group), reference: f(ds, xs, rank, world))
def _ref_cases():
    return {
        "all_reduce_sum": (lambda F, x: F.all_reduce(x),
                           lambda ds, xs, r, n: _sum(xs)),
        "all_reduce_avg": (lambda F, x: F.all_reduce(x, op="avg"),
                           lambda ds, xs, r, n: _sum(xs) / n),
        "all_reduce_max": (lambda F, x: F.all_reduce(x, op="max"),
                           lambda ds, xs, r, n: ds.stack(xs).amax(dim=0)),
        "all_gather_dim0": (lambda F, x: F.all_gather(x, dim=0),
                            lambda ds, xs, r, n: ds.cat(xs, dim=0)),
        "all_gather_dim1": (lambda F, x: F.all_gather(x, dim=-1),
                            lambda ds, xs, r, n: ds.cat(xs, dim=1)),
        "reduce_scatter_dim0": (lambda F, x: F.reduce_scatter(x, dim=0),
                                lambda ds, xs, r, n: ds.chunk(_sum(xs), n, dim=0)[r]),
        "reduce_scatter_avg_dim1": (lambda F, x: F.reduce_scatter(x, op="avg", dim=1),
                                    lambda ds, xs, r, n: ds.chunk(_sum(xs) / n, n, dim=1)[r]),
        "all_to_all_single": (lambda F, x: F.all_to_all(x),
                              lambda ds, xs, r, n: ds.cat(
                                  [ds.chunk(xj, n, dim=0)[r] for xj in xs], dim=0)),
        "all_to_all_1_to_0": (lambda F, x: F.all_to_all(x, scatter_dim=1, gather_dim=0),
                              lambda ds, xs, r, n: ds.cat(
                                  [ds.chunk(xj, n, dim=1)[r] for xj in xs], dim=0)),
        # two collectives in one graph: backward runs them in reverse on every rank
        "chain": (lambda F, x: F.all_gather(F.reduce_scatter(x, dim=1).tanh(), dim=1),
                  lambda ds, xs, r, n: ds.cat(
                      [c.tanh() for c in ds.chunk(_sum(xs), n, dim=1)], dim=1)),
    }


def _sum(xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _loss(ds, out, rank):
    w = ds.from_numpy(_w(rank, tuple(out.shape)))
    return (out.tanh() * w).sum()


def rank_results(rank, world):
    """On a real rank: every case's (output, input gradient)."""
    import deepseek as ds
    import deepseek.distributed as dist
    import deepseek.distributed.functional as F

    dist.init_process_group()
    results = {}
    for name, (call, _) in _ref_cases().items():
        x = ds.from_numpy(_x(rank)).requires_grad_()
        x0 = x.detach().numpy().copy()
        out = call(F, x)
        _loss(ds, out, rank).backward()
        assert np.array_equal(x.detach().numpy(), x0), f"{name} modified its input"
        results[name] = (out.detach().numpy().copy(), x.grad.numpy().copy())
    # float32 goes through as well
    x = ds.from_numpy(_x(rank, np.float32)).requires_grad_()
    out = F.all_gather(x, dim=0)
    out.sum().backward()
    results["float32"] = (str(out.dtype), x.grad.numpy().copy())
    # MAX with ties on every element: the gradient is split evenly between the ranks
    x = ds.from_numpy(np.ones(4)).requires_grad_()
    (F.all_reduce(x, op="max") * float(rank + 1)).sum().backward()
    results["max_ties"] = (None, x.grad.numpy().copy())
    return results


def reference(world):
    """Single process: the same math on all ranks' inputs at once."""
    import deepseek as ds

    results = {}
    for name, (_, ref) in _ref_cases().items():
        xs = [ds.from_numpy(_x(r)).requires_grad_() for r in range(world)]
        outs = [ref(ds, xs, r, world) for r in range(world)]
        total = _sum([_loss(ds, o, r) for r, o in enumerate(outs)])
        total.backward()
        results[name] = ([o.detach().numpy() for o in outs], [x.grad.numpy() for x in xs])
    return results
