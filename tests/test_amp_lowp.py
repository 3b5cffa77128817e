"""The CPU low-precision paths: the blocked fp16/bf16 GEMM (native casts and the numpy
fallback) against fp32 math rounded once, and fp32-compute/bf16-storage of autocast
ops (whole and chunked) against fp32 values and gradients."""
import numpy as np
import pytest

import deepseek as ds
from deepseek import native
from deepseek.ops import _lowp
from deepseek.amp import autocast, lowp_compute

PATHS = ["numpy"] + (["native"] if native.available() else [])


@pytest.fixture(params=PATHS)
def path(request):
    with native.use_native(request.param == "native"):
        yield request.param


@pytest.mark.parametrize("dtype", [ds.bfloat16, ds.float16])
def test_blocked_gemms_equal_fp32_math_rounded_once(path, dtype, monkeypatch):
    monkeypatch.setattr(_lowp, "_PANEL", 1 << 10)  # many panels
    rng = np.random.default_rng(0)
    a = rng.standard_normal((70, 33)).astype(dtype)
    b = rng.standard_normal((33, 19)).astype(dtype)
    bias = rng.standard_normal(19).astype(dtype)
    f = lambda x: x.astype(np.float32)  # noqa: E731
    want = (f(a) @ f(b) + f(bias)).astype(dtype)
    got = _lowp.mm(a, b, bias=bias)
    assert got.dtype == dtype
    # one rounding of the fp32 result: within one ulp of it (sgemm's summation order
    # depends on the panel height)
    ulp = 2.0 ** -7 if dtype == ds.bfloat16 else 2.0 ** -10
    np.testing.assert_allclose(f(got), f(want), rtol=ulp, atol=1e-3)
    got_t = _lowp.mm(a, np.ascontiguousarray(b.T), trans_b=True)
    np.testing.assert_allclose(f(got_t), f(a) @ f(b), rtol=ulp, atol=1e-3)
    c = rng.standard_normal((70, 19)).astype(dtype)
    np.testing.assert_allclose(f(_lowp.mm_tn(a, c)), f(a).T @ f(c), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(f(_lowp.colsum(c)), f(c).sum(0), rtol=1e-2, atol=1e-2)


def test_linear_and_matmul_use_it_with_fp32_accumulated_grads(path):
    torch = pytest.importorskip("torch")
    ds.manual_seed(0)
    lin = ds.nn.Linear(40, 24)
    x = ds.randn(3, 50, 40)
    w2 = ds.randn(24, 8)
    with autocast("cpu"):
        y = lin(x)
        z = y @ w2
    assert y.dtype == z.dtype == ds.bfloat16
    z.float().sum().backward()
    tl = torch.nn.Linear(40, 24)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(lin.weight.detach().numpy()))
        tl.bias.copy_(torch.from_numpy(lin.bias.detach().numpy()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ty = tl(torch.from_numpy(x.numpy()))
        tz = ty @ torch.from_numpy(w2.numpy())
    tz.float().sum().backward()
    np.testing.assert_allclose(y.float().detach().numpy(), ty.float().detach().numpy(),
                               rtol=2e-2, atol=2e-2)
    assert lin.weight.grad.dtype == ds.float32
    for ours, theirs in ((lin.weight.grad, tl.weight.grad), (lin.bias.grad, tl.bias.grad)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=3e-2, atol=0.3)


@pytest.mark.parametrize("chunked", [False, True])
def test_fp32_compute_bf16_storage_values_and_grads(path, chunked, monkeypatch):
    monkeypatch.setattr(lowp_compute, "_CHUNK", 64 if chunked else 1 << 30)
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((20, 30)).astype(np.float32)
    xb = ds.tensor(x32).to(ds.bfloat16).requires_grad_()
    with autocast("cpu"):
        y = ds.nn.functional.gelu(xb) * 3.0
    assert y.dtype == ds.bfloat16 and y.grad_fn is not None
    y.float().sum().backward()
    xr = ds.tensor(xb.detach().float().numpy()).requires_grad_()
    (ds.nn.functional.gelu(xr) * 3.0).sum().backward()
    np.testing.assert_allclose(y.float().detach().numpy(),
                               (ds.nn.functional.gelu(xr) * 3.0).detach().numpy(), rtol=1e-2, atol=1e-2)
    assert xb.grad.dtype == ds.bfloat16
    np.testing.assert_allclose(xb.grad.float().numpy(), xr.grad.numpy(), rtol=1e-2, atol=1e-2)


def test_saved_activations_are_stored_low_precision():
    x = ds.randn(64, 64).to(ds.bfloat16).requires_grad_()
    with autocast("cpu"):
        y = ds.softmax(x, -1)
    inner = y.grad_fn.inner
    arrays = list(inner.saved) + [v for v in inner.__dict__.values() if isinstance(v, np.ndarray)]
    assert arrays and all(a.dtype == ds.bfloat16 for a in arrays if a.size >= 64 * 32)
    y.float().sum().backward(retain_graph=True)
    g1 = x.grad.float().numpy().copy()
    x.grad = None
    y.float().sum().backward()       # the saved copies survive a retain_graph backward
    np.testing.assert_array_equal(x.grad.float().numpy(), g1)
