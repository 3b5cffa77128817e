"""Op table entries of the functional ops added for PyTorch API coverage:
activations (``activation``) and resampling (``resample``: interpolate, transposed
convolution, max unpooling, pixel shuffle, fold/unfold). See ``deepseek.ops.registry``.
"""
import math

import numpy as np

from . import activation as A, resample as RS, shape as S, elementwise as E
from .opinfo import Shape, FLOATING, OpInfo, unary_samples, samples
from ._table_core import _sigmoid

_F = ("float32", "float64")


def _tF(name):
    return lambda t, *a, **k: getattr(t.nn.functional, name)(*a, **k)


def _act(name, op, fn, ref, low=-4.0, high=4.0, **kw):
    kw.setdefault("sample_inputs", unary_samples(low, high))
    return OpInfo(name, op, fn, ref_numpy=ref, ref_torch=_tF(name), dtypes=FLOATING, **kw)


_SA, _SS = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

ACTIVATIONS = [
    _act("hardsigmoid", A.hardsigmoid, A.Hardsigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1), export="hardsigmoid"),
    _act("hardswish", A.hardswish, A.Hardswish, lambda x: x * np.clip(x + 3, 0, 6) / 6, export="hardswish"),
    _act("softsign", A.softsign, A.Softsign, lambda x: x / (1 + np.abs(x)), export="softsign"),
    _act("tanhshrink", A.tanhshrink, A.Tanhshrink, lambda x: x - np.tanh(x), export="tanhshrink"),
    _act("elu", A.elu, A.Elu, lambda x, alpha=1.0: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
         sample_inputs=samples(((Shape((3, 4), -3, 3),), {}), ((Shape((3, 4), -3, 3),), {"alpha": 0.5})), export="elu"),
    _act("selu", A.selu, A.Elu, lambda x: _SS * np.where(x > 0, x, _SA * np.expm1(np.minimum(x, 0)))),
    _act("celu", A.celu, A.Elu, lambda x, alpha=1.0: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) / alpha)),
         sample_inputs=samples(((Shape((3, 4), -3, 3),), {}), ((Shape((3, 4), -3, 3),), {"alpha": 0.5}))),
    _act("threshold", A.threshold, A.Threshold, lambda x, th, v: np.where(x > th, x, v),
         sample_inputs=samples(((Shape((3, 4)), 0.3, -1.0), {})), export="threshold"),
    _act("hardshrink", A.hardshrink, A.Hardshrink, lambda x, l=0.5: np.where(np.abs(x) > l, x, 0),
         sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)), 1.0), {})), export="hardshrink"),
    _act("softshrink", A.softshrink, A.Softshrink,
         lambda x, l=0.5: np.where(x > l, x - l, np.where(x < -l, x + l, 0)),
         sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)), 1.0), {})), export="softshrink"),
    _act("glu", A.glu, (E.Mul, E.Sigmoid, S.Split),
         lambda x, dim=-1: np.split(x, 2, dim)[0] * _sigmoid(np.split(x, 2, dim)[1]),
         sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((4, 3)), 0), {}))),
    _act("prelu", A.prelu, (A.Prelu, S.Reshape), lambda x, w: np.where(x > 0, x, x * (
        w.reshape((1, -1) + (1,) * (x.ndim - 2)) if w.size > 1 else w)),
        sample_inputs=samples(((Shape((2, 3, 4)), Shape((3,), 0, 0.5)), {}), ((Shape((2, 3)), Shape((1,), 0, 0.5)), {})),
        autocast="lower", export="prelu"),
]


def _interp_np(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    # the separable matrices, built independently with a dense loop per output
    nd = x.ndim - 2
    sp = x.shape[2:]
    if size is not None:
        out = (size,) * nd if isinstance(size, int) else tuple(size)
        scales = [i / o for i, o in zip(sp, out)]
    else:
        sf = (scale_factor,) * nd if not isinstance(scale_factor, tuple) else scale_factor
        out = tuple(int(math.floor(i * s)) for i, s in zip(sp, sf))
        scales = [1 / s for s in sf]
    for k, (o, n, sc) in enumerate(zip(out, sp, scales)):
        m = np.zeros((o, n))
        for j in range(o):
            if mode == "nearest":
                m[j, min(int(math.floor(j * sc)), n - 1)] = 1
            else:
                src = j * (n - 1) / (o - 1) if align_corners else max((j + 0.5) * sc - 0.5, 0)
                i0 = min(int(math.floor(src)), n - 1)
                i1 = min(i0 + 1, n - 1)
                m[j, i0] += 1 - (src - i0)
                m[j, i1] += src - i0
        x = np.moveaxis(np.moveaxis(x, 2 + k, -1) @ m.T, -1, 2 + k)
    return x


def _convT_np(x, w, b=None, stride=1, padding=0):
    # the definition: every input element scatters w * x into the output
    n, cin = x.shape[:2]
    cout, k = w.shape[1], w.shape[2:]
    nd = len(k)
    s = (stride,) * nd if isinstance(stride, int) else stride
    p = (padding,) * nd if isinstance(padding, int) else padding
    full = tuple((i - 1) * st + kk for i, st, kk in zip(x.shape[2:], s, k))
    out = np.zeros((n, cout) + full)
    for pos in np.ndindex(*x.shape[2:]):
        sl = tuple(slice(q * st, q * st + kk) for q, st, kk in zip(pos, s, k))
        out[(slice(None), slice(None)) + sl] += np.einsum("nc,co...->no...", x[(slice(None), slice(None)) + pos], w)
    out = out[(slice(None), slice(None)) + tuple(slice(pp, f - pp) for pp, f in zip(p, full))]
    return out if b is None else out + b.reshape((1, -1) + (1,) * nd)


def _unpool_np(x, idx, k):
    n, c, h, w = x.shape
    out = np.zeros((n, c, h * k, w * k))
    flat = out.reshape(n, c, -1)
    for a in range(n):
        for b in range(c):
            flat[a, b, idx[a, b].reshape(-1)] = x[a, b].reshape(-1)
    return flat.reshape(out.shape)


def _unfold_np(x, k, stride=1):
    n, c, h, w = x.shape
    cols = []
    for i in range(0, h - k + 1, stride):
        for j in range(0, w - k + 1, stride):
            cols.append(x[:, :, i:i + k, j:j + k].reshape(n, -1))
    return np.stack(cols, -1)


def _fold_np(cols, out, k):
    n, ckk, L = cols.shape
    c = ckk // (k * k)
    img = np.zeros((n, c) + tuple(out))
    pos = [(i, j) for i in range(out[0] - k + 1) for j in range(out[1] - k + 1)]
    for l, (i, j) in enumerate(pos):
        img[:, :, i:i + k, j:j + k] += cols[:, :, l].reshape(n, c, k, k)
    return img


_UNPOOL_IDX = np.array([[[[0, 3], [9, 14]], [[5, 2], [8, 15]]]])

RESAMPLE = [
    OpInfo("interpolate", RS.interpolate, RS.Interpolate,
           sample_inputs=samples(((Shape((1, 2, 3, 4)),), {"size": (5, 7), "mode": "bilinear"}, "bilinear up"),
                                 ((Shape((1, 2, 6, 5)),), {"size": (4, 3), "mode": "bilinear"}, "bilinear down"),
                                 ((Shape((1, 2, 3, 4)),), {"scale_factor": 2, "mode": "nearest"}, "nearest x2"),
                                 ((Shape((1, 2, 5)),), {"size": 8, "mode": "linear", "align_corners": True}, "linear ac"),
                                 ((Shape((1, 2, 5)),), {"size": 3, "mode": "nearest"}, "nearest down")),
           ref_numpy=_interp_np, ref_torch=_tF("interpolate"), dtypes=FLOATING, export="interpolate"),
    OpInfo("conv_transpose1d", RS.conv_transpose1d, (RS.DilatePad, S.Reshape, S.Permute), autocast="lower",
           sample_inputs=samples(((Shape((2, 3, 5)), Shape((3, 2, 3)), Shape((2,))), {}, "bias"),
                                 ((Shape((2, 3, 5)), Shape((3, 2, 3))), {"stride": 2, "padding": 1}, "stride 2 pad 1")),
           ref_numpy=_convT_np, ref_torch=_tF("conv_transpose1d")),
    OpInfo("conv_transpose2d", RS.conv_transpose2d, (RS.DilatePad, S.Reshape, S.Permute), autocast="lower",
           sample_inputs=samples(((Shape((2, 3, 4, 3)), Shape((3, 2, 3, 2)), Shape((2,))), {}, "bias"),
                                 ((Shape((1, 3, 3, 3)), Shape((3, 2, 3, 3))), {"stride": 2, "padding": 1}, "stride 2 pad 1")),
           ref_numpy=_convT_np, ref_torch=_tF("conv_transpose2d")),
    OpInfo("conv_transpose3d", RS.conv_transpose3d, (RS.DilatePad, S.Reshape, S.Permute), autocast="lower",
           sample_inputs=samples(((Shape((1, 2, 3, 2, 3)), Shape((2, 2, 2, 2, 2))), {"stride": 2})),
           ref_numpy=_convT_np, ref_torch=_tF("conv_transpose3d")),
    OpInfo("max_unpool2d", RS.max_unpool2d, RS.MaxUnpool, autocast_cpu="fp32",
           sample_inputs=samples(((Shape((1, 2, 2, 2)), _UNPOOL_IDX, 2), {})),
           ref_numpy=_unpool_np, ref_torch=lambda t, x, i, k: t.nn.functional.max_unpool2d(x, i, k)),
    OpInfo("pixel_shuffle", RS.pixel_shuffle, (S.Reshape, S.Permute),
           sample_inputs=samples(((Shape((1, 8, 2, 3)), 2), {})),
           ref_numpy=lambda x, r: x.reshape(1, 2, r, r, 2, 3).transpose(0, 1, 4, 2, 5, 3).reshape(1, 2, 4, 6),
           ref_torch=_tF("pixel_shuffle"), dtypes=FLOATING + ("int64",)),
    OpInfo("pixel_unshuffle", RS.pixel_unshuffle, (S.Reshape, S.Permute),
           sample_inputs=samples(((Shape((1, 2, 4, 6)), 2), {})),
           ref_numpy=lambda x, r: x.reshape(1, 2, 2, r, 3, r).transpose(0, 1, 3, 5, 2, 4).reshape(1, 8, 2, 3),
           ref_torch=_tF("pixel_unshuffle")),
    OpInfo("unfold_patches", RS.unfold_patches, (S.Reshape, S.Permute),
           sample_inputs=samples(((Shape((2, 3, 4, 5)), 2), {}), ((Shape((1, 2, 5, 5)), 3), {"stride": 2})),
           ref_numpy=_unfold_np, ref_torch=lambda t, x, *a, **k: t.nn.functional.unfold(x, *a, **k)),
    OpInfo("fold", RS.fold, RS.Fold,
           sample_inputs=samples(((Shape((2, 12, 12)), (4, 5), 2), {})),
           ref_numpy=_fold_np, ref_torch=_tF("fold")),
]

ENTRIES = ACTIVATIONS + RESAMPLE
