"""Ops that CPU autocast runs straight on bfloat16 arrays in one native pass.

``lowp_compute.LowpCompute`` runs an op on low-precision inputs as fp32 math: widen the
inputs, compute, round the outputs, and in backward widen the saved arrays and the
gradient again. For relu (the FFN activation) that is five conversion passes and the
fp32 op's own passes over the largest activation of a transformer layer, several
times the cost of relu itself. The native kernels (``dsn_lowp.c``) do the same fp32
operations element by element, in registers, so the values (NaN, -0 and inf * 0
included) are those of the LowpCompute path, bit for bit, in one pass each way.

``replacement(fn, args)`` is asked by the autocast dispatch before LowpCompute: it
gives this module's Function for ``fn`` when one exists and the native kernels run
now, else None. Only bfloat16 (CPU autocast's dtype): fp16 keeps the LowpCompute path.
"""
import numpy as np

from .. import dtypes as _dt
from .. import native as _native
from ..autograd.function import Function

_BF16 = np.dtype(_dt.bfloat16)
_EXT = getattr(_native, "_ext", None)


def _bits(a):
    """The uint16 view of bfloat16 ``a`` (what the kernels read; made contiguous)."""
    return np.ascontiguousarray(a).view(np.uint16)


class ReluBf16(Function):
    """relu of a bfloat16 array; saves its output, as ``elementwise.Relu`` does."""

    @staticmethod
    def forward(ctx, a):
        out = np.empty(a.shape, _BF16)
        _EXT.lowp_relu(_bits(a), out.view(np.uint16))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        if g.dtype != _BF16:  # (a gradient of another dtype: the fp32 formula, rounded)
            from ..ops._lowp import to_f32
            return (np.asarray(g, np.float32) * (to_f32(out) > 0)).astype(_BF16)
        res = np.empty(out.shape, _BF16)
        _EXT.lowp_relu_grad(_bits(g), out.view(np.uint16), res.view(np.uint16))
        return res


_OPS = None


def _table():
    global _OPS
    if _OPS is None:
        from ..ops.elementwise import Relu
        _OPS = {Relu: ReluBf16}
    return _OPS


def replacement(fn, args):
    """This module's Function for op ``fn`` on ``args`` (tensors), or None: only for a
    single bfloat16 CPU array argument, with the native kernels in use now."""
    sub = _table().get(fn)
    if sub is None or len(args) != 1 or _EXT is None or not hasattr(_EXT, "lowp_relu"):
        return None
    data = getattr(args[0], "_data", None)
    if type(data) is not np.ndarray or data.dtype != _BF16 or not _native.available():
        return None
    return sub
