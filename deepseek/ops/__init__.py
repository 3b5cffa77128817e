"""All ops of the engine, and the Tensor methods and operators built on them.

The op table (``deepseek.ops.registry``) says which function backs which Tensor
method and operator; ``registry.install`` defines them on ``Tensor`` once, here.
"""
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

# What ``from deepseek.ops import *`` (deepseek/_api.py) exports: the names above,
# not the table's modules imported below.
__all__ = sorted(n for n in globals() if not n.startswith("_"))

from . import registry  # noqa: E402

registry.install(_T)
