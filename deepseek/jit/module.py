"""CompiledFunction: guards, the per-signature graph cache, and the two executors.

A call checks its inputs' signature (shape -- with dim 0 free under
``dynamic=True`` --, dtype and device of every tensor, the value of every other
argument, and ``model.training``) against the graphs traced so far; a new signature is
traced (at most ``DEEPSEEK_JIT_MAX_GRAPHS`` are kept, least recently used dropped), or
raises :class:`GuardError` when the signature was fixed (``strict=True``, and graphs
loaded from disk).

Which executor runs:

- autograd replay, when autograd would record something (grad mode on and an input or
  parameter requires grad): every node goes through ``Function.apply`` on the live
  parameters, so ``loss.backward()`` works on the result, gradients land in the
  model's ``.grad`` and DDP's hooks fire exactly as in eager mode -- without the
  Python of the model's modules and functional wrappers (``replay.ReplayProgram``:
  generated straight-line code, one program per batch size);
- the inference plan (``plan.InferencePlan``) otherwise: fused kernels over
  preallocated buffers, parameter-only subgraphs folded (refolded when a parameter
  changes), Linear weights packed for its GEMM (rebuilt when one changes: a version
  counter moved). A dynamic-batch graph keeps one plan per batch size
  (``DEEPSEEK_JIT_MAX_PLANS``, least recently used dropped) over one shared fold.

A repeated inference call with the signature of the previous one goes through one
closure (``_fast_path``) that checks the same things without building the key.
"""
import collections
import warnings

import numpy as np

from .. import env
from .._tensor import Tensor
from ..autograd.grad_mode import _state
from .graph import Ref, Sym
from . import passes
from .plan import InferencePlan, resolve_backend
from .replay import ReplayProgram
from .cgen import CompileError
from .tracer import trace_graph, TracerWarning

__all__ = ["CompiledFunction", "GuardError"]


class GuardError(RuntimeError):
    """The inputs do not match the compiled signature (and retracing is not allowed)."""


def _sig(a, dynamic):
    if isinstance(a, Tensor):
        d = a._data
        shape = d.shape
        if dynamic and shape:
            shape = (None,) + shape[1:]
        return (shape, d.dtype.str, type(d).__module__)
    return ("value", repr(a))


def _describe(key):
    parts = []
    for k in key[1:]:
        if k[0] == "value":
            parts.append(f"value {k[1]}")
        else:
            shape = tuple("B" if s is None else s for s in k[0])
            parts.append(f"tensor{list(shape)} {np.dtype(k[1]).name} on "
                         f"{'cuda' if k[2].startswith('cupy') else 'cpu'}")
    return "(" + ", ".join(parts) + f") training={key[0]}"


class _Entry:
    """One traced signature: the graph, its parameter tensors, and lazily built
    per-batch inference plans and replay programs."""

    def __init__(self, graph, params):
        self.graph = graph
        self.params = params            # name -> Tensor
        self.plans = collections.OrderedDict()
        self.replays = {}
        self.fold_state = None
        self.folded = None              # (constant-folded graph, the arrays it used)
        self.plan_builds = 0


class CompiledFunction:
    """A traced, optimised callable (what ``deepseek.compile`` and ``jit.trace``
    return). ``graph`` is the readable graph of the latest signature, ``code`` the
    generated step of its inference plan, ``save(path)`` writes it to disk."""

    def __init__(self, fn, model=None, *, dynamic=False, strict=False, backend=None,
                 static_outputs=False, max_graphs=None):
        self._fn = fn
        self.model = model
        self.dynamic = dynamic
        self.strict = strict
        self.backend = backend
        self.static_outputs = static_outputs
        self.max_graphs = max_graphs or env.get("DEEPSEEK_JIT_MAX_GRAPHS")
        self.max_plans = env.get("DEEPSEEK_JIT_MAX_PLANS")
        self._entries = collections.OrderedDict()
        self._last = None
        self.traces = 0
        self._fast = None   # the guard + run of the latest inference call (see _fast_path)

    # ---- guards -------------------------------------------------------------------
    def _key(self, inputs):
        training = bool(getattr(self.model, "training", False))
        return (training,) + tuple(_sig(a, self.dynamic) for a in inputs)

    def __call__(self, *inputs):
        fast = self._fast
        if fast is not None and not _state.enabled:
            res = fast(inputs)
            if res is not _MISS:
                return res
        key = self._key(inputs)
        e = self._entries.get(key)
        if e is None:
            if self._entries and (self.strict or self._fn is None):
                known = "\n  ".join(_describe(k) for k in self._entries)
                raise GuardError(f"jit: inputs {_describe(key)} do not match the compiled "
                                 f"signature{'s' if len(self._entries) > 1 else ''}:\n  {known}\n"
                                 f"(compiled with a fixed signature: trace again for new "
                                 f"shapes{'' if self.dynamic else ', or declare dynamic=True for a free batch size'})")
            return self._trace(key, inputs)
        self._entries.move_to_end(key)
        self._last = e
        tensors = [a for a in inputs if isinstance(a, Tensor)]
        if _state.enabled and (any(t.requires_grad for t in tensors) or
                               any(p.requires_grad for p in e.params.values())):
            return self._replay(e, tensors)
        return self._infer(e, tensors, inputs)

    # ---- tracing ----------------------------------------------------------------------
    def _param_names(self):
        if self.model is None or not hasattr(self.model, "named_parameters"):
            return {}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for n, b in self.model.named_buffers():
            names.setdefault(id(b), n)
        return names

    def _trace(self, key, inputs):
        names = self._param_names()
        graph, result, params = trace_graph(self._fn, inputs, names)
        self.traces += 1
        if self.dynamic:
            graph = self._generalise(graph, inputs, names)
        graph = passes.optimize(graph)
        e = _Entry(graph, {v.name: params[v.name] for v in graph.params()})
        self._entries[key] = e
        self._last = e
        if len(self._entries) > self.max_graphs:
            old, _ = self._entries.popitem(last=False)
            warnings.warn(f"jit: more than {self.max_graphs} input signatures; dropping the "
                          f"graph of {_describe(old)} (DEEPSEEK_JIT_MAX_GRAPHS)", TracerWarning)
        return result

    def _generalise(self, graph, inputs, names):
        """Trace again at batch size B+1 and turn what changed into Sym (coef*B+off)."""
        from ..autograd.grad_mode import no_grad
        b1 = next((a.shape[0] for a in inputs if isinstance(a, Tensor) and a.ndim), None)
        if b1 is None:
            return graph
        grown = tuple(Tensor._make(np.concatenate([a._data, a._data[:1]])) if isinstance(a, Tensor)
                      and a.ndim else a for a in inputs)
        with no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", TracerWarning)
            g2, _, _ = trace_graph(self._fn, grown, names)
        if len(g2.nodes) != len(graph.nodes) or set(g2.values) != set(graph.values):
            raise GuardError("jit: dynamic=True but the traced graph changes with the batch "
                             "size (different ops at batch sizes "
                             f"{b1} and {b1 + 1}); trace with dynamic=False")

        def unify(x, y, what):
            if type(x) is not type(y):
                raise GuardError(f"jit: dynamic=True: {what} differs between batch sizes")
            if isinstance(x, (tuple, list)):
                if len(x) != len(y):
                    raise GuardError(f"jit: dynamic=True: {what} differs between batch sizes")
                return type(x)(unify(a, b, what) for a, b in zip(x, y))
            if isinstance(x, dict):
                return {k: unify(x[k], y[k], what) for k in x}
            if isinstance(x, slice):
                return slice(unify(x.start, y.start, what), unify(x.stop, y.stop, what),
                             unify(x.step, y.step, what))
            if isinstance(x, int) and not isinstance(x, bool) and x != y:
                c = y - x
                return Sym(c, x - c * b1)
            if isinstance(x, Ref) and x.vid != y.vid:
                raise GuardError(f"jit: dynamic=True: {what} differs between batch sizes")
            if isinstance(x, (float, str, bool)) and x != y and x == x:
                raise GuardError(f"jit: dynamic=True: {what} depends on the batch size")
            return x
        g = graph.copy()
        for vid, v in graph.values.items():
            v2 = g2.values[vid]
            shape = unify(tuple(v.shape), tuple(v2.shape), f"the shape of value %{vid}")
            if v.kind in ("const", "param") and shape != tuple(v.shape):
                raise GuardError(f"jit: dynamic=True but a constant of shape {v.shape} depends "
                                 f"on the batch size (built from the input's shape?)")
            g.values[vid] = type(v)(vid, v.kind, shape, v.dtype, v.name, v.array)
        g.nodes = [type(n)(n.kind, n.fn, unify(n.args, m.args, f"an argument of {n.name}"),
                           unify(n.kwargs, m.kwargs, f"an argument of {n.name}"), n.outs,
                           n.multi, n.src) for n, m in zip(graph.nodes, g2.nodes)]
        g.dynamic_batch = True
        return g

    # ---- executors --------------------------------------------------------------------
    def _batch(self, e, tensors):
        if not e.graph.dynamic_batch:
            return None
        return tensors[0]._data.shape[0] if tensors and tensors[0]._data.ndim else None

    def _replay(self, e, tensors):
        """Run the graph through Function.apply (autograd records it), as generated
        straight-line code (``replay.ReplayProgram``)."""
        batch = self._batch(e, tensors)
        prog = e.replays.get(batch)
        if prog is None:
            prog = e.replays[batch] = ReplayProgram(e.graph, e.params, batch)
            while len(e.replays) > self.max_plans:
                e.replays.pop(next(iter(e.replays)))
        return prog.run(*tensors)

    def _plan(self, e, tensors):
        batch = self._batch(e, tensors)
        plan = e.plans.get(batch)
        if plan is not None and self._plan_valid(e, plan):
            e.plans.move_to_end(batch)  # least recently used goes first, not first built
            return plan
        arrays = {n: t._data for n, t in e.params.items()}
        if e.folded is None or not self._fold_valid(e, arrays):
            # the folded graph does not depend on the batch size: one fold serves
            # every plan of the entry until a parameter changes
            e.plans.clear()
            graph, deps = passes.fold_constants(e.graph, arrays)
            e.fold_state = {n: e.params[n]._vc[0] for n in deps}
            e.folded = (graph, arrays)
        graph, _ = e.folded
        used = {v.name for v in graph.params()}
        backend = resolve_backend(self.backend)
        kw = dict(static_outputs=self.static_outputs)
        pa = {n: a for n, a in arrays.items() if n in used}
        try:
            plan = InferencePlan(graph, batch, pa, backend=backend, **kw)
        except CompileError as err:
            explicit = self.backend not in (None, "auto") or \
                (self.backend is None and env.get("DEEPSEEK_JIT_BACKEND") != "auto")
            if explicit or backend != "c":
                raise
            # auto: a compiler that runs but fails on our unit -> the next backend
            fallback = "numexpr" if _has_numexpr() else "numpy"
            warnings.warn(f"jit: C kernels unavailable ({err}); using {fallback}", TracerWarning)
            plan = InferencePlan(graph, batch, pa, backend=fallback, **kw)
        # a packed GEMM weight is a copy: an in-place change of the parameter must
        # rebuild the plan (its version counter says so)
        plan.packed_versions = [(e.params[n]._vc, e.params[n]._vc[0]) for n in sorted(plan.packed_params)]
        e.plans[batch] = plan
        e.plan_builds += 1
        # A dynamic graph keeps one plan per batch size it has served (its buffers and
        # kernel pointers are fixed); the bound is separate from (and larger than) the
        # signature bound so serving a range of batch sizes in turn does not rebuild a
        # plan on every call.
        while len(e.plans) > self.max_plans:
            e.plans.popitem(last=False)
        return plan

    @staticmethod
    def _plan_valid(e, plan):
        """The plan's parameter arrays are still the live ones and unchanged."""
        params = e.params
        for n, a in plan.param_arrays.items():
            if params[n]._data is not a:
                return False
        for vc, v in plan.packed_versions:
            if vc[0] != v:
                return False
        if e.fold_state:
            for n, v in e.fold_state.items():
                if params[n]._vc[0] != v:
                    return False
        return True

    @staticmethod
    def _fold_valid(e, arrays):
        _, folded_arrays = e.folded
        if any(arrays[n] is not folded_arrays.get(n) for n in arrays):
            return False
        return all(e.params[n]._vc[0] == v for n, v in (e.fold_state or {}).items())

    def _infer(self, e, tensors, inputs=None):
        plan = self._plan(e, tensors)
        res = plan.run(*[t._data for t in tensors])
        if inputs is not None:  # the full path ran: the closure (if any) is stale
            self._fast = _fast_path(self, e, plan, inputs)
        if isinstance(res, np.ndarray):
            return _make(res)
        return _wrap(res)

    # ---- introspection -------------------------------------------------------------------
    def _latest(self):
        if self._last is None:
            raise RuntimeError("jit: nothing traced yet: call the compiled function once first")
        return self._last

    @property
    def graph(self):
        """The (optimised) graph of the latest signature; ``print(graph)`` shows it."""
        return self._latest().graph

    def plan_for(self, *inputs):
        """The InferencePlan that serves ``inputs`` (built if needed)."""
        key = self._key(inputs)
        if key not in self._entries:
            self(*inputs)
        e = self._entries[key]
        return self._plan(e, [a for a in inputs if isinstance(a, Tensor)])

    @property
    def code(self):
        """The generated Python step of the latest inference plan."""
        e = self._latest()
        if not e.plans:
            raise RuntimeError("jit: no inference plan built yet (call under no_grad first)")
        return next(reversed(e.plans.values())).code

    def save(self, path):
        """Write the latest graph (JSON) and its weights (safetensors) to ``path``."""
        from .serialize import save
        e = self._latest()
        save(e.graph, {n: t._data for n, t in e.params.items()}, path)

    def compile(self, model):
        """Bind ``model`` (the seed's ``optimized_forward.compile(model)``)."""
        fn = self._fn
        return CompiledFunction(lambda *xs: fn(model, *xs), model=model, dynamic=self.dynamic,
                                strict=self.strict, backend=self.backend,
                                static_outputs=self.static_outputs, max_graphs=self.max_graphs)

    def __repr__(self):
        return f"<deepseek.jit.CompiledFunction: {len(self._entries)} graph(s)>"


_MISS = object()


def _fast_path(cf, e, plan, inputs):
    """The guard and run of one inference signature as one closure: a repeated call
    with the same shapes/dtypes/arrays skips building the signature key, the entry
    lookup and the plan lookup (tens of microseconds at batch 1). For a dynamic-batch
    graph the closure serves every batch size that already has a plan. Anything that
    does not match exactly -- input shapes, dtypes or array types, ``model.training``,
    a parameter array replaced or (for folded or packed ones) changed in place -- returns
    ``_MISS`` and the call takes the full path, which rebuilds what is stale. None when
    the inputs are not all tensors."""
    if any(type(t) is not Tensor for t in inputs):
        return None
    model = cf.model
    training = bool(getattr(model, "training", False))
    dynamic = e.graph.dynamic_batch
    if dynamic and (not inputs or not inputs[0]._data.ndim):
        return None
    cut = 1 if dynamic else 0
    sig = tuple((t._data.shape[cut:], t._data.dtype, type(t._data)) for t in inputs)
    n = len(inputs)
    params = e.params
    plans = e.plans
    folded = [(params[name]._vc, v) for name, v in (e.fold_state or {}).items()]
    single = isinstance(e.graph.out_spec, Ref)

    def fast(xs):
        if len(xs) != n or bool(getattr(model, "training", False)) is not training:
            return _MISS
        arrays = []
        for x, (shape, dtype, typ) in zip(xs, sig):
            if type(x) is not Tensor:
                return _MISS
            d = x._data
            if type(d) is not typ or d.dtype != dtype or \
                    (d.shape[1:] != shape if cut else d.shape != shape):
                return _MISS
            arrays.append(d)
        key = arrays[0].shape[0] if cut else None
        p = plans.get(key)
        if p is None:
            return _MISS
        for name, a in p.param_arrays.items():
            if params[name]._data is not a:
                return _MISS
        for vc, v in p.packed_versions:
            if vc[0] != v:
                return _MISS
        for vc, v in folded:
            if vc[0] != v:
                return _MISS
        plans.move_to_end(key)
        res = p.run(*arrays)
        return _make(res) if single else _wrap(res)
    return fast


def _make(a):
    return Tensor._make(a)


def _has_numexpr():
    try:
        import numexpr  # noqa: F401
        return True
    except ImportError:
        return False


def _wrap(obj):
    if isinstance(obj, np.ndarray):
        return Tensor._make(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_wrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _wrap(v) for k, v in obj.items()}
    return obj
