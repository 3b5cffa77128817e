"""More shape and indexing ops: flip, roll, narrow, diagonal/diag, Tensor.unfold,
repeat_interleave, masked_select, index_select, movedim, tile, h/v/dstack, scatter,
scatter_add, index_add, index_fill, take_along_dim, meshgrid, unbind, trace.

Views and gathers with their own backward are ``Function`` classes here; the rest
compose existing ops (getitem, permute, cat, ...), so they are differentiable through
those.
"""
import builtins as _b

import numpy as np

from ..autograd.function import Function
from ..backend import ufunc_at
from .._tensor import Tensor
from ._util import xp_of
from .embedding import index_add_rows
from .indexing import along_axis_grid, written_grads


def _dim(d, n, op):
    n1 = _b.max(n, 1)
    if not -n1 <= d < n1:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of [{-n1}, {n1 - 1}], "
                         f"but got {d})")
    return d % n1


def _dims(dims, n, op):
    if isinstance(dims, int):
        dims = (dims,)
    return tuple(_dim(int(d), n, op) for d in dims)


class Flip(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return xp_of(a).flip(a, axes).copy() if a.ndim else a.copy()

    @staticmethod
    def backward(ctx, g):
        return xp_of(g).flip(g, ctx.axes) if g.ndim else g


def flip(input, dims):
    """Reverse the order of elements along ``dims`` (a copy, like PyTorch)."""
    return Flip.apply(input, _dims(dims, input.ndim, "flip"))


def fliplr(input):
    """Flip along dim 1 (left/right); the input needs at least 2 dims."""
    if input.ndim < 2:
        raise RuntimeError("fliplr: input must be >= 2-d")
    return flip(input, (1,))


def flipud(input):
    """Flip along dim 0 (up/down); the input needs at least 1 dim."""
    if input.ndim < 1:
        raise RuntimeError("flipud: input must be >= 1-d")
    return flip(input, (0,))


class Roll(Function):
    @staticmethod
    def forward(ctx, a, shifts, axes):
        ctx.shifts, ctx.axes = shifts, axes
        return xp_of(a).roll(a, shifts, axes)

    @staticmethod
    def backward(ctx, g):
        return xp_of(g).roll(g, tuple(-s for s in ctx.shifts) if isinstance(ctx.shifts, tuple)
                             else -ctx.shifts, ctx.axes)


def roll(input, shifts, dims=None):
    """Shift elements cyclically by ``shifts`` along ``dims`` (flattened when None)."""
    if dims is None:
        if not isinstance(shifts, int):
            if len(shifts) != 1:
                raise RuntimeError("roll: shifts must be one number when dims is not given")
            shifts = shifts[0]
        return Roll.apply(input, int(shifts), None)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(int(s) for s in shifts)
    dims = _dims(dims, input.ndim, "roll")
    if len(shifts) != len(dims):
        raise RuntimeError(f"roll: shifts and dimensions must align. shifts: {len(shifts)}, dims:{len(dims)}")
    return Roll.apply(input, shifts, dims)


def narrow(input, dim, start, length):
    """The slice ``start:start+length`` of ``dim`` (a view)."""
    from .indexing import getitem
    d = _dim(dim, input.ndim, "narrow")
    start = int(start)
    n = input.shape[d]
    if start < 0:
        start += n
    if not 0 <= start <= n or length < 0 or start + length > n:
        raise RuntimeError(f"narrow: start ({start}) + length ({length}) exceeds dimension size ({n}).")
    return getitem(input, (slice(None),) * d + (slice(start, start + length),))


class Diagonal(Function):
    @staticmethod
    def forward(ctx, a, offset, d1, d2):
        ctx.shape, ctx.args = a.shape, (offset, d1, d2)
        return xp_of(a).diagonal(a, offset, d1, d2).copy()

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        offset, d1, d2 = ctx.args
        gx = xp.zeros(ctx.shape, dtype=g.dtype)
        v = xp.moveaxis(gx, (d1, d2), (-2, -1))
        n = g.shape[-1]
        r = xp.arange(n) + _b.max(-offset, 0)
        c = xp.arange(n) + _b.max(offset, 0)
        v[..., r, c] = g
        return gx


def diagonal(input, offset=0, dim1=0, dim2=1):
    """The diagonal of the (dim1, dim2) matrices, appended as the last dim."""
    d1, d2 = _dims((dim1, dim2), input.ndim, "diagonal")
    if d1 == d2:
        raise RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}")
    return Diagonal.apply(input, int(offset), d1, d2)


class DiagEmbed(Function):
    """A 1-d tensor on the ``offset`` diagonal of a square matrix."""

    @staticmethod
    def forward(ctx, a, offset):
        xp = xp_of(a)
        n = a.shape[0] + _b.abs(offset)
        out = xp.zeros((n, n), dtype=a.dtype)
        r = xp.arange(a.shape[0]) + _b.max(-offset, 0)
        c = xp.arange(a.shape[0]) + _b.max(offset, 0)
        out[r, c] = a
        ctx.rc = (r, c)
        return out

    @staticmethod
    def backward(ctx, g):
        r, c = ctx.rc
        return g[r, c]


def diag(input, diagonal=0):
    """1-d input: a matrix with it on the ``diagonal``; 2-d input: that diagonal."""
    if input.ndim == 1:
        return DiagEmbed.apply(input, int(diagonal))
    if input.ndim == 2:
        return Diagonal.apply(input, int(diagonal), 0, 1)
    raise RuntimeError(f"diag(): Supports 1D or 2D tensors. Got {input.ndim}D")


def trace(input):
    """Sum of the main diagonal of a 2-d tensor."""
    from .reduction import sum as _sum
    if input.ndim != 2:
        raise RuntimeError(f"trace: expected a matrix, but got tensor with dim {input.ndim}")
    from ..amp.autocast_mode import composite_inputs
    input, = composite_inputs("trace", input)  # fp32 on PyTorch's CPU autocast list
    return _sum(diagonal(input))


class TakeAlong(Function):
    """``out = take(a, idx, axis)`` for an integer index array of any shape; backward
    scatter-adds (repeated indices sum)."""

    @staticmethod
    def forward(ctx, a, idx, axis):
        ctx.shape, ctx.idx, ctx.axis = a.shape, idx, axis
        return xp_of(a).take(a, idx, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        ax, idx = ctx.axis, ctx.idx
        k = idx.ndim
        gm = xp.moveaxis(g, tuple(range(ax, ax + k)), tuple(range(k)))
        gm = gm.reshape((idx.size,) + gm.shape[k:])
        acc = xp.zeros((ctx.shape[ax],) + gm.shape[1:], dtype=g.dtype)
        index_add_rows(xp, acc, idx.reshape(-1), gm)
        return xp.moveaxis(acc, 0, ax)


def _index_array(index, xp):
    arr = index._data if isinstance(index, Tensor) else xp.asarray(index)
    if arr.dtype.kind not in "iu":
        raise IndexError(f"tensors used as indices must be long, int, byte or bool tensors, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def index_select(input, dim, index):
    """The entries ``index`` (a 1-d integer tensor) of ``dim``."""
    d = _dim(dim, input.ndim, "index_select")
    xp = xp_of(input._data)
    idx = _index_array(index, xp)
    if idx.ndim > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    n = input.shape[d] if input.ndim else 1
    if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"index out of range in self (dim {d} has size {n})")
    if input.ndim == 0:
        from .shape import reshape
        return reshape(TakeAlong.apply(reshape(input, (1,)), idx.reshape(-1) % 1, 0), idx.shape)
    return TakeAlong.apply(input, idx.reshape(-1) % n, d)


def unfold(input, dimension, size, step):
    """All slices of ``size`` elements along ``dimension`` every ``step`` (Tensor.unfold):
    the slice index replaces ``dimension`` and a new last dim of ``size`` is added."""
    from .shape import permute
    d = _dim(dimension, input.ndim, "unfold")
    L = input.shape[d] if input.ndim else 1
    if size > L:
        raise RuntimeError(f"maximum size for tensor at dimension {d} is {L} but size is {size}")
    if step <= 0:
        raise RuntimeError(f"step is {step} but must be > 0")
    xp = xp_of(input._data)
    idx = xp.arange(0, L - size + 1, step)[:, None] + xp.arange(size)[None, :]
    out = TakeAlong.apply(input, idx, d)           # (..., n, size, ...)
    order = list(range(out.ndim))
    order.append(order.pop(d + 1))
    return permute(out, tuple(order))


def repeat_interleave(input, repeats=None, dim=None, output_size=None):
    """Repeat each element ``repeats`` times (an int or a 1-d tensor of counts) along
    ``dim`` (the flattened input when None). With only a count tensor: indices repeated."""
    from .shape import reshape
    if repeats is None:  # repeat_interleave(counts): arange(len) repeated by counts
        counts = input._data
        xp = xp_of(counts)
        return Tensor._make(xp.repeat(xp.arange(counts.shape[0], dtype=np.int64), counts))
    if dim is None:
        input = reshape(input, (-1,))
        d = 0
    else:
        d = _dim(dim, input.ndim, "repeat_interleave")
    xp = xp_of(input._data)
    n = input.shape[d]
    reps = repeats._data if isinstance(repeats, Tensor) else repeats
    if not isinstance(reps, int):
        reps = xp.asarray(reps).reshape(-1)
        if reps.size == 1:
            reps = int(reps[0])
        elif reps.shape[0] != n:
            raise RuntimeError(f"repeats must have the same size as input along dim, but got "
                               f"repeats.size(0) = {reps.shape[0]} and input.size({d}) = {n}")
    if isinstance(reps, int) and reps < 0 or not isinstance(reps, int) and bool((reps < 0).any()):
        raise RuntimeError("repeats can not be negative")
    idx = xp.repeat(xp.arange(n, dtype=np.int64), reps)
    return TakeAlong.apply(input, idx, d)


def masked_select(input, mask):
    """The elements of ``input`` where the bool ``mask`` is True (broadcast), as 1-d."""
    from .indexing import getitem
    from .shape import expand
    m = mask._data if isinstance(mask, Tensor) else np.asarray(mask)
    if m.dtype != np.bool_:
        raise RuntimeError(f"masked_select: expected BoolTensor for mask, got {m.dtype}")
    shape = np.broadcast_shapes(tuple(input.shape), tuple(m.shape))
    x = expand(input, shape) if tuple(input.shape) != shape else input
    m = xp_of(m).broadcast_to(m, shape)
    return getitem(x, Tensor._make(m))


def movedim(input, source, destination):
    """Move dims ``source`` to positions ``destination`` (ints or sequences); the others keep order."""
    from .shape import permute
    n = input.ndim
    src = _dims(source, n, "movedim")
    dst = _dims(destination, n, "movedim")
    if len(src) != len(dst):
        raise RuntimeError(f"movedim: Invalid source or destination dims: source ({list(src)} dims) "
                           f"should contain the same number of dims as destination ({list(dst)} dims)")
    order = [i for i in range(n) if i not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return permute(input, tuple(order))


moveaxis = movedim


def swapaxes(input, axis0, axis1):
    """``transpose(input, axis0, axis1)`` (numpy's name)."""
    from .shape import transpose
    return transpose(input, axis0, axis1)


swapdims = swapaxes


def tile(input, dims):
    """Repeat the whole tensor ``dims`` times per dim (leading ones added as needed)."""
    from .tensor_methods import repeat
    dims = tuple(dims) if not isinstance(dims, int) else (dims,)
    if len(dims) < input.ndim:
        dims = (1,) * (input.ndim - len(dims)) + dims
    return repeat(input, dims)


def _atleast(t, n):
    from .shape import reshape
    if t.ndim >= n:
        return t
    if n == 2:
        return reshape(t, (1,) * (2 - t.ndim) + tuple(t.shape))
    if t.ndim == 0:
        return reshape(t, (1, 1, 1))
    if t.ndim == 1:
        return reshape(t, (1, t.shape[0], 1))
    return reshape(t, tuple(t.shape) + (1,))


def atleast_1d(input):
    """The input with at least 1 dim."""
    from .shape import reshape
    return reshape(input, (1,)) if input.ndim == 0 else input


def atleast_2d(input):
    """The input with at least 2 dims (new dims in front)."""
    return _atleast(input, 2)


def atleast_3d(input):
    """The input with at least 3 dims (numpy's placement)."""
    return _atleast(input, 3)


def hstack(tensors):
    """Concatenate column-wise (dim 1; dim 0 for 1-d tensors)."""
    from .shape import cat
    ts = [atleast_1d(t) for t in tensors]
    return cat(ts, 0 if ts[0].ndim == 1 else 1)


def vstack(tensors):
    """Concatenate row-wise after making every tensor at least 2-d."""
    from .shape import cat
    return cat([atleast_2d(t) for t in tensors], 0)


row_stack = vstack


def dstack(tensors):
    """Concatenate depth-wise (dim 2) after making every tensor at least 3-d."""
    from .shape import cat
    return cat([atleast_3d(t) for t in tensors], 2)


def column_stack(tensors):
    """Stack 1-d tensors as columns (others concatenated along dim 1)."""
    from .shape import cat, reshape
    ts = [reshape(t, (-1, 1)) if t.ndim <= 1 else t for t in tensors]
    return cat(ts, 1)


def unbind(input, dim=0):
    """The slices along ``dim``, as a tuple of tensors without that dim."""
    from .indexing import getitem
    d = _dim(dim, input.ndim, "unbind")
    return tuple(getitem(input, (slice(None),) * d + (i,)) for i in range(input.shape[d]))


def take_along_dim(input, indices, dim=None):
    """``gather`` with broadcasting of the indices (numpy's take_along_axis)."""
    from .indexing import gather
    from .shape import reshape, expand
    if dim is None:
        return gather(reshape(input, (-1,)), 0, reshape(indices, (-1,)))
    d = _dim(dim, input.ndim, "take_along_dim")
    shape = list(np.broadcast_shapes(tuple(s for i, s in enumerate(input.shape) if i != d),
                                     tuple(s for i, s in enumerate(indices.shape) if i != d)))
    ishape = shape.copy()
    ishape.insert(d, indices.shape[d])
    xshape = shape.copy()
    xshape.insert(d, input.shape[d])
    return gather(expand(input, tuple(xshape)), d, expand(indices, tuple(ishape)))


class Scatter(Function):
    """``self`` with ``src`` written (``reduce=None``) or added (``'add'``) at ``index``
    along ``dim``."""

    @staticmethod
    def forward(ctx, a, index, src, axis, reduce):
        xp = xp_of(a)
        out = a.copy()
        ctx.index, ctx.axis, ctx.reduce = index, axis, reduce
        src_arr = src if hasattr(src, "shape") else xp.full(index.shape, src, dtype=a.dtype)
        src_arr = src_arr[tuple(slice(0, s) for s in index.shape)] if src_arr.shape != index.shape else src_arr
        ctx.src_shape = getattr(src, "shape", None)
        grid = along_axis_grid(xp, index, axis)
        if reduce is None:
            out[grid] = src_arr
        elif reduce == "add":
            flat = xp.ravel_multi_index(xp.broadcast_arrays(*grid), a.shape).reshape(-1)
            index_add_rows(xp, out.reshape(-1), flat, src_arr.reshape(-1).astype(a.dtype, copy=False))
        elif reduce == "multiply":
            ufunc_at("multiply", out, grid, src_arr)
        else:
            raise RuntimeError(f"reduce argument must be either add or multiply, got {reduce}")
        ctx.grid = grid
        return out

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        ga, written = written_grads(g, ctx.grid, na[0],
                                    len(na) > 2 and na[2] and ctx.src_shape is not None,
                                    overwritten=ctx.reduce is None)
        gs = None
        if written is not None:   # src may be larger than index: zeros past its end
            gs = xp_of(g).zeros(ctx.src_shape, dtype=g.dtype)
            gs[tuple(slice(0, s) for s in ctx.index.shape)] = written
        return ga, None, gs


def _scatter(input, dim, index, src, reduce, op):
    d = _dim(dim, input.ndim, op)
    idx = _index_array(index, xp_of(input._data))
    if idx.ndim != input.ndim:
        raise RuntimeError(f"{op}(): Index tensor must have the same number of dimensions as self tensor")
    n = input.shape[d]
    if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise RuntimeError(f"{op}(): index {int(idx.max())} is out of bounds for dimension {d} with size {n}")
    if isinstance(src, Tensor) and src.dtype != input.dtype:
        raise RuntimeError(f"{op}(): Expected self.dtype to be equal to src.dtype")
    return Scatter.apply(input, idx % n, src, d, reduce)


def scatter(input, dim, index, src=None, value=None, reduce=None):
    """A copy of ``input`` with ``src`` (a tensor or number) written at ``index`` along ``dim``."""
    if src is None:
        src = value
    return _scatter(input, dim, index, src, reduce, "scatter")


def scatter_add(input, dim, index, src):
    """A copy of ``input`` with ``src`` added at ``index`` along ``dim`` (repeats sum)."""
    return _scatter(input, dim, index, src, "add", "scatter_add")


def index_add(input, dim, index, source, alpha=1):
    """A copy of ``input`` with ``alpha * source`` added at the entries ``index`` of ``dim``."""
    from .elementwise import mul
    from .shape import reshape, expand
    d = _dim(dim, input.ndim, "index_add")
    idx = _index_array(index, xp_of(input._data)).reshape(-1)
    src = mul(source, alpha) if alpha != 1 else source
    shape = [1] * input.ndim
    shape[d] = idx.shape[0]
    full = list(src.shape)
    ix = Tensor._make(xp_of(idx).broadcast_to(idx.reshape(shape), tuple(full)).copy())
    return scatter_add(input, d, ix, src)


def index_fill(input, dim, index, value):
    """A copy of ``input`` with the entries ``index`` of ``dim`` set to ``value``."""
    from .indexing import index_put
    d = _dim(dim, input.ndim, "index_fill")
    idx = _index_array(index, xp_of(input._data)).reshape(-1)
    v = value.item() if isinstance(value, Tensor) else value
    return index_put(input, (slice(None),) * d + (Tensor._make(idx),), v)


def index_copy(input, dim, index, source):
    """A copy of ``input`` with ``source``'s slices written at the entries ``index`` of ``dim``."""
    from .indexing import index_put
    d = _dim(dim, input.ndim, "index_copy")
    from ..amp.autocast_mode import composite_inputs
    input, source = composite_inputs("index_copy", input, source)  # PyTorch's promote list
    idx = _index_array(index, xp_of(input._data)).reshape(-1)
    return index_put(input, (slice(None),) * d + (Tensor._make(idx),), source)


def meshgrid(*tensors, indexing="ij"):
    """Coordinate grids of 1-d tensors (``indexing`` 'ij', PyTorch's default, or 'xy')."""
    from .shape import reshape, expand
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise ValueError(f"torch.meshgrid: indexing must be one of \"xy\" or \"ij\", but received: {indexing}")
    n = len(tensors)
    sizes = [t.numel() for t in tensors]
    if indexing == "xy" and n >= 2:
        sizes[0], sizes[1] = sizes[1], sizes[0]
    out = []
    for i, t in enumerate(tensors):
        pos = i
        if indexing == "xy" and n >= 2 and i < 2:
            pos = 1 - i
        shape = [1] * n
        shape[pos] = t.numel()
        out.append(expand(reshape(t, tuple(shape)), tuple(sizes)))
    return tuple(out)


def tensor_split(input, indices_or_sections, dim=0):
    """Split into ``n`` nearly equal parts, or at the given indices, along ``dim``."""
    d = _dim(dim, input.ndim, "tensor_split")
    n = input.shape[d]
    if isinstance(indices_or_sections, int):
        k = indices_or_sections
        q, r = divmod(n, k)
        cuts, pos = [], 0
        for i in range(k - 1):
            pos += q + (1 if i < r else 0)
            cuts.append(pos)
    else:
        cuts = [int(c) for c in indices_or_sections]
    bounds = [0] + cuts + [n]
    return tuple(narrow(input, d, _b.min(a, n), _b.max(_b.min(b, n) - _b.min(a, n), 0))
                 for a, b in zip(bounds[:-1], bounds[1:]))
