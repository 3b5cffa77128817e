"""deepseek.native argument checking: clear TypeError/ValueError on both paths, no crash."""
import contextlib
import importlib

import ml_dtypes
import numpy as np
import pytest

from deepseek import native as N

BF16 = np.dtype(ml_dtypes.bfloat16)
BACKENDS = ["numpy", "native"]


@contextlib.contextmanager
def backend(name):
    if name == "numpy":
        with N.use_native(False):
            yield
        return
    if not N.isa_list():
        pytest.skip("deepseek._native is not built")
    with N.use_native(True):
        yield


def f32(n=8):
    return np.zeros(n, np.float32)


def readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("call,exc,words", [
    (lambda: N.f32_to_f16(np.zeros(4)), TypeError, ["'src'", "float32", "float64"]),
    (lambda: N.f32_to_f16([1.0, 2.0]), TypeError, ["'src'", "numpy.ndarray", "list"]),
    (lambda: N.f32_to_f16(f32(8)[::2]), ValueError, ["'src'", "C-contiguous", "strides"]),
    (lambda: N.f32_to_f16(f32(8), out=np.zeros(7, np.float16)), ValueError,
     ["'out'", "7 elements", "expected 8"]),
    (lambda: N.f32_to_bf16(f32(8), out=np.zeros(8, np.float16)), TypeError,
     ["'out'", "bfloat16", "float16"]),
    (lambda: N.f16_to_f32(np.zeros(4, np.float16), out=readonly(f32(4))), ValueError,
     ["'out'", "writeable", "read-only"]),
    (lambda: N.reduce("mean", [f32()], f32()), ValueError, ["'op'", "sum, avg", "'mean'"]),
    (lambda: N.reduce(1, [f32()], f32()), TypeError, ["'op'", "str", "int"]),
    (lambda: N.reduce("sum", f32(), f32()), TypeError, ["'inputs'", "list", "ndarray"]),
    (lambda: N.reduce("sum", [], f32()), ValueError, ["'inputs'", "at least one"]),
    (lambda: N.reduce("sum", [f32(), np.zeros(8)], f32()), TypeError,
     ["'inputs[1]'", "float32", "float64"]),
    (lambda: N.reduce("sum", [f32(), f32(9)], f32()), ValueError,
     ["'inputs[1]'", "9 elements", "expected 8"]),
    (lambda: N.reduce("sum", [f32()], np.zeros(8, np.uint8)), TypeError,
     ["'out'", "float32", "uint8"]),
    (lambda: N.reduce("avg", [np.zeros(3, np.int32)], np.zeros(3, np.int32)), TypeError,
     ["avg", "floating", "int32"]),
    (lambda: N.reduce("sum", [f32()], readonly(f32())), ValueError, ["'out'", "read-only"]),
    (lambda: N.reduce_inplace("sum", f32(), f32(4)), ValueError,
     ["'inputs[1]'", "4 elements", "expected 8"]),
    (lambda: N.unscale_(np.zeros(4, np.int32), 0.5), TypeError,
     ["'grads'", "float32 or float16 or bfloat16", "int32"]),
    (lambda: N.unscale_([f32(), f32(4)[::2]], 0.5), ValueError, ["'grads[1]'", "C-contiguous"]),
    (lambda: N.unscale_(f32(), "x"), TypeError, ["'inv_scale'", "real number", "str"]),
    (lambda: N.sgd_step(f32(), f32(7), lr=0.1), ValueError,
     ["'grad'", "7 elements", "expected 8", "'param'"]),
    (lambda: N.sgd_step(f32(), f32(), lr=0.1, momentum=0.9), ValueError,
     ["momentum_buffer", "None"]),
    (lambda: N.sgd_step(f32(), f32(), f32(), lr=0.1, momentum=0.9, nesterov=True,
                        dampening=0.5), ValueError, ["nesterov", "dampening"]),
    (lambda: N.sgd_step(readonly(f32()), f32(), lr=0.1), ValueError, ["'param'", "read-only"]),
    (lambda: N.sgd_step(f32(), f32(), lr=0.1, param_half=np.zeros(8, np.float32)), TypeError,
     ["'param_half'", "float16 or bfloat16", "float32"]),
    (lambda: N.adam_step(f32(), f32(), f32(), f32(), lr=0.1, step=0), ValueError,
     ["step", ">= 1", "0"]),
    (lambda: N.adam_step(f32(), f32(), f32(), f32(), lr=0.1, step=1, amsgrad=True),
     ValueError, ["max_exp_avg_sq", "None"]),
    (lambda: N.adamw_step(f32(), f32(), np.zeros(8, np.float16), f32(), lr=0.1, step=1),
     TypeError, ["'exp_avg'", "float32", "float16"]),
])
def test_messages(name, call, exc, words):
    with backend(name), pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("name", BACKENDS)
def test_overlap_is_refused(name):
    buf = f32(16)
    with backend(name):
        with pytest.raises(ValueError, match="'out' and 'inputs\\[0\\]' overlap"):
            N.reduce("sum", [buf[:8], f32()], buf[1:9])
        N.reduce("sum", [buf[:8], f32()], buf[:8])          # the very same array: fine
        with pytest.raises(ValueError, match="'param' and 'exp_avg' overlap"):
            N.adam_step(buf[:8], f32(), buf[4:12], f32(), lr=0.1, step=1)
        with pytest.raises(ValueError, match="'src' and 'out' overlap"):
            N.f32_to_bf16(buf[:8], out=buf[4:12].view(BF16)[:8])


def test_use_native_and_use_isa_validate():
    with N.use_native(False):
        assert N.isa() == "numpy"
    if not N.isa_list():
        with pytest.raises(RuntimeError, match="not built"):
            with N.use_native(True):
                pass
        return
    with pytest.raises(ValueError, match="unknown instruction set 'sse9'"):
        with N.use_isa("sse9"):
            pass
    assert N.isa() == N.isa_list()[0]


def test_extension_checks_direct_calls():
    """The private extension also validates: a direct call can't crash or misread."""
    if not N.isa_list():
        pytest.skip("deepseek._native is not built")
    ext = importlib.import_module("deepseek._native")
    with pytest.raises(TypeError, match="'src' must have dtype float32"):
        ext.convert(0, np.zeros(4), np.zeros(4, np.float16))
    with pytest.raises(TypeError, match="'src' must be a contiguous float32 array"):
        ext.convert(0, object(), np.zeros(4, np.float16))
    with pytest.raises(ValueError, match="'src' must be C-contiguous"):
        ext.convert(0, f32()[::2], np.zeros(4, np.float16))
    with pytest.raises(ValueError, match="'out' has 3 elements, expected 4"):
        ext.convert(0, f32(4), np.zeros(3, np.float16))
    with pytest.raises(ValueError, match="'out' must be writeable"):
        ext.convert(0, f32(4), readonly(np.zeros(4, np.float16)))
    with pytest.raises(ValueError, match="kind must be 0..3"):
        ext.convert(7, f32(4), np.zeros(4, np.float16))
    with pytest.raises(TypeError, match="'inputs\\[1\\]' must be a contiguous"):
        ext.reduce(0, 0, [f32(), None], f32())
    with pytest.raises(ValueError, match="op code"):
        ext.reduce(9, 0, [f32()], f32())
    with pytest.raises(TypeError, match="'avg' needs a floating dtype"):
        ext.reduce(1, 3, [np.zeros(2, np.int32)], np.zeros(2, np.int32))
    with pytest.raises(TypeError, match="'grad' must have dtype float16"):
        ext.unscale(1, f32(), 1.0)
    with pytest.raises(ValueError, match="'max_exp_avg_sq'"):
        ext.adam(f32(), f32(), f32(), f32(), None, None, 0, 0.1, 0.9, 0.999, 1e-8, 0.0, 1.0,
                 True, False, False)
    with pytest.raises(ValueError, match="half_dtype"):
        ext.sgd(f32(), f32(), None, np.zeros(8, np.uint16), 5, 0.1, 0.0, 0.0, 0.0,
                False, False, False)
    big = np.zeros(8, ">f4")
    with pytest.raises(TypeError, match="must have dtype float32"):
        ext.convert(0, big, np.zeros(8, np.float16))
