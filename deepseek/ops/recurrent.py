"""Fused recurrences: a whole GRU or LSTM direction as one op (cuDNN's shape).

``nn.GRU`` / ``nn.LSTM`` compute the input projection of every step up front (one GEMM);
what is left is the recurrence, which these ops run as one forward loop and one
backward loop over plain arrays. Written as ~14 differentiable ops per step, it cost
the engine a graph node per op and step (the makemore GRU spent most of its step there);
here it is one node, the hidden-to-hidden weight gradient is one GEMM over all steps,
and the per-step work is the few array passes the math needs.

Gate order and formulas are PyTorch's (``torch.nn.GRU``: r, z, n; ``torch.nn.LSTM``:
i, f, g, o). Shapes: ``x_proj`` (T, B, G*H) already holds ``x @ W_ih.T + b_ih``;
``h0``/``c0`` (B, H); ``w_hh`` (G*H, H); ``b_hh`` (G*H,) or None.
"""
import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from ._util import xp_of

_LOW = (_dt.float16, _dt.bfloat16)

__all__ = ["gru_sequence", "lstm_sequence", "GRUSequence", "LSTMSequence"]


def _sigmoid_(xp, a):
    """a <- sigmoid(a), in place, through tanh (no overflow for large |a|)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a


def _widen(ctx, arrays):
    """The arrays to compute with: all in their promoted dtype, float32 when that is
    float16/bfloat16 (a recurrence compounds rounding step after step). ctx.out is the
    outputs' dtype (the promoted one), ctx.ins the inputs' (their gradients')."""
    present = [a for a in arrays if a is not None]
    out = np.result_type(*present)
    work = np.dtype(np.float32) if out in _LOW else out
    ctx.out, ctx.ins = out, [None if a is None else a.dtype for a in arrays]
    return [None if a is None else a.astype(work, copy=False) for a in arrays]


def _narrow_outputs(ctx, *arrays):
    return tuple(a.astype(ctx.out, copy=False) for a in arrays)


def _narrow_grads(ctx, *grads):
    return tuple(None if g is None else g.astype(d, copy=False) for g, d in zip(grads, ctx.ins))


def _check(name, x_proj, h0, w_hh, b_hh, gates):
    H = h0.shape[-1]
    if x_proj.ndim != 3 or h0.ndim != 2 or w_hh.shape != (gates * H, H) \
            or x_proj.shape[1:] != (h0.shape[0], gates * H) \
            or (b_hh is not None and b_hh.shape != (gates * H,)):
        raise ValueError(
            f"{name}: expected x_proj (T, B, {gates}H), h0 (B, H), w_hh ({gates}H, H) and "
            f"b_hh ({gates}H,) with H = {H}; got x_proj {tuple(x_proj.shape)}, h0 "
            f"{tuple(h0.shape)}, w_hh {tuple(w_hh.shape)}"
            + (f", b_hh {tuple(b_hh.shape)}" if b_hh is not None else ""))


class GRUSequence(Function):
    """All T steps of one GRU direction: outputs (T, B, H) (the last one is h_n)."""

    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, b_hh=None):
        _check("gru_sequence", x_proj, h0, w_hh, b_hh, 3)
        x_proj, h0, w_hh, b_hh = _widen(ctx, [x_proj, h0, w_hh, b_hh])
        xp = xp_of(x_proj)
        T, B, H = x_proj.shape[0], h0.shape[0], h0.shape[1]
        hs = xp.empty((T + 1, B, H), dtype=h0.dtype)      # h_0 .. h_T
        rz = xp.empty((T, B, 2 * H), dtype=h0.dtype)      # sigmoid gates r, z
        n = xp.empty((T, B, H), dtype=h0.dtype)
        hn = xp.empty((T, B, H), dtype=h0.dtype)          # W_hn h + b_hn (inside r * .)
        hs[0] = h0
        wt = w_hh.T
        for t in range(T):
            hp = hs[t] @ wt
            if b_hh is not None:
                hp += b_hh
            g = rz[t]
            xp.add(x_proj[t, :, :2 * H], hp[:, :2 * H], out=g)
            _sigmoid_(xp, g)
            hn[t] = hp[:, 2 * H:]
            nt = n[t]
            xp.multiply(g[:, :H], hn[t], out=nt)
            nt += x_proj[t, :, 2 * H:]
            xp.tanh(nt, out=nt)
            # h' = (1 - z) * n + z * h = n + z * (h - n)
            ht = hs[t + 1]
            xp.subtract(hs[t], nt, out=ht)
            ht *= g[:, H:]
            ht += nt
        ctx.save_for_backward(w_hh)
        ctx.loop = (hs, rz, n, hn)
        ctx.has_bias = b_hh is not None
        return _narrow_outputs(ctx, hs[1:].copy())[0]

    @staticmethod
    def backward(ctx, g_out):
        (w_hh,) = ctx.saved_tensors
        hs, rz, n, hn = ctx.loop
        g_out = g_out.astype(hs.dtype, copy=False)
        xp = xp_of(g_out)
        T, B, H = n.shape
        d_pre = xp.empty((T, B, 3 * H), dtype=g_out.dtype)   # d(x_proj) = d(pre-activations)
        d_hp = xp.empty((T, B, 3 * H), dtype=g_out.dtype)    # d(h @ W_hh.T + b_hh)
        dh = xp.zeros((B, H), dtype=g_out.dtype)
        for t in range(T - 1, -1, -1):
            dh += g_out[t]
            r, z, nt = rz[t, :, :H], rz[t, :, H:], n[t]
            # h' = n + z * (h - n)
            dz = (hs[t] - nt) * dh
            dn = dh - z * dh
            # n = tanh(a_n), a_n = x_n + r * hn
            dan = dn * (1.0 - nt * nt)
            dr = dan * hn[t]
            d_pre[t, :, 2 * H:] = dan
            d_hp[t, :, 2 * H:] = dan * r
            dar = dr * r * (1.0 - r)
            daz = dz * z * (1.0 - z)
            d_pre[t, :, :H] = dar
            d_pre[t, :, H:2 * H] = daz
            d_hp[t, :, :2 * H] = d_pre[t, :, :2 * H]
            dh = dh * z + d_hp[t] @ w_hh
        na = ctx.needs_input_grad
        flat = d_hp.reshape(T * B, 3 * H)
        gw = flat.T @ hs[:-1].reshape(T * B, H) if na[2] else None
        gb = flat.sum(axis=0) if ctx.has_bias and na[3] else None
        return _narrow_grads(ctx, d_pre if na[0] else None, dh if na[1] else None, gw, gb)


class LSTMSequence(Function):
    """All T steps of one LSTM direction: (outputs (T, B, H), c_T (B, H))."""

    @staticmethod
    def forward(ctx, x_proj, h0, c0, w_hh, b_hh=None):
        _check("lstm_sequence", x_proj, h0, w_hh, b_hh, 4)
        if c0.shape != h0.shape:
            raise ValueError(f"lstm_sequence: c0 must have h0's shape {tuple(h0.shape)}, got "
                             f"{tuple(c0.shape)}")
        x_proj, h0, c0, w_hh, b_hh = _widen(ctx, [x_proj, h0, c0, w_hh, b_hh])
        xp = xp_of(x_proj)
        T, B, H = x_proj.shape[0], h0.shape[0], h0.shape[1]
        hs = xp.empty((T + 1, B, H), dtype=h0.dtype)
        cs = xp.empty((T + 1, B, H), dtype=h0.dtype)
        gates = xp.empty((T, B, 4 * H), dtype=h0.dtype)   # sigmoid(i, f), tanh(g), sigmoid(o)
        tc = xp.empty((T, B, H), dtype=h0.dtype)          # tanh(c_t)
        hs[0], cs[0] = h0, c0
        wt = w_hh.T
        for t in range(T):
            a = gates[t]
            xp.matmul(hs[t], wt, out=a)
            if b_hh is not None:
                a += b_hh
            a += x_proj[t]
            _sigmoid_(xp, a[:, :2 * H])
            xp.tanh(a[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])
            _sigmoid_(xp, a[:, 3 * H:])
            c = cs[t + 1]
            xp.multiply(a[:, H:2 * H], cs[t], out=c)
            c += a[:, :H] * a[:, 2 * H:3 * H]
            xp.tanh(c, out=tc[t])
            xp.multiply(a[:, 3 * H:], tc[t], out=hs[t + 1])
        ctx.save_for_backward(w_hh)
        ctx.loop = (hs, cs, gates, tc)
        ctx.has_bias = b_hh is not None
        return _narrow_outputs(ctx, hs[1:].copy(), cs[T].copy())

    @staticmethod
    def backward(ctx, g_out, g_c):
        (w_hh,) = ctx.saved_tensors
        hs, cs, gates, tc = ctx.loop
        xp = xp_of(hs)
        T, B, H = tc.shape
        dtype = hs.dtype
        d_pre = xp.empty((T, B, 4 * H), dtype=dtype)
        dh = xp.zeros((B, H), dtype=dtype)
        dc = xp.zeros((B, H), dtype=dtype) if g_c is None else g_c.astype(dtype, copy=True)
        if g_out is not None:
            g_out = g_out.astype(dtype, copy=False)
        for t in range(T - 1, -1, -1):
            if g_out is not None:
                dh += g_out[t]
            a = gates[t]
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            # h = o * tanh(c); c = f * c_prev + i * g
            d = d_pre[t]
            xp.multiply(dh * tc[t], o * (1.0 - o), out=d[:, 3 * H:])
            dc += dh * o * (1.0 - tc[t] * tc[t])
            xp.multiply(dc * g, i * (1.0 - i), out=d[:, :H])
            xp.multiply(dc * cs[t], f * (1.0 - f), out=d[:, H:2 * H])
            xp.multiply(dc * i, 1.0 - g * g, out=d[:, 2 * H:3 * H])
            dc *= f
            dh = d @ w_hh
        na = ctx.needs_input_grad
        flat = d_pre.reshape(T * B, 4 * H)
        gw = flat.T @ hs[:-1].reshape(T * B, H) if na[3] else None
        gb = flat.sum(axis=0) if ctx.has_bias and na[4] else None
        return _narrow_grads(ctx, d_pre if na[0] else None, dh if na[1] else None,
                             dc if na[2] else None, gw, gb)


def gru_sequence(x_proj, h0, w_hh, b_hh=None):
    """The outputs (T, B, H) of a GRU direction over ``x_proj`` (T, B, 3H) = the input
    projection ``x @ W_ih.T + b_ih`` of every step, from ``h0`` (B, H), with the
    hidden-to-hidden weight ``w_hh`` (3H, H) and bias ``b_hh`` (3H,) or None (PyTorch's
    gate order r, z, n). The last output is the final hidden state."""
    return GRUSequence.apply(x_proj, h0, w_hh, b_hh)


def lstm_sequence(x_proj, h0, c0, w_hh, b_hh=None):
    """``(outputs (T, B, H), c_T (B, H))`` of an LSTM direction over ``x_proj`` (T, B, 4H)
    = ``x @ W_ih.T + b_ih`` of every step, from ``h0``, ``c0`` (B, H), with ``w_hh``
    (4H, H) and ``b_hh`` (4H,) or None (PyTorch's gate order i, f, g, o)."""
    return LSTMSequence.apply(x_proj, h0, c0, w_hh, b_hh)
