"""The C enum codes (dtype, reduce op, conversion) come from the extension itself; the
numpy fallback's copy, used when the extension is not built, must hold the same values."""
import numpy as np
import pytest

from deepseek import native
from deepseek.native import _fallback

ext = native._ext
needs_ext = pytest.mark.skipif(ext is None, reason="deepseek._native is not built")


@needs_ext
@pytest.mark.parametrize("table", ["DTYPE_CODES", "OP_CODES", "CVT_CODES"])
def test_fallback_codes_equal_the_extension_export(table):
    assert getattr(ext, table) == getattr(_fallback, table)


@needs_ext
def test_python_reads_the_codes_from_the_extension():
    assert native._codes is ext
    assert native._OP_CODES == {op: ext.OP_CODES[op] for op in native.REDUCE_OPS}
    for dtype, code in native._DTYPE_CODES.items():
        assert ext.DTYPE_CODES[str(dtype)] == code


def test_every_reduce_op_and_kernel_dtype_has_a_code():
    assert set(native._OP_CODES) == set(native.REDUCE_OPS)
    assert set(native._DTYPE_CODES) >= {np.dtype(np.float32), np.dtype(np.float64),
                                        np.dtype(np.int32), np.dtype(np.int64),
                                        np.dtype(np.float16)}
    assert len(set(native._DTYPE_CODES.values())) == len(native._DTYPE_CODES)


@needs_ext
def test_the_codes_reach_the_kernels():
    # a wrong code would pick another op or dtype inside the C kernel
    a = np.arange(6, dtype=np.float32)
    b = np.full(6, 2, dtype=np.float32)
    out = np.empty(6, np.float32)
    with native.use_native(True):
        native.reduce("max", [a, b], out)
        np.testing.assert_array_equal(out, np.maximum(a, b))
        native.reduce("prod", [a, b], out)
        np.testing.assert_array_equal(out, a * b)
        x = np.array([1.5, -2.25, 65504.0], np.float32)
        np.testing.assert_array_equal(native.f32_to_f16(x), x.astype(np.float16))
        np.testing.assert_array_equal(native.f16_to_f32(x.astype(np.float16)), x)
