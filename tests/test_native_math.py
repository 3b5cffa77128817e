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
