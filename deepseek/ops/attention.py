"""scaled_dot_product_attention as one fused op (scores, mask, softmax, dropout, @ v).

Only the attention probabilities (and the dropout mask) are kept for backward; the
softmax is computed in place on the score matrix, so one (…, L, S) buffer is live.
"""
import math

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import xp_of, unbroadcast
from .dropout import keep_mask


def _swap(a):
    return a.swapaxes(-1, -2)


class SDPA(Function):
    """out = dropout(softmax(q k^T * scale + mask)) @ v; optionally also returns the
    (post-dropout) attention weights as a second output."""

    @staticmethod
    def forward(ctx, q, k, v, mask=None, scale=1.0, is_causal=False, dropout_p=0.0,
                need_weights=False):
        xp = xp_of(q)
        qs = q * q.dtype.type(scale)
        s = qs @ _swap(k)
        if s.dtype != q.dtype:
            s = s.astype(q.dtype)
        L, S = s.shape[-2], s.shape[-1]
        with np.errstate(invalid="ignore", over="ignore"):
            if mask is not None:
                bshape = np.broadcast_shapes(s.shape, mask.shape)
                if bshape != s.shape:
                    s = xp.ascontiguousarray(xp.broadcast_to(s, bshape))
                if mask.dtype == np.bool_:
                    xp.copyto(s, -np.inf, where=~mask)
                else:
                    s += mask
            if is_causal:
                xp.copyto(s, -np.inf, where=xp.triu(xp.ones((L, S), dtype=bool), 1))
            m = s.max(axis=-1, keepdims=True)
            if not xp.isfinite(m).all():
                m = xp.where(xp.isfinite(m), m, 0)  # fully masked rows give zeros, not nan
            s -= m
            xp.exp(s, out=s)
            tot = s.sum(axis=-1, keepdims=True)
            tot[tot == 0] = 1
            s /= tot
        p = s
        if dropout_p > 0:
            dm = keep_mask(p.shape, dropout_p, p.dtype, p)
            pd = p * dm
        else:
            dm, pd = None, p
        out = pd @ v
        if out.dtype != q.dtype:
            out = out.astype(q.dtype)
        na = ctx.needs_input_grad
        if na:
            ctx.save_for_backward(k, v)
            ctx.qs, ctx.p, ctx.pd, ctx.dm = qs, p, pd, dm
            ctx.scale, ctx.shapes = scale, (q.shape, k.shape, v.shape)
            ctx.mshape = None if mask is None else mask.shape
        if need_weights:
            ctx.out_shapes = [out.shape, pd.shape]
            return out, pd
        return out

    @staticmethod
    def backward(ctx, g, gw=None):
        k, v = ctx.saved_tensors
        xp = xp_of(g)
        na = ctx.needs_input_grad
        qshape, kshape, vshape = ctx.shapes
        p, pd, dm = ctx.p, ctx.pd, ctx.dm
        gq = gk = gv = gm = None
        if na[2]:
            gv = unbroadcast(_swap(pd) @ g, vshape)
        if na[0] or na[1] or (len(na) > 3 and na[3]):
            gs = g @ _swap(v)
            if gw is not None:
                gs += gw
            if dm is not None:
                gs *= dm
            gs *= p
            gs -= p * gs.sum(axis=-1, keepdims=True)
            if na[0]:
                gq = unbroadcast(gs @ k, qshape)
                gq *= gq.dtype.type(ctx.scale)
            if na[1]:
                gk = unbroadcast(_swap(gs) @ ctx.qs, kshape)
            if len(na) > 3 and na[3]:
                gm = unbroadcast(gs, ctx.mshape)
        return gq, gk, gv, gm


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False,
                                 need_weights=False):
    """softmax(query @ key^T * scale + mask) @ value, PyTorch semantics: a bool
    ``attn_mask`` is True where attention is allowed; a float mask is added to the
    scores. With ``need_weights=True`` (deepseek extension) returns (output, weights)."""
    from .shape import cast
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"scaled_dot_product_attention: {name} must be a Tensor, got "
                            f"{type(t).__name__}")
        if t.ndim < 2:
            raise RuntimeError(f"scaled_dot_product_attention: {name} must have at least 2 dims "
                               f"(..., seq, features), got shape {tuple(t.shape)}")
    if not _dt.is_floating(query.dtype):
        raise RuntimeError(f"scaled_dot_product_attention: expected floating point inputs, got "
                           f"dtype {query.dtype}")
    if not (query.dtype == key.dtype == value.dtype) and not _autocast_casts(query):
        raise RuntimeError(f"scaled_dot_product_attention: query, key and value must have the same "
                           f"dtype, got {query.dtype}, {key.dtype} and {value.dtype}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise RuntimeError(f"scaled_dot_product_attention: shapes query {tuple(query.shape)}, key "
                           f"{tuple(key.shape)}, value {tuple(value.shape)} do not fit "
                           "(need query/key feature dims equal and key/value sequence lengths equal)")
    if enable_gqa and query.ndim >= 3 and query.shape[-3] != key.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = _repeat_heads(key, rep)
        value = _repeat_heads(value, rep)
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: pass either attn_mask or is_causal=True, "
                           "not both")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    L, S = query.shape[-2], key.shape[-2]
    mask = attn_mask
    if mask is not None:
        if not isinstance(mask, Tensor):
            mask = Tensor._make(np.asarray(mask))
        try:
            np.broadcast_shapes(tuple(mask.shape), tuple(query.shape[:-2]) + (L, S))
        except ValueError:
            raise RuntimeError(f"scaled_dot_product_attention: attn_mask of shape "
                               f"{tuple(mask.shape)} does not broadcast to the attention scores "
                               f"of shape {tuple(query.shape[:-2]) + (L, S)}") from None
        if mask.dtype != np.bool_:
            if not _dt.is_floating(mask.dtype):
                raise RuntimeError(f"scaled_dot_product_attention: attn_mask must be bool or "
                                   f"floating point, got dtype {mask.dtype}")
            if mask.dtype != query.dtype:
                mask = cast(mask, query.dtype)
        else:
            mask = mask._data
    return SDPA.apply(query, key, value, mask, scale=scale, is_causal=bool(is_causal),
                      dropout_p=float(dropout_p), need_weights=need_weights)


def _autocast_casts(t):
    # under autocast the mixed dtypes are cast at dispatch (deepseek.amp)
    from ..amp.autocast_mode import casts_inputs_of
    return casts_inputs_of(t)


def _repeat_heads(t, rep):
    from .shape import unsqueeze, expand, reshape
    sh = tuple(t.shape)
    x = unsqueeze(t, -3)
    x = expand(x, sh[:-2] + (rep,) + sh[-2:])
    return reshape(x, sh[:-3] + (sh[-3] * rep,) + sh[-2:])
