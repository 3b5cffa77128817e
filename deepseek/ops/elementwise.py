"""Elementwise ops with broadcasting: arithmetic, math functions, activations."""
import math

import numpy as np

from .. import native as _native
from ..autograd.function import Function
from .._tensor import Tensor
from ._util import unbroadcast, shape_of, prepare_binary, row_kernel, xp_of, broadcast_error
from . import _par


# ---- binary arithmetic -------------------------------------------------------------
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        sa, sb = getattr(a, "shape", ()), getattr(b, "shape", ())
        if sa != sb:
            # broadcasting: backward sums the gradient back to each shape. Equal shapes
            # store nothing: no ctx __dict__ is made, the bulk of a small add's cost
            ctx.sa, ctx.sb = sa, sb
        elif type(a) is np.ndarray and a.size >= _par.ROWS_MIN_ELEMENTS and _par_add_applies(a, b):
            a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            return _par.add_rows(a2, b2, np.empty_like(a2)).reshape(a.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        sa = getattr(ctx, "sa", None)
        if sa is None:  # equal shapes: g has each input's shape
            return (g if na[0] else None, g if na[1] else None)
        return (unbroadcast(g, sa) if na[0] else None,
                unbroadcast(g, ctx.sb) if na[1] else None)


def _par_add_applies(a, b):
    """Given a long numpy ``a`` and ``b`` of its shape (the caller checks that much,
    cheaply, first): whether it is a same-dtype, C-contiguous float add, the case worth the
    threads (residual connections); anything else is numpy's ``a + b``."""
    return (type(b) is np.ndarray and a.dtype == b.dtype and a.dtype.kind == "f"
            and a.flags.c_contiguous and b.flags.c_contiguous)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.sa, ctx.sb = shape_of(a), shape_of(b)
        return a - b

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        return (unbroadcast(g, ctx.sa) if na[0] else None,
                unbroadcast(-g, ctx.sb) if na[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        na = ctx.needs_input_grad
        return (unbroadcast(g * b, shape_of(a)) if na[0] else None,
                unbroadcast(g * a, shape_of(b)) if na[1] else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        na = ctx.needs_input_grad
        ga = unbroadcast(g / b, shape_of(a)) if na[0] else None
        gb = unbroadcast(-g * a / (b * b), shape_of(b)) if na[1] else None
        return ga, gb


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = a ** b  # 0 ** -1 is inf, (-1) ** 0.5 nan: PyTorch's values, no warnings
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        na = ctx.needs_input_grad
        xp = xp_of(g)
        ga = gb = None
        if na[0]:
            if isinstance(b, (int, float)):
                ga = g * (b * a ** (b - 1)) if b != 0 else g * 0
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    d = b * a ** (b - 1)
                # d/da a**0 is 0, also at a == 0 (PyTorch): not 0 * inf
                ga = unbroadcast(g * xp.where(b == 0, 0, d).astype(d.dtype, copy=False), shape_of(a))
        if na[1]:
            # PyTorch: out * log(a), except 0 where a == 0 and b >= 0 (so 0 ** b has no
            # nan gradient); a == 0 with b < 0 gives -inf, a < 0 gives nan, as there
            with np.errstate(divide="ignore", invalid="ignore"):
                if isinstance(a, (int, float)):
                    loga = math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)
                    d = out * loga
                    d = xp.where(b >= 0, 0, d) if a == 0 else d
                else:
                    d = xp.where((a == 0) & (b >= 0), 0, out * xp.log(a))
            gb = unbroadcast((g * d).astype(g.dtype, copy=False), shape_of(b))
        return ga, gb


class Maximum(Function):
    @staticmethod
    def forward(ctx, a, b):
        xp = xp_of(a, b)
        ctx.save_for_backward(a, b)
        return xp.maximum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return _minmax_grads(ctx, g, a, b, a > b)


class Minimum(Function):
    @staticmethod
    def forward(ctx, a, b):
        xp = xp_of(a, b)
        ctx.save_for_backward(a, b)
        return xp.minimum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return _minmax_grads(ctx, g, a, b, a < b)


def _minmax_grads(ctx, g, a, b, a_wins):
    # ties split the gradient evenly, as PyTorch does
    tie = a == b
    wa = a_wins + 0.5 * tie
    na = ctx.needs_input_grad
    return (unbroadcast((g * wa).astype(g.dtype, copy=False), shape_of(a)) if na[0] else None,
            unbroadcast((g * (1 - wa)).astype(g.dtype, copy=False), shape_of(b)) if na[1] else None)


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        xp = xp_of(cond, a, b)
        ctx.cond = cond
        ctx.sa, ctx.sb = shape_of(a), shape_of(b)
        return xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        na = ctx.needs_input_grad
        zero = g.dtype.type(0)
        return (None,
                unbroadcast(g * ctx.cond, ctx.sa).astype(g.dtype, copy=False) if na[1] else None,
                unbroadcast(xp_of(g).where(ctx.cond, zero, g), ctx.sb) if na[2] else None)


# ---- unary math ----------------------------------------------------------------------
class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return abs(a)

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        return g * xp_of(a).sign(a)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = xp_of(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return xp_of(a).log(a)

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        return g / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(invalid="ignore"):
            out = xp_of(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        with np.errstate(divide="ignore"):
            return g / (2 * out)


class Rsqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 1 / xp_of(a).sqrt(a)
        ctx.save_for_backward(out)
        return out.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        return g * (-0.5 * out * out * out)


class Sin(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return xp_of(a).sin(a)

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        return g * xp_of(a).cos(a)


class Cos(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return xp_of(a).cos(a)

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        return -g * xp_of(a).sin(a)


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = xp_of(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        return g * (1 - out * out)


def _sigmoid(xp, a):
    # numerically stable on both tails; keeps the input dtype
    with np.errstate(over="ignore"):
        e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        out = _sigmoid(xp_of(a), a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        return g * out * (1 - out)


# A float32 zero for relu: numpy resolves maximum(float32, float32 scalar) faster than
# maximum(float32, Python int) (no weak-scalar promotion), a sizeable part of a tiny op;
# a numpy input also skips the array-module lookup.
_F32, _F32_ZERO = np.dtype(np.float32), np.float32(0)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        xp = np if type(a) is np.ndarray else xp_of(a)
        out = xp.maximum(a, _F32_ZERO if a.dtype is _F32 else 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        return g * (out > 0)


def erf(xp, x):
    """erf elementwise: the native kernel (one vectorised pass) for float32/float64 numpy
    arrays, else Numerical Recipes' erfc (fractional error < 1.2e-7; numpy has none)."""
    if xp is np and type(x) is np.ndarray and x.dtype in _ERF_NATIVE and _native.available():
        return _native.erf(x)
    z = xp.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    r = 1.0 - t * xp.exp(poly)
    return xp.where(x >= 0, r, -r)


_ERF_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT2PI_INV = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C = math.sqrt(2.0 / math.pi)


def _gelu_native(a, cdf):
    """native.gelu of a float32 array, a contiguous one cut into one piece per thread."""
    if not a.flags.c_contiguous:
        return _native.gelu(a, cdf=cdf)
    out = np.empty_like(a)
    fa, fo = a.reshape(-1), out.reshape(-1)
    fc = None if cdf is None else cdf.reshape(-1)
    _par.split_rows(fa.size, fa.size, lambda lo, hi: _native.gelu(
        fa[lo:hi], fo[lo:hi], None if fc is None else fc[lo:hi]))
    return out


class Gelu(Function):
    @staticmethod
    def forward(ctx, a, approximate="none"):
        xp = xp_of(a)
        ctx.save_for_backward(a)
        ctx.approximate = approximate
        if approximate == "tanh":
            inner = _TANH_C * (a + 0.044715 * a * a * a)
            th = xp.tanh(inner)
            ctx.th = th
            return (0.5 * a * (1 + th)).astype(a.dtype, copy=False)
        if approximate != "none":
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        if xp is np and type(a) is np.ndarray and a.dtype == np.float32 and _native.available():
            # one native pass instead of five; the same float32 operations in the same
            # order, so the same bits. The CDF is kept only when a backward will need it.
            ctx.cdf = np.empty_like(a) if ctx.needs_input_grad else None
            return _gelu_native(a, ctx.cdf)
        cdf = 0.5 * (1.0 + erf(xp, a * _SQRT1_2))
        ctx.cdf = cdf
        return (a * cdf).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        xp = xp_of(a)
        if ctx.approximate == "tanh":
            th = ctx.th
            d_inner = _TANH_C * (1 + 3 * 0.044715 * a * a)
            d = 0.5 * (1 + th) + 0.5 * a * (1 - th * th) * d_inner
        else:
            cdf = ctx.cdf if ctx.cdf is not None else 0.5 * (1.0 + erf(xp, a * _SQRT1_2))
            if xp is np and a.ndim and g.dtype == a.dtype == cdf.dtype and a.dtype.kind == "f":
                # the expression below in two buffers instead of seven temporaries:
                # the same float operations on the same operands, so the same bits
                t = np.multiply(a, -0.5)
                t *= a
                np.exp(t, out=t)
                tail = row_kernel("gelu_backward_tail", g, a, cdf, t)
                if tail is not None:  # the rest in one C pass, the same operations
                    tail(g, a, cdf, t, t, _SQRT2PI_INV)
                    return t
                d = np.multiply(a, _SQRT2PI_INV)
                d *= t
                d += cdf
                d *= g
                return d
            d = cdf + a * _SQRT2PI_INV * xp.exp(-0.5 * a * a)
        return (g * d).astype(g.dtype, copy=False)


class Silu(Function):
    @staticmethod
    def forward(ctx, a):
        s = _sigmoid(xp_of(a), a)
        ctx.save_for_backward(a, s)
        return a * s

    @staticmethod
    def backward(ctx, g):
        a, s = ctx.saved_tensors
        return g * (s * (1 + a * (1 - s)))


class Clamp(Function):
    @staticmethod
    def forward(ctx, a, lo=None, hi=None):
        xp = xp_of(a)
        ctx.save_for_backward(a)
        ctx.lo, ctx.hi = lo, hi
        out = a
        if lo is not None:
            out = xp.maximum(out, lo)
        if hi is not None:
            out = xp.minimum(out, hi)
        return out.astype(a.dtype, copy=False) if out is not a else a.copy()

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        mask = True
        if ctx.lo is not None:
            mask = mask & (a >= ctx.lo)
        if ctx.hi is not None:
            mask = mask & (a <= ctx.hi)
        return g * mask


class Sign(Function):
    @staticmethod
    def forward(ctx, a):
        return xp_of(a).sign(a)

    @staticmethod
    def backward(ctx, g):
        return g * 0


# ---- functional wrappers -------------------------------------------------------------
def add(a, b, alpha=1):
    """a + alpha * b."""
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, Tensor) else b * alpha
    a, b = prepare_binary(a, b, "add")
    try:
        return Add.apply(a, b)
    except ValueError as e:
        raise broadcast_error("add", e, a, b) from None


def sub(a, b, alpha=1):
    """a - alpha * b."""
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, Tensor) else b * alpha
    a, b = prepare_binary(a, b, "sub")
    try:
        return Sub.apply(a, b)
    except ValueError as e:
        raise broadcast_error("sub", e, a, b) from None


def mul(a, b):
    """a * b elementwise (broadcast, PyTorch type promotion)."""
    a, b = prepare_binary(a, b, "mul")
    try:
        return Mul.apply(a, b)
    except ValueError as e:
        raise broadcast_error("mul", e, a, b) from None


def div(a, b, rounding_mode=None):
    """True division (integer inputs give floats), or floor/trunc division."""
    from . import cast
    from .. import dtypes
    a, b = prepare_binary(a, b, "div")
    if rounding_mode is not None:
        return _rounded_div(a, b, rounding_mode)
    for x in (a, b):
        if isinstance(x, Tensor) and not dtypes.is_floating(x.dtype):
            a = cast(a, dtypes.get_default_dtype()) if isinstance(a, Tensor) else float(a)
            b = cast(b, dtypes.get_default_dtype()) if isinstance(b, Tensor) else float(b)
            break
    try:
        return Div.apply(a, b)
    except ValueError as e:
        raise broadcast_error("div", e, a, b) from None


def _rounded_div(a, b, mode):
    from ..autograd.grad_mode import no_grad
    aa = a._data if isinstance(a, Tensor) else a
    bb = b._data if isinstance(b, Tensor) else b
    xp = xp_of(aa, bb)
    if mode not in ("floor", "trunc"):
        raise RuntimeError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{mode}'")
    # integer division by zero is an error in PyTorch (not numpy's silent 0)
    if getattr(bb, "dtype", None) is not None and bb.dtype.kind in "biu" and \
            getattr(aa, "dtype", np.dtype(type(aa))).kind in "biu" and bool((bb == 0).any()):
        raise RuntimeError("ZeroDivisionError")
    if isinstance(bb, int) and bb == 0 and getattr(aa, "dtype", None) is not None and aa.dtype.kind in "biu":
        raise RuntimeError("ZeroDivisionError")
    with no_grad(), np.errstate(divide="ignore", invalid="ignore"):
        if mode == "floor":
            return Tensor._make(xp.asarray(xp.floor_divide(aa, bb)))
        rt = xp.result_type(aa, bb)
        if rt.kind in "iu":  # exact for integers: |a| // |b| with the sign of a / b
            q = (xp.abs(aa) // xp.abs(bb)) * xp.sign(aa) * xp.sign(bb)
            return Tensor._make(xp.asarray(q).astype(rt, copy=False))
        return Tensor._make(xp.asarray(xp.trunc(aa / bb)).astype(rt, copy=False))


def pow(a, b):
    """a ** b elementwise (broadcast); either may be a Python number."""
    a, b = prepare_binary(a, b, "pow")
    try:
        return Pow.apply(a, b)
    except ValueError as e:
        raise broadcast_error("pow", e, a, b) from None


def maximum(a, b):
    """Elementwise maximum of a and b (broadcast); ties split the gradient."""
    a, b = prepare_binary(a, b, "maximum")
    try:
        return Maximum.apply(a, b)
    except ValueError as e:
        raise broadcast_error("maximum", e, a, b) from None


def minimum(a, b):
    """Elementwise minimum of a and b (broadcast); ties split the gradient."""
    a, b = prepare_binary(a, b, "minimum")
    try:
        return Minimum.apply(a, b)
    except ValueError as e:
        raise broadcast_error("minimum", e, a, b) from None


def where(cond, a, b):
    """Elements of ``a`` where ``cond`` else of ``b`` (broadcast)."""
    c = cond._data if isinstance(cond, Tensor) else np.asarray(cond)
    if c.dtype != np.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got dtype {c.dtype}")
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a, b = _scalar_pair(a, b, cond)
    a, b = prepare_binary(a, b, "where")
    try:
        return Where.apply(c, a, b)
    except ValueError as e:
        raise broadcast_error("where", e, c, a, b) from None


def _scalar_pair(a, b, cond):
    """``where(cond, 4, 2)``: two Python scalars make tensors of PyTorch's result dtype
    (int64 for ints, the default float dtype when either is a float, bool for bools)."""
    from .. import dtypes
    if isinstance(a, bool) and isinstance(b, bool):
        dt = np.bool_
    elif isinstance(a, float) or isinstance(b, float):
        dt = dtypes.get_default_dtype()
    else:
        dt = np.int64
    xp = xp_of(cond._data) if isinstance(cond, Tensor) else np
    return Tensor._make(xp.asarray(a, dtype=dt)), Tensor._make(xp.asarray(b, dtype=dt))


def clamp(a, min=None, max=None):
    """Limit values to [min, max]; either bound may be None."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        out = a
        if min is not None:
            out = maximum(out, min)
        if max is not None:
            out = minimum(out, max)
        return out
    if isinstance(min, float) or isinstance(max, float):
        a = _floating(a)  # an integer tensor clamped to float bounds becomes float
    return Clamp.apply(a, min, max)


def gelu(a, approximate="none"):
    """GELU: x * Phi(x) (``approximate='tanh'``: the tanh approximation)."""
    return Gelu.apply(a, approximate=approximate)


def neg(a):
    """-a elementwise."""
    return Neg.apply(a)


def abs_(a):
    """|a| elementwise (gradient 0 at 0, like PyTorch)."""
    return Abs.apply(a)


def _on_floats(fn, name, what):
    """The public op ``name``: ``fn.apply`` elementwise, on the default float dtype
    when the input is an integer tensor; ``what`` begins its docstring."""
    def op(a):
        return fn.apply(_floating(a))
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"{what} elementwise (integer inputs become the default float dtype)."
    return op


exp = _on_floats(Exp, "exp", "e ** a")
log = _on_floats(Log, "log", "Natural logarithm")
sqrt = _on_floats(Sqrt, "sqrt", "Square root")
rsqrt = _on_floats(Rsqrt, "rsqrt", "1 / sqrt(a)")
sin = _on_floats(Sin, "sin", "Sine")
cos = _on_floats(Cos, "cos", "Cosine")
tanh = _on_floats(Tanh, "tanh", "Hyperbolic tangent")


def sigmoid(a):
    """1 / (1 + exp(-a)) elementwise, finite for large |a|."""
    return Sigmoid.apply(_floating(a))


def relu(a):
    """max(a, 0) elementwise (gradient 0 at 0)."""
    return Relu.apply(a)


def silu(a):
    """a * sigmoid(a) elementwise (SiLU / swish)."""
    return Silu.apply(_floating(a))


def sign(a):
    """-1, 0 or 1 by the sign of each element; gradient 0."""
    return Sign.apply(a)


def square(a):
    """a * a elementwise."""
    return mul(a, a)


def _floating(a):
    """Integer inputs of transcendental ops are promoted to the default float dtype."""
    from . import cast
    from .. import dtypes
    if not isinstance(a, Tensor):
        raise TypeError(f"expected a Tensor, got {type(a).__name__}")
    if not dtypes.is_floating(a._data.dtype):
        return cast(a, dtypes.get_default_dtype())
    return a
