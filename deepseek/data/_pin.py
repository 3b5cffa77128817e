"""``pin_memory=True``: batches reach the GPU while the previous step computes.

Each CPU array of a batch is copied into pinned (page-locked) host memory, then to
the device on a side stream, one batch ahead of the one the loop is using; before a
batch is yielded the loop's current stream waits for its copies (an event, no host
sync). On a machine without a GPU (or cupy) batches are yielded as they are, like
PyTorch's pin_memory without an accelerator. ``pin_memory_device`` ("cuda:N") picks
the GPU; default: the current one.
"""
import numpy as np

from ._nested import map_nested


def pin_iter(inner, device=""):
    """Batches of ``inner``, their arrays moved to the GPU (see the module)."""
    from ..backend import cupy_available, cupy_module
    if not cupy_available():
        yield from inner
        return
    cupy = cupy_module()
    dev = cupy.cuda.Device(int(device.split(":")[1]) if ":" in str(device) else
                           cupy.cuda.Device().id)
    with dev:
        stream = cupy.cuda.Stream(non_blocking=True)
    prev = None
    try:
        for batch in inner:
            with dev:
                keep = []
                staged = _to_device(batch, stream, keep, cupy)
                event = stream.record()
            if prev is not None:
                cupy.cuda.get_current_stream().wait_event(prev[1])
                yield prev[0]
                prev[1].synchronize()   # its pinned buffers may now be reused
            prev = (staged, event, keep)
        if prev is not None:
            cupy.cuda.get_current_stream().wait_event(prev[1])
            yield prev[0]
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


def _to_device(batch, stream, keep, cupy):
    """``batch`` with its CPU arrays (and Tensors) copied to the GPU on ``stream``."""
    from .._tensor import Tensor
    from ..backend import empty_pinned

    def leaf(x):
        if isinstance(x, Tensor):
            return Tensor._make(leaf(x._data))
        if not isinstance(x, np.ndarray):
            return x
        pinned = empty_pinned(x.shape, x.dtype)
        np.copyto(pinned, x)
        out = cupy.empty(x.shape, x.dtype)
        out.set(pinned, stream=stream)
        keep.append(pinned)   # the host buffer must outlive the asynchronous copy
        return out
    return map_nested(batch, leaf)
