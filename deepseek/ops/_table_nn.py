"""Op table entries of the functional (``deepseek.nn.functional``) ops: convolution,
pooling, normalization, losses, embedding, dropout, attention, padding. See
``deepseek.ops.registry``. The numpy references are naive and only meant for the
small sample shapes.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import conv as C, pooling as P, normalization as N, loss as LS, embedding as EM
from . import dropout as D, attention as A, padding as PD, recurrent as RC
from .opinfo import OpInfo, Shape, samples
from ._table_core import _softmax_np

_F = ("float32", "float64")


def _tF(name):
    return lambda t, *a, **k: getattr(t.nn.functional, name)(*a, **k)


def _conv_np(x, w, b=None, stride=1, padding=0):
    nd = w.ndim - 2
    st = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    pd = (padding,) * nd if isinstance(padding, int) else tuple(padding)
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pd])
    win = sliding_window_view(x, w.shape[2:], axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in st)]
    letters = "xyz"[:nd]
    out = np.einsum(f"nc{letters}{letters.upper()},oc{letters.upper()}->no{letters}", win, w)
    return out if b is None else out + b.reshape((1, -1) + (1,) * nd)


def _pool_np(x, kernel_size, stride=None, reduce=np.max):
    nd = x.ndim - 2
    k = (kernel_size,) * nd if isinstance(kernel_size, int) else tuple(kernel_size)
    st = k if stride is None else ((stride,) * nd if isinstance(stride, int) else tuple(stride))
    win = sliding_window_view(x, k, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in st)]
    return reduce(win, axis=tuple(range(-nd, 0)))


def _adaptive_np(x, output_size):
    L = x.shape[-1]
    outs = [x[..., (i * L) // output_size: -(-((i + 1) * L) // output_size)].mean(-1)
            for i in range(output_size)]
    return np.stack(outs, -1)


def _adaptive_nd_np(x, output_size):
    """Adaptive average pooling is separable: pool each spatial axis in turn."""
    nd = x.ndim - 2
    sizes = (output_size,) * nd if isinstance(output_size, int) else tuple(output_size)
    for ax, o in zip(range(-nd, 0), sizes):
        x = np.moveaxis(_adaptive_np(np.moveaxis(x, ax, -1), o), -1, ax)
    return x


def _conv(nd):
    x, w = (2, 3) + (5,) * nd, (4, 3) + (3,) * nd
    return OpInfo(f"conv{nd}d", getattr(C, f"conv{nd}d"), C.ConvNd, autocast="lower",
                  sample_inputs=samples(((Shape(x), Shape(w), Shape((4,))), {}, "bias"),
                                        ((Shape(x), Shape(w)), {"stride": 2, "padding": 1}, "stride 2 pad 1")),
                  ref_numpy=_conv_np, ref_torch=_tF(f"conv{nd}d"), export="conv")


def _fp32_if_3d(args, kwargs):
    """CPU autocast policy of the pools: PyTorch's CPU fp32 list has only the 3-d ones
    (args[1] is the kernel, or the output size, with one entry per spatial dim)."""
    return "fp32" if len(args) > 1 and len(args[1]) == 3 else "none"


def _fp32_if_reflect(args, kwargs):
    """CPU autocast policy of pad: reflection and replication pads are on PyTorch's CPU
    fp32 list, constant and circular ones are not (IndexPad.apply(input, pairs, mode))."""
    return "fp32" if len(args) > 2 and args[2] in ("reflect", "replicate") else "none"


def _pool(kind, nd):
    x = (1, 2) + (4,) * nd
    if kind == "max":
        return OpInfo(f"max_pool{nd}d", getattr(P, f"max_pool{nd}d"), P.MaxPoolNd, autocast_cpu=_fp32_if_3d,
                      sample_inputs=samples(((Shape(x), 2), {}), ((Shape(x), 3, 1), {}, "overlap")),
                      ref_numpy=lambda x, k, s=None: _pool_np(x, k, s, np.max), ref_torch=_tF(f"max_pool{nd}d"),
                      export="max_pool")
    return OpInfo(f"avg_pool{nd}d", getattr(P, f"avg_pool{nd}d"), P.AvgPoolNd, autocast_cpu=_fp32_if_3d,
                  sample_inputs=samples(((Shape(x), 2), {}), ((Shape(x), 3, 1), {}, "overlap")),
                  ref_numpy=lambda x, k, s=None: _pool_np(x, k, s, np.mean), ref_torch=_tF(f"avg_pool{nd}d"),
                  export="avg_pool")


def _adaptive(nd):
    x = (1, 2) + (5,) * nd
    ref = _adaptive_nd_np
    return OpInfo(f"adaptive_avg_pool{nd}d", getattr(P, f"adaptive_avg_pool{nd}d"), P.AdaptiveAvgPoolNd, autocast_cpu=_fp32_if_3d,
                  sample_inputs=samples(((Shape(x), 3), {})), ref_numpy=ref,
                  ref_torch=_tF(f"adaptive_avg_pool{nd}d"), export="adaptive_avg_pool")


def _layer_norm_np(x, ns, w=None, b=None, eps=1e-5):
    ax = tuple(range(-len(ns), 0))
    y = (x - x.mean(ax, keepdims=True)) / np.sqrt(x.var(ax, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def _rms_norm_np(x, ns, w=None, eps=None):
    ax = tuple(range(-len(ns), 0))
    eps = np.finfo(x.dtype).eps if eps is None else eps
    y = x / np.sqrt((x * x).mean(ax, keepdims=True) + eps)
    return y * (1 if w is None else w)


def _group_norm_np(x, g, w=None, b=None, eps=1e-5):
    n, c = x.shape[:2]
    xg = x.reshape(n, g, -1)
    y = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return y * (1 if w is None else w.reshape(shape)) + (0 if b is None else b.reshape(shape))


def _batch_norm_np(x, rm, rv, w=None, b=None, training=False, momentum=0.1, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        ax = (0,) + tuple(range(2, x.ndim))
        rm, rv = x.mean(ax), x.var(ax)
    y = (x - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + eps)
    return y * (1 if w is None else w.reshape(shape)) + (0 if b is None else b.reshape(shape))


def _normalize_np(x, p=2.0, dim=1, eps=1e-12):
    n = np.sum(np.abs(x) ** p, axis=dim, keepdims=True) ** (1 / p)
    return x / np.maximum(n, eps)


def _batch_norm_torch(t, x, rm, rv, *a, **k):
    # running statistics are state, not inputs to differentiate (PyTorch refuses them)
    rm, rv = (None if s is None else s.detach() for s in (rm, rv))
    return t.nn.functional.batch_norm(x, rm, rv, *a, **k)

NORM = [
    OpInfo("layer_norm", N.layer_norm, N.LayerNorm, autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((2, 3, 4)), (4,), Shape((4,)), Shape((4,))), {}, "affine"),
                                 ((Shape((2, 3, 4)), (3, 4)), {}, "two dims, no affine")),
           ref_numpy=_layer_norm_np, ref_torch=_tF("layer_norm"), export="layer_norm"),
    OpInfo("rms_norm", N.rms_norm, N.RMSNorm, autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((2, 3, 4)), (4,), Shape((4,))), {"eps": 1e-6}, "weight"),
                                 ((Shape((2, 3, 4)), (4,)), {"eps": 1e-6}, "no weight")),
           ref_numpy=_rms_norm_np, ref_torch=_tF("rms_norm"), export="rms_norm"),
    OpInfo("group_norm", N.group_norm, N.GroupNorm, autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((2, 4, 3)), 2, Shape((4,)), Shape((4,))), {})),
           ref_numpy=_group_norm_np, ref_torch=_tF("group_norm"), export="group_norm"),
    OpInfo("batch_norm", N.batch_norm, N.BatchNorm,
           sample_inputs=samples(((Shape((4, 3, 2)), Shape((3,)), Shape((3,), 0.5, 2.0), Shape((3,)), Shape((3,))),
                                  {"training": False}, "eval"),
                                 ((Shape((4, 3, 2)), None, None, Shape((3,)), Shape((3,))),
                                  {"training": True}, "training, no running stats")),
           ref_numpy=_batch_norm_np, ref_torch=_batch_norm_torch,
           gradcheck_kw={"requires_grad": (True, False, False, True, True)}, export="batch_norm"),
    OpInfo("normalize", N.normalize, (), sample_inputs=samples(((Shape((3, 4)),), {}),
                                                              ((Shape((3, 4), 0.5, 2.0),), {"p": 1.0, "dim": 0})),
           ref_numpy=_normalize_np, ref_torch=_tF("normalize")),
]


def _reduce(L, reduction="mean"):
    return L.mean() if reduction == "mean" else (L.sum() if reduction == "sum" else L)


def _log_softmax(x, axis=1):
    return np.log(_softmax_np(x, axis))


def _ce_np(x, t, reduction="mean"):
    lp = _log_softmax(x, 1)
    L = -np.take_along_axis(lp, t[:, None], 1)[:, 0]
    return _reduce(L, reduction)


def _nll_np(x, t, reduction="mean"):
    return _reduce(-np.take_along_axis(x, t[:, None], 1)[:, 0], reduction)


def _smooth_l1(d, beta):
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)


def _huber(d, delta):
    a = np.abs(d)
    return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


_TGT = np.array([0, 3, 1])
_PAIR = (Shape((3, 4)), Shape((3, 4)))


def _pointwise(name, fn, ref):
    return OpInfo(name, fn, fn_cls_of(name), autocast="fp32",
                  sample_inputs=samples((_PAIR, {}, "mean"), (_PAIR, {"reduction": "sum"}, "sum"),
                                        (_PAIR, {"reduction": "none"}, "none")),
                  ref_numpy=ref, ref_torch=_tF(name))


def fn_cls_of(name):
    return {"mse_loss": LS.MseLoss, "l1_loss": LS.L1Loss, "smooth_l1_loss": LS.SmoothL1Loss,
            "huber_loss": LS.HuberLoss}[name]


def _bce_logits_np(x, t, reduction="mean"):
    return _reduce(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))), reduction)


def _bce_np(p, t, reduction="mean"):
    return _reduce(-(t * np.log(p) + (1 - t) * np.log(1 - p)), reduction)


LOSSES = [
    OpInfo("cross_entropy", LS.cross_entropy, LS.CrossEntropy, autocast="fp32",
           sample_inputs=samples(((Shape((3, 5)), _TGT), {}), ((Shape((3, 5)), _TGT), {"reduction": "sum"}),
                                 ((Shape((3, 5)), _TGT), {"reduction": "none"})),
           ref_numpy=_ce_np, ref_torch=_tF("cross_entropy")),
    OpInfo("nll_loss", LS.nll_loss, LS.NllLoss, autocast="fp32",
           sample_inputs=samples(((Shape((3, 5)), _TGT), {}), ((Shape((3, 5)), _TGT), {"reduction": "none"})),
           ref_numpy=_nll_np, ref_torch=_tF("nll_loss")),
    _pointwise("mse_loss", LS.mse_loss, lambda a, b, reduction="mean": _reduce((a - b) ** 2, reduction)),
    _pointwise("l1_loss", LS.l1_loss, lambda a, b, reduction="mean": _reduce(np.abs(a - b), reduction)),
    _pointwise("smooth_l1_loss", LS.smooth_l1_loss,
               lambda a, b, reduction="mean", beta=1.0: _reduce(_smooth_l1(a - b, beta), reduction)),
    _pointwise("huber_loss", LS.huber_loss,
               lambda a, b, reduction="mean", delta=1.0: _reduce(_huber(a - b, delta), reduction)),
    OpInfo("binary_cross_entropy_with_logits", LS.binary_cross_entropy_with_logits, LS.BCEWithLogits,
           autocast="fp32", sample_inputs=samples(((Shape((3, 4)), Shape((3, 4), 0.0, 1.0)), {}),
                                                  ((Shape((3, 4)), Shape((3, 4), 0.0, 1.0)), {"reduction": "none"})),
           ref_numpy=_bce_logits_np, ref_torch=_tF("binary_cross_entropy_with_logits")),
    # PyTorch's CUDA autocast refuses binary_cross_entropy (unsafe in fp16); we run it in fp32
    OpInfo("binary_cross_entropy", LS.binary_cross_entropy, LS.BCE, autocast="fp32",
           sample_inputs=samples(((Shape((3, 4), 0.1, 0.9), Shape((3, 4), 0.0, 1.0)), {})),
           ref_numpy=_bce_np, ref_torch=_tF("binary_cross_entropy")),
]


def _sdpa_np(q, k, v, attn_mask=None, is_causal=False):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if is_causal:
        L, S = s.shape[-2:]
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    return _softmax_np(s, -1) @ v


def _pad_np(x, pad, mode="constant", value=None):
    pairs = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[i], pad[i + 1]) for i in range(len(pad) - 2, -1, -2)]
    np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    kw = {"constant_values": value or 0.0} if mode == "constant" else {}
    return np.pad(x, pairs, mode=np_mode, **kw)


def _dropout_call(x, p):
    from ..random import Generator
    # a fresh generator with a fixed seed per call: the same mask on every call, so
    # finite differences see a deterministic function
    return D.dropout(x, p, generator=Generator().manual_seed(0))


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _gru_np(xp, h, w, b=None):
    H, outs = h.shape[1], []
    for x in xp:
        hp = h @ w.T + (0 if b is None else b)
        r, z = _sig(x[:, :H] + hp[:, :H]), _sig(x[:, H:2 * H] + hp[:, H:2 * H])
        n = np.tanh(x[:, 2 * H:] + r * hp[:, 2 * H:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return np.stack(outs)


def _lstm_np(xp, h, c, w, b=None):
    H, outs = h.shape[1], []
    for x in xp:
        a = x + h @ w.T + (0 if b is None else b)
        i, f, o, g = _sig(a[:, :H]), _sig(a[:, H:2 * H]), _sig(a[:, 3 * H:]), np.tanh(a[:, 2 * H:3 * H])
        c = f * c + i * g
        h = o * np.tanh(c)
        outs.append(h)
    return np.stack(outs), c


def _gru_torch(t, xp, h, w, b=None):
    H, outs = h.shape[1], []
    for x in xp:
        hp = h @ w.T + (0 if b is None else b)
        r, z = t.sigmoid(x[:, :H] + hp[:, :H]), t.sigmoid(x[:, H:2 * H] + hp[:, H:2 * H])
        h = (1 - z) * t.tanh(x[:, 2 * H:] + r * hp[:, 2 * H:]) + z * h
        outs.append(h)
    return t.stack(outs)


def _lstm_torch(t, xp, h, c, w, b=None):
    H, outs = h.shape[1], []
    for x in xp:
        a = x + h @ w.T + (0 if b is None else b)
        c = t.sigmoid(a[:, H:2 * H]) * c + t.sigmoid(a[:, :H]) * t.tanh(a[:, 2 * H:3 * H])
        h = t.sigmoid(a[:, 3 * H:]) * t.tanh(c)
        outs.append(h)
    return t.stack(outs), c


# T 3, B 2, H 4; the weights small enough that the gates stay off saturation
_T, _B, _H = 3, 2, 4
RECURRENT = [
    # the fused recurrences nn.GRU / nn.LSTM run outside dispatch modes (so JIT, ONNX
    # and autocast see the per-step ops instead); called directly under autocast they
    # promote their inputs to one dtype, as the per-step ops' arithmetic would
    OpInfo("gru_sequence", RC.gru_sequence, RC.GRUSequence, autocast="promote",
           sample_inputs=samples(
               ((Shape((_T, _B, 3 * _H), -1, 1), Shape((_B, _H), -1, 1),
                 Shape((3 * _H, _H), -0.5, 0.5), Shape((3 * _H,), -0.5, 0.5)), {}),
               ((Shape((_T, _B, 3 * _H), -1, 1), Shape((_B, _H), -1, 1),
                 Shape((3 * _H, _H), -0.5, 0.5)), {}, "no bias")),
           ref_numpy=_gru_np, ref_torch=_gru_torch, tol=(1e-6, 1e-7)),
    OpInfo("lstm_sequence", RC.lstm_sequence, RC.LSTMSequence, autocast="promote",
           sample_inputs=samples(
               ((Shape((_T, _B, 4 * _H), -1, 1), Shape((_B, _H), -1, 1), Shape((_B, _H), -1, 1),
                 Shape((4 * _H, _H), -0.5, 0.5), Shape((4 * _H,), -0.5, 0.5)), {}),
               ((Shape((_T, _B, 4 * _H), -1, 1), Shape((_B, _H), -1, 1), Shape((_B, _H), -1, 1),
                 Shape((4 * _H, _H), -0.5, 0.5)), {}, "no bias")),
           ref_numpy=_lstm_np, ref_torch=_lstm_torch, tol=(1e-6, 1e-7)),
]

OTHER = [
    OpInfo("embedding", EM.embedding, EM.Embedding,
           # (padding_idx zeroes a row's gradient by design: not a finite-difference case)
           sample_inputs=samples(((np.array([[0, 2], [2, 1]]), Shape((4, 3))), {}),
                                 ((np.array([0, 3, 3]), Shape((4, 3))), {}, "repeated index")),
           ref_numpy=lambda i, w, padding_idx=None: w[i], ref_torch=_tF("embedding"), export="embedding"),
    OpInfo("dropout", D.dropout, D.Dropout, call=_dropout_call,
           sample_inputs=samples(((Shape((4, 5)), 0.5), {})), ref_numpy=None, ref_torch=None,
           gradcheck_kw={}, export="dropout"),
    OpInfo("scaled_dot_product_attention", A.scaled_dot_product_attention, A.SDPA, autocast="lower",
           sample_inputs=samples(((Shape((1, 2, 3, 4)), Shape((1, 2, 3, 4)), Shape((1, 2, 3, 4))), {}),
                                 ((Shape((1, 2, 3, 4)), Shape((1, 2, 3, 4)), Shape((1, 2, 3, 4))),
                                  {"is_causal": True}, "causal")),
           ref_numpy=_sdpa_np, ref_torch=_tF("scaled_dot_product_attention"), export="sdpa"),
    OpInfo("pad", PD.pad, (PD.ConstantPad, PD.IndexPad), autocast_cpu=_fp32_if_reflect,
           sample_inputs=samples(((Shape((2, 3, 4)), (1, 2)), {}, "constant"),
                                 ((Shape((2, 3, 4)), (1, 0, 2, 1)), {"value": 1.5}, "constant value"),
                                 ((Shape((2, 3, 4)), (2, 1)), {"mode": "reflect"}, "reflect"),
                                 ((Shape((2, 3, 4)), (1, 2)), {"mode": "replicate"}, "replicate"),
                                 ((Shape((2, 3, 4)), (1, 2)), {"mode": "circular"}, "circular")),
           ref_numpy=_pad_np, ref_torch=_tF("pad"),
           export={PD.ConstantPad: "constant_pad", PD.IndexPad: "index_pad"}),
    OpInfo("one_hot", PD.one_hot, differentiable=False,
           sample_inputs=samples(((np.array([0, 2, 1]),), {}), ((np.array([[0], [3]]), 5), {})),
           ref_numpy=lambda i, n=-1: np.eye(i.max() + 1 if n == -1 else n, dtype=np.int64)[i],
           ref_torch=_tF("one_hot"), dtypes=()),
]

ENTRIES = ([_conv(n) for n in (1, 2, 3)] + [_pool(k, n) for k in ("max", "avg") for n in (1, 2, 3)]
           + [_adaptive(n) for n in (1, 2, 3)] + NORM + LOSSES + OTHER + RECURRENT)
