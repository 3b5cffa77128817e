"""Tensor factories: zeros ones full arange linspace eye empty *_like, random draws.

Constant factories make their array on the target device (``backend.allocate``).
Random draws come from the one numpy stream of ``deepseek.random`` on the host and are
copied, so a seed gives the same numbers on every device.
"""
import numpy as np

from .. import dtypes as _dt
from ..backend import allocate, to_device
from ..random import _rng
from .._tensor import Tensor


def _shape(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for s in size:
        if not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"sizes must be non-negative integers, got {list(size)}")
    return tuple(int(s) for s in size)


def _finish(arr, device, requires_grad):
    if device is not None:
        arr = to_device(arr, device)
    t = Tensor._make(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _made(device, requires_grad, make):
    """A Tensor of the array ``make(xp)`` creates with the array library of ``device``."""
    t = Tensor._make(allocate(device, make))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _float_dtype(dtype):
    return _dt.get_default_dtype() if dtype is None else _dt.as_dtype(dtype)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    """A tensor of zeros (the default float dtype unless ``dtype``)."""
    shape, dt = _shape(size), _float_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.zeros(shape, dt))


def ones(*size, dtype=None, device=None, requires_grad=False):
    """A tensor of ones (the default float dtype unless ``dtype``)."""
    shape, dt = _shape(size), _float_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.ones(shape, dt))


def empty(*size, dtype=None, device=None, requires_grad=False):
    """An uninitialised tensor (the default float dtype unless ``dtype``)."""
    shape, dt = _shape(size), _float_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.empty(shape, dt))


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    if dtype is None:
        dtype = _dt.bool_ if isinstance(fill_value, bool) else (
            _dt.int64 if isinstance(fill_value, int) else _dt.get_default_dtype())
    shape, dt = _shape((size,) if isinstance(size, int) else tuple(size)), _dt.as_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.full(shape, fill_value, dt))


def _like(fn, t, dtype, device, requires_grad, *extra):
    return fn(*(tuple(t.shape),) + extra, dtype=dtype or t.dtype, device=device or t.device,
              requires_grad=requires_grad)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return _like(zeros, t, dtype, device, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _like(ones, t, dtype, device, requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return _like(empty, t, dtype, device, requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    return full(tuple(t.shape), fill_value, dtype=dtype or t.dtype, device=device or t.device,
                requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """Values in [start, end) by step; int64 for integer arguments like PyTorch."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        dtype = _dt.int64 if all(isinstance(v, (int, np.integer)) for v in (start, end, step)) \
            else _dt.get_default_dtype()
    dt = _dt.as_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.arange(start, end, step).astype(dt))


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    """``steps`` values evenly spaced from ``start`` to ``end`` inclusive."""
    dt = _float_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.linspace(start, end, steps).astype(dt))


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    """The identity matrix (``n`` x ``m``, ``m`` defaulting to ``n``)."""
    dt = _float_dtype(dtype)
    return _made(device, requires_grad, lambda xp: xp.eye(n, m, dtype=dt))


# ---- random ------------------------------------------------------------------------
def _draw_float(draw, size, dtype, generator):
    dtype = _float_dtype(dtype)
    if not _dt.is_floating(dtype):
        raise TypeError(f"random floats need a floating dtype, got {dtype}")
    native = dtype if dtype in (_dt.float32, _dt.float64) else _dt.float32
    return draw(_rng(generator), _shape(size), native).astype(dtype, copy=False)


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    """Standard normal samples."""
    arr = _draw_float(lambda r, s, d: r.standard_normal(s, dtype=d), size, dtype, generator)
    return _finish(arr, device, requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False, generator=None):
    """Uniform samples in [0, 1)."""
    arr = _draw_float(lambda r, s, d: r.random(s, dtype=d), size, dtype, generator)
    return _finish(arr, device, requires_grad)


def randint(low, high=None, size=None, dtype=None, device=None, generator=None):
    """Integers in [low, high) (int64 by default)."""
    if size is None and isinstance(high, (tuple, list)):  # randint(high, size) like PyTorch
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint() missing required argument 'size'")
    if high <= low:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
    arr = _rng(generator).integers(low, high, size=_shape((size,) if isinstance(size, int) else tuple(size)))
    return _finish(arr.astype(_dt.as_dtype(dtype or _dt.int64)), device, False)


def randn_like(input, dtype=None, device=None, requires_grad=False, generator=None):
    """Standard normal samples with the shape (and, unless given, dtype and device) of ``input``."""
    return randn(*input.shape, dtype=dtype or input.dtype, device=device or input.device,
                 requires_grad=requires_grad, generator=generator)


def rand_like(input, dtype=None, device=None, requires_grad=False, generator=None):
    """Uniform [0, 1) samples with the shape (and, unless given, dtype and device) of ``input``."""
    return rand(*input.shape, dtype=dtype or input.dtype, device=device or input.device,
                requires_grad=requires_grad, generator=generator)


def randint_like(input, low=0, high=None, dtype=None, device=None, generator=None):
    """Integers in [low, high) with the shape (and, unless given, dtype and device) of ``input``."""
    if high is None:
        low, high = 0, low
    return randint(low, high, tuple(input.shape), dtype=dtype or input.dtype,
                   device=device or input.device, generator=generator)


def logspace(start, end, steps, base=10.0, dtype=None, device=None, requires_grad=False):
    """``steps`` values ``base ** x`` for x evenly spaced from start to end."""
    dt = _float_dtype(dtype)
    return _made(device, requires_grad,
                 lambda xp: xp.logspace(start, end, steps, base=base).astype(dt))


def randperm(n, dtype=None, device=None, generator=None):
    """A random permutation of 0..n-1 (int64 by default)."""
    return _finish(_rng(generator).permutation(n).astype(_dt.as_dtype(dtype or _dt.int64)), device, False)


def normal(mean=0.0, std=1.0, size=None, generator=None, dtype=None, device=None):
    if size is None:
        size = ()
    arr = _draw_float(lambda r, s, d: r.standard_normal(s, dtype=d), (tuple(size),) if not isinstance(size, int) else (size,), dtype, generator)
    return _finish((arr * std + mean).astype(arr.dtype, copy=False), device, False)


def bernoulli(p, generator=None):
    """Samples 1 with probability p (elementwise, p a tensor of probabilities)."""
    probs = p._data if isinstance(p, Tensor) else np.asarray(p, dtype=np.float32)
    u = _rng(generator).random(probs.shape, dtype=np.float32)
    out = (to_device(u, "cpu") < to_device(probs, "cpu")).astype(probs.dtype)
    return _finish(out, p.device if isinstance(p, Tensor) else None, False)


def multinomial(probs, num_samples, replacement=False, generator=None):
    """``num_samples`` indices per row of ``probs`` drawn by weight (drawn on the host,
    returned on ``probs``' device)."""
    p = to_device(probs._data, "cpu").astype(np.float64)
    rows = p.reshape(-1, p.shape[-1])
    rng = _rng(generator)
    out = np.stack([rng.choice(r.size, num_samples, replace=replacement, p=r / r.sum()) for r in rows])
    return _finish(out.reshape(p.shape[:-1] + (num_samples,)).astype(np.int64), probs.device, False)


# in-place random fills used by nn.init and Tensor methods
def fill_normal_(t, mean=0.0, std=1.0, generator=None):
    from .. import dtypes
    arr = _draw_float(lambda r, s, d: r.standard_normal(s, dtype=d), (tuple(t.shape),), t.dtype, generator)
    t._data[...] = to_device(arr * dtypes.float32.type(std) + mean if t.dtype != np.float64
                             else arr * std + mean, t.device)
    t._bump_version()
    return t


def fill_uniform_(t, a=0.0, b=1.0, generator=None):
    arr = _draw_float(lambda r, s, d: r.random(s, dtype=d), (tuple(t.shape),), t.dtype, generator)
    t._data[...] = to_device(arr * (b - a) + a, t.device)
    t._bump_version()
    return t


def fill_bernoulli_(t, p=0.5, generator=None):
    t._data[...] = to_device(_rng(generator).random(tuple(t.shape)) < p, t.device)
    t._bump_version()
    return t
