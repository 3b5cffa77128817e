"""clip_grad_norm_ and clip_grad_value_ (in place on ``.grad``, no graph)."""
import math

import numpy as np

from ...backend import get_array_module
from ..._tensor import Tensor


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def _norm_of(xp, arrays, norm_type):
    """The norm of the concatenation of ``arrays`` (float64 accumulation)."""
    if norm_type == math.inf:
        return max(float(xp.abs(a).max()) if a.size else 0.0 for a in arrays)
    if norm_type == -math.inf:
        return min(float(xp.abs(a).min()) if a.size else math.inf for a in arrays)
    if norm_type == 2.0:
        total = 0.0
        for a in arrays:
            f = a.reshape(-1)
            if f.dtype.kind == "f" and f.dtype.itemsize >= 4:
                total += float(xp.dot(f, f))
            else:
                f = f.astype(np.float32)
                total += float(xp.dot(f, f))
        return math.sqrt(total)
    if norm_type == 0:
        return float(sum(int((a != 0).sum()) for a in arrays))
    total = sum(float((xp.abs(a.astype(np.float64)) ** norm_type).sum()) for a in arrays)
    return total ** (1.0 / norm_type)


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """The norm of all ``tensors`` together (a 0-d float32 tensor)."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    arrays = [t._data for t in tensors]
    norm_type = float(norm_type)
    if not arrays:
        return Tensor._make(np.array(0.0, dtype=np.float32))
    xp = get_array_module(arrays[0])
    total = _norm_of(xp, arrays, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from "
                           "`parameters` is non-finite, so it cannot be clipped. To disable "
                           "this error and scale the gradients by the non-finite norm anyway, "
                           "set `error_if_nonfinite=False`")
    return Tensor._make(xp.asarray(total, dtype=arrays[0].dtype if arrays[0].dtype.kind == "f" else np.float32))


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    grads = [p.grad for p in _grads(parameters)]
    tn = float(total_norm.item() if isinstance(total_norm, Tensor) else total_norm)
    coef = float(max_norm) / (tn + 1e-6)
    if coef < 1.0 or not math.isfinite(tn):
        coef = min(coef, 1.0) if math.isfinite(tn) else coef
        for g in grads:
            g._data *= g._data.dtype.type(coef)
            g._bump_version()


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients in place so their joint norm is at most ``max_norm``; returns
    the total norm before clipping."""
    ps = _grads(parameters)
    total = get_total_norm([p.grad for p in ps], norm_type, error_if_nonfinite, foreach)
    if ps:
        clip_grads_with_norm_(ps, max_norm, total, foreach)
    return total


def clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    import warnings
    warnings.warn("nn.utils.clip_grad_norm is deprecated in favor of nn.utils.clip_grad_norm_.",
                  FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient element into [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    for p in _grads(parameters):
        g = p.grad._data
        xp = get_array_module(g)
        xp.clip(g, -clip_value, clip_value, out=g)
        p.grad._bump_version()
