"""Adam and AdamW (torch.optim.Adam / torch.optim.AdamW semantics and state)."""
import numpy as np

from .._tensor import Tensor
from .. import dtypes as _dt
from ..backend import get_array_module
from .optimizer import Optimizer, _use_native, _native, _scalar_type

__all__ = ["Adam", "AdamW"]

_HALF = (_dt.float16, _dt.bfloat16)


class Adam(Optimizer):
    """Adam (Kingma & Ba), numerically PyTorch's ``torch.optim.Adam``.

    Per parameter, step ``t`` (1-based), ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p          (L2 penalty; or p *= 1 - lr * weight_decay
                                           when decoupled_weight_decay, i.e. AdamW)
        m = lerp(m, g, 1 - beta1)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)               (amsgrad; then v below is vmax)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State per parameter (PyTorch's names): ``step`` (0-d float32 tensor), ``exp_avg``,
    ``exp_avg_sq`` and with amsgrad ``max_exp_avg_sq``. ``fused``: None runs fp32 CPU
    parameters through ``deepseek.native``'s one-pass kernel when it is built, True
    always uses it, False never.
    """

    # fused=None: smallest parameter sent to the native kernel (measured crossover;
    # Adam does ~13 numpy passes: the kernel wins from ~1k elements)
    _native_min_numel = 1024

    _decoupled_default = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=None):
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled_default
        if differentiable:
            raise NotImplementedError(f"{type(self).__name__}(differentiable=True) is not supported")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=False, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(group):
        lr, eps, betas, wd = group["lr"], group["eps"], group["betas"], group["weight_decay"]
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd}")

    def _check_group(self, group):
        group["betas"] = tuple(group["betas"])
        self._validate(group)

    def _step_group(self, group):
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd, amsgrad, maximize = group["weight_decay"], group["amsgrad"], group["maximize"]
        decoupled, fused = group["decoupled_weight_decay"], group.get("fused")
        for p in group["params"]:
            if p._grad is None:
                continue
            pa, ga = p._data, p._grad._data
            state = self.state[p]
            if not state:
                xp = get_array_module(pa)
                state["step"] = Tensor._make(np.zeros((), dtype=np.float32))
                state["exp_avg"] = Tensor._make(xp.zeros(pa.shape, dtype=pa.dtype))
                state["exp_avg_sq"] = Tensor._make(xp.zeros(pa.shape, dtype=pa.dtype))
                if amsgrad:
                    state["max_exp_avg_sq"] = Tensor._make(xp.zeros(pa.shape, dtype=pa.dtype))
            elif amsgrad and "max_exp_avg_sq" not in state:  # amsgrad switched on later
                state["max_exp_avg_sq"] = Tensor._make(
                    get_array_module(pa).zeros(pa.shape, dtype=pa.dtype))
            st = state["step"]._data
            st += 1
            step = float(st)
            m, v = state["exp_avg"]._data, state["exp_avg_sq"]._data
            vmax = state["max_exp_avg_sq"]._data if amsgrad else None
            if _use_native(fused, pa, ga, self._native_min_numel):
                # The one place Adam/AdamW hand a parameter to the fused kernel.
                kernel = _native().adamw_step if decoupled else _native().adam_step
                kernel(pa, ga, m, v, lr=lr, step=step, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=wd, amsgrad=amsgrad, max_exp_avg_sq=vmax,
                       maximize=maximize)
            elif pa.dtype in _HALF:
                # float16/bfloat16: compute the whole update in float32 and round each
                # result once (fp16 intermediates underflow: g*g*(1-beta2), eps)
                f32 = [None if a is None else a.astype(np.float32) for a in (pa, ga, m, v, vmax)]
                self._adam_numpy(*f32, step, lr, beta1, beta2, eps, wd, decoupled, maximize)
                for dst, src in zip((pa, m, v, vmax), (f32[0], f32[2], f32[3], f32[4])):
                    if dst is not None:
                        get_array_module(dst).copyto(dst, src, casting="unsafe")
            else:
                self._adam_numpy(pa, ga, m, v, vmax, step, lr, beta1, beta2, eps, wd,
                                 decoupled, maximize)
            p._bump_version()

    def _adam_numpy(self, p, g, m, v, vmax, step, lr, beta1, beta2, eps, wd, decoupled,
                    maximize):
        """One Adam step on raw arrays, in place, in PyTorch's order of operations.

        Every temporary lives in the optimizer's scratch buffers (``out=``), so a step
        allocates nothing: 13 elementwise passes (3 for m, 4 for v, 6 for the update),
        plus one for amsgrad and one or two for weight decay / maximize. (Folding the
        scalars into the denominator would save a pass but round differently from the
        fused kernel; bit-identical results on both paths are worth more.)
        """
        xp = get_array_module(p)
        sc = _scalar_type(p.dtype)
        s = self._scratch_like(p, 0)
        if maximize or (wd != 0 and not decoupled):
            d = self._scratch_like(p, 1)  # the effective gradient; the user's .grad stays
            if wd != 0 and not decoupled:
                xp.multiply(p, sc(wd), out=d)
                if maximize:
                    xp.subtract(d, g, out=d)
                else:
                    xp.add(g, d, out=d)
            else:
                xp.negative(g, out=d)
            g = d
        if wd != 0 and decoupled:
            p *= sc(1 - lr * wd)
        # m.lerp_(g, 1 - beta1), with torch's two formulas for small and large weights
        w = 1 - beta1
        xp.subtract(g, m, out=s)
        if w < 0.5:
            s *= sc(w)
            m += s
        else:
            s *= sc(1 - w)
            xp.subtract(g, s, out=m)
        # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        xp.multiply(g, sc(1 - beta2), out=s)
        s *= g
        v *= sc(beta2)
        v += s
        if vmax is not None:
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        # p += -step_size * m / (sqrt(v) / bc2_sqrt + eps), in the order of deepseek.native
        # (and its numpy fallback), so both paths give bit-identical parameters
        xp.sqrt(v, out=s)
        s /= sc(bias_correction2_sqrt)
        s += sc(eps)
        xp.divide(m, s, out=s)
        s *= sc(-step_size)
        p += s


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay
    (``p *= 1 - lr * weight_decay`` before the Adam update), numerically PyTorch's
    ``torch.optim.AdamW``; default ``weight_decay=1e-2``."""

    _decoupled_default = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)
