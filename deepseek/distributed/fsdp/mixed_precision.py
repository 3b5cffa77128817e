"""MixedPrecision: FSDP's low-precision communication (PyTorch's
``torch.distributed.fsdp.MixedPrecision`` names).

What is here:

* ``reduce_dtype`` (float16 / bfloat16): each gradient bucket is cast into that dtype
  (one native pass), reduce-scattered in it -- half the bytes on the wire -- and the
  shard is cast back into the fp32 shard gradient the optimizer sees. The backends
  accumulate float16/bfloat16 reductions in float32 and round once.
* ``param_dtype`` (float16 / bfloat16, FULL_SHARD): the master shards stay fp32; each
  all-gather sends the shard cast to ``param_dtype`` (half the bytes) into a full
  buffer of that dtype, so the module's parameters -- and their gradients -- are
  low precision. ``reduce_dtype`` defaults to it (PyTorch's rule). Run the forward
  under ``deepseek.amp.autocast(dtype=param_dtype)`` (its ops take the low-precision
  parameters as they are; ``ShardedGradScaler`` for float16).

What is not: ``buffer_dtype``, ``keep_low_precision_grads``, and ``param_dtype`` under
SHARD_GRAD_OP.
"""
from dataclasses import dataclass

import numpy as np

from ... import dtypes as _dt

__all__ = ["MixedPrecision", "reduce_dtype_of", "param_dtype_of"]

_LOW = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(_dt.bfloat16)} \
    if hasattr(_dt, "bfloat16") else {"float16": np.dtype(np.float16)}


@dataclass
class MixedPrecision:
    """``param_dtype``: the gathered parameters' dtype (None: the parameters' own);
    ``reduce_dtype``: the dtype gradients are reduce-scattered in (None:
    ``param_dtype``). ``buffer_dtype`` must stay None."""
    param_dtype: object = None
    reduce_dtype: object = None
    buffer_dtype: object = None
    keep_low_precision_grads: bool = False


def _np_dtype(d):
    """A numpy dtype from a deepseek dtype, a numpy dtype or a name ("bfloat16")."""
    name = str(d).replace("deepseek.", "").replace("torch.", "")
    if name in _LOW:
        return _LOW[name]
    return np.dtype(getattr(d, "np_dtype", d))


def reduce_dtype_of(mp):
    """The numpy dtype gradients are reduced in under ``mp`` (None: no cast);
    raises a clear error for what is not supported."""
    if mp is None:
        return None
    if not isinstance(mp, MixedPrecision):
        raise TypeError(f"mixed_precision must be a fsdp.MixedPrecision, got {type(mp).__name__}")
    v = mp.buffer_dtype
    if v is not None and _np_dtype(v) != np.float32:
        raise NotImplementedError(
            f"MixedPrecision(buffer_dtype={v}): low-precision buffers are not supported; "
            "run the forward under deepseek.amp.autocast")
    if mp.keep_low_precision_grads:
        raise NotImplementedError("MixedPrecision(keep_low_precision_grads=True) is not "
                                  "supported: the shard gradients are float32")
    if mp.reduce_dtype is None:
        return param_dtype_of(mp)
    return _low_or_none(mp.reduce_dtype, "reduce_dtype")


def param_dtype_of(mp):
    """The numpy dtype of the gathered parameters under ``mp`` (None: the master
    shards' own)."""
    if mp is None or mp.param_dtype is None:
        return None
    return _low_or_none(mp.param_dtype, "param_dtype")


def _low_or_none(v, name):
    d = _np_dtype(v)
    if d == np.float32:
        return None
    if d not in _LOW.values():
        raise ValueError(f"MixedPrecision({name}={v}): use float16, bfloat16 or float32")
    return d
