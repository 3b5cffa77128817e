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
