"""Tracing for export: the JIT's tracer plus module paths, leaf modules and dynamic axes.

- ``trace`` runs the model once under a :class:`deepseek.jit.tracer.TraceMode` subclass
  that also remembers, per node, the module path it was called in (global forward
  hooks keep a stack of the running modules) -- what the unmapped-op error names.
- Modules that compute outside the op dispatch (the quantized ones run numpy and the
  native int8 GEMM) are *leaf modules*: while tracing, their ``forward`` becomes one
  ``LeafModule`` node whose export rule is the module's (``register_module``).
- ``generalise`` turns the sizes of the dynamic axes into :class:`Dim` symbols: it traces
  again with each dynamic axis grown by one, fits each integer argument that changed,
  and checks the fit on one more trace (all axes grown by two); when that check finds
  a product such as ``B * T``, every subset of the axes is traced and the fit redone. Constants whose shape follows a dynamic axis (``np.arange(T)`` built outside
  the dispatch) are recognised as ranges or fills, or refused with a clear error.
"""
import itertools
import warnings

import numpy as np

from ..autograd.function import Function
from ..jit.graph import Ref
from ..jit.tracer import TraceMode, TracerWarning
from ._dims import Dim, fit
from . import _lookup

__all__ = ["trace", "generalise", "LeafModule", "ExportError"]


class ExportError(RuntimeError):
    """The model cannot be exported as asked (the message says why and where)."""


class LeafModule(Function):
    """One call of a leaf module (see ``register_module``): forward runs the module's own
    forward on the arrays; the node's ``module`` kwarg is the module object."""

    @staticmethod
    def forward(ctx, *arrays, module, forward):
        from .._tensor import Tensor
        out = forward(*[Tensor._make(a) if hasattr(a, "shape") else a for a in arrays])
        return out._data

    @staticmethod
    def backward(ctx, *grads):  # pragma: no cover - export runs under no_grad
        raise RuntimeError("LeafModule is an export-time node: no backward")


_LEAF_RULES = {}   # module class -> rule(g, module, *args)


class _ExportTrace(TraceMode):
    """TraceMode that records the module path of every node (by its first output)."""

    def __init__(self, params, array_names):
        super().__init__(params)
        self.stack = []
        self.paths = {}            # first output vid -> module path
        self.op_names = {}         # first output vid -> public op name (unmapped ops only)
        self.array_names = array_names  # id(array) -> param name (detached buffers)

    def value_of(self, t):
        # a buffer handed to an op detached (BatchNorm's running stats) keeps its name
        name = self.array_names.get(id(t._data))
        if name is not None and id(t) not in self.param_names and id(t) not in self._by_tensor:
            self.param_names[id(t)] = name
        return super().value_of(t)

    def _array_value(self, a):
        # a buffer handed to an op as its raw array (batch_norm's running stats) too
        name = self.array_names.get(id(a))
        e = self._by_array.get(id(a))
        if name is not None and not (e is not None and e[1] is a):
            vid = self.graph.add_value("param", a.shape, a.dtype, name=name)
            self._by_array[id(a)] = (vid, a)
            self._keep.append(a)
            return vid
        return super()._array_value(a)

    def record(self, kind, fn, args, kwargs, result):
        n = len(self.graph.nodes)
        super().record(kind, fn, args, kwargs, result)
        if len(self.graph.nodes) > n:
            node = self.graph.nodes[-1]
            self.paths[node.outs[0]] = self.stack[-1] if self.stack else ""
            if kind == "function" and fn is not LeafModule and not _lookup.has_rule(fn):
                self.op_names[node.outs[0]] = _lookup.public_op_name(2)


def _install_hooks(model, mode):
    """Global forward hooks that keep ``mode.stack`` (module paths) while tracing."""
    from ..nn.module import register_module_forward_pre_hook, register_module_forward_hook
    names = {id(m): n for n, m in model.named_modules()} if hasattr(model, "named_modules") else {}

    def pre(mod, args):
        mode.stack.append(names.get(id(mod), type(mod).__name__))

    def post(mod, args, out):
        if mode.stack:
            mode.stack.pop()
    return [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]


def _install_leaves(model):
    """Route the forward of every leaf module of ``model`` through ``LeafModule``."""
    patched = []
    if not hasattr(model, "modules") or not _LEAF_RULES:
        return patched
    for m in model.modules():
        if type(m) in _LEAF_RULES:
            orig = m.forward

            def fwd(*args, _m=m, _orig=orig):
                return LeafModule.apply(*args, module=_m, forward=_orig)
            m.forward = fwd
            patched.append(m)
    return patched


def trace(fn, model, inputs):
    """Trace ``fn(*inputs)``; returns (graph, result, param tensors, paths)."""
    from .._tensor import Tensor
    from ..autograd.grad_mode import no_grad
    names, arrays = {}, {}
    if hasattr(model, "named_parameters"):
        for n, p in model.named_parameters():
            names[id(p)] = n
            arrays[id(p._data)] = n
        for n, b in model.named_buffers():
            names.setdefault(id(b), n)
            arrays.setdefault(id(b._data), n)
    mode = _ExportTrace(names, arrays)
    k = 0
    for a in inputs:
        if isinstance(a, Tensor):
            mode.add_input(a, k)
            k += 1
    hooks = _install_hooks(model, mode)
    leaves = _install_leaves(model)
    try:
        with no_grad(), mode:
            result = fn(*inputs)
    finally:
        for h in hooks:
            h.remove()
        for m in leaves:
            del m.forward
    mode.graph.out_spec = mode.map_result(_plain(result))
    return mode.graph, result, mode.param_tensors, (mode.paths, mode.op_names)


def _plain(obj):
    """dict/tuple/list subclasses (BertOutput, namedtuples) as plain ones, for map_result."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_plain(v) for v in obj) if type(obj) in (tuple, list) else tuple(_plain(v) for v in obj)
    return obj


# ---- dynamic axes --------------------------------------------------------------------
def _grow(inputs, axes_of, grown, step):
    """``inputs`` with every axis whose symbol is in ``grown`` longer by ``step`` (the
    first slices repeated, so token ids stay valid ids)."""
    from .._tensor import Tensor
    out, k = [], 0
    for a in inputs:
        if not isinstance(a, Tensor):
            out.append(a)
            continue
        arr = a._data
        for ax, sym in axes_of.get(k, {}).items():
            if sym in grown:
                n = arr.shape[ax]
                idx = np.arange(n + step) % max(n, 1)
                arr = np.take(arr, idx, axis=ax)
        out.append(Tensor._make(np.ascontiguousarray(arr)))
        k += 1
    return tuple(out)


def generalise(fn, model, inputs, axes_of, graph):
    """Replace the sizes of the dynamic axes in ``graph`` by Dims.

    ``axes_of``: {input index: {axis: symbol}}. Returns the graph with Dim-valued
    shapes/arguments and ``const_rules`` {vid: ("range", ...) | ("fill", ...)}."""
    from .._tensor import Tensor
    tensors = [a for a in inputs if isinstance(a, Tensor)]
    base = {}
    for k, axes in axes_of.items():
        for ax, sym in axes.items():
            n = tensors[k].shape[ax]
            if base.setdefault(sym, n) != n:
                raise ExportError(f"dynamic axis {sym!r} has two sizes in the example inputs "
                                  f"({base[sym]} and {n}); one name must be one size")
    symbols = sorted(base)
    traces = {frozenset(): graph}

    def add(subsets, step=1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TracerWarning)
            for sub in subsets:
                g = trace(fn, model, _grow(inputs, axes_of, set(sub), step))[0]
                _same_structure(graph, g, sorted(sub), step)
                if step == 1:
                    traces[frozenset(sub)] = g
                else:
                    return g
    # first without cross terms (one trace per axis); products such as B*T make the check
    # trace disagree, and then every subset of the axes is traced
    add([(s,) for s in symbols])
    check = add([tuple(symbols)], step=2)
    try:
        return _unify_all(graph, traces, check, base, symbols)
    except _NotLinear:
        if len(symbols) < 2:
            raise
    add([sub for r in range(2, len(symbols) + 1) for sub in itertools.combinations(symbols, r)])
    return _unify_all(graph, traces, check, base, symbols)


class _NotLinear(ExportError):
    pass


def _same_structure(graph, g, grown, step):
    if len(g.nodes) != len(graph.nodes) or set(g.values) != set(graph.values) or \
            any(a.name != b.name for a, b in zip(g.nodes, graph.nodes)):
        raise ExportError(f"dynamic axes {grown}: the traced graph changes when they grow "
                          f"by {step} (different ops or tensors); the model's Python control "
                          f"flow depends on these sizes. Export them as static axes, or use "
                          f"example sizes other than 1 for them")


def _unify_all(graph, traces, check, base, symbols):
    at_check = {s: base[s] + 2 for s in symbols}

    def unify(items, check_item, what):
        x = items[frozenset()]
        t = type(x)
        if isinstance(x, (tuple, list)):
            n = len(x)
            if any(type(v) is not t or len(v) != n for v in items.values()) or len(check_item) != n:
                raise ExportError(f"dynamic axes: {what} changes length with the dynamic sizes")
            return t(unify({k: v[i] for k, v in items.items()}, check_item[i], what) for i in range(n))
        if isinstance(x, dict):
            return {kk: unify({k: v[kk] for k, v in items.items()}, check_item[kk], what) for kk in x}
        if isinstance(x, slice):
            return slice(*(unify({k: getattr(v, f) for k, v in items.items()}, getattr(check_item, f), what)
                           for f in ("start", "stop", "step")))
        if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
            vals = {k: int(v) for k, v in items.items()}
            for r in range(2, len(symbols) + 1):    # corners not traced: no cross term
                for sub in itertools.combinations(symbols, r):
                    vals.setdefault(frozenset(sub), vals[frozenset()] + sum(
                        vals[frozenset([q])] - vals[frozenset()] for q in sub))
            d = fit(vals, base, symbols)
            got = d.at(at_check) if isinstance(d, Dim) else d
            if got != int(check_item):
                raise _NotLinear(f"dynamic axes: {what} is not a polynomial of the dynamic sizes "
                                  f"(fit {d!r} predicts {got} at {at_check}, the trace has "
                                  f"{int(check_item)}); export this axis as static")
            return d
        if isinstance(x, Ref):
            return x
        if isinstance(x, float) and any(v != x for v in items.values()) and x == x:
            raise ExportError(f"dynamic axes: {what} (a float, {x}) depends on the dynamic sizes; "
                              f"it cannot be expressed in the exported graph")
        return x

    g = graph.copy()
    const_rules = {}
    for vid, v in graph.values.items():
        shapes = {k: tuple(tr.values[vid].shape) for k, tr in traces.items()}
        shape = unify(shapes, tuple(check.values[vid].shape), f"the shape of value %{vid}")
        if v.kind in ("const", "param") and tuple(shape) != tuple(v.shape):
            if v.kind == "param":
                raise ExportError(f"parameter {v.name!r} changes shape with the dynamic axes")
            const_rules[vid] = _const_rule(vid, shape, {k: tr.values[vid].array for k, tr in traces.items()})
        elif v.kind == "const" and v.array is not None:
            if any(not np.array_equal(tr.values[vid].array, v.array, equal_nan=True) for tr in traces.values()):
                raise ExportError(
                    f"a constant of shape {tuple(v.shape)} changes with the input values: it was "
                    f"computed from an input outside the op dispatch (with numpy, e.g. a mask built "
                    f"from the input's data), so the exported graph cannot recompute it")
        g.values[vid] = type(v)(vid, v.kind, shape, v.dtype, v.name, v.array)
    nodes = []
    for i, n in enumerate(graph.nodes):
        args = unify({k: tr.nodes[i].args for k, tr in traces.items()}, check.nodes[i].args,
                     f"an argument of {n.name}")
        kwargs = unify({k: tr.nodes[i].kwargs for k, tr in traces.items()}, check.nodes[i].kwargs,
                       f"an argument of {n.name}")
        nodes.append(type(n)(n.kind, n.fn, args, kwargs, n.outs, n.multi, n.src))
    g.nodes = nodes
    return g, const_rules


def _const_rule(vid, shape, arrays):
    """How to rebuild a constant whose shape follows the dynamic axes: a fill or a range."""
    base = arrays[frozenset()]
    flat = [a.reshape(-1) for a in arrays.values() if a is not None and a.size]
    if flat and all((f == flat[0][0]).all() for f in flat) and \
            all(f[0] == flat[0][0] for f in flat):
        return ("fill", base.reshape(-1)[0] if base.size else 0, base.dtype)
    for ax in range(base.ndim):
        ok = True
        start = step = None
        for a in arrays.values():
            if a.shape[ax] < 2:
                ok = False
                break
            idx = np.arange(a.shape[ax]).reshape([-1 if i == ax else 1 for i in range(a.ndim)])
            s0 = np.take(a, [0], axis=ax).reshape(-1)[0]
            st = np.take(a, [1], axis=ax).reshape(-1)[0] - s0
            if (start is not None and (s0 != start or st != step)) or \
                    not np.array_equal(a, np.broadcast_to(s0 + st * idx, a.shape).astype(a.dtype)):
                ok = False
                break
            start, step = s0, st
        if ok:
            return ("range", ax, start, step, base.dtype)
    raise ExportError(
        f"a constant of shape {tuple(shape)} (value %{vid}) follows the dynamic axes but was built "
        f"outside the op dispatch (with numpy), and it is neither a fill nor a range the exporter "
        f"can rebuild; compute it with deepseek ops, or export that axis as static")

