"""Resampling ops: ``interpolate`` (nearest, nearest-exact, linear/bilinear/trilinear,
bicubic, area), transposed convolution (``conv_transpose1d/2d/3d``), max unpooling,
``pixel_shuffle``/``pixel_unshuffle``, and ``fold``/``unfold`` (im2col).

Interpolation is separable: each spatial axis is resampled by an (out, in) matrix
whose rows hold PyTorch's source positions and weights, so one ``Interpolate``
Function does every mode and its backward is the transposed matrices. Transposed
convolution is a convolution (``deepseek.ops.conv``) of the zero-dilated, padded
input with the flipped, transposed kernel; ``DilatePad`` does the dilation.
"""
import math

import numpy as np

from ..autograd.function import Function
from .. import dtypes as _dt
from ..backend import scatter_add
from .._tensor import Tensor
from ._util import xp_of


def _ntuple(v, n, name, op):
    if isinstance(v, (int, float, np.integer, np.floating)):
        return (v,) * n
    v = tuple(v)
    if len(v) != n:
        raise ValueError(f"{op}: {name} must have {n} elements for a {n}-d spatial input, got {len(v)}")
    return v


# ---- interpolate ----------------------------------------------------------------------
def _src(mode, out, inp, scale, align_corners):
    dst = np.arange(out, dtype=np.float64)
    if mode == "nearest":
        return np.minimum(np.floor(dst * scale), inp - 1)
    if mode == "nearest-exact":
        return np.minimum(np.floor((dst + 0.5) * scale), inp - 1)
    if align_corners:
        return dst * ((inp - 1) / (out - 1) if out > 1 else 0.0)
    return (dst + 0.5) * scale - 0.5


def _cubic(t, A=-0.75):
    t = np.abs(t)
    return np.where(t <= 1, ((A + 2) * t - (A + 3)) * t * t + 1,
                    np.where(t < 2, ((A * t - 5 * A) * t + 8 * A) * t - 4 * A, 0.0))


def _matrix(mode, out, inp, scale, align_corners):
    """(out, in) float64 matrix: row o holds the weights of output o on the inputs."""
    m = np.zeros((out, inp))
    rows = np.arange(out)
    src = _src(mode, out, inp, scale, align_corners)
    if mode in ("nearest", "nearest-exact"):
        m[rows, src.astype(np.int64)] = 1.0
    elif mode == "linear":
        if not align_corners:
            src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), inp - 1)
        i1 = np.minimum(i0 + 1, inp - 1)
        w1 = src - i0
        scatter_add(m, (rows, i0), 1 - w1)
        scatter_add(m, (rows, i1), w1)
    elif mode == "cubic":
        i = np.floor(src).astype(np.int64)
        t = src - i
        for k, w in zip(range(-1, 3), (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
            scatter_add(m, (rows, np.clip(i + k, 0, inp - 1)), w)
    return m


class Interpolate(Function):
    """Resample each trailing spatial axis by its (out, in) matrix."""

    @staticmethod
    def forward(ctx, x, mats):
        xp = xp_of(x)
        nd = len(mats)
        dt = x.dtype
        ms = [xp.asarray(m, dtype=dt) for m in mats]
        ctx.mats, ctx.nd = ms, nd
        for k, m in enumerate(ms):
            ax = x.ndim - nd + k
            x = xp.moveaxis(xp.moveaxis(x, ax, -1) @ m.T, -1, ax)
        return xp.ascontiguousarray(x).astype(dt, copy=False)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        for k, m in enumerate(ctx.mats):
            ax = g.ndim - ctx.nd + k
            g = xp.moveaxis(xp.moveaxis(g, ax, -1) @ m, -1, ax)
        return xp.ascontiguousarray(g).astype(ctx.mats[0].dtype, copy=False)


_MODES = {"nearest": (None, "nearest"), "nearest-exact": (None, "nearest-exact"), "linear": (1, "linear"),
          "bilinear": (2, "linear"), "trilinear": (3, "linear"), "bicubic": (2, "cubic"), "area": (None, "area")}


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """Resize the spatial dims of an (N, C, ...) input to ``size`` or by ``scale_factor``
    with PyTorch's sampling rules for each ``mode``."""
    if mode not in _MODES:
        raise NotImplementedError(f"interpolate: mode {mode!r} is not supported; expected one of "
                                  f"{sorted(_MODES)}")
    nd = input.ndim - 2
    want, kind = _MODES[mode]
    if nd < 1 or (want is not None and want != nd):
        raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs "
                                  f"{(want or 1) + 2}D input")
    if kind in ("nearest", "nearest-exact", "area") and align_corners is not None:
        raise ValueError("align_corners option can only be set with the interpolating modes: "
                         "linear | bilinear | bicubic | trilinear")
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined")
    spatial = tuple(input.shape[2:])
    if size is not None:
        out = tuple(int(s) for s in _ntuple(size, nd, "size", "interpolate"))
        scales = [i / o for i, o in zip(spatial, out)]
    else:
        sf = tuple(float(s) for s in _ntuple(scale_factor, nd, "scale_factor", "interpolate"))
        out = tuple(int(math.floor(i * s)) for i, s in zip(spatial, sf))
        scales = [i / o for i, o in zip(spatial, out)] if recompute_scale_factor else [1.0 / s for s in sf]
    if kind == "area":
        from .pooling import adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d
        return (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d)[nd - 1](input, out)
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"interpolate: expected a floating point input, got {input.dtype}")
    mats = [_matrix(kind, o, i, s, bool(align_corners)) for o, i, s in zip(out, spatial, scales)]
    return Interpolate.apply(input, mats)


def upsample(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Deprecated alias of ``interpolate``."""
    return interpolate(input, size, scale_factor, mode, align_corners)


# ---- transposed convolution ----------------------------------------------------------
class DilatePad(Function):
    """Insert ``stride - 1`` zeros between input elements of each spatial dim, then pad
    by (left, right) per dim (negative: crop)."""

    @staticmethod
    def forward(ctx, x, stride, pads):
        xp = xp_of(x)
        nd = len(stride)
        sp = x.shape[-nd:]
        dil = [(n - 1) * s + 1 for n, s in zip(sp, stride)]
        full = [d + max(l, 0) + max(r, 0) for d, (l, r) in zip(dil, pads)]
        out = xp.zeros(x.shape[:-nd] + tuple(full), dtype=x.dtype)
        put = (Ellipsis,) + tuple(slice(max(l, 0), max(l, 0) + d, s) for d, s, (l, _) in zip(dil, stride, pads))
        out[put] = x
        crop = (Ellipsis,) + tuple(slice(-min(l, 0), f + min(r, 0)) for f, (l, r) in zip(full, pads))
        ctx.put, ctx.crop, ctx.full = put, crop, out.shape
        return xp.ascontiguousarray(out[crop])

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        full = xp.zeros(ctx.full, dtype=g.dtype)
        full[ctx.crop] = g
        return xp.ascontiguousarray(full[ctx.put])


def _conv_transpose(nd, op, input, weight, bias, stride, padding, output_padding, groups, dilation):
    from . import conv as C
    from .shape import reshape, permute
    from .shape_extra import flip
    if input.ndim != nd + 2:
        raise RuntimeError(f"{op}: Expected {nd + 2}D (batched) input to {op}, but got input of size: "
                           f"{list(input.shape)}")
    s = tuple(int(v) for v in _ntuple(stride, nd, "stride", op))
    p = tuple(int(v) for v in _ntuple(padding, nd, "padding", op))
    op_ = tuple(int(v) for v in _ntuple(output_padding, nd, "output_padding", op))
    d = tuple(int(v) for v in _ntuple(dilation, nd, "dilation", op))
    cin, coutg = weight.shape[0], weight.shape[1]
    k = tuple(weight.shape[2:])
    if input.shape[1] != cin:
        raise RuntimeError(f"{op}: Given transposed=1, weight of size {list(weight.shape)}, expected input"
                           f"{list(input.shape)} to have {cin} channels, but got {input.shape[1]} channels instead")
    if cin % groups:
        raise RuntimeError(f"{op}: in_channels ({cin}) must be divisible by groups ({groups})")
    for o, st, dl in zip(op_, s, d):
        if o >= st and o >= dl:
            raise RuntimeError(f"{op}: output padding must be smaller than either stride or dilation, "
                               f"but got output_padding={op_}, stride={s}, dilation={d}")
    pads = tuple((dl * (kk - 1) - pp, dl * (kk - 1) - pp + oo) for dl, kk, pp, oo in zip(d, k, p, op_))
    x = DilatePad.apply(input, s, pads)
    w = reshape(weight, (groups, cin // groups, coutg) + k)
    w = permute(w, (0, 2, 1) + tuple(range(3, 3 + nd)))
    w = reshape(w, (groups * coutg, cin // groups) + k)
    w = flip(w, tuple(range(2, 2 + nd)))
    conv = (C.conv1d, C.conv2d, C.conv3d)[nd - 1]
    return conv(x, w, bias, 1, 0, d, groups)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """1-d transposed convolution ("deconvolution"); weight is (in, out / groups, k)."""
    return _conv_transpose(1, "conv_transpose1d", input, weight, bias, stride, padding, output_padding,
                           groups, dilation)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-d transposed convolution; weight is (in, out / groups, kh, kw)."""
    return _conv_transpose(2, "conv_transpose2d", input, weight, bias, stride, padding, output_padding,
                           groups, dilation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """3-d transposed convolution; weight is (in, out / groups, kd, kh, kw)."""
    return _conv_transpose(3, "conv_transpose3d", input, weight, bias, stride, padding, output_padding,
                           groups, dilation)


# ---- max unpooling ---------------------------------------------------------------------
class MaxUnpool(Function):
    """Scatter each value to its flat per-plane index of the output (what max_pool's
    ``return_indices`` gives); the gradient is the output gradient at those indices."""

    @staticmethod
    def forward(ctx, x, idx, out_spatial):
        xp = xp_of(x)
        lead = x.shape[:2]
        n = int(np.prod(out_spatial))
        flat_idx = idx.reshape(lead + (-1,))
        if flat_idx.size and (int(flat_idx.min()) < 0 or int(flat_idx.max()) >= n):
            raise RuntimeError(f"max_unpool: found an invalid max index {int(flat_idx.max())} (output "
                               f"volumes are of size {'x'.join(map(str, out_spatial))})")
        out = xp.zeros(lead + (n,), dtype=x.dtype)
        xp.put_along_axis(out, flat_idx, x.reshape(lead + (-1,)), axis=2)
        ctx.idx, ctx.shape = flat_idx, x.shape
        return out.reshape(lead + tuple(out_spatial))

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        gf = g.reshape(g.shape[:2] + (-1,))
        return xp.take_along_axis(gf, ctx.idx, axis=2).reshape(ctx.shape)


def _max_unpool(nd, op, input, indices, kernel_size, stride, padding, output_size):
    k = _ntuple(kernel_size, nd, "kernel_size", op)
    s = k if stride is None else _ntuple(stride, nd, "stride", op)
    p = _ntuple(padding, nd, "padding", op)
    batched = input.ndim == nd + 2
    if not batched:
        from .shape import unsqueeze, squeeze
        return squeeze(_max_unpool(nd, op, unsqueeze(input, 0), indices.unsqueeze(0), kernel_size,
                                   stride, padding, output_size), 0)
    spatial = tuple(input.shape[2:])
    if output_size is None:
        out = tuple((i - 1) * st - 2 * pp + kk for i, st, pp, kk in zip(spatial, s, p, k))
    else:
        out = tuple(int(v) for v in tuple(output_size)[-nd:])
    return MaxUnpool.apply(input, indices._data.astype(np.int64, copy=False), out)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Inverse of max_pool1d: values back at their argmax positions, zeros elsewhere."""
    return _max_unpool(1, "max_unpool1d", input, indices, kernel_size, stride, padding, output_size)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Inverse of max_pool2d: values back at their argmax positions, zeros elsewhere."""
    return _max_unpool(2, "max_unpool2d", input, indices, kernel_size, stride, padding, output_size)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Inverse of max_pool3d: values back at their argmax positions, zeros elsewhere."""
    return _max_unpool(3, "max_unpool3d", input, indices, kernel_size, stride, padding, output_size)


# ---- pixel shuffle and im2col -----------------------------------------------------------
def pixel_shuffle(input, upscale_factor):
    """(…, C·r², H, W) -> (…, C, H·r, W·r)."""
    from .shape import reshape, permute
    r = int(upscale_factor)
    *lead, c, h, w = input.shape
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the "
                           f"square of upscale_factor, but input.size(-3)={c} is not divisible by {r * r}")
    n = len(lead)
    x = reshape(input, tuple(lead) + (c // (r * r), r, r, h, w))
    x = permute(x, tuple(range(n)) + (n, n + 3, n + 1, n + 4, n + 2))
    return reshape(x, tuple(lead) + (c // (r * r), h * r, w * r))


def pixel_unshuffle(input, downscale_factor):
    """(…, C, H·r, W·r) -> (…, C·r², H, W)."""
    from .shape import reshape, permute
    r = int(downscale_factor)
    *lead, c, h, w = input.shape
    n = len(lead)
    x = reshape(input, tuple(lead) + (c, h // r, r, w // r, r))
    x = permute(x, tuple(range(n)) + (n, n + 2, n + 4, n + 1, n + 3))
    return reshape(x, tuple(lead) + (c * r * r, h // r, w // r))


def unfold_patches(input, kernel_size, dilation=1, padding=0, stride=1):
    """``F.unfold`` (im2col): (N, C, H, W) -> (N, C·kh·kw, L) sliding blocks."""
    from .padding import pad as _pad
    from .shape import reshape, permute
    from .shape_extra import unfold
    kh, kw = _ntuple(kernel_size, 2, "kernel_size", "unfold")
    dh, dw = _ntuple(dilation, 2, "dilation", "unfold")
    ph, pw = _ntuple(padding, 2, "padding", "unfold")
    sh, sw = _ntuple(stride, 2, "stride", "unfold")
    if input.ndim != 4:
        raise NotImplementedError("unfold: only 4-D (N, C, H, W) inputs are supported")
    x = _pad(input, (pw, pw, ph, ph)) if ph or pw else input
    n, c = x.shape[:2]
    # windows of the dilated kernel extent, then every dilation-th element of each
    x = unfold(unfold(x, 2, dh * (kh - 1) + 1, sh), 3, dw * (kw - 1) + 1, sw)   # N C oh ow eh ew
    x = x[..., ::dh, ::dw]
    oh, ow = x.shape[2], x.shape[3]
    x = permute(x, (0, 1, 4, 5, 2, 3))
    return reshape(x, (n, c * kh * kw, oh * ow))


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """``F.fold`` (col2im), the adjoint of ``unfold``: sums overlapping blocks back."""
    oh, ow = _ntuple(output_size, 2, "output_size", "fold")
    kh, kw = _ntuple(kernel_size, 2, "kernel_size", "fold")
    return Fold.apply(input, (int(oh), int(ow)), (kh, kw), _ntuple(dilation, 2, "d", "fold"),
                       _ntuple(padding, 2, "p", "fold"), _ntuple(stride, 2, "s", "fold"))


class Fold(Function):
    """col2im: scatter-add each block column back into the (padded) image."""

    @staticmethod
    def forward(ctx, cols, out_hw, k, d, p, s):
        xp = xp_of(cols)
        n, ckk, L = cols.shape
        kh, kw = k
        c = ckk // (kh * kw)
        H, W = out_hw[0] + 2 * p[0], out_hw[1] + 2 * p[1]
        oh = (H - d[0] * (kh - 1) - 1) // s[0] + 1
        ow = (W - d[1] * (kw - 1) - 1) // s[1] + 1
        if oh * ow != L:
            raise RuntimeError(f"fold: expected input's last dim {L} to match the number of sliding "
                               f"blocks {oh * ow}")
        img = xp.zeros((n, c, H, W), dtype=cols.dtype)
        blk = cols.reshape(n, c, kh, kw, oh, ow)
        for i in range(kh):
            for j in range(kw):
                img[:, :, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                    j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]] += blk[:, :, i, j]
        ctx.geom = (k, d, p, s, oh, ow, cols.shape)
        return img[:, :, p[0]: p[0] + out_hw[0], p[1]: p[1] + out_hw[1]].copy()

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        (kh, kw), d, p, s, oh, ow, shape = ctx.geom
        gp = xp.pad(g, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
        n, c = g.shape[:2]
        out = xp.empty((n, c, kh, kw, oh, ow), dtype=g.dtype)
        for i in range(kh):
            for j in range(kw):
                out[:, :, i, j] = gp[:, :, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                                     j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]]
        return out.reshape(shape)

