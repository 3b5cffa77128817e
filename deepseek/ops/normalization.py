"""Normalization ops: layer_norm, batch_norm (running statistics), group_norm,
rms_norm, normalize (Lp)."""
import math

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import row_kernel, xp_of
from . import _par

_LOW = (_dt.float16, _dt.bfloat16)


def _stats(xp, x, axes, eps):
    """(xhat, rstd) of x normalised over ``axes`` (biased variance)."""
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = xp.mean(xc * xc, axis=axes, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    xc *= rstd
    return xc, rstd.astype(x.dtype, copy=False), mu, var


def _norm_backward(xp, gxhat, xhat, rstd, axes):
    """Gradient through xhat = (x - mean) * rstd, statistics over ``axes``."""
    n = 1
    for a in axes:
        n *= xhat.shape[a]
    m1 = gxhat.mean(axis=axes, keepdims=True)
    m2 = (gxhat * xhat).mean(axis=axes, keepdims=True)
    gx = gxhat - m1
    gx -= xhat * m2
    gx *= rstd
    return gx


class LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, w=None, b=None, nd=1, eps=1e-5):
        xp = xp_of(x)
        low = x.dtype in _LOW
        xf = x.astype(np.float32) if low else x
        axes = tuple(range(x.ndim - nd, x.ndim))
        n = math.prod(x.shape[-nd:])
        kernel = row_kernel("layer_norm", xf, w, b) if n > 1 and xf.size else None
        if kernel is not None:
            y, xhat = np.empty_like(xf), np.empty_like(xf)
            rstd = np.empty(x.shape[:-nd] + (1,) * nd, np.float32)
            rows = xf.size // n         # the rows split over the threads
            x2, y2, h2, r2 = xf.reshape(rows, n), y.reshape(rows, n), xhat.reshape(rows, n), \
                rstd.reshape(rows)
            _par.split_rows(rows, xf.size, lambda lo, hi: kernel(
                x2[lo:hi], w, b, y2[lo:hi], h2[lo:hi], r2[lo:hi], n, eps))
        else:
            xhat, rstd, _, _ = _stats(xp, xf, axes, eps)
            y = xhat * w if w is not None else xhat.copy()
            if b is not None:
                y += b
        ctx.xhat, ctx.rstd, ctx.w, ctx.axes = xhat, rstd, w, axes
        ctx.has_b = b is not None
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        na = ctx.needs_input_grad
        xhat, w, axes = ctx.xhat, ctx.w, ctx.axes
        gf = g.astype(xhat.dtype, copy=False)
        batch_axes = tuple(range(g.ndim - len(axes)))
        gx = gw = gb = None
        n = math.prod(xhat.shape[g.ndim - len(axes):])
        kernel = row_kernel("layer_norm_backward", gf, xhat, ctx.rstd, w) \
            if n > 1 and gf.size else None
        if kernel is not None:
            # (n == 1 is left to numpy: its column sums are then one pairwise sum)
            gx = np.empty_like(gf) if na[0] else None
            gw = np.empty(xhat.shape[-len(axes):], np.float32) if len(na) > 1 and na[1] else None
            gb = np.empty(xhat.shape[-len(axes):], np.float32) \
                if len(na) > 2 and na[2] else None
            kernel(gf, xhat, ctx.rstd, w, gx, gw, gb, n)
            return tuple(None if t is None else t.astype(g.dtype, copy=False)
                         for t in (gx, gw, gb))
        if na[0]:
            gxhat = gf * w if w is not None else gf
            gx = _norm_backward(xp, gxhat, xhat, ctx.rstd, axes).astype(g.dtype, copy=False)
        if len(na) > 1 and na[1]:
            gw = (gf * xhat).sum(axis=batch_axes).astype(g.dtype, copy=False)
        if len(na) > 2 and na[2]:
            gb = gf.sum(axis=batch_axes).astype(g.dtype, copy=False)
        return gx, gw, gb


class BatchNorm(Function):
    """Batch statistics (training) or given running statistics (eval) per channel (dim 1)."""

    @staticmethod
    def forward(ctx, x, w=None, b=None, mean=None, var=None, training=True, eps=1e-5,
                stats_out=None):
        xp = xp_of(x)
        low = x.dtype in _LOW
        xf = x.astype(np.float32) if low else x
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        ctx.training, ctx.axes, ctx.bshape = training, axes, bshape
        if training:
            xhat, rstd, mu, v = _stats(xp, xf, axes, eps)
            if stats_out is not None:
                stats_out["mean"], stats_out["var"] = mu.reshape(-1), v.reshape(-1)
        else:
            rstd = (1.0 / xp.sqrt(var.astype(xf.dtype, copy=False) + eps)).reshape(bshape)
            xhat = (xf - mean.reshape(bshape)) * rstd
        if w is not None:
            y = xhat * w.reshape(bshape)
        else:
            y = xhat.copy() if training else xhat
        if b is not None:
            y += b.reshape(bshape)
        ctx.xhat, ctx.rstd, ctx.w = xhat, rstd, w
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        na = ctx.needs_input_grad
        xhat, w, axes, bshape = ctx.xhat, ctx.w, ctx.axes, ctx.bshape
        gf = g.astype(xhat.dtype, copy=False)
        gx = gw = gb = None
        if na[0]:
            gxhat = gf * w.reshape(bshape) if w is not None else gf
            if ctx.training:
                gx = _norm_backward(xp, gxhat, xhat, ctx.rstd, axes)
            else:
                gx = gxhat * ctx.rstd
            gx = gx.astype(g.dtype, copy=False)
        if len(na) > 1 and na[1]:
            gw = (gf * xhat).sum(axis=axes).astype(g.dtype, copy=False)
        if len(na) > 2 and na[2]:
            gb = gf.sum(axis=axes).astype(g.dtype, copy=False)
        return gx, gw, gb


class GroupNorm(Function):
    @staticmethod
    def forward(ctx, x, w=None, b=None, groups=1, eps=1e-5):
        xp = xp_of(x)
        low = x.dtype in _LOW
        xf = x.astype(np.float32) if low else x
        N, C = x.shape[:2]
        xg = xf.reshape(N, groups, -1)
        xhat, rstd, _, _ = _stats(xp, xg, (2,), eps)
        xhat = xhat.reshape(x.shape)
        bshape = (1, C) + (1,) * (x.ndim - 2)
        y = xhat * w.reshape(bshape) if w is not None else xhat.copy()
        if b is not None:
            y += b.reshape(bshape)
        ctx.xhat, ctx.rstd, ctx.w, ctx.groups, ctx.bshape = xhat, rstd, w, groups, bshape
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        na = ctx.needs_input_grad
        xhat, w, bshape = ctx.xhat, ctx.w, ctx.bshape
        gf = g.astype(xhat.dtype, copy=False)
        N = g.shape[0]
        axes = (0,) + tuple(range(2, g.ndim))
        gx = gw = gb = None
        if na[0]:
            gxhat = gf * w.reshape(bshape) if w is not None else gf
            gx = _norm_backward(xp, gxhat.reshape(N, ctx.groups, -1),
                                xhat.reshape(N, ctx.groups, -1), ctx.rstd, (2,))
            gx = gx.reshape(g.shape).astype(g.dtype, copy=False)
        if len(na) > 1 and na[1]:
            gw = (gf * xhat).sum(axis=axes).astype(g.dtype, copy=False)
        if len(na) > 2 and na[2]:
            gb = gf.sum(axis=axes).astype(g.dtype, copy=False)
        return gx, gw, gb


class RMSNorm(Function):
    @staticmethod
    def forward(ctx, x, w=None, nd=1, eps=None):
        xp = xp_of(x)
        low = x.dtype in _LOW
        xf = x.astype(np.float32) if low else x
        axes = tuple(range(x.ndim - nd, x.ndim))
        if eps is None:
            eps = float(np.finfo(x.dtype if not low else np.float32).eps)
        rrms = 1.0 / xp.sqrt(xp.mean(xf * xf, axis=axes, keepdims=True) + eps)
        xhat = xf * rrms
        y = xhat * w if w is not None else xhat
        ctx.xhat, ctx.rrms, ctx.w, ctx.axes = xhat, rrms, w, axes
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        xhat, w, axes = ctx.xhat, ctx.w, ctx.axes
        gf = g.astype(xhat.dtype, copy=False)
        gx = gw = None
        if na[0]:
            gxhat = gf * w if w is not None else gf
            gx = (gxhat - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True)) * ctx.rrms
            gx = gx.astype(g.dtype, copy=False)
        if len(na) > 1 and na[1]:
            gw = (gf * xhat).sum(axis=tuple(range(g.ndim - len(axes)))).astype(g.dtype, copy=False)
        return gx, gw


def _same_dtype(x, t, op, name):
    from .shape import cast
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor or None, got {type(t).__name__}")
    return t if t.dtype == x.dtype else cast(t, x.dtype)


def _float_check(x, op):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if not _dt.is_floating(x.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {x.dtype}")


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing ``normalized_shape`` dims, then scale and shift."""
    _float_check(input, "layer_norm")
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    ns = tuple(normalized_shape)
    if len(ns) == 0 or tuple(input.shape[-len(ns):]) != ns or input.ndim < len(ns):
        raise RuntimeError(f"layer_norm: input of shape {tuple(input.shape)} does not end with "
                           f"normalized_shape {ns}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != ns:
            raise RuntimeError(f"layer_norm: expected {name} of shape {ns}, got {tuple(t.shape)}")
    weight = _same_dtype(input, weight, "layer_norm", "weight")
    bias = _same_dtype(input, bias, "layer_norm", "bias")
    return LayerNorm.apply(input, weight, bias, nd=len(ns), eps=float(eps))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Normalise each channel (dim 1) by batch statistics (training; the running
    statistics are then updated in place with ``momentum``) or by the running ones."""
    _float_check(input, "batch_norm")
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected input with at least 2 dims (N, C, ...), got "
                         f"shape {tuple(input.shape)}")
    C = input.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (C,):
            raise RuntimeError(f"batch_norm: expected {name} of shape ({C},) for input of shape "
                               f"{tuple(input.shape)}, got {tuple(t.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("batch_norm: running_mean and running_var are required when "
                           "training=False")
    if training:
        n = input.numel() // max(C, 1)
        if n <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                             f"got input of shape {tuple(input.shape)}")
    weight = _same_dtype(input, weight, "batch_norm", "weight")
    bias = _same_dtype(input, bias, "batch_norm", "bias")
    rm = running_mean._data if isinstance(running_mean, Tensor) else running_mean
    rv = running_var._data if isinstance(running_var, Tensor) else running_var
    if training:
        stats = {}
        out = BatchNorm.apply(input, weight, bias, training=True, eps=float(eps), stats_out=stats)
        if running_mean is not None or running_var is not None:
            bm, bv = stats["mean"], stats["var"]  # this batch's statistics, from forward
            n = input.numel() // C
            m = float(momentum)
            if running_mean is not None:
                rm *= (1 - m)
                rm += (m * bm).astype(rm.dtype, copy=False)
                if isinstance(running_mean, Tensor):
                    running_mean._bump_version()
            if running_var is not None:
                rv *= (1 - m)
                rv += (m * bv * (n / (n - 1))).astype(rv.dtype, copy=False)
                if isinstance(running_var, Tensor):
                    running_var._bump_version()
        return out
    return BatchNorm.apply(input, weight, bias, rm, rv, training=False, eps=float(eps))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalise each of ``num_groups`` channel groups per sample, then weight and bias per channel."""
    _float_check(input, "group_norm")
    C = input.shape[1] if input.ndim >= 2 else 0
    if input.ndim < 2 or C % num_groups:
        raise RuntimeError(f"group_norm: expected input (N, C, ...) with C divisible by "
                           f"num_groups={num_groups}, got input of shape {tuple(input.shape)}")
    weight = _same_dtype(input, weight, "group_norm", "weight")
    bias = _same_dtype(input, bias, "group_norm", "bias")
    return GroupNorm.apply(input, weight, bias, groups=int(num_groups), eps=float(eps))


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """x / sqrt(mean(x**2) + eps) over the trailing ``normalized_shape`` dims, times weight."""
    _float_check(input, "rms_norm")
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    ns = tuple(normalized_shape)
    if tuple(input.shape[-len(ns):]) != ns:
        raise RuntimeError(f"rms_norm: input of shape {tuple(input.shape)} does not end with "
                           f"normalized_shape {ns}")
    weight = _same_dtype(input, weight, "rms_norm", "weight")
    return RMSNorm.apply(input, weight, nd=len(ns), eps=eps)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    """x / max(||x||_p, eps) along ``dim`` (built from differentiable ops)."""
    from .reduction import sum as _sum
    from .elementwise import abs_, pow, clamp
    from .elementwise import div
    if p == 2:
        norm = pow(_sum(input * input, dim=dim, keepdim=True), 0.5)
    else:  # p = 0 counts nonzeros, p = inf takes the max: the vector norm's definitions
        from .reduction_extra import vector_norm
        norm = vector_norm(input, p, dim=dim, keepdim=True)
    return div(input, clamp(norm, min=eps))
