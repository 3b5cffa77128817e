"""Reductions with dim/keepdim: sum mean max min var std prod argmax argmin logsumexp."""
import builtins as _builtins  # this module defines sum/max/min
from collections import namedtuple

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import normalize_dims, xp_of

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _expand_back(g, shape, axes, keepdim):
    """Reshape a reduced gradient so it broadcasts against the input ``shape``."""
    if axes is None:
        return g.reshape((1,) * len(shape))
    if not keepdim:
        g = g.reshape([1 if i in axes else s for i, s in enumerate(shape)])
    return g


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axes=None, keepdim=False, dtype=None):
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        out = a.sum(axis=axes, keepdims=keepdim, dtype=dtype)
        return xp_of(a).asarray(out)

    @staticmethod
    def backward(ctx, g):
        g = _expand_back(g, ctx.shape, ctx.axes, ctx.keepdim)
        return xp_of(g).broadcast_to(g, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axes=None, keepdim=False):
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        n = a.size if axes is None else int(np.prod([a.shape[i] for i in axes]))
        ctx.n = n
        with np.errstate(invalid="ignore", divide="ignore"):
            out = a.mean(axis=axes, keepdims=keepdim)
        return xp_of(a).asarray(out).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        g = _expand_back(g, ctx.shape, ctx.axes, ctx.keepdim)
        return xp_of(g).broadcast_to(g / g.dtype.type(_builtins.max(ctx.n, 1)) if ctx.n else g, ctx.shape)


class Var(Function):
    @staticmethod
    def forward(ctx, a, axes=None, correction=1, keepdim=False):
        xp = xp_of(a)
        mean = a.mean(axis=axes, keepdims=True)
        d = a - mean
        n = a.size if axes is None else int(np.prod([a.shape[i] for i in axes]))
        denom = _builtins.max(n - correction, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (d * d).sum(axis=axes, keepdims=keepdim) / a.dtype.type(denom) if denom else \
                xp.full((d * d).sum(axis=axes, keepdims=keepdim).shape, np.nan, dtype=a.dtype)
        ctx.d, ctx.denom, ctx.axes, ctx.keepdim, ctx.shape = d, denom, axes, keepdim, a.shape
        return xp.asarray(out).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        g = _expand_back(g, ctx.shape, ctx.axes, ctx.keepdim)
        if not ctx.denom:
            return xp_of(g).full(ctx.shape, np.nan, dtype=g.dtype)
        return (g * (2.0 / ctx.denom) * ctx.d).astype(g.dtype, copy=False)


class MaxMin(Function):
    """max/min over all elements (ties share the gradient) or along one dim (indices)."""

    @staticmethod
    def forward(ctx, a, is_max=True, axis=None, keepdim=False):
        xp = xp_of(a)
        ctx.shape, ctx.axis, ctx.keepdim = a.shape, axis, keepdim
        if a.size == 0 and (axis is None or a.shape[axis] == 0):
            raise RuntimeError(f"{'max' if is_max else 'min'}(): expected a non-empty tensor "
                               "when reducing (the reduction has no identity)")
        if axis is None:
            out = a.max() if is_max else a.min()
            ctx.mask = a == out
            return xp.asarray(out)
        idx = (a.argmax(axis=axis) if is_max else a.argmin(axis=axis))
        idx_k = xp.expand_dims(idx, axis)
        vals = xp.take_along_axis(a, idx_k, axis=axis)
        ctx.idx_k = idx_k
        if not keepdim:
            vals = vals.squeeze(axis)
        else:
            idx = idx_k
        ctx.mark_non_differentiable(idx)
        return vals, idx.astype(np.int64, copy=False)

    @staticmethod
    def backward(ctx, g, g_idx=None):
        xp = xp_of(g)
        if ctx.axis is None:
            m = ctx.mask
            return (g * m / m.sum()).astype(g.dtype, copy=False)
        if not ctx.keepdim:
            g = xp.expand_dims(g, ctx.axis)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        xp.put_along_axis(out, ctx.idx_k, g, axis=ctx.axis)
        return out


class AmaxAmin(Function):
    """amax/amin over one, several or all dims; ties share the gradient evenly."""

    @staticmethod
    def forward(ctx, a, is_max=True, axes=None, keepdim=False):
        if a.size == 0 and (axes is None or _builtins.any(a.shape[i] == 0 for i in axes)):
            raise RuntimeError(f"{'amax' if is_max else 'amin'}(): expected a non-empty tensor "
                               f"when reducing (got shape {tuple(a.shape)}; the reduction has "
                               "no identity)")
        out = a.max(axis=axes, keepdims=True) if is_max else a.min(axis=axes, keepdims=True)
        ctx.mask, ctx.shape, ctx.axes, ctx.keepdim = a == out, a.shape, axes, keepdim
        if not keepdim:
            out = out.reshape([] if axes is None else
                              [d for i, d in enumerate(a.shape) if i not in axes])
        return out

    @staticmethod
    def backward(ctx, g):
        g = _expand_back(g, ctx.shape, ctx.axes, ctx.keepdim)
        m = ctx.mask
        return (g * m / m.sum(axis=ctx.axes, keepdims=True)).astype(g.dtype, copy=False)


class Prod(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdim=False):
        ctx.save_for_backward(a)
        ctx.axis, ctx.keepdim = axis, keepdim
        return xp_of(a).asarray(a.prod(axis=axis, keepdims=keepdim))

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        xp = xp_of(a)
        axis = ctx.axis
        x = a.reshape(-1) if axis is None else a
        ax = 0 if axis is None else axis
        # product of all the other elements, exact even with zeros: exclusive
        # prefix product times exclusive suffix product
        ones_shape = list(x.shape)
        ones_shape[ax] = 1
        one = xp.ones(ones_shape, dtype=x.dtype)
        pre = xp.concatenate([one, xp.cumprod(x, axis=ax)], axis=ax)
        pre = xp.take(pre, range(x.shape[ax]), axis=ax)
        rev = xp.flip(x, axis=ax)
        suf = xp.concatenate([one, xp.cumprod(rev, axis=ax)], axis=ax)
        suf = xp.flip(xp.take(suf, range(x.shape[ax]), axis=ax), axis=ax)
        others = pre * suf
        if axis is None:
            return (g.reshape(()) * others).reshape(a.shape)
        if not ctx.keepdim:
            g = xp.expand_dims(g, axis)
        return g * others


class Logsumexp(Function):
    @staticmethod
    def forward(ctx, a, axes, keepdim=False):
        xp = xp_of(a)
        m = a.max(axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        s = xp.exp(a - m)
        out = xp.log(s.sum(axis=axes, keepdims=True)) + m
        ctx.save_for_backward(a)
        ctx.out = out
        ctx.axes, ctx.keepdim = axes, keepdim
        return out if keepdim else out.reshape([d for i, d in enumerate(a.shape) if i not in axes])

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        g = _expand_back(g, a.shape, ctx.axes, ctx.keepdim)
        return g * xp_of(a).exp(a - ctx.out)


# ---- functional wrappers ----------------------------------------------------------
def _float_input(a, op):
    if not _dt.is_floating(a.dtype):
        raise RuntimeError(f"{op}(): expected a floating point input, got dtype {a.dtype}; "
                           "convert it with .float()")


def sum(a, dim=None, keepdim=False, dtype=None, *, axis=None):
    """Sum over ``dim`` (all dims when None); bool/int inputs sum to int64 like PyTorch."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    axes = normalize_dims(dim, a.ndim, "sum")
    if dtype is None and a.dtype.kind in "biu":
        dtype = np.int64
    return Sum.apply(a, axes=axes, keepdim=keepdim, dtype=None if dtype is None else _dt.as_dtype(dtype))


def mean(a, dim=None, keepdim=False, *, axis=None, dtype=None):
    """Mean over ``dim`` (all dims when None) of a floating tensor."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    if dtype is not None:
        from .shape import cast
        a = cast(a, _dt.as_dtype(dtype))
    _float_input(a, "mean")
    return Mean.apply(a, axes=normalize_dims(dim, a.ndim, "mean"), keepdim=keepdim)


def var(a, dim=None, unbiased=None, keepdim=False, correction=None, *, axis=None):
    """Variance; ``correction=1`` (unbiased, the default) or ``unbiased=False`` (0)."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    _float_input(a, "var")
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    return Var.apply(a, axes=normalize_dims(dim, a.ndim, "var"), correction=correction, keepdim=keepdim)


def std(a, dim=None, unbiased=None, keepdim=False, correction=None, *, axis=None):
    """Standard deviation: sqrt of ``var`` with the same arguments."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    from .elementwise import sqrt
    return sqrt(var(a, dim, unbiased, keepdim, correction))


def _maxmin(a, dim, keepdim, is_max, other=None):
    from .elementwise import maximum, minimum
    if isinstance(dim, Tensor):  # max(a, b) elementwise form
        return (maximum if is_max else minimum)(a, dim)
    if dim is None:
        return MaxMin.apply(a, is_max=is_max)
    axis = normalize_dims(dim, a.ndim, "max" if is_max else "min")
    axis = axis[0] if axis else None
    if axis is None:  # 0-d input
        return ValuesIndices(a.clone(), Tensor._make(np.zeros((), np.int64)))
    v, i = MaxMin.apply(a, is_max=is_max, axis=axis, keepdim=keepdim)
    return ValuesIndices(v, i)


def max(a, dim=None, keepdim=False, *, axis=None):
    """Max of all elements, or (values, indices) along ``dim``."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    return _maxmin(a, dim, keepdim, True)


def min(a, dim=None, keepdim=False, *, axis=None):
    """Min of all elements, or (values, indices) along ``dim``."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    return _maxmin(a, dim, keepdim, False)


def amax(a, dim=None, keepdim=False, *, axis=None):
    """Max over ``dim`` (an int, a tuple, or all dims); ties share the gradient."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    return AmaxAmin.apply(a, is_max=True, axes=normalize_dims(dim, a.ndim, "amax"), keepdim=keepdim)


def amin(a, dim=None, keepdim=False, *, axis=None):
    """Min over ``dim`` (an int, a tuple, or all dims); ties share the gradient."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    return AmaxAmin.apply(a, is_max=False, axes=normalize_dims(dim, a.ndim, "amin"), keepdim=keepdim)


def prod(a, dim=None, keepdim=False, *, axis=None, dtype=None):
    """Product over one ``dim`` (all elements when None); zeros get exact gradients."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    if dtype is not None:
        from .shape import cast
        a = cast(a, _dt.as_dtype(dtype))
    axis = normalize_dims(dim, a.ndim, "prod")
    return Prod.apply(a, axis=None if not axis else axis[0], keepdim=keepdim)


def logsumexp(a, dim=None, keepdim=False, *, axis=None):
    """log(sum(exp(a))) over ``dim``, computed stably."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    _float_input(a, "logsumexp")
    axes = normalize_dims(dim, a.ndim, "logsumexp")
    return Logsumexp.apply(a, axes=axes, keepdim=keepdim)


def _arg(a, dim, keepdim, is_max):
    xp = xp_of(a._data)
    if dim is None:
        idx = a._data.argmax() if is_max else a._data.argmin()
        out = xp.asarray(idx, dtype=np.int64)
        if keepdim:
            out = out.reshape((1,) * a.ndim)
        return Tensor._make(out)
    axis = normalize_dims(dim, a.ndim, "argmax" if is_max else "argmin")
    if not axis:
        return Tensor._make(xp.zeros((), np.int64))
    idx = a._data.argmax(axis=axis[0]) if is_max else a._data.argmin(axis=axis[0])
    if keepdim:
        idx = xp.expand_dims(idx, axis[0])
    return Tensor._make(idx.astype(np.int64, copy=False))


def argmax(a, dim=None, keepdim=False, *, axis=None):
    """Index of the max (flattened when ``dim`` is None); never differentiable."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    return _arg(a, dim, keepdim, True)


def argmin(a, dim=None, keepdim=False, *, axis=None):
    """Index of the min (flattened when ``dim`` is None); never differentiable."""
    if axis is not None:  # numpy's name, accepted by PyTorch too
        dim = axis
    return _arg(a, dim, keepdim, False)
