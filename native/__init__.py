"""deepseek.native: C kernels for the hot paths of mixed precision, collectives and optimizers.

Every kernel runs in the C extension ``deepseek._native`` when it is built (one pass
over memory, GIL released, instruction set picked at run time: AVX-512F, AVX2+F16C+FMA
or portable scalar), and otherwise in numpy with the same results. The numpy path is
used when the extension is missing, when ``DEEPSEEK_NATIVE=0`` is set in the
environment, or inside ``with use_native(False):``.

Arrays are numpy arrays, C-contiguous, of any shape; sizes are compared as element
counts. Wrong types/dtypes raise TypeError; wrong sizes, strided views, read-only
outputs and overlapping arguments raise ValueError. Both paths check identically.

Status
    available() -> bool
        True when the kernels run in C now (built, not disabled by env or use_native).
    isa() -> str
        "avx512", "avx2", "scalar" (C kernels) or "numpy" (fallback in use).
    isa_list() -> list[str]
        Instruction sets this CPU and build support, best first ([] without the extension).
    use_native(enabled: bool = True)   context manager, process-wide (tests, benchmarks)
    use_isa(name: str)                 context manager forcing "avx512"/"avx2"/"scalar"

Conversions (round to nearest even; NaN/Inf/subnormals exactly as numpy's
astype(float16) and ml_dtypes.bfloat16; the fp16 NaN payload is kept like numpy does)
    f32_to_f16(src, out=None) -> ndarray[float16]
    f16_to_f32(src, out=None) -> ndarray[float32]
    f32_to_bf16(src, out=None) -> ndarray[bfloat16]
    bf16_to_f32(src, out=None) -> ndarray[float32]
    cast(src, dtype, out=None) -> ndarray
        any dtype pair; the four pairs above use the kernels, others numpy astype.
    wire_pack(src, out, scale=None) -> float
        out = cast(src * float32(scale)) (cast(src) when scale is None; out float16,
        bfloat16 or float32) and returns max |src| (NaN if any NaN), in one pass.
    wire_unpack(src, out, scale) -> out
        out = float32(src) * float32(scale) (src float16, bfloat16 or float32), one pass.
        Both are the DDP compression hooks' fused passes, bit-identical to the numpy
        sequences they replace (multiply, cast, max/min).

Math
    erf(src, out=None) -> ndarray
        the error function of a float32/float64 array (GELU's normal CDF): float32 to
        5e-7 absolute (a vectorised rational approximation), float64 to 1 ulp (libm);
        the fallback uses scipy.special.erf (math.erf without scipy).
    gelu(src, out=None, cdf=None) -> ndarray
        float32 GELU x * Phi(x) in one pass (Phi by erf; ``cdf`` receives Phi too).

Reductions (what the collectives call on every reduce step)
    reduce(op: str, inputs: Sequence[ndarray], out: ndarray) -> out
        out = inputs[0] op inputs[1] op ... elementwise, left to right, in one pass.
        op: "sum", "avg" (sum / len(inputs)), "max", "min", "prod".
        dtypes: float32, float64, float16, bfloat16 (both accumulate in float32 and round
        once), int32, int64 (wrap around on overflow; "avg" is refused with TypeError).
        All inputs and out share one dtype and size; out may be one of the inputs
        (the very same array), never a partial overlap. max/min propagate NaN.
    reduce_inplace(op: str, acc: ndarray, other: ndarray) -> acc
        acc = acc op other; exactly reduce(op, [acc, other], out=acc)
        ("avg" therefore gives (acc + other) / 2).

Mixed precision
    unscale_(grads, inv_scale: float) -> bool
        grads: one array or a sequence of arrays (float32, float16, bfloat16).
        g *= float32(inv_scale) in place (fp16/bf16 via float32, rounded once); returns
        True if any element was inf or NaN before scaling (torch's found_inf).

Fused optimizer steps over flat float32 buffers (torch.optim semantics, one pass)
    sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, first_step=False,
             param_half=None) -> None
        torch.optim.SGD. momentum != 0 needs momentum_buffer; first_step=True
        initialises it to the gradient (torch's "buffer is None" step).
    adam_step(param, grad, exp_avg, exp_avg_sq, *, lr, step, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, param_half=None) -> None
        torch.optim.Adam (L2 weight decay added to the gradient). step >= 1 is the step
        number after incrementing, used for bias correction.
    adamw_step(...same as adam_step..., weight_decay=1e-2) -> None
        torch.optim.AdamW (decoupled weight decay: param *= 1 - lr * weight_decay).
    param, grad and the state arrays are float32 of one size and must not overlap;
    param_half (float16 or bfloat16, same size) receives the updated weights rounded
    to nearest even, written in the same pass.

Integer results and conversions are bit-exact between the C and numpy paths; float
kernels perform the same fp32 operations in the same order (no FMA contraction), so
they agree to the last bit in practice and are tested to tight tolerances.
"""
import contextlib
import importlib

import numpy as np

from .. import env as _envvars  # the stdlib-only variable registry (no engine)
from . import _checks as _c
from . import _fallback

try:
    _ext = importlib.import_module("deepseek._native")
except ImportError:  # not built (no compiler) or importing from a bare source tree
    _ext = None

__all__ = [
    "available", "isa", "isa_list", "use_native", "use_isa",
    "f32_to_f16", "f16_to_f32", "f32_to_bf16", "bf16_to_f32", "cast", "wire_pack", "wire_unpack",
    "erf", "reduce", "reduce_inplace", "unscale_", "sgd_step", "adam_step", "adamw_step",
    "REDUCE_OPS",
]

REDUCE_OPS = ("sum", "avg", "max", "min", "prod")
# The enum codes of dsn_common.h: read from the extension, which exports them; the
# fallback's copy (the one place they are written in Python) serves unbuilt trees,
# and tests/test_native_codes.py checks that both agree.
_codes = _ext if _ext is not None and hasattr(_ext, "DTYPE_CODES") else _fallback
_OP_CODES = {name: _codes.OP_CODES[name] for name in REDUCE_OPS}
_DTYPE_CODES = {np.dtype(_c.BF16 if name == "bfloat16" else name): code
                for name, code in _codes.DTYPE_CODES.items()}
_CVT_CODES = dict(_codes.CVT_CODES)
_REDUCE_DTYPES = (_c.F32, _c.F16, _c.BF16, _c.F64, _c.I32, _c.I64)
_GRAD_DTYPES = (_c.F32, _c.F16, _c.BF16)

_forced = None  # None: follow the environment; True/False: set by use_native()


def available():
    """True when the kernels run in C right now."""
    if _ext is None:
        return False
    if _forced is not None:
        return _forced
    return _envvars.get("DEEPSEEK_NATIVE")


def isa():
    """Instruction set in use: "avx512", "avx2", "scalar", or "numpy" for the fallback."""
    return _ext.isa() if available() else "numpy"


def isa_list():
    """Instruction sets the extension can use on this CPU, best first."""
    return list(_ext.isa_list()) if _ext is not None else []


@contextlib.contextmanager
def use_native(enabled=True):
    """Force the C kernels on or off inside the block (process-wide).

    use_native(True) raises RuntimeError if the extension is not built.
    """
    global _forced
    if enabled and _ext is None:
        raise RuntimeError("use_native(True): the extension deepseek._native is not built")
    previous, _forced = _forced, bool(enabled)
    try:
        yield
    finally:
        _forced = previous


@contextlib.contextmanager
def _switched(get, set_, name):
    """Inside the block ``set_(name)``; after it, what ``get()`` said before."""
    previous = get()
    set_(name)
    try:
        yield
    finally:
        set_(previous)


def use_isa(name):
    """Run the C kernels with one instruction set inside the block (tests, benchmarks)."""
    if _ext is None:
        raise RuntimeError("use_isa(): the extension deepseek._native is not built")
    return _switched(_ext.isa, _ext.set_isa, name)


def _raw(a):
    """What the extension reads: bfloat16 exports no buffer, so pass its bits."""
    return a.view(np.uint16) if a.dtype == _c.BF16 else a


def shm_kernel():
    """The C shared-memory allreduce (private entry of deepseek.collectives' shm
    transport, which owns the protocol), or None when the kernels are not in use now
    (extension not built, ``DEEPSEEK_NATIVE=0``, ``use_native(False)``): the caller
    then runs its numpy implementation of the same protocol."""
    return getattr(_ext, "shm_allreduce", None) if available() else None


def shm_coll_kernel():
    """The C allgather / gather / reduce_scatter / broadcast of the shm transport's
    slot protocol (private entry), or None like :func:`shm_kernel`."""
    return getattr(_ext, "shm_collective", None) if available() else None


def shm_sym_kernel():
    """The C allreduce of symmetric buffers (every rank's array in memory all ranks
    map; private entry of the shm transport), or None like :func:`shm_kernel`."""
    return getattr(_ext, "shm_allreduce_sym", None) if available() else None


def row_kernel(name):
    """The C float32 kernel ``name`` that repeats a numpy sequence of deepseek.ops
    ("layer_norm", "layer_norm_backward", "softmax_rows", "gelu_backward_tail": private
    entries; the ops own their numpy twins), or None when the kernels are not in use
    now, like :func:`shm_kernel`."""
    return getattr(_ext, name, None) if available() else None


def shm_code(dtype, op):
    """The ``code`` argument of the shm kernel for (dtype, op name), or None if the
    kernel does not handle the pair (unsupported dtype; "avg" of an integer type)."""
    dtype = np.dtype(dtype)
    if dtype not in _DTYPE_CODES or op not in _OP_CODES:
        return None
    if op == "avg" and dtype in (_c.I32, _c.I64):
        return None
    return _DTYPE_CODES[dtype] * 8 + _OP_CODES[op]


# ------------------------------------------------------------------ conversions

def _convert(fn, kind, src, src_dtype, dst_dtype, out):
    _c.array(fn, "src", src, (src_dtype,))
    if out is None:
        out = np.empty(src.shape, dst_dtype)
    else:
        _c.array(fn, "out", out, (dst_dtype,), writeable=True)
        _c.size(fn, "out", out, src.size, "src")
        _c.no_overlap(fn, "src", src, "out", out)
    if available():
        _ext.convert(kind, _raw(src), _raw(out))
    else:
        _fallback.convert(src, out)
    return out


def f32_to_f16(src, out=None):
    """float32 -> float16, round to nearest even, bit-identical to src.astype(np.float16)."""
    return _convert("f32_to_f16", _CVT_CODES["f32_to_f16"], src, _c.F32, _c.F16, out)


def f16_to_f32(src, out=None):
    """float16 -> float32 (exact), bit-identical to src.astype(np.float32)."""
    return _convert("f16_to_f32", _CVT_CODES["f16_to_f32"], src, _c.F16, _c.F32, out)


def f32_to_bf16(src, out=None):
    """float32 -> bfloat16, round to nearest even, bit-identical to ml_dtypes."""
    return _convert("f32_to_bf16", _CVT_CODES["f32_to_bf16"], src, _c.F32, _c.BF16, out)


def bf16_to_f32(src, out=None):
    """bfloat16 -> float32 (exact)."""
    return _convert("bf16_to_f32", _CVT_CODES["bf16_to_f32"], src, _c.BF16, _c.F32, out)


_CAST_KERNELS = {
    (_c.F32, _c.F16): f32_to_f16, (_c.F16, _c.F32): f16_to_f32,
    (_c.F32, _c.BF16): f32_to_bf16, (_c.BF16, _c.F32): bf16_to_f32,
}


def cast(src, dtype, out=None):
    """src converted to dtype; the fp32<->fp16/bf16 pairs use the kernels.

    Other pairs go through numpy (astype semantics); src need not be contiguous then.
    """
    if not isinstance(src, np.ndarray):
        raise TypeError(f"cast(): argument 'src' must be a numpy.ndarray, got "
                        f"{type(src).__name__}")
    dtype = np.dtype(dtype)
    kernel = _CAST_KERNELS.get((src.dtype, dtype))
    if kernel is not None:
        return kernel(src, out)
    if out is None:
        return src.astype(dtype)
    _c.array("cast", "out", out, (dtype,), writeable=True)
    _c.size("cast", "out", out, src.size, "src")
    np.copyto(out, src.reshape(out.shape), casting="unsafe")
    return out


_WIRE_DTYPES = (_c.F32, _c.F16, _c.BF16)


def _wire_native():
    return available() and hasattr(_ext, "wire_pack")


def wire_pack(src, out, scale=None):
    """``out[...] = cast(src * float32(scale))`` (no multiply when ``scale`` is None)
    and ``max |src|`` as a float (NaN when src holds a NaN, 0.0 when empty), in one
    pass over ``src``. src float32, out float16 / bfloat16 / float32 of src's size."""
    fn = "wire_pack"
    _c.array(fn, "src", src, (_c.F32,))
    _c.array(fn, "out", out, _WIRE_DTYPES, writeable=True)
    _c.size(fn, "out", out, src.size, "src")
    _c.no_overlap(fn, "src", src, "out", out)
    if scale is not None:
        _c.number(fn, "scale", scale)
    if _wire_native():
        return _ext.wire_pack(src, _raw(out), _DTYPE_CODES[out.dtype], scale is not None,
                              1.0 if scale is None else float(scale), isa() != "scalar")
    flat = src.reshape(-1)
    m = max(float(flat.max()), -float(flat.min())) if flat.size else 0.0
    with np.errstate(all="ignore"):
        v = flat * np.float32(scale) if scale is not None else flat
        np.copyto(out.reshape(-1), v, casting="unsafe")
    return m


def wire_unpack(src, out, scale):
    """``out[...] = float32(src) * float32(scale)`` in one pass (src float16 / bfloat16 /
    float32, out float32 of src's size); returns out."""
    fn = "wire_unpack"
    _c.array(fn, "src", src, _WIRE_DTYPES)
    _c.array(fn, "out", out, (_c.F32,), writeable=True)
    _c.size(fn, "out", out, src.size, "src")
    _c.no_overlap(fn, "src", src, "out", out)
    _c.number(fn, "scale", scale)
    if _wire_native():
        _ext.wire_unpack(_raw(src), _DTYPE_CODES[src.dtype], out, float(scale),
                         isa() != "scalar")
        return out
    o = out.reshape(-1)
    with np.errstate(all="ignore"):
        np.copyto(o, src.reshape(-1), casting="unsafe")
        o *= np.float32(scale)
    return out


# -------------------------------------------------------------------- math

_ERF_DTYPES = (_c.F32, _c.F64)


def _elementwise_args(fn, src, out, dtypes):
    """(src, out) of an elementwise kernel, checked: src of one of ``dtypes`` (a strided
    view is copied once: then the kernel), out of src's dtype and size (allocated when
    None), the very same array as src or not overlapping it."""
    if isinstance(src, np.ndarray) and not src.flags.c_contiguous:
        src = np.ascontiguousarray(src)
    _c.array(fn, "src", src, dtypes)
    if out is None:
        return src, np.empty(src.shape, src.dtype)
    _c.array(fn, "out", out, (src.dtype,), writeable=True)
    _c.size(fn, "out", out, src.size, "src")
    _c.no_overlap(fn, "src", src, "out", out, allow_same=True)
    return src, out


def erf(src, out=None):
    """The error function elementwise: float32 or float64 array (any shape) -> an array
    of its dtype and shape. C, one vectorised pass: float32 by Eigen/XLA's rational
    approximation (absolute error < 5e-7), float64 by libm's erf (1 ulp). Fallback:
    scipy.special.erf (math.erf element by element without scipy), within 1 ulp."""
    src, out = _elementwise_args("erf", src, out, _ERF_DTYPES)
    if available():
        _ext.erf(_DTYPE_CODES[src.dtype], src, out)
    else:
        _fallback.erf(src, out)
    return out


def gelu(src, out=None, cdf=None):
    """GELU (exact form) of a float32 array in one pass: ``out = src * cdf`` with
    ``cdf = 0.5 * (1 + erf(src / sqrt(2)))``, bit for bit what that numpy sequence gives
    with this module's :func:`erf`; ``cdf``, an array of src's size, receives the normal
    CDF too (GELU's backward reads it). Returns ``out``."""
    fn = "gelu"
    src, out = _elementwise_args(fn, src, out, (_c.F32,))
    if cdf is not None:
        _c.array(fn, "cdf", cdf, (src.dtype,), writeable=True)
        _c.size(fn, "cdf", cdf, src.size, "src")
        _c.no_overlap(fn, "src", src, "cdf", cdf)
        _c.no_overlap(fn, "out", out, "cdf", cdf)
    if available() and hasattr(_ext, "gelu"):
        _ext.gelu(src, out, cdf)
    else:
        _fallback.gelu(src, out, cdf, erf)
    return out


__all__ += ["gelu"]


# ------------------------------------------------------------------- reductions

def _check_op(fn, op):
    if not isinstance(op, str):
        raise TypeError(f"{fn}(): argument 'op' must be a str, got {type(op).__name__}")
    if op not in _OP_CODES:
        raise ValueError(f"{fn}(): argument 'op' must be one of {', '.join(REDUCE_OPS)}; "
                         f"got {op!r}")


def _reduce(fn, op, inputs, out):
    _check_op(fn, op)
    _c.array(fn, "out", out, _REDUCE_DTYPES, writeable=True)
    if op == "avg" and out.dtype in (_c.I32, _c.I64):
        raise TypeError(f"{fn}(): op 'avg' needs a floating dtype, got {out.dtype}")
    for k, x in enumerate(inputs):
        name = f"inputs[{k}]"
        _c.array(fn, name, x, (out.dtype,))
        _c.size(fn, name, x, out.size, "out")
        _c.no_overlap(fn, "out", out, name, x, allow_same=True)
    if available():
        _ext.reduce(_OP_CODES[op], _DTYPE_CODES[out.dtype], [_raw(x) for x in inputs],
                    _raw(out))
    else:
        _fallback.reduce(op, inputs, out)
    return out


def reduce(op, inputs, out):
    """out = inputs[0] op inputs[1] op ... (see the module docstring); returns out."""
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, (list, tuple)):
        raise TypeError(f"reduce(): argument 'inputs' must be a list or tuple of arrays, "
                        f"got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise ValueError("reduce(): argument 'inputs' must hold at least one array, got 0")
    return _reduce("reduce", op, inputs, out)


def reduce_inplace(op, acc, other):
    """acc = acc op other, i.e. reduce(op, [acc, other], out=acc); returns acc."""
    _c.array("reduce_inplace", "acc", acc, _REDUCE_DTYPES, writeable=True)
    return _reduce("reduce_inplace", op, [acc, other], acc)


# --------------------------------------------------------------- mixed precision

def unscale_(grads, inv_scale):
    """grads *= inv_scale in place; True if any element was inf/NaN (see module doc)."""
    fn = "unscale_"
    s = _c.number(fn, "inv_scale", inv_scale)
    single = isinstance(grads, np.ndarray)
    if not single and not isinstance(grads, (list, tuple)):
        raise TypeError(f"{fn}(): argument 'grads' must be an array or a list of arrays, "
                        f"got {type(grads).__name__}")
    arrays = [grads] if single else list(grads)
    for k, g in enumerate(arrays):
        _c.array(fn, "grads" if single else f"grads[{k}]", g, _GRAD_DTYPES, writeable=True)
    found = False
    native = available()
    for g in arrays:
        if native:
            found |= _ext.unscale(_DTYPE_CODES[g.dtype], _raw(g), s)
        else:
            found |= _fallback.unscale(g, s)
    return bool(found)


# ---------------------------------------------------------------------- optimizers

def _check_state(fn, named, writeable_names):
    """named: [(name, array or None)]; first is param. fp32, same size, disjoint."""
    present = [(n, a) for n, a in named if a is not None]
    p_name, p = present[0]
    for n, a in present:
        _c.array(fn, n, a, (_c.F32,), writeable=n in writeable_names)
        _c.size(fn, n, a, p.size, p_name)
    return present


def _check_half(fn, param, param_half, present):
    if param_half is None:
        return
    _c.array(fn, "param_half", param_half, _c.HALF, writeable=True)
    _c.size(fn, "param_half", param_half, param.size, "param")
    present.append(("param_half", param_half))


def _check_disjoint(fn, present):
    for i, (na, a) in enumerate(present):
        for nb, b in present[:i]:
            _c.no_overlap(fn, nb, b, na, a)


def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, first_step=False,
             param_half=None):
    """One torch.optim.SGD step over flat float32 buffers, in place (see module doc)."""
    fn = "sgd_step"
    lr, momentum = _c.number(fn, "lr", lr), _c.number(fn, "momentum", momentum)
    dampening = _c.number(fn, "dampening", dampening)
    weight_decay = _c.number(fn, "weight_decay", weight_decay)
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(f"{fn}(): nesterov=True requires momentum > 0 and dampening = 0, "
                         f"got momentum={momentum}, dampening={dampening}")
    if momentum != 0.0 and momentum_buffer is None:
        raise ValueError(f"{fn}(): momentum={momentum} needs a 'momentum_buffer' array, "
                         f"got None")
    buf = momentum_buffer if momentum != 0.0 else None
    present = _check_state(fn, [("param", param), ("grad", grad), ("momentum_buffer", buf)],
                           ("param", "momentum_buffer"))
    _check_half(fn, param, param_half, present)
    _check_disjoint(fn, present)
    if available():
        half_code = _DTYPE_CODES[param_half.dtype] if param_half is not None else 0
        _ext.sgd(param, grad, buf, None if param_half is None else _raw(param_half),
                 half_code, lr, momentum, dampening, weight_decay, bool(nesterov),
                 bool(maximize), bool(first_step))
    else:
        _fallback.sgd(param, grad, buf, param_half, lr, momentum, dampening, weight_decay,
                      bool(nesterov), bool(maximize), bool(first_step))


def _adam(fn, decoupled, param, grad, exp_avg, exp_avg_sq, lr, step, beta1, beta2, eps,
          weight_decay, amsgrad, max_exp_avg_sq, maximize, param_half):
    lr, step = _c.number(fn, "lr", lr), _c.number(fn, "step", step)
    beta1, beta2 = _c.number(fn, "beta1", beta1), _c.number(fn, "beta2", beta2)
    eps = _c.number(fn, "eps", eps)
    weight_decay = _c.number(fn, "weight_decay", weight_decay)
    if not step >= 1.0:
        raise ValueError(f"{fn}(): step must be >= 1 (the step number used for bias "
                         f"correction), got {step}")
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError(f"{fn}(): amsgrad=True needs a 'max_exp_avg_sq' array, got None")
    vmax = max_exp_avg_sq if amsgrad else None
    present = _check_state(
        fn, [("param", param), ("grad", grad), ("exp_avg", exp_avg),
             ("exp_avg_sq", exp_avg_sq), ("max_exp_avg_sq", vmax)],
        ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    _check_half(fn, param, param_half, present)
    _check_disjoint(fn, present)
    if available():
        half_code = _DTYPE_CODES[param_half.dtype] if param_half is not None else 0
        _ext.adam(param, grad, exp_avg, exp_avg_sq, vmax,
                  None if param_half is None else _raw(param_half), half_code, lr, beta1,
                  beta2, eps, weight_decay, step, bool(amsgrad), decoupled, bool(maximize))
    else:
        _fallback.adam(param, grad, exp_avg, exp_avg_sq, vmax, param_half, lr, beta1, beta2,
                       eps, weight_decay, step, bool(amsgrad), decoupled, bool(maximize))


def adam_step(param, grad, exp_avg, exp_avg_sq, *, lr, step, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, param_half=None):
    """One torch.optim.Adam step over flat float32 buffers, in place (see module doc)."""
    _adam("adam_step", False, param, grad, exp_avg, exp_avg_sq, lr, step, beta1, beta2, eps,
          weight_decay, amsgrad, max_exp_avg_sq, maximize, param_half)


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, step, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=1e-2, amsgrad=False, max_exp_avg_sq=None,
               maximize=False, param_half=None):
    """One torch.optim.AdamW step (decoupled weight decay), in place (see module doc)."""
    _adam("adamw_step", True, param, grad, exp_avg, exp_avg_sq, lr, step, beta1, beta2, eps,
          weight_decay, amsgrad, max_exp_avg_sq, maximize, param_half)


# ------------------------------------------------------------ int8 GEMM (quantization)
# int8 x int8 -> int32 matrix products of deepseek.quantization (C: native/src/dsn_int8.c,
# own dispatch "avx512vnni" / "avx2" / "scalar"; numpy fallback: int32 matmul). All paths
# give bit-identical int32 sums and fp32 epilogues.
#   int8_pack(w int8 [N, K]) -> Int8Packed      once per weight (zero padded layout)
#   int8_gemm(a int8 [M, K], packed) -> int32 [M, N]        exactly a @ w.T in int32
#   int8_linear(a, a_scale [M], packed, w_scale [N], bias [N] | None) -> fp32 [M, N]
#       float32(acc) * (a_scale[m] * w_scale[n]) + bias[n]
#   int8_quantize_rows(x f32 [M, K], per_tensor=False, kp=None, qmax=127)
#       -> (q int8 [M, kp], scale f32 [M])
#       symmetric: scale = amax / qmax, q = clip(rint(x * (1 / scale)), -qmax, qmax);
#       qmax=63 (reduce_range: 7-bit activations, as fbgemm's x86 default) lets the AVX2
#       GEMM skip a step (int8_gemm checks the range of every call's A, so it stays exact)
#   int8_isa() / int8_isa_list() / use_int8_isa(name)

__all__ += ["Int8Packed", "int8_pack", "int8_gemm", "int8_linear", "int8_quantize_rows",
            "int8_isa", "int8_isa_list", "use_int8_isa"]


def _int8_ok():
    return available() and hasattr(_ext, "int8_gemm")


def int8_isa_list():
    """int8 GEMM instruction sets this CPU and build support, best first."""
    return list(_ext.int8_isa_list()) if _ext is not None and hasattr(_ext, "int8_isa_list") \
        else []


def int8_isa():
    """int8 GEMM path in use: "avx512vnni", "avx2", "scalar" or "numpy"."""
    return _ext.int8_isa() if _int8_ok() else "numpy"


def use_int8_isa(name):
    """Run the int8 kernels with one instruction set inside the block (tests, benchmarks)."""
    if not int8_isa_list():
        raise RuntimeError("use_int8_isa(): the extension deepseek._native is not built")
    return _switched(_ext.int8_isa, _ext.int8_isa, name)


class Int8Packed:
    """An int8 weight [N, K] in the kernels' layout: [Np, Kp] zero padded (Np % 4 == 0,
    Kp % 32 == 0), its row sums (int32, the VNNI compensation) and whether it holds -128
    (the AVX2 fast path needs |w| <= 127; such weights run the exact scalar loop)."""
    __slots__ = ("data", "rowsum", "n", "k", "full_range", "_w")

    def __init__(self, w):
        if not isinstance(w, np.ndarray) or w.dtype != np.int8 or w.ndim != 2:
            raise TypeError(f"int8_pack(): weight must be a 2-D int8 ndarray, got "
                            f"{getattr(w, 'dtype', type(w).__name__)} "
                            f"{getattr(w, 'shape', '')}")
        self.n, self.k = w.shape
        np_, kp = -(-self.n // 4) * 4, max(32, -(-self.k // 32) * 32)
        self.data = np.zeros((np_, kp), np.int8)
        self.data[:self.n, :self.k] = w
        self.rowsum = self.data.astype(np.int32).sum(axis=1, dtype=np.int32)
        self.full_range = bool((w == -128).any())
        self._w = self.data[:self.n, :self.k]     # the weight, a view (held once)

    @property
    def nbytes(self):
        return self.data.nbytes + self.rowsum.nbytes


def int8_pack(w):
    """Pack an int8 weight [N, K] once for int8_gemm / int8_linear."""
    return Int8Packed(w)


def _pad_rows(a, kp):
    m, k = a.shape
    if k == kp:
        return np.ascontiguousarray(a)
    out = np.zeros((m, kp), np.int8)
    out[:, :k] = a
    return out


def _int8_args(fn, a, packed):
    if not isinstance(packed, Int8Packed):
        raise TypeError(f"{fn}(): 'packed' must come from int8_pack(), got "
                        f"{type(packed).__name__}")
    if not isinstance(a, np.ndarray) or a.dtype != np.int8 or a.ndim != 2:
        raise TypeError(f"{fn}(): 'a' must be a 2-D int8 ndarray, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    if a.shape[1] not in (packed.k, packed.data.shape[1]):
        raise ValueError(f"{fn}(): 'a' has {a.shape[1]} columns, the weight has "
                         f"K={packed.k}")


def int8_gemm(a, packed):
    """int32 [M, N] = a [M, K] @ w.T, exact (wrap-around free for K < 2**17)."""
    _int8_args("int8_gemm", a, packed)
    m = a.shape[0]
    if not _int8_ok():
        return a[:, :packed.k].astype(np.int32) @ packed._w.T.astype(np.int32)
    out = np.empty((m, packed.n), np.int32)
    d = packed.data
    _ext.int8_gemm(_pad_rows(a, d.shape[1]), m, d, packed.rowsum, d.shape[0], d.shape[1],
                   packed.n, packed.full_range, out, None, None, None, None)
    return out


def int8_linear(a, a_scale, packed, w_scale, bias=None):
    """fp32 [M, N] = float32(a @ w.T) * (a_scale[:, None] * w_scale) + bias."""
    _int8_args("int8_linear", a, packed)
    m = a.shape[0]
    a_scale = np.ascontiguousarray(a_scale, np.float32).reshape(-1)
    w_scale = np.ascontiguousarray(w_scale, np.float32).reshape(-1)
    if a_scale.size != m or w_scale.size != packed.n:
        raise ValueError(f"int8_linear(): a_scale needs {m} values and w_scale {packed.n}, "
                         f"got {a_scale.size} and {w_scale.size}")
    if bias is not None:
        bias = np.ascontiguousarray(bias, np.float32).reshape(-1)
        if bias.size != packed.n:
            raise ValueError(f"int8_linear(): bias needs {packed.n} values, got {bias.size}")
    if not _int8_ok():
        acc = a[:, :packed.k].astype(np.int32) @ packed._w.T.astype(np.int32)
        y = acc.astype(np.float32) * (a_scale[:, None] * w_scale[None, :])
        return y + bias if bias is not None else y
    out = np.empty((m, packed.n), np.float32)
    d = packed.data
    _ext.int8_gemm(_pad_rows(a, d.shape[1]), m, d, packed.rowsum, d.shape[0], d.shape[1],
                   packed.n, packed.full_range, None, a_scale, w_scale, bias, out)
    return out


def int8_quantize_rows(x, per_tensor=False, kp=None, qmax=127):
    """Symmetric dynamic quantization of x [M, K] fp32 per row (or per tensor) to
    [-qmax, qmax]: (q int8 [M, kp or K], scale fp32 [M]); columns past K are zero.
    ``qmax=63`` is reduce_range (7-bit values: the AVX2 GEMM's faster loop)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise TypeError("int8_quantize_rows(): x must be a 2-D ndarray")
    if not isinstance(qmax, (int, np.integer)) or not 1 <= qmax <= 127:
        raise ValueError(f"int8_quantize_rows(): qmax must be an int in [1, 127], got {qmax!r}")
    x = np.ascontiguousarray(x, np.float32)
    m, k = x.shape
    kp = k if kp is None else kp
    if _int8_ok():
        q = np.empty((m, kp), np.int8)
        s = np.empty(m, np.float32)
        _ext.int8_quantize_rows(x, m, k, kp, bool(per_tensor), q, s, int(qmax))
        return q, s
    # fmax skips NaN, as the kernels' max does (a NaN element quantizes to 0)
    amax = np.fmax.reduce(np.abs(x), axis=1) if k else np.zeros(m, np.float32)
    if per_tensor and m:
        amax = np.full(m, amax.max(), np.float32)
    s = np.where(amax > 0, amax / np.float32(qmax), np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.zeros((m, kp), np.int8)
    v = np.rint(x * inv[:, None])
    v[np.isnan(v)] = 0                      # as the kernels: NaN quantizes to 0
    q[:, :k] = np.clip(v, -qmax, qmax).astype(np.int8)
    return q, s


__all__ += ["wq_linear"]


def wq_linear(x, q, scale, bits, group_size, bias=None):
    """Weight-only product fp32 [M, N] = x [M, K] @ dequant(q).T + bias, dequantized
    group by group in the kernel: q int8 [N, Kg] (bits=8) or int4 packed uint8
    [N, Kg / 2] (bits=4, element 2i in the low nibble), scale fp32 [N, Kg / group_size],
    Kg >= K a multiple of group_size (x is zero padded to Kg)."""
    x = np.ascontiguousarray(x, np.float32)
    m, k = x.shape
    n = q.shape[0]
    kg = q.shape[1] * (2 if bits == 4 else 1)
    if k > kg or kg % group_size or scale.shape != (n, kg // group_size):
        raise ValueError(f"wq_linear(): x has {k} features, weight {kg} (group "
                         f"{group_size}), scales {scale.shape}")
    if k != kg:
        xp = np.zeros((m, kg), np.float32)
        xp[:, :k] = x
        x = xp
    if bias is not None:
        bias = np.ascontiguousarray(bias, np.float32)
    if not _int8_ok():
        if bits == 4:
            lo = (q & 0xF).astype(np.int8)
            hi = (q >> 4).astype(np.int8)
            w = np.empty((n, kg), np.int8)
            w[:, 0::2] = np.where(lo > 7, lo - 16, lo)
            w[:, 1::2] = np.where(hi > 7, hi - 16, hi)
        else:
            w = q
        g = kg // group_size
        wf = (w.reshape(n, g, group_size).astype(np.float32) * scale[:, :, None]).reshape(n, kg)
        y = x @ wf.T
        return y + bias if bias is not None else y
    out = np.empty((m, n), np.float32)
    _ext.wq_linear(x, m, np.ascontiguousarray(q), bits, np.ascontiguousarray(scale, np.float32),
                   n, kg, group_size, bias, out)
    return out
