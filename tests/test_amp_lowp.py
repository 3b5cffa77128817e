"""The CPU low-precision paths: the blocked fp16/bf16 GEMM (native casts and the numpy
fallback) against fp32 math rounded once, and fp32-compute/bf16-storage of autocast
ops (whole and chunked) against fp32 values and gradients."""
import numpy as np
import pytest

import deepseek as ds
from deepseek import native
from deepseek.ops import _lowp
from deepseek.amp import autocast, lowp_compute, lowp_linear, lowp_native

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
    w = rng.standard_normal((19, 33)).astype(dtype)   # linear (in 33, out 19), g = c[:, :19]
    gx, gw = _lowp.linear_grads(c[:, :19], w, a, dtype)
    assert gx.dtype == gw.dtype == dtype and gx.shape == (70, 33) and gw.shape == (19, 33)
    np.testing.assert_allclose(f(gx), f(c[:, :19]) @ f(w), rtol=ulp, atol=1e-2)
    np.testing.assert_allclose(f(gw), f(c[:, :19]).T @ f(a), rtol=1e-2, atol=1e-2)


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


def _linear_grads(enabled, shape, features):
    ds.manual_seed(0)
    lin = ds.nn.Linear(*features)
    x = ds.randn(*shape).requires_grad_()
    lowp_linear.ENABLED = enabled
    try:
        with autocast("cpu"):
            y = lin(x)
        fn = y.grad_fn.fn
        (y.float() ** 2).sum().backward()
    finally:
        lowp_linear.ENABLED = True
    return fn, [t.grad.float().numpy() for t in (x, lin.weight, lin.bias)]


@pytest.mark.parametrize("panel", [1 << 8, 1 << 21])  # many panels / one
@pytest.mark.parametrize("features", [(24, 96), (96, 24)])  # widening / narrowing
def test_autocast_linear_backward_shares_the_widened_gradient(path, panel, features, monkeypatch):
    monkeypatch.setattr(_lowp, "_PANEL", panel)
    fused, got = _linear_grads(True, (3, 40, features[0]), features)
    plain, want = _linear_grads(False, (3, 40, features[0]), features)
    assert fused is lowp_linear.LinearLowp and plain is not fused
    np.testing.assert_array_equal(got[2], want[2])      # the bias gradient: the same pass
    for a, b in zip(got[:2], want[:2]):                 # one rounding of fp32 sums apart
        np.testing.assert_allclose(a, b, rtol=2.0 ** -7, atol=1e-2)


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


class _SavesTwice(ds.autograd.Function):
    """exp that keeps its output in two ctx slots (as attention keeps ``p`` as ``pd``
    without dropout)."""

    @staticmethod
    def forward(ctx, x):
        y = np.exp(x)
        ctx.a, ctx.b = y, y
        return y

    @staticmethod
    def backward(ctx, g):
        assert ctx.a is ctx.b  # widened once, still one array
        return g * ctx.a


def test_an_array_saved_twice_is_stored_once():
    from deepseek.amp.lowp_compute import LowpCompute
    x = ds.randn(64, 64).to(ds.bfloat16).requires_grad_()
    y = LowpCompute.apply(x, _inner=_SavesTwice, _kwargs={})
    inner = y.grad_fn.inner
    assert inner.a is inner.b and inner.a.dtype == ds.bfloat16
    y.float().sum().backward()
    want = np.exp(x.detach().float().numpy()).astype(ds.bfloat16).astype(np.float32)
    np.testing.assert_allclose(x.grad.float().numpy(), want, rtol=2.0 ** -7)


def _bits_of(t):
    return t.detach().numpy().view(np.uint16)


@pytest.mark.skipif(not native.available() or not hasattr(native._ext, "lowp_relu"),
                    reason="the native bf16 relu is not built")
@pytest.mark.parametrize("isa", native.isa_list() or ["scalar"])
def test_native_bf16_relu_equals_the_fp32_path_bit_for_bit(isa):
    """On every instruction set the kernel table has (each has its own loop build)."""
    with native.use_isa(isa):
        _relu_bits_check()


def _relu_bits_check():
    from deepseek.ops.elementwise import Relu
    from deepseek.amp.lowp_compute import LowpCompute
    every = np.arange(1 << 16, dtype=np.uint16)
    # every bf16 pattern (NaNs, -0, infs, subnormals), then an odd tail for the loops' ends
    xs = np.concatenate([every, every[[0x8000, 0xff80, 0x7fc1]]]).view(ds.bfloat16)
    gs = np.random.default_rng(0).permutation(xs.view(np.uint16)).view(ds.bfloat16)
    x1, x2 = (ds.tensor(xs.copy()).requires_grad_() for _ in range(2))
    with autocast("cpu"):
        y1 = ds.nn.functional.relu(x1)
    assert y1.grad_fn.fn is lowp_native.ReluBf16  # the native path ran
    y2 = LowpCompute.apply(x2, _inner=Relu, _kwargs={})
    np.testing.assert_array_equal(_bits_of(y1), _bits_of(y2))
    y1.backward(ds.tensor(gs))
    with np.errstate(invalid="ignore"):  # inf * 0 in the fp32 formula
        y2.backward(ds.tensor(gs))
    assert x1.grad.dtype == ds.bfloat16
    np.testing.assert_array_equal(_bits_of(x1.grad), _bits_of(x2.grad))


@pytest.mark.skipif(not native.available() or not hasattr(native._ext, "lowp_widen"),
                    reason="the GEMM passes of dsn_lowp.c are not built")
@pytest.mark.parametrize("isa", native.isa_list() or ["scalar"])
@pytest.mark.parametrize("dtype", [ds.bfloat16, ds.float16])
def test_native_gemm_passes_equal_the_numpy_passes_bit_for_bit(dtype, isa, monkeypatch):
    monkeypatch.setattr(_lowp, "_PANEL", 1 << 10)  # many panels, strided column blocks
    rng = np.random.default_rng(1)
    a = rng.standard_normal((70, 33)).astype(dtype)
    b = rng.standard_normal((33, 19)).astype(dtype)
    bias = rng.standard_normal(19).astype(dtype)
    c = rng.standard_normal((70, 45)).astype(dtype)
    a[3, 5], c[7, 2] = np.inf, np.nan

    w = rng.standard_normal((45, 33)).astype(dtype)
    w32 = rng.standard_normal((45, 33)).astype(np.float32)

    def run():
        with np.errstate(invalid="ignore"):
            return (_lowp.mm(a, b, bias=bias), _lowp.mm(a, np.ascontiguousarray(b.T), trans_b=True),
                    _lowp.mm_tn(a, c), _lowp.mm_tn(c, a), _lowp.colsum(c),
                    *_lowp.linear_grads(c, w, a, dtype),
                    *_lowp.linear_grads(c, w32, a, dtype, w_round=dtype),
                    _lowp.mm(a, w32, trans_b=True, bias=bias[:1].repeat(45), b_round=dtype))
    monkeypatch.setattr(_lowp, "_WBLOCK", 200)  # the weights in column blocks
    with native.use_isa(isa):
        got = run()
    with native.use_native(False):
        want = run()
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_array_equal(g.view(np.uint16), w.view(np.uint16))


@pytest.mark.skipif(not native.available() or not hasattr(native._ext, "lowp_widen"),
                    reason="the GEMM passes of dsn_lowp.c are not built")
def test_native_gemm_passes_refuse_bad_arguments():
    ext = native._ext
    src = np.zeros(100, np.uint16)
    f32 = np.zeros(100, np.float32)
    widen = native._CVT_CODES["bf16_to_f32"]
    with pytest.raises(ValueError, match="does not fit"):
        ext.lowp_widen(widen, src, 90, 10, 2, 10, f32)      # rows past the end of src
    with pytest.raises(ValueError, match="bad conversion kind"):
        ext.lowp_widen(native._CVT_CODES["f32_to_bf16"], src, 0, 10, 2, 10, f32)
    with pytest.raises(ValueError, match="4-byte items"):
        ext.lowp_narrow(native._CVT_CODES["f32_to_bf16"], src, None, 10, src)  # fp32 panel
    with pytest.raises(ValueError, match="rows of 7 columns"):
        ext.lowp_narrow(native._CVT_CODES["f32_to_bf16"], f32, None, 7, src)
    with pytest.raises(ValueError, match="stride 10"):  # strided rows past the end of out
        ext.lowp_narrow(native._CVT_CODES["f32_to_bf16"], f32[:50], None, 5, src, 6, 10)
    with pytest.raises(ValueError, match="offset 4"):  # an offset without its stride
        ext.lowp_narrow(native._CVT_CODES["f32_to_bf16"], f32, None, 10, src, 4)
    with pytest.raises(ValueError, match="does not fit"):
        ext.lowp_round(native._CVT_CODES["f32_to_bf16"], f32, 95, 10, 1, 10, f32)
    with pytest.raises(ValueError, match="bad conversion kind"):
        ext.lowp_round(widen, f32, 0, 10, 2, 10, f32)
    with pytest.raises(ValueError, match="items"):
        ext.lowp_relu(src, np.zeros(99, np.uint16))
    with pytest.raises(ValueError, match="columns"):
        ext.lowp_colsum(widen, src, 10, np.zeros(9, np.float32))


@pytest.mark.skipif(not native.available() or not hasattr(native._ext, "lowp_round"),
                    reason="the GEMM passes of dsn_lowp.c are not built")
@pytest.mark.parametrize("isa", native.isa_list() or ["scalar"])
@pytest.mark.parametrize("dtype", [ds.bfloat16, ds.float16])
def test_rounding_an_fp32_block_equals_cast_then_widen_bit_for_bit(dtype, isa):
    # every class of fp32 value: random bit patterns (NaN, inf, subnormals, ties)
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2 ** 32, size=(64, 3000), dtype=np.uint32)
    bits[0, :4] = [0x7F800000, 0xFF800000, 0x7FC00001, 0x00000001]
    bits[1, :2] = [0x3F808000, 0x3F818000]                     # bf16 ties to even
    a = bits.view(np.float32)
    out = np.empty((40, 2500), np.float32)
    with native.use_isa(isa), np.errstate(all="ignore"):
        _lowp._round_block(a, 7, 47, 300, 2800, dtype, out, True)  # strided block
        want = _lowp.to_f32(_lowp.from_f32(np.ascontiguousarray(a[7:47, 300:2800]), dtype))
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("trans", [True, False])
def test_large_weights_are_converted_in_column_blocks(path, trans, monkeypatch):
    # a transposed weight above _WBLOCK elements is widened (or rounded from its fp32
    # master) one column block at a time, an untransposed one whole: values within one
    # rounding of fp32 math, and the fp32 master read through b_round gives the bits of
    # its cast passed in
    monkeypatch.setattr(_lowp, "_WBLOCK", 1 << 9)
    rng = np.random.default_rng(3)
    bf = ds.bfloat16
    a = rng.standard_normal((50, 64)).astype(bf)
    w32 = rng.standard_normal((72, 64) if trans else (64, 72)).astype(np.float32)
    bias = rng.standard_normal(72).astype(bf)
    f = lambda x: x.astype(np.float32)  # noqa: E731
    got = _lowp.mm(a, w32.astype(bf), trans_b=trans, bias=bias)
    ref = f(a) @ (f(w32.astype(bf)).T if trans else f(w32.astype(bf))) + f(bias)
    np.testing.assert_allclose(f(got), ref, rtol=2.0 ** -7, atol=1e-2)
    master = _lowp.mm(a, w32, trans_b=trans, bias=bias, b_round=bf)
    np.testing.assert_array_equal(master.view(np.uint16), got.view(np.uint16))
    if trans:
        g = rng.standard_normal((50, 72)).astype(bf)
        gx, gw = _lowp.linear_grads(g, w32.astype(bf), a, bf)
        gx2, gw2 = _lowp.linear_grads(g, w32, a, bf, w_round=bf)
        np.testing.assert_allclose(f(gx), f(g) @ f(w32.astype(bf)), rtol=2.0 ** -7, atol=1e-2)
        for x, y in ((gx, gx2), (gw, gw2)):
            np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))


def test_a_large_weight_is_not_widened_whole():
    import tracemalloc
    rng = np.random.default_rng(4)
    a = rng.standard_normal((64, 1024)).astype(ds.bfloat16)
    w = rng.standard_normal((1024, 1024)).astype(ds.bfloat16)
    for call in (lambda: _lowp.mm(a, w, trans_b=True),):  # (a linear's forward)
        call()
        tracemalloc.start()
        try:
            out = call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # the output, the widened input panel and one weight block, not a 4 MiB copy
        assert peak - out.nbytes <= a.size * 4 + 4 * _lowp._WBLOCK + (1 << 20), peak
