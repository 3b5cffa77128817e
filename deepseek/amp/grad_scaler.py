"""GradScaler: dynamic loss scaling (PyTorch's ``torch.amp.GradScaler``).

fp16 gradients underflow: small values flush to zero. The scaler multiplies the loss
by ``scale`` before backward, divides the gradients by it before the optimizer step,
and skips the step when a gradient is inf/NaN (the scale was too large), halving the
scale; after ``growth_interval`` clean steps it doubles the scale again.

``unscale_`` is one fused pass per gradient through the native kernel
(``deepseek.native.unscale_``: ``g *= 1/scale`` and the inf/NaN test in the same
read). The per-optimizer found-inf flag then goes through ``found_inf_reduce``
(identity by default): under DDP every rank holds the same all-reduced gradients, so
every rank takes the same decision; where gradients are sharded (ZeRO) each rank sees
only its shard, and one line makes the decision global::

    scaler.found_inf_reduce = lambda flag: dist.all_reduce(flag, op=dist.ReduceOp.MAX)

(``flag`` is a 1-element float32 numpy array, 1.0 when this rank saw inf/NaN).
"""
import math

import numpy as np

from .. import dtypes as _dt
from .. import native as _native

_READY, _UNSCALED, _STEPPED = 0, 1, 2


class GradScaler:
    """Scale the loss, unscale and check the gradients, skip bad steps, adapt the scale.

    ``init_scale``: the first scale; ``growth_factor`` / ``backoff_factor``: what the
    scale is multiplied by after ``growth_interval`` clean steps / on an inf/NaN step;
    ``enabled=False`` makes every method a pass-through (``scale`` returns the loss,
    ``step`` just steps), so one loop serves fp32 and mixed precision.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True, *, device="cpu"):
        if growth_factor <= 1.0:
            raise ValueError(f"GradScaler: growth_factor should be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor should be in (0, 1), got {backoff_factor}")
        if int(growth_interval) <= 0:
            raise ValueError(f"GradScaler: growth_interval should be a positive int, got "
                             f"{growth_interval}")
        self._device = device
        self._enabled = bool(enabled)
        self._init_scale = float(init_scale)
        self._scale = None            # set by the first scale() (PyTorch's lazy init)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer = {}      # id(optimizer) -> {"stage": ..., "found_inf": float}
        self.found_inf_reduce = None  # callable(flag array) -> None/array; see module doc

    # ---- scaling ----------------------------------------------------------------------
    def scale(self, outputs):
        """``outputs`` (a Tensor, or nested lists/tuples/dicts of them) times the scale."""
        if not self._enabled:
            return outputs
        if self._scale is None:
            self._scale = self._init_scale
        s = self._scale

        def apply(v):
            from .._tensor import Tensor
            if isinstance(v, Tensor):
                return v * s
            if isinstance(v, (list, tuple)):
                return type(v)(apply(x) for x in v)
            if isinstance(v, dict):
                return {k: apply(x) for k, x in v.items()}
            raise ValueError("GradScaler.scale: outputs must be a Tensor or an iterable of "
                             f"Tensors, got {type(v).__name__}")
        return apply(outputs)

    def _state(self, optimizer):
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": 0.0})

    def _check_scale(self, fn):
        # PyTorch asserts here, with this message
        assert self._scale is not None, (
            f"Attempted {fn} but _scale is None.  This may indicate your script did not use "
            "scaler.scale(loss or outputs) earlier in the iteration.")

    def unscale_(self, optimizer):
        """Divide ``optimizer``'s gradients by the scale in place and record whether any
        is inf/NaN; call it before gradient clipping (``clip_grad_norm_``)."""
        if not self._enabled:
            return
        self._check_scale("unscale_")
        st = self._state(optimizer)
        if st["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the "
                               "last update().")
        if st["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        inv = 1.0 / self._scale
        grads = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad._data
                if g.dtype == _dt.float16 and p._data.dtype == _dt.float16:
                    raise ValueError(
                        "Attempting to unscale FP16 gradients: a parameter of the optimizer "
                        f"(shape {tuple(p.shape)}) is float16 itself, so its scaled gradient "
                        "overflows or loses the small values the scaler exists to keep, and "
                        "the step would update fp16 weights. Keep the model in float32 (fp32 "
                        "master weights) and run the forward under deepseek.amp.autocast(); "
                        "autocast casts the weights for each op and the gradients come back "
                        "in float32.")
                grads.append(g)
        found = _unscale_all(grads, inv)
        flag = np.array([1.0 if found else 0.0], np.float32)
        if self.found_inf_reduce is not None:
            r = self.found_inf_reduce(flag)
            if r is not None:
                flag = np.asarray(getattr(r, "_data", r), np.float32).reshape(-1)
        st["found_inf"] = float(flag[0])
        st["stage"] = _UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """``optimizer.step()`` unless a gradient was inf/NaN (unscales first if
        ``unscale_`` was not called); returns what ``step`` returned, or None."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        return self._step_with(optimizer, lambda: optimizer.step(*args, **kwargs))

    def _step_with(self, optimizer, step_fn):
        """``step`` with ``step_fn()`` doing the step (the Trainer: the strategy's)."""
        self._check_scale("step")
        st = self._state(optimizer)
        if st["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if st["stage"] == _READY:
            self.unscale_(optimizer)
        ret = None
        if not st["found_inf"]:
            ret = step_fn()
        st["stage"] = _STEPPED
        return ret

    def update(self, new_scale=None):
        """Adapt the scale after the iteration's steps (or set it to ``new_scale``)."""
        if not self._enabled:
            return
        self._check_scale("update")
        if new_scale is not None:
            v = float(getattr(new_scale, "item", lambda: new_scale)())
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"GradScaler.update: new_scale must be a positive finite "
                                 f"number, got {v}")
            self._scale = v
        else:
            flags = [st["found_inf"] for st in self._per_optimizer.values()
                     if st["stage"] != _READY]
            assert len(flags) > 0, "No inf checks were recorded prior to update."
            if any(flags):
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale *= self._growth_factor
                    self._growth_tracker = 0
        self._per_optimizer = {}

    # ---- introspection and checkpoints ------------------------------------------------
    def is_enabled(self):
        """Whether the scaler scales (``enabled=True``)."""
        return self._enabled

    def get_scale(self):
        """The current scale (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale

    def get_growth_factor(self):
        """Factor applied after ``growth_interval`` clean steps."""
        return self._growth_factor

    def set_growth_factor(self, new_factor):
        """Set the growth factor."""
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self):
        """Factor applied on an inf/NaN step."""
        return self._backoff_factor

    def set_backoff_factor(self, new_factor):
        """Set the backoff factor."""
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self):
        """Clean steps between two growths."""
        return self._growth_interval

    def set_growth_interval(self, new_interval):
        """Set the growth interval."""
        self._growth_interval = int(new_interval)

    def state_dict(self):
        """The scaler's state (PyTorch's keys); empty when disabled."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict`` returned."""
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        self._init_scale = float(state_dict["scale"])
        self._scale = self._init_scale
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_per_optimizer"] = {}
        state["found_inf_reduce"] = None
        return state


def _unscale_all(grads, inv):
    """g *= inv for every gradient, True if any held inf/NaN: the native fused pass for
    contiguous CPU arrays, array math for the rest (strided views, cupy)."""
    native, other = [], []
    for g in grads:
        (native if isinstance(g, np.ndarray) and g.flags.c_contiguous and g.flags.writeable
         else other).append(g)
    found = _native.unscale_(native, inv) if native else False
    for g in other:
        from ..backend import get_array_module
        xp = get_array_module(g)
        if not bool(xp.isfinite(g).all()):
            found = True
        g *= g.dtype.type(inv)
    return bool(found)
