"""Indexing: basic and advanced __getitem__ (gradient by scatter-add), index_put,
gather, masked_fill, tril/triu."""
import numpy as np

from ..autograd.function import Function
from ..backend import scatter_add
from .._tensor import Tensor
from ._util import xp_of, unbroadcast


def _is_advanced(index):
    items = index if isinstance(index, tuple) else (index,)
    for it in items:
        if hasattr(it, "shape") and not isinstance(it, slice) or isinstance(it, (list,)):
            return True
    return False


def normalize_index(index):
    """Turn tensors inside an index into arrays and check index dtypes."""
    if isinstance(index, tuple):
        return tuple(_norm_item(i) for i in index)
    return _norm_item(index)


def _norm_item(it):
    if isinstance(it, Tensor):
        it = it._data
    elif isinstance(it, list):
        it = np.asarray(it)
        if it.dtype.kind == "f":
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors; "
                             f"got a list of floats")
    if hasattr(it, "dtype") and hasattr(it, "shape"):
        if it.dtype.kind not in "biu":
            raise IndexError(f"tensors used as indices must be long, int, byte or bool tensors, "
                             f"got dtype {it.dtype}")
        if it.ndim == 0 and it.dtype.kind in "iu":
            return int(it)
    return it


def _index_on(xp, index):
    """``index`` with its host index arrays (from lists) moved to ``xp``'s device."""
    if xp is np:
        return index
    if isinstance(index, tuple):
        return tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index)
    return xp.asarray(index) if isinstance(index, np.ndarray) else index


def along_axis_grid(xp, index, axis):
    """The index tuple that addresses, for every entry of ``index``, the element whose
    position is its own except ``index``'s value along ``axis`` (what gather reads and
    scatter writes)."""
    grid = list(xp.indices(index.shape, sparse=True))
    grid[axis] = index
    return tuple(grid)


class Getitem(Function):
    is_view = True

    @staticmethod
    def forward(ctx, a, index):
        index = _index_on(xp_of(a), index)
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        ctx.advanced = _is_advanced(index)
        try:
            out = a[index]
        except IndexError as e:
            raise IndexError(f"index {_describe(index)} is out of bounds for tensor of shape "
                             f"{tuple(a.shape)}: {e}") from None
        return xp_of(a).asarray(out) if not hasattr(out, "shape") or out.ndim == 0 else out

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        if ctx.advanced:
            scatter_add(out, ctx.index, g)   # repeated indices must add up
        else:
            out[ctx.index] = g
        return out


def _describe(index):
    items = index if isinstance(index, tuple) else (index,)
    return "[" + ", ".join(f"array{tuple(i.shape)}" if hasattr(i, "shape") else repr(i)
                           for i in items) + "]"


def written_grads(g, index, input_grad, value_grad, overwritten=True):
    """The gradients of ``out = a.copy(); out[index] = v`` (``overwritten``) or ``+= v``
    given ``out``'s gradient ``g``: ``a``'s is ``g`` with the written entries zeroed
    (kept when ``v`` was added), ``v``'s is ``g[index]``; None where not wanted."""
    ga = gv = None
    if input_grad:
        ga = g.copy()
        if overwritten:
            ga[index] = 0
    if value_grad:
        gv = g[index]
    return ga, gv


class IndexPut(Function):
    """out = a with a[index] = v (out of place; used by __setitem__ inside the graph)."""

    @staticmethod
    def forward(ctx, a, v, index):
        out = a.copy()
        out[index] = v
        ctx.index = index
        ctx.vshape = v.shape if hasattr(v, "shape") else ()
        ctx.vshape_indexed = out[index].shape
        return out

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        ga, gv = written_grads(g, ctx.index, na[0], na[1])
        return ga, None if gv is None else unbroadcast(gv, ctx.vshape)


class Gather(Function):
    @staticmethod
    def forward(ctx, a, axis, idx):
        ctx.shape, ctx.axis, ctx.idx = a.shape, axis, idx
        if idx.shape != a.shape:  # PyTorch lets index be smaller than input off ``axis``
            a = a[tuple(slice(None) if d == axis else slice(0, n) for d, n in enumerate(idx.shape))]
        return xp_of(a).take_along_axis(a, idx, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        # scatter-add along the axis (indices may repeat)
        scatter_add(out, along_axis_grid(xp, ctx.idx, ctx.axis), g)
        return out, None, None


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, a, mask, value):
        ctx.mask, ctx.shape = mask, a.shape
        return xp_of(a).where(mask, a.dtype.type(value), a)

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(xp_of(g).where(ctx.mask, g.dtype.type(0), g), ctx.shape), None, None


class Tri(Function):
    @staticmethod
    def forward(ctx, a, k, upper):
        xp = xp_of(a)
        ctx.k, ctx.upper = k, upper
        return xp.triu(a, k) if upper else xp.tril(a, k)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        return xp.triu(g, ctx.k) if ctx.upper else xp.tril(g, ctx.k)


def getitem(a, index):
    """``a[index]``: basic indexing gives views, advanced indexing copies (scatter-add gradient)."""
    return Getitem.apply(a, index=normalize_index(index))


def index_put(a, index, value):
    """A copy of ``a`` with ``a[index] = value`` (differentiable in both)."""
    if not isinstance(value, Tensor):
        value = Tensor._make(xp_of(a._data).asarray(value, dtype=a.dtype))
    elif value.dtype != a.dtype:
        from .shape import cast
        value = cast(value, a.dtype)
    return IndexPut.apply(a, value, index=index)


def gather(a, dim, index):
    """out[i][j] = a[i][index[i][j]] along ``dim`` (PyTorch's gather)."""
    idx = index._data if isinstance(index, Tensor) else xp_of(a._data).asarray(index)
    if idx.dtype.kind not in "iu":
        raise RuntimeError(f"gather(): expected dtype int64 for index, got {idx.dtype}")
    if idx.ndim != a.ndim:
        raise RuntimeError(f"gather(): index tensor must have the same number of dimensions as "
                           f"input tensor ({idx.ndim} vs {a.ndim})")
    axis = dim % a.ndim
    for d in range(a.ndim):
        if d != axis and idx.shape[d] > a.shape[d]:
            raise RuntimeError(f"gather(): size of index {tuple(idx.shape)} must not exceed "
                               f"the input {tuple(a.shape)} in dim {d} (dim {axis} excepted)")
    n = a.shape[axis]
    if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):  # PyTorch: RuntimeError
        bad = int(idx.max()) if int(idx.max()) >= n else int(idx.min())
        raise RuntimeError(f"index {bad} is out of bounds for dimension {axis} with size {n}")
    return Gather.apply(a, axis, idx)


def masked_fill(a, mask, value):
    """``a`` with ``value`` where the bool ``mask`` (broadcast) is True."""
    m = mask._data if isinstance(mask, Tensor) else xp_of(a._data).asarray(mask)
    if m.dtype != np.bool_:
        raise RuntimeError(f"masked_fill only supports boolean masks, but got mask with dtype {m.dtype}")
    if isinstance(value, Tensor):
        value = value.item()
    return MaskedFill.apply(a, m, value)


def tril(a, diagonal=0):
    """The lower triangle (elements above diagonal ``diagonal`` zeroed)."""
    return Tri.apply(a, diagonal, False)


def triu(a, diagonal=0):
    """The upper triangle (elements below diagonal ``diagonal`` zeroed)."""
    return Tri.apply(a, diagonal, True)
