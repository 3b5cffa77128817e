"""dropout (and channel-wise dropout1d/2d/3d) drawing from deepseek's default generator,
so ``deepseek.manual_seed`` makes masks reproducible."""
import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from ..backend import to_device, device_of
from ..random import _rng
from .._tensor import Tensor


def keep_mask(shape, p, dtype, like, generator=None):
    """A float mask of ``shape``: 1/(1-p) where kept, 0 where dropped (on like's device)."""
    u = _rng(generator).random(shape, dtype=np.float32)
    m = (u >= np.float32(p)).astype(dtype if dtype in (_dt.float32, _dt.float64) else np.float32)
    m *= m.dtype.type(1.0 / (1.0 - p))
    if m.dtype != dtype:
        m = m.astype(dtype)
    return to_device(m, device_of(like))


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, mask_shape=None, generator=None):
        m = keep_mask(mask_shape or x.shape, p, x.dtype, x, generator)
        ctx.m = m
        return x * m

    @staticmethod
    def backward(ctx, g):
        return g * ctx.m


def _check(input, p, op):
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(input).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: dropout probability has to be between 0 and 1, but got {p}")
    if not _dt.is_floating(input.dtype):
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {input.dtype}")


def _zeros(input):
    from .elementwise import mul
    return mul(input, 0.0)


def dropout(input, p=0.5, training=True, inplace=False, generator=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only)."""
    _check(input, p, "dropout")
    if not training or p == 0:
        return input
    if p == 1:
        return _zeros(input)
    out = Dropout.apply(input, float(p), generator=generator)
    return input._assign_result(out) if inplace else out


def _channel_dropout(input, p, training, inplace, nd, op):
    _check(input, p, op)
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{op}: expected {nd + 1}-D or {nd + 2}-D input, got shape "
                           f"{tuple(input.shape)}")
    if not training or p == 0:
        return input
    if p == 1:
        return _zeros(input)
    lead = input.shape[:input.ndim - nd]
    out = Dropout.apply(input, float(p), mask_shape=tuple(lead) + (1,) * nd)
    return input._assign_result(out) if inplace else out


def dropout1d(input, p=0.5, training=True, inplace=False):
    return _channel_dropout(input, p, training, inplace, 1, "dropout1d")


def dropout2d(input, p=0.5, training=True, inplace=False):
    return _channel_dropout(input, p, training, inplace, 2, "dropout2d")


def dropout3d(input, p=0.5, training=True, inplace=False):
    return _channel_dropout(input, p, training, inplace, 3, "dropout3d")
