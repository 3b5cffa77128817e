"""How a collated batch crosses from a loader worker into the main process: no pickle.

The worker lays the batch out in a shared-memory slot and sends only a small JSON
header over its pipe; the main process rebuilds the same structure around numpy
*views* of the slot (no copy). The header is a tree:

- an array:       ``{"a": [offset, dtype, shape, as_tensor]}`` (bytes at ``offset`` in
  the slot; ``as_tensor``: it was a deepseek Tensor and comes back as one)
- a list / tuple: ``{"l": [...]}`` / ``{"t": [...]}``
- a dict:         ``{"d": [[key, value], ...]}`` (keys are trees too: int keys survive)
- a namedtuple:   ``{"n": [module, qualname, [...]]}`` (rebuilt only if that name
  resolves to a tuple class with ``_fields``; else a plain tuple)
- bytes:          ``{"y": base64}``; a numpy scalar: ``{"s": [dtype, value]}``
- None, bool, int, float, str: themselves.

Anything else (an arbitrary object) is refused in the worker with a TypeError that
says so: the main process never unpickles what a worker sends.

Collating in place. While a worker fetches a batch, its slot is an :class:`Arena`:
``default_collate`` stacks each array straight into it (:func:`arena_empty`), and
:func:`layout` leaves an array it finds in the arena where it is, so a collated batch
is written once (by the stack) instead of twice (stack, then copy into the slot).
"""
import base64
import collections.abc
import json
import math
import mmap
import sys
import threading

import numpy as np

__all__ = ["layout", "write", "decode", "ALIGN", "Arena", "set_arena", "arena_empty"]

ALIGN = 64      # every array starts on a cache line (and any dtype's alignment)
_KINDS = "biufc"  # numeric and bool dtypes only: no objects, strings or datetimes


def _as_numpy(x):
    """(array, as_tensor) for an array-like leaf, else (None, False)."""
    from .._tensor import Tensor
    if isinstance(x, Tensor):
        data = x._data
        if not isinstance(data, np.ndarray):   # a device array made in a worker
            from ..backend import to_device
            data = to_device(data, "cpu")
        return data, True
    if isinstance(x, np.ndarray):
        return x, False
    return None, False


class Arena:
    """The slot a worker is filling, as an allocator: :meth:`empty` hands out aligned
    arrays inside it, one after the other (never freed: the arena lives for one batch)."""

    def __init__(self, buf, size):
        self.root = np.frombuffer(buf, np.uint8, count=size)
        self.addr = self.root.ctypes.data
        self.size, self.end = size, 0

    def empty(self, shape, dtype):
        """An uninitialized array in the slot, or None when it does not fit."""
        dtype = np.dtype(dtype)
        off = -(-self.end // ALIGN) * ALIGN
        nbytes = math.prod(shape) * dtype.itemsize
        if off + nbytes > self.size or dtype.kind not in _KINDS:
            return None
        self.end = off + nbytes
        return self.root[off:off + nbytes].view(dtype).reshape(shape)

    def offset_of(self, arr):
        """Where ``arr``'s bytes start in the slot, if they are all in the part handed
        out (and contiguous, so that one offset describes them); else None."""
        if not arr.flags.c_contiguous:
            return None
        off = arr.ctypes.data - self.addr
        return off if 0 <= off and off + arr.nbytes <= self.end else None

    def release(self):
        """Drop this arena's own view of the slot (the worker may then unmap it)."""
        self.root = None


_local = threading.local()


def set_arena(arena):
    """Make ``arena`` (or None) the one :func:`arena_empty` allocates from, in this thread."""
    _local.arena = arena


def arena_empty(shape, dtype):
    """An array in the slot being filled by this thread (a loader worker's), or None
    when there is none or it is full: the caller then allocates as usual."""
    arena = getattr(_local, "arena", None)
    return None if arena is None else arena.empty(shape, dtype)


def layout(batch, arena=None):
    """(header tree, arrays, nbytes): where each array of ``batch`` goes in a slot.

    ``arrays`` is a list of (offset, ndarray) to copy; ``nbytes`` the slot size needed.
    Arrays already in ``arena`` stay where they are (not listed); the others go after
    the arena's used part.
    """
    arrays = []
    end = [0 if arena is None else arena.end]
    tree = _walk(batch, arrays, end, arena)
    return tree, arrays, end[0]


def _walk(x, arrays, end, arena):
    # a module-level function, not a closure: a recursive closure is a reference cycle
    # that would keep the batch's arrays alive until the cyclic GC runs
    def walk(v):
        return _walk(v, arrays, end, arena)

    arr, as_tensor = _as_numpy(x)
    if arr is not None:
        if arr.dtype.kind not in _KINDS:
            raise TypeError(f"a batch from a DataLoader worker holds an array of dtype "
                            f"{arr.dtype}, which cannot go through shared memory (numeric "
                            "and bool dtypes only)")
        off = None if arena is None else arena.offset_of(arr)
        if off is None:
            off = -(-end[0] // ALIGN) * ALIGN
            end[0] = off + arr.nbytes
            arrays.append((off, arr))
        return {"a": [off, arr.dtype.str, list(arr.shape), as_tensor]}
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, float)) and type(x) in (int, float):
        return x
    if isinstance(x, np.generic):
        if x.dtype.kind not in _KINDS:
            raise TypeError(f"a batch from a DataLoader worker holds a numpy scalar of "
                            f"dtype {x.dtype}")
        v = x.item()
        return {"s": [x.dtype.str, [v.real, v.imag] if isinstance(v, complex) else v]}
    if isinstance(x, bytes):
        return {"y": base64.b64encode(x).decode("ascii")}
    if isinstance(x, collections.abc.Mapping):
        return {"d": [[walk(k), walk(v)] for k, v in x.items()]}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        t = type(x)
        return {"n": [t.__module__, t.__qualname__, [walk(v) for v in x]]}
    if isinstance(x, tuple):
        return {"t": [walk(v) for v in x]}
    if isinstance(x, list):
        return {"l": [walk(v) for v in x]}
    raise TypeError(f"a batch from a DataLoader worker holds a {type(x).__name__}, which "
                    "cannot cross to the main process without pickling: return arrays, "
                    "tensors, numbers, strings, bytes, lists, tuples or dicts of them "
                    "(or load in the main process: num_workers=0)")


def write(buf, arrays):
    """Copy each (offset, array) of :func:`layout` into ``buf`` (a writable buffer)."""
    for off, arr in arrays:
        if arr.nbytes:
            dst = np.ndarray(arr.shape, arr.dtype, buffer=buf, offset=off)
            np.copyto(dst, arr, casting="no")


def encode_header(tree, nbytes):
    return json.dumps({"tree": tree, "nbytes": nbytes}, separators=(",", ":")).encode()


def decode(tree, buf, nbytes):
    """The batch described by ``tree``, its arrays as views of ``buf`` (no copy).

    Returns (batch, owner): ``owner`` is the one object every view keeps alive (a
    memoryview numpy made of ``buf``); when it is garbage collected no view of the slot
    is left (None when the batch has no arrays).
    """
    root = np.frombuffer(buf, np.uint8, count=nbytes) if nbytes else None
    batch = _build(tree, root, nbytes)
    return batch, (root.base if root is not None else None)


def _build(x, root, nbytes):
    # not a closure, for the reason given in _walk: the views must die with the batch
    from .._tensor import Tensor

    def build(v):
        return _build(v, root, nbytes)

    if isinstance(x, dict):
        (tag, v), = x.items()
        if tag == "a":
            off, dt, shape, as_tensor = v
            dtype = np.dtype(dt)
            if dtype.kind not in _KINDS:
                raise ValueError(f"bad dtype {dt} in a worker's batch header")
            count = math.prod(shape)
            if root is None or off < 0 or off + count * dtype.itemsize > nbytes:
                raise ValueError("a worker's batch header points outside its slot")
            arr = root[off:off + count * dtype.itemsize].view(dtype).reshape(shape)
            return Tensor._make(arr) if as_tensor else arr
        if tag == "l":
            return [build(e) for e in v]
        if tag == "t":
            return tuple(build(e) for e in v)
        if tag == "d":
            return {_hashable(build(k)): build(e) for k, e in v}
        if tag == "n":
            mod, qual, fields = v
            cls = _namedtuple_class(mod, qual)
            vals = [build(e) for e in fields]
            return cls(*vals) if cls is not None else tuple(vals)
        if tag == "y":
            return base64.b64decode(v)
        if tag == "s":
            dtype = np.dtype(v[0])
            if dtype.kind not in _KINDS:
                raise ValueError(f"bad dtype {v[0]} in a worker's batch header")
            val = complex(*v[1]) if dtype.kind == "c" else v[1]
            return dtype.type(val)
        raise ValueError(f"unknown tag {tag!r} in a worker's batch header")
    return x


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def _namedtuple_class(module, qualname):
    """The namedtuple class a worker named, if it is one of a module already imported
    here (nothing is imported on a worker's say-so)."""
    obj = sys.modules.get(module)
    if obj is None:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
        return obj
    return None


def page_round(n):
    return max(mmap.PAGESIZE, -(-int(n) // mmap.PAGESIZE) * mmap.PAGESIZE)
