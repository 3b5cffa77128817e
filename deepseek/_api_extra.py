"""Top-level ``deepseek.*`` utilities PyTorch programs call that are not ops: dtype
info (``finfo``/``iinfo``), print options, thread and determinism
switches, and a few small helpers. Re-exported by ``deepseek._api``."""
import builtins
import os

import numpy as np

from . import dtypes as _dt
from ._tensor import Tensor

dtype = np.dtype  # ``isinstance(x.dtype, torch.dtype)``: deepseek dtypes are numpy dtypes


class _Info:
    """``finfo``/``iinfo`` result with PyTorch's field names."""

    def __init__(self, src, dt, fields):
        for f in fields:
            v = getattr(src, f)
            setattr(self, f, builtins.float(v) if isinstance(v, np.floating) or hasattr(v, "item") and
                    not isinstance(v, builtins.int) and dt.kind != "i" and dt.kind != "u" else v)
        self.dtype = dt.name

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class finfo(_Info):
    """Machine limits of a floating dtype (``eps``, ``max``, ``min``, ``tiny``, ``bits``,
    ``resolution``, ``smallest_normal``); bfloat16 included."""

    def __init__(self, type=None):
        import ml_dtypes
        dt = _dt.get_default_dtype() if type is None else _dt.as_dtype(type)
        if not _dt.is_floating(dt):
            raise TypeError(f"torch.finfo() requires a floating point input type, got {dt}")
        src = ml_dtypes.finfo(dt)
        super().__init__(src, dt, ("bits", "eps", "max", "min", "tiny", "resolution"))
        self.smallest_normal = self.tiny


class iinfo(_Info):
    """Machine limits of an integer dtype (``bits``, ``max``, ``min``)."""

    def __init__(self, type):
        dt = _dt.as_dtype(type)
        if dt.kind not in "iub":
            raise TypeError(f"torch.iinfo() requires an integer input type, got {dt}")
        src = np.iinfo(dt if dt.kind != "b" else np.uint8)
        super().__init__(src, dt, ("bits", "max", "min"))
        self.max, self.min = builtins.int(src.max), builtins.int(src.min)


_print_options = {"precision": 4, "threshold": 1000, "edgeitems": 3, "linewidth": 80, "sci_mode": None}


def set_printoptions(precision=None, threshold=None, edgeitems=None, linewidth=None, profile=None,
                     sci_mode=None):
    """How tensors print (PyTorch's options: precision, threshold, edgeitems, linewidth,
    sci_mode, or profile 'default' / 'short' / 'full')."""
    if profile == "default":
        _print_options.update(precision=4, threshold=1000, edgeitems=3, linewidth=80)
    elif profile == "short":
        _print_options.update(precision=2, threshold=1000, edgeitems=2, linewidth=80)
    elif profile == "full":
        _print_options.update(precision=4, threshold=np.inf, edgeitems=3, linewidth=80)
    for k, v in (("precision", precision), ("threshold", threshold), ("edgeitems", edgeitems),
                 ("linewidth", linewidth)):
        if v is not None:
            _print_options[k] = v
    _print_options["sci_mode"] = sci_mode


def get_printoptions():
    """The current print options (a dict)."""
    return dict(_print_options)


def get_num_threads():
    """Threads the CPU kernels may use (deepseek's numpy/BLAS pool: OMP_NUM_THREADS or the CPU count)."""
    v = os.environ.get("OMP_NUM_THREADS")
    return builtins.int(v) if v and v.isdigit() else (os.cpu_count() or 1)


def set_num_threads(n):
    """Limit the BLAS thread pool to ``n`` threads (threadpoolctl when installed)."""
    os.environ["OMP_NUM_THREADS"] = str(builtins.int(n))
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(builtins.int(n))
    except Exception:
        pass


_deterministic = [False]


def use_deterministic_algorithms(mode, *, warn_only=False):
    """Record the determinism switch (deepseek's CPU kernels are deterministic already)."""
    _deterministic[0] = bool(mode)


def are_deterministic_algorithms_enabled():
    """The recorded determinism switch."""
    return _deterministic[0]


_matmul_precision = ["highest"]


def set_float32_matmul_precision(precision):
    """Record 'highest' / 'high' / 'medium' (deepseek computes float32 matmuls in float32)."""
    if precision not in ("highest", "high", "medium"):
        raise RuntimeError(f"Invalid precision {precision!r}; expected 'highest', 'high' or 'medium'")
    _matmul_precision[0] = precision


def get_float32_matmul_precision():
    """The recorded float32 matmul precision."""
    return _matmul_precision[0]


def is_nonzero(input):
    """The truth value of a one-element tensor."""
    if input.numel() != 1:
        raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous"
                           if input.numel() else "Boolean value of Tensor with no values is ambiguous")
    return builtins.bool(input.item())


def is_complex(input):
    """False: deepseek has no complex dtypes."""
    return False


def result_type(tensor1, tensor2):
    """The dtype PyTorch's promotion gives ``tensor1 op tensor2`` (tensors or numbers)."""
    from .ops._util import prepare_binary
    from .ops.creation import zeros
    a = tensor1 if isinstance(tensor1, Tensor) else tensor1
    b = tensor2 if isinstance(tensor2, Tensor) else tensor2
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = zeros((), dtype=np.int64 if isinstance(a, builtins.int) else _dt.get_default_dtype())
    x, y = prepare_binary(a, b, "result_type")
    return (x if isinstance(x, Tensor) else y).dtype


def can_cast(from_, to):
    """True when PyTorch's casting rules allow ``from_`` -> ``to`` without a category drop."""
    order = {"b": 0, "u": 1, "i": 1, "f": 2, "V": 2}
    f, t = _dt.as_dtype(from_), _dt.as_dtype(to)
    return order[f.kind] <= order[t.kind]


def typename(obj):
    """PyTorch's type name of a tensor (``torch.FloatTensor``) or of any object."""
    if isinstance(obj, Tensor):
        names = {"float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor",
                 "bfloat16": "BFloat16Tensor", "int64": "LongTensor", "int32": "IntTensor",
                 "int16": "ShortTensor", "int8": "CharTensor", "uint8": "ByteTensor", "bool": "BoolTensor"}
        return "torch." + names.get(obj.dtype.name, obj.dtype.name)
    return type(obj).__module__ + "." + type(obj).__qualname__


def dropout(input, p=0.5, train=True):
    """``torch.dropout(input, p, train)``: ``nn.functional.dropout``."""
    from .nn import functional as F
    return F.dropout(input, p, training=train)


def broadcast_shapes(*shapes):
    """The shape all ``shapes`` broadcast to."""
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) if not isinstance(s, builtins.int) else (s,) for s in shapes]))
    except ValueError as e:
        raise RuntimeError(f"shape mismatch: objects cannot be broadcast to a single shape ({e})") from None


def broadcast_tensors(*tensors):
    """The tensors expanded to their common shape (views)."""
    from .ops.shape import expand
    shape = broadcast_shapes(*[t.shape for t in tensors])
    return tuple(expand(t, shape) if tuple(t.shape) != shape else t for t in tensors)


def chain_matmul(*matrices):
    """``matrices[0] @ matrices[1] @ ...``."""
    from .ops.linalg import matmul
    out = matrices[0]
    for m in matrices[1:]:
        out = matmul(out, m)
    return out


def rsub(input, other, alpha=1):
    """``other - alpha * input``."""
    from .ops.elementwise import sub, mul
    return sub(other, mul(input, alpha) if alpha != 1 else input)
