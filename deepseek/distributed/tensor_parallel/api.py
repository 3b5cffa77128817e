"""``parallelize_module``: shard an existing model's layers in place (PyTorch's
tensor-parallel API shape).

    plan = {"*.attn.q_proj": ColwiseParallel(), "*.attn.o_proj": RowwiseParallel(),
            "*.mlp.fc1": ColwiseParallel(), "*.mlp.fc2": RowwiseParallel(),
            "0.tok": RowwiseParallel(),               # an Embedding: vocabulary rows
            "6.lm_head": ColwiseParallel()}           # sharded logits
    parallelize_module(model, mesh["tp"], plan)

Keys are module names as ``named_modules`` gives them, with ``fnmatch`` wildcards.
``ColwiseParallel`` turns an ``nn.Linear`` into a ``ColumnParallelLinear`` (output
sharded unless ``gather_output``); ``RowwiseParallel`` an ``nn.Linear`` into a
``RowParallelLinear`` (input sharded unless ``input_is_parallel=False``) and an
``nn.Embedding`` into a ``VocabParallelEmbedding``. The shards are slices of the
existing weights, so a model built with the same seed on every rank is split exactly.
Modules that compute from shapes (attention reading its head count from q's width)
then run on the local shard unchanged.
"""
import fnmatch

from ... import nn
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

__all__ = ["parallelize_module", "ColwiseParallel", "RowwiseParallel"]


class _ParallelStyle:
    """How a plan entry shards a module: ``_converters()`` lists (nn class, function of
    (module, group) returning its tensor-parallel version); the first class that the
    module is an instance of decides."""

    def _converters(self):
        raise NotImplementedError

    def apply(self, module, group):
        """The tensor-parallel version of ``module`` over ``group``."""
        converters = self._converters()
        for kind, convert in converters:
            if isinstance(module, kind):
                return convert(module, group)
        kinds = " or ".join(f"nn.{kind.__name__}" for kind, _ in converters)
        raise TypeError(f"{type(self).__name__} applies to {kinds}, not {type(module).__name__}")


class ColwiseParallel(_ParallelStyle):
    """Split an ``nn.Linear``'s output features."""

    def __init__(self, gather_output=False):
        self.gather_output = gather_output

    def _converters(self):
        return [(nn.Linear, lambda m, g: ColumnParallelLinear.from_linear(m, g, self.gather_output))]


class RowwiseParallel(_ParallelStyle):
    """Split an ``nn.Linear``'s input features, or an ``nn.Embedding``'s rows."""

    def __init__(self, input_is_parallel=True):
        self.input_is_parallel = input_is_parallel

    def _converters(self):
        return [(nn.Linear, lambda m, g: RowParallelLinear.from_linear(m, g, self.input_is_parallel)),
                (nn.Embedding, VocabParallelEmbedding.from_embedding)]


def parallelize_module(module, device_mesh, parallelize_plan):
    """Replace the submodules of ``module`` named by ``parallelize_plan``'s keys with
    their tensor-parallel versions over ``device_mesh`` (the tp ProcessGroup, e.g.
    ``mesh["tp"]``). Returns ``module``. A key matching nothing is an error."""
    group = device_mesh
    if hasattr(device_mesh, "get_group") and not hasattr(device_mesh, "allreduce"):
        group = device_mesh.get_group()
    names = [n for n, _ in module.named_modules() if n]
    for pattern, style in parallelize_plan.items():
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise KeyError(f"parallelize_module: {pattern!r} matches no submodule")
        for name in hits:
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, style.apply(getattr(parent, attr), group))
    return module
