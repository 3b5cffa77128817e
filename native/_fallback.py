"""numpy implementations of the deepseek.native kernels.

They run when the C extension is missing or disabled and are the reference the C
kernels are tested against: the same IEEE operations in the same order, in fp32
(fp16/bf16 widened to fp32 and rounded once), so most results agree bit for bit.
Arguments are already checked by the caller (deepseek.native).
"""
import numpy as np

from ._checks import F32, HALF

_f32 = np.float32

# The enum codes of native/src/dsn_common.h, for trees where the extension is not
# built (deepseek.native reads the extension's own export when it is; a test checks
# that the two agree).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "int32": 3, "int64": 4, "float64": 5}
OP_CODES = {"sum": 0, "avg": 1, "max": 2, "min": 3, "prod": 4}
CVT_CODES = {"f32_to_f16": 0, "f16_to_f32": 1, "f32_to_bf16": 2, "bf16_to_f32": 3}


def convert(src, out):
    with np.errstate(all="ignore"):    # overflow to inf / NaN casts are intended
        np.copyto(out, src.reshape(out.shape), casting="unsafe")


def erf(src, out):
    try:
        from scipy.special import erf as sp_erf
    except ImportError:  # scipy is optional: exact but slow
        import math
        flat = out.reshape(-1)
        for i, v in enumerate(src.reshape(-1).tolist()):
            flat[i] = math.erf(v)
        return
    sp_erf(src, out=out)


def gelu(src, out, cdf, erf):
    # the numpy sequence the kernel reproduces, operation for operation
    c = erf(src * np.float32(0.70710678118654752440))
    c += np.float32(1.0)
    c *= np.float32(0.5)
    if cdf is not None:
        cdf.reshape(-1)[:] = c.reshape(-1)
    np.multiply(src, c, out=out)


def _combine(op, acc, x):
    if op in ("sum", "avg"):
        np.add(acc, x, out=acc)
    elif op == "prod":
        np.multiply(acc, x, out=acc)
    elif op == "max":
        np.maximum(acc, x, out=acc)
    else:
        np.minimum(acc, x, out=acc)


def reduce(op, inputs, out):
    flat = [x.reshape(-1) for x in inputs]
    o = out.reshape(-1)
    with np.errstate(all="ignore"):
        if out.dtype in HALF:
            acc = flat[0].astype(F32)
            for x in flat[1:]:
                _combine(op, acc, x.astype(F32))
        else:
            # accumulate in a temporary when out is also a later input
            later_alias = any(np.may_share_memory(o, x) for x in flat[1:])
            acc = flat[0].copy() if later_alias else o
            if not later_alias:
                np.copyto(o, flat[0])
            for x in flat[1:]:
                _combine(op, acc, x)
        if op == "avg":
            np.divide(acc, acc.dtype.type(len(flat)), out=acc)
        if acc is not o:
            np.copyto(o, acc, casting="unsafe")


def unscale(grad, inv_scale):
    g = grad.reshape(-1)
    s = _f32(inv_scale)
    with np.errstate(all="ignore"):
        if g.dtype == F32:
            found = not bool(np.isfinite(g).all())
            np.multiply(g, s, out=g)
        else:
            g32 = g.astype(F32)
            found = not bool(np.isfinite(g32).all())
            g32 *= s
            np.copyto(g, g32, casting="unsafe")
    return found


def sgd(param, grad, buf, half, lr, momentum, dampening, weight_decay, nesterov,
        maximize, first_step):
    p = param.reshape(-1)
    g = -grad.reshape(-1) if maximize else grad.reshape(-1)
    with np.errstate(all="ignore"):
        if weight_decay != 0.0:
            g = g + _f32(weight_decay) * p
        if momentum != 0.0:
            b = buf.reshape(-1)
            if first_step:
                np.copyto(b, g)
            else:
                b *= _f32(momentum)
                b += _f32(1.0 - dampening) * g
            g = g + _f32(momentum) * b if nesterov else b
        p += _f32(-lr) * g
        if half is not None:
            np.copyto(half.reshape(-1), p, casting="unsafe")


def adam(param, grad, m, v, vmax, half, lr, beta1, beta2, eps, weight_decay, step,
         amsgrad, decoupled, maximize):
    p, m, v = param.reshape(-1), m.reshape(-1), v.reshape(-1)
    g = -grad.reshape(-1) if maximize else grad.reshape(-1)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    with np.errstate(all="ignore"):
        if weight_decay != 0.0:
            if decoupled:
                p *= _f32(1.0 - lr * weight_decay)
            else:
                g = g + _f32(weight_decay) * p
        t = g - m                       # exp_avg.lerp_(grad, 1 - beta1)
        t *= _f32(1.0 - beta1)
        m += t
        v *= _f32(beta2)                # exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
        t = _f32(1.0 - beta2) * g
        t *= g
        v += t
        if amsgrad:
            vv = vmax.reshape(-1)
            np.maximum(vv, v, out=vv)
        else:
            vv = v
        denom = np.sqrt(vv)
        denom /= _f32(bias_correction2_sqrt)
        denom += _f32(eps)
        t = m / denom
        t *= _f32(-step_size)
        p += t
        if half is not None:
            np.copyto(half.reshape(-1), p, casting="unsafe")
