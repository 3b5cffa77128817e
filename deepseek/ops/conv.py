"""Convolutions (1-d, 2-d, 3-d) by im2col on strided views and one GEMM per group.

Forward gathers every receptive field of the (padded) input into a column matrix laid
out (C_in, *kernel, N, *out) -- the long contiguous runs of the input are copied in
the inner loop -- and multiplies it by the (C_out, C_in * kernel) weight matrix. The
result is (C_out, N, *out) in memory and is returned as an (N, C_out, *out) view.
Backward is two more GEMMs (weight grad: g @ cols.T; column grad: W.T @ g) and a
col2im that adds each kernel offset's slab back into the padded input gradient.
On the CPU, fp16/bf16 GEMMs run through ``_lowp`` (fp32 sgemm, rounded once).
float32/float64 numpy arrays take the im2col and col2im passes in C when the native
kernels are in use (``native/src/dsn_conv.c``: the same values, bit for bit, without
the padded copy of the input or a numpy pass per kernel offset).
"""
import itertools
import math

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import xp_of
from . import _lowp
from .. import native as _native

_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _mm(a, b, out_dtype):
    """``a @ b``; fp16/bf16 CPU operands through the fp32 sgemm path."""
    if _lowp.applies(a, b):
        return _lowp.matmul(a, b, out_dtype=out_dtype)
    return a @ b


def _tuple(v, n, name, op):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(a) for a in v)
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise ValueError(f"{op}: {name} must be an int or a tuple of {n} ints, got {v}")
    return v


def native_kernel(name, *arrays):
    """The C pass ``name`` of dsn_conv.c when the native kernels are in use and every
    array is a float32 or float64 numpy array of one dtype; else None (the caller runs
    its numpy code, which gives the same values)."""
    dt = arrays[0].dtype
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dt or dt not in _NATIVE_DTYPES:
            return None
    return _native.row_kernel(name)


def as_5d(a, nd):
    """``a`` (lead, lead, *nd spatial) as a 5-d view, size-1 spatial dims in front: the
    C passes see every problem as 3-d."""
    return a[(slice(None), slice(None)) + (None,) * (3 - nd)]


def geometry_3d(nd, *tuples):
    """Each per-dim tuple padded in front to 3 dims (kernel 1, stride 1, padding 0,
    dilation 1, output 1: all of them 1 except padding, given as 0 by the caller)."""
    return tuple((1,) * (3 - nd) + tuple(t) if i != 2 else (0,) * (3 - nd) + tuple(t)
                 for i, t in enumerate(tuples))


def _as_strided(xp, a, shape, strides):
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def pad_spatial(xp, x, pads, value=0.0):
    """Pad the trailing spatial dims of ``x`` by ``pads`` ((left, right) per dim)."""
    if not any(l or r for l, r in pads):
        return x
    nd = len(pads)
    shape = x.shape[:-nd] + tuple(s + l + r for s, (l, r) in zip(x.shape[-nd:], pads))
    out = xp.empty(shape, dtype=x.dtype)
    out.fill(value)
    inner = (Ellipsis,) + tuple(slice(l, l + s) for s, (l, _) in zip(x.shape[-nd:], pads))
    out[inner] = x
    return out


def unpad_index(shape, pads):
    nd = len(pads)
    return (Ellipsis,) + tuple(slice(l, l + s) for s, (l, _) in zip(shape[-nd:], pads))


def offset_slices(off, stride, dilation, out):
    """Slices of a padded input hit by kernel offset ``off`` over all output positions."""
    return tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                 for o, d, s, n in zip(off, dilation, stride, out))


class ConvNd(Function):
    @staticmethod
    def forward(ctx, x, w, b=None, stride=(1,), pads=((0, 0),), dilation=(1,), groups=1):
        xp = xp_of(x)
        nd = len(stride)
        N, C = x.shape[:2]
        O = w.shape[0]
        k = w.shape[2:]
        pshape = x.shape[:2] + tuple(s + l + r for s, (l, r) in zip(x.shape[2:], pads))
        out = tuple((s - d * (kk - 1) - 1) // st + 1
                    for s, d, kk, st in zip(pshape[2:], dilation, k, stride))
        K = math.prod(k)
        P = math.prod(out)
        G = groups
        im2col = native_kernel("conv_im2col", x)
        if im2col is not None:
            cols = np.empty((G, (C // G) * K, N * P), dtype=x.dtype)
            im2col(as_5d(x, nd), cols, 0,
                   *geometry_3d(nd, k, stride, tuple(l for l, _ in pads), dilation, out))
        else:
            xp_ = pad_spatial(xp, x, pads)
            sN, sC = xp_.strides[:2]
            ss = xp_.strides[2:]
            view = _as_strided(xp, xp_, (C,) + k + (N,) + out,
                               (sC,) + tuple(s * d for s, d in zip(ss, dilation)) + (sN,) +
                               tuple(s * st for s, st in zip(ss, stride)))
            cols = xp.ascontiguousarray(view).reshape(G, (C // G) * K, N * P)
        if G == 1:
            y = _mm(w.reshape(O, -1), cols[0], x.dtype)
        else:
            y = _mm(w.reshape(G, O // G, -1), cols, x.dtype).reshape(O, N * P)
        if y.dtype != x.dtype:
            y = y.astype(x.dtype)
        y = y.reshape((O, N) + out)
        if b is not None:
            y += b.reshape((O, 1) + (1,) * nd)
        na = ctx.needs_input_grad
        if na:
            ctx.cols = cols if na[1] else None
            ctx.w = w if na[0] else None
            ctx.geom = (x.shape, pshape, pads, stride, dilation, G, k, out)
            ctx.has_bias = b is not None
        return y.transpose((1, 0) + tuple(range(2, 2 + nd)))

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        xshape, pshape, pads, stride, dilation, G, k, out = ctx.geom
        nd = len(stride)
        N, C = xshape[:2]
        O = g.shape[1]
        na = ctx.needs_input_grad
        g2 = xp.ascontiguousarray(g.transpose((1, 0) + tuple(range(2, 2 + nd)))).reshape(G, O // G, -1)
        gx = gw = gb = None
        if na[1]:
            cols = ctx.cols
            if G == 1:
                gw = _mm(g2[0], cols[0].T, g.dtype)
            else:
                gw = _mm(g2, cols.transpose(0, 2, 1), g.dtype)
            gw = gw.reshape((O, C // G) + tuple(k)).astype(g.dtype, copy=False)
        if len(na) > 2 and na[2] and ctx.has_bias:
            if _lowp.applies(g2):  # accumulate in fp32
                gb = _lowp.from_f32(_lowp.to_f32(g2.reshape(O, -1)).sum(axis=1), g.dtype)
            else:
                gb = g2.reshape(O, -1).sum(axis=1)
        if na[0]:
            w = ctx.w
            col2im = native_kernel("conv_col2im", g2, w)
            if col2im is not None:
                return _input_grad_chunked(col2im, g2, w, ctx.geom), gw, gb
            if G == 1:
                gcols = _mm(w.reshape(O, -1).T, g2[0], g.dtype)
            else:
                gcols = _mm(w.reshape(G, O // G, -1).transpose(0, 2, 1), g2, g.dtype)
            gcols = gcols.reshape((C,) + tuple(k) + (N,) + tuple(out))
            # col2im in (C, N, *spatial) layout (that of gcols), returned as an (N, C, ...) view
            gxp = xp.zeros((C, N) + tuple(pshape[2:]), dtype=g.dtype)
            perm = (1, 0) + tuple(range(2, 2 + nd))
            nonoverlap = all(st >= dl * (kk - 1) + 1 for st, dl, kk in zip(stride, dilation, k))
            for off in itertools.product(*(range(kk) for kk in k)):
                dst = (slice(None), slice(None)) + offset_slices(off, stride, dilation, out)
                src = gcols[(slice(None),) + off]
                if nonoverlap:
                    gxp[dst] = src  # offsets hit disjoint positions: plain stores
                else:
                    gxp[dst] += src
            gx = gxp.transpose(perm)
            if any(l or r for l, r in pads):
                gx = gx[unpad_index(xshape, pads)]
        return gx, gw, gb


# elements of one chunk's column gradient: small enough to stay in the L2 cache
# between the GEMM that writes it and the col2im that reads it
_CHUNK_ELEMENTS = 1 << 17


def _input_grad_chunked(col2im, g2, w, geom):
    """The input gradient by the C col2im, a few samples at a time: each chunk's column
    gradient (W.T @ g2's columns of those samples, into one reused buffer) is added
    into the (C, N, *spatial) gradient while it is still in cache, so the whole column
    gradient is never written out. Returned as an (N, C, *spatial) view."""
    xshape, _, pads, stride, dilation, G, k, out = geom
    nd = len(stride)
    N, C = xshape[:2]
    O = g2.shape[1] * G
    P = math.prod(out)
    rows = (C // G) * math.prod(k)  # column-gradient rows of one group
    nb = max(1, min(N, _CHUNK_ELEMENTS // max(G * rows * P, 1)))  # samples per chunk
    wt = w.reshape(G, O // G, -1).transpose(0, 2, 1)
    gx = np.empty((C, N) + tuple(xshape[2:]), dtype=g2.dtype)
    buf = np.empty(G * rows * nb * P, dtype=g2.dtype)
    geom3 = geometry_3d(nd, k, stride, tuple(l for l, _ in pads), dilation, out)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        part = buf[:G * rows * m * P].reshape(G, rows, m * P)  # contiguous, also when m < nb
        np.matmul(wt, g2[:, :, n0 * P:(n0 + m) * P], out=part)
        col2im(part, as_5d(gx, nd), n0, *geom3)
    return gx.transpose((1, 0) + tuple(range(2, 2 + nd)))


def _autocast_casts(t):
    from ..amp.autocast_mode import casts_inputs_of  # only reached on mixed dtypes
    return casts_inputs_of(t)


def _conv(nd, op, input, weight, bias, stride, padding, dilation, groups):
    from .shape import cast
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"{op}: expected Tensor input and weight, got {type(input).__name__} "
                        f"and {type(weight).__name__}")
    if weight.ndim != nd + 2:
        raise RuntimeError(f"{op}: expected a {nd + 2}-D weight (out_channels, in_channels/groups, "
                           f"*kernel), got weight of shape {tuple(weight.shape)}")
    unbatched = input.ndim == nd + 1
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{op}: expected {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input, "
                           f"got input of shape {tuple(input.shape)}")
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {input.dtype}")
    if input.dtype != weight.dtype and not _autocast_casts(input):
        raise RuntimeError(f"{op}: input dtype {input.dtype} and weight dtype {weight.dtype} "
                           "should be the same")
    if bias is not None:
        if tuple(bias.shape) != (weight.shape[0],):
            raise RuntimeError(f"{op}: expected bias of shape ({weight.shape[0]},) for weight of "
                               f"shape {tuple(weight.shape)}, got bias of shape {tuple(bias.shape)}")
        if bias.dtype != input.dtype and not _autocast_casts(input):
            bias = cast(bias, input.dtype)
    if unbatched:
        from .shape import unsqueeze
        input = unsqueeze(input, 0)
    groups = int(groups)
    C = input.shape[1]
    O = weight.shape[0]
    if groups < 1 or C % groups or O % groups:
        raise RuntimeError(f"{op}: in_channels ({C}) and out_channels ({O}) must both be "
                           f"divisible by groups ({groups})")
    if weight.shape[1] * groups != C:
        raise RuntimeError(f"{op}: weight of shape {tuple(weight.shape)} with groups={groups} "
                           f"expects input with {weight.shape[1] * groups} channels, but got "
                           f"input of shape {tuple(input.shape)} ({C} channels)")
    stride = _tuple(stride, nd, "stride", op)
    dilation = _tuple(dilation, nd, "dilation", op)
    k = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions")
            pads = []
            for d, kk in zip(dilation, k):
                total = d * (kk - 1)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        else:
            raise ValueError(f"{op}: invalid padding string {padding!r}; expected 'same' or 'valid'")
    else:
        p = _tuple(padding, nd, "padding", op)
        if any(v < 0 for v in p):
            raise RuntimeError(f"{op}: negative padding is not supported, got {p}")
        pads = tuple((v, v) for v in p)
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation):
        raise RuntimeError(f"{op}: stride and dilation must be positive, got stride={stride}, "
                           f"dilation={dilation}")
    spatial = tuple(input.shape[2:])
    padded = tuple(s + l + r for s, (l, r) in zip(spatial, pads))
    eff = tuple(d * (kk - 1) + 1 for d, kk in zip(dilation, k))
    if any(e > p for e, p in zip(eff, padded)):
        raise RuntimeError(f"{op}: kernel size (dilated) {eff} can't be greater than the padded "
                           f"input size {padded} (input shape {tuple(input.shape)})")
    out = ConvNd.apply(input, weight, bias, stride=stride, pads=pads, dilation=dilation,
                       groups=groups)
    if unbatched:
        from .shape import squeeze
        out = squeeze(out, 0)
    return out


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-d convolution (cross-correlation) of (N, C_in, L) by (C_out, C_in/groups, k)."""
    return _conv(1, "conv1d", input, weight, bias, stride, padding, dilation, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution (cross-correlation) of (N, C_in, H, W) by (C_out, C_in/groups, kh, kw)."""
    return _conv(2, "conv2d", input, weight, bias, stride, padding, dilation, groups)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """3-d convolution (cross-correlation) of (N, C_in, D, H, W)."""
    return _conv(3, "conv3d", input, weight, bias, stride, padding, dilation, groups)
