"""deepseek.nn.functional: PyTorch's ``F`` names, thin wrappers over deepseek.ops."""
import numpy as np

from .._tensor import Tensor
from ..ops.elementwise import (relu as _relu, gelu as _gelu, silu as _silu, tanh, sigmoid,
                               where as _where, maximum as _maximum, minimum as _minimum,
                               exp as _exp, log as _log, mul as _mul, clamp as _clamp)
from ..ops.linalg import linear, matmul as _matmul
from ..ops.softmax import softmax, log_softmax
from ..ops.loss import (cross_entropy, nll_loss, mse_loss, l1_loss, smooth_l1_loss, huber_loss,
                        binary_cross_entropy, binary_cross_entropy_with_logits)
from ..ops.conv import conv1d, conv2d, conv3d
from ..ops.pooling import (max_pool1d, max_pool2d, max_pool3d, avg_pool1d, avg_pool2d, avg_pool3d,
                           adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d)
from ..ops.normalization import layer_norm, batch_norm, group_norm, rms_norm, normalize
from ..ops.embedding import embedding
from ..ops.dropout import dropout, dropout1d, dropout2d, dropout3d
from ..ops.attention import scaled_dot_product_attention
from ..ops.padding import pad, one_hot

__all__ = [
    "relu", "relu6", "leaky_relu", "elu", "gelu", "silu", "mish", "softplus", "tanh", "sigmoid",
    "hardtanh", "logsigmoid", "softmax", "log_softmax", "softmin", "linear", "bilinear",
    "conv1d", "conv2d", "conv3d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "layer_norm", "batch_norm", "group_norm", "rms_norm", "normalize",
    "embedding", "dropout", "dropout1d", "dropout2d", "dropout3d", "cross_entropy", "nll_loss",
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "scaled_dot_product_attention", "pad", "one_hot",
    "multi_head_attention_forward", "cosine_similarity",
]


def _maybe_inplace(input, out, inplace):
    return input._assign_result(out) if inplace else out


def relu(input, inplace=False):
    return _maybe_inplace(input, _relu(input), inplace)


def relu6(input, inplace=False):
    return hardtanh(input, 0.0, 6.0, inplace)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    return _maybe_inplace(input, _clamp(input, min_val, max_val), inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    out = _where(input > 0, input, _mul(input, negative_slope))
    return _maybe_inplace(input, out, inplace)


def elu(input, alpha=1.0, inplace=False):
    from ..ops.elementwise import sub
    neg = _mul(sub(_exp(_minimum(input, 0.0)), 1.0), alpha)
    return _maybe_inplace(input, _where(input > 0, input, neg), inplace)


def gelu(input, approximate="none"):
    return _gelu(input, approximate=approximate)


def silu(input, inplace=False):
    return _maybe_inplace(input, _silu(input), inplace)


def softplus(input, beta=1.0, threshold=20.0):
    from ..ops.elementwise import add, abs_, div
    bx = _mul(input, beta)
    # log(1 + exp(bx)) = max(bx, 0) + log1p(exp(-|bx|)), linear above threshold
    sp = add(_maximum(bx, 0.0), _log(add(_exp(_mul(abs_(bx), -1.0)), 1.0)))
    return _where(bx > threshold, input, div(sp, beta))


def mish(input, inplace=False):
    return _maybe_inplace(input, _mul(input, tanh(softplus(input))), inplace)


def logsigmoid(input):
    return _mul(softplus(_mul(input, -1.0)), -1.0)


def softmin(input, dim=None, dtype=None):
    return softmax(_mul(input, -1.0), dim, dtype)


def bilinear(input1, input2, weight, bias=None):
    from ..ops.shape import unsqueeze, squeeze
    # out[..., o] = x1 W[o] x2
    t = _matmul(unsqueeze(unsqueeze(input1, -2), -3), weight)        # (..., O, 1, in2)
    out = squeeze(squeeze(_matmul(t, unsqueeze(unsqueeze(input2, -2), -1)), -1), -1)
    return out if bias is None else out + bias


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    from ..ops.reduction import sum as _sum
    from ..ops.elementwise import sqrt, div
    num = _sum(_mul(x1, x2), dim=dim)
    n1 = _sum(_mul(x1, x1), dim=dim)
    n2 = _sum(_mul(x2, x2), dim=dim)
    return div(num, sqrt(_clamp(_mul(n1, n2), min=eps * eps)))


def _canonical_mask(mask, name, dtype):
    """bool (True = masked out) or float masks -> additive float mask (or None)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        mask = Tensor._make(np.asarray(mask))
    if mask.dtype == np.bool_:
        from ..backend import get_array_module
        xp = get_array_module(mask._data)
        return Tensor._make(xp.where(mask._data, dtype.type(-np.inf), dtype.type(0)).astype(dtype))
    if mask.dtype.kind != "f":
        raise RuntimeError(f"multi_head_attention: {name} must be a bool or floating point tensor, "
                           f"got dtype {mask.dtype}")
    return mask if mask.dtype == dtype else mask.to(dtype)


def multi_head_attention_forward(query, key, value, num_heads, in_proj_weight, in_proj_bias,
                                 out_proj_weight, out_proj_bias, dropout_p=0.0, training=True,
                                 key_padding_mask=None, need_weights=True, attn_mask=None,
                                 average_attn_weights=True, is_causal=False,
                                 q_proj_weight=None, k_proj_weight=None, v_proj_weight=None,
                                 bias_k=None, bias_v=None, add_zero_attn=False,
                                 use_separate_proj_weight=False, batch_first=False):
    """Multi-head attention; inputs are (L, N, E) or, with batch_first, (N, L, E), or
    unbatched (L, E). Returns (output, averaged or per-head weights or None)."""
    from ..ops.shape import reshape, permute, transpose, unsqueeze, squeeze, chunk, cat
    from ..ops.reduction import mean as _mean
    unbatched = query.ndim == 2
    if unbatched:
        query, key, value = unsqueeze(query, 1 - batch_first), unsqueeze(key, 1 - batch_first), \
            unsqueeze(value, 1 - batch_first)
        if key_padding_mask is not None:
            key_padding_mask = unsqueeze(key_padding_mask, 0)
    if query.ndim != 3:
        raise RuntimeError(f"multi_head_attention: expected query of 2 (unbatched) or 3 dims, got "
                           f"shape {tuple(query.shape)}")
    if batch_first:
        N, L, E = query.shape
        S = key.shape[1]
    else:
        L, N, E = query.shape
        S = key.shape[0]
    H = num_heads
    if E % H:
        raise RuntimeError(f"multi_head_attention: embed_dim {E} is not divisible by num_heads {H}")
    Dh = E // H
    self_attn = query is key and key is value
    if not use_separate_proj_weight and self_attn:
        # one GEMM for q, k and v; split into heads as views
        qkv = linear(query, in_proj_weight, in_proj_bias)              # (.., 3E)
        if batch_first:
            qkv = permute(reshape(qkv, (N, L, 3, H, Dh)), (2, 0, 3, 1, 4))   # (3, N, H, L, Dh)
        else:
            qkv = permute(reshape(qkv, (L, N, 3, H, Dh)), (2, 1, 3, 0, 4))
        from ..ops.shape import split
        q, k, v = (squeeze(t, 0) for t in split(qkv, 1, 0))
    else:
        if use_separate_proj_weight:
            wq, wk, wv = q_proj_weight, k_proj_weight, v_proj_weight
        else:
            wq, wk, wv = chunk(in_proj_weight, 3, 0)
        if in_proj_bias is not None:
            bq, bk, bv = chunk(in_proj_bias, 3, 0)
        else:
            bq = bk = bv = None
        q, k, v = linear(query, wq, bq), linear(key, wk, bk), linear(value, wv, bv)

        def heads(t, n):
            if batch_first:
                return permute(reshape(t, (N, n, H, Dh)), (0, 2, 1, 3))
            return permute(reshape(t, (n, N, H, Dh)), (1, 2, 0, 3))
        q, k, v = heads(q, L), heads(k, S), heads(v, S)
    if bias_k is not None and bias_v is not None:
        from ..ops.shape import expand
        k = cat([k, expand(reshape(bias_k, (1, H, 1, Dh)), (N, H, 1, Dh))], dim=2)
        v = cat([v, expand(reshape(bias_v, (1, H, 1, Dh)), (N, H, 1, Dh))], dim=2)
        S += 1
        if attn_mask is not None:
            attn_mask = pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = pad(key_padding_mask, (0, 1))
    if add_zero_attn:
        from ..ops.creation import zeros
        z = zeros(N, H, 1, Dh, dtype=k.dtype)
        k, v = cat([k, z], dim=2), cat([v, z], dim=2)
        S += 1
        if attn_mask is not None:
            attn_mask = pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = pad(key_padding_mask, (0, 1))

    # one additive (or bool keep) mask broadcasting to (N, H, L, S)
    mask = None
    if attn_mask is not None:
        am = attn_mask if isinstance(attn_mask, Tensor) else Tensor._make(np.asarray(attn_mask))
        if am.ndim == 2:
            if tuple(am.shape) != (L, S):
                raise RuntimeError(f"multi_head_attention: the shape of the 2D attn_mask is "
                                   f"{tuple(am.shape)}, but should be {(L, S)}")
        elif am.ndim == 3:
            if tuple(am.shape) != (N * H, L, S):
                raise RuntimeError(f"multi_head_attention: the shape of the 3D attn_mask is "
                                   f"{tuple(am.shape)}, but should be {(N * H, L, S)}")
            am = reshape(am, (N, H, L, S))
        else:
            raise RuntimeError(f"multi_head_attention: attn_mask must be 2-D or 3-D, got shape "
                               f"{tuple(am.shape)}")
        mask = am
    if key_padding_mask is not None:
        kpm = key_padding_mask if isinstance(key_padding_mask, Tensor) else \
            Tensor._make(np.asarray(key_padding_mask))
        if tuple(kpm.shape) != (N, S):
            raise RuntimeError(f"multi_head_attention: expected key_padding_mask of shape {(N, S)}, "
                               f"got {tuple(kpm.shape)}")
        kpm = reshape(kpm, (N, 1, 1, S))
        if mask is None:
            mask = kpm
        elif mask.dtype == np.bool_ and kpm.dtype == np.bool_:
            mask = Tensor._make(mask._data | kpm._data)
        else:
            mask = _canonical_mask(mask, "attn_mask", q.dtype) + _canonical_mask(kpm, "key_padding_mask", q.dtype)
    if mask is not None and mask.dtype == np.bool_:
        mask = Tensor._make(~mask._data)  # SDPA's bool masks say where attention is allowed
    causal = is_causal and mask is None
    dp = dropout_p if training else 0.0
    res = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dp, is_causal=causal,
                                       need_weights=need_weights)
    out, w = res if need_weights else (res, None)
    # (N, H, L, Dh) -> (N, L, E) or (L, N, E)
    out = permute(out, (0, 2, 1, 3) if batch_first else (2, 0, 1, 3))
    out = reshape(out, (N, L, E) if batch_first else (L, N, E))
    out = linear(out, out_proj_weight, out_proj_bias)
    if w is not None and average_attn_weights:
        w = _mean(w, dim=1)
    if unbatched:
        out = squeeze(out, 1 - batch_first)
        if w is not None:
            w = squeeze(w, 0)
    return out, w


# ---- added for PyTorch API coverage (ops in deepseek/ops/activation.py, resample.py) ------
from ..ops.activation import (hardsigmoid, hardswish, softsign, tanhshrink, selu, celu,  # noqa: E402
                              threshold, hardshrink, softshrink, glu, prelu, rrelu)
from ..ops.activation import elu  # noqa: E402,F811  (one Function, exact at 0)
from ..ops.resample import (interpolate, upsample, conv_transpose1d, conv_transpose2d,  # noqa: E402
                            conv_transpose3d, max_unpool1d, max_unpool2d, max_unpool3d,
                            pixel_shuffle, pixel_unshuffle, fold, unfold_patches as unfold)


def upsample_nearest(input, size=None, scale_factor=None):
    """Deprecated: ``interpolate(mode='nearest')``."""
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input, size=None, scale_factor=None):
    """Deprecated: ``interpolate(mode='bilinear', align_corners=True)``."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    """KL divergence with ``input`` in log space: target * (log target - input)."""
    from ..ops.elementwise import sub, mul, exp as _e, log as _l, where as _w
    from ..ops.reduction import sum as _s, mean as _m
    if log_target:
        pointwise = mul(_e(target), sub(target, input))
    else:
        pointwise = _w(target > 0, mul(target, sub(_l(_clamp(target, min=1e-45)), input)), 0.0)
    if reduction == "batchmean":
        return _s(pointwise) / input.shape[0] if input.ndim else _s(pointwise)
    return _reduce(pointwise, reduction, "kl_div")


def _reduce(x, reduction, op):
    from ..ops.reduction import sum as _s, mean as _m
    if reduction == "mean":
        return _m(x)
    if reduction == "sum":
        return _s(x)
    if reduction == "none":
        return x
    raise ValueError(f"{reduction} is not a valid value for reduction")


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """``||x1 - x2 + eps||_p`` over the last dim."""
    from ..ops.reduction_extra import vector_norm
    from ..ops.elementwise import sub, add
    return vector_norm(add(sub(x1, x2), eps), p, dim=-1, keepdim=keepdim)


def margin_ranking_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None,
                        reduction="mean"):
    """max(0, -target * (input1 - input2) + margin)."""
    from ..ops.elementwise import sub, mul, add
    return _reduce(_relu(add(mul(mul(sub(input1, input2), target), -1.0), margin)), reduction,
                   "margin_ranking_loss")


def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None, reduction="mean"):
    """input where target == 1, max(0, margin - input) where target == -1."""
    from ..ops.elementwise import sub, add
    neg = _relu(sub(margin, input))
    out = add(_where(target == 1, input, 0.0), _where(target == -1, neg, 0.0))
    return _reduce(out, reduction, "hinge_embedding_loss")


def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2.0, eps=1e-6, swap=False,
                        size_average=None, reduce=None, reduction="mean"):
    """max(d(a, p) - d(a, n) + margin, 0) with pairwise p-norm distances."""
    from ..ops.elementwise import sub, add
    dp = pairwise_distance(anchor, positive, p, eps)
    dn = pairwise_distance(anchor, negative, p, eps)
    if swap:
        dn = _minimum(dn, pairwise_distance(positive, negative, p, eps))
    return _reduce(_relu(add(sub(dp, dn), margin)), reduction, "triplet_margin_loss")


def soft_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """log(1 + exp(-target * input))."""
    from ..ops.elementwise import mul
    return _reduce(softplus(mul(mul(input, target), -1.0)), reduction, "soft_margin_loss")


def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-8,
                     reduce=None, reduction="mean"):
    """Poisson negative log likelihood (``log_input``: exp(input) - target * input)."""
    from ..ops.elementwise import sub, mul, add
    if log_input:
        loss = sub(_exp(input), mul(target, input))
    else:
        loss = sub(input, mul(target, _log(add(input, eps))))
    if full:
        raise NotImplementedError("poisson_nll_loss(full=True) is not implemented")
    return _reduce(loss, reduction, "poisson_nll_loss")


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    """0.5 * (log(max(var, eps)) + (input - target)**2 / max(var, eps)) (+ const with ``full``)."""
    import math
    from ..ops.elementwise import sub, mul, add, div
    v = _clamp(var, min=eps)
    d = sub(input, target)
    loss = mul(add(_log(v), div(mul(d, d), v)), 0.5)
    if full:
        loss = add(loss, 0.5 * math.log(2 * math.pi))
    return _reduce(loss, reduction, "gaussian_nll_loss")


def cosine_embedding_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None,
                          reduction="mean"):
    """1 - cos(x1, x2) where target == 1, max(0, cos(x1, x2) - margin) where target == -1."""
    from ..ops.elementwise import sub
    cos = cosine_similarity(input1, input2, dim=-1)
    out = _where(target == 1, sub(1.0, cos), _relu(sub(cos, margin)))
    return _reduce(out, reduction, "cosine_embedding_loss")


def gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    """Softmax of (logits + Gumbel noise) / tau; ``hard``: one-hot in forward, soft gradient."""
    from ..ops.creation import rand
    from ..ops.elementwise import add, div, sub, mul
    u = rand(*logits.shape, dtype=logits.dtype)
    g = mul(_log(mul(_log(add(u, eps)), -1.0)), -1.0)
    y = softmax(div(add(logits, g), tau), dim)
    if not hard:
        return y
    from ..ops.reduction import argmax
    from ..ops.shape_extra import scatter
    idx = argmax(y.detach(), dim, keepdim=True)
    hard_y = scatter(y.detach() * 0, dim, idx, 1.0)
    return add(sub(hard_y, y.detach()), y)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """Normalise each channel by its neighbours' squared sum (across channels)."""
    from ..ops.elementwise import mul, add, div
    from ..ops.padding import pad as _pad
    from ..ops.scan import cumsum
    from ..ops.indexing import getitem
    sq = mul(input, input)
    c = input.shape[1]
    padded = _pad(sq, (0, 0) * (input.ndim - 2) + (size // 2, (size - 1) // 2))
    cs = cumsum(padded, 1)
    zero = mul(getitem(cs, (slice(None), slice(0, 1))), 0.0)
    from ..ops.shape import cat
    cs = cat([zero, cs], 1)
    win = getitem(cs, (slice(None), slice(size, size + c))) - getitem(cs, (slice(None), slice(0, c)))
    return div(input, (add(mul(win, alpha / size), k)) ** beta)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Normalise each (sample, channel) over its spatial dims (group_norm with one channel per group)."""
    if not use_input_stats:
        raise NotImplementedError("instance_norm(use_input_stats=False) is not implemented")
    return group_norm(input, input.shape[1], weight, bias, eps)


def adaptive_max_pool1d(input, output_size, return_indices=False):
    """Max over PyTorch's adaptive windows (start floor(i*L/o), end ceil((i+1)*L/o))."""
    return _adaptive_max(input, (output_size,), return_indices)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """2-d adaptive max pooling (see ``adaptive_max_pool1d``)."""
    os_ = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return _adaptive_max(input, os_, return_indices)


def _adaptive_max(input, out, return_indices):
    from ..ops.shape import stack
    from ..ops.indexing import getitem
    from ..ops.reduction import amax
    if return_indices:
        raise NotImplementedError("adaptive_max_pool(return_indices=True) is not implemented")
    nd = len(out)
    sp = input.shape[-nd:]
    out = tuple(s if o is None else o for o, s in zip(out, sp))

    def pool(x, d):
        if d == nd:
            return x
        L, o = sp[d], out[d]
        ax = x.ndim - nd + d
        parts = [amax(getitem(x, (slice(None),) * ax + (slice((i * L) // o, -(-((i + 1) * L) // o)),)),
                      dim=ax, keepdim=True) for i in range(o)]
        from ..ops.shape import cat
        return pool(cat(parts, ax), d + 1)
    return pool(input, 0)


def affine_grid(theta, size, align_corners=False):
    """Sampling grid (N, H, W, 2) of the affine maps ``theta`` (N, 2, 3)."""
    from ..ops.creation import linspace, ones
    from ..ops.shape import stack, reshape
    n, c, h, w = size

    def lin(k):
        if k == 1:
            return linspace(0.0, 0.0, 1, dtype=theta.dtype)
        t = linspace(-1.0, 1.0, k, dtype=theta.dtype)
        return t if align_corners else t * ((k - 1) / k)
    xs = reshape(lin(w), (1, w)).expand(h, w)
    ys = reshape(lin(h), (h, 1)).expand(h, w)
    base = stack([xs, ys, ones(h, w, dtype=theta.dtype)], -1)           # (H, W, 3)
    return _matmul(reshape(base, (1, h * w, 3)), theta.transpose(1, 2)).reshape(n, h, w, 2)


__all__ += ["hardsigmoid", "hardswish", "softsign", "tanhshrink", "selu", "celu", "threshold",
            "hardshrink", "softshrink", "glu", "prelu", "rrelu", "interpolate", "upsample",
            "upsample_nearest", "upsample_bilinear", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "max_unpool1d", "max_unpool2d", "max_unpool3d", "pixel_shuffle",
            "pixel_unshuffle", "fold", "unfold", "kl_div", "pairwise_distance", "margin_ranking_loss",
            "hinge_embedding_loss", "triplet_margin_loss", "soft_margin_loss", "poisson_nll_loss",
            "gaussian_nll_loss", "cosine_embedding_loss", "gumbel_softmax", "local_response_norm",
            "instance_norm", "adaptive_max_pool1d", "adaptive_max_pool2d", "affine_grid"]
