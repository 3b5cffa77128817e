"""All ops of the engine, and the Tensor methods and operators built on them."""
from .elementwise import (add, sub, mul, div, pow, maximum, minimum, where, clamp, neg, abs_,
                          exp, log, sqrt, rsqrt, sin, cos, tanh, sigmoid, relu, gelu, silu,
                          sign, square, erf)
from .reduction import (sum, mean, var, std, max, min, amax, amin, prod, logsumexp, argmax,
                        argmin)
from .linalg import matmul, linear
from .shape import (reshape, view, permute, transpose, t, expand, expand_as, broadcast_to,
                    squeeze, unsqueeze, flatten, unflatten, cat, stack, split, chunk, cast,
                    to_device, contiguous, clone)
from .indexing import getitem, index_put, normalize_index, gather, masked_fill, tril, triu
from .softmax import softmax, log_softmax
from . import creation
from ._util import as_tensor_operand
from .._tensor import Tensor as _T

abs = abs_
concat = concatenate = cat
clip = clamp
multiply = mul
divide = true_divide = div
subtract = sub


def _r(fn):
    return lambda self, other: fn(as_tensor_operand(other), self)


def _inplace(fn):
    def method(self, *args, **kwargs):
        return self._assign_result(fn(self, *args, **kwargs))
    method.__name__ = fn.__name__ + "_"
    method.__doc__ = f"In-place version of {fn.__name__}."
    return method


def _install():
    T = _T
    T.__add__ = lambda s, o: add(s, o)
    T.__radd__ = _r(add)
    T.__sub__ = lambda s, o: sub(s, o)
    T.__rsub__ = _r(sub)
    T.__mul__ = lambda s, o: mul(s, o)
    T.__rmul__ = _r(mul)
    T.__truediv__ = lambda s, o: div(s, o)
    T.__rtruediv__ = _r(div)
    T.__floordiv__ = lambda s, o: div(s, o, rounding_mode="floor")
    T.__rfloordiv__ = lambda s, o: div(as_tensor_operand(o), s, rounding_mode="floor")
    T.__pow__ = lambda s, o: pow(s, o)
    T.__rpow__ = _r(pow)
    T.__matmul__ = lambda s, o: matmul(s, o)
    T.__rmatmul__ = _r(matmul)
    T.__neg__ = neg
    T.__pos__ = lambda s: s
    T.__abs__ = abs_
    T.__getitem__ = getitem
    for name, fn in [("__iadd__", add), ("__isub__", sub), ("__imul__", mul), ("__itruediv__", div)]:
        setattr(T, name, _inplace(fn))

    for name, np_op in [("__eq__", "equal"), ("__ne__", "not_equal"), ("__lt__", "less"),
                        ("__le__", "less_equal"), ("__gt__", "greater"), ("__ge__", "greater_equal")]:
        setattr(T, name, _compare(np_op))
    T.eq, T.ne, T.lt, T.le, T.gt, T.ge = T.__eq__, T.__ne__, T.__lt__, T.__le__, T.__gt__, T.__ge__
    T.__and__ = _raw_binary("bitwise_and")
    T.__or__ = _raw_binary("bitwise_or")
    T.__xor__ = _raw_binary("bitwise_xor")
    T.__invert__ = lambda s: _T._make(~s._data)
    T.logical_not = lambda s: _T._make(_xp(s).logical_not(s._data))
    T.logical_and = _raw_binary("logical_and")
    T.logical_or = _raw_binary("logical_or")
    T.isnan = lambda s: _T._make(_xp(s).isnan(s._data))
    T.isinf = lambda s: _T._make(_xp(s).isinf(s._data))
    T.isfinite = lambda s: _T._make(_xp(s).isfinite(s._data))
    T.any = lambda s, dim=None, keepdim=False: _T._make(_xp(s).asarray(s._data.any(axis=dim, keepdims=keepdim)))
    T.all = lambda s, dim=None, keepdim=False: _T._make(_xp(s).asarray(s._data.all(axis=dim, keepdims=keepdim)))
    T.equal = lambda s, o: bool(s.shape == o.shape and (s._data == o._data).all())
    T.allclose = lambda s, o, rtol=1e-5, atol=1e-8: bool(_xp(s).allclose(s._data, o._data, rtol=rtol, atol=atol))

    methods = dict(
        add=add, sub=sub, mul=mul, div=div, pow=pow, maximum=maximum, minimum=minimum,
        clamp=clamp, clip=clamp, neg=neg, abs=abs_, exp=exp, log=log, sqrt=sqrt, rsqrt=rsqrt,
        sin=sin, cos=cos, tanh=tanh, sigmoid=sigmoid, relu=relu, gelu=gelu, silu=silu,
        sign=sign, square=square, sum=sum, mean=mean, var=var, std=std, max=max, min=min,
        amax=amax, amin=amin, prod=prod, logsumexp=logsumexp, argmax=argmax, argmin=argmin,
        matmul=matmul, reshape=reshape, view=view, permute=permute, transpose=transpose, t=t,
        expand=expand, expand_as=expand_as, squeeze=squeeze, unsqueeze=unsqueeze,
        flatten=flatten, unflatten=unflatten, split=split, chunk=chunk,
        contiguous=contiguous, clone=clone, gather=gather, masked_fill=masked_fill,
        tril=tril, triu=triu, where=lambda s, cond, other: where(cond, s, other),
        softmax=softmax, log_softmax=log_softmax,
        multiply=mul, divide=div, subtract=sub,
    )
    for name, fn in methods.items():
        setattr(T, name, fn)
    T.mT = property(lambda s: transpose(s, -2, -1))
    T.T = property(lambda s: permute(s, tuple(reversed(range(s.ndim)))) if s.ndim > 1 else s)
    T.view_as = lambda s, o: view(s, o.shape)
    T.reshape_as = lambda s, o: reshape(s, o.shape)
    T.repeat = _repeat
    for name in ["add", "sub", "mul", "div", "pow", "clamp", "neg", "abs", "exp", "log", "sqrt",
                 "sin", "cos", "tanh", "sigmoid", "relu", "masked_fill", "tril", "triu"]:
        setattr(T, name + "_", _inplace(methods[name]))
    T.clamp_min = lambda s, v: clamp(s, min=v)
    T.clamp_max = lambda s, v: clamp(s, max=v)

    def normal_(s, mean=0.0, std=1.0, generator=None):
        s._check_inplace()
        return creation.fill_normal_(s, mean, std, generator)

    def uniform_(s, a=0.0, b=1.0, generator=None):
        s._check_inplace()
        return creation.fill_uniform_(s, a, b, generator)

    def bernoulli_(s, p=0.5, generator=None):
        s._check_inplace()
        return creation.fill_bernoulli_(s, p, generator)
    T.normal_, T.uniform_, T.bernoulli_ = normal_, uniform_, bernoulli_
    T.new_zeros = lambda s, *size, dtype=None: creation.zeros(*size, dtype=dtype or s.dtype, device=s.device)
    T.new_ones = lambda s, *size, dtype=None: creation.ones(*size, dtype=dtype or s.dtype, device=s.device)
    T.new_full = lambda s, size, v, dtype=None: creation.full(size, v, dtype=dtype or s.dtype, device=s.device)
    T.new_tensor = lambda s, data, dtype=None: _T(data, dtype=dtype or s.dtype, device=s.device)


def _xp(t):
    from ..backend import get_array_module
    return get_array_module(t._data)


def _compare(np_name):
    def op(self, other):
        try:
            other = as_tensor_operand(other)
        except TypeError:
            return NotImplemented  # t == None is False, t < "x" a TypeError, like PyTorch
        if isinstance(other, _T):
            a, b = _promoted_pair(self, other)
        else:
            a, b = self._data, other
        try:
            return _T._make(_xp(self).asarray(getattr(_xp(self), np_name)(a, b)))
        except ValueError as e:
            from ._util import broadcast_error
            raise broadcast_error(np_name, e, a, b) from None
    op.__name__ = np_name
    return op


def _promoted_pair(a, b):
    from .. import dtypes
    if a.dtype == b.dtype:
        return a._data, b._data
    rt = dtypes.promote_types(a.dtype, b.dtype)
    return a._data.astype(rt, copy=False), b._data.astype(rt, copy=False)


def _raw_binary(np_name):
    """A non-differentiable binary op (bitwise/logical) applied to the raw arrays."""
    def op(self, other):
        other = as_tensor_operand(other)
        b = other._data if isinstance(other, _T) else other
        return _T._make(getattr(_xp(self), np_name)(self._data, b))
    return op


def _repeat(self, *sizes):
    """Tile the tensor (PyTorch's repeat): built from expand + reshape, so it has a gradient."""
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


_install()
