"""Megatron-LM's tensor-parallel layers: each rank of the tensor-parallel group holds
a slice of the weight and computes a slice of the result.

- ``ColumnParallelLinear``: output features split (weight rows); the input is
  replicated (``copy_to_tp``: its gradient is all-reduced in backward); the output
  stays split unless ``gather_output``.
- ``RowParallelLinear``: input features split (weight columns); the partial products
  are summed with one all-reduce (``reduce_from_tp``); the bias is added once, after.
- ``VocabParallelEmbedding``: rows of the table split; ids outside this rank's rows
  give zeros, and an all-reduce assembles the lookup.
- ``ParallelAttention``: causal self-attention with the heads split across the group
  (q, k, v column-parallel, reading one copy of the input, the output projection
  row-parallel): a forward costs one all-reduce, a backward one.

A column-then-row pair (attention, or an MLP) therefore costs one all-reduce forward
and one backward, Megatron's count. Initialisation draws the *full* matrix with the
unsharded layer's recipe (an ``nn.Linear`` / ``nn.Embedding`` built and sliced, as
Megatron's CPU initialisation does), so with the same seed the shards put together
are exactly the single-process weights. ``from_linear`` / ``from_embedding`` shard an
existing layer (what ``parallelize_module`` uses). ``shard_dims`` says along which dim
each parameter is split (None: replicated), for reassembling full weights.
"""
import numpy as np

from ... import nn
from ...collectives import get_default_group
from ...nn import functional as F
from ..._tensor import from_numpy
from .mappings import copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "ParallelAttention", "shard"]


def _group(group):
    return group if group is not None else get_default_group()


def shard(arr, group, dim):
    """This rank's equal slice of ``arr`` along ``dim`` (a copy)."""
    n = arr.shape[dim]
    if n % group.size:
        raise ValueError(f"size {n} of dim {dim} is not divisible by the tensor-parallel "
                         f"group size {group.size}")
    k = n // group.size
    idx = [slice(None)] * arr.ndim
    idx[dim] = slice(group.rank * k, (group.rank + 1) * k)
    return np.ascontiguousarray(arr[tuple(idx)])


def _param(arr):
    return nn.Parameter(from_numpy(np.array(arr)))


def _full_linear(layer, in_features, out_features, bias, group, _from):
    """Give a tensor-parallel linear ``layer`` its group and feature counts; return the
    full ``nn.Linear`` it shards (``_from``, or a fresh one drawn like PyTorch's)."""
    layer.group = _group(group)
    full = _from if _from is not None else nn.Linear(in_features, out_features, bias)
    layer.in_features, layer.out_features = full.in_features, full.out_features
    return full


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's rows (output features) split over ``group``."""

    def __init__(self, in_features, out_features, bias=True, group=None,
                 gather_output=False, _from=None):
        super().__init__()
        full = _full_linear(self, in_features, out_features, bias, group, _from)
        self.weight = _param(shard(full.weight.array, self.group, 0))
        self.bias = _param(shard(full.bias.array, self.group, 0)) \
            if full.bias is not None else None
        self.gather_output = gather_output
        self.shard_dims = {"weight": 0, "bias": 0}

    @classmethod
    def from_linear(cls, linear, group=None, gather_output=False):
        """Shard an existing ``nn.Linear`` (its weights, not its RNG draws)."""
        return cls(0, 0, group=group, gather_output=gather_output, _from=linear)

    def forward(self, x):
        return self.local(copy_to_tp(x, self.group))

    def local(self, x):
        """The layer on an input already entered with ``copy_to_tp`` (several
        column-parallel layers reading one input share one backward all-reduce)."""
        y = F.linear(x, self.weight, self.bias)
        return gather_from_tp(y, self.group) if self.gather_output else y

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}/{self.group.size}, "
                f"gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's columns (input features) split over ``group``; ``x`` is
    already split (``input_is_parallel``) or is split here."""

    def __init__(self, in_features, out_features, bias=True, group=None,
                 input_is_parallel=True, _from=None):
        super().__init__()
        full = _full_linear(self, in_features, out_features, bias, group, _from)
        self.weight = _param(shard(full.weight.array, self.group, 1))
        self.bias = _param(full.bias.array) if full.bias is not None else None
        self.input_is_parallel = input_is_parallel
        self.shard_dims = {"weight": 1, "bias": None}

    @classmethod
    def from_linear(cls, linear, group=None, input_is_parallel=True):
        return cls(0, 0, group=group, input_is_parallel=input_is_parallel, _from=linear)

    def forward(self, x):
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.group)
        y = reduce_from_tp(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self):
        return f"in={self.in_features}/{self.group.size}, out={self.out_features}"


class VocabParallelEmbedding(nn.Module):
    """An embedding table with its rows (the vocabulary) split over ``group``."""

    def __init__(self, num_embeddings, embedding_dim, group=None, _from=None):
        super().__init__()
        self.group = _group(group)
        full = _from if _from is not None else nn.Embedding(num_embeddings, embedding_dim)
        self.num_embeddings, self.embedding_dim = full.num_embeddings, full.embedding_dim
        self.weight = _param(shard(full.weight.array, self.group, 0))
        self.per_rank = self.num_embeddings // self.group.size
        self.start = self.group.rank * self.per_rank
        self.shard_dims = {"weight": 0}

    @classmethod
    def from_embedding(cls, embedding, group=None):
        return cls(0, 0, group=group, _from=embedding)

    def forward(self, ids):
        a = ids.array if hasattr(ids, "array") else np.asarray(ids)
        local = a - self.start
        inside = (local >= 0) & (local < self.per_rank)
        out = F.embedding(from_numpy(np.where(inside, local, 0)), self.weight)
        if self.group.size > 1:
            out = out * from_numpy(inside[..., None].astype(out.array.dtype))
        return reduce_from_tp(out, self.group)

    def extra_repr(self):
        return f"{self.num_embeddings}/{self.group.size}, {self.embedding_dim}"


class ParallelAttention(nn.Module):
    """Causal multi-head self-attention, heads split across ``group``. Parameters
    ``q_proj``, ``k_proj``, ``v_proj`` (column-parallel) and ``o_proj``
    (row-parallel), drawn in that order as four ``nn.Linear`` would be."""

    def __init__(self, embed_dim, num_heads, group=None, bias=True):
        super().__init__()
        self.group = _group(group)
        if embed_dim % num_heads or num_heads % self.group.size:
            raise ValueError(f"{num_heads} heads must divide embed_dim {embed_dim} and be "
                             f"divisible by the tensor-parallel size {self.group.size}")
        self.head_dim = embed_dim // num_heads
        self.local_heads = num_heads // self.group.size
        g = self.group
        self.q_proj = ColumnParallelLinear(embed_dim, embed_dim, bias, g)
        self.k_proj = ColumnParallelLinear(embed_dim, embed_dim, bias, g)
        self.v_proj = ColumnParallelLinear(embed_dim, embed_dim, bias, g)
        self.o_proj = RowParallelLinear(embed_dim, embed_dim, bias, g)

    def forward(self, x):
        return causal_attention(x, self.q_proj, self.k_proj, self.v_proj, self.o_proj,
                                self.head_dim)


def causal_attention(x, q_proj, k_proj, v_proj, o_proj, head_dim):
    """Causal self-attention of x (B, T, C) with the given projections; the number of
    heads is read from q's width, so the same code runs sharded (local heads) and not."""
    b, t, _ = x.shape

    def heads(y):
        return y.view(b, t, -1, head_dim).transpose(1, 2)  # (B, H, T, hd)
    projs = (q_proj, k_proj, v_proj)
    if all(isinstance(p, ColumnParallelLinear) and not p.gather_output for p in projs):
        # one copy of x into the tp region for q, k and v (Megatron's fused QKV): their
        # input gradients add up locally and cost one all-reduce, not three
        xc = copy_to_tp(x, q_proj.group)
        q, k, v = (heads(p.local(xc)) for p in projs)
    else:
        q, k, v = (heads(p(x)) for p in projs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return o_proj(y.transpose(1, 2).reshape(b, t, -1))
