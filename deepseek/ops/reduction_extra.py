"""More reductions: vector/matrix norms (``norm``, ``linalg.vector_norm``), ``dist``,
``std_mean``/``var_mean``, ``nansum``/``nanmean``, ``aminmax``, ``cdist``."""
import builtins as _b
from collections import namedtuple

import numpy as np

from ..autograd.function import Function
from .. import dtypes as _dt
from .._tensor import Tensor
from ._util import xp_of, normalize_dims
from .reduction import _expand_back


class VectorNorm(Function):
    """p-norm over ``axes``; PyTorch's subgradients: 0 where the norm is 0 (p > 0),
    split evenly among the maxima for p = inf."""

    @staticmethod
    def forward(ctx, a, p, axes, keepdim):
        xp = xp_of(a)
        x = xp.abs(a)
        if p == float("inf"):
            out = x.max(axis=axes, keepdims=True) if x.size else xp.zeros((1,) * a.ndim, a.dtype)
        elif p == -float("inf"):
            out = x.min(axis=axes, keepdims=True)
        elif p == 0:
            out = (x != 0).sum(axis=axes, keepdims=True).astype(a.dtype)
        elif p == 1:
            out = x.sum(axis=axes, keepdims=True)
        elif p == 2:
            out = xp.sqrt((x * x).sum(axis=axes, keepdims=True))
        else:
            out = ((x ** p).sum(axis=axes, keepdims=True)) ** (1.0 / p)
        ctx.save_for_backward(a, out)
        ctx.p, ctx.axes, ctx.keepdim, ctx.shape = p, axes, keepdim, a.shape
        if not keepdim:
            out = out.reshape([] if axes is None else [d for i, d in enumerate(a.shape) if i not in axes])
        return out.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        a, norm = ctx.saved_tensors
        xp = xp_of(g)
        g = _expand_back(g, ctx.shape, ctx.axes, ctx.keepdim)
        p = ctx.p
        with np.errstate(all="ignore"):
            if p == 0:
                d = xp.zeros_like(a)
            elif p == 1:
                d = xp.sign(a)
            elif abs(p) == float("inf"):
                m = xp.abs(a) == norm
                d = xp.sign(a) * m / m.sum(axis=ctx.axes, keepdims=True)
            elif p == 2:
                d = xp.where(norm == 0, 0, a / norm)
            else:
                d = xp.where(norm == 0, 0, a * xp.abs(a) ** (p - 2) / norm ** (p - 1))
        return (g * d).astype(g.dtype, copy=False)


def vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    """The ``ord``-norm of ``x`` over ``dim`` (all elements when None) as a vector norm."""
    from . import cast
    if dtype is not None:
        x = cast(x, dtype)
    if not _dt.is_floating(x.dtype):
        raise RuntimeError(f"linalg.vector_norm: Expected a floating point or complex tensor as "
                           f"input. Got {x.dtype}")
    axes = normalize_dims(dim, x.ndim, "vector_norm")
    return VectorNorm.apply(x, float(ord), axes, keepdim)


def norm(input, p="fro", dim=None, keepdim=False, dtype=None):
    """``torch.norm``: the Frobenius / 2-norm by default, or the ``p``-norm, over ``dim``."""
    if p in ("fro", None):
        p = 2
    elif p == "nuc":
        raise NotImplementedError("norm(p='nuc') is not implemented")
    return vector_norm(input, p, dim, keepdim, dtype)


def dist(input, other, p=2):
    """The ``p``-norm of ``input - other``."""
    from .elementwise import sub
    return vector_norm(sub(input, other), p)


def cdist(x1, x2, p=2.0):
    """Pairwise ``p``-norm distances between the rows of ``x1`` (…, P, M) and ``x2`` (…, R, M)."""
    from .elementwise import sub
    from .shape import unsqueeze
    from ..amp.autocast_mode import composite_inputs
    x1, x2 = composite_inputs("cdist", x1, x2)  # fp32 on PyTorch's autocast lists
    return vector_norm(sub(unsqueeze(x1, -2), unsqueeze(x2, -3)), p, dim=-1)


def var_mean(input, dim=None, unbiased=None, keepdim=False, correction=None):
    """(var, mean) over ``dim`` (see ``var``)."""
    from .reduction import var, mean
    return var(input, dim, unbiased, keepdim, correction), mean(input, dim, keepdim)


def std_mean(input, dim=None, unbiased=None, keepdim=False, correction=None):
    """(std, mean) over ``dim`` (see ``std``)."""
    from .reduction import std, mean
    return std(input, dim, unbiased, keepdim, correction), mean(input, dim, keepdim)


def nansum(input, dim=None, keepdim=False):
    """Sum treating NaN as zero."""
    from .elementwise import where
    from .reduction import sum as _sum
    from .nondiff import isnan
    return _sum(where(isnan(input), 0.0, input), dim, keepdim)


def nanmean(input, dim=None, keepdim=False):
    """Mean of the non-NaN elements."""
    from .elementwise import div
    from .reduction import sum as _sum
    from .nondiff import isnan
    n = _sum(~isnan(input), dim, keepdim)
    return div(nansum(input, dim, keepdim), n)


MinMax = namedtuple("MinMax", ["min", "max"])


def aminmax(input, dim=None, keepdim=False):
    """(amin, amax) over ``dim``."""
    from .reduction import amin, amax
    return MinMax(amin(input, dim, keepdim), amax(input, dim, keepdim))
