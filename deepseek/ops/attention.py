"""scaled_dot_product_attention as one fused op (scores, mask, softmax, dropout, @ v).

Only the attention probabilities (and the dropout mask) are kept for backward; the
softmax is computed in place on the score matrix, so one (…, L, S) buffer is live.

**CPU execution.** Attention is many tiny GEMMs (MiniLM: 384 products of 128x32 @ 32x128
per layer). Handing each of them to a multithreaded OpenBLAS costs far more than it
saves -- every call wakes and synchronises the pool, worst on a loaded machine. So on
numpy the op runs its batched products with OpenBLAS at one thread and brings its own
parallelism instead, as PyTorch's CPU flash attention does: the batch (…) is cut into
work items (one batch index, or one (batch, head) pair), and each worker thread runs a
whole item -- ``q @ k^T``, mask, softmax, ``@ v`` -- while its scores are still in cache
(numpy releases the GIL in BLAS and in its loops). The thread count is OpenBLAS's own
(``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / threadpoolctl). Small problems, other
BLAS libraries and CuPy take the plain batched path.
"""
import contextlib
import math

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import row_kernel, xp_of, unbroadcast
from ._par import (blas_threads, blas_single_thread, run as _run,  # noqa: F401 (re-exported)
                   FORK_SAFE_THREAD_PREFIX)
from .dropout import keep_mask

# below this many multiply-adds (N * L * S * d) one thread does it faster than a pool
_PAR_MIN_WORK = 1 << 21
# items per worker: enough to balance, few enough to keep per-item Python cost small
_ITEMS_PER_WORKER = 4


def _swap(a):
    return a.swapaxes(-1, -2)


def _items(bshape, workers):
    """Index tuples over the leading batch axes: as few axes as give every worker
    ``_ITEMS_PER_WORKER`` items (all of them when the batch is small)."""
    n, k = 1, 0
    while k < len(bshape) and n < workers * _ITEMS_PER_WORKER:
        n *= bshape[k]
        k += 1
    return list(np.ndindex(*bshape[:k]))


def _parallel_plan(xp, q, k, v, mask):
    """(workers, items) for the threaded CPU path, or None for the plain batched one."""
    if xp is not np or q.ndim < 3 or q.dtype not in (np.float32, np.float64):
        return None
    bshape = q.shape[:-2]
    if k.shape[:-2] != bshape or v.shape[:-2] != bshape:
        return None                       # broadcast batch dims: the plain path
    if mask is not None and np.broadcast_shapes(mask.shape[:-2], bshape) != bshape:
        return None
    work = math.prod(bshape) * q.shape[-2] * k.shape[-2] * max(q.shape[-1], v.shape[-1])
    workers = blas_threads()
    if workers <= 1 or work < _PAR_MIN_WORK:
        return None
    items = _items(bshape, workers)
    return (workers, items) if len(items) > 1 else None


def _small_gemms(q, k, v):
    """One-thread BLAS for batched products of small matrices (each too small to gain
    from threads), the BLAS as it is otherwise (one large product uses its threads)."""
    if isinstance(q, np.ndarray) and q.ndim > 2 and \
            q.shape[-2] * k.shape[-2] * max(q.shape[-1], v.shape[-1]) < _PAR_MIN_WORK:
        return blas_single_thread()
    return contextlib.nullcontext()


def _softmax_rows(xp, s, mask, causal, normalize=True):
    """Mask (bool: True = keep; float: added) and row-softmax ``s`` in place. With
    ``normalize=False`` returns (exp(s - max), row sums) unnormalised: the caller divides
    ``e @ v`` (L x d) instead of ``e`` (L x S), a quarter of the work at S = 4d."""
    with np.errstate(invalid="ignore", over="ignore"):
        if mask is not None:
            if mask.dtype == np.bool_:
                xp.copyto(s, -np.inf, where=~mask)
            else:
                s += mask
        if causal is not None:
            xp.copyto(s, -np.inf, where=causal)
        # the C row passes make the numpy ones' float32 operations in their order
        rows = row_kernel("softmax_rows", s) if s.size else None
        if rows is not None:
            rows(0, s, s, None, s.shape[-1])
        else:
            m = s.max(axis=-1, keepdims=True)
            if not xp.isfinite(m).all():
                m = xp.where(xp.isfinite(m), m, 0)  # fully masked rows give zeros, not nan
            s -= m
        xp.exp(s, out=s)
        if rows is not None and normalize:
            rows(3, s, None, None, s.shape[-1])  # (rows summing to 0 left as they are)
            return s
        tot = s.sum(axis=-1, keepdims=True)
        tot[tot == 0] = 1
        if not normalize:
            return s, tot
        s /= tot
    return s


def _zero_mask(xp, q, k, mask, needs):
    """An additive mask of zeros (every key attended: a batch without padding) that
    changes nothing: adding +0.0 to the scores only turns -0.0 into +0.0, which the
    softmax maps to the same bits. Dropped then, and its pass over the scores with it,
    unless its gradient is asked for or it broadcasts the scores to a larger shape."""
    if mask is None or xp is not np or mask.dtype == np.bool_ or (len(needs) > 3 and needs[3]):
        return False
    scores = np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2])
    return np.broadcast_shapes(mask.shape, scores) == scores and not mask.any()


class SDPA(Function):
    """out = dropout(softmax(q k^T * scale + mask)) @ v; optionally also returns the
    (post-dropout) attention weights as a second output."""

    @staticmethod
    def forward(ctx, q, k, v, mask=None, scale=1.0, is_causal=False, dropout_p=0.0,
                need_weights=False):
        xp = xp_of(q)
        qs = q * q.dtype.type(scale)
        L, S = q.shape[-2], k.shape[-2]
        if _zero_mask(xp, q, k, mask, ctx.needs_input_grad):
            mask = None
        causal = xp.triu(xp.ones((L, S), dtype=bool), 1) if is_causal else None
        keep = any(ctx.needs_input_grad) or need_weights
        plan = _parallel_plan(xp, q, k, v, mask)
        dm = None
        if plan is None:
            with _small_gemms(q, k, v):
                s = qs @ _swap(k)
                if s.dtype != q.dtype:
                    s = s.astype(q.dtype)
                if mask is not None:
                    bshape = np.broadcast_shapes(s.shape, mask.shape)
                    if bshape != s.shape:
                        s = xp.ascontiguousarray(xp.broadcast_to(s, bshape))
                p = _softmax_rows(xp, s, mask, causal)
                if dropout_p > 0:
                    dm = keep_mask(p.shape, dropout_p, p.dtype, p)
                    pd = p * dm
                else:
                    pd = p
                out = pd @ v
        else:
            workers, items = plan
            bshape = q.shape[:-2]
            out = np.empty(bshape + (L, v.shape[-1]), dtype=q.dtype)
            p = np.empty(bshape + (L, S), dtype=q.dtype) if keep else None
            if dropout_p > 0:           # drawn whole, in one call: the same mask as serially
                dm = keep_mask(bshape + (L, S), dropout_p, q.dtype, q)
            pd = (np.empty_like(p) if dm is not None else p) if keep else None
            mb = None if mask is None else np.broadcast_to(mask, bshape + mask.shape[-2:])

            def item(i):
                s = np.matmul(qs[i], _swap(k[i]), out=None if p is None else p[i])
                mi = None if mb is None else mb[i]
                if p is None and dm is None:     # inference: normalise the (L, d) output
                    e, tot = _softmax_rows(np, s, mi, causal, normalize=False)
                    o = np.matmul(e, v[i], out=out[i])
                    o /= tot
                    return
                s = _softmax_rows(np, s, mi, causal)
                if dm is not None:
                    s = np.multiply(s, dm[i], out=None if pd is None else pd[i])
                np.matmul(s, v[i], out=out[i])
            with blas_single_thread():
                _run(items, item, workers)
        if out.dtype != q.dtype:
            out = out.astype(q.dtype)
        if ctx.needs_input_grad:
            # q, not q * scale: q is (a view of) the caller's tensor, alive anyway, and
            # backward rescales it (the same product, so the same values); a saved qs
            # would be one more activation-sized array held until backward. Saved, not
            # kept on ctx: an in-place change of q before backward is then detected
            ctx.save_for_backward(k, v, q)
            ctx.p, ctx.pd, ctx.dm = p, pd, dm
            ctx.scale, ctx.shapes = scale, (q.shape, k.shape, v.shape)
            ctx.mshape = None if mask is None else mask.shape
            ctx.par = plan
        if need_weights:
            ctx.out_shapes = [out.shape, pd.shape]
            return out, pd
        return out

    @staticmethod
    def backward(ctx, g, gw=None):
        k, v, q = ctx.saved_tensors
        xp = xp_of(g)
        na = ctx.needs_input_grad
        qshape, kshape, vshape = ctx.shapes
        p, pd, dm = ctx.p, ctx.pd, ctx.dm
        want_s = na[0] or na[1] or (len(na) > 3 and na[3])
        want_m = len(na) > 3 and na[3]
        if ctx.par is not None and xp is np:
            return SDPA._backward_par(ctx, g, gw, q, k, v, want_s, want_m)
        gq = gk = gv = gm = None
        with _small_gemms(q, k, v):
            if na[2]:
                gv = unbroadcast(_swap(pd) @ g, vshape)
            if want_s:
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
                    gk = unbroadcast(_swap(gs) @ (q * q.dtype.type(ctx.scale)), kshape)
                if want_m:
                    gm = unbroadcast(gs, ctx.mshape)
        return gq, gk, gv, gm

    @staticmethod
    def _backward_par(ctx, g, gw, q, k, v, want_s, want_m):
        """The backward of the threaded forward: the same work items, the same math."""
        na = ctx.needs_input_grad
        p, pd, dm = ctx.p, ctx.pd, ctx.dm
        workers, items = ctx.par
        gq = np.empty(ctx.shapes[0], dtype=g.dtype) if na[0] else None
        gk = np.empty(ctx.shapes[1], dtype=g.dtype) if na[1] else None
        gv = np.empty(ctx.shapes[2], dtype=g.dtype) if na[2] else None
        gsf = np.empty(p.shape, dtype=g.dtype) if want_m else None
        sc = g.dtype.type(ctx.scale)

        def item(i):
            gi = g[i]
            if gv is not None:
                np.matmul(_swap(pd[i]), gi, out=gv[i])
            if not want_s:
                return
            gs = np.matmul(gi, _swap(v[i]), out=None if gsf is None else gsf[i])
            if gw is not None:
                gs += gw[i]
            if dm is not None:
                gs *= dm[i]
            pi = p[i]
            gs *= pi
            gs -= pi * gs.sum(axis=-1, keepdims=True)
            if gq is not None:
                np.matmul(gs, k[i], out=gq[i])
                gq[i] *= sc
            if gk is not None:
                np.matmul(_swap(gs), q[i] * q.dtype.type(ctx.scale), out=gk[i])
        with blas_single_thread():
            _run(items, item, workers)
        gm = unbroadcast(gsf, ctx.mshape) if want_m else None
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
