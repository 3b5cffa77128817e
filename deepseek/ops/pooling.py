"""Pooling: max_pool1d/2d/3d, avg_pool1d/2d/3d, adaptive_avg_pool1d/2d/3d.

Windows are strided views of the (padded) input; the kernel-offset loops run over
whole (N, C, *out) slabs, never over elements. Max pooling of float32/float64 numpy
arrays runs in C when the native kernels are in use (``native/src/dsn_conv.c``): the
forward pass records each window's argmax, the backward pass is one scatter.
"""
import itertools
import math

import numpy as np

from ..backend import scatter_add
from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import xp_of
from .conv import (_tuple, _as_strided, pad_spatial, unpad_index, offset_slices, native_kernel,
                   as_5d, geometry_3d)


def _out_size(L, k, s, p, d, ceil_mode):
    eff = d * (k - 1) + 1
    num = L + 2 * p - eff
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= L + p:
        o -= 1
    return max(o, 0)


def _geometry(op, x_shape, nd, kernel_size, stride, padding, dilation, ceil_mode):
    k = _tuple(kernel_size, nd, "kernel_size", op)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else \
        _tuple(stride, nd, "stride", op)
    p = _tuple(padding, nd, "padding", op)
    d = _tuple(dilation, nd, "dilation", op)
    if any(v <= 0 for v in k + s + d):
        raise RuntimeError(f"{op}: kernel_size, stride and dilation must be positive, got "
                           f"kernel_size={k}, stride={s}, dilation={d}")
    for kk, pp in zip(k, p):
        if pp < 0 or pp > kk // 2:
            raise RuntimeError(f"{op}: padding should be at most half of the kernel size, but got "
                               f"padding={p} and kernel_size={k}")
    spatial = x_shape[-nd:]
    out = tuple(_out_size(L, kk, ss, pp, dd, ceil_mode) for L, kk, ss, pp, dd in zip(spatial, k, s, p, d))
    if any(o <= 0 for o in out):
        raise RuntimeError(f"{op}: output size {out} is too small for input of shape "
                           f"{tuple(x_shape)} with kernel_size={k}, stride={s}, padding={p}")
    # right padding: the symmetric padding plus what ceil_mode's last window needs
    pads = []
    for L, kk, ss, pp, dd, o in zip(spatial, k, s, p, d, out):
        need = (o - 1) * ss + dd * (kk - 1) + 1 - (L + 2 * pp)
        pads.append((pp, pp + max(need, 0)))
    return k, s, p, d, out, tuple(pads)


def _windows(xp, xp_, nd, k, s, d, out):
    """(N..., *out, *k) strided view of a padded input."""
    lead = xp_.shape[:-nd]
    ls = xp_.strides[:-nd]
    ss = xp_.strides[-nd:]
    return _as_strided(xp, xp_, lead + tuple(out) + tuple(k),
                       ls + tuple(a * b for a, b in zip(ss, s)) + tuple(a * b for a, b in zip(ss, d)))


def _scatter_numpy(g, idx, gx):
    """maxpool_bwd of dsn_conv.c in numpy (the kernels were switched off between forward
    and backward): gx (N, C, plane) = 0, then gx[n, c, idx] += g, each plane's outputs
    last to first."""
    N, C, plane = gx.shape
    flat = (idx.reshape(N * C, -1) + plane * np.arange(N * C)[:, None])[:, ::-1]
    work = np.zeros(N * C * plane, dtype=gx.dtype)
    scatter_add(work, flat.reshape(-1), g.reshape(N * C, -1)[:, ::-1].reshape(-1))
    gx[...] = work.reshape(N, C, plane)


class MaxPoolNd(Function):
    """Running maximum over the kernel offsets (each a strided slab of the padded input);
    backward routes each output's gradient to the first offset holding the max (PyTorch's
    tie rule). With ``return_indices`` the window argmax is computed explicitly. The C
    pass records the argmax as the flat index into the input plane (``return_indices``'s
    value) in both cases; backward scatters the gradient there."""

    @staticmethod
    def forward(ctx, x, k, s, p, d, out, pads, return_indices=False):
        xp = xp_of(x)
        nd = len(k)
        kernel = native_kernel("maxpool_fwd", x)
        ctx.native = kernel is not None
        if kernel is not None:
            lead = x.shape[:-nd]
            y = np.empty(lead + tuple(out), dtype=x.dtype)
            lin = np.empty(y.shape, dtype=np.int64)
            x5 = x if len(lead) == 2 else x[None]
            kernel(as_5d(x5, nd), y, lin, *geometry_3d(nd, k, s, p, d, out))
            # an (N, C) view of (C, N)-ordered memory (a convolution's output) gets its
            # gradient in that order too: the convolution's backward then copies nothing
            cn = len(lead) == 2 and x.strides[0] < x.strides[1]
            ctx.geom, ctx.idx = (x.shape, nd, cn), lin
            if not return_indices:
                return y
            ctx.mark_non_differentiable(lin)
            ctx.out_shapes = [y.shape, lin.shape]
            return y, lin
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        xpad = pad_spatial(xp, x, pads, fill)
        lead = (slice(None),) * (x.ndim - nd)
        ctx.geom = (x.shape, xpad.shape, k, s, d, out, pads)
        if not return_indices:
            y = None
            for off in itertools.product(*(range(kk) for kk in k)):
                sl = xpad[lead + offset_slices(off, s, d, out)]
                if y is None:
                    y = sl.copy()
                else:
                    xp.maximum(y, sl, out=y)
            ctx.xpad, ctx.y, ctx.idx = xpad, y, None
            return y
        win = _windows(xp, xpad, nd, k, s, d, out)
        K = math.prod(k)
        flat = win.reshape(win.shape[:-nd] + (K,))  # copies the windows
        idx = flat.argmax(axis=-1)
        y = xp.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
        ctx.idx = idx
        # flat index of the max into each (unpadded) input plane, like PyTorch
        offs = np.unravel_index(idx, k) if xp is np else xp.unravel_index(idx, k)
        spatial = x.shape[-nd:]
        lin = None
        for dim in range(nd):
            shape = [1] * idx.ndim
            shape[idx.ndim - nd + dim] = out[dim]
            base = (xp.arange(out[dim]) * s[dim] - p[dim]).reshape(shape)
            pos = base + offs[dim] * d[dim]
            lin = pos if lin is None else lin * spatial[dim] + pos
        lin = lin.astype(np.int64)
        ctx.mark_non_differentiable(lin)
        ctx.out_shapes = [y.shape, lin.shape]
        return y, lin

    @staticmethod
    def backward(ctx, g, *_):
        if ctx.native:
            xshape, nd, cn = ctx.geom
            if not math.prod(xshape[:-nd]):
                return np.zeros(xshape, dtype=g.dtype)
            if cn:
                gx = np.empty((xshape[1], xshape[0]) + xshape[2:], dtype=g.dtype).swapaxes(0, 1)
            else:
                gx = np.empty(xshape, dtype=g.dtype)
            lead = gx.shape[:-nd] if gx.ndim - nd == 2 else (1,) + gx.shape[:-nd]
            scatter = native_kernel("maxpool_bwd", g) or _scatter_numpy
            scatter(np.ascontiguousarray(g), ctx.idx, gx.reshape(lead + (-1,)))
            return gx
        xp = xp_of(g)
        xshape, pshape, k, s, d, out, pads = ctx.geom
        nd = len(k)
        lead = (slice(None),) * (len(xshape) - nd)
        gxp = xp.zeros(xshape[:-nd] + tuple(pshape[-nd:]), dtype=g.dtype)
        nonoverlap = all(ss >= dd * (kk - 1) + 1 for ss, dd, kk in zip(s, d, k))
        if ctx.idx is None:
            xpad, y = ctx.xpad, ctx.y
            pending = None  # outputs whose gradient is not routed yet
            for off in itertools.product(*(range(kk) for kk in k)):
                dst = lead + offset_slices(off, s, d, out)
                hit = xpad[dst] == y
                if pending is None:
                    pending = ~hit
                else:
                    hit &= pending
                    pending &= ~hit
                if nonoverlap:
                    xp.multiply(g, hit, out=gxp[dst])
                else:
                    gxp[dst] += g * hit
        else:
            idx = ctx.idx
            K = math.prod(k)
            gflat = xp.zeros(idx.shape + (K,), dtype=g.dtype)
            xp.put_along_axis(gflat, idx[..., None], g[..., None], axis=-1)
            gwin = gflat.reshape(idx.shape + tuple(k))
            for off in itertools.product(*(range(kk) for kk in k)):
                dst = lead + offset_slices(off, s, d, out)
                if nonoverlap:
                    gxp[dst] = gwin[(Ellipsis,) + off]
                else:
                    gxp[dst] += gwin[(Ellipsis,) + off]
        return gxp[unpad_index(xshape, pads)] if gxp.shape != xshape else gxp


class AvgPoolNd(Function):
    @staticmethod
    def forward(ctx, x, k, s, p, out, pads, count_include_pad=True, divisor_override=None):
        xp = xp_of(x)
        nd = len(k)
        xpad = pad_spatial(xp, x, pads, 0)
        win = _windows(xp, xpad, nd, k, s, (1,) * nd, out)
        total = win.sum(axis=tuple(range(-nd, 0)))
        if divisor_override:
            div = float(divisor_override)
        else:
            div = None
            spatial = x.shape[-nd:]
            for dim in range(nd):
                start = np.arange(out[dim]) * s[dim] - p[dim]
                end = np.minimum(start + k[dim], spatial[dim] + p[dim])
                if not count_include_pad:
                    start, end = np.maximum(start, 0), np.minimum(end, spatial[dim])
                cnt = (end - start).astype(np.float64)
                shape = [1] * nd
                shape[dim] = out[dim]
                cnt = cnt.reshape(shape)
                div = cnt if div is None else div * cnt
            div = xp.asarray(div.astype(x.dtype))
        y = total / div
        ctx.div, ctx.geom = div, (x.shape, xpad.shape, k, s, out, pads)
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        xshape, pshape, k, s, out, pads = ctx.geom
        nd = len(k)
        gd = (g / ctx.div).astype(g.dtype, copy=False)
        gxp = xp.zeros(xshape[:-nd] + tuple(pshape[-nd:]), dtype=g.dtype)
        lead = (slice(None),) * (len(xshape) - nd)
        for off in itertools.product(*(range(kk) for kk in k)):
            gxp[lead + offset_slices(off, s, (1,) * nd, out)] += gd
        return gxp[unpad_index(xshape, pads)] if gxp.shape != xshape else gxp


def _adaptive_matrix(L, o, dtype):
    """(o, L) averaging matrix of PyTorch's adaptive pooling bins."""
    A = np.zeros((o, L), dtype=np.float64)
    for i in range(o):
        a = (i * L) // o
        b = -(-((i + 1) * L) // o)
        A[i, a:b] = 1.0 / (b - a)
    return A.astype(dtype)


class AdaptiveAvgPoolNd(Function):
    @staticmethod
    def forward(ctx, x, out):
        xp = xp_of(x)
        nd = len(out)
        mats = [xp.asarray(_adaptive_matrix(L, o, x.dtype)) for L, o in zip(x.shape[-nd:], out)]
        ctx.mats = mats
        y = x
        for dim, A in enumerate(mats):
            ax = x.ndim - nd + dim
            if A.shape[0] == 1:
                y = y.mean(axis=ax, keepdims=True)
            else:
                y = xp.moveaxis(xp.moveaxis(y, ax, -1) @ A.T, -1, ax)
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        nd = len(ctx.mats)
        for dim, A in enumerate(ctx.mats):
            ax = g.ndim - nd + dim
            g = xp.moveaxis(xp.moveaxis(g, ax, -1) @ A, -1, ax)
        return g


def _check(op, x, nd):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if x.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{op}: expected {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input, "
                           f"got input of shape {tuple(x.shape)}")
    if any(sz == 0 for sz in x.shape[-nd - 1:]):
        raise RuntimeError(f"{op}: expected input with non-zero channel and spatial sizes, got "
                           f"input of shape {tuple(x.shape)}")


def _max_pool(nd, op, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    _check(op, input, nd)
    k, s, p, d, out, pads = _geometry(op, tuple(input.shape), nd, kernel_size, stride, padding,
                                      dilation, ceil_mode)
    return MaxPoolNd.apply(input, k, s, p, d, out, pads, return_indices=return_indices)


def _avg_pool(nd, op, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override):
    _check(op, input, nd)
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {input.dtype}")
    k, s, p, _, out, pads = _geometry(op, tuple(input.shape), nd, kernel_size, stride, padding,
                                      1, ceil_mode)
    return AvgPoolNd.apply(input, k, s, p, out, pads, count_include_pad=count_include_pad,
                           divisor_override=divisor_override)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over sliding windows of the last dim (N, C, L) or (C, L)."""
    return _max_pool(1, "max_pool1d", input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over sliding windows of the last 2 dims."""
    return _max_pool(2, "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over sliding windows of the last 3 dims."""
    return _max_pool(3, "max_pool3d", input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average over sliding windows of the last dim."""
    return _avg_pool(1, "avg_pool1d", input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average over sliding windows of the last 2 dims."""
    return _avg_pool(2, "avg_pool2d", input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average over sliding windows of the last 3 dims."""
    return _avg_pool(3, "avg_pool3d", input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


def _adaptive(nd, op, input, output_size):
    _check(op, input, nd)
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {input.dtype}")
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size,) * nd
    output_size = tuple(output_size)
    if len(output_size) != nd:
        raise ValueError(f"{op}: output_size must be an int or a tuple of {nd} values, got "
                         f"{output_size}")
    out = tuple(int(L if o is None else o) for L, o in zip(input.shape[-nd:], output_size))
    if any(o <= 0 for o in out):
        raise ValueError(f"{op}: output_size must be positive, got {output_size}")
    return AdaptiveAvgPoolNd.apply(input, out)


def adaptive_avg_pool1d(input, output_size):
    """Average pooling to a fixed output length (PyTorch's window rule)."""
    return _adaptive(1, "adaptive_avg_pool1d", input, output_size)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed output size of the last 2 dims."""
    return _adaptive(2, "adaptive_avg_pool2d", input, output_size)


def adaptive_avg_pool3d(input, output_size):
    """Average pooling to a fixed output size of the last 3 dims."""
    return _adaptive(3, "adaptive_avg_pool3d", input, output_size)
