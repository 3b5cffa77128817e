"""dtypes: numpy dtype objects (bfloat16 from ml_dtypes) and PyTorch type promotion."""
import numpy as np
import ml_dtypes

float16 = half = np.dtype(np.float16)
bfloat16 = np.dtype(ml_dtypes.bfloat16)
float32 = float = np.dtype(np.float32)
float64 = double = np.dtype(np.float64)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
int16 = np.dtype(np.int16)
int32 = int = np.dtype(np.int32)
int64 = long = np.dtype(np.int64)
bool_ = np.dtype(np.bool_)
qint8 = int8  # quantized int8 (deepseek.quantization): symmetric int8 values + fp32 scales

_NAMES = {"float16": float16, "half": float16, "bfloat16": bfloat16, "float32": float32,
          "float": float32, "float64": float64, "double": float64, "int8": int8,
          "uint8": uint8, "int16": int16, "int32": int32, "int": int32, "int64": int64,
          "long": int64, "bool": bool_}

FLOATING = (float16, bfloat16, float32, float64)
_default_float = [float32]


def get_default_dtype():
    """The dtype of floating tensors made from Python floats (float32 by default)."""
    return _default_float[0]


def set_default_dtype(dtype):
    """Set the default floating dtype (float32 or float64)."""
    dtype = as_dtype(dtype)
    if dtype not in FLOATING:
        raise TypeError(f"default dtype must be a floating dtype, got {dtype}")
    _default_float[0] = dtype


def as_dtype(dtype):
    """Normalise a dtype spec (np.dtype, numpy type, name string) to np.dtype."""
    if isinstance(dtype, np.dtype):
        return dtype
    if isinstance(dtype, str):
        try:
            return _NAMES[dtype.replace("torch.", "")]
        except KeyError:
            raise TypeError(f"unknown dtype {dtype!r}; expected one of {sorted(_NAMES)}") from None
    if dtype is bool:
        return bool_
    if dtype is builtin_float:
        return get_default_dtype()
    if dtype is builtin_int:
        return int64
    return np.dtype(dtype)


builtin_float = __builtins__["float"] if isinstance(__builtins__, dict) else __builtins__.float
builtin_int = __builtins__["int"] if isinstance(__builtins__, dict) else __builtins__.int


def is_floating(dtype):
    return dtype in FLOATING


def _category(dt):
    if dt == bool_:
        return 0
    if dt.kind in "iu":
        return 1
    return 2


_promote_cache = {}


def promote_types(a, b):
    """PyTorch's promotion of two tensor dtypes (bf16 with fp16 gives fp32)."""
    if a == b:
        return a
    key = (a, b)
    r = _promote_cache.get(key)
    if r is None:
        ca, cb = _category(a), _category(b)
        if ca != cb:
            r = a if ca > cb else b
        elif {a, b} == {float16, bfloat16}:
            r = float32
        elif ca == 2:
            r = a if a.itemsize > b.itemsize else b
        else:
            r = np.promote_types(a, b)
        _promote_cache[key] = r
    return r


def scalar_result_type(tensor_dtype, scalar):
    """dtype of ``tensor <op> python_scalar`` under PyTorch rules (scalars are weak)."""
    if isinstance(scalar, bool):
        return tensor_dtype
    if isinstance(scalar, builtin_int):
        return tensor_dtype if _category(tensor_dtype) >= 1 else int64
    if isinstance(scalar, builtin_float):
        return tensor_dtype if _category(tensor_dtype) == 2 else get_default_dtype()
    raise TypeError(f"unsupported scalar {scalar!r} of type {type(scalar).__name__}")
