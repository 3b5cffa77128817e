"""The tracer: a ``DispatchMode`` that records every op into a ``Graph`` while it runs.

Tracing runs the user's code once, eagerly, with a :class:`TraceMode` entered: every
``Function.apply`` reaches ``__dispatch__``, which runs the op (through the modes
below, so autograd, AMP and friends behave as usual) and appends a node whose
arguments are the call's, with tensors replaced by references to graph values. No op
has JIT code of its own: a new op of the op table traces the moment it exists.

What does not pass through ``Function.apply`` is handled generically, also while the
trace runs only:

- the op-table ops computed straight on arrays (comparisons, logical ops, ``any``...)
  are Tensor methods; their table entries say which, and each is wrapped so that a call
  becomes a ``method`` node (unless it ran traced ops itself);
- in-place ops of the table rebind ``self`` through ``Tensor._assign_result``: the
  tracer follows that, so later reads of ``self`` see the new value;
- turning a tensor into a Python value (``.item()``, ``float(t)``, ``bool(t)`` i.e.
  ``if t > 0:``, ``.numpy()``, ``.tolist()``) freezes the value into the graph: a
  :class:`TracerWarning` names the user's source line, as torch.jit.trace does.

Tensors no traced op produced become ``const`` values (copied), model parameters and
buffers become ``param`` values (bound by name, read live on every call).
"""
import os
import sys
import threading
import warnings

import numpy as np

from ..autograd.dispatch_mode import DispatchMode, active_modes
from .graph import Graph, Node, Ref

__all__ = ["TracerWarning", "TraceMode", "trace_graph", "user_source_line"]

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TracerWarning(UserWarning):
    """The trace may not generalise: a tensor's value was turned into a Python value (or
    data was written in a way the graph cannot replay) while tracing."""


def user_source_line(skip_pkg=True):
    """"file:line" of the innermost frame outside the deepseek package (the user's code)."""
    f = sys._getframe(1)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if not (skip_pkg and fn.startswith(_PKG_DIR + os.sep)):
            return f"{os.path.basename(fn)}:{f.f_lineno}", fn, f.f_lineno, f.f_globals
        f = f.f_back
    return "", "<unknown>", 0, {}


def _warn(what):
    short, fn, line, glb = user_source_line()
    import linecache
    text = linecache.getline(fn, line).strip()
    msg = (f"{what} while tracing, at {short}: `{text}`. The value is recorded as a "
           f"constant, so the traced graph may not generalise to other inputs (Python "
           f"control flow that depends on tensor values is not captured).")
    # module/registry as warnings.warn would pick for that frame (once per line by default)
    module = glb.get("__name__") or os.path.splitext(os.path.basename(fn))[0]
    warnings.warn_explicit(msg, TracerWarning, fn, line, module=module,
                           registry=glb.setdefault("__warningregistry__", {}))


def _current():
    """The innermost TraceMode active in this thread, or None."""
    for m in reversed(active_modes()):
        if isinstance(m, TraceMode):
            return m
    return _suspended.get()


class _Suspended(threading.local):
    mode = None

    def get(self):
        return self.mode


# While __dispatch__ runs, the mode is off the stack: conversions inside an op's forward
# (on raw arrays) never reach the patches anyway; this holds the mode for the patched
# Tensor methods that run outside any op.
_suspended = _Suspended()


class TraceMode(DispatchMode):
    """Records every op of this thread into ``self.graph`` while active.

    ``params`` maps ``id(tensor)`` to a name for the tensors that become ``param``
    values (the model's parameters and buffers); any other ``Parameter`` met becomes a
    param named ``p<k>``; other unknown tensors become constants."""

    def __init__(self, params=None):
        self.graph = Graph()
        self.param_names = dict(params or {})
        self.param_tensors = {}   # name -> tensor
        self._by_tensor = {}      # id(t) -> (vid, t, array, version)
        self._by_array = {}       # id(array) -> (vid, array)
        self._keep = []

    # ---- values --------------------------------------------------------------------
    def _bind(self, t, vid):
        self._by_tensor[id(t)] = (vid, t, t._data, t._vc[0])
        self._by_array[id(t._data)] = (vid, t._data)
        self._keep.append(t)

    def add_input(self, t, index):
        """Register tensor ``t`` as the graph's input ``index``; returns its value id."""
        vid = self.graph.add_value("input", t._data.shape, t._data.dtype, name=index)
        self.graph.inputs.append(vid)
        self._bind(t, vid)
        return vid

    def value_of(self, t):
        """The value id of tensor ``t`` (registering it as a param/const when new)."""
        e = self._by_tensor.get(id(t))
        if e is not None and e[2] is t._data:
            if e[3] != t._vc[0] and self.graph.values[e[0]].kind != "param":
                _warn("a tensor was written in place (copy_/fill_/setitem outside the op "
                      "table's in-place ops)")
            return e[0]
        e = self._by_array.get(id(t._data))
        if e is not None and e[1] is t._data:
            return e[0]
        from ..nn.parameter import Parameter, Buffer
        name = self.param_names.get(id(t))
        if name is None and isinstance(t, (Parameter, Buffer)):
            name = f"p{len(self.param_tensors)}"
        g = self.graph
        if name is not None:
            vid = g.add_value("param", t._data.shape, t._data.dtype, name=name)
            self.param_tensors[name] = t
        else:
            vid = g.add_value("const", t._data.shape, t._data.dtype, array=t._data.copy())
        self._bind(t, vid)
        return vid

    def _array_value(self, a):
        e = self._by_array.get(id(a))
        if e is not None and e[1] is a:
            return e[0]
        vid = self.graph.add_value("const", a.shape, a.dtype, array=a.copy())
        self._by_array[id(a)] = (vid, a)
        self._keep.append(a)
        return vid

    def map_arg(self, a):
        """A call argument with tensors (and backend arrays) replaced by Refs."""
        from .._tensor import Tensor
        if isinstance(a, Tensor):
            return Ref(self.value_of(a))
        t = type(a)
        if t is tuple or t is list:
            return t(self.map_arg(o) for o in a)
        if t is dict:
            return {k: self.map_arg(v) for k, v in a.items()}
        if t is slice:
            return slice(self.map_arg(a.start), self.map_arg(a.stop), self.map_arg(a.step))
        if hasattr(a, "__array_interface__") and not isinstance(a, np.generic) \
                or hasattr(a, "__cuda_array_interface__"):
            return Ref(self._array_value(a))
        return a

    def record(self, kind, fn, args, kwargs, result):
        """Append a node for a call that returned ``result`` (a Tensor or a tuple)."""
        from .._tensor import Tensor
        margs = tuple(self.map_arg(a) for a in args)
        mkw = {k: self.map_arg(v) for k, v in kwargs.items()}
        multi = isinstance(result, tuple)
        outs = result if multi else (result,)
        vids = []
        for o in outs:
            if not isinstance(o, Tensor):
                return
            vid = self.graph.add_value("node", o._data.shape, o._data.dtype)
            vids.append(vid)
        for o, vid in zip(outs, vids):
            self._bind(o, vid)
        self.graph.nodes.append(Node(kind, fn, margs, mkw, vids, multi, user_source_line()[0]))

    def map_result(self, obj):
        """The traced function's result with tensors replaced by Refs."""
        return self.map_arg(obj)

    # ---- the dispatch point ----------------------------------------------------------
    def __dispatch__(self, fn, args, kwargs):
        _suspended.mode = self
        try:
            result = fn.apply(*args, **kwargs)
        finally:
            _suspended.mode = None
        self.record("function", fn, args, kwargs, result)
        return result

    def __enter__(self):
        _patches.acquire()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _patches.release()


# ---- Tensor patches, installed while any trace runs ------------------------------------
def _conversion(orig, what):
    def method(self, *a, **k):
        if _current() is not None:
            _warn(f"Converting a tensor to a Python value ({what})")
        return orig(self, *a, **k)
    method.__name__ = orig.__name__
    method.__doc__ = orig.__doc__
    return method


def _tableless(orig, name):
    def method(*args, **kwargs):
        mode = _current()
        if mode is None or _suspended.mode is mode:
            return orig(*args, **kwargs)
        n = len(mode.graph.nodes)
        result = orig(*args, **kwargs)
        from .._tensor import Tensor
        if len(mode.graph.nodes) == n and (isinstance(result, Tensor) or (
                isinstance(result, tuple) and result and all(isinstance(r, Tensor) for r in result))):
            mode.record("method", name, args, kwargs, result)
        elif not isinstance(result, (Tensor, tuple)) and result is not NotImplemented:
            _warn(f"A data-dependent Python value came from Tensor.{name}")
        return result
    method.__name__ = orig.__name__
    method.__doc__ = orig.__doc__
    return method


def _assign(orig):
    def method(self, result):
        out = orig(self, result)
        mode = _current()
        if mode is not None:
            e = mode._by_tensor.get(id(result))
            if e is not None:
                mode._by_tensor[id(self)] = (e[0], self, self._data, self._vc[0])
                mode._keep.append(self)
        return out
    return method


_CONVERSIONS = {"item": ".item()", "tolist": ".tolist()", "numpy": ".numpy()",
                "__bool__": "bool(tensor), e.g. `if tensor:`", "__float__": "float(tensor)",
                "__int__": "int(tensor)", "__index__": "tensor as an index",
                "__array__": "numpy.asarray(tensor)"}


def tableless_method_names():
    """Tensor methods of op-table entries that bypass Function.apply (comparisons ...)."""
    from ..ops import registry
    names = []
    for e in registry.OP_TABLE:
        if e.functions:
            continue
        for spec in e.methods + e.operators:
            name, impl = registry._named(spec)
            if impl != "property":
                names.append(name)
        names.extend(e.reflected)
    return names


def _function_forms():
    """(module, attribute, function, method name) of the public function forms of the
    op-table ops that bypass Function.apply and whose Tensor method takes the same
    arguments (``logical_and(a, b)`` is ``a.logical_and(b)``), in the namespaces user
    code calls them through."""
    import importlib
    import sys as _sys
    from ..ops import registry
    mods = [importlib.import_module("deepseek.ops"), importlib.import_module("deepseek.ops.nondiff"),
            importlib.import_module("deepseek._api"), _sys.modules["deepseek"]]
    out = []
    for e in registry.OP_TABLE:
        if e.functions or e.name not in e.methods:
            continue
        for attr in (e.name,) + tuple(e.aliases):
            # deepseek's lazy __getattr__ caches names in its globals: resolve now, so
            # that a first use inside the trace cannot cache the patched function
            getattr(mods[-1], attr, None)
            for mod in mods:
                if mod.__dict__.get(attr) is e.op:
                    out.append((mod, attr, e.op, e.name))
    return out


class _Patches:
    """Refcounted install/remove of the Tensor patches (nested and concurrent traces)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.saved = {}
        self.originals = {}
        self.functions = []

    def acquire(self):
        from .._tensor import Tensor
        with self.lock:
            self.count += 1
            if self.count > 1:
                return
            patch = {}
            for name, what in _CONVERSIONS.items():
                patch[name] = _conversion(Tensor.__dict__[name], what)
            for name in tableless_method_names():
                orig = Tensor.__dict__.get(name)
                if callable(orig) and name not in patch:
                    self.originals[name] = orig
                    patch[name] = _tableless(orig, name)
            patch["_assign_result"] = _assign(Tensor.__dict__["_assign_result"])
            for name, fn in patch.items():
                self.saved[name] = Tensor.__dict__[name]
                setattr(Tensor, name, fn)
            # the function forms too (deepseek.logical_and(a, b), ops.isnan(x)): without
            # this they ran untraced and their result was frozen into the graph as a
            # constant of the example's values
            self.functions = []
            for mod, attr, orig, method in _function_forms():
                self.functions.append((mod, attr, orig))
                setattr(mod, attr, _tableless(orig, method))

    def release(self):
        from .._tensor import Tensor
        with self.lock:
            self.count -= 1
            if self.count:
                return
            for name, fn in self.saved.items():
                setattr(Tensor, name, fn)
            self.saved = {}
            for mod, attr, orig in self.functions:
                setattr(mod, attr, orig)
            self.functions = []


_patches = _Patches()


def tensor_method(name):
    """The unpatched Tensor method ``name`` (what a ``method`` node calls on replay)."""
    from .._tensor import Tensor
    return _patches.originals.get(name) or _patches.saved.get(name) or getattr(Tensor, name)


def trace_graph(fn, inputs, params=None):
    """Run ``fn(*inputs)`` under a TraceMode; returns (graph, result, param tensors).

    ``inputs``: a tuple whose Tensor items become the graph's inputs (others are baked
    in as constants of the trace); ``params``: {id(tensor): name} of the model."""
    from .._tensor import Tensor
    mode = TraceMode(params)
    k = 0
    for a in inputs:
        if isinstance(a, Tensor):
            mode.add_input(a, k)
            k += 1
    with mode:
        result = fn(*inputs)
    mode.graph.out_spec = mode.map_result(result)
    return mode.graph, result, mode.param_tensors
