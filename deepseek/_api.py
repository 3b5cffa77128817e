"""The top-level ``deepseek.*`` names (loaded lazily by deepseek/__init__)."""
from . import _memory

_memory.tune_malloc()

from .dtypes import (float16, half, bfloat16, float32, float64, double, int8, uint8, int16,  # noqa: E402
                     int32, int64, long, bool_ as bool, get_default_dtype, set_default_dtype)
from .dtypes import promote_types  # noqa: E402
from .backend import Device as device, get_array_module, cupy_available  # noqa: E402
from ._tensor import Tensor, Size, tensor, from_numpy, is_tensor  # noqa: E402
from .autograd import no_grad, enable_grad, inference_mode, set_grad_enabled, is_grad_enabled  # noqa: E402
from .random import Generator, manual_seed, seed, initial_seed, get_rng_state, set_rng_state, default_generator  # noqa: E402
from .ops import *  # noqa: E402,F401,F403
from .ops import abs, max, min, sum, pow  # noqa: E402,F401  (shadow builtins like torch does)
from .ops.creation import (zeros, ones, empty, full, zeros_like, ones_like, empty_like,  # noqa: E402
                           full_like, arange, linspace, eye, randn, rand, randint, randperm,
                           normal, bernoulli, multinomial)

as_tensor = tensor


def is_floating_point(t):
    return t.is_floating_point()


def numel(t):
    return t.numel()


def softmax(x, dim):
    from .nn import functional as F
    return F.softmax(x, dim)


def log_softmax(x, dim):
    from .nn import functional as F
    return F.log_softmax(x, dim)


def save(obj, path):
    """Save nested dicts/lists of tensors and plain values (safetensors + JSON, atomic)."""
    from .serialization import save as _save
    return _save(obj, path)


def load(path, map_location=None):
    """Load what ``deepseek.save`` wrote; never unpickles."""
    from .serialization import load as _load
    return _load(path, map_location=map_location)


def __getattr__(name):
    # The Trainer pulls in nn, optim, data and distributed: load it only when asked for.
    if name == "Trainer":
        from .trainer import Trainer
        return Trainer
    raise AttributeError(name)
