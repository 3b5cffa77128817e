"""FullyShardedDataParallel (ZeRO-2/3) and its wrap policies (PyTorch's
``torch.distributed.fsdp`` names). ``fully_sharded.py`` is the module and its
per-iteration hooks, ``flat_param.py`` the sharded flat parameters of one unit,
``wrap.py`` the auto-wrap policies, ``_memory.py`` the releasable gathered buffers,
``sharded_grad_scaler.py`` the GradScaler whose skip decision every rank shares,
``mixed_precision.py`` the gradients' wire dtype, ``offload.py`` CPUOffload (the
optimizer side on the host)."""
from .fully_sharded import BackwardPrefetch, FullyShardedDataParallel, ShardingStrategy
from .mixed_precision import MixedPrecision
from .offload import CPUOffload
from .sharded_grad_scaler import ShardedGradScaler
from .wrap import ModuleWrapPolicy, size_based_auto_wrap_policy

FSDP = FullyShardedDataParallel

__all__ = ["FullyShardedDataParallel", "FSDP", "ShardingStrategy", "BackwardPrefetch",
           "ModuleWrapPolicy", "size_based_auto_wrap_policy", "ShardedGradScaler",
           "MixedPrecision", "CPUOffload"]
