"""deepseek.jit's packed-weight GEMM (jit/cgemm.py): Linear layers of an inference plan
against eager, ragged sizes, strided inputs, weight changes, and the BLAS path."""
import numpy as np
import pytest

import deepseek
from deepseek import nn
from deepseek.jit import cgemm

from test_jit import close, _cache  # noqa: F401  (the kernel cache fixture)

needs_cpu = pytest.mark.skipif(not cgemm._cpu_ok(), reason="no AVX2/FMA on this CPU")


def _plan(cm, x):
    with deepseek.no_grad():
        cm(x)
        return cm(x).numpy(), cm.plan_for(x)


@needs_cpu
@pytest.mark.parametrize("rows,k,n", [(4, 16, 16), (5, 300, 37), (7, 257, 16), (13, 33, 100),
                                      (32, 64, 48), (37, 520, 21), (256, 8, 3)])
def test_packed_linear_matches_eager(rows, k, n):
    """Every row remainder (the 6-row blocks and their split tails), partial column
    panels and reductions longer than one K block."""
    deepseek.manual_seed(0)
    m = nn.Linear(k, n).eval()
    x = deepseek.randn(rows, k)
    got, plan = _plan(deepseek.compile(m), x)
    assert "_gemm(" in plan.code and "_matmul(" not in plan.code
    with deepseek.no_grad():
        close(got, m(x).numpy())


@needs_cpu
def test_strided_rows_and_the_batch_dims():
    deepseek.manual_seed(0)
    lin = nn.Linear(40, 24).eval()
    f = deepseek.jit.trace(lambda a: lin(a[:, :40]))   # rows 64 floats apart
    x = deepseek.randn(9, 64)
    got, plan = _plan(f, x)
    assert ", 64, " in plan.code.split("_gemm(")[1].split("\n")[0]   # lda 64, no copy
    with deepseek.no_grad():
        close(got, lin(x[:, :40]).numpy())
    m = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 8)).eval()
    x3 = deepseek.randn(2, 5, 24)
    got, plan = _plan(deepseek.compile(m), x3)
    assert plan.code.count("_gemm(") == 2 and plan.allocs_per_step == 1
    with deepseek.no_grad():
        close(got, m(x3).numpy())


@needs_cpu
def test_an_optimizer_step_is_seen():
    """The packed weight is a copy: an update must rebuild it (in-place changes and
    replaced arrays: test_jit.py's fast-path test, which runs packed too)."""
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6)).eval()
    cm = deepseek.compile(m)
    x = deepseek.randn(8, 12)
    with deepseek.no_grad():
        cm(x)
        assert "_gemm(" in cm.plan_for(x).code
    opt = deepseek.optim.SGD(m.parameters(), lr=0.5)
    m(x).sum().backward()
    opt.step()
    with deepseek.no_grad():
        close(cm(x).numpy(), m(x).numpy())


def test_blas_where_packing_does_not_pay_or_is_turned_off(monkeypatch):
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    x1 = deepseek.randn(1, 16)   # one row: a GEMV, BLAS's
    got, plan = _plan(deepseek.compile(m), x1)
    assert "_gemm(" not in plan.code
    monkeypatch.setenv("DEEPSEEK_JIT_GEMM", "blas")
    x = deepseek.randn(8, 16)
    got, plan = _plan(deepseek.compile(m), x)
    assert "_gemm(" not in plan.code and plan.code.count("_matmul(") == 2
    with deepseek.no_grad():
        np.testing.assert_array_equal(got, m(x).numpy())   # BLAS: eager's bits
    x64 = deepseek.randn(8, 16).double()
    monkeypatch.setenv("DEEPSEEK_JIT_GEMM", "auto")
    got, plan = _plan(deepseek.compile(m.double()), x64)  # float64: BLAS
    assert "_gemm(" not in plan.code


def test_pack_layout():
    w = np.arange(3 * 20, dtype=np.float32).reshape(20, 3)   # N 20, K 3: two panels
    p = cgemm.pack(w)
    assert p.shape == (2, 3, cgemm.NR) and p.flags.c_contiguous
    np.testing.assert_array_equal(p[0], w[:16].T)
    np.testing.assert_array_equal(p[1, :, :4], w[16:].T)
    np.testing.assert_array_equal(p[1, :, 4:], 0)
