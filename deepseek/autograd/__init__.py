"""deepseek.autograd: Function, backward, grad, grad modes, gradcheck."""
from .grad_mode import (no_grad, enable_grad, inference_mode, set_grad_enabled,
                        is_grad_enabled)
from .function import Function, Context, register_dispatch_hook
from .dispatch_mode import DispatchMode, dispatch_mode, active_modes
from .gradcheck import gradcheck, GradcheckError

__all__ = ["Function", "Context", "backward", "grad", "no_grad", "enable_grad",
           "inference_mode", "set_grad_enabled", "is_grad_enabled", "gradcheck",
           "GradcheckError", "register_dispatch_hook", "DispatchMode", "dispatch_mode",
           "active_modes"]


def _seed_grads(tensors, grad_tensors, who):
    from .engine import _tensor_cls
    from ..backend import get_array_module
    Tensor = _tensor_cls()
    seeds = []
    for i, (t, g) in enumerate(zip(tensors, grad_tensors)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}: expected Tensors, got {type(t).__name__} at position {i}")
        if g is None:
            if t._data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs: {who} was called "
                    f"on a tensor of shape {tuple(t.shape)}; pass gradient= (a tensor of that "
                    f"shape) or reduce it to a scalar first (e.g. .sum())")
            xp = get_array_module(t._data)
            seeds.append(xp.ones(t._data.shape, dtype=t._data.dtype))
        else:
            g = g._data if isinstance(g, Tensor) else g
            if tuple(g.shape) != tuple(t.shape):
                raise RuntimeError(f"{who}: gradient has shape {tuple(g.shape)} but the output "
                                   f"has shape {tuple(t.shape)}")
            # a copy: the caller's gradient tensor must not become (part of) a leaf's .grad
            seeds.append(g.copy())
    return seeds


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate gradients of ``tensors`` into the ``.grad`` of graph leaves."""
    from .engine import run_backward, _tensor_cls
    Tensor = _tensor_cls()
    if create_graph:
        raise NotImplementedError("create_graph=True (higher-order gradients) is not supported yet")
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if grad_tensors is None or isinstance(grad_tensors, Tensor):
        grad_tensors = [grad_tensors] * (1 if grad_tensors is not None else len(tensors))
    seeds = _seed_grads(tensors, grad_tensors, "backward()")
    if inputs is not None:
        inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        grads = run_backward(tensors, seeds, bool(retain_graph), inputs=inputs)
        for t, g in zip(inputs, grads):
            if g is not None:
                t._accumulate_grad(g)
        return
    run_backward(tensors, seeds, bool(retain_graph))


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """Gradients of ``outputs`` w.r.t. ``inputs``, returned (not accumulated into .grad)."""
    import numpy as np
    from .engine import run_backward
    from .._tensor import Tensor
    from ..backend import writeable
    if create_graph:
        raise NotImplementedError("create_graph=True (higher-order gradients) is not supported yet")
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs] * len(outputs)
    seeds = _seed_grads(outputs, grad_outputs, "grad()")
    grads = run_backward(outputs, seeds, bool(retain_graph), inputs=inputs, accumulate=False)
    out = []
    for i, g in enumerate(grads):
        if g is None and not allow_unused:
            raise RuntimeError(f"one of the differentiated tensors (input {i}) appears to not "
                               "have been used in the graph; pass allow_unused=True if this "
                               "is expected")
        if g is not None and (isinstance(g, np.generic) or not writeable(g)):
            g = g.copy() if not isinstance(g, np.generic) else np.array(g)  # broadcast views
        out.append(None if g is None else Tensor._make(g))
    return tuple(out)
