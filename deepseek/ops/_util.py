"""Helpers shared by op implementations: broadcasting reduction, operand preparation."""
import numpy as np

from .. import dtypes as _dt
from .. import native as _native
from ..backend import get_array_module
from .._tensor import Tensor, tensor as _tensor


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (undo numpy broadcasting) for a backward pass."""
    if g.shape == shape:
        return g
    ndiff = g.ndim - len(shape)
    axes = tuple(range(ndiff)) + tuple(i + ndiff for i, s in enumerate(shape)
                                       if s == 1 and g.shape[i + ndiff] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if ndiff:
        g = g.reshape(shape)
    return g


def shape_of(x):
    return x.shape if hasattr(x, "shape") else ()


def as_tensor_operand(x):
    """Tensors pass through; numpy arrays become tensors; Python scalars stay scalars."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.generic):  # before the float check: np.float64 subclasses float
        return x.item()
    if isinstance(x, (bool, int, float)):
        return x
    if hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__"):
        return Tensor._make(x)
    if isinstance(x, (list, tuple)):
        return _tensor(x)
    raise TypeError(f"unsupported operand of type {type(x).__name__}; expected a Tensor, "
                    "a number or an array")


def prepare_binary(a, b, op):
    """Apply PyTorch type promotion and device checks to a binary op's operands."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        # the common case first (per-op overhead): one dtype and one array type need
        # neither a cast nor a device check
        da, db = a._data, b._data
        if da.dtype == db.dtype and type(da) is type(db):
            return a, b
    from . import cast
    a = as_tensor_operand(a)
    b = as_tensor_operand(b)
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if ta and tb:
        da, db = a._data.dtype, b._data.dtype
        if da != db:
            # 0-d tensors are weak within their category, like Python scalars
            if a._data.ndim == 0 and b._data.ndim != 0 and _dt._category(da) <= _dt._category(db):
                rt = db
            elif b._data.ndim == 0 and a._data.ndim != 0 and _dt._category(db) <= _dt._category(da):
                rt = da
            else:
                rt = _dt.promote_types(da, db)
            if da != rt:
                a = cast(a, rt)
            if db != rt:
                b = cast(b, rt)
        if type(a._data) is not type(b._data) and a.device != b.device:
            raise RuntimeError(f"{op}: expected all tensors to be on the same device, but found "
                               f"at least two devices, {a.device} and {b.device}")
    elif ta:
        rt = _dt.scalar_result_type(a._data.dtype, b)
        if rt != a._data.dtype:
            a = cast(a, rt)
        if rt == _dt.bfloat16 and isinstance(b, float):
            b = rt.type(b)  # numpy would promote bfloat16 <op> python float to float32
    elif tb:
        rt = _dt.scalar_result_type(b._data.dtype, a)
        if rt != b._data.dtype:
            b = cast(b, rt)
        if rt == _dt.bfloat16 and isinstance(a, float):
            a = rt.type(a)
    else:
        raise TypeError(f"{op}: at least one operand must be a Tensor")
    return a, b


def broadcast_error(op, exc, *operands):
    """A clear error when ``operands`` don't broadcast (``exc`` itself when they do).

    Binary ops call this from ``except ValueError`` around their apply, so the check
    costs nothing unless numpy already failed."""
    shapes = [tuple(shape_of(x._data if isinstance(x, Tensor) else x)) for x in operands]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        return RuntimeError(f"{op}: shapes {' and '.join(map(str, shapes))} cannot be "
                            "broadcast together")
    return exc


def xp_of(*arrays):
    return get_array_module(*arrays)


def normalize_dims(dim, ndim, op):
    """dim argument (None, int, tuple) to a tuple of non-negative axes, or None."""
    if dim is None:
        return None
    if isinstance(dim, (list, tuple)):
        dims = tuple(dim)
    else:
        dims = (dim,)
    out = []
    n = max(ndim, 1)
    for d in dims:
        d = int(d)
        if not -n <= d < n:
            raise IndexError(f"{op}: dimension out of range (expected to be in range of "
                             f"[{-n}, {n - 1}], but got {d})")
        out.append(d % n if ndim else 0)
    if ndim == 0:
        return ()
    return tuple(sorted(set(out)))


def row_kernel(name, *arrays):
    """The native float32 row kernel ``name`` (see native.row_kernel) when every array
    given (None skipped) is a C-contiguous float32 numpy array, else None (then the
    caller runs its numpy sequence).

    The row kernels make numpy's float32 operations in numpy's order, so their results
    are that sequence's bits; only on C-contiguous rows is numpy's summation order the
    kernels', hence the contiguity condition."""
    for a in arrays:
        if a is not None and (type(a) is not np.ndarray or a.dtype != np.float32
                              or not a.flags.c_contiguous):
            return None
    return _native.row_kernel(name)
