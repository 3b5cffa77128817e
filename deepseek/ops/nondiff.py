"""Ops without a gradient, computed straight on the backend arrays: comparisons,
bitwise and logical ops, isnan/isinf/isfinite, any/all, equal/allclose.

They never go through ``Function.apply`` (nothing to record for backward); their
outputs are bool tensors (bitwise ops on integers keep the integer dtype).
"""
from .._tensor import Tensor
from ..backend import get_array_module
from ._util import as_tensor_operand, broadcast_error


def _xp(t):
    return get_array_module(t._data)


def _named(op, name, doc):
    """``op`` under its public ``name`` with ``doc`` (what help() and IDEs show)."""
    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    return op


def _promoted_pair(a, b):
    from .. import dtypes
    if a.dtype == b.dtype:
        return a._data, b._data
    rt = dtypes.promote_types(a.dtype, b.dtype)
    return a._data.astype(rt, copy=False), b._data.astype(rt, copy=False)


def _compare(np_name, name, symbol):
    def op(self, other):
        try:
            other = as_tensor_operand(other)
        except TypeError:
            return NotImplemented  # t == None is False, t < "x" a TypeError, like PyTorch
        if isinstance(other, Tensor):
            a, b = _promoted_pair(self, other)
        else:
            a, b = self._data, other
        try:
            return Tensor._make(_xp(self).asarray(getattr(_xp(self), np_name)(a, b)))
        except ValueError as e:
            raise broadcast_error(np_name, e, a, b) from None
    return _named(op, name, f"``self {symbol} other`` elementwise (broadcast, after type "
                  "promotion): a bool tensor. ``other`` may be a tensor or a Python number.")


eq = _compare("equal", "eq", "==")
ne = _compare("not_equal", "ne", "!=")
lt = _compare("less", "lt", "<")
le = _compare("less_equal", "le", "<=")
gt = _compare("greater", "gt", ">")
ge = _compare("greater_equal", "ge", ">=")


def _raw_binary(name, what):
    """The op ``name``: numpy's function of the same name on the two arrays."""
    def op(self, other):
        other = as_tensor_operand(other)
        b = other._data if isinstance(other, Tensor) else other
        return Tensor._make(getattr(_xp(self), name)(self._data, b))
    return _named(op, name, f"{what} of ``self`` and ``other`` elementwise (broadcast); "
                  "no gradient.")


bitwise_and = _raw_binary("bitwise_and", "Bitwise AND (logical AND for bool)")
bitwise_or = _raw_binary("bitwise_or", "Bitwise OR (logical OR for bool)")
bitwise_xor = _raw_binary("bitwise_xor", "Bitwise XOR (logical XOR for bool)")
logical_and = _raw_binary("logical_and", "Logical AND (nonzero is True)")
logical_or = _raw_binary("logical_or", "Logical OR (nonzero is True)")


def bitwise_not(self):
    """Bitwise NOT (``~x``; logical NOT for bool tensors); no gradient."""
    return Tensor._make(~self._data)


def logical_not(self):
    """Logical NOT elementwise (nonzero is True): a bool tensor."""
    return Tensor._make(_xp(self).logical_not(self._data))


def isnan(self):
    """True where an element is NaN."""
    return Tensor._make(_xp(self).isnan(self._data))


def isinf(self):
    """True where an element is +inf or -inf."""
    return Tensor._make(_xp(self).isinf(self._data))


def isfinite(self):
    """True where an element is neither NaN nor infinite."""
    return Tensor._make(_xp(self).isfinite(self._data))


def any(self, dim=None, keepdim=False):
    """True if any element (along ``dim``, or of all) is nonzero: a bool tensor."""
    return Tensor._make(_xp(self).asarray(self._data.any(axis=dim, keepdims=keepdim)))


def all(self, dim=None, keepdim=False):
    """True if every element (along ``dim``, or of all) is nonzero: a bool tensor."""
    return Tensor._make(_xp(self).asarray(self._data.all(axis=dim, keepdims=keepdim)))


def equal(self, other):
    """True (a Python bool) when both tensors have the same shape and elements."""
    return bool(self.shape == other.shape and (self._data == other._data).all())


def allclose(self, other, rtol=1e-5, atol=1e-8):
    """True (a Python bool) when ``|self - other| <= atol + rtol * |other|`` everywhere."""
    return bool(_xp(self).allclose(self._data, other._data, rtol=rtol, atol=atol))
