"""``deepseek.cuda``: the ``torch.cuda`` names PyTorch programs call, answered truthfully.

deepseek runs on the GPU through CuPy; without CuPy (or without a visible GPU)
``is_available()`` is False and ``device_count()`` is 0, exactly as ``torch.cuda``
answers on a CPU-only machine, so ``device = 'cuda' if torch.cuda.is_available() else
'cpu'`` picks the CPU. Seeding: deepseek draws every random number on the CPU from one
generator per stream and moves it to the device (``deepseek.random``), so
``manual_seed``/``manual_seed_all`` seed that default stream.
"""
from .. import backend as _backend

__all__ = ["is_available", "device_count", "current_device", "set_device", "get_device_name",
           "get_device_capability", "get_device_properties", "synchronize", "manual_seed",
           "manual_seed_all", "seed", "seed_all", "initial_seed", "is_bf16_supported",
           "empty_cache", "memory_allocated", "max_memory_allocated", "memory_reserved",
           "max_memory_reserved", "reset_peak_memory_stats", "is_initialized", "init", "device",
           "amp", "Event", "Stream", "current_stream", "stream"]


# the cupy module, or None without CuPy (deepseek.backend does the one import of it)
_cupy = _backend.cupy_module


def is_available():
    """True when CuPy is installed and sees at least one GPU."""
    return _backend.cupy_available()


def device_count():
    """Number of visible GPUs (0 without CuPy)."""
    return _backend.device_count()


def is_initialized():
    """True when a GPU is usable (deepseek initialises CUDA lazily through CuPy)."""
    return is_available()


def init():
    """Initialise CUDA; raises RuntimeError (as PyTorch does) when no GPU is usable."""
    _require("init")


def _require(what):
    if not is_available():
        raise RuntimeError(f"torch.cuda.{what}: no CUDA GPUs are available to deepseek "
                           "(CuPy is not installed or sees no device)")


def current_device():
    """Index of the current GPU."""
    _require("current_device")
    return int(_cupy().cuda.runtime.getDevice())


def set_device(device):
    """Make GPU ``device`` (an int, 'cuda:N' or a deepseek.device) current."""
    if isinstance(device, str) or isinstance(device, _backend.Device):
        device = _backend.Device(device).index or 0
    _backend.set_device(int(device))


def _index(device):
    if device is None:
        return current_device()
    if isinstance(device, (str, _backend.Device)):
        return _backend.Device(device).index or 0
    return int(device)


def get_device_properties(device=None):
    """The GPU's properties (CuPy's dict, with ``name``, ``total_memory``, ``major``, ``minor``)."""
    _require("get_device_properties")
    p = dict(_cupy().cuda.runtime.getDeviceProperties(_index(device)))
    name = p.get("name", b"")
    p["name"] = name.decode() if isinstance(name, bytes) else str(name)
    p.setdefault("total_memory", p.get("totalGlobalMem"))

    class _Props(dict):
        __getattr__ = dict.__getitem__
    return _Props(p)


def get_device_name(device=None):
    """The GPU's name."""
    return get_device_properties(device)["name"]


def get_device_capability(device=None):
    """(major, minor) compute capability of the GPU."""
    p = get_device_properties(device)
    return int(p["major"]), int(p["minor"])


def is_bf16_supported(including_emulation=True):
    """True when a GPU is available that computes in bfloat16 (compute capability >= 8.0).

    Without a GPU this is False, as ``torch.cuda.is_bf16_supported`` answers."""
    if not is_available():
        return False
    return get_device_capability()[0] >= 8 or bool(including_emulation)


def synchronize(device=None):
    """Wait for all work queued on the GPU; nothing to wait for on the CPU."""
    if is_available():
        _cupy().cuda.Device(_index(device)).synchronize()


def manual_seed(seed):
    """Seed the random stream GPU tensors are drawn from (deepseek's default generator:
    numbers are drawn on the CPU and moved, so CPU and GPU draws share it)."""
    from ..random import manual_seed as _ms
    _ms(int(seed))


manual_seed_all = manual_seed


def seed():
    """Reseed the default stream from OS entropy."""
    from ..random import seed as _seed
    return _seed()


seed_all = seed


def initial_seed():
    """The seed of the default stream."""
    from ..random import initial_seed as _is
    return _is()


def _mempool():
    return _cupy().get_default_memory_pool() if is_available() else None


def empty_cache():
    """Return cached, unused GPU memory to the driver (CuPy's memory pool)."""
    pool = _mempool()
    if pool is not None:
        pool.free_all_blocks()


def memory_allocated(device=None):
    """Bytes of GPU memory held by live arrays (0 without a GPU)."""
    pool = _mempool()
    return int(pool.used_bytes()) if pool is not None else 0


def memory_reserved(device=None):
    """Bytes of GPU memory the caching pool holds (0 without a GPU)."""
    pool = _mempool()
    return int(pool.total_bytes()) if pool is not None else 0


_peak = {"allocated": 0, "reserved": 0}


def max_memory_allocated(device=None):
    """Largest ``memory_allocated`` seen by this call or earlier ones since the last reset
    (CuPy keeps no peak counter: this one is sampled)."""
    _peak["allocated"] = max(_peak["allocated"], memory_allocated(device))
    return _peak["allocated"]


def max_memory_reserved(device=None):
    """Largest ``memory_reserved`` sampled since the last reset."""
    _peak["reserved"] = max(_peak["reserved"], memory_reserved(device))
    return _peak["reserved"]


def reset_peak_memory_stats(device=None):
    """Reset the sampled peaks."""
    _peak["allocated"] = _peak["reserved"] = 0


class device:
    """Context manager that makes GPU ``index`` current inside the block."""

    def __init__(self, index):
        self.index = _index(index) if index is not None else None
        self._prev = None

    def __enter__(self):
        if self.index is not None and is_available():
            self._prev = current_device()
            set_device(self.index)
        return self

    def __exit__(self, *exc):
        if self._prev is not None:
            set_device(self._prev)
        return False


class Stream:
    """A CUDA stream (CuPy's); on a machine without a GPU, creating one raises."""

    def __new__(cls, device=None, priority=0):
        _require("Stream")
        return _cupy().cuda.Stream(non_blocking=True)


class Event:
    """A CUDA event (CuPy's), with ``record``/``synchronize``/``elapsed_time``."""

    def __new__(cls, enable_timing=False, blocking=False, interprocess=False):
        _require("Event")
        return _cupy().cuda.Event(block=blocking, disable_timing=not enable_timing)


def current_stream(device=None):
    """The current CUDA stream."""
    _require("current_stream")
    return _cupy().cuda.get_current_stream()


def stream(s):
    """Context manager running the block on stream ``s`` (no-op for None)."""
    import contextlib
    return s if s is not None else contextlib.nullcontext()


from . import amp  # noqa: E402  (after the names amp may use)
