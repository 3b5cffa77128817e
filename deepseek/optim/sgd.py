"""SGD with momentum, dampening, Nesterov, weight decay and maximize (torch.optim.SGD)."""
import numpy as np

from .._tensor import Tensor
from .. import dtypes as _dt
from ..backend import get_array_module
from .optimizer import Optimizer, _use_native, _native, _scalar_type

__all__ = ["SGD"]

_HALF = (_dt.float16, _dt.bfloat16)


class SGD(Optimizer):
    """Stochastic gradient descent, numerically PyTorch's ``torch.optim.SGD``.

    Per parameter, with ``g`` its gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        buf = g                                   (first step)
        buf = momentum * buf + (1 - dampening) * g (later steps)
        g = g + momentum * buf if nesterov else buf   (when momentum != 0)
        p = p - lr * g

    ``fused``: None runs fp32 CPU parameters through ``deepseek.native``'s one-pass
    kernel when it is built, True always uses it, False never (numpy path).
    """

    # fused=None: smallest parameter sent to the native kernel (measured crossover;
    # SGD does 2-4 numpy passes: the kernel wins from ~16k elements)
    _native_min_numel = 16384

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if differentiable:
            raise NotImplementedError("SGD(differentiable=True) is not supported")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=False, fused=fused)
        super().__init__(params, defaults)

    def _check_group(self, group):
        if group["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _step_group(self, group):
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
        fused = group.get("fused")
        for p in group["params"]:
            if p._grad is None:
                continue
            pa, ga = p._data, p._grad._data
            # like PyTorch, plain SGD keeps no per-parameter state (none in state_dict)
            state = self.state[p] if momentum != 0 else None
            buf_t = state.get("momentum_buffer") if momentum != 0 else None
            first = momentum != 0 and buf_t is None
            if _use_native(fused, pa, ga, self._native_min_numel):
                # The one place SGD hands a parameter to the fused kernel.
                if first:
                    buf_t = state["momentum_buffer"] = Tensor._make(np.empty_like(pa))
                _native().sgd_step(pa, ga, None if buf_t is None else buf_t._data, lr=lr,
                                   momentum=momentum, dampening=dampening, weight_decay=wd,
                                   nesterov=nesterov, maximize=maximize, first_step=first)
            else:
                buf_a = None if first or buf_t is None else buf_t._data
                if pa.dtype in _HALF:
                    # float16/bfloat16: the update in float32, each result rounded once
                    xp = get_array_module(pa)
                    p32 = pa.astype(np.float32)
                    b32 = None if buf_a is None else buf_a.astype(np.float32)
                    b32 = self._sgd_numpy(p32, ga.astype(np.float32), b32, lr, momentum,
                                          dampening, wd, nesterov, maximize)
                    xp.copyto(pa, p32, casting="unsafe")
                    if buf_a is not None:
                        xp.copyto(buf_a, b32, casting="unsafe")
                    buf = None if b32 is None else b32.astype(pa.dtype)
                else:
                    buf = self._sgd_numpy(pa, ga, buf_a, lr, momentum, dampening, wd,
                                          nesterov, maximize)
                if first:
                    state["momentum_buffer"] = Tensor._make(buf)
            p._bump_version()

    def _sgd_numpy(self, p, g, buf, lr, momentum, dampening, wd, nesterov, maximize):
        """One SGD step on raw arrays, in place, in PyTorch's order of operations.

        ``buf`` is the momentum buffer, None on the first step; returns the buffer
        (new on the first step). Scratch buffers hold every temporary.
        """
        xp = get_array_module(p)
        sc = _scalar_type(p.dtype)
        if maximize or wd != 0:
            d = self._scratch_like(p, 1)  # the effective gradient; the user's .grad stays
            if wd != 0:
                xp.multiply(p, sc(wd), out=d)
                if maximize:
                    xp.subtract(d, g, out=d)
                else:
                    xp.add(g, d, out=d)
            else:
                xp.negative(g, out=d)
            g = d
        if momentum != 0:
            if buf is None:
                buf = xp.array(g, copy=True)  # torch: buf = clone(grad)
            else:
                buf *= sc(momentum)
                if dampening != 0:
                    s = self._scratch_like(p, 0)
                    xp.multiply(g, sc(1 - dampening), out=s)
                    buf += s
                else:
                    buf += g
            if nesterov:
                s = self._scratch_like(p, 0)
                xp.multiply(buf, sc(momentum), out=s)
                s += g
                g = s
            else:
                g = buf
        s = self._scratch_like(p, 0)
        xp.multiply(g, sc(-lr), out=s)
        p += s
        return buf
