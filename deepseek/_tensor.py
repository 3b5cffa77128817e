"""Tensor: one backend array (numpy or cupy) plus autograd bookkeeping.

Op methods (``x.sum()``, ``x @ y``, ``x.relu()`` ...) are attached by
``deepseek.ops`` so every op is defined once, next to its backward.
"""
import numpy as np

from . import dtypes as _dt
from .backend import device_of, get_array_module, to_device, writeable, Device
from .autograd.grad_mode import _state


class Tensor:
    """An n-dimensional array with optional gradient tracking (PyTorch semantics)."""

    __slots__ = ("_data", "requires_grad", "_grad", "grad_fn", "_out_nr", "_vc", "_acc",
                 "_hooks", "_post_hooks", "_grad_owned", "__dict__", "__weakref__")
    __array_priority__ = 1000  # numpy defers binary operators to us

    def __init__(self, data, dtype=None, device=None, requires_grad=False):
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        self._init(t._data, requires_grad)

    def _init(self, array, requires_grad=False):
        self._data = array
        self.requires_grad = requires_grad
        self._grad = None
        self.grad_fn = None
        self._out_nr = 0
        self._vc = [0]
        self._acc = None
        self._hooks = None
        self._post_hooks = None
        self._grad_owned = False

    @classmethod
    def _make(cls, array, requires_grad=False):
        """Wrap an existing backend array without copying or checking."""
        t = object.__new__(cls)
        t._data = array
        t.requires_grad = requires_grad
        t._grad = None
        t.grad_fn = None
        t._out_nr = 0
        t._vc = [0]
        t._acc = None
        t._hooks = None
        t._post_hooks = None
        t._grad_owned = False
        return t

    # ---- basic properties -------------------------------------------------------
    @property
    def shape(self):
        """The shape as a ``deepseek.Size`` (a tuple)."""
        return Size(self._data.shape)

    def size(self, dim=None):
        """Shape as a Size, or the length of one dimension."""
        if dim is None:
            return Size(self._data.shape)
        return self._data.shape[_wrap_dim(dim, self._data.ndim, "size")]

    @property
    def dtype(self):
        """The element dtype (a numpy dtype; ``deepseek.float32`` ...)."""
        return self._data.dtype

    @property
    def device(self):
        """The device the data lives on (``cpu`` or ``cuda:N``)."""
        return device_of(self._data)

    @property
    def is_cuda(self):
        """True when the data lives on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def ndim(self):
        """Number of dimensions."""
        return self._data.ndim

    def dim(self):
        """Number of dimensions (PyTorch's ``dim()``)."""
        return self._data.ndim

    def numel(self):
        """Number of elements."""
        return int(self._data.size)

    nelement = numel

    def element_size(self):
        """Size of one element in bytes."""
        return self._data.itemsize

    @property
    def is_leaf(self):
        """True for a tensor no op produced with grad (a leaf of the autograd graph)."""
        return self.grad_fn is None

    @property
    def array(self):
        """The raw backend array (numpy/cupy), shared, not copied."""
        return self._data

    @property
    def data(self):
        """A detached tensor sharing this tensor's storage (PyTorch's ``.data``)."""
        return self.detach()

    @data.setter
    def data(self, value):
        value = value._data if isinstance(value, Tensor) else value
        self._data = value
        self._vc[0] += 1

    @property
    def _version(self):
        """How many in-place writes the storage has seen (the version counter)."""
        return self._vc[0]

    def _bump_version(self):
        """Record an in-place write into the storage (saved-tensor checks see it)."""
        self._vc[0] += 1

    @property
    def grad(self):
        """The accumulated gradient (a Tensor), or None."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad must be a Tensor or None, got {type(value).__name__}")
            if value.shape != self.shape:
                raise RuntimeError(f"assigned grad has shape {tuple(value.shape)} but the tensor "
                                   f"has shape {tuple(self.shape)}")
        self._grad = value
        self._grad_owned = False

    def _accumulate_grad(self, g):
        """Add a raw gradient array into .grad, in place once we own the buffer."""
        cur = self._grad
        if cur is None:
            if not writeable(g) or not g.flags.c_contiguous:
                g = g.copy()  # broadcast views and strided results: give .grad its own memory
            self._grad = Tensor._make(g)
            self._grad_owned = False  # g may alias another buffer of backward
        elif self._grad_owned:
            cur._data += g
        else:
            # Write in place when .grad was handed to us (e.g. a DDP bucket view),
            # otherwise take ownership of a fresh sum.
            if getattr(cur, "_inplace_grad", False):
                cur._data += g
            else:
                self._grad = Tensor._make(cur._data + g)
                self._grad_owned = True

    # ---- conversion ----------------------------------------------------------
    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be converted "
                               "to a Python scalar")
        return self._data.reshape(()).item()

    def tolist(self):
        """The data as (nested) Python lists of numbers, copied to the CPU."""
        return to_device(self._data, "cpu").tolist()

    def numpy(self):
        """The CPU numpy array behind this tensor (shared, not copied)."""
        if self.requires_grad and _state.enabled:
            raise RuntimeError("Can't call numpy() on a Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        if self.device.type != "cpu":
            raise TypeError(f"can't convert {self.device} tensor to numpy: call .cpu() first")
        return self._data

    def __array__(self, dtype=None, copy=None):
        a = to_device(self._data, "cpu")
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)  # a cast is a fresh array already
        if copy:  # numpy 2's protocol: np.array(t, copy=True) must not share memory
            return a.copy()
        return a

    def to(self, *args, **kwargs):
        """Move and/or cast: ``to(device)``, ``to(dtype)``, ``to(device, dtype)``, ``to(other)``."""
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        kwargs.pop("non_blocking", None)
        copy = kwargs.pop("copy", False)
        if kwargs:
            raise TypeError(f"to() got unexpected arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, Device) or (isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "gpu")):
                device = a
            else:
                dtype = a
        out = self
        if dtype is not None:
            dtype = _dt.as_dtype(dtype)
            if dtype != self.dtype:
                out = _ops().cast(out, dtype)
        if device is not None and Device(device) != out.device:
            out = _ops().to_device(out, Device(device))
        if copy and out is self:
            out = self.clone()
        return out

    def cpu(self):
        """The tensor on the CPU (itself when already there)."""
        return self.to("cpu")

    def cuda(self, device=None):
        """The tensor on CUDA device ``device`` (the current one by default)."""
        return self.to("cuda" if device is None else f"cuda:{device}")

    def float(self):
        """``self.to(float32)``."""
        return self.to(_dt.float32)

    def double(self):
        """``self.to(float64)``."""
        return self.to(_dt.float64)

    def half(self):
        """``self.to(float16)``."""
        return self.to(_dt.float16)

    def bfloat16(self):
        """``self.to(bfloat16)``."""
        return self.to(_dt.bfloat16)

    def int(self):
        """``self.to(int32)``."""
        return self.to(_dt.int32)

    def long(self):
        """``self.to(int64)``."""
        return self.to(_dt.int64)

    def bool(self):
        """``self.to(bool)``."""
        return self.to(_dt.bool_)

    def type(self, dtype=None):
        """The dtype as a string (no argument), or ``self.to(dtype)``."""
        if dtype is None:
            return f"deepseek.{self.dtype.name}"
        return self.to(dtype)

    def type_as(self, other):
        """``self.to(other.dtype)``."""
        return self.to(other.dtype)

    def is_floating_point(self):
        """True for a floating dtype (float16, bfloat16, float32, float64)."""
        return _dt.is_floating(self.dtype)

    # ---- autograd ------------------------------------------------------------
    def detach(self):
        """A tensor sharing storage (and version counter) with no graph."""
        t = Tensor._make(self._data)
        t._vc = self._vc
        return t

    def detach_(self):
        """Detach in place: drop grad_fn and requires_grad; returns self."""
        self.grad_fn = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad=True):
        """Set requires_grad (leaves of floating dtype only); returns self."""
        if self.grad_fn is not None and not requires_grad:
            raise RuntimeError("you can only change requires_grad flags of leaf variables")
        if requires_grad and not _dt.is_floating(self.dtype):
            raise RuntimeError(f"only tensors of floating point dtype can require gradients, "
                               f"got {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self):
        """Keep .grad on a non-leaf tensor after backward."""
        if self.grad_fn is None:
            return
        if getattr(self, "_retains_grad", False):
            return
        self._retains_grad = True

        def _store(g, self=self):
            self._accumulate_grad(g._data.copy())  # g flows on: don't alias it
        self.register_hook(_store)

    def register_hook(self, hook):
        """Call ``hook(grad)`` when this tensor's gradient is computed; it may return a new grad."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is None:
            if self._hooks is None:
                self._hooks = []
            lst = self._hooks
        else:
            node = self.grad_fn
            if node.out_hooks is None:
                node.out_hooks = {}
            lst = node.out_hooks.setdefault(self._out_nr, [])
        lst.append(hook)
        return _RemovableHandle(lst, hook)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` right after this leaf's .grad was accumulated in backward."""
        if self.grad_fn is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        if self._post_hooks is None:
            self._post_hooks = []
        self._post_hooks.append(hook)
        return _RemovableHandle(self._post_hooks, hook)

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        from .autograd import backward
        backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs)

    # ---- in-place --------------------------------------------------------------
    def _check_inplace(self):
        if self.requires_grad and self.grad_fn is None and _state.enabled:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                               "operation. Wrap it in `with deepseek.no_grad():` or clone() it.")

    def _assign_result(self, result):
        """Make ``self`` hold ``result`` (an op output) after an in-place op."""
        self._check_inplace()
        if result._data.shape != self._data.shape:
            raise RuntimeError(f"output with shape {list(self._data.shape)} doesn't match the "
                               f"broadcast shape {list(result._data.shape)} of the in-place op")
        if result.grad_fn is not None:
            # In the graph: rebind to the result's storage instead of overwriting, so
            # arrays saved for backward (possibly our old storage) stay intact. Old
            # views keep the old storage; their saved-version checks stay valid too.
            self._data = result._data
            self.grad_fn = result.grad_fn
            self._out_nr = result._out_nr
            self.requires_grad = True
            self._vc = [self._vc[0] + 1]
            return self
        xp = get_array_module(self._data)
        xp.copyto(self._data, result._data, casting="unsafe")
        self._vc[0] += 1
        return self

    def zero_(self):
        """Fill with zeros in place; returns self."""
        self._check_inplace()
        self._data[...] = 0
        self._vc[0] += 1
        return self

    def fill_(self, value):
        """Fill with ``value`` in place; returns self."""
        self._check_inplace()
        self._data[...] = value._data if isinstance(value, Tensor) else value
        self._vc[0] += 1
        return self

    def copy_(self, src):
        """Copy ``src`` (broadcast, cast, moved across devices) into this tensor."""
        src_arr = src._data if isinstance(src, Tensor) else np.asarray(src)
        if isinstance(src, Tensor) and src.requires_grad and _state.enabled:
            res = _ops().expand(src.to(self.device), self.shape).to(self.dtype)
            if res.dtype == src.dtype:  # no cast copied it: don't share src's (or a broadcast) storage
                res = _ops().clone(res)
            return self._assign_result(res)
        self._check_inplace()
        src_arr = to_device(src_arr, self.device)
        xp = get_array_module(self._data)
        xp.copyto(self._data, xp.broadcast_to(src_arr, self._data.shape), casting="unsafe")
        self._vc[0] += 1
        return self

    def __setitem__(self, index, value):
        index = _ops().normalize_index(index)
        if isinstance(value, Tensor) and value.requires_grad and _state.enabled or \
                (self.requires_grad and self.grad_fn is not None and _state.enabled):
            self._assign_result(_ops().index_put(self, index, value))
            return
        self._check_inplace()
        self._data[index] = value._data if isinstance(value, Tensor) else value
        self._vc[0] += 1

    # ---- python protocol ---------------------------------------------------------
    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __bool__(self):
        if self._data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self._data.size} values is ambiguous")
        return bool(self._data.reshape(()).item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iu" or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    __hash__ = object.__hash__

    def __repr__(self):
        from ._tensor_str import tensor_repr  # PyTorch's print format
        return tensor_repr(self)

    def __reduce_ex__(self, protocol):
        # Tensors cross process boundaries (spawned data loaders, spawn_ranks) as arrays.
        return (_rebuild, (to_device(self._data, "cpu"), self.requires_grad, str(self.device)))


def _rebuild(array, requires_grad, device):
    return Tensor._make(to_device(array, device), requires_grad)


class Size(tuple):
    """Shape of a tensor: a tuple with ``numel()``."""

    def numel(self):
        n = 1
        for s in self:
            n *= s
        return n

    def __repr__(self):
        return f"deepseek.Size({list(self)})"


class _RemovableHandle:
    def __init__(self, lst, item):
        self._lst, self._item = lst, item

    def remove(self):
        if self._item in self._lst:
            self._lst.remove(self._item)


def _wrap_dim(dim, ndim, op="op"):
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{op}: dimension out of range (expected to be in range of "
                         f"[{-max(ndim, 1)}, {max(ndim, 1) - 1}], but got {dim})")
    return dim % ndim if ndim else 0


def _ops():
    from . import ops
    return ops


def _infer_dtype(data):
    """dtype torch.tensor would pick for nested Python data."""
    flat = data
    while isinstance(flat, (list, tuple)) and flat:
        flat = flat[0]
    if isinstance(flat, bool) or isinstance(flat, np.bool_):
        return _dt.bool_
    if isinstance(flat, (int, np.integer)):
        # any float anywhere makes it floating: let numpy decide the kind
        kind = np.asarray(data).dtype.kind
        return _dt.int64 if kind in "iu" else (_dt.bool_ if kind == "b" else _dt.get_default_dtype())
    return _dt.get_default_dtype()


def tensor(data, dtype=None, device=None, requires_grad=False):
    """Build a tensor from data (copies), PyTorch's ``torch.tensor``."""
    if isinstance(data, Tensor):
        arr = data._data.copy()
    elif hasattr(data, "__array_interface__") or hasattr(data, "__cuda_array_interface__"):
        xp = get_array_module(data)
        arr = xp.array(data, copy=True)
    else:
        if isinstance(data, (np.generic,)):
            arr = np.array(data)
        else:
            try:
                dt = _dt.as_dtype(dtype) if dtype is not None else _infer_dtype(data)
                arr = np.array(data, dtype=dt)
            except (ValueError, TypeError) as e:
                raise TypeError(f"could not build a tensor from {type(data).__name__}: {e}") from None
    if dtype is not None:
        dt = _dt.as_dtype(dtype)
        if arr.dtype != dt:
            arr = arr.astype(dt)
    if arr.dtype not in _SUPPORTED:
        if arr.dtype.kind in "U S O".split():
            raise TypeError(f"can't build a tensor from data of dtype {arr.dtype}")
        arr = arr.astype(_dt.float64 if arr.dtype.kind == "f" else _dt.int64)
    if device is not None:
        arr = to_device(arr, device)
    t = Tensor._make(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


_SUPPORTED = {_dt.float16, _dt.bfloat16, _dt.float32, _dt.float64, _dt.int8, _dt.uint8,
              _dt.int16, _dt.int32, _dt.int64, _dt.bool_}


def from_numpy(array):
    """A tensor sharing memory with a numpy (or cupy) array."""
    if not hasattr(array, "__array_interface__") and not hasattr(array, "__cuda_array_interface__"):
        raise TypeError(f"from_numpy expects a numpy array, got {type(array).__name__}")
    return Tensor._make(array)


def is_tensor(obj):
    return isinstance(obj, Tensor)


from .autograd import function as _function  # noqa: E402

_function.Tensor = Tensor
_function._install_fast_path()  # Function.apply in C when deepseek._native is built
from . import ops as _ops_module  # noqa: E402,F401  (attaches op methods to Tensor)
