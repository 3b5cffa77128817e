"""The fused passes of the DDP compression hooks (deepseek.native.wire_pack /
wire_unpack): bit for bit the numpy sequences the fp16/bf16 hooks ran before (absmax
by max/min, in-place fp32 multiply, cast), on every instruction set and the numpy
fallback, with NaN payloads, infinities, subnormals and fp16 overflow."""
import contextlib

import ml_dtypes
import numpy as np
import pytest

from deepseek import native

BF16 = np.dtype(ml_dtypes.bfloat16)


def _paths():
    out = [("numpy", lambda: native.use_native(False))]
    for name in native.isa_list():
        out.append((name, lambda name=name: _isa(name)))
    return out


@contextlib.contextmanager
def _isa(name):
    with native.use_native(True), native.use_isa(name):
        yield


PATHS = _paths()


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.choice([1e-8, 1e-3, 1.0, 30.0, 1e5], n)).astype(np.float32)
    specials = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, -3e-39, 7e4, -1e38, 65504, 65520],
                        np.float32)
    k = min(n, len(specials))
    x[rng.choice(n, k, replace=False)] = specials[:k]
    return x


def _with_nans(x, seed=1):
    x = x.copy()
    bits = x.view(np.uint32)
    rng = np.random.default_rng(seed)
    at = rng.choice(x.size, 3, replace=False)
    bits[at] = np.array([0x7fc00000, 0xff800001, 0x7f812345], np.uint32)  # quiet, signalling
    return x


def _ref_pack(x, dtype, scale):
    m = max(float(x.max()), -float(x.min())) if x.size else 0.0
    with np.errstate(all="ignore"):
        v = x * np.float32(scale) if scale is not None else x
        return v.astype(dtype), m


def _same(a, b):
    return a.shape == b.shape and a.view(np.uint8).tobytes() == b.view(np.uint8).tobytes()


@pytest.mark.parametrize("path", [p for p, _ in PATHS])
@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("scale", [None, 1.0, 2.0 ** 12, 2.0 ** -7])
@pytest.mark.parametrize("n", [0, 5, 8, 1027])
def test_wire_pack_equals_scale_cast_absmax(path, dtype, scale, n):
    ctx = dict(PATHS)[path]
    x = _data(n)
    want, want_m = _ref_pack(x, dtype, scale)
    out = np.empty(n, dtype)
    with ctx():
        m = native.wire_pack(x, out, scale)
    assert _same(out, want)
    assert m == want_m and isinstance(m, float)


@pytest.mark.parametrize("path", [p for p, _ in PATHS])
@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["fp16", "bf16", "fp32"])
def test_wire_pack_nan_payloads_and_nan_max(path, dtype):
    x = _with_nans(_data(40))
    want, want_m = _ref_pack(x, dtype, 2.0 ** 5)
    out = np.empty(40, dtype)
    with dict(PATHS)[path]():
        m = native.wire_pack(x, out, 2.0 ** 5)
    assert np.isnan(want_m) and np.isnan(m)
    assert _same(out, want)
    y = np.array([1.0, -np.inf, 2.0] * 5, np.float32)
    with dict(PATHS)[path]():
        assert native.wire_pack(y, np.empty(15, dtype)) == np.inf


@pytest.mark.parametrize("path", [p for p, _ in PATHS])
@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("n", [0, 7, 16, 1029])
def test_wire_unpack_equals_cast_then_scale(path, dtype, n):
    with np.errstate(invalid="ignore"):
        src = _with_nans(_data(n)).astype(dtype) if n > 3 else _data(n).astype(dtype)
    scale = 1.0 / (2.0 ** 9 * 3)          # 1 / (scale * world size): not a power of two
    want = src.astype(np.float32)
    want *= np.float32(scale)
    out = np.full(n, 7.0, np.float32)
    with dict(PATHS)[path]():
        r = native.wire_unpack(src, out, scale)
    assert r is out and _same(out, want)


def test_wire_checks_arguments():
    x = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="wire_pack.*src"):
        native.wire_pack(x.astype(np.float64), np.empty(8, np.float16))
    with pytest.raises(ValueError, match="wire_pack.*out.*elements"):
        native.wire_pack(x, np.empty(7, np.float16))
    with pytest.raises(ValueError, match="overlap"):
        native.wire_pack(x, x)
    with pytest.raises(TypeError, match="wire_unpack.*out"):
        native.wire_unpack(np.ones(8, np.float16), np.empty(8, np.float16), 1.0)
    with pytest.raises(ValueError, match="contiguous|strided"):
        native.wire_unpack(np.ones(16, np.float16)[::2], np.empty(8, np.float32), 1.0)


def test_hook_send_leaves_bucket_and_decodes_like_before():
    """The fp16 hook's send no longer scales the bucket in place (the fp32 resend
    reads the local gradient as is); its payload is the old one bit for bit."""
    from deepseek.distributed import comm_hooks as H
    x = _data(300)
    x[~np.isfinite(x)] = 1.0
    x = np.clip(x, -100, 100)
    keep = x.copy()
    payload = np.empty(301, np.float16)
    m = H._pack(x, payload[:-1], 2.0 ** 8)
    assert _same(x, keep)
    want, want_m = _ref_pack(keep, np.float16, 2.0 ** 8)
    assert _same(payload[:-1], want) and m == want_m
    flat = np.empty(300, np.float32)
    H._unpack(payload[:-1], flat, 1.0 / (2.0 ** 8 * 2))
    ref = payload[:-1].astype(np.float32)
    ref *= np.float32(1.0 / (2.0 ** 8 * 2))
    assert _same(flat, ref)
