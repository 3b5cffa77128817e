"""Cross-entropy over logits whose vocabulary is split across the tensor-parallel
group (Megatron-LM's ``vocab_parallel_cross_entropy``): the full logits are never
gathered. Each rank holds columns [rank*V/tp, (rank+1)*V/tp); three all-reduces of
one value per token (max, sum of exponentials, the target's logit) give every rank
the same loss, and the gradient (softmax minus one-hot, on the local columns) needs
no communication.
"""
import numpy as np

from ...autograd.function import Function
from ...backend import get_array_module
from ...collectives import ReduceOp, get_default_group

__all__ = ["vocab_parallel_cross_entropy"]


class _VocabParallelCE(Function):
    @staticmethod
    def forward(ctx, logits, target=None, group=None):
        xp = get_array_module(logits)
        pg = group
        vl = logits.shape[-1]
        start = pg.rank * vl
        mx = logits.max(axis=-1)
        if pg.size > 1:
            mx = np.ascontiguousarray(mx)
            pg.allreduce(mx, ReduceOp.MAX)
        z = logits - mx[..., None]
        e = xp.exp(z)
        s = xp.ascontiguousarray(e.sum(axis=-1))
        local = target - start
        inside = (local >= 0) & (local < vl)
        idx = xp.where(inside, local, 0)
        picked = xp.take_along_axis(z, idx[..., None], axis=-1)[..., 0]
        picked = xp.ascontiguousarray(xp.where(inside, picked, 0).astype(logits.dtype))
        if pg.size > 1:
            pg.allreduce(s, ReduceOp.SUM)
            pg.allreduce(picked, ReduceOp.SUM)
        ctx.softmax = e / s[..., None]
        ctx.idx, ctx.inside = idx, inside
        return (xp.log(s) - picked).astype(logits.dtype)

    @staticmethod
    def backward(ctx, g):
        xp = get_array_module(g)
        grad = ctx.softmax.copy()
        onehot = xp.zeros_like(grad)
        xp.put_along_axis(onehot, ctx.idx[..., None],
                          ctx.inside[..., None].astype(grad.dtype), axis=-1)
        grad -= onehot
        grad *= g[..., None]
        return grad


def vocab_parallel_cross_entropy(logits, target, group=None, reduction="mean"):
    """Cross-entropy of ``logits`` (..., V/tp: this rank's vocabulary columns) against
    ``target`` (...: ids into the full vocabulary). ``reduction``: "mean", "sum" or
    "none" (per-token losses). Every rank of ``group`` gets the same value."""
    pg = group if group is not None else get_default_group()
    t = target.array if hasattr(target, "array") else np.asarray(target)
    if tuple(t.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"vocab_parallel_cross_entropy: target shape {tuple(t.shape)} "
                         f"does not match logits {tuple(logits.shape)} without the last dim")
    loss = _VocabParallelCE.apply(logits, target=t.astype(np.int64), group=pg)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction {reduction!r}: use 'mean', 'sum' or 'none'")
