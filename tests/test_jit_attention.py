"""deepseek.jit's inference plan for attention: SDPA with a mask lowered to GEMMs and the
C row softmax (added float masks, bool masks, broadcast and strided masks, fully masked
rows), the C kernels' exp/erf next to eager, and no buffer allocated per step."""
import numpy as np
import pytest

import deepseek
from deepseek import nn
from deepseek.nn import functional as F
from deepseek.jit import cgen

from test_jit import close, _cache  # noqa: F401  (the kernel cache fixture)

pytestmark = pytest.mark.skipif(not cgen.available(), reason="no C compiler")


class MaskedAttention(nn.Module):
    """q/k/v projections, heads split by permute, SDPA with the given mask."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.heads = heads

    def forward(self, x, mask):
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _compiled_vs_eager(model, x, mask):
    cm = deepseek.jit.trace(lambda a, m: model(a, m))
    with deepseek.no_grad():
        cm(x, mask)
        got = cm(x, mask).numpy()
        want = model(x, mask).numpy()
        plan = cm.plan_for(x, mask)
    return got, want, plan


@pytest.mark.parametrize("mshape", [(3, 1, 1, 10), (3, 4, 10, 10), (10, 10), (1, 10)])
def test_added_float_mask_matches_eager_and_is_lowered(mshape):
    deepseek.manual_seed(0)
    m = MaskedAttention().eval()
    x = deepseek.randn(3, 10, 32)
    rng = np.random.default_rng(1)
    mask = np.where(rng.random(mshape) < 0.3, np.float32(-3.4e38), rng.standard_normal(mshape))
    got, want, plan = _compiled_vs_eager(m, x, deepseek.tensor(mask.astype(np.float32)))
    close(got, want)
    assert "SDPA" not in plan.code and "softmax" in plan.code
    assert plan.allocs_per_step == 1  # the fresh output only


def test_bool_mask_with_fully_masked_rows_gives_eager_zeros():
    deepseek.manual_seed(0)
    m = MaskedAttention().eval()
    x = deepseek.randn(2, 10, 32)
    keep = np.random.default_rng(2).random((2, 1, 10, 10)) < 0.6
    keep[0, 0, 3] = False     # query 3 of batch 0 attends to nothing
    got, want, plan = _compiled_vs_eager(m, x, deepseek.tensor(keep))
    close(got, want)
    np.testing.assert_array_equal(got[0, :, 3], 0.0)
    assert not np.isnan(got).any()


def test_strided_mask_is_copied_per_step_and_read_right():
    deepseek.manual_seed(0)
    m = MaskedAttention().eval()
    x = deepseek.randn(2, 10, 32)
    base = np.random.default_rng(3).standard_normal((2, 4, 10, 10)).astype(np.float32)

    def f(a, mm):
        return m(a, mm.transpose(-1, -2))   # a mask view whose rows are not contiguous
    cm = deepseek.jit.trace(f)
    t = deepseek.tensor(base)
    with deepseek.no_grad():
        cm(x, t)
        close(cm(x, t).numpy(), f(x, t).numpy())
        # the new mask values are read on the next call (nothing of the mask is frozen)
        t2 = deepseek.tensor(base[::-1].copy())
        close(cm(x, t2).numpy(), f(x, t2).numpy())


def test_masked_attention_training_through_the_compiled_callable():
    deepseek.manual_seed(0)
    m = MaskedAttention()
    x = deepseek.randn(2, 10, 32)
    mask = deepseek.tensor(np.triu(np.full((10, 10), -1e9, np.float32), 1))
    cm = deepseek.compile(m)
    cm(x, mask).square().mean().backward()
    g = {n: p.grad.numpy().copy() for n, p in m.named_parameters()}
    m.zero_grad()
    m(x, mask).square().mean().backward()
    for n, p in m.named_parameters():
        close(g[n], p.grad.numpy())


def test_softmax_kernel_exp_is_close_to_numpy_and_underflows_to_zero():
    import ctypes
    lib = cgen.build(cgen.row_source(["float32"]))
    f = lib.ds_softmax_float32
    f.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_long] * 6
    xs = np.concatenate([np.linspace(-87, 0, 20001), [-88.0, -1e30, -np.inf]]).astype(np.float32)
    rows = np.stack([xs, np.zeros_like(xs)], 1).copy()   # softmax([x, 0])[0] = e^x / (1 + e^x)
    out = np.empty_like(rows)
    f(len(xs), 2, 0, rows.ctypes.data, out.ctypes.data, None, 0, 1, 1, 0, 0, 0)
    e = np.exp(xs[:-3].astype(np.float64))
    np.testing.assert_allclose(out[:-3, 0], e / (1 + e), rtol=5e-7)
    assert out[-2, 0] == 0.0 and out[-1, 0] == 0.0 and out[-1, 1] == 1.0
    assert 0.0 <= out[-3, 0] < 1e-38
    nan = np.array([[np.nan, 0.0]], np.float32)
    f(1, 2, 0, nan.ctypes.data, out.ctypes.data, None, 0, 1, 1, 0, 0, 0)
    assert np.isnan(out[0]).all()   # eager's softmax of a row with a NaN: NaN
    big = np.array([[100.0, 0.0, 1.0], [np.inf, 1.0, 2.0]], np.float32)
    out = np.empty_like(big)
    f(2, 3, 0, big.ctypes.data, out.ctypes.data, None, 0, 1, 1, 0, 0, 0)
    np.testing.assert_allclose(out[0], [1.0, np.exp(-100.0), np.exp(-99.0)], rtol=1e-6, atol=1.2e-38)
    assert np.isnan(out[1, 0]) and (out[1, 1:] == 0).all()   # exp(+inf) is inf, as libm's


def test_gelu_kernel_gives_eager_bits(monkeypatch):
    # BLAS GEMMs, so the GELU's inputs are eager's bits too (the packed GEMM sums in
    # another order; tests/test_jit_gemm.py)
    monkeypatch.setenv("DEEPSEEK_JIT_GEMM", "blas")
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.GELU()).eval()
    x = deepseek.randn(8, 16) * 3
    cm = deepseek.compile(m)
    with deepseek.no_grad():
        cm(x)
        np.testing.assert_array_equal(cm(x).numpy(), m(x).numpy())


def test_many_small_attention_products_run_on_one_blas_thread_with_eager_values():
    from deepseek.ops.attention import blas_threads
    deepseek.manual_seed(0)
    m = MaskedAttention(d=128, heads=4).eval()
    x = deepseek.randn(4, 128, 128)
    mask = deepseek.tensor(np.zeros((4, 1, 1, 128), np.float32))
    got, want, plan = _compiled_vs_eager(m, x, mask)
    close(got, want)
    # q @ k^T and p @ v: 16 products of 128x32x128 (cut in batch ranges, _mm1p, when
    # BLAS has threads: each range on one of them)
    assert plan.code.count("_mm1(") + plan.code.count("_mm1p(") == 2
    before = blas_threads()
    out = np.empty((2, 4, 4))
    plan.ns["_mm1"](np.ones((2, 4, 4)), np.ones((2, 4, 4)), out)
    np.testing.assert_array_equal(out, 4.0)
    assert blas_threads() == before   # the thread count is restored after each product


def test_kernels_built_without_avx2_give_the_same_bits(monkeypatch):
    """The C kernels are compiled with -mavx2 where the CPU has it; the baseline build
    (what a CPU without AVX2 gets) must give the same values: GELU, LayerNorm and the
    masked softmax of attention, bit for bit."""
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.LayerNorm(32)).eval()
    att = MaskedAttention(d=32, heads=4).eval()
    x = deepseek.randn(2, 16, 32) * 3
    mask = deepseek.tensor(np.where(np.arange(16) % 3 == 0, -1e4, 0).astype(np.float32))

    def run():
        cm, ca = deepseek.compile(m), deepseek.jit.trace(lambda a, k: att(a, k))
        with deepseek.no_grad():
            cm(x), ca(x, mask)
            return cm(x).numpy(), ca(x, mask).numpy()
    default = run()
    monkeypatch.setattr(cgen, "_FLAGS", [f for f in cgen._FLAGS if f != "-mavx2"])
    compiled = cgen.stats["compiled"]
    baseline = run()
    if "-mavx2" in cgen._cpu_flags():
        assert cgen.stats["compiled"] > compiled   # the baseline build really ran
    for d, b in zip(default, baseline):
        np.testing.assert_array_equal(d, b)
