"""deepseek.native conversions: bit-exact against numpy / ml_dtypes on every path."""
import contextlib

import ml_dtypes
import numpy as np
import pytest

from deepseek import native as N

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = [0, 1, 7, 15, 16, 17, 1023, (1 << 20) + 3]
BACKENDS = ["numpy"] + (N.isa_list() or ["native"])


@contextlib.contextmanager
def backend(name):
    if name == "numpy":
        with N.use_native(False):
            yield
        return
    if not N.isa_list():
        pytest.skip("deepseek._native is not built")
    with N.use_native(True), N.use_isa(name):
        yield


def unaligned(n, dtype):
    """A view starting at element 1 of a larger buffer (misaligned for SIMD loads)."""
    return np.empty(n + 1, dtype)[1:]


def bits(a):
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


def special_f32():
    """Edge patterns: all fp16/bf16 values, the midpoints between neighbours (ties),
    one ulp either side, NaN payloads, subnormals, overflow boundaries, random bits."""
    h = np.arange(1 << 16, dtype=np.uint32)
    f16_vals = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    f16_bits = f16_vals.view(np.uint32)
    mids = (f16_bits[:-1].astype(np.uint64) + f16_bits[1:]) // 2   # ties within a binade
    bf = h << 16
    rng = np.random.default_rng(0)
    parts = [f16_bits, mids.astype(np.uint32), bf, bf + 0x8000, bf + 0x7fff, bf + 0x8001,
             np.uint32([0x7f800001, 0xff800001, 0x7fa00000, 0x7fc00000, 0x7f802000,
                        0x7fffffff, 0x00000001, 0x33000000, 0x33000001, 0x387fc000,
                        0x477ff000, 0x477fefff, 0x477fe000, 0x7f7fffff, 0x80000000,
                        0x00018000, 0x00028000, 0x007fffff]),
             rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)]
    allb = np.concatenate(parts).astype(np.uint32)
    allb = np.concatenate([allb, allb - 1, allb + 1])
    return allb.view(np.float32)


@pytest.mark.parametrize("name", BACKENDS)
def test_f32_to_f16_bit_exact(name):
    x = special_f32()
    with backend(name), np.errstate(all="ignore"):
        got = N.f32_to_f16(x)
        ref = x.astype(np.float16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(bits(got), bits(ref))


@pytest.mark.parametrize("name", BACKENDS)
def test_f32_to_bf16_bit_exact(name):
    x = special_f32()
    with backend(name), np.errstate(all="ignore"):
        got = N.f32_to_bf16(x)
        ref = x.astype(BF16)
    assert got.dtype == BF16
    np.testing.assert_array_equal(bits(got), bits(ref))


@pytest.mark.parametrize("name", BACKENDS)
def test_f16_to_f32_all_values(name):
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    with backend(name):
        got = N.f16_to_f32(h)
    np.testing.assert_array_equal(bits(got), bits(h.astype(np.float32)))


@pytest.mark.parametrize("name", BACKENDS)
def test_bf16_to_f32_all_values(name):
    h = np.arange(1 << 16, dtype=np.uint16).view(BF16)
    with backend(name):
        got = N.bf16_to_f32(h)
    np.testing.assert_array_equal(bits(got), bits(h.astype(np.float32)))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("n", SIZES)
def test_sizes_and_unaligned_views(name, n):
    rng = np.random.default_rng(n)
    x = unaligned(n, np.float32)
    x[:] = rng.standard_normal(n, dtype=np.float32) * 300
    if n:
        x[-1] = np.nan          # the NaN fix-up must work in the vector tail as well
        x[n // 2] = -np.inf
    with backend(name), np.errstate(all="ignore"):
        for dt, to, back in ((np.float16, N.f32_to_f16, N.f16_to_f32),
                             (BF16, N.f32_to_bf16, N.bf16_to_f32)):
            out = unaligned(n, dt)
            assert to(x, out=out) is out
            np.testing.assert_array_equal(bits(out), bits(x.astype(dt)))
            out32 = unaligned(n, np.float32)
            back(out, out=out32)
            np.testing.assert_array_equal(bits(out32), bits(out.astype(np.float32)))


@pytest.mark.parametrize("name", BACKENDS)
def test_shape_is_kept_and_cast(name):
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    with backend(name):
        h = N.f32_to_f16(x)
        assert h.shape == (2, 3, 4)
        b = N.cast(x, "bfloat16")
        assert b.dtype == BF16 and b.shape == x.shape
        np.testing.assert_array_equal(bits(N.cast(b, np.float32)), bits(b.astype(np.float32)))
        np.testing.assert_array_equal(N.cast(x, np.float64), x.astype(np.float64))
        out = np.empty(24, np.float16)
        N.cast(x, np.float16, out=out)
        np.testing.assert_array_equal(bits(out), bits(x.astype(np.float16).ravel()))


def test_env_switch(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_NATIVE", "0")
    assert not N.available()
    assert N.isa() == "numpy"
    np.testing.assert_array_equal(N.f32_to_f16(np.ones(3, np.float32)), np.ones(3))
    monkeypatch.setenv("DEEPSEEK_NATIVE", "1")
    assert N.available() == bool(N.isa_list())
    with N.use_native(False):
        assert not N.available()
