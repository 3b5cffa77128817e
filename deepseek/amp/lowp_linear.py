"""linear under CPU autocast: the backward widens each gradient panel once and reads
the weight's cast from the fp32 parameter.

``ops.linalg.Linear``'s backward on low-precision arrays runs two blocked GEMMs,
``_lowp.mm`` for the input gradient and ``_lowp.mm_tn`` for the weight gradient, and
each widens the output gradient ``g`` again (the second in strided column blocks, which
cost more than the contiguous rows). The autocast dispatch runs ``Linear`` on bf16/fp16
CPU inputs as ``LinearLowp``: the same forward, and where ``g`` is the wider operand (a
layer that widens: the FFN's first linear, whose ``g`` is the layer's widest
activation; the attention's input projection) a backward (``_lowp.linear_grads``) that
widens each row panel of ``g`` once for both products. Values are fp32 math on the
exact widened operands, rounded once, as before; the weight gradient's fp32 sum runs
over the panels in another order, so its last bits may differ from ``mm_tn``'s.

The weight's bf16 cast is not kept for backward (``deferred_casts``); instead of
re-making the whole cast there, the input gradient's GEMM rounds the fp32 parameter to
the cast's precision block by block (``deferred_casts.master``, ``_lowp``'s
``b_round``): the same operand values, without the cast's 16-bit copy (2 MiB for the
MLP's 1024 x 1024 layer) or a whole widened copy of it.
"""
import numpy as np

from ..ops import _lowp
from ..ops.linalg import Linear
from . import deferred_casts

# switches for tests and measurements: ENABLED False runs Linear itself under autocast;
# READ_MASTER False re-makes a deferred weight cast in backward instead of rounding the
# fp32 parameter block by block
ENABLED = True
READ_MASTER = True


class LinearLowp(Linear):
    """``Linear`` whose backward shares the widened gradient panels (see the module)
    where the gradient is the wider operand, and reads a deferred weight cast from the
    fp32 parameter."""

    @staticmethod
    def forward(ctx, x, w, b=None):
        out = Linear.forward(ctx, x, w, b)
        # g (tokens x out) at least as wide as x (tokens x in): one widening of g pays;
        # for a narrowing layer the wide x is widened in either way and the shared
        # panels would only hold more fp32 at once
        ctx.fuse = w.shape[0] >= w.shape[1]
        return out

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        x = ctx.saved_tensors[0]
        if not _lowp.applies(x, g):  # (not low precision after all: Linear's own way)
            return Linear.backward(ctx, g)
        g2 = g.reshape(-1, g.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        w = rnd = None
        if na[0]:  # the weight is read only for the input gradient
            hit = deferred_casts.master(ctx.saved_tensors, 1) if READ_MASTER else None
            w, rnd = hit or (ctx.saved_tensors[1], None)
        if ctx.fuse and na[0] and na[1]:
            gx, gw = _lowp.linear_grads(g2, w, x2, x.dtype, w_round=rnd)
        else:  # (one product, or a narrowing layer: nothing to share)
            gx = _lowp.mm(g2, w, out_dtype=x.dtype, b_round=rnd) if na[0] else None
            w = None
            gw = _lowp.mm_tn(g2, x2, out_dtype=x.dtype) if na[1] else None
        if gx is not None:
            gx = gx.reshape(g.shape[:-1] + (gx.shape[1],))
        gb = _lowp.colsum(g2, out_dtype=x.dtype) if ctx.has_bias and na[2] else None
        return gx, gw, gb


def replacement(fn, args):
    """``LinearLowp`` for ``Linear`` on CPU arrays with a low-precision input, else None."""
    if fn is not Linear or not args or not ENABLED:
        return None
    data = [getattr(a, "_data", None) for a in args]
    if not all(type(d) is np.ndarray for d in data if d is not None) or \
            getattr(data[0], "dtype", None) not in _lowp.LOW:
        return None
    return LinearLowp
