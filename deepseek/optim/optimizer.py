"""Optimizer: the base class of deepseek.optim (PyTorch's semantics and state_dict format).

Updates run in place on the parameters' raw backend arrays (``p._data``), never through
the autograd graph, and each updated parameter's version counter is bumped once per
step, so a tensor saved for backward that is changed by a step is detected.

fp32 CPU parameters go through the fused one-pass kernels of ``deepseek.native`` when
they are built (see :func:`_use_native`); everything else uses the numpy/cupy path of
the concrete optimizer, which gives the same result.
"""
import copy
from collections import defaultdict

import numpy as np

from .._tensor import Tensor
from ..backend import get_array_module
from ..autograd.grad_mode import no_grad, enable_grad

__all__ = ["Optimizer", "required"]


# Set by deepseek.profiler while a profile records: hook(optimizer, 0) before a step,
# hook(optimizer, 1) after it; None otherwise (one test per step).
_step_hook = None


class _RequiredParameter:
    """Marks a hyper-parameter without a default (e.g. SGD's lr in old PyTorch)."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


# ---- native kernels ---------------------------------------------------------------

_native_mod = []  # [module or None], imported on first use


def _native():
    """deepseek.native, or None where it cannot be imported."""
    if not _native_mod:
        try:
            from .. import native as mod
        except Exception:  # pragma: no cover - a broken/missing native package
            mod = None
        _native_mod.append(mod)
    return _native_mod[0]


def _fusable(p, g):
    """True when the fused kernels can take this parameter and gradient as they are:
    float32 numpy arrays, C-contiguous, a writeable parameter."""
    return (type(p) is np.ndarray and type(g) is np.ndarray and p.dtype == np.float32
            and g.dtype == np.float32 and p.flags.c_contiguous and g.flags.c_contiguous
            and p.flags.writeable)


def _use_native(fused, p, g, min_numel=0):
    """Decide, for one parameter, whether its step runs in deepseek.native.

    ``fused=None``: when the C kernels are built and enabled (``native.available()``),
    the arrays qualify (:func:`_fusable`) and the parameter has at least ``min_numel``
    elements (below that the kernel's fixed per-call cost exceeds what its single pass
    saves; both paths give the same bits, so this is only about speed).
    ``fused=True``: always (the native package's own numpy path runs when the C
    extension is absent); parameters that do not qualify raise. ``fused=False``: never.
    """
    if fused is False:
        return False
    mod = _native()
    if fused is None:
        return (p.size >= min_numel and mod is not None and mod.available()
                and _fusable(p, g))
    if mod is None:
        raise RuntimeError("fused=True: deepseek.native cannot be imported")
    if not _fusable(p, g):
        raise RuntimeError(
            f"fused=True needs float32, C-contiguous CPU parameters and gradients; got a "
            f"parameter of dtype {p.dtype} ({type(p).__module__}.{type(p).__name__}, "
            f"contiguous={bool(p.flags.c_contiguous)}) with a gradient of dtype {g.dtype}")
    return True


def _scalar_type(dtype):
    """The numpy scalar type hyper-parameters take in arithmetic on arrays of ``dtype``:
    float32 for float32/float16/bfloat16 (PyTorch's "opmath": half-precision updates are
    computed in float32 and rounded once), float64 for float64."""
    return np.float64 if dtype == np.float64 else np.float32


class Optimizer:
    """Base class of all optimizers.

    ``params`` is an iterable of Tensors or of dicts (parameter groups: ``{"params":
    [...], "lr": ...}``); options missing from a group are taken from ``defaults``.
    Subclasses implement :meth:`_step_group` (or :meth:`step`).
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = defaultdict(dict)  # param -> its state (Tensors hash by identity)
        self.param_groups = []
        self._scratch = {}  # (backend, dtype) -> flat work buffer reused by every step
        self._step_pre_hooks = {}
        self._step_post_hooks = {}
        self._hook_id = 0
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {type(params).__name__}")
        if isinstance(params, (set, frozenset)):
            raise TypeError("params argument given to the optimizer should be an ordered "
                            "iterable (a set's order changes between runs); got a set")
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def __getstate__(self):
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._scratch = {}
        self._step_pre_hooks, self._step_post_hooks, self._hook_id = {}, {}, 0

    def __repr__(self):
        lines = [self.__class__.__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    # ---- parameter groups ------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a group of parameters (a dict with ``"params"`` and optional options)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError("a parameter group needs a 'params' entry")
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        else:
            params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but params[{i}] is a "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"can't optimize a non-leaf Tensor (params[{i}] has grad_fn "
                                 f"{p.grad_fn.name()}); optimize the leaf it was computed from")
        seen, unique = set(), []
        for p in params:  # a tensor listed twice would be stepped twice
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        if len(unique) != len(params):
            import warnings
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "each is stepped once", UserWarning, stacklevel=3)
        group["params"] = unique
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if existing & seen:
            raise ValueError("some parameters appear in more than one parameter group")
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        """Validate one group's options (subclasses raise ValueError on bad values)."""

    # ---- gradients ----------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Reset the gradients of all parameters: drop them (default) or fill with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p._grad
                if g is None:
                    continue
                if set_to_none:
                    p._grad = None
                    p._grad_owned = False
                else:
                    if g.grad_fn is not None:
                        g = g.detach()
                        p._grad = g
                    g._data[...] = 0
                    g._bump_version()

    # ---- stepping -----------------------------------------------------------------------
    def step(self, closure=None):
        """Do one update of every parameter that has a gradient.

        ``closure`` (optional) re-evaluates the model and returns the loss; it runs with
        gradients enabled, before the update, and its value is returned.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        prof = _step_hook
        if prof is not None:
            prof(self, 0)
        for hook in list(self._step_pre_hooks.values()):
            hook(self, (), {})
        with no_grad():
            for group in self.param_groups:
                self._step_group(group)
        for hook in list(self._step_post_hooks.values()):
            hook(self, (), {})
        if prof is not None:
            prof(self, 1)
        return loss

    def _step_group(self, group):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def register_step_pre_hook(self, hook):
        """Call ``hook(optimizer, args, kwargs)`` before every step; returns a handle."""
        return self._register(self._step_pre_hooks, hook)

    def register_step_post_hook(self, hook):
        """Call ``hook(optimizer, args, kwargs)`` after every step; returns a handle."""
        return self._register(self._step_post_hooks, hook)

    def _register(self, table, hook):
        self._hook_id += 1
        key = self._hook_id
        table[key] = hook

        class _Handle:
            def remove(self_inner):
                table.pop(key, None)
        return _Handle()

    def _scratch_like(self, a, slot=0):
        """A work array shaped like ``a`` from a per-optimizer buffer, reused by every
        parameter and every step (no allocation, no page faults in the hot loop)."""
        xp = get_array_module(a)
        key = (xp.__name__, a.dtype, slot)
        buf = self._scratch.get(key)
        if buf is None or buf.size < a.size:
            buf = xp.empty(max(a.size, 1), dtype=a.dtype)
            self._scratch[key] = buf
        return buf[:a.size].reshape(a.shape)

    # ---- state_dict ---------------------------------------------------------------------
    def state_dict(self):
        """The optimizer's state in PyTorch's format.

        ``{"state": {index: {name: Tensor | number}}, "param_groups": [{options...,
        "params": [index, ...]}]}``: parameters are numbered in order of appearance over
        the groups. The state tensors are the live buffers (not copies), like PyTorch;
        save them (``deepseek.save``) or deep-copy them to keep a snapshot.
        """
        index, groups = {}, []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                if id(p) not in index:
                    index[id(p)] = len(index)
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = s
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state from :meth:`state_dict` (ours or PyTorch's, same layout).

        Groups must match in number and size. State tensors are copied, cast to the
        parameter's dtype (except ``step``) and moved to its device.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise ValueError("load_state_dict expects a dict with 'state' and 'param_groups' "
                             f"(what state_dict() returns), got {type(state_dict).__name__}"
                             + (f" with keys {sorted(map(str, state_dict))}"
                                if isinstance(state_dict, dict) else ""))
        saved_groups = state_dict["param_groups"]
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups but "
                             f"the optimizer has {len(groups)}")
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: group {i} has "
                                 f"{len(sg['params'])} parameters in the state dict but "
                                 f"{len(g['params'])} in the optimizer")
        id_map = {}
        for g, sg in zip(groups, saved_groups):
            for old, p in zip(sg["params"], g["params"]):
                id_map[_index_key(old)] = p
        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            key = _index_key(k)
            if key not in id_map:
                raise ValueError(f"loaded state dict has state for parameter {k!r}, which no "
                                 "parameter group refers to")
            p = id_map[key]
            state[p] = {name: _cast_state(p, name, value) for name, value in v.items()}
        new_groups = []
        for g, sg in zip(groups, saved_groups):
            ng = {k: copy.deepcopy(v) for k, v in sg.items() if k != "params"}
            if isinstance(ng.get("betas"), list):
                ng["betas"] = tuple(ng["betas"])
            ng["params"] = g["params"]
            for k, v in g.items():  # options this version knows and the saved one lacks
                ng.setdefault(k, v)
            new_groups.append(ng)
        self.state = state
        self.param_groups = new_groups


def _index_key(k):
    """Parameter indices come back as str from JSON-only formats: accept "3" for 3."""
    if isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return k


def _cast_state(param, name, value):
    """A private copy of one saved state value for ``param`` (PyTorch's policy: floating
    tensors follow the parameter's dtype, ``step`` stays as saved; all follow its device)."""
    from ..backend import to_device
    from .. import dtypes as _dt
    if isinstance(value, Tensor) or isinstance(value, np.ndarray):
        arr = value._data if isinstance(value, Tensor) else value
        if name == "step":  # a host-side counter, read as a Python number every step
            return Tensor._make(np.array(to_device(arr, "cpu"), dtype=np.float32).reshape(()))
        arr = to_device(arr, param.device)
        xp = get_array_module(arr)
        if _dt.is_floating(arr.dtype) and arr.dtype != param.dtype:
            arr = arr.astype(param.dtype, order="C")
        else:
            arr = xp.array(arr, copy=True, order="C")  # never alias the caller's buffers
        if arr.shape != tuple(param.shape) and arr.ndim > 0:
            raise ValueError(f"optimizer state {name!r} has shape {tuple(arr.shape)} but its "
                             f"parameter has shape {tuple(param.shape)}")
        return Tensor._make(arr)
    if name == "step" and isinstance(value, (int, float)):
        return Tensor._make(np.array(float(value), dtype=np.float32))
    return copy.deepcopy(value)
