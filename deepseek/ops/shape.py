"""Views and shape ops: reshape permute transpose expand squeeze unsqueeze flatten
cat stack split chunk, plus cast, device moves, contiguous and clone."""
import numpy as np

from .. import native as _native
from ..autograd.function import Function
from ..backend import get_array_module, to_device as _move, device_of
from .._tensor import Tensor
from ._util import xp_of


def _resolve_shape(shape, numel, op="reshape"):
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise RuntimeError(f"{op}: only one dimension can be inferred, got shape {list(shape)}")
    if -1 in shape:
        known = 1
        for s in shape:
            if s != -1:
                known *= s
        if known == 0 or numel % known:
            raise RuntimeError(f"{op}: shape {list(shape)} is invalid for input of size {numel}")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    n = 1
    for s in shape:
        if s < 0:
            raise RuntimeError(f"{op}: invalid negative dimension {s} in shape {list(shape)}")
        n *= s
    if n != numel:
        raise RuntimeError(f"{op}: shape {list(shape)} is invalid for input of size {numel}")
    return shape


class Reshape(Function):
    is_view = True

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Permute(Function):
    is_view = True

    @staticmethod
    def forward(ctx, a, dims):
        ctx.inv = tuple(np.argsort(dims))
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(ctx.inv)


class Expand(Function):
    is_view = True

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return xp_of(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        from ._util import unbroadcast
        return unbroadcast(g, ctx.shape)


class Cat(Function):
    @staticmethod
    def forward(ctx, axis, *arrays):
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        return xp_of(*arrays).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        splits = np.cumsum(ctx.sizes)[:-1]
        return (None,) + tuple(xp.split(g, splits, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, axis, *arrays):
        ctx.axis = axis
        return xp_of(*arrays).stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        n = g.shape[ctx.axis]
        return (None,) + tuple(xp.take(g, i, axis=ctx.axis) for i in range(n))


class Split(Function):
    is_view = True

    @staticmethod
    def forward(ctx, a, sections, axis):
        xp = xp_of(a)
        ctx.axis, ctx.shape = axis, a.shape
        outs = tuple(xp.split(a, np.cumsum(sections)[:-1], axis=axis))
        ctx.out_shapes = [o.shape for o in outs]
        return outs

    @staticmethod
    def backward(ctx, *gs):
        return xp_of(gs[0]).concatenate(gs, axis=ctx.axis)


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.src = a.dtype
        return _astype(a, dtype)

    @staticmethod
    def backward(ctx, g):
        return _astype(g, ctx.src)


# fp32 <-> fp16/bf16 conversions run in the native kernels (one pass, exact rounding)
_NATIVE_CASTS = {("float32", "float16"), ("float16", "float32"),
                 ("float32", "bfloat16"), ("bfloat16", "float32")}


def _astype(a, dtype):
    """Dtype conversion (always a new array)."""
    if a.dtype == dtype:
        return a.copy()
    if (a.dtype.name, dtype.name) in _NATIVE_CASTS and isinstance(a, np.ndarray) \
            and a.flags.c_contiguous and _native.available():
        return _native.cast(a.reshape(-1), dtype).reshape(a.shape)
    return a.astype(dtype)


class ToDevice(Function):
    @staticmethod
    def forward(ctx, a, device):
        ctx.src = device_of(a)
        return _move(a, device)

    @staticmethod
    def backward(ctx, g):
        return _move(g, ctx.src)


class Contiguous(Function):
    is_view = True

    @staticmethod
    def forward(ctx, a):
        return get_array_module(a).ascontiguousarray(a)

    @staticmethod
    def backward(ctx, g):
        return g


class Clone(Function):
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return g


# ---- functional wrappers ------------------------------------------------------------
def _dims_arg(args):
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def _wrap(d, n, op):
    if not -n <= d < n:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of "
                         f"[{-n}, {n - 1}], but got {d})")
    return d % n


def reshape(a, *shape):
    """The same elements in a new shape (one dim may be -1); a view when possible."""
    shape = _resolve_shape(_dims_arg(shape), a.numel())
    if shape == a.shape:
        return a
    return Reshape.apply(a, shape=shape)


def view(a, *shape):
    """Like reshape, but the result must share memory (as PyTorch's view)."""
    shape = _resolve_shape(_dims_arg(shape), a.numel(), "view")
    out = Reshape.apply(a, shape=shape)
    if isinstance(a._data, np.ndarray) and a.numel() and not np.may_share_memory(out._data, a._data):
        raise RuntimeError(f"view size is not compatible with input tensor's size and stride "
                           f"(shape {tuple(a.shape)} -> {list(shape)}); use .reshape(...) instead")
    return out


def permute(a, *dims):
    """A view with the dims reordered as ``dims``."""
    dims = _dims_arg(dims)
    if len(dims) != a.ndim:
        raise RuntimeError(f"permute: number of dims don't match: tensor has {a.ndim} dims, "
                           f"got {len(dims)} ({list(dims)})")
    dims = tuple(_wrap(d, a.ndim, "permute") for d in dims)
    if sorted(dims) != list(range(a.ndim)):
        raise RuntimeError(f"permute: repeated dim in {list(dims)}")
    return Permute.apply(a, dims=dims)


def transpose(a, dim0, dim1):
    """A view with dims ``dim0`` and ``dim1`` swapped."""
    n = a.ndim
    if n == 0:
        return a
    d0, d1 = _wrap(dim0, n, "transpose"), _wrap(dim1, n, "transpose")
    dims = list(range(n))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return Permute.apply(a, dims=tuple(dims))


def t(a):
    """Transpose of a matrix (tensors of fewer than two dims unchanged); a view."""
    if a.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, got {a.ndim}")
    return transpose(a, 0, 1) if a.ndim == 2 else a


def expand(a, *shape):
    """A broadcast view of ``shape`` (-1 keeps a dim; new leading dims allowed)."""
    shape = _dims_arg(shape)
    if len(shape) < a.ndim:
        raise RuntimeError(f"expand: the number of sizes provided ({len(shape)}) must be greater "
                           f"or equal to the number of dimensions in the tensor ({a.ndim})")
    lead = len(shape) - a.ndim
    full = []
    for i, s in enumerate(shape):
        src = a.shape[i - lead] if i >= lead else 1
        if s == -1:
            if i < lead:
                raise RuntimeError("expand: -1 is not allowed in a leading, non-existing dimension")
            s = src
        if src != 1 and src != s:
            raise RuntimeError(f"expand: the expanded size of the tensor ({s}) must match the "
                               f"existing size ({src}) at non-singleton dimension {i}; target "
                               f"sizes {list(shape)}, tensor sizes {list(a.shape)}")
        full.append(s)
    full = tuple(full)
    if full == tuple(a.shape):
        return a
    return Expand.apply(a, shape=full)


def expand_as(a, other):
    """``a.expand(other.shape)``."""
    return expand(a, other.shape)


def broadcast_to(a, shape):
    """``expand`` to ``shape`` (numpy's name)."""
    return expand(a, shape)


def squeeze(a, dim=None):
    """Drop size-1 dims (all, or ``dim`` when it has size 1); a view."""
    if dim is None:
        shape = tuple(s for s in a.shape if s != 1)
    else:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        dims = {_wrap(d, max(a.ndim, 1), "squeeze") for d in dims}
        shape = tuple(s for i, s in enumerate(a.shape) if not (i in dims and s == 1))
    return Reshape.apply(a, shape=shape) if shape != tuple(a.shape) else a


def unsqueeze(a, dim):
    """Insert a size-1 dim at ``dim``; a view."""
    d = _wrap(dim, a.ndim + 1, "unsqueeze")
    shape = tuple(a.shape[:d]) + (1,) + tuple(a.shape[d:])
    return Reshape.apply(a, shape=shape)


def flatten(a, start_dim=0, end_dim=-1):
    """Merge dims ``start_dim`` .. ``end_dim`` into one; a 0-d tensor becomes 1-d."""
    if a.ndim == 0:
        return reshape(a, 1)
    s = _wrap(start_dim, a.ndim, "flatten")
    e = _wrap(end_dim, a.ndim, "flatten")
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    n = 1
    for x in a.shape[s:e + 1]:
        n *= x
    return reshape(a, tuple(a.shape[:s]) + (n,) + tuple(a.shape[e + 1:]))


def unflatten(a, dim, sizes):
    """Split dim ``dim`` into ``sizes``."""
    d = _wrap(dim, a.ndim, "unflatten")
    return reshape(a, tuple(a.shape[:d]) + tuple(sizes) + tuple(a.shape[d + 1:]))


def _same_kind(tensors, op):
    from ._util import prepare_binary  # noqa: F401
    from .. import dtypes as dt
    if not tensors:
        raise RuntimeError(f"{op}: expected a non-empty list of Tensors")
    for i, x in enumerate(tensors):
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: expected a sequence of Tensors, got {type(x).__name__} at index {i}")
    rt = tensors[0].dtype
    for x in tensors[1:]:
        rt = dt.promote_types(rt, x.dtype)
    return [cast(x, rt) if x.dtype != rt else x for x in tensors]


def cat(tensors, dim=0):
    """Concatenate along an existing dim; shapes must match elsewhere."""
    tensors = _same_kind(list(tensors), "cat")
    # PyTorch legacy: 1-D empty tensors are skipped
    nonempty = [x for x in tensors if not (x.ndim == 1 and x.shape[0] == 0)] or tensors[:1]
    ref = nonempty[0]
    d = _wrap(dim, max(ref.ndim, 1), "cat")
    for i, x in enumerate(nonempty):
        if x.ndim != ref.ndim or any(x.shape[k] != ref.shape[k] for k in range(ref.ndim) if k != d):
            raise RuntimeError(f"cat: sizes of tensors must match except in dimension {d}: tensor 0 "
                               f"has shape {tuple(ref.shape)} but tensor {i} has shape {tuple(x.shape)}")
    return Cat.apply(d, *nonempty)


def stack(tensors, dim=0):
    """Stack equal-shaped tensors along a new dim."""
    tensors = _same_kind(list(tensors), "stack")
    ref = tensors[0]
    for i, x in enumerate(tensors):
        if x.shape != ref.shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got "
                               f"{tuple(ref.shape)} at entry 0 and {tuple(x.shape)} at entry {i}")
    d = _wrap(dim, ref.ndim + 1, "stack")
    return Stack.apply(d, *tensors)


def split(a, split_size_or_sections, dim=0):
    """Split into chunks of a given size (last may be smaller) or of listed sizes."""
    d = _wrap(dim, a.ndim, "split")
    n = a.shape[d]
    if isinstance(split_size_or_sections, int):
        s = split_size_or_sections
        if s <= 0:
            raise RuntimeError(f"split: split_size must be positive, got {s}")
        sections = [s] * (n // s) + ([n % s] if n % s else [])
        if not sections:
            sections = [0]
    else:
        sections = [int(x) for x in split_size_or_sections]
        if sum(sections) != n:
            raise RuntimeError(f"split: split_sizes {sections} must sum to the size of dim {d} ({n})")
    outs = Split.apply(a, sections=sections, axis=d)
    return outs if isinstance(outs, tuple) else (outs,)


def chunk(a, chunks, dim=0):
    """Split into ``chunks`` pieces of size ceil(n / chunks)."""
    if chunks <= 0:
        raise RuntimeError(f"chunk: number of chunks must be positive, got {chunks}")
    n = a.shape[_wrap(dim, a.ndim, "chunk")]
    size = -(-n // chunks) if n else 1
    return split(a, max(size, 1), dim)


def cast(a, dtype):
    """The tensor converted to ``dtype`` (the gradient flows back in the input dtype)."""
    from .. import dtypes as dt
    return Cast.apply(a, dtype=dt.as_dtype(dtype))


def to_device(a, device):
    """The tensor copied to ``device`` (the gradient flows back to the source)."""
    return ToDevice.apply(a, device=device)


def contiguous(a):
    """The tensor itself when C-contiguous, else a contiguous copy."""
    if a._data.flags.c_contiguous:
        return a
    return Contiguous.apply(a)


def clone(a):
    """A copy with its own memory; the gradient flows through."""
    return Clone.apply(a)
