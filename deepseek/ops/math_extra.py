"""More elementwise math: trigonometric and hyperbolic functions, logarithms and
exponentials of other bases, erf, rounding, remainders, copysign, logaddexp, atan2,
hypot, lerp, isclose, nan_to_num.

Each differentiable op is a ``Function`` built by ``_unary``/``_binary`` from its
forward on arrays and its derivative, so the table (``_table_core.MATH_EXTRA``) lists
one class per op. Integer inputs of transcendental ops become the default float dtype
(PyTorch's rule); rounding ops keep integer inputs as they are.
"""
import math

import numpy as np

from ..autograd.function import Function
from .. import dtypes as _dt
from ..backend import special_erf
from .._tensor import Tensor
from ._util import unbroadcast, shape_of, prepare_binary, xp_of, broadcast_error
from .elementwise import _floating, erf as _erf_approx

_scipy = []  # [scipy.special or None], looked up on first use


def _special():
    """scipy.special when installed (exact erf/erfinv; numpy has none), else None.

    Imported on first use, not at import: scipy costs about half a second, which every
    worker process and every `import deepseek` would pay.
    """
    if not _scipy:
        try:
            import scipy.special as sp
        except Exception:  # pragma: no cover - scipy is optional
            sp = None
        _scipy.append(sp)
    return _scipy[0]


def _erf_arr(xp, x):
    # without scipy: an approximation good to 1.2e-7 (float32 rounding)
    if xp is np and _special() is not None:
        return _special().erf(x).astype(x.dtype, copy=False)
    if xp is not np:
        cerf = special_erf(xp)
        if cerf is not None:
            return cerf(x)
    return _erf_approx(xp, x).astype(x.dtype, copy=False)


def _unary(name, f, df, doc, floating=True, uses="input"):
    """A Function class ``name`` with forward ``f(xp, a)`` and backward
    ``g * df(xp, a, out)``, and its public function (documented with ``doc``)."""
    def forward(ctx, a):
        xp = xp_of(a)
        with np.errstate(all="ignore"):
            out = xp.asarray(f(xp, a)).astype(a.dtype, copy=False)
        ctx.save_for_backward(a, out)
        return out

    def backward(ctx, g):
        a, out = ctx.saved_tensors
        with np.errstate(all="ignore"):
            return (g * df(xp_of(g), a, out)).astype(g.dtype, copy=False)

    cls = type(name.capitalize(), (Function,), {"forward": staticmethod(forward),
                                                 "backward": staticmethod(backward),
                                                 "__module__": __name__})

    def op(input):
        return cls.apply(_floating(input) if floating else input)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    op.__module__ = __name__
    return cls, op


_LN2, _LN10 = math.log(2.0), math.log(10.0)
_2_SQRTPI = 2.0 / math.sqrt(math.pi)

Tan, tan = _unary("tan", lambda xp, a: xp.tan(a), lambda xp, a, o: 1 + o * o,
                  "Tangent elementwise (integer inputs become the default float dtype).")
Asin, asin = _unary("asin", lambda xp, a: xp.arcsin(a), lambda xp, a, o: 1 / xp.sqrt(1 - a * a),
                    "Inverse sine elementwise (NaN outside [-1, 1]).")
Acos, acos = _unary("acos", lambda xp, a: xp.arccos(a), lambda xp, a, o: -1 / xp.sqrt(1 - a * a),
                    "Inverse cosine elementwise (NaN outside [-1, 1]).")
Atan, atan = _unary("atan", lambda xp, a: xp.arctan(a), lambda xp, a, o: 1 / (1 + a * a),
                    "Inverse tangent elementwise.")
Sinh, sinh = _unary("sinh", lambda xp, a: xp.sinh(a), lambda xp, a, o: xp.cosh(a),
                    "Hyperbolic sine elementwise.")
Cosh, cosh = _unary("cosh", lambda xp, a: xp.cosh(a), lambda xp, a, o: xp.sinh(a),
                    "Hyperbolic cosine elementwise.")
Asinh, asinh = _unary("asinh", lambda xp, a: xp.arcsinh(a), lambda xp, a, o: 1 / xp.sqrt(a * a + 1),
                      "Inverse hyperbolic sine elementwise.")
Acosh, acosh = _unary("acosh", lambda xp, a: xp.arccosh(a), lambda xp, a, o: 1 / xp.sqrt(a * a - 1),
                      "Inverse hyperbolic cosine elementwise (NaN below 1).")
Atanh, atanh = _unary("atanh", lambda xp, a: xp.arctanh(a), lambda xp, a, o: 1 / (1 - a * a),
                      "Inverse hyperbolic tangent elementwise (NaN outside [-1, 1]).")
Log2, log2 = _unary("log2", lambda xp, a: xp.log2(a), lambda xp, a, o: 1 / (a * _LN2),
                    "Base-2 logarithm elementwise.")
Log10, log10 = _unary("log10", lambda xp, a: xp.log10(a), lambda xp, a, o: 1 / (a * _LN10),
                      "Base-10 logarithm elementwise.")
Log1p, log1p = _unary("log1p", lambda xp, a: xp.log1p(a), lambda xp, a, o: 1 / (1 + a),
                      "log(1 + x) elementwise, accurate for small x.")
Exp2, exp2 = _unary("exp2", lambda xp, a: xp.exp2(a), lambda xp, a, o: o * _LN2,
                    "2 ** x elementwise.")
Expm1, expm1 = _unary("expm1", lambda xp, a: xp.expm1(a), lambda xp, a, o: o + 1,
                      "exp(x) - 1 elementwise, accurate for small x.")
Reciprocal, reciprocal = _unary("reciprocal", lambda xp, a: 1 / a, lambda xp, a, o: -o * o,
                                "1 / x elementwise (integer inputs become the default float dtype).")
Erf, erf = _unary("erf", _erf_arr, lambda xp, a, o: _2_SQRTPI * xp.exp(-a * a),
                  "The error function elementwise.")
Erfc, erfc = _unary("erfc", lambda xp, a: 1 - _erf_arr(xp, a), lambda xp, a, o: -_2_SQRTPI * xp.exp(-a * a),
                    "1 - erf(x) elementwise.")


def _erfinv_arr(xp, a):
    if xp is np and _special() is not None:
        return _special().erfinv(a)
    from ..nn.init import _erfinv
    return _erfinv(a)


Erfinv, erfinv = _unary("erfinv", _erfinv_arr, lambda xp, a, o: 0.5 * math.sqrt(math.pi) * xp.exp(o * o),
                        "Inverse error function elementwise (defined on (-1, 1)).")
Frac, frac = _unary("frac", lambda xp, a: a - xp.trunc(a), lambda xp, a, o: 1, floating=False,
                    doc="The fractional part ``x - trunc(x)`` elementwise (gradient 1).")


def _rounding(name, fn, doc):
    # floor/ceil/round/trunc are flat almost everywhere: PyTorch's gradient is 0
    return _unary(name, fn, lambda xp, a, o: 0, doc, floating=False)


Floor, floor = _rounding("floor", lambda xp, a: xp.floor(a) if _dt.is_floating(a.dtype) else a,
                         "Largest integer <= x elementwise (integer tensors unchanged; gradient 0).")
Ceil, ceil = _rounding("ceil", lambda xp, a: xp.ceil(a) if _dt.is_floating(a.dtype) else a,
                       "Smallest integer >= x elementwise (integer tensors unchanged; gradient 0).")
Trunc, trunc = _rounding("trunc", lambda xp, a: xp.trunc(a) if _dt.is_floating(a.dtype) else a,
                         "x rounded toward zero elementwise (integer tensors unchanged; gradient 0).")
fix = trunc


class Round(Function):
    """Round half to even (PyTorch's and numpy's rule), to ``decimals`` places."""

    @staticmethod
    def forward(ctx, a, decimals=0):
        if not _dt.is_floating(a.dtype):
            return a.copy()
        return xp_of(a).round(a, decimals).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g * 0


def round(input, decimals=0):
    """Round to the nearest integer (half to even), or to ``decimals`` decimal places; gradient 0."""
    return Round.apply(input, decimals=int(decimals))


# ---- binary ---------------------------------------------------------------------------
def _binary(name, f, da, db, doc, floating=False):
    """A Function class with forward ``f(xp, a, b)`` and partial derivatives
    ``da(xp, a, b, out)`` / ``db(xp, a, b, out)`` (None: no gradient to that input)."""
    def forward(ctx, a, b):
        xp = xp_of(a, b)
        with np.errstate(all="ignore"):
            out = xp.asarray(f(xp, a, b))
        # prepare_binary already promoted: the result has the tensor operands' dtype
        out = out.astype((a if hasattr(a, "dtype") else b).dtype, copy=False)
        ctx.save_for_backward(a, b, out)
        return out

    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        xp = xp_of(g)
        na = ctx.needs_input_grad
        with np.errstate(all="ignore"):
            ga = unbroadcast((g * da(xp, a, b, out)).astype(g.dtype, copy=False), shape_of(a)) \
                if na[0] and da is not None else None
            gb = unbroadcast((g * db(xp, a, b, out)).astype(g.dtype, copy=False), shape_of(b)) \
                if na[1] and db is not None else None
        return ga, gb

    cls = type("".join(p.capitalize() for p in name.split("_")), (Function,),
               {"forward": staticmethod(forward), "backward": staticmethod(backward),
                "__module__": __name__})

    def op(input, other):
        a, b = prepare_binary(input, other, name)
        if floating:
            a = _floating(a) if isinstance(a, Tensor) else float(a)
            b = _floating(b) if isinstance(b, Tensor) else float(b)
        try:
            return cls.apply(a, b)
        except ValueError as e:
            raise broadcast_error(name, e, a, b) from None
    op.__name__ = op.__qualname__ = name
    op.__module__ = __name__
    op.__doc__ = doc
    return cls, op


def _int_guard(xp, b):
    """Integer modulo by zero raises in PyTorch (ZeroDivisionError in Python)."""
    if getattr(b, "dtype", None) is not None and b.dtype.kind in "iu" and bool((b == 0).any()):
        raise RuntimeError("ZeroDivisionError")
    if isinstance(b, int) and b == 0:
        raise RuntimeError("ZeroDivisionError")


def _fmod(xp, a, b):
    _int_guard(xp, b)
    return xp.fmod(a, b)


def _remainder(xp, a, b):
    _int_guard(xp, b)
    return xp.remainder(a, b)


Fmod, fmod = _binary("fmod", _fmod, lambda xp, a, b, o: 1, lambda xp, a, b, o: -xp.trunc(a / b),
                     "C-style remainder: ``a - trunc(a / b) * b`` (the sign of ``a``).")
Remainder, remainder = _binary("remainder", _remainder, lambda xp, a, b, o: 1,
                               lambda xp, a, b, o: -xp.floor(a / b),
                               "Python-style remainder ``a % b``: ``a - floor(a / b) * b`` (the sign of ``b``).")


def _sgn(xp, x):
    return xp.copysign(1.0, x)


Copysign, copysign = _binary(
    "copysign", lambda xp, a, b: xp.copysign(a, b),
    lambda xp, a, b, o: xp.where(a == 0, 0.0, _sgn(xp, a) * _sgn(xp, b)), lambda xp, a, b, o: 0,
    "``|a|`` with the sign of ``b`` elementwise (the result is floating).", floating=True)


def _logaddexp(xp, a, b):
    return xp.logaddexp(a, b)


Logaddexp, logaddexp = _binary(
    "logaddexp", _logaddexp, lambda xp, a, b, o: xp.exp(a - o), lambda xp, a, b, o: xp.exp(b - o),
    "log(exp(a) + exp(b)) elementwise, computed stably.", floating=True)
Logaddexp2, logaddexp2 = _binary(
    "logaddexp2", lambda xp, a, b: xp.logaddexp2(a, b), lambda xp, a, b, o: xp.exp2(a - o),
    lambda xp, a, b, o: xp.exp2(b - o), "log2(2**a + 2**b) elementwise, computed stably.", floating=True)
Atan2, atan2 = _binary(
    "atan2", lambda xp, a, b: xp.arctan2(a, b), lambda xp, a, b, o: b / (a * a + b * b),
    lambda xp, a, b, o: -a / (a * a + b * b), "The angle of the point (b, a): atan(a / b) in the right quadrant.",
    floating=True)
arctan2 = atan2
Hypot, hypot = _binary(
    "hypot", lambda xp, a, b: xp.hypot(a, b), lambda xp, a, b, o: a / o, lambda xp, a, b, o: b / o,
    "sqrt(a**2 + b**2) elementwise, without overflow.", floating=True)


class Lerp(Function):
    """start + weight * (end - start); weight a tensor or a number."""

    @staticmethod
    def forward(ctx, start, end, weight):
        ctx.ss, ctx.se = shape_of(start), shape_of(end)
        ctx.save_for_backward(start, end, weight)
        return (start + weight * (end - start)).astype(start.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        s, e, w = ctx.saved_tensors
        na = ctx.needs_input_grad
        gs = unbroadcast((g * (1 - w)).astype(g.dtype, copy=False), ctx.ss) if na[0] else None
        ge = unbroadcast((g * w).astype(g.dtype, copy=False), ctx.se) if na[1] else None
        gw = unbroadcast((g * (e - s)).astype(g.dtype, copy=False), shape_of(w)) \
            if len(na) > 2 and na[2] else None
        return gs, ge, gw


def lerp(input, end, weight):
    """Linear interpolation ``input + weight * (end - input)`` (broadcast)."""
    s, e = prepare_binary(input, end, "lerp")
    try:
        return Lerp.apply(s, e, weight)
    except ValueError as exc:
        raise broadcast_error("lerp", exc, s, e) from None


# ---- without gradient -----------------------------------------------------------------
def isclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    """``|input - other| <= atol + rtol * |other|`` elementwise: a bool tensor."""
    a, b = prepare_binary(input, other, "isclose")
    ad = a._data if isinstance(a, Tensor) else a
    bd = b._data if isinstance(b, Tensor) else b
    return Tensor._make(xp_of(ad, bd).asarray(xp_of(ad, bd).isclose(ad, bd, rtol=rtol, atol=atol,
                                                                     equal_nan=equal_nan)))


def nan_to_num(input, nan=0.0, posinf=None, neginf=None):
    """NaN -> ``nan``, +inf -> ``posinf`` (default: the dtype's max), -inf -> ``neginf``
    (default: its min). Gradient passes where the input was finite."""
    from .elementwise import where
    from .nondiff import isfinite, isnan
    if not _dt.is_floating(input.dtype):
        return input.clone()
    import ml_dtypes  # finfo that knows bfloat16
    fi = ml_dtypes.finfo(input.dtype)
    hi = float(fi.max) if posinf is None else posinf
    lo = float(fi.min) if neginf is None else neginf
    xp = xp_of(input._data)
    repl = xp.where(xp.isnan(input._data), nan, xp.where(input._data > 0, hi, lo)).astype(input.dtype)
    return where(isfinite(input), input, Tensor._make(repl))


def float_power(input, exponent):
    """``input ** exponent`` in float64 (PyTorch's float_power)."""
    from .elementwise import pow
    from . import cast
    a = cast(input, np.float64) if isinstance(input, Tensor) else float(input)
    b = cast(exponent, np.float64) if isinstance(exponent, Tensor) else float(exponent)
    return pow(a, b)
