"""``autocast``: mixed precision as a dispatch mode (PyTorch's ``torch.autocast``).

Inside ``with autocast():`` every op is routed (``Function.apply`` -> the dispatch
mode of this module) through the op table's autocast policy for the op's device
(``deepseek.ops.registry.autocast_policy(fn, device_type, args, kwargs)``):

- ``lower``   floating inputs are cast to the autocast dtype (matmul, linear, conv,
              attention);
- ``fp32``    fp16/bf16 inputs are cast to float32 (PyTorch's fp32 list of the device:
              on the CPU losses, prod, 3-d pools; on CUDA also softmax, exp, norms ...);
- ``promote`` floating inputs are cast to the widest of them (cat, stack, index_put);
- ``none``    the op runs on what it gets (binary ops already promote like PyTorch).

State is per thread (a ``contextvars.ContextVar``: a new thread starts outside every
autocast region). Regions nest: the innermost region of a device decides, so an inner
``autocast(enabled=False)`` runs its ops as written (in fp32). Only the outermost
region of a thread enters the dispatch mode; inner ones push their settings.

Casts of parameters (leaf tensors that require grad) are cached for the outermost
region: a weight used by three matmuls is converted once, and the cast is itself an
op of the graph, so its gradient flows back to the fp32 parameter (master weights).
On the CPU a linear/matmul does not keep its weight's cast for backward: it re-makes
it there from the fp32 parameter (``deferred_casts``), so the casts of all layers are
not alive at once between forward and backward; the same for the cast of an input (a
leaf that does not require grad: the batch), which the fp32 graph would keep as is.

On the CPU, numpy has no fp16/bf16 arithmetic worth the name (a bf16 ``sum`` is ~30x
slower than fp32), so ops that compute on low-precision inputs run through
``lowp_compute.LowpCompute``: fp32 arithmetic, low-precision outputs and saved
tensors; relu runs on the bf16 bits in one native pass (``lowp_native``, the same
values). matmul/linear/conv have their own native low-precision GEMM
(``deepseek.ops._lowp``); linear runs as ``lowp_linear.LinearLowp``, whose backward
widens each gradient panel once for both of its products.
"""
import contextvars
import functools

import numpy as np

from .. import dtypes as _dt
from ..autograd import grad_mode as _gm
from ..autograd.dispatch_mode import DispatchMode, dispatch_mode
from ..backend import cupy_available
from .lowp_compute import LowpCompute, LowpChunked, chunkable, runs_in_fp32_on_cpu
from . import lowp_native

_LOW = (_dt.float16, _dt.bfloat16)

# this thread's autocast regions, outermost first: tuple of _Frame
_frames = contextvars.ContextVar("deepseek_autocast_frames", default=())
# the parameter-cast cache of this thread's outermost region (dict) or None
_cache = contextvars.ContextVar("deepseek_autocast_cache", default=None)


class _Frame:
    __slots__ = ("device_type", "dtype", "enabled", "cache_enabled")

    def __init__(self, device_type, dtype, enabled, cache_enabled):
        self.device_type, self.dtype = device_type, dtype
        self.enabled, self.cache_enabled = enabled, cache_enabled


def _default_device():
    return "cuda" if cupy_available() else "cpu"


def _check_dtype(dtype, device_type):
    dt = _dt.as_dtype(dtype)
    if dt not in _LOW:
        kind = "an integer" if dt.kind in "iub" else "a"
        raise RuntimeError(
            f"autocast(device_type={device_type!r}, dtype={dt.name}): {kind} dtype cannot be "
            f"an autocast dtype; autocast runs ops in a low-precision floating type: "
            f"deepseek.bfloat16 (the CPU default) or deepseek.float16 (the CUDA default)")
    return dt


class autocast:
    """Run the ops of a region in mixed precision (context manager and decorator).

    ``device_type``: 'cpu' or 'cuda' (None: 'cuda' when a GPU is usable, else 'cpu');
    ops on arrays of another device are not touched. ``dtype``: the low-precision type
    (default float16 on CUDA, bfloat16 on the CPU, like PyTorch). ``enabled=False``
    makes a region run as written, also inside an enabled one. ``cache_enabled``:
    cast each parameter once per region instead of once per use.
    """

    def __init__(self, device_type=None, dtype=None, enabled=True, cache_enabled=True):
        if device_type is None:
            device_type = _default_device()
        if not isinstance(device_type, str) or device_type.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"autocast: device_type must be 'cpu' or 'cuda', got {device_type!r}")
        self.device_type = device_type.split(":")[0]
        if dtype is None:
            dtype = _dt.float16 if self.device_type == "cuda" else _dt.bfloat16
        self.fast_dtype = _check_dtype(dtype, self.device_type)
        self._enabled = bool(enabled)
        self._cache_enabled = bool(cache_enabled)
        self._tokens = []

    def __enter__(self):
        frames = _frames.get()
        frame = _Frame(self.device_type, self.fast_dtype, self._enabled, self._cache_enabled)
        outer = not frames
        mode = None
        if outer:  # a dispatch_mode object per entry: its token stays with this thread
            mode = dispatch_mode(_MODE)
            mode.__enter__()
        self._tokens.append((_frames.set(frames + (frame,)), _cache.set({}) if outer else None,
                             mode))
        return self

    def __exit__(self, *exc):
        tok, cache_tok, mode = self._tokens.pop()
        if mode is not None:
            mode.__exit__(*exc)
            _cache.get().clear()  # drop the cached casts with the outermost region
            _cache.reset(cache_tok)
        _frames.reset(tok)
        return False

    def __call__(self, fn):
        """As a decorator: each call of ``fn`` runs in a fresh region like this one."""
        args = (self.device_type, self.fast_dtype, self._enabled, self._cache_enabled)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with autocast(*args):
                return fn(*a, **k)
        return wrapper


def _frame_for(device_type):
    for f in reversed(_frames.get()):
        if f.device_type == device_type:
            return f
    return None


def is_autocast_enabled(device_type="cpu"):
    """True inside an enabled autocast region of ``device_type`` in this thread."""
    f = _frame_for(device_type)
    return bool(f and f.enabled)


def get_autocast_dtype(device_type="cpu"):
    """The low-precision dtype of the innermost region of ``device_type`` (or its
    default, float16 on CUDA and bfloat16 on the CPU, outside any region)."""
    f = _frame_for(device_type)
    if f is not None:
        return f.dtype
    return _dt.float16 if device_type == "cuda" else _dt.bfloat16


def casts_inputs_of(t):
    """True when an enabled autocast region of ``t``'s device is active in this thread:
    ops that check their inputs share a dtype (conv, attention) let autocast cast them."""
    if not _frames.get():
        return False
    return is_autocast_enabled("cpu" if isinstance(t._data, np.ndarray) else "cuda")


def clear_autocast_cache():
    """Forget the cached parameter casts of this thread's region."""
    c = _cache.get()
    if c is not None:
        c.clear()


# ---- the dispatch mode ----------------------------------------------------------------
def _device_of(args):
    for a in args:
        if isinstance(a, Tensor):
            return "cpu" if isinstance(a._data, np.ndarray) else "cuda"
    return None


def _is_float(t):
    return isinstance(t, Tensor) and (t._data.dtype.kind == "f" or t._data.dtype == _dt.bfloat16)


def _cast(t, dtype, frame):
    """``t`` as ``dtype`` through the differentiable Cast op; parameters (leaves that
    require grad) are converted once per region."""
    if t._data.dtype == dtype:
        return t
    cacheable = frame.cache_enabled and t.requires_grad and t.grad_fn is None \
        and _gm._state.enabled
    if cacheable:
        cache = _cache.get()
        key = (id(t), dtype)
        hit = cache.get(key)
        if hit is not None and hit[0] is t and hit[1] == t._vc[0]:
            return hit[2]
    out = _Cast.apply(t, dtype=dtype)
    if cacheable:
        cache[key] = (t, t._vc[0], out)  # holds t: its id stays unique while cached
        cache[("array", id(out._data))] = (out._data, t)  # for deferred_casts
    elif t.grad_fn is None and _gm._state.enabled and deferred_casts.ENABLED:
        # an input (a leaf without grad): its cast is re-made in backward too. A GEMM
        # of the fp32 graph saves the input itself, so the deferred cast keeps alive
        # nothing the fp32 graph would not, and the bf16 copy is not held meanwhile
        cache = _cache.get()
        if cache is not None:
            cache[("array", id(out._data))] = (out._data, t)
    return out


class _AutocastMode(DispatchMode):
    """Casts each op's inputs by its policy for the innermost region of its device."""

    def __dispatch__(self, fn, args, kwargs):
        dev = _device_of(args)
        frame = _frame_for(dev) if dev else None
        if frame is None or not frame.enabled or fn is _Cast:
            return fn.apply(*args, **kwargs)
        policy = _registry.autocast_policy(fn, dev, args, kwargs)
        if policy == "lower" and dev == "cpu" and frame.dtype == _dt.float16:
            _check_cpu_fp16(fn)
        args = _apply_policy(policy, args, frame)
        if dev == "cpu" and runs_in_fp32_on_cpu(fn):
            first = next((a for a in args if _is_float(a)), None)
            if first is not None and first._data.dtype in _LOW:
                native_op = lowp_native.replacement(fn, args)
                if native_op is not None:
                    return native_op.apply(*args, **kwargs)
                if chunkable(fn, args):
                    return LowpChunked.apply(*args, _inner=fn, _kwargs=kwargs)
                return LowpCompute.apply(*args, _inner=fn, _kwargs=kwargs)
        if dev == "cpu":  # linear on low-precision arrays: its fused backward
            fn = lowp_linear.replacement(fn, args) or fn
        res = fn.apply(*args, **kwargs)
        if policy == "lower" and dev == "cpu" and fn in _DEFER_OPS and deferred_casts.ENABLED:
            _defer_param_casts(res, args)
        return res


def _defer_param_casts(res, args):
    """Let the GEMM ``res`` came from re-make its cached parameter casts in backward
    instead of keeping them (``deferred_casts``: on the CPU the GEMM widens the weight to
    fp32 anyway, so the bf16 copy held from forward to backward is pure cost)."""
    cache = _cache.get()
    node = getattr(res, "grad_fn", None)
    if not cache or node is None:
        return
    casts = {}
    for a in args:
        if isinstance(a, Tensor):
            hit = cache.get(("array", id(a._data)))
            if hit is not None and hit[0] is a._data:
                casts[id(a._data)] = hit
    if casts:
        deferred_casts.defer(node, casts)


def _apply_policy(policy, args, frame):
    """``args`` with their floating tensors cast as ``policy`` says for ``frame``."""
    if policy == "lower":
        low = frame.dtype
        return tuple(_cast(a, low, frame) if _is_float(a) and a._data.dtype != _dt.float64
                     else a for a in args)
    if policy == "fp32":
        return tuple(_cast(a, _dt.float32, frame) if _is_float(a) and a._data.dtype in _LOW
                     else a for a in args)
    if policy == "promote":
        floats = [a._data.dtype for a in args if _is_float(a)]
        if len(set(floats)) > 1:
            wide = floats[0]
            for d in floats[1:]:
                wide = _dt.promote_types(wide, d)
            return tuple(_cast(a, wide, frame) if _is_float(a) else a for a in args)
    return args


# the kwargs key with which ``composite_inputs`` asks an entry's call-dependent policy
# (``autocast_cpu=fn(args, kwargs)``): an entry can then give its composite op a policy
# that the Function it lists first (asked without the key) does not get
COMPOSITE = "_autocast_composite"


def composite_inputs(name, *tensors):
    """The inputs of composite op ``name`` (one computed by other ops: addmm is add of
    mul and mm, trace a sum of the diagonal) cast by its own table entry's policy for
    the active region, as PyTorch casts at the composite op's entry of its autocast
    lists (addmm runs in bf16 on the CPU, trace and cdist in fp32, index_copy
    promotes). Outside an enabled region of the tensors' device: ``tensors`` as given
    (a tuple). The ops inside then see the cast inputs."""
    if not _frames.get():
        return tensors
    dev = _device_of(tensors)
    frame = _frame_for(dev) if dev else None
    if frame is None or not frame.enabled:
        return tensors
    policy = _registry.get(name).autocast_for(dev, tensors, {COMPOSITE: True})
    return _apply_policy(policy, tensors, frame)


def _check_cpu_fp16(fn):
    from .lowp_compute import has_cpu_fp16_path
    if not has_cpu_fp16_path(fn):
        name = ", ".join(e.name for e in _registry.entries_of(fn)) or fn.__name__
        raise RuntimeError(
            f"autocast(device_type='cpu', dtype=float16): op {name} has no float16 path on "
            f"the CPU. Use dtype=deepseek.bfloat16 on the CPU (its default), or run this op "
            f"outside the region (with autocast(enabled=False): ...) on float32 inputs.")


_MODE = _AutocastMode()

from .._tensor import Tensor  # noqa: E402
from ..ops import registry as _registry  # noqa: E402
from ..ops.shape import Cast as _Cast  # noqa: E402
from ..ops.linalg import Linear as _Linear, Matmul as _Matmul  # noqa: E402
from . import deferred_casts, lowp_linear  # noqa: E402

# GEMMs whose saved parameter casts are re-made in backward (their backward reads the
# saved arrays through ctx.saved_tensors)
_DEFER_OPS = frozenset({_Linear, lowp_linear.LinearLowp, _Matmul})
