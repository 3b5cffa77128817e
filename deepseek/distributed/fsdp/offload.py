"""CPUOffload: ZeRO-Offload of the optimizer's side of FSDP (PyTorch's
``torch.distributed.fsdp.CPUOffload`` name).

``cpu_offload=CPUOffload(offload_params=False)``: the sharded fp32 master parameters
(the flat parameters the optimizer is built on), their gradients and so every
optimizer state are host arrays; the gathered full parameters and the full
gradients stay where the module computes. Each all-gather sends a device copy of
the host shard, each reduce-scatter's shard comes back into the host gradient, and
the optimizer steps on the host (the native fused Adam). The copies go through the
one backend switch (``deepseek.backend.to_device``): on the CPU they are copies on
the same device and the results equal no offload exactly.

Note the meaning differs from PyTorch's, where ``offload_params=False`` offloads
nothing: here the optimizer side always moves (that is what ZeRO-Offload is), and
``offload_params=True`` -- the full parameters on the host between uses too --
is not supported.
"""
from dataclasses import dataclass

__all__ = ["CPUOffload", "offload_of"]


@dataclass
class CPUOffload:
    """``offload_params`` must stay False (see the module docstring)."""
    offload_params: bool = False


def offload_of(cpu_offload):
    """True when ``cpu_offload`` asks for the optimizer side on the host; a clear
    error for what is not supported."""
    if cpu_offload is None or cpu_offload is False:
        return False
    if not isinstance(cpu_offload, CPUOffload):
        raise TypeError("cpu_offload must be None or a fsdp.CPUOffload, got "
                        f"{cpu_offload!r}")
    if cpu_offload.offload_params:
        raise NotImplementedError("CPUOffload(offload_params=True): the full parameters "
                                  "on the host between uses are not supported; "
                                  "CPUOffload(offload_params=False) puts the master "
                                  "shards and the optimizer state there")
    return True
