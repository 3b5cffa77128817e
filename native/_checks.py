"""Argument checks shared by the native and the numpy path of deepseek.native.

Both paths raise the same errors, before any memory is touched: TypeError for a
wrong type or dtype, ValueError for a wrong length, layout, writability or overlap.
Every message names the function, the argument, what was expected and what was got.
"""
import numpy as np
import ml_dtypes

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
F64 = np.dtype(np.float64)
I32 = np.dtype(np.int32)
I64 = np.dtype(np.int64)
HALF = (F16, BF16)


def dtype_names(dtypes):
    return " or ".join(str(d) for d in dtypes)


def array(fn, name, a, dtypes, writeable=False):
    """Check that `a` is a C-contiguous ndarray of one of `dtypes`; returns it."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}(): argument '{name}' must be a numpy.ndarray of dtype "
                        f"{dtype_names(dtypes)}, got {type(a).__name__}")
    if a.dtype not in dtypes:
        raise TypeError(f"{fn}(): argument '{name}' must have dtype {dtype_names(dtypes)}, "
                        f"got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}(): argument '{name}' must be C-contiguous, got a strided "
                         f"view (shape {a.shape}, strides {a.strides})")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{fn}(): argument '{name}' must be writeable, got a read-only array")
    return a


def size(fn, name, a, n, ref):
    if a.size != n:
        raise ValueError(f"{fn}(): argument '{name}' has {a.size} elements, expected {n} "
                         f"(the size of '{ref}')")


def no_overlap(fn, name_a, a, name_b, b, allow_same=False):
    """Forbid shared memory between a and b (allow_same: except being the very same)."""
    if a.size == 0 or b.size == 0 or not np.may_share_memory(a, b):
        return
    if (allow_same and a.ctypes.data == b.ctypes.data and a.nbytes == b.nbytes):
        return
    extra = " (only the very same array is allowed)" if allow_same else ""
    raise ValueError(f"{fn}(): arguments '{name_a}' and '{name_b}' overlap in memory{extra}")


def number(fn, name, x):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}(): argument '{name}' must be a real number, got "
                        f"{type(x).__name__}")
    return float(x)
