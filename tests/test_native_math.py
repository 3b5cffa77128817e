"""deepseek.native.erf (GELU's normal CDF): C kernel and fallback against math.erf."""
import math

import numpy as np
import pytest

from deepseek import native

paths = [False] + ([True] if native._ext is not None else [])


def _exact(x):
    return np.array([math.erf(v) for v in x.astype(np.float64).reshape(-1)]).reshape(x.shape)


@pytest.mark.parametrize("use_c", paths)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_matches_math_erf(use_c, dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=500) * 3, [0.0, -0.0, 1e-30, 6.0, -6.0, np.inf,
                                                   -np.inf]]).astype(dtype)
    with native.use_native(use_c):
        y = native.erf(x)
    assert y.dtype == dtype and y.shape == x.shape
    eps = np.finfo(dtype).eps
    if use_c and dtype == np.float32:
        # the C float32 kernel is a rational approximation: absolute error < 5e-7, and
        # near 0 (where erf(x) ~ 2x/sqrt(pi)) a few ulp relative
        np.testing.assert_allclose(y, _exact(x), rtol=8 * eps, atol=5e-7)
    else:
        np.testing.assert_allclose(y, _exact(x), rtol=2 * eps, atol=2 * eps * 1e-30)
    with native.use_native(use_c):
        assert np.isnan(native.erf(np.array([np.nan], dtype)))[0]


@pytest.mark.parametrize("use_c", paths)
def test_erf_shapes_views_and_out(use_c):
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(4, 6)
    with native.use_native(use_c):
        strided = native.erf(x[:, ::2])
        zero_d = native.erf(np.array(0.5))
        out = np.empty_like(x)
        assert native.erf(x, out=out) is out
        same = x.copy()
        native.erf(same, out=same)            # in place is allowed
    np.testing.assert_allclose(strided, _exact(x[:, ::2]), rtol=1e-6, atol=5e-7)
    assert zero_d.shape == () and abs(float(zero_d) - math.erf(0.5)) < 1e-15
    np.testing.assert_array_equal(out, same)


def test_erf_rejects_bad_input():
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        native.erf(np.arange(3))
    with pytest.raises(TypeError, match="must be a numpy.ndarray of dtype float32 or float64, got list"):
        native.erf([0.5])
    with pytest.raises(ValueError, match="has 2 elements, expected 3"):
        native.erf(np.zeros(3, np.float32), out=np.zeros(2, np.float32))


@pytest.mark.parametrize("use_c", paths)
def test_gelu_is_the_numpy_sequence_bit_for_bit(use_c):
    """native.gelu is x * (0.5 * (1 + erf(x / sqrt 2))) computed in float32 in that order,
    with the same path's erf: the same bits, the CDF too; NaN/inf propagate."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=997) * 4, [0.0, -0.0, 30.0, -30.0, np.inf, -np.inf,
                                                   np.nan]]).astype(np.float32)
    with native.use_native(use_c):
        cdf = np.empty_like(x)
        y = native.gelu(x, cdf=cdf)
        want_cdf = np.float32(0.5) * (np.float32(1.0) + native.erf(x * np.float32(0.7071067811865476)))
    np.testing.assert_array_equal(cdf, want_cdf)
    np.testing.assert_array_equal(y, x * want_cdf)
    exact = x.astype(np.float64) * 0.5 * (1 + _exact(x / np.sqrt(2.0)))
    ok = np.isfinite(x)
    # erf's absolute error (< 5e-7) scaled by |x|
    np.testing.assert_allclose(y[ok], exact[ok], rtol=1e-6, atol=5e-7 * 30)
    # as in the numpy sequence: -inf * Phi(-inf) = -inf * 0 is NaN
    assert np.isnan(y[-1]) and y[-3] == np.inf and np.isnan(y[-2])
    with native.use_native(use_c):
        m = x[:12].reshape(3, 4)
        np.testing.assert_array_equal(native.gelu(m[:, ::2]), native.gelu(m)[:, ::2])
        same = m.copy()
        native.gelu(same, out=same)               # in place is allowed
        np.testing.assert_array_equal(same, native.gelu(m))


def test_gelu_rejects_bad_input():
    with pytest.raises(TypeError, match="float32, got float64"):
        native.gelu(np.zeros(3))
    with pytest.raises(ValueError, match="has 2 elements, expected 3"):
        native.gelu(np.zeros(3, np.float32), cdf=np.zeros(2, np.float32))
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError):
        native.gelu(x, cdf=x)                    # cdf over the input
