"""Collectives that autograd sees (``torch.distributed.nn.functional``'s idea, with
``torch.distributed._functional_collectives``' shapes): each returns a *new* tensor
and has a backward, which is what tensor and sequence parallelism need.

    import deepseek.distributed.functional as dfn
    y = dfn.all_reduce(x)                    # sum over ranks; backward: all_reduce of grads
    z = dfn.all_gather(x, dim=0)             # ranks' x concatenated; backward: reduce_scatter
    s = dfn.reduce_scatter(x, dim=0)         # my chunk of the sum; backward: all_gather
    a = dfn.all_to_all(x, scatter_dim=1, gather_dim=0)  # backward: the inverse all_to_all

The gradients are those of the whole job's loss, the sum over ranks of every rank's
loss: a rank's input gradient collects what every rank's output gradient says about
it. So all_reduce(SUM)'s backward is an all_reduce(SUM) of the output gradients, and
the backward of a collective that moves data is the collective that moves it back.
(As in PyTorch. Where every rank computes the *same* loss from replicated outputs, as
in Megatron-style tensor parallelism, the job's loss counts it ``world_size`` times:
divide that loss by the group size to get the single-model gradient.)

Every rank of ``group`` (None: the default group) must call the same collectives in
the same order, in forward *and* in backward (backward runs them in reverse order,
which is the same on every rank when the graphs are the same). The inputs are not
modified; outputs and gradients are fresh arrays.
"""
from ..autograd.function import Function
from ..backend import get_array_module
from ..collectives import ReduceOp, get_default_group

__all__ = ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]


def _group(group):
    return group if group is not None else get_default_group()


def _dim(dim, ndim, what):
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < ndim:
        raise ValueError(f"{what}: dim {dim} out of range for a {ndim}-d tensor")
    return d


# ---- the array-level moves, shared by forwards and backwards ------------------------
def _allreduce(pg, x, op):
    out = x.copy()  # C-contiguous, and the input stays as it was
    pg.allreduce(out, op)
    return out


def _gather(pg, x, dim):
    """Every rank's ``x`` concatenated along ``dim`` in rank order."""
    xp = get_array_module(x)
    n = pg.size
    buf = xp.empty((n,) + x.shape, x.dtype)
    pg.allgather(buf, xp.ascontiguousarray(x))
    # (n, ..., d, ...) -> (..., n, d, ...) -> (..., n*d, ...): index r*d + k is rank r's k
    shape = x.shape[:dim] + (n * x.shape[dim],) + x.shape[dim + 1:]
    return xp.ascontiguousarray(xp.moveaxis(buf, 0, dim)).reshape(shape)


def _pieces(x, n, dim, what):
    """``x`` as (n, *piece) contiguous: piece j is the j-th of n equal chunks along dim."""
    xp = get_array_module(x)
    d = x.shape[dim]
    if d % n:
        raise ValueError(f"{what}: size {d} of dim {dim} is not divisible by the group "
                         f"size {n}")
    split = x.reshape(x.shape[:dim] + (n, d // n) + x.shape[dim + 1:])
    return xp.ascontiguousarray(xp.moveaxis(split, dim, 0))


def _scatter_reduce(pg, x, dim, op):
    """This rank's chunk (along ``dim``) of the reduction over ranks of ``x``."""
    xp = get_array_module(x)
    pieces = _pieces(x, pg.size, dim, "reduce_scatter")
    out = xp.empty(pieces.shape[1:], x.dtype)
    pg.reduce_scatter(out, pieces, op)
    return out


def _exchange(pg, x, scatter_dim, gather_dim):
    """Chunk j of ``x`` along scatter_dim goes to rank j; what arrives is concatenated
    along gather_dim in rank order."""
    xp = get_array_module(x)
    n = pg.size
    pieces = _pieces(x, n, scatter_dim, "all_to_all")
    got = xp.empty_like(pieces)
    pg.all_to_all(got, pieces)
    piece = pieces.shape[1:]
    shape = piece[:gather_dim] + (n * piece[gather_dim],) + piece[gather_dim + 1:]
    return xp.ascontiguousarray(xp.moveaxis(got, 0, gather_dim)).reshape(shape)


# ---- the ops -------------------------------------------------------------------------
class AllReduce(Function):
    """out = reduction over ranks of x (SUM, AVG, MAX, MIN)."""

    @staticmethod
    def forward(ctx, x, op=ReduceOp.SUM, group=None):
        pg = ctx.pg = _group(group)
        ctx.op = op
        out = _allreduce(pg, x, op)
        if op in (ReduceOp.MAX, ReduceOp.MIN):
            ctx.mask = (x == out).astype(x.dtype)  # which ranks hold the extreme
        return out

    @staticmethod
    def backward(ctx, g):
        pg, op = ctx.pg, ctx.op
        if op is ReduceOp.SUM or op is ReduceOp.AVG:
            # d out / d x_r is 1 (1/n for AVG) on every rank: the job's gradient of x_r
            # is the sum (mean) of every rank's output gradient
            return _allreduce(pg, g, op)
        # MAX/MIN: the gradient goes to the ranks holding the extreme, split evenly
        # between ties (as amax's gradient)
        ties = _allreduce(pg, ctx.mask, ReduceOp.SUM)
        return ctx.mask * _allreduce(pg, g, ReduceOp.SUM) / ties


class AllGather(Function):
    """out = every rank's x concatenated along dim."""

    @staticmethod
    def forward(ctx, x, dim=0, group=None):
        pg = ctx.pg = _group(group)
        ctx.dim = dim
        return _gather(pg, x, dim)

    @staticmethod
    def backward(ctx, g):
        # rank r's x is chunk r of every rank's output: its gradient is the sum over
        # ranks of chunk r of their output gradients
        return _scatter_reduce(ctx.pg, g, ctx.dim, ReduceOp.SUM)


class ReduceScatter(Function):
    """out = chunk ``rank`` (along dim) of the reduction over ranks (SUM or AVG)."""

    @staticmethod
    def forward(ctx, x, op=ReduceOp.SUM, dim=0, group=None):
        pg = ctx.pg = _group(group)
        ctx.dim, ctx.op = dim, op
        return _scatter_reduce(pg, x, dim, op)

    @staticmethod
    def backward(ctx, g):
        # chunk r of every rank's x feeds rank r's output: gather the output gradients
        grad = _gather(ctx.pg, g, ctx.dim)
        if ctx.op is ReduceOp.AVG:
            grad = grad / ctx.pg.size
        return grad


class AllToAll(Function):
    """Chunk j of x along scatter_dim goes to rank j; out = what arrives, concatenated
    along gather_dim."""

    @staticmethod
    def forward(ctx, x, scatter_dim=0, gather_dim=0, group=None):
        pg = ctx.pg = _group(group)
        ctx.dims = (scatter_dim, gather_dim)
        return _exchange(pg, x, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, g):
        scatter_dim, gather_dim = ctx.dims
        # the inverse exchange sends every gradient chunk back where its value came from
        return _exchange(ctx.pg, g, gather_dim, scatter_dim)


# ---- the public functions ------------------------------------------------------------
def all_reduce(tensor, op="sum", group=None):
    """A new tensor: the reduction of ``tensor`` over the ranks of ``group``.

    ``op`` is "sum", "avg", "max" or "min" (or a ReduceOp). Backward: SUM and AVG
    all_reduce the output gradients the same way; MAX and MIN send the summed output
    gradient to the ranks holding the extreme (split evenly between ties)."""
    op = ReduceOp.coerce(op)
    if op is ReduceOp.PRODUCT:
        raise ValueError("all_reduce: op PRODUCT has no gradient here; use sum, avg, max "
                         "or min")
    return AllReduce.apply(tensor, op=op, group=group)


def all_gather(tensor, dim=0, group=None):
    """A new tensor: every rank's ``tensor`` concatenated along ``dim`` in rank order
    (the shapes must be equal). Backward: reduce_scatter (SUM) of the output gradient
    along ``dim``."""
    dim = _dim(dim, tensor.ndim, "all_gather")
    return AllGather.apply(tensor, dim=dim, group=group)


def reduce_scatter(tensor, op="sum", dim=0, group=None):
    """A new tensor: chunk ``rank`` (``tensor`` split in ``world_size`` equal chunks
    along ``dim``) of the reduction over ranks. ``op``: "sum" or "avg". Backward:
    all_gather of the output gradients along ``dim`` (divided by the group size for
    "avg")."""
    op = ReduceOp.coerce(op)
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise ValueError(f"reduce_scatter: op {op.name} has no gradient here; use sum or "
                         f"avg")
    dim = _dim(dim, tensor.ndim, "reduce_scatter")
    return ReduceScatter.apply(tensor, op=op, dim=dim, group=group)


def all_to_all(tensor, scatter_dim=0, gather_dim=0, group=None):
    """A new tensor: ``tensor`` split in ``world_size`` equal chunks along
    ``scatter_dim``, chunk j sent to rank j, and the chunks received concatenated along
    ``gather_dim`` in rank order (both 0: PyTorch's ``all_to_all_single``; different
    dims: the sequence <-> head exchange of sequence parallelism). Backward: the
    inverse all_to_all (the two dims swapped) of the output gradient."""
    scatter_dim = _dim(scatter_dim, tensor.ndim, "all_to_all")
    gather_dim = _dim(gather_dim, tensor.ndim, "all_to_all")
    return AllToAll.apply(tensor, scatter_dim=scatter_dim, gather_dim=gather_dim,
                          group=group)
