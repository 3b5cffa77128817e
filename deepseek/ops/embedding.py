"""embedding: row lookup with a scatter-add gradient (sort + segmented sum)."""
import numpy as np

from ..autograd.function import Function
from ..autograd.grad_mode import no_grad
from ..backend import scatter_add
from .._tensor import Tensor
from ._util import xp_of


def index_add_rows(xp, out, idx, src, mean_by_count=False):
    """out[idx[i]] += src[i] for a 1-D index (duplicates summed), vectorised."""
    if idx.size == 0:
        return out
    if hasattr(xp.add, "reduceat"):
        order = xp.argsort(idx, kind="stable")
        s = idx[order]
        starts = xp.flatnonzero(xp.concatenate((xp.ones(1, bool), s[1:] != s[:-1])))
        sums = xp.add.reduceat(src[order], starts, axis=0)
        if mean_by_count:
            counts = xp.diff(xp.append(starts, s.size))
            sums /= counts.reshape((-1,) + (1,) * (sums.ndim - 1)).astype(sums.dtype)
        out[s[starts]] += sums
        return out
    if mean_by_count:
        counts = xp.bincount(idx, minlength=out.shape[0])
        src = src / counts[idx].reshape((-1,) + (1,) * (src.ndim - 1)).astype(src.dtype)
    scatter_add(out, idx, src)     # cupy has no add.reduceat
    return out


class Embedding(Function):
    @staticmethod
    def forward(ctx, weight, idx, padding_idx=None, scale_grad_by_freq=False):
        xp = xp_of(weight)
        ctx.idx, ctx.wshape = idx, weight.shape
        ctx.padding_idx, ctx.freq = padding_idx, scale_grad_by_freq
        return xp.take(weight, idx, axis=0)

    @staticmethod
    def backward(ctx, g):
        xp = xp_of(g)
        V, D = ctx.wshape
        gw = xp.zeros((V, D), dtype=g.dtype)
        index_add_rows(xp, gw, ctx.idx.reshape(-1), g.reshape(-1, D), ctx.freq)
        if ctx.padding_idx is not None:
            gw[ctx.padding_idx] = 0
        return gw, None


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False):
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``input``."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"embedding: expected a Tensor weight, got {type(weight).__name__}")
    idx = input._data if isinstance(input, Tensor) else np.asarray(input)
    if idx.dtype.kind not in "iu":
        raise RuntimeError(f"embedding: expected indices of integer dtype (int64 or int32), got "
                           f"dtype {idx.dtype}; convert them with .long()")
    if weight.ndim != 2:
        raise RuntimeError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got "
                           f"shape {tuple(weight.shape)}")
    V = weight.shape[0]
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= V:
            raise IndexError(f"embedding: index {lo if lo < 0 else hi} is out of range for an "
                             f"embedding table of {V} rows (valid indices are 0..{V - 1})")
    if padding_idx is not None:
        if not -V <= padding_idx < V:
            raise ValueError(f"embedding: padding_idx {padding_idx} must be within [-{V}, {V})")
        padding_idx = padding_idx % V
    if sparse:
        raise NotImplementedError("embedding: sparse gradients are not supported; use sparse=False")
    if max_norm is not None:
        _renorm_rows(weight, idx, float(max_norm), float(norm_type))
    return Embedding.apply(weight, idx, padding_idx=padding_idx,
                           scale_grad_by_freq=scale_grad_by_freq)


def _renorm_rows(weight, idx, max_norm, norm_type):
    """Rescale (in place, without gradient) the rows used whose norm exceeds max_norm."""
    xp = xp_of(weight._data)
    rows = xp.unique(idx.reshape(-1))
    with no_grad():
        w = weight._data
        sel = w[rows]
        norms = (xp.abs(sel) ** norm_type).sum(axis=1) ** (1.0 / norm_type)
        scale = xp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(w.dtype)
        w[rows] = sel * scale[:, None]
        weight._bump_version()
