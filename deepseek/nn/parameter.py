"""Parameter: a Tensor that a Module registers as a learnable weight."""
import numpy as np

from .._tensor import Tensor
from .. import dtypes as _dt


class Parameter(Tensor):
    """A leaf tensor with ``requires_grad=True`` by default, sharing ``data``'s storage.

    Assigning a Parameter as a Module attribute registers it in ``parameters()``.
    """

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            arr = np.empty((0,), dtype=_dt.get_default_dtype())
            vc = None
        elif isinstance(data, Tensor):
            arr, vc = data._data, data._vc
        else:
            arr, vc = np.asarray(data), None
        t = cls._make(arr)
        if vc is not None:
            t._vc = vc
        if requires_grad:
            if not _dt.is_floating(arr.dtype):
                raise RuntimeError(f"only tensors of floating point dtype can require gradients, "
                                   f"got {arr.dtype}; pass requires_grad=False for an integer "
                                   "Parameter")
            t.requires_grad = True
        return t

    def __init__(self, data=None, requires_grad=True):
        pass

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        out = Parameter(Tensor._make(self._data.copy()), self.requires_grad)
        if self._grad is not None:
            out._grad = Tensor._make(self._grad._data.copy())
        memo[id(self)] = out
        return out

    def __reduce_ex__(self, protocol):
        from ..backend import to_device
        return (_rebuild_parameter, (to_device(self._data, "cpu"), self.requires_grad, str(self.device)))


def _rebuild_parameter(array, requires_grad, device):
    from ..backend import to_device
    return Parameter(Tensor._make(to_device(array, device)), requires_grad)


class Buffer(Tensor):
    """Marks a tensor to be registered as a (persistent by default) module buffer."""

    def __new__(cls, data=None, persistent=True):
        arr = data._data if isinstance(data, Tensor) else np.asarray(
            data if data is not None else np.empty(0, dtype=_dt.get_default_dtype()))
        t = cls._make(arr)
        t.persistent = persistent
        return t

    def __init__(self, data=None, persistent=True):
        pass


def is_lazy(param):
    return False
