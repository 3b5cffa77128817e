"""Activation functions beyond those of ``elementwise``: hardsigmoid, hardswish,
softsign, selu, celu, elu, threshold, hardshrink, softshrink, tanhshrink, glu, prelu.

Each is one ``Function`` (forward and derivative on arrays), so its gradient is
exact at the kinks the way PyTorch defines it.
"""
import numpy as np

from ..autograd.function import Function
from .._tensor import Tensor
from ._util import xp_of, unbroadcast, shape_of
from .elementwise import _floating

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _act(name, f, df, doc, params=()):
    """Function class + public function ``name(input, *params)`` with forward
    ``f(xp, a, *params)`` and derivative ``df(xp, a, out, *params)``."""
    def forward(ctx, a, *p):
        xp = xp_of(a)
        with np.errstate(all="ignore"):
            out = xp.asarray(f(xp, a, *p)).astype(a.dtype, copy=False)
        ctx.save_for_backward(a, out)
        ctx.p = p
        return out

    def backward(ctx, g):
        a, out = ctx.saved_tensors
        with np.errstate(all="ignore"):
            return (g * df(xp_of(g), a, out, *ctx.p)).astype(g.dtype, copy=False)

    cls = type("".join(w.capitalize() for w in name.split("_")), (Function,),
               {"forward": staticmethod(forward), "backward": staticmethod(backward), "__module__": __name__})
    return cls


Hardsigmoid = _act("hardsigmoid", lambda xp, a: xp.clip(a / 6 + 0.5, 0, 1),
                   lambda xp, a, o: ((a > -3) & (a < 3)) / 6, "")
Hardswish = _act("hardswish", lambda xp, a: a * xp.clip(a + 3, 0, 6) / 6,
                 lambda xp, a, o: xp.where(a < -3, 0, xp.where(a <= 3, a / 3 + 0.5, 1)), "")
Softsign = _act("softsign", lambda xp, a: a / (1 + xp.abs(a)), lambda xp, a, o: 1 / (1 + xp.abs(a)) ** 2, "")
Tanhshrink = _act("tanhshrink", lambda xp, a: a - xp.tanh(a), lambda xp, a, o: xp.tanh(a) ** 2, "")
Elu = _act("elu", lambda xp, a, al, sc, isc: xp.where(a > 0, sc * a, sc * al * xp.expm1(xp.minimum(a, 0) * isc)),
           lambda xp, a, o, al, sc, isc: xp.where(a > 0, sc, sc * al * isc * xp.exp(xp.minimum(a, 0) * isc)), "")
Threshold = _act("threshold", lambda xp, a, th, v: xp.where(a > th, a, v),
                 lambda xp, a, o, th, v: a > th, "")
Hardshrink = _act("hardshrink", lambda xp, a, l: xp.where(xp.abs(a) > l, a, 0),
                  lambda xp, a, o, l: xp.abs(a) > l, "")
Softshrink = _act("softshrink", lambda xp, a, l: xp.where(a > l, a - l, xp.where(a < -l, a + l, 0)),
                  lambda xp, a, o, l: xp.abs(a) > l, "")


def _maybe_inplace(input, out, inplace):
    return input._assign_result(out) if inplace else out


def hardsigmoid(input, inplace=False):
    """relu6(x + 3) / 6."""
    return _maybe_inplace(input, Hardsigmoid.apply(_floating(input)), inplace)


def hardswish(input, inplace=False):
    """x * relu6(x + 3) / 6."""
    return _maybe_inplace(input, Hardswish.apply(_floating(input)), inplace)


def softsign(input):
    """x / (1 + |x|)."""
    return Softsign.apply(_floating(input))


def tanhshrink(input):
    """x - tanh(x)."""
    return Tanhshrink.apply(_floating(input))


def elu(input, alpha=1.0, inplace=False):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return _maybe_inplace(input, Elu.apply(_floating(input), float(alpha), 1.0, 1.0), inplace)


def selu(input, inplace=False):
    """scale * elu(x, alpha) with the self-normalising constants."""
    return _maybe_inplace(input, Elu.apply(_floating(input), _SELU_ALPHA, _SELU_SCALE, 1.0), inplace)


def celu(input, alpha=1.0, inplace=False):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    if alpha == 0:
        raise RuntimeError("ZeroDivisionError")
    return _maybe_inplace(input, Elu.apply(_floating(input), float(alpha), 1.0, 1.0 / alpha), inplace)


def threshold(input, threshold, value, inplace=False):
    """x where x > threshold, else ``value``."""
    return _maybe_inplace(input, Threshold.apply(input, threshold, value), inplace)


def hardshrink(input, lambd=0.5):
    """x where |x| > lambd, else 0."""
    return Hardshrink.apply(input, lambd)


def softshrink(input, lambd=0.5):
    """x - lambd above lambd, x + lambd below -lambd, else 0."""
    if lambd < 0:
        raise RuntimeError(f"lambda must be greater or equal to 0, but found to be {lambd}.")
    return Softshrink.apply(input, lambd)


def glu(input, dim=-1):
    """a * sigmoid(b) where a, b are the halves of ``input`` along ``dim``."""
    from .shape import chunk
    from .elementwise import mul, sigmoid
    n = input.shape[dim]
    if n % 2:
        raise RuntimeError(f"Halving dimension must be even, but dimension {dim % input.ndim} is size {n}")
    a, b = chunk(input, 2, dim)
    return mul(a, sigmoid(b))


class Prelu(Function):
    @staticmethod
    def forward(ctx, a, w):
        ctx.save_for_backward(a, w)
        return (a * xp_of(a).where(a > 0, 1, w)).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        a, w = ctx.saved_tensors
        xp = xp_of(g)
        na = ctx.needs_input_grad
        ga = (g * xp.where(a > 0, 1, w)).astype(g.dtype, copy=False) if na[0] else None
        gw = unbroadcast(g * xp.where(a > 0, 0, a), shape_of(w)) if na[1] else None
        return ga, gw


def prelu(input, weight):
    """max(0, x) + weight * min(0, x); ``weight`` has one value or one per channel (dim 1)."""
    from .shape import reshape
    if weight.numel() != 1:
        if input.ndim < 2 or input.shape[1] != weight.numel():
            raise RuntimeError(f"Mismatch of parameter numbers and input channel size. Found parameter "
                               f"numbers = {weight.numel()} and channel size = "
                               f"{input.shape[1] if input.ndim >= 2 else 1}.")
        weight = reshape(weight, (1, -1) + (1,) * (input.ndim - 2))
    elif input.ndim:
        weight = reshape(weight, (1,) * input.ndim)
    return Prelu.apply(input, weight)


def rrelu(input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    """Randomized leaky ReLU: a random slope in [lower, upper] per element when
    training, their mean otherwise."""
    from .elementwise import where, mul
    if training:
        from .creation import rand
        slope = rand(*input.shape, dtype=input.dtype) * (upper - lower) + lower
    else:
        slope = (lower + upper) / 2
    return _maybe_inplace(input, where(input >= 0, input, mul(input, slope)), inplace)
