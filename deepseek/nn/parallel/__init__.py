"""``deepseek.nn.parallel``: PyTorch's location of DistributedDataParallel, an alias of
``deepseek.distributed.DistributedDataParallel`` (loaded on first use, so importing
nn does not pull in the distributed layer)."""

__all__ = ["DistributedDataParallel", "DataParallel"]


def __getattr__(name):
    if name == "DistributedDataParallel":
        from ...distributed import DistributedDataParallel
        return DistributedDataParallel
    if name == "DataParallel":
        from .data_parallel import DataParallel
        return DataParallel
    raise AttributeError(f"module 'deepseek.nn.parallel' has no attribute {name!r}")
