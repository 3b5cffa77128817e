"""Elementwise ops: gradcheck (float64), PyTorch parity (forward and backward),
broadcasting edge cases, empty / 0-d / non-contiguous inputs, type promotion."""
import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close, check_gradients, compare_with_torch, compare_with_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

# name -> (deepseek fn, torch fn, (low, high) of the inputs)
UNARY = {
    "neg": (lambda x: -x, lambda x: -x, (-2, 2)),
    "abs": (lambda x: x.abs(), torch.abs, (-2, 2)),
    "exp": (ds.exp, torch.exp, (-2, 2)),
    "log": (ds.log, torch.log, (0.2, 3)),
    "sqrt": (ds.sqrt, torch.sqrt, (0.2, 3)),
    "rsqrt": (ds.rsqrt, torch.rsqrt, (0.2, 3)),
    "sin": (ds.sin, torch.sin, (-3, 3)),
    "cos": (ds.cos, torch.cos, (-3, 3)),
    "tanh": (ds.tanh, torch.tanh, (-3, 3)),
    "sigmoid": (ds.sigmoid, torch.sigmoid, (-6, 6)),
    "relu": (ds.relu, torch.relu, (-2, 2)),
    "gelu": (ds.gelu, F.gelu, (-3, 3)),
    "gelu_tanh": (lambda x: ds.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), (-3, 3)),
    "silu": (ds.silu, F.silu, (-4, 4)),
    "square": (ds.square, torch.square, (-2, 2)),
    "clamp": (lambda x: x.clamp(-0.5, 0.7), lambda x: x.clamp(-0.5, 0.7), (-2, 2)),
    "clamp_min": (lambda x: x.clamp(min=0.1), lambda x: x.clamp(min=0.1), (-2, 2)),
    "clamp_max": (lambda x: x.clamp(max=0.1), lambda x: x.clamp(max=0.1), (-2, 2)),
    "pow_scalar": (lambda x: x ** 3, lambda x: x ** 3, (-2, 2)),
    "pow_frac": (lambda x: x ** 0.5, lambda x: x ** 0.5, (0.2, 3)),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, (-2, 2)),
    "rsub": (lambda x: 1 - x, lambda x: 1 - x, (-2, 2)),
    "rdiv": (lambda x: 1.5 / x, lambda x: 1.5 / x, (0.5, 2)),
    "add_scalar": (lambda x: x + 2.5, lambda x: x + 2.5, (-2, 2)),
    "mul_scalar": (lambda x: x * -3, lambda x: x * -3, (-2, 2)),
}

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, (-2, 2)),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, (-2, 2)),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, (-2, 2)),
    "div": (lambda a, b: a / b, lambda a, b: a / b, (0.5, 2)),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b, (0.5, 2)),
    "maximum": (ds.maximum, torch.maximum, (-2, 2)),
    "minimum": (ds.minimum, torch.minimum, (-2, 2)),
    "add_alpha": (lambda a, b: ds.add(a, b, alpha=2), lambda a, b: torch.add(a, b, alpha=2), (-2, 2)),
    "sub_alpha": (lambda a, b: ds.sub(a, b, alpha=0.5), lambda a, b: torch.sub(a, b, alpha=0.5), (-2, 2)),
}

BROADCAST_SHAPES = [
    ((2, 3), (2, 3)),
    ((2, 3), (3,)),
    ((2, 1), (1, 3)),
    ((4, 1, 3), (2, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (3, 1)),
]


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradcheck(name):
    fn, _, (lo, hi) = UNARY[name]
    check_gradients(fn, (2, 3), low=lo, high=hi)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_matches_torch_fp32(name):
    fn, tfn, (lo, hi) = UNARY[name]
    compare_with_torch(fn, tfn, [(4, 5)], dtype=ds.float32, low=lo, high=hi, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_matches_torch_noncontiguous(name):
    fn, tfn, (lo, hi) = UNARY[name]
    compare_with_torch(fn, tfn, [(3, 4)], dtype=ds.float32, low=lo, high=hi, noncontiguous=True,
                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_matches_torch_half(name, dtype):
    fn, tfn, (lo, hi) = UNARY[name]
    tol = {"float16": 2e-3, "bfloat16": 2e-2}[dtype]
    compare_with_torch(fn, tfn, [(16,)], dtype=dtype, low=lo, high=hi, rtol=tol, atol=tol,
                       grad_rtol=2 * tol, grad_atol=2 * tol)


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_matches_torch_broadcast(name, shapes):
    fn, tfn, (lo, hi) = BINARY[name]
    compare_with_torch(fn, tfn, list(shapes), dtype=ds.float32, low=lo, high=hi, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_gradcheck_broadcast(name):
    fn, _, (lo, hi) = BINARY[name]
    check_gradients(fn, (2, 1, 3), (2, 1), low=lo, high=hi)
    check_gradients(fn, (), (3,), low=lo, high=hi)


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_binary_matches_torch_half(name, dtype):
    fn, tfn, (lo, hi) = BINARY[name]
    tol = {"float16": 2e-3, "bfloat16": 2e-2}[dtype]
    compare_with_torch(fn, tfn, [(3, 4), (4,)], dtype=dtype, low=lo, high=hi, rtol=tol, atol=tol,
                       grad_rtol=4 * tol, grad_atol=4 * tol)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_noncontiguous(name):
    fn, tfn, (lo, hi) = BINARY[name]
    compare_with_torch(fn, tfn, [(3, 4), (3, 4)], low=lo, high=hi, noncontiguous=True, rtol=1e-5, atol=1e-6)
    check_gradients(fn, (2, 3), (3,), low=lo, high=hi, noncontiguous=True)


def test_transposed_and_sliced_inputs():
    a = ds.randn(4, 3, requires_grad=True)
    b = ds.randn(3, 8, requires_grad=True)
    ta = torch.tensor(a.detach().numpy(), requires_grad=True)
    tb = torch.tensor(b.detach().numpy(), requires_grad=True)
    out = a.t() * b[:, ::2] + a.t().exp()
    tout = ta.t() * tb[:, ::2] + ta.t().exp()
    assert_close(out, tout)
    g = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    out.backward(ds.tensor(g))
    tout.backward(torch.tensor(g))
    assert_close(a.grad, ta.grad)
    assert_close(b.grad, tb.grad)


@pytest.mark.parametrize("name", ["add", "mul", "sub", "div", "maximum"])
def test_empty_tensors(name):
    fn, tfn, (lo, hi) = BINARY[name]
    for shapes in [((0,), (0,)), ((0, 3), (3,)), ((2, 0), (1, 0)), ((0, 1), (1, 4))]:
        compare_with_torch(fn, tfn, list(shapes), low=lo, high=hi)


@pytest.mark.parametrize("name", ["exp", "sigmoid", "relu", "gelu", "abs"])
def test_unary_empty_and_0d(name):
    fn, tfn, (lo, hi) = UNARY[name]
    compare_with_torch(fn, tfn, [(0, 3)], low=lo, high=hi)
    ds_out, _ = compare_with_torch(fn, tfn, [()], low=lo, high=hi)
    assert ds_out[0].shape == () and isinstance(ds_out[0].numpy() if not ds_out[0].requires_grad
                                                 else ds_out[0].detach().numpy(), np.ndarray)


def test_0d_ops_hold_arrays():
    # numpy ufuncs on 0-d arrays return numpy scalars; tensors must still hold arrays
    a = ds.tensor(2.0, requires_grad=True)
    b = ds.tensor(3.0)
    out = a * b + a.exp()
    assert isinstance(out.detach().numpy(), np.ndarray) and out.shape == ()
    out.backward()
    assert isinstance(a.grad.numpy(), np.ndarray)
    a.grad.zero_()  # must be writable
    assert a.grad.item() == 0.0


def test_where_matches_torch_and_gradcheck():
    rng = np.random.default_rng(0)
    cond = rng.random((3, 4)) > 0.5
    compare_with_torch(lambda a, b: ds.where(ds.tensor(cond), a, b),
                       lambda a, b: torch.where(torch.tensor(cond), a, b), [(3, 4), (4,)])
    compare_with_torch(lambda a: ds.where(ds.tensor(cond), a, 0.0),
                       lambda a: torch.where(torch.tensor(cond), a, 0.0), [(3, 4)])
    check_gradients(lambda a, b: ds.where(ds.tensor(cond[:, :1]), a, b), (3, 4), (1, 4))
    with pytest.raises(TypeError, match="bool"):
        ds.where(ds.tensor([1, 0]), ds.ones(2), ds.zeros(2))


def test_maximum_ties_split_gradient_like_torch():
    a = [1.0, 2.0, 3.0]
    b = [1.0, 0.0, 3.0]
    compare_with_torch(ds.maximum, torch.maximum, [np.array(a), np.array(b)])
    compare_with_torch(ds.minimum, torch.minimum, [np.array(a), np.array(b)])


def test_clamp_with_tensor_bounds():
    compare_with_torch(lambda x, lo: x.clamp(min=lo), lambda x, lo: x.clamp(min=lo), [(3, 4), (4,)])


def test_clamp_boundary_gradient_matches_torch():
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    compare_with_torch(lambda t: t.clamp(-0.5, 0.5), lambda t: t.clamp(-0.5, 0.5), [x])


def test_relu_abs_at_zero_match_torch():
    x = np.array([-1.0, 0.0, 1.0])
    compare_with_torch(ds.relu, torch.relu, [x])
    compare_with_torch(lambda t: t.abs(), torch.abs, [x])


def test_sigmoid_extreme_values_are_finite():
    x = ds.tensor([-1000.0, -50.0, 0.0, 50.0, 1000.0], requires_grad=True)
    y = ds.sigmoid(x)
    assert np.isfinite(y.detach().numpy()).all()
    y.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_sign_and_floor_division():
    compare_with_numpy(ds.sign, np.sign, [(3, 4)])
    a = ds.tensor([7, -7, 5])
    b = ds.tensor([2, 2, -3])
    assert (a // b).tolist() == (torch.tensor([7, -7, 5]) // torch.tensor([2, 2, -3])).tolist()
    assert ds.div(a, b, rounding_mode="trunc").tolist() == \
        torch.div(torch.tensor([7, -7, 5]), torch.tensor([2, 2, -3]), rounding_mode="trunc").tolist()
    with pytest.raises(RuntimeError, match="rounding_mode"):  # PyTorch's type
        ds.div(a, b, rounding_mode="round")


# ---- type promotion (PyTorch rules) -------------------------------------------------
def _t(dtype, ds_mod=True):
    if ds_mod:
        return ds.ones(2, dtype=dtype)
    return torch.ones(2, dtype=getattr(torch, dtype))


PROMO_PAIRS = [("int32", "int64"), ("bfloat16", "float16"), ("bool", "int64"), ("bool", "float16"),
               ("int64", "float32"), ("float32", "float64"), ("uint8", "int8"), ("int8", "int16"),
               ("float16", "float32"), ("bool", "bool"), ("uint8", "bfloat16"), ("int32", "float16")]


@pytest.mark.parametrize("a,b", PROMO_PAIRS)
def test_tensor_tensor_promotion_matches_torch(a, b):
    for op in ["__add__", "__mul__", "__sub__"]:
        if "bool" in (a, b) and op == "__sub__":
            continue  # torch forbids bool subtraction
        got = getattr(_t(a), op)(_t(b)).dtype.name
        want = str(getattr(_t(a, False), op)(_t(b, False)).dtype)[6:]
        assert got == want, (a, op, b)
    got = (_t(a) / _t(b)).dtype.name
    want = str((_t(a, False) / _t(b, False)).dtype)[6:]
    assert got == want, (a, "/", b)


SCALARS = [2, 2.5, True]


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
def test_tensor_scalar_promotion_matches_torch(dtype, scalar):
    for op in ["__add__", "__mul__", "__radd__", "__rmul__"]:
        got = getattr(_t(dtype), op)(scalar).dtype.name
        want = str(getattr(_t(dtype, False), op)(scalar).dtype)[6:]
        assert got == want, (dtype, op, scalar)


@pytest.mark.parametrize("a,b", [("int32", "float64"), ("float32", "float64"), ("int64", "int32"),
                                 ("float16", "float32"), ("bool", "int64"), ("int32", "bool")])
def test_zero_dim_tensor_promotion_matches_torch(a, b):
    got = (ds.ones(3, dtype=a) + ds.ones((), dtype=b)).dtype.name
    want = str((torch.ones(3, dtype=getattr(torch, a)) + torch.ones((), dtype=getattr(torch, b))).dtype)[6:]
    assert got == want


def test_promotion_examples_from_the_brief():
    assert (ds.tensor([1, 2]) * 2.5).dtype == ds.float32
    assert (ds.ones(2, dtype=ds.float16) + 1.5).dtype == ds.float16
    assert (ds.ones(2, dtype=ds.int32) + ds.ones(2, dtype=ds.int64)).dtype == ds.int64
    assert (ds.ones(2, dtype=ds.bfloat16) + ds.ones(2, dtype=ds.float16)).dtype == ds.float32
    assert (ds.tensor([True, False]) + ds.tensor([1, 2])).dtype == ds.int64
    assert (ds.tensor([True]) + 1).tolist() == [2]
    assert (ds.ones(2, dtype=ds.bfloat16) * 0.5).dtype == ds.bfloat16
    assert ds.where(ds.tensor([True, False]), ds.ones(2, dtype=ds.bfloat16), 0.0).dtype == ds.bfloat16
    assert ds.tensor([1, 2]).clamp(min=0.5).dtype == ds.float32


def test_mixed_precision_gradients_flow_back_in_input_dtype():
    a = ds.randn(3, dtype=ds.float16, requires_grad=True)
    b = ds.randn(3, dtype=ds.float32, requires_grad=True)
    out = a * b
    assert out.dtype == ds.float32
    out.sum().backward()
    assert a.grad.dtype == ds.float16 and b.grad.dtype == ds.float32
    assert_close(a.grad, b.detach().half(), rtol=1e-3, atol=1e-3)


def test_int_inputs_to_float_functions():
    x = ds.tensor([1, 2, 3])
    assert ds.exp(x).dtype == ds.float32
    assert (x / 2).dtype == ds.float32
    assert (x ** 2).dtype == ds.int64
    assert_close(ds.sqrt(x), torch.sqrt(torch.tensor([1, 2, 3])))


def test_comparisons_and_logical_ops():
    a = ds.tensor([1.0, 2.0, 3.0])
    b = ds.tensor([3, 2, 1])
    assert (a < b).tolist() == [True, False, False]
    assert (a == b).tolist() == [False, True, False]
    assert (a >= 2).tolist() == [False, True, True]
    assert (a == None) is False  # noqa: E711
    assert (a != None) is True  # noqa: E711
    assert ((a > 1) & (b > 1)).tolist() == [False, True, False]
    assert (~(a > 1)).tolist() == [True, False, False]
    assert (ds.tensor(2.0) > 1).shape == ()
    with pytest.raises(TypeError):
        a < "x"


def test_inplace_arithmetic():
    x = ds.ones(3)
    x += 2
    x *= ds.tensor([1.0, 2.0, 3.0])
    x -= 1
    x /= 2
    assert x.tolist() == [1.0, 2.5, 4.0]
    y = ds.zeros(2, 3)
    y.add_(ds.ones(3))
    assert y.sum().item() == 6.0
    with pytest.raises(RuntimeError, match="shape"):
        ds.ones(3).add_(ds.ones(2, 3))


def test_inplace_in_graph_gradient():
    w = ds.randn(3, requires_grad=True)
    tw = torch.tensor(w.detach().numpy(), requires_grad=True)
    h = w * 2
    h.mul_(3)
    h.add_(1)
    h.sum().backward()
    th = tw * 2
    th.mul_(3)
    th.add_(1)
    th.sum().backward()
    assert_close(h, th)
    assert_close(w.grad, tw.grad)


def test_pow_edge_cases_match_torch():
    a = np.array([0.0, 0.0, 2.0, 1.5])
    b = np.array([0.0, 2.0, 0.0, 3.0])
    compare_with_torch(lambda x, y: x ** y, lambda x, y: x ** y, [a, b])
    compare_with_torch(lambda x: x ** 0, lambda x: x ** 0, [a])
    compare_with_torch(lambda x: x ** 2, lambda x: x ** 2, [a])
