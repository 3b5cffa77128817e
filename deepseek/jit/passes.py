"""Graph passes: dead-code elimination, common-subexpression elimination, no-op
reshape/transpose removal, constant folding of parameter-only subgraphs.

Every pass takes a Graph and returns a new one (the input is left alone), so the
traced graph stays printable next to the optimised one. Passes know ops only through
their Function class and generic properties (``is_view``, whether an op draws random
numbers); elementwise fusion lives in ``fusion.py``.
"""
import numpy as np

from .graph import Ref, Sym, map_refs

__all__ = ["dce", "cse", "simplify", "fold_constants", "optimize", "is_random"]

_RANDOM_WORDS = ("dropout", "rand", "bernoulli", "multinomial", "normal")


def is_random(node):
    """True for ops that draw random numbers (never merged, folded or removed twice)."""
    if "generator" in node.kwargs:
        return True
    name = node.name.lower()
    return any(w in name for w in _RANDOM_WORDS)


def _substitute(g, alias):
    """Rewrite every reference through ``alias`` (vid -> vid, followed transitively)."""
    if not alias:
        return g

    def root(v):
        while v in alias:
            v = alias[v]
        return v

    def f(r):
        return Ref(root(r.vid))
    for i, n in enumerate(g.nodes):
        if any(v in alias for v in n.inputs()):
            g.nodes[i] = type(n)(n.kind, n.fn, map_refs(n.args, f), map_refs(n.kwargs, f),
                                 n.outs, n.multi, n.src)
    g.out_spec = map_refs(g.out_spec, f)
    return g


def dce(graph):
    """Drop nodes none of whose outputs is used, and unused params/consts."""
    g = graph.copy()
    live = set(g.outputs())
    kept = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outs):
            kept.append(n)
            live.update(n.inputs())
    g.nodes = kept[::-1]
    defined = set(g.inputs) | {o for n in g.nodes for o in n.outs}
    g.values = {k: v for k, v in g.values.items()
                if k in defined or (v.kind in ("param", "const") and k in live)}
    return g


def _key(obj):
    """A hashable canonical form of a node's arguments."""
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_key(o) for o in obj)
    if isinstance(obj, dict):
        return ("dict",) + tuple((k, _key(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, slice):
        return ("slice", _key(obj.start), _key(obj.stop), _key(obj.step))
    if isinstance(obj, float) and obj != obj:
        return ("nan",)
    try:
        hash(obj)
        return (type(obj).__name__, obj)
    except TypeError:
        return ("id", id(obj))


def cse(graph):
    """Merge nodes that call the same op on the same arguments (random ops excepted)."""
    g = graph.copy()
    seen, alias, kept = {}, {}, []
    for n in g.nodes:
        if alias:
            def f(r):
                return Ref(alias.get(r.vid, r.vid))
            n = type(n)(n.kind, n.fn, map_refs(n.args, f), map_refs(n.kwargs, f), n.outs,
                        n.multi, n.src)
        if is_random(n):
            kept.append(n)
            continue
        k = (n.kind, n.fn, _key(n.args), _key(n.kwargs))
        prev = seen.get(k)
        if prev is not None and len(prev.outs) == len(n.outs):
            for a, b in zip(n.outs, prev.outs):
                alias[a] = b
            continue
        seen[k] = n
        kept.append(n)
    g.nodes = kept
    g.out_spec = map_refs(g.out_spec, lambda r: Ref(alias.get(r.vid, r.vid)))
    return dce(g)


def _is(n, name):
    return n.kind == "function" and n.fn.__name__ == name


def simplify(graph):
    """Algebraic simplification: a reshape to the same shape, an identity permute, an
    expand to the same shape or a cast to the same dtype is its input; a reshape of a
    reshape is one reshape; a permute of a permute is one permute."""
    g = graph.copy()
    producer = {o: n for n in g.nodes for o in n.outs}
    alias, nodes = {}, []
    for n in g.nodes:
        src = n.args[0] if n.args and isinstance(n.args[0], Ref) else None
        if src is not None and src.vid in alias:
            src = Ref(alias[src.vid])
            n = type(n)(n.kind, n.fn, (src,) + n.args[1:], n.kwargs, n.outs, n.multi, n.src)
        out = g.values[n.outs[0]] if n.outs else None
        if src is not None and len(n.outs) == 1:
            inv = g.values[src.vid]
            same_shape = tuple(inv.shape) == tuple(out.shape)
            if (_is(n, "Reshape") or _is(n, "Expand")) and same_shape:
                alias[n.outs[0]] = src.vid
                continue
            if _is(n, "Cast") and inv.dtype == out.dtype and same_shape:
                alias[n.outs[0]] = src.vid
                continue
            if _is(n, "Permute"):
                dims = tuple(n.kwargs.get("dims", n.args[1] if len(n.args) > 1 else ()))
                if dims == tuple(range(len(dims))):
                    alias[n.outs[0]] = src.vid
                    continue
                p = producer.get(src.vid)
                if p is not None and _is(p, "Permute") and "dims" in p.kwargs and "dims" in n.kwargs:
                    inner = tuple(p.kwargs["dims"])
                    composed = tuple(inner[d] for d in dims)
                    if composed == tuple(range(len(composed))):
                        alias[n.outs[0]] = p.args[0].vid
                        continue
                    n = type(n)(n.kind, n.fn, (p.args[0],), {"dims": composed}, n.outs, n.multi, n.src)
            if _is(n, "Reshape") and "shape" in n.kwargs:
                p = producer.get(src.vid)
                if p is not None and _is(p, "Reshape"):
                    n = type(n)(n.kind, n.fn, (p.args[0],), n.kwargs, n.outs, n.multi, n.src)
                    if tuple(g.values[p.args[0].vid].shape) == tuple(out.shape):
                        alias[n.outs[0]] = p.args[0].vid
                        continue
        nodes.append(n)
        for o in n.outs:
            producer[o] = n
    g.nodes = nodes
    return dce(_substitute(g, alias))


def fold_constants(graph, arrays):
    """Evaluate nodes whose inputs are all params/consts (inference only: the params
    are taken as frozen). ``arrays``: param name -> current array. Returns (graph,
    names of the params the folded values depend on)."""
    from ..autograd.function import Context
    g = graph.copy()
    static = {}   # vid -> array, for params/consts/folded
    deps = {}     # vid -> set of param names
    for v in g.values.values():
        if v.kind == "param":
            static[v.vid] = arrays[v.name]
            deps[v.vid] = {v.name}
        elif v.kind == "const":
            static[v.vid] = v.array
            deps[v.vid] = set()
    used_by_folded = set()
    kept = []
    for n in g.nodes:
        ins = n.inputs()
        if n.kind != "function" or is_random(n) or not ins or not all(i in static for i in ins) \
                or _has_sym((n.args, n.kwargs)):
            kept.append(n)
            continue
        args = map_refs(n.args, lambda r: static[r.vid])
        kwargs = map_refs(n.kwargs, lambda r: static[r.vid])
        res = n.fn.forward(Context(n.fn), *args, **kwargs)
        res = res if isinstance(res, tuple) else (res,)
        d = set().union(*(deps[i] for i in ins))
        for vid, arr in zip(n.outs, res):
            arr = np.array(arr, copy=True) if isinstance(arr, np.ndarray) else arr.copy()
            v = g.values[vid]
            g.values[vid] = type(v)(vid, "const", arr.shape, arr.dtype, array=arr)
            static[vid] = arr
            deps[vid] = d
        used_by_folded.update(d)
    g.nodes = kept
    g = dce(g)
    live_deps = set()
    for v in g.values.values():
        if v.kind == "const" and v.vid in deps:
            live_deps |= deps[v.vid]
    return g, sorted(live_deps)


def _has_sym(obj):
    found = []
    def walk(o):
        if isinstance(o, Sym):
            found.append(o)
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)
    walk(obj)
    return bool(found)


def optimize(graph):
    """The graph-level passes every graph gets: simplify, CSE, DCE."""
    return dce(cse(simplify(dce(graph))))
