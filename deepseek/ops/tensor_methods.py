"""Building Tensor methods from the op table, and the few methods that are not ops.

``method_from`` copies an op function under a method name (same code object: a
method call costs exactly what the function call costs, and ``help``/``inspect``
see the real signature and docstring). ``reflected_from`` and ``inplace_from`` make
``__radd__``-style and ``add_``-style methods around an op. The functions defined
below are Tensor methods that compose ops (``repeat``, ``view_as``) or fill in place
(``normal_``); the table lists them too, by name.
"""
import functools
import types

from .._tensor import Tensor
from ._util import as_tensor_operand


def method_from(fn, name, doc=None):
    """``fn`` as the method ``Tensor.<name>`` (a copy of the function, no wrapper)."""
    m = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    m.__kwdefaults__ = fn.__kwdefaults__
    m.__dict__.update(fn.__dict__)
    m.__module__ = fn.__module__
    m.__qualname__ = f"Tensor.{name}"
    m.__doc__ = fn.__doc__ or doc
    return m


def reflected_from(fn, name):
    """The reflected operator ``Tensor.<name>(self, other) = fn(other, self)``."""
    def method(self, other):
        return fn(as_tensor_operand(other), self)
    method.__name__, method.__qualname__ = name, f"Tensor.{name}"
    method.__module__ = fn.__module__
    method.__doc__ = f"Reflected operator: ``{fn.__name__}(other, self)`` (``other`` is not a Tensor)."
    return method


def inplace_from(fn, name):
    """The in-place method ``Tensor.<name>``: ``self`` takes ``fn(self, ...)`` (same shape).

    Checks what PyTorch checks (a leaf requiring grad can't be written; the result must
    keep self's shape) and bumps the version counter, so a saved tensor that is
    overwritten is reported at backward."""
    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        return self._assign_result(fn(self, *args, **kwargs))
    method.__name__, method.__qualname__ = name, f"Tensor.{name}"
    method.__doc__ = (f"In-place ``{fn.__name__}``: ``self`` takes the result of "
                      f"``{fn.__name__}(self, ...)``, which must have self's shape.\n\n"
                      + (fn.__doc__ or ""))
    return method


def _ops():
    from .. import ops
    return ops


# ---- methods that are not a single op ---------------------------------------------------
def repeat(self, *sizes):
    """Tile the tensor (PyTorch's repeat): built from expand + reshape, so it has a gradient."""
    reshape, expand = _ops().reshape, _ops().expand
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if len(sizes) < self.ndim:
        raise RuntimeError(f"repeat: number of repeat dims ({len(sizes)}) can not be smaller than "
                           f"number of tensor dims ({self.ndim})")
    x = reshape(self, (1,) * (len(sizes) - self.ndim) + tuple(self.shape))
    inter, final = [], []
    for r, s in zip(sizes, x.shape):
        inter += [r, s]
        final.append(r * s)
    x = reshape(x, tuple(v for s in x.shape for v in (1, s)))
    return reshape(expand(x, tuple(inter)), tuple(final))


def view_as(self, other):
    """``self.view(other.shape)``."""
    return _ops().view(self, other.shape)


def reshape_as(self, other):
    """``self.reshape(other.shape)``."""
    return _ops().reshape(self, other.shape)


def where(self, condition, other):
    """``deepseek.where(condition, self, other)``: self where condition, else other."""
    return _ops().where(condition, self, other)


def clamp_min(self, min):
    """``self.clamp(min=min)``."""
    return _ops().clamp(self, min=min)


def clamp_max(self, max):
    """``self.clamp(max=max)``."""
    return _ops().clamp(self, max=max)


def floordiv(self, other):
    """``self // other``: floor division (no gradient), ``div(self, other, rounding_mode="floor")``."""
    return _ops().div(self, other, rounding_mode="floor")


def rfloordiv(self, other):
    """``other // self``: reflected floor division."""
    return _ops().div(as_tensor_operand(other), self, rounding_mode="floor")


def pos(self):
    """``+self``: the tensor itself."""
    return self


def mT(self):
    """The last two dims transposed (a view)."""
    return _ops().transpose(self, -2, -1)


def T(self):
    """All dims reversed (a view); a tensor of fewer than two dims unchanged."""
    return _ops().permute(self, tuple(reversed(range(self.ndim)))) if self.ndim > 1 else self


def normal_(self, mean=0.0, std=1.0, generator=None):
    """Fill with samples of N(mean, std**2), in place."""
    self._check_inplace()
    return _ops().creation.fill_normal_(self, mean, std, generator)


def uniform_(self, a=0.0, b=1.0, generator=None):
    """Fill with samples of U[a, b), in place."""
    self._check_inplace()
    return _ops().creation.fill_uniform_(self, a, b, generator)


def bernoulli_(self, p=0.5, generator=None):
    """Fill with 1 with probability ``p``, else 0, in place."""
    self._check_inplace()
    return _ops().creation.fill_bernoulli_(self, p, generator)


def new_zeros(self, *size, dtype=None):
    """Zeros of ``size`` with self's dtype (unless given) and device."""
    return _ops().creation.zeros(*size, dtype=dtype or self.dtype, device=self.device)


def new_ones(self, *size, dtype=None):
    """Ones of ``size`` with self's dtype (unless given) and device."""
    return _ops().creation.ones(*size, dtype=dtype or self.dtype, device=self.device)


def new_full(self, size, fill_value, dtype=None):
    """A tensor of ``size`` filled with ``fill_value``, self's dtype (unless given) and device."""
    return _ops().creation.full(size, fill_value, dtype=dtype or self.dtype, device=self.device)


def new_tensor(self, data, dtype=None):
    """A new tensor from ``data`` (copied), self's dtype (unless given) and device."""
    return Tensor(data, dtype=dtype or self.dtype, device=self.device)


def __format__(self, format_spec):
    """``f"{loss:.4f}"``: a 0-d tensor formats as its Python number; others only with an
    empty spec (their repr), as in PyTorch."""
    if self.ndim == 0:
        return self.item().__format__(format_spec)
    if format_spec:
        raise TypeError("unsupported format string passed to Tensor.__format__")
    return repr(self)


def new_empty(self, *size, dtype=None):
    """An uninitialised tensor of ``size`` with self's dtype (unless given) and device."""
    return _ops().creation.empty(*size, dtype=dtype or self.dtype, device=self.device)


def is_contiguous(self, memory_format=None):
    """True when the data is laid out C-contiguously."""
    return bool(self._data.flags.c_contiguous)


def stride(self, dim=None):
    """Strides in elements (of ``dim``, or all as a tuple)."""
    st = tuple(s // self._data.itemsize for s in self._data.strides)
    return st if dim is None else st[dim]


def storage_offset(self):
    """0: every deepseek tensor starts at its own data (views included)."""
    return 0


def data_ptr(self):
    """Address of the first element."""
    d = self._data
    return d.__array_interface__["data"][0] if hasattr(d, "__array_interface__") else int(d.data.ptr)


def squeeze_(self, dim=None):
    """In-place ``squeeze``: self takes the squeezed shape."""
    return _reshape_inplace(self, _ops().squeeze(self.detach(), dim).shape)


def unsqueeze_(self, dim):
    """In-place ``unsqueeze``: self takes the new shape."""
    return _reshape_inplace(self, _ops().unsqueeze(self.detach(), dim).shape)


def _reshape_inplace(self, shape):
    self._check_inplace()
    self._data = self._data.reshape(shape)
    self._bump_version()
    return self


def __contains__(self, element):
    """``element in tensor``: any element equals it."""
    return bool((self._data == (element._data if isinstance(element, Tensor) else element)).any())


def __lshift__(self, other):
    """``self << other`` (integer tensors; no gradient)."""
    o = other._data if isinstance(other, Tensor) else other
    return Tensor._make(self._data << o)


def __rshift__(self, other):
    """``self >> other`` (integer tensors; no gradient)."""
    o = other._data if isinstance(other, Tensor) else other
    return Tensor._make(self._data >> o)


def apply_(self, callable):
    """Apply a Python function to every element, in place (CPU tensors, slow, no gradient)."""
    self._check_inplace()
    flat = self._data.reshape(-1)
    for i in range(flat.size):
        flat[i] = callable(flat[i].item())
    self._bump_version()
    return self


PLAIN_METHODS = (repeat, view_as, reshape_as, normal_, uniform_, bernoulli_,
                 new_zeros, new_ones, new_full, new_tensor, __format__, new_empty, is_contiguous,
                 stride, storage_offset, data_ptr, squeeze_, unsqueeze_, __contains__, __lshift__,
                 __rshift__, apply_)
PROPERTIES = (mT, T)
