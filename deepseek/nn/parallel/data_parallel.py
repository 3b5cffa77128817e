"""``nn.DataParallel`` for one process: deepseek runs one device per process (use
DistributedDataParallel with ``deepseek-run`` for several), so it wraps the module and
calls it unchanged, as PyTorch's DataParallel does with a single device."""
from ..module import Module


class DataParallel(Module):
    """Wraps ``module`` (``.module``) and forwards calls to it."""

    def __init__(self, module, device_ids=None, output_device=None, dim=0):
        super().__init__()
        if device_ids is not None and len(device_ids) > 1:
            raise RuntimeError("DataParallel over several devices is not supported by deepseek: "
                               "run one process per device with deepseek-run and use "
                               "nn.parallel.DistributedDataParallel")
        self.module = module
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)
