"""MixedPrecision: FSDP's low-precision communication (PyTorch's
``torch.distributed.fsdp.MixedPrecision`` names).

What is here: ``reduce_dtype`` (float16 / bfloat16): each gradient bucket is cast
into that dtype (one native pass), reduce-scattered in it -- half the bytes on the
wire -- and the shard is cast back into the fp32 shard gradient the optimizer sees.
The backends accumulate float16/bfloat16 reductions in float32 and round once.

What is not: ``param_dtype`` other than the parameters' own (low-precision gathered
parameters) and ``buffer_dtype``. Low-precision *compute* over fp32 master shards is
``deepseek.amp.autocast`` around the forward (with ``ShardedGradScaler`` for fp16),
which composes with every ZeRO stage.
"""
from dataclasses import dataclass

import numpy as np

from ... import dtypes as _dt

__all__ = ["MixedPrecision", "reduce_dtype_of"]

_LOW = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(_dt.bfloat16)} \
    if hasattr(_dt, "bfloat16") else {"float16": np.dtype(np.float16)}


@dataclass
class MixedPrecision:
    """``reduce_dtype``: the dtype gradients are reduce-scattered in (None: the
    parameters' dtype). ``param_dtype`` and ``buffer_dtype`` must stay None."""
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
    for name in ("param_dtype", "buffer_dtype"):
        v = getattr(mp, name)
        if v is not None and _np_dtype(v) != np.float32:
            raise NotImplementedError(
                f"MixedPrecision({name}={v}): low-precision gathered parameters/buffers are "
                "not supported; keep fp32 master parameters and run the forward under "
                "deepseek.amp.autocast (ShardedGradScaler for float16)")
    if mp.keep_low_precision_grads:
        raise NotImplementedError("MixedPrecision(keep_low_precision_grads=True) is not "
                                  "supported: the shard gradients are float32")
    if mp.reduce_dtype is None:
        return None
    d = _np_dtype(mp.reduce_dtype)
    if d == np.float32:
        return None
    if d not in _LOW.values():
        raise ValueError(f"MixedPrecision(reduce_dtype={mp.reduce_dtype}): use float16, "
                         "bfloat16 or float32")
    return d
