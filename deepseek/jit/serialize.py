"""jit.save / jit.load: the graph as JSON, the weights as safetensors, in one file.

The file is a ``deepseek.save`` checkpoint (safetensors with a JSON structure in its
metadata; nothing is ever unpickled): ``{"format": "deepseek.jit/1", "graph": <the
graph as JSON>, "params": {name: array}, "consts": {value id: array}}``. Ops are
named by their Function class (``module:qualname``) or, for the op-table ops computed
on arrays, by Tensor method name, so loading needs deepseek and nothing of the
model's Python code.
"""
import numpy as np

from .graph import Graph, Node, Value, encode, decode, fn_ref, fn_from_ref

__all__ = ["save", "load", "graph_to_json", "graph_from_json", "FORMAT"]

FORMAT = "deepseek.jit/1"


def graph_to_json(g):
    """The graph as JSON-able dicts (arrays of consts left out: see ``save``)."""
    return {
        "values": [{"id": v.vid, "kind": v.kind, "shape": encode(tuple(v.shape)),
                    "dtype": v.dtype.name, "name": v.name} for v in g.values.values()],
        "nodes": [{"kind": n.kind, "fn": fn_ref(n.fn) if n.kind == "function" else n.fn,
                   "args": encode(tuple(n.args)), "kwargs": encode(dict(n.kwargs)),
                   "outs": list(n.outs), "multi": n.multi, "src": n.src} for n in g.nodes],
        "inputs": list(g.inputs), "out_spec": encode(g.out_spec),
        "dynamic_batch": g.dynamic_batch,
    }


def graph_from_json(d, consts):
    """Inverse of graph_to_json; ``consts``: value id (str) -> array."""
    from .graph import _dtype
    g = Graph()
    for v in d["values"]:
        arr = consts.get(str(v["id"])) if v["kind"] == "const" else None
        g.values[v["id"]] = Value(v["id"], v["kind"], decode(v["shape"]), _dtype(v["dtype"]),
                                  v["name"], arr)
    g._next = max(g.values, default=-1) + 1
    for n in d["nodes"]:
        fn = fn_from_ref(n["fn"]) if n["kind"] == "function" else n["fn"]
        g.nodes.append(Node(n["kind"], fn, decode(n["args"]), decode(n["kwargs"]), n["outs"],
                            n["multi"], n["src"]))
    g.inputs = list(d["inputs"])
    g.out_spec = decode(d["out_spec"])
    g.dynamic_batch = d["dynamic_batch"]
    return g


def save(graph, params, path):
    """Write ``graph`` and ``params`` (name -> array) to ``path`` (atomically)."""
    from ..serialization import save as _save
    consts = {str(v.vid): np.ascontiguousarray(v.array) for v in graph.values.values()
              if v.kind == "const"}
    _save({"format": FORMAT, "graph": graph_to_json(graph),
           "params": {n: np.ascontiguousarray(a) for n, a in params.items()},
           "consts": consts}, path)


def load(path, backend=None, static_outputs=False):
    """A CompiledFunction running the graph stored at ``path`` (fixed signature; the
    batch size is free when it was traced with ``dynamic=True``)."""
    from ..serialization import load as _load
    from .._tensor import Tensor
    from .module import CompiledFunction, _Entry
    obj = _load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"jit.load: {path} is not a deepseek.jit file (format "
                         f"{obj.get('format') if isinstance(obj, dict) else None!r})")
    as_array = lambda t: t._data if isinstance(t, Tensor) else np.asarray(t)  # noqa: E731
    consts = {k: as_array(v) for k, v in obj["consts"].items()}
    g = graph_from_json(obj["graph"], consts)
    params = {n: Tensor._make(as_array(a)) for n, a in obj["params"].items()}
    cf = CompiledFunction(None, None, dynamic=g.dynamic_batch, strict=True, backend=backend,
                          static_outputs=static_outputs)
    key = (False,) + tuple(((None,) + tuple(g.values[v].shape[1:]) if g.dynamic_batch
                            else tuple(g.values[v].shape), g.values[v].dtype.str, "numpy")
                           for v in g.inputs)
    e = _Entry(g, params)
    cf._entries[key] = e
    cf._last = e
    cf.parameters = lambda: iter(params.values())
    return cf
