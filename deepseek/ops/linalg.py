"""matmul (batched, broadcast) and the fused linear op.

On the CPU, fp16/bf16 operands go through the blocked low-precision GEMM of
``_lowp`` (fp32 panels through sgemm, output rounded once) instead of numpy's
scalar-loop matmul for those dtypes; the gradients too, with fp32 accumulation.
"""
import numpy as np

from ..autograd.function import Function
from ._util import unbroadcast, xp_of, prepare_binary
from . import _lowp, _par


class Matmul(Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise RuntimeError(f"matmul: both arguments need at least 1 dimension, got shapes "
                               f"{a.shape} and {b.shape}")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise RuntimeError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                               f"multiplied ({ka} != {kb})")
        ctx.save_for_backward(a, b)
        if _lowp.applies(a, b):
            if a.ndim >= 2 and b.ndim == 2:  # fold the batch into rows: one blocked GEMM
                return _lowp.mm(a.reshape(-1, ka), b, out_dtype=a.dtype).reshape(
                    a.shape[:-1] + (b.shape[1],))
            return _lowp.matmul(a, b, out_dtype=a.dtype)
        out = a @ b
        if out.dtype != a.dtype:  # numpy computes bfloat16 products in float32
            out = out.astype(a.dtype)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        na = ctx.needs_input_grad
        if _lowp.applies(a, b, g):
            if a.ndim >= 2 and b.ndim == 2 and g.shape[:-1] == a.shape[:-1]:
                g2 = g.reshape(-1, g.shape[-1])
                ga = _lowp.mm(g2, b, trans_b=True, out_dtype=a.dtype).reshape(a.shape) \
                    if na[0] else None
                gb = _lowp.mm_tn(a.reshape(-1, a.shape[-1]), g2, out_dtype=b.dtype) \
                    if na[1] else None
                return ga, gb
            # general shapes: the fp32 formulas on widened operands, rounded once
            ga, gb = Matmul._grads(_lowp.to_f32(a), _lowp.to_f32(b), _lowp.to_f32(g), na)
            return (None if ga is None else _lowp.from_f32(ga, a.dtype),
                    None if gb is None else _lowp.from_f32(gb, b.dtype))
        return Matmul._grads(a, b, g, na)

    @staticmethod
    def _grads(a, b, g, na):
        xp = xp_of(g)
        if a.ndim == 1 and b.ndim == 1:  # dot product: g is 0-d
            return (g * b if na[0] else None), (g * a if na[1] else None)
        a2 = a[None, :] if a.ndim == 1 else a          # (.., n, k)
        b2 = b[:, None] if b.ndim == 1 else b          # (.., k, m)
        g2 = g
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        ga = gb = None
        if na[0]:
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            if a.ndim == 1:
                ga = ga.reshape(ga.shape[:-2] + (ga.shape[-1],))
                ga = unbroadcast(ga, a.shape)
            else:
                ga = unbroadcast(ga, a.shape)
        if na[1]:
            if b2.ndim == 2 and g2.ndim > 2:
                # fold batch dims into the contraction: one big GEMM instead of many
                a_full = xp.broadcast_to(a2, g2.shape[:-2] + a2.shape[-2:])
                gb = a_full.reshape(-1, a2.shape[-1]).T @ g2.reshape(-1, g2.shape[-1])
            else:
                gb = xp.swapaxes(a2, -1, -2) @ g2
                gb = unbroadcast(gb, b2.shape)
            if b.ndim == 1:
                gb = gb.reshape(b.shape)
        if ga is not None and ga.dtype != a.dtype:
            ga = ga.astype(a.dtype)
        if gb is not None and gb.dtype != b.dtype:
            gb = gb.astype(b.dtype)
        return ga, gb


class Linear(Function):
    """y = x @ W.T + b with x (..., in), W (out, in); one GEMM per pass."""

    @staticmethod
    def forward(ctx, x, w, b=None):
        if x.dtype != w.dtype or (b is not None and b.dtype != w.dtype):
            # PyTorch refuses mixed dtypes here too (numpy would promote, then fail to
            # cast the bias add back, with a message about ufunc casting rules)
            got = f"input {x.dtype}, weight {w.dtype}" + (f", bias {b.dtype}" if b is not None else "")
            raise RuntimeError(f"linear: input, weight and bias must have the same dtype, got "
                               f"{got}; convert the input first (e.g. x.to(weight.dtype) or "
                               f"x.float())")
        if x.shape[-1] != w.shape[1]:
            raise RuntimeError(f"linear: input has {x.shape[-1]} features in its last dim "
                               f"(shape {tuple(x.shape)}) but the weight expects {w.shape[1]} "
                               f"(weight shape {tuple(w.shape)})")
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        if _lowp.applies(x, w):  # bias added in fp32 before the output is rounded
            return _lowp.mm(x.reshape(-1, x.shape[-1]), w, trans_b=True, bias=b,
                            out_dtype=x.dtype).reshape(x.shape[:-1] + (w.shape[0],))
        if x.ndim > 2:
            # one 2-D GEMM over all leading dims: numpy would loop a GEMM per batch row,
            # and the big one threads better
            out = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(x.shape[:-1] + (w.shape[0],))
        else:
            out = x @ w.T
        if out.dtype != x.dtype:  # numpy computes bfloat16 products in float32
            out = out.astype(x.dtype)
        if b is not None:
            if (type(out) is np.ndarray and out.size >= _par.ROWS_MIN_ELEMENTS
                    and out.flags.c_contiguous):
                # a long pass split over the threads; a short one (every small model's
                # Linear) skips add_rows' frames, which would run it on this thread anyway
                o2 = out.reshape(-1, out.shape[-1])
                _par.add_rows(o2, b, o2)
            else:
                out += b
        return out

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        x = ctx.saved_tensors[0]
        # the weight is read only for the input gradient: under CPU autocast, reading it
        # re-makes its bf16 cast (amp.deferred_casts), and a first layer needs none
        w = ctx.saved_tensors[1] if na[0] else None
        g2 = g.reshape(-1, g.shape[-1])
        if _lowp.applies(x, w, g):
            gx = _lowp.mm(g2, w, out_dtype=x.dtype).reshape(g.shape[:-1] + (w.shape[1],)) \
                if na[0] else None
            w = None  # (a re-made cast is freed before the weight gradient is made)
            gw = _lowp.mm_tn(g2, x.reshape(-1, x.shape[-1]), out_dtype=x.dtype) if na[1] else None
            gb = _lowp.colsum(g2, out_dtype=x.dtype) if ctx.has_bias and na[2] else None
            return gx, gw, gb
        gx = (g2 @ w).reshape(g.shape[:-1] + (w.shape[1],)) if na[0] else None
        gw = (g2.T @ x.reshape(-1, x.shape[-1])) if na[1] else None
        gb = g2.sum(axis=0) if ctx.has_bias and na[2] else None
        return gx, gw, gb


def matmul(a, b):
    """Matrix product with numpy/PyTorch broadcasting rules."""
    a, b = prepare_binary(a, b, "matmul")
    return Matmul.apply(a, b)


def linear(x, weight, bias=None):
    """x @ weight.T + bias."""
    from .._tensor import Tensor
    if bias is not None:
        return Linear.apply(x, weight, bias)
    if not isinstance(x, Tensor):
        raise TypeError(f"linear: expected a Tensor input, got {type(x).__name__}")
    return Linear.apply(x, weight)
