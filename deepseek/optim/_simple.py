"""The elementwise optimizers ported from PyTorch's single-tensor implementations:
Adadelta, Adagrad, RMSprop, Adamax, NAdam, RAdam, ASGD, Rprop.

Each subclass writes one ``_update(p, g, state, group)`` on raw float arrays (float32
math for float16/bfloat16 parameters, each result rounded once), in PyTorch's order
of operations so the numbers match. State tensors live in ``self.state[p]`` under
PyTorch's names, so ``state_dict`` round-trips with PyTorch's. Adadelta's update runs
as one native pass over each parameter when the C kernels are in use (bit-identical
to its numpy sequence).
"""
import math

import numpy as np

from .._tensor import Tensor
from .. import dtypes as _dt
from ..backend import get_array_module
from .optimizer import Optimizer, _native

_HALF = (_dt.float16, _dt.bfloat16)
_ONE_PASS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check(name, value, low=0.0):
    if not value >= low:
        raise ValueError(f"Invalid {name}: {value}")


def _check_adam_family(lr, betas, eps, weight_decay):
    """PyTorch's argument checks of the Adam family (Adamax, NAdam, RAdam)."""
    _check("learning rate", lr)
    _check("epsilon value", eps)
    _check("weight_decay value", weight_decay)
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"Invalid beta parameters: {betas}")


def _weight_decay(p, g, lr, wd, decoupled):
    """Apply weight decay: AdamW-style to ``p`` in place (``decoupled``), or L2 into the
    returned gradient (a new array; ``g`` itself is left alone)."""
    if wd:
        if decoupled:
            p *= 1 - lr * wd
        else:
            g = g + wd * p
    return g


def _one_pass_kernel(name, p, *arrays):
    """The native one-pass update ``name`` (native/src/dsn_conv.c) when the kernels are in
    use and the parameter ``p`` and every other array are C-contiguous float32 or float64
    numpy arrays of p's dtype (p writeable); else None: the numpy sequence runs."""
    if not (type(p) is np.ndarray and p.dtype in _ONE_PASS_DTYPES and p.flags.writeable):
        return None
    for a in (p,) + arrays:
        if type(a) is not np.ndarray or a.dtype != p.dtype or not a.flags.c_contiguous:
            return None
    mod = _native()
    return mod.row_kernel(name) if mod is not None else None


class _Elementwise(Optimizer):
    """Loop over parameters with gradients; the subclass updates raw arrays."""

    _state_names = ()

    def _step_group(self, group):
        for p in group["params"]:
            if p._grad is None:
                continue
            pa, ga = p._data, p._grad._data
            if getattr(ga, "dtype", None) is not None and ga.dtype != pa.dtype:
                ga = ga.astype(pa.dtype)
            if group.get("maximize"):
                ga = -ga
            state = self.state[p]
            if not state:
                state["step"] = Tensor._make(np.asarray(0.0, np.float32))
                for n in self._state_names:
                    state[n] = Tensor._make(self._init_state(n, pa, group))
            step = float(state["step"]._data) + 1
            state["step"] = Tensor._make(np.asarray(step, np.float32))
            self._current_state = state  # for the scalar state some optimizers keep (NAdam, ASGD)
            xp = get_array_module(pa)
            if pa.dtype in _HALF:
                p32, g32 = pa.astype(np.float32), ga.astype(np.float32)
                arrs = {n: state[n]._data.astype(np.float32) for n in self._state_names}
                self._update(xp, p32, g32, arrs, step, group)
                xp.copyto(pa, p32, casting="unsafe")
                for n in self._state_names:
                    xp.copyto(state[n]._data, arrs[n], casting="unsafe")
            else:
                arrs = {n: state[n]._data for n in self._state_names}
                self._update(xp, pa, ga, arrs, step, group)
            p._bump_version()

    def _init_state(self, name, pa, group):
        return get_array_module(pa).zeros_like(pa)

    def _update(self, xp, p, g, s, step, group):  # pragma: no cover - abstract
        raise NotImplementedError


class Adadelta(_Elementwise):
    """Adadelta (torch.optim.Adadelta): square_avg, acc_delta."""

    _state_names = ("square_avg", "acc_delta")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False):
        _check("learning rate", lr)
        _check("rho value", rho)
        if rho > 1:
            raise ValueError(f"Invalid rho value: {rho}")
        _check("epsilon value", eps)
        _check("weight_decay value", weight_decay)
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, foreach=foreach, capturable=False,
                                      differentiable=False))

    def _update(self, xp, p, g, s, step, group):
        lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
        sq, acc = s["square_avg"], s["acc_delta"]
        kernel = _one_pass_kernel("adadelta", p, g, sq, acc)
        if kernel is not None:  # the sequence below in one pass, the same bits
            kernel(p, g, sq, acc, lr, rho, eps, wd)
            return
        if wd:
            g = g + wd * p
        sq *= rho
        sq += (1 - rho) * g * g
        std = xp.sqrt(sq + eps)
        delta = xp.sqrt(acc + eps) / std * g
        acc *= rho
        acc += (1 - rho) * delta * delta
        p -= lr * delta


class Adagrad(_Elementwise):
    """Adagrad (torch.optim.Adagrad): state ``sum``."""

    _state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None):
        _check("learning rate", lr)
        _check("lr_decay value", lr_decay)
        _check("weight_decay value", weight_decay)
        _check("initial_accumulator_value value", initial_accumulator_value)
        _check("epsilon value", eps)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize, foreach=foreach, differentiable=False,
                                      fused=fused))
        # PyTorch creates the state at construction (step 0, sum = initial value)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = Tensor._make(np.asarray(0.0, np.float32))
                self.state[p]["sum"] = Tensor._make(
                    get_array_module(p._data).full_like(p._data, group["initial_accumulator_value"]))

    def _update(self, xp, p, g, s, step, group):
        wd, eps = group["weight_decay"], group["eps"]
        if wd:
            g = g + wd * p
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        acc = s["sum"]
        acc += g * g
        p -= clr * g / (xp.sqrt(acc) + eps)


class RMSprop(_Elementwise):
    """RMSprop (torch.optim.RMSprop): square_avg, momentum_buffer, grad_avg (centered)."""

    _state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False, differentiable=False):
        _check("learning rate", lr)
        _check("epsilon value", eps)
        _check("momentum value", momentum)
        _check("weight_decay value", weight_decay)
        _check("alpha value", alpha)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, capturable=False,
                                      foreach=foreach, maximize=maximize, differentiable=False))

    def _step_group(self, group):
        # PyTorch keeps momentum_buffer / grad_avg only when they are used
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        self._state_names = tuple(names)
        super()._step_group(group)

    def _update(self, xp, p, g, s, step, group):
        alpha, eps, wd, mom = group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
        if wd:
            g = g + wd * p
        sq = s["square_avg"]
        sq *= alpha
        sq += (1 - alpha) * g * g
        if group["centered"]:
            ga = s["grad_avg"]
            ga *= alpha
            ga += (1 - alpha) * g
            avg = xp.sqrt(sq - ga * ga) + eps
        else:
            avg = xp.sqrt(sq) + eps
        if mom > 0:
            buf = s["momentum_buffer"]
            buf *= mom
            buf += g / avg
            p -= group["lr"] * buf
        else:
            p -= group["lr"] * g / avg


class Adamax(_Elementwise):
    """Adamax (torch.optim.Adamax): exp_avg, exp_inf."""

    _state_names = ("exp_avg", "exp_inf")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False):
        _check_adam_family(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize, differentiable=False,
                                      capturable=False))

    def _update(self, xp, p, g, s, step, group):
        (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
        if wd:
            g = g + wd * p
        m, u = s["exp_avg"], s["exp_inf"]
        m += (g - m) * (1 - b1)
        xp.maximum(u * b2, xp.abs(g) + eps, out=u)
        clr = group["lr"] / (1 - b1 ** step)
        p -= clr * m / u


class NAdam(_Elementwise):
    """NAdam (torch.optim.NAdam): exp_avg, exp_avg_sq and the running ``mu_product``."""

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False):
        _check_adam_family(lr, betas, eps, weight_decay)
        _check("momentum_decay value", momentum_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                                      maximize=maximize, capturable=False, differentiable=False))

    def _update(self, xp, p, g, s, step, group):
        (b1, b2), eps, wd, lr = group["betas"], group["eps"], group["weight_decay"], group["lr"]
        g = _weight_decay(p, g, lr, wd, group["decoupled_weight_decay"])
        st = self._current_state
        mu_prod = float(st["mu_product"]._data) if "mu_product" in st else 1.0
        bc2 = 1 - b2 ** step
        mu = b1 * (1.0 - 0.5 * 0.96 ** (step * group["momentum_decay"]))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * group["momentum_decay"]))
        mu_prod *= mu
        st["mu_product"] = Tensor._make(np.asarray(mu_prod, np.float32))
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m += (g - m) * (1 - b1)
        v *= b2
        v += (1 - b2) * g * g
        denom = xp.sqrt(v / bc2) + eps
        p -= lr * (1 - mu) / (1 - mu_prod) * g / denom
        p -= lr * mu_next / (1 - mu_prod * mu_next) * m / denom


class RAdam(_Elementwise):
    """RAdam (torch.optim.RAdam): exp_avg, exp_avg_sq; the rectified step once the
    variance is tractable (rho_t > 5), plain momentum SGD before."""

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False):
        _check_adam_family(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                                      maximize=maximize, capturable=False, differentiable=False))

    def _update(self, xp, p, g, s, step, group):
        (b1, b2), eps, wd, lr = group["betas"], group["eps"], group["weight_decay"], group["lr"]
        g = _weight_decay(p, g, lr, wd, group["decoupled_weight_decay"])
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m += (g - m) * (1 - b1)
        v *= b2
        v += (1 - b2) * g * g
        bc1 = 1 - b1 ** step
        bc2 = 1 - b2 ** step
        m_hat = m / bc1
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * step * (b2 ** step) / bc2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            adaptive = math.sqrt(bc2) / (xp.sqrt(v) + eps)
            p -= m_hat * lr * adaptive * rect
        else:
            p -= m_hat * lr


class Rprop(_Elementwise):
    """Rprop (torch.optim.Rprop): ``prev`` gradient sign and per-element ``step_size``."""

    _state_names = ("prev", "step_size")

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, capturable=False,
                 foreach=None, maximize=False, differentiable=False):
        _check("learning rate", lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        super().__init__(params, dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes),
                                      foreach=foreach, maximize=maximize, differentiable=False,
                                      capturable=False))

    def _init_state(self, name, pa, group):
        xp = get_array_module(pa)
        return xp.zeros_like(pa) if name == "prev" else xp.full_like(pa, group["lr"])

    def _update(self, xp, p, g, s, step, group):
        (em, ep), (lo, hi) = group["etas"], group["step_sizes"]
        prev, ss = s["prev"], s["step_size"]
        sign = xp.sign(g * prev)
        fac = xp.where(sign > 0, ep, xp.where(sign < 0, em, 1.0)).astype(p.dtype)
        ss *= fac
        xp.clip(ss, lo, hi, out=ss)
        g = xp.where(sign < 0, 0, g).astype(p.dtype)
        p -= xp.sign(g) * ss
        prev[...] = g


class ASGD(_Elementwise):
    """Averaged SGD (torch.optim.ASGD): eta, mu and the average ``ax``."""

    _state_names = ("ax",)

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, foreach=None,
                 maximize=False, differentiable=False, capturable=False):
        _check("learning rate", lr)
        _check("weight_decay value", weight_decay)
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize, differentiable=False,
                                      capturable=False))

    def _update(self, xp, p, g, s, step, group):
        st = self._current_state
        eta = float(st["eta"]._data) if "eta" in st else group["lr"]
        mu = float(st["mu"]._data) if "mu" in st else 1.0
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        p *= 1 - group["lambd"] * eta
        p -= eta * g
        ax = s["ax"]
        if mu != 1:
            ax += (p - ax) * mu
        else:
            ax[...] = p
        st["eta"] = Tensor._make(np.asarray(group["lr"] / ((1 + group["lambd"] * group["lr"] * step)
                                                           ** group["alpha"]), np.float32))
        st["mu"] = Tensor._make(np.asarray(1 / max(1, step - group["t0"]), np.float32))
