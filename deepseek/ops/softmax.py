"""softmax and log_softmax along one dim (numerically stable: the max is subtracted)."""
import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import row_kernel, xp_of

_LOW = (_dt.float16, _dt.bfloat16)


def _stable_exp(xp, a, axis):
    """(z, e) with z = a - max(a) and e = exp(z); fresh arrays, a is left alone."""
    m = a.max(axis=axis, keepdims=True)
    if m.dtype.kind == "f" and not xp.isfinite(m).all():
        m = xp.where(xp.isfinite(m), m, 0)  # rows of -inf (fully masked) or inf
    z = a - m
    e = xp.exp(z)
    return z, e


class Softmax(Function):
    @staticmethod
    def forward(ctx, a, axis):
        xp = xp_of(a)
        low = a.dtype in _LOW
        src = a.astype(np.float32) if low else a
        rows = row_kernel("softmax_rows", src) if axis == a.ndim - 1 and a.size else None
        if rows is not None:  # numpy's sequence with its max/sum passes in C (same bits)
            n = a.shape[-1]
            e = np.empty_like(src)
            rows(0, src, e, None, n)
            with np.errstate(invalid="ignore", over="ignore"):
                np.exp(e, out=e)
            rows(1, e, None, None, n)
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                _, e = _stable_exp(xp, src, axis)
                e /= e.sum(axis=axis, keepdims=True)
        out = e.astype(a.dtype) if low else e
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        rows = row_kernel("softmax_rows", g, y) if ctx.axis == y.ndim - 1 and y.size else None
        if rows is not None:
            gy = np.empty_like(y)
            rows(2, g, y, gy, y.shape[-1])
            return gy
        gy = g * y
        gy -= y * gy.sum(axis=ctx.axis, keepdims=True)
        return gy


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, axis):
        xp = xp_of(a)
        low = a.dtype in _LOW
        src = a.astype(np.float32) if low else a
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            z, e = _stable_exp(xp, src, axis)
            z -= xp.log(e.sum(axis=axis, keepdims=True))
        out = z.astype(a.dtype) if low else z
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        xp = xp_of(g)
        p = xp.exp(out)
        p *= g.sum(axis=ctx.axis, keepdims=True)
        return (g - p).astype(g.dtype, copy=False)


def _implicit_dim(ndim):
    return 0 if ndim in (0, 1, 3) else 1


def _prepare(x, dim, dtype, op):
    from .shape import cast
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if dim is None:
        dim = _implicit_dim(x.ndim)
    n = max(x.ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of "
                         f"[{-n}, {n - 1}], but got {dim})")
    if dtype is not None:
        x = cast(x, _dt.as_dtype(dtype))
    elif not _dt.is_floating(x.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {x.dtype}")
    axis = dim % x.ndim if x.ndim else None
    return x, axis


def softmax(x, dim=None, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim``."""
    x, axis = _prepare(x, dim, dtype, "softmax")
    return Softmax.apply(x, axis)


def log_softmax(x, dim=None, dtype=None):
    """x - logsumexp(x) along ``dim``."""
    x, axis = _prepare(x, dim, dtype, "log_softmax")
    return LogSoftmax.apply(x, axis)
