"""Megatron-LM's four moves between replicated and tensor-parallel activations, as
autograd Functions over the tensor-parallel group.

    copy_to_tp(x)        forward: identity      backward: all-reduce   (Megatron's f)
    reduce_from_tp(x)    forward: all-reduce    backward: identity     (Megatron's g)
    gather_from_tp(x)    forward: all-gather on the last dim   backward: keep my chunk
    scatter_to_tp(x)     forward: keep my chunk of the last dim backward: all-gather

Why not ``deepseek.distributed.functional`` as is: its adjoints are those of the sum
of every rank's loss, while in tensor parallelism every rank of the group computes
the *same* loss from replicated activations (the loss counts once, not tp times).
Under that convention the adjoint of an all-reduce is the identity, and of a copy the
all-reduce: the conjugate pairs above. The array moves themselves are functional's.
A group of one makes every move the identity.
"""
from ...autograd.function import Function
from ...backend import get_array_module
from ...collectives import ReduceOp, get_default_group
from ..functional import _allreduce, _gather

__all__ = ["copy_to_tp", "reduce_from_tp", "gather_from_tp", "scatter_to_tp"]


def _group(group):
    return group if group is not None else get_default_group()


def _chunk(pg, x):
    d = x.shape[-1]
    if d % pg.size:
        raise ValueError(f"last dim {d} is not divisible by the tensor-parallel group "
                         f"size {pg.size}")
    k = d // pg.size
    return get_array_module(x).ascontiguousarray(x[..., pg.rank * k:(pg.rank + 1) * k])


class _CopyTo(Function):
    @staticmethod
    def forward(ctx, x, group=None):
        ctx.pg = group
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        return _allreduce(ctx.pg, g, ReduceOp.SUM) if ctx.pg.size > 1 else g


class _ReduceFrom(Function):
    @staticmethod
    def forward(ctx, x, group=None):
        return _allreduce(group, x, ReduceOp.SUM) if group.size > 1 else x.copy()

    @staticmethod
    def backward(ctx, g):
        return g


class _GatherFrom(Function):
    @staticmethod
    def forward(ctx, x, group=None):
        ctx.pg = group
        return _gather(group, x, x.ndim - 1) if group.size > 1 else x.copy()

    @staticmethod
    def backward(ctx, g):
        return _chunk(ctx.pg, g)


class _ScatterTo(Function):
    @staticmethod
    def forward(ctx, x, group=None):
        ctx.pg = group
        return _chunk(group, x)

    @staticmethod
    def backward(ctx, g):
        return _gather(ctx.pg, g, g.ndim - 1) if ctx.pg.size > 1 else g


def copy_to_tp(x, group=None):
    """Replicated ``x`` entering tensor-parallel compute: identity forward, gradient
    all-reduced over ``group`` in backward (each rank saw only its shard's part)."""
    return _CopyTo.apply(x, group=_group(group))


def reduce_from_tp(x, group=None):
    """Partial sums leaving tensor-parallel compute: all-reduced forward, gradient
    passed through in backward."""
    return _ReduceFrom.apply(x, group=_group(group))


def gather_from_tp(x, group=None):
    """Shards of the last dim concatenated in rank order; backward keeps this rank's
    chunk of the gradient."""
    return _GatherFrom.apply(x, group=_group(group))


def scatter_to_tp(x, group=None):
    """This rank's chunk of the last dim of replicated ``x``; backward all-gathers."""
    return _ScatterTo.apply(x, group=_group(group))
