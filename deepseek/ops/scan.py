"""Cumulative ops along one dim: cumsum, cumprod, cummax, cummin, logcumsumexp."""
from collections import namedtuple

import numpy as np

from ..autograd.function import Function
from .. import dtypes as _dt
from ._util import xp_of
from .shape_extra import _dim

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _rev_cumsum(xp, g, axis):
    return xp.flip(xp.cumsum(xp.flip(g, axis), axis=axis), axis)


def _keep_for_backward(ctx, a, axis, out):
    """Save what a scan's backward needs (input, output, axis); return ``out``."""
    ctx.save_for_backward(a, out)
    ctx.axis = axis
    return out


class Cumsum(Function):
    @staticmethod
    def forward(ctx, a, axis, dtype=None):
        ctx.axis = axis
        ctx.in_dtype = a.dtype
        return xp_of(a).cumsum(a, axis=axis, dtype=dtype)

    @staticmethod
    def backward(ctx, g):
        return _rev_cumsum(xp_of(g), g, ctx.axis).astype(ctx.in_dtype, copy=False)


class Cumprod(Function):
    @staticmethod
    def forward(ctx, a, axis):
        return _keep_for_backward(ctx, a, axis, xp_of(a).cumprod(a, axis=axis))

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved_tensors
        xp, ax = xp_of(g), ctx.axis
        if not bool((a == 0).any()):
            return (_rev_cumsum(xp, g * out, ax) / a).astype(g.dtype, copy=False)
        # zeros: d out_j / d a_i = prod_{k<=j, k!=i} a_k, one position at a time
        am = xp.moveaxis(a, ax, -1)
        gm = xp.moveaxis(g, ax, -1)
        res = xp.empty_like(gm)
        for i in range(am.shape[-1]):
            b = am.copy()
            b[..., i] = 1
            cp = xp.cumprod(b, axis=-1)
            res[..., i] = (gm[..., i:] * cp[..., i:]).sum(-1)
        return xp.moveaxis(res, -1, ax)


class CumExtreme(Function):
    """Running max/min with the index where it was attained (the latest of ties)."""

    @staticmethod
    def forward(ctx, a, axis, is_max):
        xp = xp_of(a)
        am = xp.moveaxis(a, axis, 0)
        vals = xp.empty_like(am)
        idx = xp.zeros(am.shape, np.int64)
        if am.shape[0]:
            cur, ci = am[0].copy(), xp.zeros(am.shape[1:], np.int64)
            for i in range(am.shape[0]):
                x = am[i]
                take = (x >= cur) if is_max else (x <= cur)
                if _dt.is_floating(a.dtype):  # a NaN propagates (the index follows the latest NaN)
                    take = take | xp.isnan(x)
                cur = xp.where(take, x, cur)
                ci = xp.where(take, i, ci)
                vals[i], idx[i] = cur, ci
        vals, idx = xp.moveaxis(vals, 0, axis), xp.moveaxis(idx, 0, axis)
        ctx.idx, ctx.axis, ctx.shape = idx, axis, a.shape
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, g, g_idx=None):
        from .embedding import index_add_rows
        xp, ax = xp_of(g), ctx.axis
        gm = xp.moveaxis(g, ax, -1)
        im = xp.moveaxis(ctx.idx, ax, -1)
        n = gm.shape[-1]
        rows = xp.arange(gm.size // max(n, 1)).reshape(gm.shape[:-1] + (1,)) * n
        acc = xp.zeros(gm.size, dtype=g.dtype)
        index_add_rows(xp, acc, (rows + im).reshape(-1), gm.reshape(-1))
        return xp.moveaxis(acc.reshape(gm.shape), -1, ax)


def _logcumsumexp_arr(xp, a, axis):
    if hasattr(xp.logaddexp, "accumulate"):
        try:
            return xp.logaddexp.accumulate(a, axis=axis)
        except (TypeError, NotImplementedError):
            pass
    m = a.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        return xp.log(xp.cumsum(xp.exp(a - m), axis=axis)) + m


class Logcumsumexp(Function):
    @staticmethod
    def forward(ctx, a, axis):
        out = _logcumsumexp_arr(xp_of(a), a, axis).astype(a.dtype, copy=False)
        return _keep_for_backward(ctx, a, axis, out)

    @staticmethod
    def backward(ctx, g):
        # grad_j = sum_{i>=j} g_i exp(a_j - out_i), split by the sign of g so that each
        # part is a (reversed) logcumsumexp of finite logs: stable for any magnitudes
        a, out = ctx.saved_tensors
        xp, ax = xp_of(g), ctx.axis
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            def part(p):
                r = xp.flip(_logcumsumexp_arr(xp, xp.flip(xp.log(p) - out, ax), ax), ax)
                return xp.exp(r + a)
            res = part(xp.maximum(g, 0)) - part(xp.maximum(-g, 0))
        return xp.nan_to_num(res, nan=0.0).astype(g.dtype, copy=False)


def cumsum(input, dim, dtype=None):
    """Running sum along ``dim`` (bool/int inputs sum in int64, like PyTorch)."""
    d = _dim(dim, input.ndim, "cumsum")
    if dtype is None and input.dtype.kind in "biu":
        dtype = np.int64
    dt = None if dtype is None else _dt.as_dtype(dtype)
    if input.ndim == 0:
        from .shape import clone, cast
        return cast(input, dt) if dt is not None else clone(input)
    return Cumsum.apply(input, d, dt)


def cumprod(input, dim, dtype=None):
    """Running product along ``dim`` (exact gradients with zeros)."""
    from .shape import cast
    d = _dim(dim, input.ndim, "cumprod")
    if dtype is not None:
        input = cast(input, _dt.as_dtype(dtype))
    elif input.dtype.kind in "biu":
        input = cast(input, np.int64)
    if input.ndim == 0:
        from .shape import clone
        return clone(input)
    return Cumprod.apply(input, d)


def _cumext(input, dim, is_max, op):
    d = _dim(dim, input.ndim, op)
    if input.ndim == 0:
        from .shape import clone
        from .._tensor import Tensor
        return ValuesIndices(clone(input), Tensor._make(np.zeros((), np.int64)))
    v, i = CumExtreme.apply(input, d, is_max)
    return ValuesIndices(v, i)


def cummax(input, dim):
    """(values, indices) of the running maximum along ``dim``."""
    return _cumext(input, dim, True, "cummax")


def cummin(input, dim):
    """(values, indices) of the running minimum along ``dim``."""
    return _cumext(input, dim, False, "cummin")


def logcumsumexp(input, dim):
    """log(cumsum(exp(input))) along ``dim``, computed stably."""
    d = _dim(dim, input.ndim, "logcumsumexp")
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"logcumsumexp(): expected a floating point input, got {input.dtype}")
    if input.ndim == 0:
        from .shape import clone
        return clone(input)
    return Logcumsumexp.apply(input, d)
