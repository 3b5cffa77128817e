"""deepseek.jit's inference plan on several threads (jit/parallel.py): large kernel calls
cut into row ranges give the one-thread plan's bits; the workers' errors and a busy
pool."""
import threading

import numpy as np
import pytest

import deepseek
from deepseek import nn
from deepseek.nn import functional as F
from deepseek.jit import cgen, parallel, plan as jplan

from test_jit import _cache  # noqa: F401  (the kernel cache fixture)
from test_jit_attention import MaskedAttention

pytestmark = pytest.mark.skipif(not cgen.available(), reason="no C compiler")


def _both(monkeypatch, fn, *xs):
    """fn's compiled results and plan code with the plan's calls cut in 1 and 2 parts."""
    out = {}
    for threads in (1, 2):
        monkeypatch.setattr(jplan, "_threads", lambda backend, t=threads: t)
        cm = deepseek.jit.trace(fn)
        with deepseek.no_grad():
            cm(*xs)
            out[threads] = cm(*xs).numpy(), cm.plan_for(*xs).code
    return out


@pytest.mark.parametrize("mask", ["none", "causal", "batch", "square", "bool", "full"])
def test_attention_in_parts_gives_the_serial_bits(monkeypatch, mask):
    """Every way the softmax kernel reads its mask: the parts start where its row
    indexing restarts, with the mask pointer moved."""
    deepseek.manual_seed(0)
    b, s, d = 8, 64, 64
    att = MaskedAttention(d=d, heads=4).eval()
    x = deepseek.randn(b, s, d)
    rng = np.random.default_rng(0)
    masks = {"none": None, "causal": None,
             "batch": np.where(rng.random((b, 1, 1, s)) < 0.2, -1e4, 0).astype(np.float32),
             "square": rng.standard_normal((s, s)).astype(np.float32),
             "bool": rng.random((1, 4, s, s)) < 0.8,
             "full": rng.standard_normal((b, 4, s, s)).astype(np.float32)}
    m = masks[mask]
    if mask == "causal":
        def fn(a):
            q = k = v = att.qkv(a)[..., :d].reshape(b, s, 4, d // 4).permute(0, 2, 1, 3)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        args = (x,)
    else:
        mt = None if m is None else deepseek.tensor(m)

        def fn(a, mm=mt):
            return att(a, mm)
        args = (x,)
    got = _both(monkeypatch, fn, *args)
    assert "softmax (2 threads)" in got[2][1] and "_par(" not in got[1][1]
    assert got[2][1].count("_mm1p(") == 2 and "_mm1p(" not in got[1][1]   # q k^T, p v
    np.testing.assert_array_equal(got[1][0], got[2][0])
    with deepseek.no_grad():
        want = fn(*args).numpy()
    np.testing.assert_allclose(got[2][0], want, rtol=1e-5, atol=1e-6)


def test_layer_norm_gelu_and_flat_kernels_in_parts(monkeypatch):
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.LayerNorm(512)).eval()
    x = deepseek.randn(4, 80, 256)

    def fn(a):
        return m(a) * 0.5 + 1.0   # one flat row: a part of the elements each
    got = _both(monkeypatch, fn, x)
    code = got[2][1]
    assert "layer_norm (2 threads)" in code and "gelu(add(in0, in1)) (2 threads)" in code
    np.testing.assert_array_equal(got[1][0], got[2][0])


def test_small_calls_stay_on_one_thread(monkeypatch):
    m = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.LayerNorm(16)).eval()
    got = _both(monkeypatch, lambda a: m(a), deepseek.randn(4, 16))
    assert "_par(" not in got[2][1]


def test_workers_raise_a_part_error_and_run_inline_when_busy():
    w = parallel.Workers(2)
    seen = []

    def f(k):
        if k == 1:
            raise ValueError("part 1")
        seen.append((k, threading.current_thread().name))
    with pytest.raises(ValueError, match="part 1"):
        w.run(f, [(0,), (1,)])
    w.run(f, [(0,), (2,)])   # the pool works after an error
    assert {k for k, _ in seen} == {0, 2}
    assert any(name == "deepseek-jit-worker" for _, name in seen)
    seen.clear()
    with w._busy:            # another plan holds the workers: run here, in turn
        w.run(f, [(3,), (4,)])
    assert [k for k, _ in seen] == [3, 4] and {n for _, n in seen} == {threading.current_thread().name}
    with pytest.raises(ValueError, match="parts"):
        w.run(f, [(0,)] * 3)
    with pytest.raises(ValueError, match="at least 2"):
        parallel.Workers(1)


def test_cuts():
    assert parallel.cuts(10, 2) == [(0, 5), (5, 10)]
    assert parallel.cuts(10, 3, step=3) == [(0, 3), (3, 6), (6, 10)]
    assert parallel.cuts(5, 2, step=4) == [(0, 5)]
    assert parallel.cuts(1, 4) == [(0, 1)]
