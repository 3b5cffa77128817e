"""Sorting and searching: sort, argsort, topk, kthvalue, median, msort; and the ops
without a gradient: unique, nonzero/argwhere, searchsorted, bucketize, bincount,
count_nonzero, histc.

``Sort`` is the one differentiable Function: it returns the values and the indices
of a (stable) sort along one dim, and its backward scatters the gradient back to
where each value came from; topk/kthvalue/median are slices of it.
"""
from collections import namedtuple

import numpy as np

from ..autograd.function import Function
from .. import dtypes as _dt
from .._tensor import Tensor
from ._util import xp_of
from .shape_extra import _dim

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _argsort(xp, a, axis, descending):
    if not descending:
        return xp.argsort(a, axis=axis, kind="stable")
    # stable descending (ties keep their order): sort the reversed array ascending
    n = a.shape[axis]
    rev = xp.flip(a, axis)
    idx = xp.argsort(rev, axis=axis, kind="stable")
    return xp.flip(n - 1 - idx, axis)


class Sort(Function):
    @staticmethod
    def forward(ctx, a, axis, descending):
        xp = xp_of(a)
        if a.ndim == 0:
            idx = xp.zeros((), np.int64)
            ctx.idx, ctx.axis, ctx.shape = None, axis, a.shape
            ctx.mark_non_differentiable(idx)
            return a.copy(), idx
        idx = _argsort(xp, a, axis, descending)
        if descending and _dt.is_floating(a.dtype):
            # NaN counts as the largest value (PyTorch): first when descending
            nan = xp.isnan(a)
            if bool(nan.any()):
                idx = _argsort(xp, xp.where(nan, np.inf, a), axis, True)
                key = xp.take_along_axis(nan, idx, axis)
                order = xp.argsort(~key, axis=axis, kind="stable")
                idx = xp.take_along_axis(idx, order, axis)
        ctx.idx, ctx.axis, ctx.shape = idx, axis, a.shape
        vals = xp.take_along_axis(a, idx, axis)
        idx = idx.astype(np.int64, copy=False)
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, g, g_idx=None):
        if ctx.idx is None:
            return g
        xp = xp_of(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        xp.put_along_axis(out, ctx.idx, g, axis=ctx.axis)
        return out


def sort(input, dim=-1, descending=False, stable=False):
    """(values, indices) of ``input`` sorted along ``dim`` (ties keep their order)."""
    d = _dim(dim, input.ndim, "sort")
    v, i = Sort.apply(input, d, bool(descending))
    return ValuesIndices(v, i)


def argsort(input, dim=-1, descending=False, stable=False):
    """Indices that sort ``input`` along ``dim`` (int64; no gradient)."""
    return sort(input.detach(), dim, descending).indices


def msort(input):
    """``sort(input, dim=0).values``."""
    return sort(input, 0).values


def topk(input, k, dim=-1, largest=True, sorted=True):
    """(values, indices) of the ``k`` largest (``largest=False``: smallest) elements along ``dim``."""
    from .indexing import getitem
    d = _dim(dim, input.ndim, "topk")
    n = input.shape[d] if input.ndim else 1
    if not 0 <= k <= n:
        raise RuntimeError(f"selected index k out of range (k={k}, size {n} at dim {d})")
    v, i = sort(input, d, descending=largest)
    if input.ndim == 0:
        return ValuesIndices(v, i)
    sl = (slice(None),) * d + (slice(0, k),)
    return ValuesIndices(getitem(v, sl), getitem(i, sl))


def kthvalue(input, k, dim=-1, keepdim=False):
    """(value, index) of the k-th smallest element (1-based) along ``dim``."""
    from .indexing import getitem
    d = _dim(dim, input.ndim, "kthvalue")
    n = input.shape[d] if input.ndim else 1
    if not 1 <= k <= n:
        raise RuntimeError(f"kthvalue(): selected number k out of range for dimension {d}")
    v, i = sort(input, d)
    if input.ndim == 0:
        return ValuesIndices(v, i)
    sl = (slice(None),) * d + ((slice(k - 1, k),) if keepdim else (k - 1,))
    return ValuesIndices(getitem(v, sl), getitem(i, sl))


def median(input, dim=None, keepdim=False):
    """The lower median of all elements, or (values, indices) of it along ``dim``."""
    from .shape import reshape
    from .indexing import getitem
    if dim is None:
        flat = reshape(input, (-1,))
        n = flat.shape[0]
        if n == 0:
            return Tensor._make(xp_of(input._data).asarray(np.nan, dtype=input.dtype))
        return getitem(sort(flat, 0).values, (n - 1) // 2)
    d = _dim(dim, input.ndim, "median")
    n = input.shape[d] if input.ndim else 1
    return kthvalue(input, (n - 1) // 2 + 1, d, keepdim)


def nanmedian(input, dim=None, keepdim=False):
    """The lower median ignoring NaN (all-NaN slices give NaN); without ``dim`` only."""
    if dim is not None:
        raise NotImplementedError("nanmedian: only the all-elements form is implemented")
    from .indexing import getitem
    from .shape import reshape
    flat = reshape(input, (-1,))
    keep = ~xp_of(flat._data).isnan(flat._data)
    vals = getitem(flat, Tensor._make(keep))
    return median(vals)


# ---- no gradient ------------------------------------------------------------------------
def unique(input, sorted=True, return_inverse=False, return_counts=False, dim=None):
    """The distinct elements (sorted), with the inverse indices and counts on request."""
    xp = xp_of(input._data)
    res = xp.unique(input._data, return_inverse=return_inverse, return_counts=return_counts,
                    axis=dim)
    if not (return_inverse or return_counts):
        return Tensor._make(res)
    res = list(res)
    out = [Tensor._make(res[0])]
    k = 1
    if return_inverse:
        out.append(Tensor._make(res[k].reshape(input.shape if dim is None else (-1,)).astype(np.int64)))
        k += 1
    if return_counts:
        out.append(Tensor._make(res[k].astype(np.int64)))
    return tuple(out)


def unique_consecutive(input, return_inverse=False, return_counts=False, dim=None):
    """Collapse runs of equal consecutive elements (of the flattened input)."""
    if dim is not None:
        raise NotImplementedError("unique_consecutive: dim is not supported")
    xp = xp_of(input._data)
    a = input._data.reshape(-1)
    if a.size == 0:
        starts = xp.zeros(0, np.int64)
    else:
        starts = xp.flatnonzero(xp.concatenate((xp.ones(1, bool), a[1:] != a[:-1])))
    out = [Tensor._make(a[starts])]
    if return_inverse:
        inv = xp.cumsum(xp.concatenate((xp.ones(1, bool), a[1:] != a[:-1]))) - 1 if a.size else starts
        out.append(Tensor._make(inv.reshape(input.shape).astype(np.int64)))
    if return_counts:
        out.append(Tensor._make(xp.diff(xp.append(starts, a.size)).astype(np.int64)))
    return out[0] if len(out) == 1 else tuple(out)


def nonzero(input, as_tuple=False):
    """Indices of the nonzero elements: an (n, ndim) int64 tensor, or one 1-d tensor per dim."""
    xp = xp_of(input._data)
    a = input._data if input.ndim else input._data.reshape(1)
    if as_tuple:
        return tuple(Tensor._make(i.astype(np.int64)) for i in xp.nonzero(a))
    out = xp.argwhere(a).astype(np.int64)
    return Tensor._make(out if input.ndim else out[:, :0])


def argwhere(input):
    """``nonzero(input)``: the (n, ndim) indices of the nonzero elements."""
    return nonzero(input)


def searchsorted(sorted_sequence, values, out_int32=False, right=False, side=None, sorter=None):
    """Indices that insert ``values`` into the (innermost dim of) ``sorted_sequence`` in order."""
    seq = sorted_sequence._data
    xp = xp_of(seq)
    v = values._data if isinstance(values, Tensor) else xp.asarray(values)
    side = side or ("right" if right else "left")
    dt = np.int32 if out_int32 else np.int64
    if seq.ndim == 1:
        out = xp.searchsorted(seq if sorter is None else seq[sorter._data], v, side=side)
    else:
        if seq.shape[:-1] != v.shape[:-1]:
            raise RuntimeError("searchsorted(): boundaries and input value tensors should have the "
                               "same leading dims")
        s2, v2 = seq.reshape(-1, seq.shape[-1]), v.reshape(-1, v.shape[-1])
        out = xp.stack([xp.searchsorted(s2[i], v2[i], side=side) for i in range(s2.shape[0])]).reshape(v.shape)
    return Tensor._make(xp.asarray(out).astype(dt))


def bucketize(input, boundaries, out_int32=False, right=False):
    """Bucket index of each element: ``boundaries[i-1] < x <= boundaries[i]``
    (``right=True``: ``boundaries[i-1] <= x < boundaries[i]``)."""
    return searchsorted(boundaries, input, out_int32=out_int32, right=right)


def bincount(input, weights=None, minlength=0):
    """Counts of each value of a 1-d non-negative integer tensor (weighted sums with ``weights``)."""
    a = input._data
    if a.ndim != 1:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    if a.dtype.kind not in "iu":
        raise RuntimeError(f"bincount only supports 1-d non-negative integral inputs, got {a.dtype}")
    if a.size and int(a.min()) < 0:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    xp = xp_of(a)
    w = None if weights is None else weights._data
    out = xp.bincount(a, weights=w, minlength=minlength)
    if w is None:
        out = out.astype(np.int64)
    elif w.dtype == np.float32:
        out = out.astype(np.float32)
    return Tensor._make(out)


def count_nonzero(input, dim=None):
    """Number of nonzero elements (along ``dim``): int64."""
    xp = xp_of(input._data)
    return Tensor._make(xp.asarray(xp.count_nonzero(input._data, axis=dim)).astype(np.int64))


def histc(input, bins=100, min=0, max=0):
    """Histogram of ``bins`` equal bins over [min, max] (the data's range when both are 0)."""
    a = input._data.reshape(-1)
    xp = xp_of(a)
    lo, hi = float(min), float(max)
    if lo == hi:
        if a.size:
            lo, hi = float(a.min()), float(a.max())
        if lo == hi:
            lo, hi = lo - 1, hi + 1
    h, _ = xp.histogram(a, bins=bins, range=(lo, hi))
    return Tensor._make(h.astype(input.dtype))
