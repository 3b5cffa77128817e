"""The top-level ``deepseek.*`` names (loaded lazily by deepseek/__init__)."""
from . import _memory

_memory.tune_malloc()

from .dtypes import (float16, half, bfloat16, float32, float64, double, int8, uint8, int16,  # noqa: E402
                     int32, int64, long, bool_ as bool, get_default_dtype, set_default_dtype)
from .dtypes import promote_types  # noqa: E402
from .dtypes import qint8  # noqa: E402,F401  (deepseek.quantization)
from .backend import Device as device, get_array_module, cupy_available  # noqa: E402
from ._tensor import Tensor, Size, tensor, from_numpy, is_tensor  # noqa: E402
from .autograd import no_grad, enable_grad, inference_mode, set_grad_enabled, is_grad_enabled  # noqa: E402
from .random import Generator, manual_seed, seed, initial_seed, get_rng_state, set_rng_state, default_generator  # noqa: E402
from .ops import *  # noqa: E402,F401,F403
from .ops import abs, max, min, sum, pow  # noqa: E402,F401  (shadow builtins like torch does)
from .ops.creation import (zeros, ones, empty, full, zeros_like, ones_like, empty_like,  # noqa: E402
                           full_like, arange, linspace, logspace, eye, randn, rand, randint, randperm,
                           normal, bernoulli, multinomial, randn_like, rand_like, randint_like)
from .dtypes import int16 as short  # noqa: E402,F401
from ._api_extra import (finfo, iinfo, dtype, set_printoptions, get_num_threads,  # noqa: E402,F401
                         set_num_threads, use_deterministic_algorithms,
                         are_deterministic_algorithms_enabled, set_float32_matmul_precision,
                         get_float32_matmul_precision, is_nonzero, is_complex, result_type,
                         can_cast, typename, dropout, broadcast_tensors, broadcast_shapes,
                         chain_matmul, rsub)

as_tensor = tensor


def is_floating_point(t):
    """True when ``t`` has a floating dtype."""
    return t.is_floating_point()


def numel(t):
    """Number of elements of ``t``."""
    return t.numel()


def softmax(x, dim, dtype=None):
    """``nn.functional.softmax``."""
    from .nn import functional as F
    return F.softmax(x, dim, dtype=dtype)


def log_softmax(x, dim, dtype=None):
    """``nn.functional.log_softmax``."""
    from .nn import functional as F
    return F.log_softmax(x, dim, dtype=dtype)


def save(obj, f, **kwargs):
    """Save nested dicts/lists of tensors and plain values (safetensors + JSON, atomic)
    to a path or a writable binary file object. Never pickles: saving a whole module
    raises and says to save its ``state_dict()``."""
    from .serialization import save as _save
    return _save(obj, f, **kwargs)


def load(f, map_location=None, weights_only=None, **kwargs):
    """Load what ``deepseek.save`` wrote, or a PyTorch ``.pt`` checkpoint (tensors and
    plain containers only: PyTorch's ``weights_only=True``), from a path or a file
    object; never unpickles arbitrary objects."""
    from .serialization import load as _load
    return _load(f, map_location=map_location, weights_only=weights_only, **kwargs)


# Submodules named like PyTorch's that deepseek/__init__ does not list itself.
_LAZY_MODULES = {"cuda", "backends", "accelerator", "linalg"}


def compile(model=None, *, fullgraph=False, dynamic=None, backend=None, mode=None,
            options=None, disable=False, **jit_options):
    """``deepseek.compile(model)``: trace on the first call, retrace on a new input
    signature; fused, memory-planned inference and autograd-replayed training.

    Takes ``torch.compile``'s arguments, so PyTorch code runs unchanged: it works as a
    decorator (``@deepseek.compile(mode=...)``), ``disable=True`` and
    ``backend="eager"`` return ``model`` as it is, ``dynamic=True`` serves every
    batch size with one graph; ``backend`` may also name a fused-kernel backend of
    ``deepseek.jit`` ("c", "numexpr", "numpy"); ``fullgraph``, ``mode`` and
    ``options`` are accepted and have nothing to tune here. Other keywords go to
    ``deepseek.jit.compile``.
    """
    if model is None:
        return lambda m: compile(m, fullgraph=fullgraph, dynamic=dynamic, backend=backend,
                                 mode=mode, options=options, disable=disable, **jit_options)
    if disable or backend == "eager":
        return model
    from .jit import compile as _compile
    if backend in ("inductor", "auto"):  # torch's default name: our default backend
        backend = None
    # (``bool`` is the dtype in this module, like torch.bool)
    return _compile(model, dynamic=dynamic is True, backend=backend, **jit_options)


def __getattr__(name):
    # The Trainer pulls in nn, optim, data and distributed: load it only when asked for.
    if name == "Trainer":
        from .trainer import Trainer
        return Trainer
    if name == "autocast":  # deepseek.autocast is deepseek.amp.autocast, like torch.autocast
        from .amp import autocast
        return autocast
    if name in _LAZY_MODULES:
        import importlib
        return importlib.import_module("deepseek." + name)
    raise AttributeError(name)


# PyTorch's dtype aliases; last, since ``float``/``int`` shadow the builtins in this module
float = float32  # noqa: A001,E305
int = int32  # noqa: A001


def _timeline_autostart():
    # DEEPSEEK_TIMELINE: record this process's compute/data events for the job timeline
    from . import env as _env
    if _env.get("DEEPSEEK_TIMELINE"):
        from .profiler import timeline as _tl
        _tl.install()


_timeline_autostart()
