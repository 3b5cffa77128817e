"""The one backend switch: numpy on CPU, cupy on CUDA.

Every op asks ``get_array_module(array)`` for the array library instead of testing
for cupy itself (Chainer's pattern), so the same op code runs on both devices. New
arrays for a device come from ``array_module(device)`` / ``allocate(device, make)``,
and the few calls numpy and cupy spell differently (``np.add.at`` is
``cupyx.scatter_add`` on older cupy) are wrapped here: this is the only module that
imports cupy (tests/test_backend_switch.py checks it).
"""
import numpy as np

try:  # cupy is optional; importing it is the only place that knows it may be absent
    import cupy as _cupy  # type: ignore
except Exception:  # pragma: no cover - no CUDA here
    _cupy = None


def cupy_module():
    """The cupy module when it imports, else None: device code (streams, events, pinned
    memory, device properties) asks here instead of importing cupy itself."""
    return _cupy


def cudnn_module():
    """cupy's cuDNN bindings (``cupy.cuda.cudnn``), or None when cupy or cuDNN is missing."""
    if _cupy is None:
        return None
    try:
        import cupy.cuda.cudnn as cudnn  # noqa: PLC0415  (loads libcudnn: only when asked)
    except Exception:
        return None
    return cudnn


def empty_pinned(shape, dtype):
    """An uninitialised numpy array in page-locked host memory (for asynchronous copies
    to the GPU); needs cupy."""
    if _cupy is None:
        raise RuntimeError("pinned memory needs cupy (pip install 'deepseek[cuda]')")
    import cupyx  # noqa: PLC0415  (ships with cupy)
    return cupyx.empty_pinned(shape, dtype)


def cupy_available():
    """True when cupy imports and sees at least one GPU."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def on_device(array):
    """True when ``array`` is a cupy (GPU) array."""
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def device_event():
    """A timing CUDA event recorded now on the current device's current stream: the
    device reaches it once the work queued before it is done (the profiler's device
    time). Needs cupy."""
    if _cupy is None:
        raise RuntimeError("device_event: cupy is not installed (pip install 'deepseek[cuda]')")
    ev = _cupy.cuda.Event()
    # named: old cupy records on the null stream when none is given
    ev.record(_cupy.cuda.get_current_stream())
    return ev


def event_elapsed_ns(start, end):
    """Device time in ns from event ``start`` to event ``end`` (both of
    :func:`device_event`, of one device); waits for ``end`` to be reached."""
    end.synchronize()
    return int(_cupy.cuda.get_elapsed_time(start, end) * 1e6)


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the first cupy array among ``arrays``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def array_module(device=None):
    """numpy for a CPU device (or ``None``), cupy for a CUDA one: the library that makes
    new arrays on ``device``. A clear error when cupy is missing."""
    if device is None or Device(device).type == "cpu":
        return np
    if _cupy is None:
        raise RuntimeError(f"device {device} requested but cupy is not installed "
                           "(pip install 'deepseek[cuda]')")
    return _cupy


def allocate(device, make):
    """``make(xp)`` with ``xp`` the array library of ``device`` and that GPU current, so a
    new array is created where it will live (no host array and a copy)."""
    xp = array_module(device)
    if xp is np:
        return make(np)
    with _cupy.cuda.Device(Device(device).index):
        return make(xp)


def ufunc_at(ufunc, out, index, values):
    """``out[index] <ufunc>= values`` unbuffered, repeated indices applied once each
    (``np.add.at``) on numpy or cupy; ``ufunc`` is its name (``"add"``, ``"multiply"``).

    cupy >= 13 has ``add/maximum/minimum.at``; older cupy only ``cupyx.scatter_add``;
    a ufunc cupy cannot do unbuffered (``multiply``) runs on the host and is copied back.
    """
    xp = get_array_module(out)
    if xp is np:
        getattr(np, ufunc).at(out, index, values)
        return out
    fn = getattr(getattr(_cupy, ufunc), "at", None)
    if fn is not None:
        try:
            fn(out, index, values)
            return out
        except (NotImplementedError, TypeError):
            pass
    if ufunc == "add":
        import cupyx  # noqa: PLC0415  (only with cupy, which ships it)
        cupyx.scatter_add(out, index, values)
        return out
    host = _cupy.asnumpy(out)
    host_index = tuple(_cupy.asnumpy(i) if isinstance(i, _cupy.ndarray) else i
                       for i in index) if isinstance(index, tuple) else (
        _cupy.asnumpy(index) if isinstance(index, _cupy.ndarray) else index)
    getattr(np, ufunc).at(host, host_index, _cupy.asnumpy(values)
                          if isinstance(values, _cupy.ndarray) else values)
    out[...] = _cupy.asarray(host)
    return out


def scatter_add(out, index, values):
    """``out[index] += values`` with repeated indices summed (``np.add.at``), on numpy or
    cupy. Returns ``out``."""
    return ufunc_at("add", out, index, values)


def special_erf(xp):
    """The ``erf`` of cupy's scipy-compatible special functions, or None (numpy callers
    use scipy themselves; cupyx.scipy needs a CUDA toolkit)."""
    if xp is np or _cupy is None:
        return None
    try:
        from cupyx.scipy.special import erf  # noqa: PLC0415
    except Exception:  # pragma: no cover - depends on the CUDA install
        return None
    return erf


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
