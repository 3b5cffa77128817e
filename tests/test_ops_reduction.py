"""Reductions and matmul: gradcheck, PyTorch parity, dim/keepdim, empty and 0-d inputs."""
import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close, check_gradients, compare_with_torch

torch = pytest.importorskip("torch")

DIMS = [None, 0, 1, -1, (0, 2), (-1, 0)]


def _dim_ok(dim, multi):
    return multi or dim is None or isinstance(dim, int)


# name -> (deepseek fn(x, dim, keepdim), torch fn, accepts tuple dims, low, high)
REDUCTIONS = {
    "sum": (lambda x, d, k: x.sum(d, keepdim=k), lambda x, d, k: x.sum(dim=d, keepdim=k), True),
    "mean": (lambda x, d, k: x.mean(d, keepdim=k), lambda x, d, k: x.mean(dim=d, keepdim=k), True),
    "var": (lambda x, d, k: x.var(d, keepdim=k), lambda x, d, k: x.var(d, keepdim=k), True),
    "var0": (lambda x, d, k: x.var(d, keepdim=k, unbiased=False),
             lambda x, d, k: x.var(d, keepdim=k, unbiased=False), True),
    "std": (lambda x, d, k: x.std(d, keepdim=k), lambda x, d, k: x.std(d, keepdim=k), True),
    "amax": (lambda x, d, k: x.amax(d, keepdim=k), lambda x, d, k: x.amax(() if d is None else d, keepdim=k), True),
    "amin": (lambda x, d, k: x.amin(d, keepdim=k), lambda x, d, k: x.amin(() if d is None else d, keepdim=k), True),
    "logsumexp": (lambda x, d, k: x.logsumexp(d, keepdim=k),
                  lambda x, d, k: x.logsumexp(d, keepdim=k), True),
    "max": (lambda x, d, k: x.max() if d is None else x.max(d, keepdim=k).values,
            lambda x, d, k: x.max() if d is None else x.max(d, keepdim=k).values, False),
    "min": (lambda x, d, k: x.min() if d is None else x.min(d, keepdim=k)[0],
            lambda x, d, k: x.min() if d is None else x.min(d, keepdim=k)[0], False),
    "prod": (lambda x, d, k: x.prod() if d is None else x.prod(d, keepdim=k),
             lambda x, d, k: x.prod() if d is None else x.prod(d, keepdim=k), False),
}
CASES = [(n, d, k) for n in sorted(REDUCTIONS) for d in DIMS for k in (False, True)
         if _dim_ok(d, REDUCTIONS[n][2]) and not (d is None and n == "logsumexp")
         and not (d is None and k and n in ("max", "min", "prod"))]


@pytest.mark.parametrize("name,dim,keepdim", CASES)
def test_reduction_matches_torch(name, dim, keepdim):
    fn, tfn, _ = REDUCTIONS[name]
    compare_with_torch(lambda x: fn(x, dim, keepdim), lambda x: tfn(x, dim, keepdim), [(3, 4, 5)],
                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_gradcheck(name):
    fn, _, multi = REDUCTIONS[name]
    dims = [None, 1, (0, 2)] if multi else [None, 1]
    for dim in dims:
        if dim is None and name == "logsumexp":
            continue
        check_gradients(lambda x: fn(x, dim, False), (2, 3, 2), low=0.3, high=2.0)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_noncontiguous_and_half(name):
    fn, tfn, _ = REDUCTIONS[name]
    compare_with_torch(lambda x: fn(x, 1, False), lambda x: tfn(x, 1, False), [(4, 6)],
                       noncontiguous=True, rtol=1e-5, atol=1e-5)
    if name != "prod":
        compare_with_torch(lambda x: fn(x, -1, False), lambda x: tfn(x, -1, False), [(4, 8)],
                           dtype="float16", rtol=5e-3, atol=5e-3)
        compare_with_torch(lambda x: fn(x, -1, False), lambda x: tfn(x, -1, False), [(4, 8)],
                           dtype="bfloat16", rtol=3e-2, atol=3e-2)


def test_prod_with_zeros_gradient():
    x = np.array([[1.0, 0.0, 3.0], [0.0, 0.0, 2.0], [2.0, 3.0, 4.0]])
    compare_with_torch(lambda t: t.prod(1), lambda t: t.prod(1), [x])
    compare_with_torch(lambda t: t.prod(), lambda t: t.prod(), [x[2:]])
    compare_with_torch(lambda t: t.prod(), lambda t: t.prod(), [np.array([1.0, 0.0, 3.0])])


def test_full_max_ties_share_gradient_like_torch():
    x = np.array([1.0, 3.0, 3.0, 2.0])
    compare_with_torch(lambda t: t.max(), lambda t: t.max(), [x])
    compare_with_torch(lambda t: t.amax(0), lambda t: t.amax(0), [x])
    compare_with_torch(lambda t: t.amin(), lambda t: t.amin(), [np.array([[1.0, 1.0], [2.0, 1.0]])])


def test_max_with_dim_returns_values_and_indices():
    x = ds.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], requires_grad=True)
    v, i = x.max(dim=1)
    assert v.tolist() == [5.0, 7.0] and i.tolist() == [1, 0] and i.dtype == ds.int64
    assert not i.requires_grad
    out = ds.max(x, 1, keepdim=True)
    assert out.values.shape == (2, 1) and out.indices.shape == (2, 1)
    v.sum().backward()  # only values used: the index output gets no gradient
    assert x.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    mn = ds.min(x, dim=0)
    assert mn.indices.tolist() == [0, 1, 0]


def test_max_elementwise_form():
    a, b = ds.tensor([1.0, 4.0]), ds.tensor([3.0, 2.0])
    assert ds.max(a, b).tolist() == [3.0, 4.0]
    assert ds.min(a, b).tolist() == [1.0, 2.0]


def test_argmax_argmin():
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    t = ds.tensor(x)
    tt = torch.tensor(x)
    assert t.argmax().item() == tt.argmax().item()
    for d in (0, 1, -1):
        for k in (False, True):
            assert t.argmax(d, keepdim=k).tolist() == tt.argmax(d, keepdim=k).tolist()
            assert t.argmin(d, keepdim=k).tolist() == tt.argmin(d, keepdim=k).tolist()
    assert t.argmax(dim=1).dtype == ds.int64


def test_sum_dtypes_match_torch():
    for dt in ["bool", "int32", "int64", "uint8"]:
        x = ds.ones(3, dtype=dt)
        assert x.sum().dtype.name == str(torch.ones(3, dtype=getattr(torch, dt)).sum().dtype)[6:]
    assert ds.ones(3, dtype="float16").sum().dtype == ds.float16
    assert ds.ones(3).sum(dtype=ds.float64).dtype == ds.float64
    with pytest.raises(RuntimeError, match="floating"):
        ds.ones(3, dtype="int64").mean()


def test_reductions_of_empty_tensors():
    compare_with_torch(lambda x: x.sum(), lambda x: x.sum(), [(0, 3)])
    compare_with_torch(lambda x: x.sum(0), lambda x: x.sum(0), [(0, 3)])
    compare_with_torch(lambda x: x.sum(1), lambda x: x.sum(1), [(0, 3)])
    compare_with_torch(lambda x: x.amax(1), lambda x: x.amax(1), [(0, 3)])
    compare_with_torch(lambda x: x.max(1).values, lambda x: x.max(1).values, [(0, 3)])
    compare_with_torch(lambda x: x.prod(0), lambda x: x.prod(0), [(0, 3)])
    assert np.isnan(ds.zeros(0).mean().item())
    with pytest.raises(RuntimeError, match="non-empty"):
        ds.zeros(0, 3).max()
    with pytest.raises(RuntimeError, match="non-empty"):
        ds.zeros(0, 3).max(dim=0)
    with pytest.raises(RuntimeError, match="non-empty"):
        ds.zeros(0, 3).amax(0)


def test_reductions_of_0d_tensors():
    for fn in [lambda x: x.sum(), lambda x: x.mean(), lambda x: x.sum(0), lambda x: x.amax(),
               lambda x: x.max(), lambda x: x.prod(), lambda x: x.logsumexp(0), lambda x: x.mean(-1)]:
        compare_with_torch(fn, fn, [()])
    v, i = ds.tensor(3.0).max(dim=0)
    assert v.item() == 3.0 and i.item() == 0


def test_var_with_single_element_is_nan_like_torch():
    assert np.isnan(ds.tensor([1.0]).var().item())
    assert torch.isnan(torch.tensor([1.0]).var())
    assert ds.tensor([1.0]).var(unbiased=False).item() == 0.0


def test_dim_out_of_range_errors():
    x = ds.ones(2, 3)
    with pytest.raises(IndexError, match="dimension out of range"):
        x.sum(2)
    with pytest.raises(IndexError, match="dimension out of range"):
        x.max(dim=-3)


# ---- matmul -------------------------------------------------------------------------
MATMUL_SHAPES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                 ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((5, 2, 3), (5, 3, 4)),
                 ((2, 1, 2, 3), (4, 3, 2)), ((3,), (5, 3, 4)), ((5, 2, 3), (3,)),
                 ((0, 3), (3, 4)), ((2, 0), (0, 4))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=str)
def test_matmul_matches_torch(sa, sb):
    compare_with_torch(lambda a, b: a @ b, lambda a, b: a @ b, [sa, sb], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES[:10], ids=str)
def test_matmul_gradcheck(sa, sb):
    check_gradients(ds.matmul, sa, sb)


def test_matmul_noncontiguous_and_half():
    compare_with_torch(lambda a, b: a.t() @ b.mT, lambda a, b: a.t() @ b.mT, [(3, 2), (4, 3)],
                       rtol=1e-5, atol=1e-5)
    compare_with_torch(ds.matmul, torch.matmul, [(4, 6), (6, 2)], noncontiguous=True, rtol=1e-5, atol=1e-5)
    compare_with_torch(ds.matmul, torch.matmul, [(4, 8), (8, 2)], dtype="float16", rtol=5e-3, atol=5e-3)
    compare_with_torch(ds.matmul, torch.matmul, [(4, 8), (8, 2)], dtype="bfloat16", rtol=3e-2, atol=3e-2)


def test_linear_matches_torch():
    import deepseek.ops as ops
    compare_with_torch(ops.linear, torch.nn.functional.linear, [(5, 3), (4, 3), (4,)], rtol=1e-5, atol=1e-5)
    compare_with_torch(ops.linear, torch.nn.functional.linear, [(2, 5, 3), (4, 3)], rtol=1e-5, atol=1e-5)
    check_gradients(ops.linear, (2, 3), (4, 3), (4,))


def test_matmul_shape_errors_name_op_and_shapes():
    with pytest.raises(RuntimeError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)"):
        ds.ones(2, 3) @ ds.ones(4, 5)
    with pytest.raises(RuntimeError, match="matmul"):
        ds.tensor(1.0) @ ds.ones(2)
    with pytest.raises(RuntimeError, match=r"linear.*\(2, 3\)"):
        import deepseek.ops as ops
        ops.linear(ds.ones(2, 3), ds.ones(4, 5))


def test_large_reduction_precision_fp32():
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    assert_close(ds.tensor(x).sum(), torch.tensor(x).sum(), rtol=1e-4, atol=1e-3)
    assert_close(ds.tensor(x).var(), torch.tensor(x).var(), rtol=1e-5, atol=1e-6)
