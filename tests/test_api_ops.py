"""PyTorch API coverage (issue 13): the shims (cuda, backends, accelerator, compile,
dtype aliases), printing and formatting, and the behaviours the op table's samples
can't express (integer operands, ties, discontinuities, error types). The ops' numerics
are checked by the op table (tests/test_op_table.py)."""
import math

import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close

torch = pytest.importorskip("torch")


def both(fn):
    """fn(deepseek) and fn(torch), as numpy arrays (or exception types)."""
    out = []
    for m in (ds, torch):
        try:
            r = fn(m)
            out.append(r if isinstance(r, (bool, int, float, str)) else np.asarray(r.detach().numpy()
                                                                                   if hasattr(r, "detach") else r))
        except Exception as e:  # the types must match too
            out.append(type(e))
    return out


def test_cuda_shims_answer_for_this_machine():
    from deepseek.backend import cupy_available, device_count
    assert ds.cuda.is_available() == cupy_available()
    assert ds.cuda.device_count() == device_count()
    ds.cuda.manual_seed(3)
    ds.cuda.manual_seed_all(3)
    a = ds.randn(3)
    ds.cuda.manual_seed_all(3)
    assert ds.equal(a, ds.randn(3))
    ds.cuda.synchronize()
    assert isinstance(ds.cuda.is_bf16_supported(), bool)
    if not ds.cuda.is_available():
        assert ds.cuda.is_bf16_supported() is False
        with pytest.raises(RuntimeError, match="no CUDA"):
            ds.cuda.current_device()
    assert ds.backends.mps.is_available() is False
    assert ds.accelerator.is_available() == ds.cuda.is_available()


def test_backend_flags_are_settable_like_pytorch():
    ds.backends.cudnn.allow_tf32 = True
    ds.backends.cuda.matmul.allow_tf32 = True
    ds.backends.cudnn.benchmark = True
    assert ds.backends.cuda.matmul.allow_tf32 and ds.backends.cudnn.benchmark
    ds.backends.cudnn.benchmark = False
    with pytest.raises(AttributeError):
        ds.backends.cuda.matmul.no_such_flag = 1
    assert isinstance(ds.backends.cudnn.is_available(), bool)


def test_cuda_amp_aliases_point_at_deepseek_amp():
    try:
        import deepseek.amp as amp
    except ImportError:
        with pytest.raises(ImportError, match="deepseek.amp"):
            ds.cuda.amp.GradScaler
        return
    if hasattr(amp, "GradScaler"):
        assert ds.cuda.amp.GradScaler is amp.GradScaler


def test_dtype_aliases_and_info():
    assert ds.float is ds.float32 and ds.int is ds.int32 and ds.long is ds.int64
    assert ds.half is ds.float16 and ds.double is ds.float64 and ds.short is ds.int16
    assert isinstance(ds.float32, ds.dtype)
    assert ds.finfo(ds.float32).eps == torch.finfo(torch.float32).eps
    assert ds.finfo(ds.bfloat16).max == torch.finfo(torch.bfloat16).max
    assert ds.iinfo(ds.int64).max == torch.iinfo(torch.int64).max
    assert float(1.5) == 1.5  # the builtin still works here (not shadowed for callers)


def test_compile_takes_torch_compile_arguments():
    m = ds.nn.Linear(2, 2)
    x = ds.randn(3, 2)
    for cm in (ds.compile(m), ds.compile(mode="max-autotune")(m),
               ds.compile(m, fullgraph=True, backend="inductor", dynamic=True)):
        assert cm is not m
        np.testing.assert_allclose(cm(x).detach().numpy(), m(x).detach().numpy(), rtol=1e-6)
    assert ds.compile(m, disable=True) is m and ds.compile(m, backend="eager") is m


def test_nn_parallel_ddp_is_the_distributed_one():
    from deepseek.distributed import DistributedDataParallel
    assert ds.nn.parallel.DistributedDataParallel is DistributedDataParallel


@pytest.mark.parametrize("value", [1.5, 2.0, -0.0, [1.5, 2.0], [[1, 2], [3, 4]], [1e-5, 1.0], [1e9, 1.0],
                                   [float("nan"), 1.0, -2.5], [True, False], [3.0, -100.0], list(range(1500))])
def test_repr_matches_pytorch(value):
    assert repr(ds.tensor(value)) == repr(torch.tensor(value)).replace("torch.", "deepseek.")


def test_repr_wide_matrix_and_empty():
    x = np.random.default_rng(0).normal(size=(4, 30))
    assert repr(ds.tensor(x, dtype=ds.float32)) == repr(torch.tensor(x, dtype=torch.float32))
    assert repr(ds.zeros(0, 3)) == repr(torch.zeros(0, 3))


def test_format_of_0d_tensor():
    loss = ds.tensor(1.23456)
    assert f"{loss:.4f}" == "1.2346" and f"{ds.tensor(7):03d}" == "007"
    assert f"{ds.tensor([1.0])}" == "tensor([1.])"
    with pytest.raises(TypeError):
        f"{ds.tensor([1.0, 2.0]):.2f}"


def test_erf_is_the_public_op():
    x = ds.tensor([-1.0, 0.3, 2.0])
    assert_close(ds.erf(x), torch.erf(torch.tensor([-1.0, 0.3, 2.0])).numpy(), rtol=1e-6, atol=1e-7)
    assert_close(x.erf(), ds.erf(x), rtol=0, atol=0)


def test_where_with_two_python_scalars():
    m = [True, False, True]
    for a, b in [(4, 2), (4.0, 2), (True, False)]:
        d, t = ds.where(ds.tensor(m), a, b), torch.where(torch.tensor(m), a, b)
        assert str(d.dtype) == str(t.dtype).replace("torch.", "") and d.tolist() == t.tolist()


@pytest.mark.parametrize("mode", ["trunc", "floor"])
def test_integer_division_with_rounding_mode(mode):
    a, b = [7, -7, 5, -5, 2 ** 53 + 1], [2, 2, -3, -3, 1]
    d, t = both(lambda m: m.tensor(a).div(m.tensor(b), rounding_mode=mode))
    assert d.dtype == np.int64 and (d == t).all()
    d, t = both(lambda m: m.tensor(a).div(m.tensor([0, 1, 1, 1, 1]), rounding_mode=mode))
    assert d is t is RuntimeError
    assert both(lambda m: m.tensor(a).div(2, rounding_mode="bogus")) == [RuntimeError, RuntimeError]


def test_normalize_p0_and_pinf():
    x = [[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
    for p in (0, float("inf"), 1, 3):
        d, t = both(lambda m: m.nn.functional.normalize(m.tensor(x), p=p))
        assert_close(d, t)


def test_pow_gradients_at_zero_match_pytorch():
    def grads(m, a, b):
        x = m.tensor(a, requires_grad=True)
        y = m.tensor(b, requires_grad=True)
        (x ** y).sum().backward()
        return np.concatenate([x.grad.numpy(), y.grad.numpy()])
    for a, b in [([0.0, 0.0, 1.0], [0.5, 2.0, 0.0]), ([0.0, 0.0, -1.0], [0.0, -1.0, 2.0])]:
        d, t = both(lambda m: grads(m, a, b))
        np.testing.assert_array_equal(d, t)


@pytest.mark.parametrize("pads,mode", [((-1, 2), "reflect"), ((2, -1), "circular"), ((-2, 1), "replicate"),
                                       ((1, -3), "circular"), ((-1, 1, 1, -1), "reflect")])
def test_pad_negative_in_index_modes(pads, mode):
    d, t = both(lambda m: m.nn.functional.pad(m.arange(12.0).reshape(1, 3, 4), pads, mode=mode))
    np.testing.assert_array_equal(d, t)


def test_mod_with_integers_and_exact_multiples():
    a, b = [7, -7, 7, -7, 6], [3, 3, -3, -3, 3]
    for op in ("fmod", "remainder"):
        d, t = both(lambda m: getattr(m, op)(m.tensor(a), m.tensor(b)))
        assert d.dtype == np.int64 and (d == t).all()
        assert both(lambda m: getattr(m, op)(m.tensor(a), 0)) == [RuntimeError, RuntimeError]
    d, t = both(lambda m: m.tensor([5.5, -5.5]) % 2)
    np.testing.assert_array_equal(d, t)
    d, t = both(lambda m: 7 % m.tensor([5, -3]))
    np.testing.assert_array_equal(d, t)


def test_round_half_to_even_and_rounding_keep_ints():
    v = [0.5, 1.5, 2.5, -0.5, -1.5, 0.49]
    d, t = both(lambda m: m.round(m.tensor(v)))
    np.testing.assert_array_equal(d, t)
    assert ds.floor(ds.tensor([3, -2])).dtype == ds.int64


def test_cummax_cummin_ties_take_the_latest_index():
    for op in ("cummax", "cummin"):
        x = [[1.0, 3.0, 3.0, 2.0, 5.0, 5.0], [4.0, 3.0, 3.0, 5.0, 1.0, 1.0]]
        dv, di = getattr(ds, op)(ds.tensor(x), 1)
        tv, ti = getattr(torch, op)(torch.tensor(x), 1)
        np.testing.assert_array_equal(dv.numpy(), tv.numpy())
        np.testing.assert_array_equal(di.numpy(), ti.numpy())


def test_scatter_with_src_larger_than_index():
    idx = [[3], [0], [1]]
    d, t = both(lambda m: m.zeros(3, 4).scatter(1, m.tensor(idx), m.arange(6.0).reshape(3, 2)))
    np.testing.assert_array_equal(d, t)


def test_axis_alias_of_dim():
    x = ds.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert x.sum(axis=1).tolist() == [3.0, 8.0]
    assert ds.mean(x, axis=0).tolist() == [2.0, 3.5]
    assert x.max(axis=1).values.tolist() == [2.0, 5.0]
    assert x.argmax(axis=0).tolist() == [1, 1]


def test_function_forms_of_predicates():
    x = ds.tensor([1.0, math.nan, math.inf])
    assert ds.isnan(x).tolist() == [False, True, False]
    assert ds.isinf(x).tolist() == [False, False, True]
    assert ds.isfinite(x).tolist() == [True, False, False]
    assert ds.logical_not(ds.tensor([True, False])).tolist() == [False, True]


def test_like_family():
    x = ds.zeros(2, 3, dtype=ds.float64)
    for fn in (ds.randn_like, ds.rand_like, ds.zeros_like, ds.ones_like, ds.empty_like):
        y = fn(x)
        assert y.shape == x.shape and y.dtype == ds.float64
    r = ds.randint_like(x, 5)
    assert r.shape == x.shape and 0 <= float(r.min()) and float(r.max()) < 5


@pytest.mark.parametrize("fn,exc", [
    (lambda m: m.tensor([1.0, 2.0])[5], IndexError),
    (lambda m: m.tensor([1.0, 2.0]).gather(0, m.tensor([5])), RuntimeError),
    (lambda m: m.tensor([1.0, 2.0]).sum(dim=3), IndexError),
    (lambda m: m.tensor([1.0, 2.0]).view(3), RuntimeError),
    (lambda m: m.tensor([1.0, 2.0]) + m.tensor([1.0, 2.0, 3.0]), RuntimeError),
    (lambda m: m.mm(m.ones(2, 3), m.ones(2, 3)), RuntimeError),
    (lambda m: m.ones(2).topk(5), RuntimeError),
    (lambda m: m.ones(2, 2).flip(3), IndexError),
    (lambda m: m.ones(3).index_select(0, m.tensor([4])), IndexError),
    (lambda m: m.randint(5, 2, (3,)), RuntimeError),
    (lambda m: m.tensor([1.0]) < "x", TypeError),
])
def test_exception_types_follow_pytorch(fn, exc):
    d, t = both(fn)
    assert t is exc and d is exc


def test_interpolate_and_conv_transpose_modules():
    m = ds.nn.Upsample(scale_factor=2, mode="bilinear")
    assert m(ds.ones(1, 2, 3, 3)).shape == (1, 2, 6, 6)
    ct = ds.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    assert ct(ds.ones(1, 3, 5, 5)).shape == (1, 4, 10, 10)
    assert ct.weight.shape == (3, 4, 3, 3)
