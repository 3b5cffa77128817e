"""``deepseek.accelerator``: PyTorch's device-agnostic accelerator API
(``torch.accelerator``), answered for deepseek's one accelerator kind, CUDA via CuPy."""
from . import cuda as _cuda


def is_available():
    """True when a GPU is usable."""
    return _cuda.is_available()


def current_accelerator(check_available=False):
    """``deepseek.device('cuda')`` when CuPy is installed (and, with
    ``check_available``, a GPU is visible), else None."""
    from .backend import Device, _cupy
    if _cupy is None or (check_available and not is_available()):
        return None
    return Device("cuda")


def device_count():
    """Number of visible GPUs."""
    return _cuda.device_count()


def current_device_index():
    """Index of the current GPU."""
    return _cuda.current_device()


current_device_idx = current_device_index


def set_device_index(device):
    """Make GPU ``device`` current."""
    _cuda.set_device(device)


set_device_idx = set_device_index


def synchronize(device=None):
    """Wait for the GPU's queued work."""
    _cuda.synchronize(device)
