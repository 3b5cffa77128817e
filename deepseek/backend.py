"""The one backend switch: numpy on CPU, cupy on CUDA.

Every op asks ``get_array_module(array)`` for the array library instead of testing
for cupy itself (Chainer's pattern), so the same op code runs on both devices.
"""
import numpy as np

try:  # cupy is optional; importing it is the only place that knows it may be absent
    import cupy as _cupy  # type: ignore
except Exception:  # pragma: no cover - no CUDA here
    _cupy = None


def cupy_available():
    """True when cupy imports and sees at least one GPU."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the first cupy array among ``arrays``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


class Device:
    """A device: ``cpu`` or ``cuda:N``. Compares equal to its string form."""

    __slots__ = ("type", "index")

    def __init__(self, spec="cpu", index=None):
        if isinstance(spec, Device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.partition(":")
        if kind not in ("cpu", "cuda", "gpu"):
            raise ValueError(f"unknown device {spec!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        self.type = "cuda" if kind in ("cuda", "gpu") else "cpu"
        if idx:
            index = int(idx)
        self.index = (index or 0) if self.type == "cuda" else None

    def __str__(self):
        return self.type if self.type == "cpu" else f"cuda:{self.index}"

    def __repr__(self):
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = Device(other)
            except (ValueError, TypeError):
                return False
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self):
        return hash((self.type, self.index))


CPU = Device("cpu")


def writeable(array):
    """True when ``array`` may be written in place without touching other data.

    numpy says so in its flags. cupy has no read-only arrays but does make broadcast
    views (zero strides), so a cupy array counts as writeable when it is C-contiguous.
    """
    flags = array.flags
    return flags.writeable if hasattr(flags, "writeable") else flags.c_contiguous


def device_of(array):
    """The Device an array lives on."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return Device("cuda", array.device.id)
    return CPU


def to_device(array, device):
    """Move ``array`` to ``device`` (no copy when it is already there)."""
    device = Device(device)
    if device.type == "cpu":
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            return _cupy.asnumpy(array)
        return array
    if _cupy is None:
        raise RuntimeError(f"device {device} requested but cupy is not installed "
                           "(pip install 'deepseek[cuda]')")
    with _cupy.cuda.Device(device.index):
        return _cupy.asarray(array)


def device_count():
    """How many CUDA GPUs are visible (0 without cupy)."""
    if _cupy is None:
        return 0
    try:
        return int(_cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def set_device(index):
    """Make GPU ``index`` the current device of this process (what new arrays use)."""
    if _cupy is None:
        raise RuntimeError("set_device: cupy is not installed (pip install 'deepseek[cuda]')")
    _cupy.cuda.Device(int(index)).use()
