"""deepseek.distributed.tensor_parallel: Megatron-LM's tensor-parallel layers.

``mappings`` (the conjugate copy/reduce and gather/scatter moves), ``layers``
(``ColumnParallelLinear``, ``RowParallelLinear``, ``VocabParallelEmbedding``,
``ParallelAttention``), ``loss`` (``vocab_parallel_cross_entropy``) and ``api``
(``parallelize_module`` with ``ColwiseParallel`` / ``RowwiseParallel``).
"""
from .mappings import copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp
from .layers import (ColumnParallelLinear, ParallelAttention, RowParallelLinear,
                     VocabParallelEmbedding, causal_attention, shard)
from .loss import vocab_parallel_cross_entropy
from .api import ColwiseParallel, RowwiseParallel, parallelize_module

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "ParallelAttention", "causal_attention", "vocab_parallel_cross_entropy",
           "parallelize_module", "ColwiseParallel", "RowwiseParallel", "copy_to_tp",
           "reduce_from_tp", "gather_from_tp", "scatter_to_tp", "shard"]
