"""All ops of the engine, and the Tensor methods and operators built on them.

The op table (``deepseek.ops.registry``) says which function backs which Tensor
method and operator; ``registry.install`` defines them on ``Tensor`` once, here.
"""
from .elementwise import (add, sub, mul, div, pow, maximum, minimum, where, clamp, neg, abs_,
                          exp, log, sqrt, rsqrt, sin, cos, tanh, sigmoid, relu, gelu, silu,
                          sign, square)
# (``elementwise.erf(xp, x)`` is an array helper; the public erf is math_extra's)
from .math_extra import (tan, asin, acos, atan, sinh, cosh, asinh, acosh, atanh, log2, log10,
                         log1p, exp2, expm1, reciprocal, erf, erfc, erfinv, frac, floor, ceil,
                         trunc, fix, round, fmod, remainder, copysign, logaddexp, logaddexp2,
                         atan2, arctan2, hypot, lerp, isclose, nan_to_num, float_power)
from .nondiff import (eq, ne, lt, le, gt, ge, bitwise_and, bitwise_or, bitwise_xor, bitwise_not,
                      logical_and, logical_or, logical_not, isnan, isinf, isfinite, any, all,
                      equal, allclose)
from .shape_extra import (flip, fliplr, flipud, roll, narrow, diagonal, diag, trace, index_select,
                          repeat_interleave, masked_select, movedim, moveaxis, swapaxes, swapdims,
                          tile, atleast_1d, atleast_2d, atleast_3d, hstack, vstack, row_stack,
                          dstack, column_stack, unbind, take_along_dim, scatter, scatter_add,
                          index_add, index_fill, index_copy, meshgrid, tensor_split)
from .sorting import (sort, argsort, msort, topk, kthvalue, median, nanmedian, unique,
                      unique_consecutive, nonzero, argwhere, searchsorted, bucketize, bincount,
                      count_nonzero, histc)
from .scan import cumsum, cumprod, cummax, cummin, logcumsumexp
from .einsum import (einsum, mm, bmm, mv, dot, vdot, inner, outer, ger, addmm, addmv, baddbmm,
                     addbmm, addr, tensordot, kron, cross)
from .reduction_extra import norm, dist, cdist, var_mean, std_mean, nansum, nanmean, aminmax
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
absolute = abs_
negative = neg
arccos, arcsin, arctan, arccosh, arcsinh, arctanh = acos, asin, atan, acosh, asinh, atanh
greater, greater_equal, less, less_equal, not_equal = gt, ge, lt, le, ne
concat = concatenate = cat
clip = clamp
multiply = mul
divide = true_divide = div
subtract = sub

# What ``from deepseek.ops import *`` (deepseek/_api.py) exports: the names above,
# not the table's modules imported below.
__all__ = sorted(n for n in globals() if not n.startswith("_"))

from . import registry  # noqa: E402

registry.install(_T)
