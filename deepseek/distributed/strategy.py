"""Strategies: how the Trainer spreads a model over workers."""
from dataclasses import dataclass


@dataclass
class DDPStrategy:
    """Data parallelism with DistributedDataParallel (see its docstring for the knobs)."""

    compression: str = None
    overlap_comm: bool = True
    bucket_cap_mb: float = 25
    find_unused_parameters: bool = False
    broadcast_buffers: bool = True

    def wrap(self, module, process_group=None):
        """Wrap ``module`` in DistributedDataParallel with these settings."""
        from .ddp import DistributedDataParallel
        return DistributedDataParallel(
            module, bucket_cap_mb=self.bucket_cap_mb, compression=self.compression,
            overlap_comm=self.overlap_comm, broadcast_buffers=self.broadcast_buffers,
            find_unused_parameters=self.find_unused_parameters, process_group=process_group)
