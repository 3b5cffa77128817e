"""The graph IR of deepseek.jit: values, nodes, printing, a dict form for viewers.

A ``Graph`` is a straight-line program. Every tensor it touches is a *value* (an
integer id) of one kind:

- ``input``  the i-th tensor argument of the call,
- ``param``  a parameter or buffer of the model, bound live by name (the array is read
             from the model on every call, so optimizer steps are seen),
- ``const``  an array baked into the graph (a tensor no traced op produced: a mask
             built with ``deepseek.ones``, a captured tensor, a folded subgraph),
- ``node``   an output of a node.

A ``Node`` is one op call: ``fn`` is the ``Function`` subclass that ran (or, for the
ops of the op table computed straight on arrays such as comparisons, the Tensor
method name, ``kind == "method"``; or an internal op of the optimiser, ``kind ==
"jit"``), ``args``/``kwargs`` are what ``Function.apply`` got with every tensor
replaced by a :class:`Ref` to its value. Shapes in args may hold :class:`Sym` (the
dynamic batch size, ``coef * B + off``).

``str(graph)`` is the readable text form; ``graph.to_dict()`` gives nodes and edges as
plain dicts (what ``deepseek.viz.show_graph`` renders and what ``save`` writes).
"""
import importlib

import numpy as np

__all__ = ["Graph", "Node", "Value", "Ref", "Sym", "map_refs", "refs_in", "encode", "decode"]


class Ref:
    """A reference to graph value ``vid`` inside a node's args."""

    __slots__ = ("vid",)

    def __init__(self, vid):
        self.vid = vid

    def __repr__(self):
        return f"%{self.vid}"

    def __eq__(self, other):
        return isinstance(other, Ref) and other.vid == self.vid

    def __hash__(self):
        return hash(("ref", self.vid))


class Sym:
    """An integer that depends on the dynamic batch size B: ``coef * B + off``."""

    __slots__ = ("coef", "off")

    def __init__(self, coef, off):
        self.coef, self.off = int(coef), int(off)

    def at(self, batch):
        """The concrete value for batch size ``batch``."""
        return self.coef * batch + self.off

    def __repr__(self):
        c = "B" if self.coef == 1 else f"{self.coef}*B"
        return c if self.off == 0 else f"({c}{'+' if self.off > 0 else '-'}{abs(self.off)})"

    def __eq__(self, other):
        return isinstance(other, Sym) and (other.coef, other.off) == (self.coef, self.off)

    def __hash__(self):
        return hash(("sym", self.coef, self.off))


class Value:
    """One tensor of the graph: kind (input/param/const/node), shape, dtype, and
    ``name`` (param name, input index) or ``array`` (const)."""

    __slots__ = ("vid", "kind", "shape", "dtype", "name", "array")

    def __init__(self, vid, kind, shape, dtype, name=None, array=None):
        self.vid, self.kind, self.shape, self.dtype = vid, kind, tuple(shape), np.dtype(dtype)
        self.name, self.array = name, array

    def type_str(self):
        short = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64",
                 "int32": "i32", "bool": "bool", "bfloat16": "bf16"}.get(self.dtype.name,
                                                                           self.dtype.name)
        return f"{short}[{', '.join(map(repr, self.shape))}]"


class Node:
    """One op call. ``kind``: "function" (``fn`` a Function class), "method" (``fn``
    the name of a Tensor method of the op table), "jit" (``fn`` an internal op name);
    ``outs`` the value ids it defines; ``multi`` whether it returns a tuple; ``src``
    the user source line that called it."""

    __slots__ = ("kind", "fn", "args", "kwargs", "outs", "multi", "src")

    def __init__(self, kind, fn, args, kwargs, outs, multi=False, src=""):
        self.kind, self.fn, self.args, self.kwargs = kind, fn, tuple(args), dict(kwargs)
        self.outs, self.multi, self.src = tuple(outs), multi, src

    @property
    def name(self):
        """The op's display name."""
        return self.fn if isinstance(self.fn, str) else self.fn.__name__

    def inputs(self):
        """Value ids this node reads, in order (with repeats)."""
        return refs_in((self.args, self.kwargs))


def _map_leaves(obj, kind, f):
    """``obj`` (nested tuples/lists/dicts/slices) with every ``kind`` leaf x replaced by
    f(x); everything else kept as it is."""
    if isinstance(obj, kind):
        return f(obj)
    t = type(obj)
    if t is tuple or t is list:
        return t(_map_leaves(o, kind, f) for o in obj)
    if t is dict:
        return {k: _map_leaves(v, kind, f) for k, v in obj.items()}
    if t is slice:
        return slice(_map_leaves(obj.start, kind, f), _map_leaves(obj.stop, kind, f),
                     _map_leaves(obj.step, kind, f))
    return obj


def map_refs(obj, f):
    """``obj`` (nested tuples/lists/dicts/slices) with every Ref r replaced by f(r)."""
    return _map_leaves(obj, Ref, f)


def refs_in(obj):
    """The value ids referenced anywhere in ``obj``, in order."""
    out = []
    map_refs(obj, lambda r: out.append(r.vid) or r)
    return out


def container_source(obj, item):
    """Python source rebuilding the tuple, list, dict or slice ``obj`` from the source
    ``item(x)`` of each of its items (what the generated executors return and pass);
    None when ``obj`` is not one of those containers."""
    if isinstance(obj, tuple):
        return "(" + "".join(item(o) + ", " for o in obj) + ")"
    if isinstance(obj, list):
        return "[" + ", ".join(item(o) for o in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {item(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, slice):
        return f"slice({item(obj.start)}, {item(obj.stop)}, {item(obj.step)})"
    return None


def map_syms(obj, batch):
    """``obj`` with every Sym replaced by its value at batch size ``batch``."""
    return _map_leaves(obj, Sym, lambda sym: sym.at(batch))


class Graph:
    """A traced program: ``values`` (vid -> Value), ``nodes`` in execution order,
    ``inputs`` (value ids of the tensor arguments), ``out_spec`` (the structure of the
    result with Ref leaves), ``dynamic_batch`` (whether dim 0 of inputs is B)."""

    def __init__(self):
        self.values = {}
        self.nodes = []
        self.inputs = []
        self.out_spec = None
        self.dynamic_batch = False
        self._next = 0

    # ---- building ---------------------------------------------------------------
    def add_value(self, kind, shape, dtype, name=None, array=None):
        """A new value; returns its id."""
        vid = self._next
        self._next += 1
        self.values[vid] = Value(vid, kind, shape, dtype, name, array)
        return vid

    def params(self):
        """Param values in id order."""
        return [v for v in self.values.values() if v.kind == "param"]

    def outputs(self):
        """Value ids the result refers to."""
        return refs_in(self.out_spec)

    def users(self):
        """vid -> number of reads (node inputs and the result)."""
        n = {}
        for node in self.nodes:
            for v in node.inputs():
                n[v] = n.get(v, 0) + 1
        for v in self.outputs():
            n[v] = n.get(v, 0) + 1
        return n

    def copy(self):
        """A copy whose node list and value table can be changed independently."""
        g = Graph()
        g.values = dict(self.values)
        g.nodes = list(self.nodes)
        g.inputs = list(self.inputs)
        g.out_spec = self.out_spec
        g.dynamic_batch = self.dynamic_batch
        g._next = self._next
        return g

    # ---- showing ------------------------------------------------------------------
    def _vname(self, vid):
        v = self.values[vid]
        if v.kind == "param":
            return f"%{v.name}"
        if v.kind == "input":
            return f"%x{v.name}"
        return f"%{vid}"

    def _fmt(self, obj):
        if isinstance(obj, Ref):
            return self._vname(obj.vid)
        if isinstance(obj, (tuple, list)):
            inner = ", ".join(self._fmt(o) for o in obj)
            return f"({inner}{',' if len(obj) == 1 and isinstance(obj, tuple) else ''})" \
                if isinstance(obj, tuple) else f"[{inner}]"
        if isinstance(obj, dict):
            return "{" + ", ".join(f"{k}={self._fmt(v)}" for k, v in obj.items()) + "}"
        if isinstance(obj, np.dtype):
            return obj.name
        return repr(obj)

    def __str__(self):
        ins = [f"{self._vname(v)}: {self.values[v].type_str()}" for v in self.inputs]
        lines = ["graph(" + ", ".join(ins) + "):"]
        for v in self.values.values():
            if v.kind == "param":
                lines.append(f"  {self._vname(v.vid)}: {v.type_str()}  # parameter")
            elif v.kind == "const":
                lines.append(f"  {self._vname(v.vid)}: {v.type_str()}  # constant")
        for n in self.nodes:
            args = [self._fmt(a) for a in n.args] + [f"{k}={self._fmt(v)}" for k, v in n.kwargs.items()]
            outs = ", ".join(self._vname(o) for o in n.outs)
            types = ", ".join(self.values[o].type_str() for o in n.outs)
            src = f"  {n.src}" if n.src else ""
            lines.append(f"  {outs} = {n.name}({', '.join(args)})  # {types}{src}")
        lines.append(f"  return {self._fmt(self.out_spec)}")
        return "\n".join(lines)

    __repr__ = __str__

    def to_dict(self):
        """The graph as plain dicts: ``{"values": [...], "nodes": [...], "edges": [...],
        "inputs": [...], "outputs": [...]}`` -- nodes with id/op/kind/outputs/types/src,
        edges ``{"src": value id, "dst": node index}`` (for viewers such as viz)."""
        values = [{"id": v.vid, "kind": v.kind, "shape": [repr(s) if isinstance(s, Sym) else s
                                                          for s in v.shape],
                   "dtype": v.dtype.name, "name": v.name} for v in self.values.values()]
        nodes, edges = [], []
        for i, n in enumerate(self.nodes):
            nodes.append({"id": i, "op": n.name, "kind": n.kind, "outputs": list(n.outs),
                          "types": [self.values[o].type_str() for o in n.outs], "src": n.src,
                          "attrs": {k: self._fmt(v) for k, v in n.kwargs.items()}})
            for v in dict.fromkeys(n.inputs()):
                edges.append({"src": v, "dst": i})
        return {"values": values, "nodes": nodes, "edges": edges, "inputs": list(self.inputs),
                "outputs": self.outputs()}


# ---- JSON form (save/load): every arg becomes plain JSON, tagged where needed ---------
def fn_ref(fn):
    """A Function class as "module:qualname"."""
    return f"{fn.__module__}:{fn.__qualname__}"


def fn_from_ref(ref):
    """The Function class named by :func:`fn_ref` (imports its module)."""
    mod, _, qual = ref.partition(":")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def encode(obj):
    """A node argument as JSON (TypeError for what a graph file cannot hold)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, Ref):
        return {"ref": obj.vid}
    if isinstance(obj, Sym):
        return {"sym": [obj.coef, obj.off]}
    if isinstance(obj, tuple):
        return {"tuple": [encode(o) for o in obj]}
    if isinstance(obj, list):
        return [encode(o) for o in obj]
    if isinstance(obj, dict):
        return {"dict": {str(k): encode(v) for k, v in obj.items()}}
    if isinstance(obj, slice):
        return {"slice": [encode(obj.start), encode(obj.stop), encode(obj.step)]}
    if obj is Ellipsis:
        return {"ellipsis": True}
    if isinstance(obj, np.dtype):
        return {"dtype": obj.name}
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return {"dtype": np.dtype(obj).name}
    if isinstance(obj, np.generic):
        return {"scalar": obj.item(), "dtype": obj.dtype.name}
    from ..backend import Device
    if isinstance(obj, Device):
        return {"device": str(obj)}
    raise TypeError(f"jit.save: cannot store an argument of type {type(obj).__name__} "
                    f"({obj!r}) in a graph file")


def decode(obj):
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(o) for o in obj]
    if not isinstance(obj, dict):
        return obj
    if "ref" in obj:
        return Ref(obj["ref"])
    if "sym" in obj:
        return Sym(*obj["sym"])
    if "tuple" in obj:
        return tuple(decode(o) for o in obj["tuple"])
    if "dict" in obj:
        return {k: decode(v) for k, v in obj["dict"].items()}
    if "slice" in obj:
        return slice(*(decode(o) for o in obj["slice"]))
    if "ellipsis" in obj:
        return Ellipsis
    if "scalar" in obj:
        return np.dtype(_dtype(obj["dtype"])).type(obj["scalar"])
    if "dtype" in obj:
        return np.dtype(_dtype(obj["dtype"]))
    if "device" in obj:
        from ..backend import Device
        return Device(obj["device"])
    raise ValueError(f"jit.load: unknown argument form {obj!r}")


def _dtype(name):
    from .. import dtypes
    return dtypes.bfloat16 if name == "bfloat16" else name
