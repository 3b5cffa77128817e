"""Loss functions as fused ops: cross_entropy, nll_loss, mse_loss, l1_loss,
smooth_l1_loss, huber_loss, binary_cross_entropy(_with_logits).

Each loss computes its per-element values and its reduction (none / mean / sum) in one
forward, and the gradient of the reduced value in one backward.
"""
import warnings

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import xp_of, unbroadcast

_REDUCTIONS = ("none", "mean", "sum")
_LOW = (_dt.float16, _dt.bfloat16)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction!r} is not a valid value for reduction; expected one of "
                         f"{_REDUCTIONS}")


def _reduce(xp, L, reduction, dtype):
    if reduction == "none":
        return L.astype(dtype, copy=False)
    if reduction == "sum":
        return xp.asarray(L.sum(), dtype=dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.asarray(L.mean() if L.size else xp.nan, dtype=dtype)


def _grad_scale(g, reduction, n):
    """The gradient of the reduction w.r.t. each per-element loss (broadcastable)."""
    if reduction == "none":
        return g
    if reduction == "sum":
        return g
    return g / n if n else g * np.nan


def _raw(x):
    return x._data if isinstance(x, Tensor) else x


# ---- cross entropy / nll -------------------------------------------------------------
def _to_rows(x):
    """(N, C, d1..) / (N, C) / (C,) -> (M, C) rows with the class dim last."""
    if x.ndim == 1:
        return x[None, :]
    if x.ndim == 2:
        return x
    xp = xp_of(x)
    return xp.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _from_rows(g2, shape):
    if len(shape) == 1:
        return g2[0]
    if len(shape) == 2:
        return g2
    xp = xp_of(g2)
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return xp.moveaxis(g2.reshape(moved), -1, 1)


def _check_targets(xp, t, C, ignore_index, op):
    valid = t != ignore_index
    tt = xp.where(valid, t, 0) if ignore_index is not None else t
    if tt.size:
        lo, hi = int(tt.min()), int(tt.max())
        if lo < 0 or hi >= C:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{op}: target {bad} is out of bounds for {C} classes (expected "
                             f"class indices in [0, {C - 1}] or ignore_index={ignore_index})")
    return valid, tt


class CrossEntropy(Function):
    """log_softmax + nll (class-index targets) or soft targets (class probabilities)."""

    @staticmethod
    def forward(ctx, x, target, weight=None, ignore_index=-100, reduction="mean",
                label_smoothing=0.0, prob_target=False):
        xp = xp_of(x)
        dtype = x.dtype
        ctx.shape = x.shape
        x2 = _to_rows(x)
        if dtype in _LOW:
            x2 = x2.astype(np.float32)
        w = None if weight is None else weight.astype(x2.dtype, copy=False)
        M, C = x2.shape
        eps = float(label_smoothing)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            m = x2.max(axis=1, keepdims=True) if M else xp.zeros((0, 1), x2.dtype)
            z = x2 - m
            e = xp.exp(z)
            s = e.sum(axis=1)
            lse = xp.log(s)
            e /= s[:, None]  # e is now softmax(x)
        ctx.p = e
        ctx.eps, ctx.reduction, ctx.prob_target, ctx.w = eps, reduction, prob_target, w
        if prob_target:
            T = _to_rows(target).astype(x2.dtype, copy=False)
            Q = T * (1.0 - eps) + eps / C if eps else T
            if w is not None:
                Q = Q * w
            logp = z
            logp -= lse[:, None]
            L = -(Q * logp).sum(axis=1)
            ctx.Q = Q
            ctx.logp = logp if ctx.needs_input_grad and ctx.needs_input_grad[1] else None
            denom = M
        else:
            t = target.reshape(-1)
            valid, tt = _check_targets(xp, t, C, ignore_index, "cross_entropy")
            rows = xp.arange(M)
            picked = z[rows, tt] - lse
            wt = (w[tt] if w is not None else xp.ones(M, x2.dtype)) * valid
            L = -(1.0 - eps) * wt * picked
            if eps:
                if w is not None:
                    smooth = z @ w - lse * w.sum()
                else:
                    smooth = z.sum(axis=1) - lse * C
                L -= (eps / C) * smooth * valid
            ctx.valid, ctx.tt, ctx.wt = valid, tt, wt
            denom = wt.sum() if w is not None else valid.sum()
        ctx.denom = denom
        if reduction == "none":
            out_shape = target.shape if not prob_target else \
                ((ctx.shape[0],) + tuple(ctx.shape[2:]) if len(ctx.shape) > 1 else ())
            return L.reshape(out_shape).astype(dtype, copy=False)
        if reduction == "sum":
            return xp.asarray(L.sum(), dtype=dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return xp.asarray(L.sum() / denom, dtype=dtype)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        p = ctx.p
        M, C = p.shape
        eps, w = ctx.eps, ctx.w
        if ctx.reduction == "none":
            gL = g.reshape(-1).astype(p.dtype, copy=False)
        else:
            gl = g.astype(p.dtype) if ctx.reduction == "sum" else g.astype(p.dtype) / ctx.denom
            gL = xp.full(M, gl, dtype=p.dtype)
        gx = gt = None
        if ctx.prob_target:
            Q = ctx.Q
            if ctx.needs_input_grad[0]:
                gx = p * (Q.sum(axis=1) * gL)[:, None]
                gx -= Q * gL[:, None]
            if ctx.needs_input_grad[1]:
                gt = -(1.0 - eps) * ctx.logp * gL[:, None]
                if w is not None:
                    gt *= w
                gt = _from_rows(gt, ctx.shape).astype(g.dtype, copy=False)
        elif ctx.needs_input_grad[0]:
            valid, tt, wt = ctx.valid, ctx.tt, ctx.wt
            wsum = w.sum() if w is not None else C
            coef = (1.0 - eps) * wt + (eps / C) * wsum * valid
            gx = p * (coef * gL)[:, None]
            gx[xp.arange(M), tt] -= (1.0 - eps) * wt * gL
            if eps:
                vg = (valid * gL)[:, None] * (eps / C)
                gx -= vg * w if w is not None else vg
        if gx is not None:
            gx = _from_rows(gx, ctx.shape).astype(g.dtype, copy=False)
        return gx, gt, None


class NllLoss(Function):
    @staticmethod
    def forward(ctx, x, target, weight=None, ignore_index=-100, reduction="mean"):
        xp = xp_of(x)
        ctx.shape = x.shape
        x2 = _to_rows(x)
        M, C = x2.shape
        t = target.reshape(-1)
        valid, tt = _check_targets(xp, t, C, ignore_index, "nll_loss")
        wt = (weight[tt].astype(x.dtype, copy=False) if weight is not None
              else xp.ones(M, x.dtype)) * valid
        L = -wt * x2[xp.arange(M), tt]
        denom = wt.sum() if weight is not None else valid.sum()
        ctx.tt, ctx.wt, ctx.denom, ctx.reduction, ctx.C = tt, wt, denom, reduction, C
        if reduction == "none":
            return L.reshape(target.shape).astype(x.dtype, copy=False)
        if reduction == "sum":
            return xp.asarray(L.sum(), dtype=x.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return xp.asarray(L.sum() / denom, dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        M = ctx.tt.shape[0]
        if ctx.reduction == "none":
            gL = g.reshape(-1)
        elif ctx.reduction == "sum":
            gL = g
        else:
            gL = g / ctx.denom
        g2 = xp.zeros((M, ctx.C), dtype=g.dtype)
        g2[xp.arange(M), ctx.tt] = -ctx.wt * gL
        return _from_rows(g2, ctx.shape), None, None


def _class_checks(x, target, op, weight):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{op}: expected a Tensor target, got {type(target).__name__}")
    if not _dt.is_floating(x.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{op}: input must have at least 1 dimension (classes), got a 0-d tensor")
    C = x.shape[0] if x.ndim == 1 else x.shape[1]
    if weight is not None and tuple(weight.shape) != (C,):
        raise RuntimeError(f"{op}: weight should be a 1-D tensor of {C} elements (one per class), "
                           f"got shape {tuple(weight.shape)}")
    return C


def _index_target_checks(x, target, op):
    if target.dtype.kind not in "iu":
        raise RuntimeError(f"{op}: expected target of integer dtype (int64) holding class "
                           f"indices, got dtype {target.dtype}" +
                           ("; for class probabilities pass a floating target of the input's "
                            "shape" if op == "cross_entropy" else ""))
    want = (x.shape[0],) + tuple(x.shape[2:]) if x.ndim > 1 else ()
    if tuple(target.shape) != want:
        raise ValueError(f"{op}: input of shape {tuple(x.shape)} expects a target of shape "
                         f"{want}, got target of shape {tuple(target.shape)}")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """Cross entropy between logits ``input`` (N, C, ...) and class indices or class
    probabilities ``target``."""
    _check_reduction(reduction)
    _class_checks(input, target, "cross_entropy", weight)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    w = _raw(weight)
    if _dt.is_floating(target.dtype) and tuple(target.shape) == tuple(input.shape):
        if target.dtype != input.dtype:
            from .shape import cast
            target = cast(target, input.dtype)
        return CrossEntropy.apply(input, target, w, ignore_index=ignore_index,
                                  reduction=reduction, label_smoothing=label_smoothing,
                                  prob_target=True)
    _index_target_checks(input, target, "cross_entropy")
    return CrossEntropy.apply(input, target._data, w, ignore_index=ignore_index,
                              reduction=reduction, label_smoothing=label_smoothing)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """Negative log likelihood of class indices ``target`` under log-probabilities ``input``."""
    _check_reduction(reduction)
    _class_checks(input, target, "nll_loss", weight)
    _index_target_checks(input, target, "nll_loss")
    return NllLoss.apply(input, target._data, _raw(weight), ignore_index=ignore_index,
                         reduction=reduction)


# ---- regression losses --------------------------------------------------------------
class _PointwiseLoss(Function):
    """Shared shape: per-element loss of (a, b) with broadcasting, then a reduction."""

    @classmethod
    def per_element(cls, ctx, d, **kw):  # (loss, dloss/dd)
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx, a, b, reduction="mean", **kw):
        xp = xp_of(a)
        d = a - b
        L, dd = cls.per_element(xp, d, **kw)
        ctx.dd = dd
        ctx.sa, ctx.sb = a.shape, getattr(b, "shape", ())
        ctx.reduction, ctx.n = reduction, L.size
        return _reduce(xp, L, reduction, a.dtype)

    @staticmethod
    def backward(ctx, g):
        gd = ctx.dd * _grad_scale(g, ctx.reduction, ctx.n)
        gd = gd.astype(g.dtype, copy=False)
        na = ctx.needs_input_grad
        return (unbroadcast(gd, ctx.sa) if na[0] else None,
                unbroadcast(-gd, ctx.sb) if na[1] else None)


class MseLoss(_PointwiseLoss):
    @classmethod
    def per_element(cls, xp, d):
        return d * d, 2 * d


class L1Loss(_PointwiseLoss):
    @classmethod
    def per_element(cls, xp, d):
        return xp.abs(d), xp.sign(d)


class SmoothL1Loss(_PointwiseLoss):
    @classmethod
    def per_element(cls, xp, d, beta=1.0):
        ad = xp.abs(d)
        if beta == 0:
            return ad, xp.sign(d)
        small = ad < beta
        L = xp.where(small, 0.5 * d * d / beta, ad - 0.5 * beta)
        return L, xp.where(small, d / beta, xp.sign(d))


class HuberLoss(_PointwiseLoss):
    @classmethod
    def per_element(cls, xp, d, delta=1.0):
        ad = xp.abs(d)
        small = ad < delta
        L = xp.where(small, 0.5 * d * d, delta * (ad - 0.5 * delta))
        return L, xp.where(small, d, delta * xp.sign(d))


def _pointwise(fn_cls, op, input, target, reduction, **kw):
    _check_reduction(reduction)
    from ._util import prepare_binary
    if isinstance(input, Tensor) and isinstance(target, Tensor) and input.shape != target.shape:
        try:
            np.broadcast_shapes(tuple(input.shape), tuple(target.shape))
        except ValueError:
            raise RuntimeError(f"{op}: input of shape {tuple(input.shape)} and target of shape "
                               f"{tuple(target.shape)} cannot be broadcast together") from None
        warnings.warn(f"{op}: using a target size ({tuple(target.shape)}) that is different "
                      f"to the input size ({tuple(input.shape)}); the two are broadcast, which "
                      "is likely not what you want", UserWarning, stacklevel=3)
    a, b = prepare_binary(input, target, op)
    if not isinstance(a, Tensor):  # scalar input, tensor target
        raise TypeError(f"{op}: expected a Tensor input, got {type(input).__name__}")
    if not _dt.is_floating(a.dtype):
        raise RuntimeError(f"{op}: expected floating point input and target, got dtype {a.dtype}")
    return fn_cls.apply(a, b, reduction=reduction, **kw)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """Mean squared error."""
    return _pointwise(MseLoss, "mse_loss", input, target, reduction)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Mean absolute error."""
    return _pointwise(L1Loss, "l1_loss", input, target, reduction)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    """0.5 d**2 / beta where |d| < beta, else |d| - 0.5 beta (d = input - target), reduced."""
    return _pointwise(SmoothL1Loss, "smooth_l1_loss", input, target, reduction, beta=float(beta))


def huber_loss(input, target, reduction="mean", delta=1.0):
    """0.5 d**2 where |d| <= delta, else delta (|d| - 0.5 delta) (d = input - target), reduced."""
    return _pointwise(HuberLoss, "huber_loss", input, target, reduction, delta=float(delta))


# ---- binary cross entropy --------------------------------------------------------------
def _softplus_neg(xp, x):
    """log(1 + exp(-x)), stable for both signs."""
    return xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)


class BCEWithLogits(Function):
    @staticmethod
    def forward(ctx, x, y, weight=None, pos_weight=None, reduction="mean"):
        xp = xp_of(x)
        sp = _softplus_neg(xp, x)
        if pos_weight is not None:
            lw = (pos_weight - 1) * y + 1
            L = (1 - y) * x + lw * sp
        else:
            lw = None
            L = (1 - y) * x + sp
        Lu = L
        if weight is not None:
            L = L * weight
        ctx.save_for_backward(x, y)
        ctx.sp, ctx.lw, ctx.Lu = sp, lw, Lu
        ctx.weight, ctx.pos_weight = weight, pos_weight
        ctx.reduction, ctx.n, ctx.lshape = reduction, L.size, L.shape
        return _reduce(xp, L, reduction, x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        xp = xp_of(g)
        na = ctx.needs_input_grad
        gs = _grad_scale(g, ctx.reduction, ctx.n)
        gw = gs * ctx.weight if ctx.weight is not None else gs
        out = [None, None, None, None]
        if na[0]:
            with np.errstate(over="ignore"):
                one_minus_s = 1 / (1 + xp.exp(xp.clip(x, -80, 80)))  # 1 - sigmoid(x)
            lw = ctx.lw if ctx.lw is not None else 1
            out[0] = unbroadcast(xp.broadcast_to((1 - y) - lw * one_minus_s, ctx.lshape) * gw, x.shape)
        if na[1]:
            dy = -x + (ctx.pos_weight - 1) * ctx.sp if ctx.pos_weight is not None else -x
            out[1] = unbroadcast(xp.broadcast_to(dy, ctx.lshape) * gw, y.shape)
        if len(na) > 2 and na[2]:
            out[2] = unbroadcast(ctx.Lu * gs, ctx.weight.shape)
        if len(na) > 3 and na[3]:
            out[3] = unbroadcast(xp.broadcast_to(y * ctx.sp, ctx.lshape) * gw, ctx.pos_weight.shape)
        return tuple(o.astype(g.dtype, copy=False) if o is not None else None for o in out)


class BCE(Function):
    @staticmethod
    def forward(ctx, x, y, weight=None, reduction="mean"):
        xp = xp_of(x)
        if x.size and (float(x.min()) < 0 or float(x.max()) > 1):
            raise RuntimeError("binary_cross_entropy: all elements of input should be between "
                               "0 and 1 (pass logits to binary_cross_entropy_with_logits)")
        with np.errstate(divide="ignore"):
            lx = xp.maximum(xp.log(x), -100)
            l1x = xp.maximum(xp.log1p(-x), -100)
        L = -(y * lx + (1 - y) * l1x)
        Lu = L
        if weight is not None:
            L = L * weight
        ctx.save_for_backward(x, y)
        ctx.lx, ctx.l1x, ctx.Lu, ctx.weight = lx, l1x, Lu, weight
        ctx.reduction, ctx.n, ctx.lshape = reduction, L.size, L.shape
        return _reduce(xp, L, reduction, x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        xp = xp_of(g)
        na = ctx.needs_input_grad
        gs = _grad_scale(g, ctx.reduction, ctx.n)
        gw = gs * ctx.weight if ctx.weight is not None else gs
        out = [None, None, None]
        if na[0]:
            out[0] = unbroadcast(xp.broadcast_to((x - y) / xp.maximum((1 - x) * x, 1e-12), ctx.lshape) * gw, x.shape)
        if na[1]:
            out[1] = unbroadcast(xp.broadcast_to(ctx.l1x - ctx.lx, ctx.lshape) * gw, y.shape)
        if len(na) > 2 and na[2]:
            out[2] = unbroadcast(ctx.Lu * gs, ctx.weight.shape)
        return tuple(o.astype(g.dtype, copy=False) if o is not None else None for o in out)


def _bce_checks(op, input, target, *extra):
    from .shape import cast
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{op}: expected Tensor input and target")
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{op}: target size {tuple(target.shape)} must be the same as input "
                         f"size {tuple(input.shape)}")
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {input.dtype}")
    if not _dt.is_floating(target.dtype):
        raise RuntimeError(f"{op}: expected a floating point target (0/1 probabilities), got "
                           f"dtype {target.dtype}; convert it with .float()")
    out = [target if target.dtype == input.dtype else cast(target, input.dtype)]
    for e in extra:
        if e is None:
            out.append(None)
            continue
        if not isinstance(e, Tensor):
            e = Tensor._make(xp_of(input._data).asarray(e, dtype=input.dtype))
        elif e.dtype != input.dtype:
            e = cast(e, input.dtype)
        out.append(e)
    return out


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """Sigmoid + binary cross entropy in one numerically stable op."""
    _check_reduction(reduction)
    target, weight, pos_weight = _bce_checks("binary_cross_entropy_with_logits", input, target,
                                             weight, pos_weight)
    try:
        return BCEWithLogits.apply(input, target, weight, pos_weight, reduction=reduction)
    except ValueError as e:
        raise RuntimeError(f"binary_cross_entropy_with_logits: weight/pos_weight do not broadcast "
                           f"with input of shape {tuple(input.shape)}: {e}") from None


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """Binary cross entropy between probabilities ``input`` and ``target``."""
    _check_reduction(reduction)
    target, weight = _bce_checks("binary_cross_entropy", input, target, weight)
    return BCE.apply(input, target, weight, reduction=reduction)
