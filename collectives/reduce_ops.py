"""Reduction operators and the one internal function that applies them.

All reductions of the collectives layer go through :func:`reduce_into` (N inputs into
one output) so that switching to the native C kernels (``deepseek.native``) is a local
change. Inputs are always combined in list order -- the callers pass them in rank
order -- which is what makes ``deterministic`` groups bitwise reproducible: every
algorithm reduces element *i* as ``((x0 + x1) + x2) + ...`` whatever the chunking.
float16/bfloat16 accumulate in float32 and round once at the end.
"""
import enum

import numpy as np

from .. import env as _envvars
from .errors import CollectiveArgumentError

try:  # bfloat16 is a registered numpy dtype from ml_dtypes (a declared dependency)
    import ml_dtypes as _ml_dtypes

    BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BFLOAT16 = None


class ReduceOp(enum.Enum):
    """How contributions of the ranks are combined (PyTorch names)."""

    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"
    PRODUCT = "prod"

    # members are singletons compared by identity: hash them like objects (C speed;
    # Enum's own __hash__ is Python code, ~0.2 us on the allreduce fast path)
    __hash__ = object.__hash__

    @classmethod
    def coerce(cls, op):
        """Accept a ReduceOp, its name ("sum", "SUM", "product") or value."""
        if isinstance(op, cls):
            return op
        if isinstance(op, str):
            key = op.strip().upper()
            if key == "PROD":
                key = "PRODUCT"
            if key == "MEAN":
                key = "AVG"
            if key in cls.__members__:
                return cls[key]
        raise CollectiveArgumentError(
            f"unknown reduce op {op!r}; expected one of {', '.join(cls.__members__)}")


_HALF = {np.dtype(np.float16)} | ({BFLOAT16} if BFLOAT16 is not None else set())
_FLOAT = {np.dtype(np.float32), np.dtype(np.float64)} | _HALF
_INT = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32,
                              np.uint64)}
#: dtypes every reduce op accepts (AVG: floating types only).
REDUCE_DTYPES = frozenset(_FLOAT | _INT)

_UFUNC = {ReduceOp.SUM: np.add, ReduceOp.AVG: np.add, ReduceOp.MAX: np.maximum,
          ReduceOp.MIN: np.minimum, ReduceOp.PRODUCT: np.multiply}


def check_reduce_dtype(dtype, op):
    """Raise CollectiveArgumentError if ``op`` cannot reduce ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in REDUCE_DTYPES:
        raise CollectiveArgumentError(
            f"reduce op {op.name} does not support dtype {dtype}; supported: "
            + ", ".join(sorted(str(d) for d in REDUCE_DTYPES)))
    if op is ReduceOp.AVG and dtype not in _FLOAT:
        raise CollectiveArgumentError(
            f"ReduceOp.AVG needs a floating dtype, got {dtype} (use SUM and divide)")


def _native():
    """The native kernels module if it offers N-input reductions, else None."""
    global _NATIVE
    if _NATIVE is False:
        try:
            from deepseek import native as mod  # optional at run time
            _NATIVE = mod if hasattr(mod, "reduce") else None
        except Exception:  # noqa: BLE001 - any import problem means "use numpy"
            _NATIVE = None
    return _NATIVE


_NATIVE = False
# Below this many elements numpy is faster (the native wrapper's argument checks cost a
# few microseconds). Both paths give the same bits (checked by the tests), so the
# switch does not break deterministic results across sizes.
NATIVE_MIN_ELEMS = _envvars.get("DEEPSEEK_NATIVE_REDUCE_MIN")
_NATIVE_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64),
                  np.dtype(np.int32), np.dtype(np.int64)} | (
                      {BFLOAT16} if BFLOAT16 is not None else set())


def reduce_into(out, inputs, op, avg_divisor=None):
    """``out[...] = inputs[0] op inputs[1] op ...`` in list order.

    ``out`` may alias ``inputs[0]`` (the accumulation starts with a copy of it) but
    not a later input. ``avg_divisor`` is the count AVG divides by (default
    ``len(inputs)``). All arrays are flat, same dtype and length.
    """
    n = len(inputs)
    if n == 0:
        raise ValueError("reduce_into needs at least one input")
    if out.size == 0:
        return out
    dtype = out.dtype
    # cupy arrays take the ufunc path below: numpy dispatches it to cupy
    # (__array_ufunc__ / __array_function__), the native kernels are host-only
    if out.size >= NATIVE_MIN_ELEMS and dtype in _NATIVE_DTYPES and avg_divisor in (None, n) \
            and type(out) is np.ndarray:
        nat = _native()
        if nat is not None and nat.available():
            nat.reduce(op.value, list(inputs), out)
            return out
    ufunc = _UFUNC[op]
    if dtype in _HALF:
        # accumulate in float32, round once (what the native kernels do too)
        acc = inputs[0].astype(np.float32)
        for x in inputs[1:]:
            ufunc(acc, x, out=acc)
        if op is ReduceOp.AVG:
            np.divide(acc, np.float32(avg_divisor or n), out=acc)
        np.copyto(out, acc, casting="unsafe")
        return out
    if n == 1:
        if out is not inputs[0]:
            np.copyto(out, inputs[0])
    else:
        ufunc(inputs[0], inputs[1], out=out)
        for x in inputs[2:]:
            ufunc(out, x, out=out)
    if op is ReduceOp.AVG:
        np.divide(out, dtype.type(avg_divisor or n), out=out)
    return out
