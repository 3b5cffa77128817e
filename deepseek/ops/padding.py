"""pad (constant, reflect, replicate, circular) and one_hot."""
import numpy as np

from ..autograd.function import Function
from .._tensor import Tensor
from ._util import xp_of


class ConstantPad(Function):
    """Pad (or, with negative amounts, crop) trailing dims with a constant."""

    @staticmethod
    def forward(ctx, x, pads, value=0.0):
        xp = xp_of(x)
        nd = len(pads)
        lead = x.ndim - nd
        shape = x.shape[:lead] + tuple(s + l + r for s, (l, r) in zip(x.shape[lead:], pads))
        if any(s < 0 for s in shape):
            raise RuntimeError(f"pad: padding {pads} makes a negative size for input of shape "
                               f"{tuple(x.shape)}")
        out = xp.full(shape, value, dtype=x.dtype)
        src = (Ellipsis,) + tuple(slice(max(0, -l), s - max(0, -r)) for s, (l, r) in zip(x.shape[lead:], pads))
        dst = (Ellipsis,) + tuple(slice(max(0, l), max(0, l) + (s - max(0, -l) - max(0, -r)))
                                  for s, (l, r) in zip(x.shape[lead:], pads))
        out[dst] = x[src]
        ctx.src, ctx.dst, ctx.shape = src, dst, x.shape
        return out

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        gx = xp.zeros(ctx.shape, dtype=g.dtype)
        gx[ctx.src] = g[ctx.dst]
        return gx


def _pad_index(L, l, r, mode):
    i = np.arange(-l, L + r)
    if mode == "reflect":
        if l >= L or r >= L:
            raise RuntimeError(f"pad: padding ({l}, {r}) should be smaller than the input size {L} "
                               "in reflect mode")
        period = 2 * (L - 1) if L > 1 else 1
        i = np.abs(i) % period
        i = np.where(i >= L, period - i, i)
    elif mode == "replicate":
        i = np.clip(i, 0, L - 1)
    elif mode == "circular":
        if l > L or r > L:
            raise RuntimeError(f"pad: padding ({l}, {r}) should be at most the input size {L} in "
                               "circular mode")
        i = i % L
    return i


class IndexPad(Function):
    """reflect / replicate / circular padding as a gather along each padded dim."""

    @staticmethod
    def forward(ctx, x, pads, mode):
        from .embedding import index_add_rows  # noqa: F401
        xp = xp_of(x)
        nd = len(pads)
        lead = x.ndim - nd
        idxs = []
        out = x
        for d, (l, r) in enumerate(pads):
            ax = lead + d
            idx = xp.asarray(_pad_index(x.shape[ax], l, r, mode))
            idxs.append((ax, idx, out.shape[ax]))
            out = xp.take(out, idx, axis=ax)
        ctx.idxs = idxs
        return out

    @staticmethod
    def backward(ctx, g):
        from .embedding import index_add_rows
        xp = xp_of(g)
        for ax, idx, L in reversed(ctx.idxs):
            gm = xp.moveaxis(g, ax, 0)
            acc = xp.zeros((L,) + gm.shape[1:], dtype=g.dtype)
            index_add_rows(xp, acc, idx, gm)
            g = xp.moveaxis(acc, 0, ax)
        return g


def pad(input, pad, mode="constant", value=None):
    """Pad the last len(pad)//2 dims: pad = (left_last, right_last, left_prev, right_prev, ...)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"pad: expected a Tensor input, got {type(input).__name__}")
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: padding length must be even and at most 2 * ndim "
                         f"({2 * input.ndim}), got {len(pad)} values for input of shape "
                         f"{tuple(input.shape)}")
    nd = len(pad) // 2
    pairs = tuple((pad[2 * (nd - 1 - i)], pad[2 * (nd - 1 - i) + 1]) for i in range(nd))
    if mode == "constant":
        return ConstantPad.apply(input, pairs, value=0.0 if value is None else value)
    if mode not in ("reflect", "replicate", "circular"):
        raise ValueError(f"pad: unknown mode {mode!r}; expected 'constant', 'reflect', "
                         "'replicate' or 'circular'")
    if any(l < 0 or r < 0 for l, r in pairs):
        # negative padding crops first; the rest pads the cropped input (PyTorch's order)
        from .indexing import getitem
        lead = input.ndim - nd
        input = getitem(input, (slice(None),) * lead + tuple(
            slice(-min(l, 0), input.shape[lead + i] + min(r, 0)) for i, (l, r) in enumerate(pairs)))
        pairs = tuple((max(l, 0), max(r, 0)) for l, r in pairs)
    return IndexPad.apply(input, pairs, mode)


def one_hot(tensor, num_classes=-1):
    """int64 one-hot encoding with a trailing class dim."""
    idx = tensor._data if isinstance(tensor, Tensor) else np.asarray(tensor)
    if idx.dtype.kind not in "iu":
        raise RuntimeError(f"one_hot is only applicable to index tensors of integer dtype, got "
                           f"dtype {idx.dtype}")
    xp = xp_of(idx)
    if num_classes == -1:
        num_classes = int(idx.max()) + 1 if idx.size else 0
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise RuntimeError(f"one_hot: class values must be in [0, {num_classes}), got values in "
                           f"[{int(idx.min())}, {int(idx.max())}]")
    out = (idx[..., None] == xp.arange(num_classes)).astype(np.int64)
    return Tensor._make(out)
