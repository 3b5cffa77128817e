"""deepseek.testing's own helpers: reports, skips, input handling."""
import subprocess
import sys
import unittest

import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close, check_gradients, compare_with_numpy, make_tensor


def test_assert_close_report():
    with pytest.raises(AssertionError) as exc:
        assert_close(ds.tensor([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [3.5, 4.0]]), msg="demo")
    text = str(exc.value)
    assert text.startswith("demo: Tensors are not close: 1 / 4 elements mismatch")
    assert "greatest absolute difference: 0.5 at index (1, 0)" in text
    assert "worst element (1, 0): actual 3, expected 3.5" in text
    with pytest.raises(AssertionError, match="shape mismatch"):
        assert_close(ds.ones(2), ds.ones(3))
    with pytest.raises(AssertionError, match="dtype mismatch"):
        assert_close(ds.ones(2), ds.ones(2, dtype=ds.float64), check_dtype=True)
    assert_close(ds.tensor([np.nan, np.inf]), [np.nan, np.inf])
    assert_close(ds.ones(2, dtype=ds.bfloat16) * 1.001, np.ones(2))  # bf16 tolerance
    assert_close(ds.zeros(0), np.zeros(0))


def test_check_gradients_inputs():
    idx = ds.tensor([0, 2])
    assert check_gradients(lambda x, i, k: x[i] * k, (3,), idx, 2.0)
    w = make_tensor(2, 2, dtype=ds.float32, seed=1)
    assert check_gradients(lambda x, y: x @ y, (3, 2), w, requires_grad=[True, False])
    assert make_tensor(3, 4, noncontiguous=True).numpy().flags.c_contiguous is False
    with pytest.raises(ValueError, match="no differentiable input"):
        check_gradients(lambda i: i * 1.0, idx)


def test_compare_with_numpy_detects_mismatch():
    compare_with_numpy(lambda x: x.exp().sum(1), lambda x: np.exp(x).sum(1), [(3, 4)], rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError, match="output 0"):
        compare_with_numpy(lambda x: x * 2, lambda x: x * 2.01, [(3,)])


def test_compare_with_torch_skips_without_torch():
    code = ("import sys, unittest; sys.modules['torch'] = None\n"
            "from deepseek.testing import compare_with_torch\n"
            "try:\n"
            "    compare_with_torch(lambda x: x, lambda x: x, [(2,)])\n"
            "except unittest.SkipTest as e:\n"
            "    print('SKIP', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SKIP PyTorch is not installed"), out.stdout


def test_compare_with_torch_detects_gradient_mismatch():
    torch = pytest.importorskip("torch")
    from custom_functions import doubling
    from deepseek.testing import compare_with_torch

    BadDouble = doubling("BadDouble", grad_factor=3)   # its backward does not match its forward
    with pytest.raises(AssertionError, match="gradient of input 0"):
        compare_with_torch(BadDouble.apply, lambda x: x * 2, [(3,)])
    with pytest.raises(AssertionError, match="dtype"):
        compare_with_torch(lambda x: x.double(), lambda x: x, [(3,)])
    assert issubclass(unittest.SkipTest, Exception)
    del torch
