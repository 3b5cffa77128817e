"""Elementwise fusion: which ops are elementwise, how they read as expressions, and
which chains of them become one kernel.

An expression is a tuple tree: ``("in", k)`` the k-th input of the group, ``("c",
value)`` a Python number, or ``(op, *children)``. ``expr_builder`` maps the elementwise
Function classes of the op table to builders of that tree, so fusion knows ops by
their Function class only; the printers in ``cgen`` (C), ``numexpr_expr`` (numexpr)
and ``eval_numpy`` (plain numpy) say what each op computes, with eager's formulas
(the same erf -- the C one is eager's native float32 form --, the same stable
sigmoid) so fused results match eager.

Grouping: a node joins the group of its consumer when it is elementwise, its output
has the group's dtype and shape, and nothing else reads it (so the intermediate never
has to exist). Inputs may broadcast; the executor sorts out how each is indexed.
"""
import math

import numpy as np

from .graph import Ref

__all__ = ["expr_builder", "FusedGroup", "find_groups", "numexpr_expr", "eval_numpy"]

FUSIBLE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _elementwise_table():
    from ..ops import elementwise as E, shape as S

    def un(op):
        return lambda a, kw: (op, a[0])

    def bi(op):
        return lambda a, kw: (op, a[0], a[1])

    def gelu(a, kw):
        approx = kw.get("approximate", a[1] if len(a) > 1 else "none")
        if approx not in ("none", "tanh"):
            return None
        return ("gelu_tanh" if approx == "tanh" else "gelu", a[0])

    def clamp(a, kw):
        x = a[0]
        lo = a[1][1] if len(a) > 1 else None
        hi = a[2][1] if len(a) > 2 else None
        lo, hi = kw.get("lo", lo), kw.get("hi", hi)
        if (lo is not None and not _num(lo)) or (hi is not None and not _num(hi)):
            return None
        if lo is not None:
            x = ("max", x, ("c", lo))
        if hi is not None:
            x = ("min", x, ("c", hi))
        return x

    def pow_(a, kw):
        return ("pow", a[0], a[1]) if a[1][0] == "c" else None

    def cast(a, kw):
        dt = np.dtype(kw.get("dtype", a[1][1] if len(a) > 1 and a[1][0] == "c" else None))
        return ("cast", a[0], dt.name) if dt in FUSIBLE_DTYPES else None

    return {E.Add: bi("add"), E.Sub: bi("sub"), E.Mul: bi("mul"), E.Div: bi("div"),
            E.Maximum: bi("max"), E.Minimum: bi("min"), E.Neg: un("neg"), E.Abs: un("abs"),
            E.Exp: un("exp"), E.Log: un("log"), E.Sqrt: un("sqrt"), E.Rsqrt: un("rsqrt"),
            E.Tanh: un("tanh"), E.Sigmoid: un("sigmoid"), E.Relu: un("relu"),
            E.Silu: un("silu"), E.Gelu: gelu, E.Clamp: clamp, E.Pow: pow_, S.Cast: cast}


def _num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_TABLE = None


def expr_builder(fn):
    """The expression builder of Function class ``fn`` (None when not elementwise)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _elementwise_table()
    return _TABLE.get(fn)


class FusedGroup:
    """A chain of elementwise nodes computing one output: ``inputs`` (value ids),
    ``expr`` (over ``("in", k)``), ``out`` (value id), ``nodes`` (the originals)."""

    def __init__(self, inputs, expr, out, nodes, dtype):
        self.inputs, self.expr, self.out, self.nodes, self.dtype = inputs, expr, out, nodes, dtype

    def describe(self):
        """A short text of the fused ops, e.g. ``relu(add(in0, in1))``."""
        return _show(self.expr)


def _show(e):
    if e[0] == "in":
        return f"in{e[1]}"
    if e[0] == "c":
        return repr(e[1])
    return f"{e[0]}(" + ", ".join(_show(c) if isinstance(c, tuple) else repr(c) for c in e[1:]) + ")"


def _node_expr(g, n):
    """(expr over Refs-as-leaves, input refs) of an elementwise node, or None."""
    if n.kind != "function" or len(n.outs) != 1:
        return None
    b = expr_builder(n.fn)
    if b is None:
        return None
    out = g.values[n.outs[0]]
    if out.dtype not in FUSIBLE_DTYPES:
        return None
    leaves = []
    for a in n.args:
        if isinstance(a, Ref):
            v = g.values[a.vid]
            if v.dtype not in FUSIBLE_DTYPES or len(v.shape) > len(out.shape):
                return None
            leaves.append(("ref", a.vid))
        elif _num(a):
            leaves.append(("c", a))
        elif isinstance(a, np.generic) and a.dtype in FUSIBLE_DTYPES:
            leaves.append(("c", float(a)))
        elif a is None or isinstance(a, str):
            leaves.append(("c", a))
        elif isinstance(a, np.dtype):
            leaves.append(("c", a))
        else:
            return None
    if any(isinstance(v, Ref) for v in n.kwargs.values()):
        return None
    e = b(leaves, n.kwargs)
    return e


def find_groups(g):
    """Partition the elementwise nodes of ``g`` into FusedGroups; returns
    {index of the group's last node: FusedGroup} and the set of absorbed node indices."""
    users = g.users()
    outs = set(g.outputs())
    producer = {o: i for i, n in enumerate(g.nodes) for o in n.outs}
    exprs = {i: _node_expr(g, n) for i, n in enumerate(g.nodes)}
    groups, absorbed = {}, set()
    # walk consumers last-first so each group grows backwards from its output
    for i in range(len(g.nodes) - 1, -1, -1):
        if i in absorbed or exprs[i] is None:
            continue
        n = g.nodes[i]
        out = g.values[n.outs[0]]
        members = [i]

        def grow(e):
            if e[0] == "ref":
                j = producer.get(e[1])
                v = g.values[e[1]]
                if j is not None and exprs[j] is not None and j not in absorbed \
                        and users.get(e[1], 0) == 1 and e[1] not in outs \
                        and tuple(v.shape) == tuple(out.shape) and v.dtype in FUSIBLE_DTYPES:
                    # (a dtype change inside a group only comes from a cast node: C
                    # computes each subtree in its own dtype)
                    absorbed.add(j)
                    members.append(j)
                    return grow(exprs[j])
                return e
            if e[0] == "c":
                return e
            return (e[0],) + tuple(grow(c) if isinstance(c, tuple) else c for c in e[1:])
        tree = grow(exprs[i])
        inputs = []

        def leaf(e):
            if e[0] == "ref":
                if e[1] not in inputs:
                    inputs.append(e[1])
                return ("in", inputs.index(e[1]))
            if e[0] == "c":
                return e
            return (e[0],) + tuple(leaf(c) if isinstance(c, tuple) else c for c in e[1:])
        tree = leaf(tree)
        groups[i] = FusedGroup(inputs, tree, n.outs[0], [g.nodes[j] for j in sorted(members)],
                               out.dtype)
    return groups, absorbed


# ---- numexpr and numpy evaluation of an expression -------------------------------------
_ERF_POLY = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
             -1.13520398, 1.48851587, -0.82215223, 0.17087277)
SQRT1_2 = 1.0 / math.sqrt(2.0)
TANH_C = math.sqrt(2.0 / math.pi)


def numexpr_expr(e):
    """The expression as a numexpr string over variables in0, in1 ... (None when an op
    has no numexpr form)."""
    try:
        return _ne(e)
    except KeyError:
        return None


def _ne(e):
    op = e[0]
    if op == "in":
        return f"in{e[1]}"
    if op == "c":
        if not _num(e[1]):
            raise KeyError(op)
        return repr(float(e[1]))
    a = [_ne(c) for c in e[1:] if isinstance(c, tuple)]
    simple = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
              "div": "({0} / {1})", "neg": "(-{0})", "abs": "abs({0})", "exp": "exp({0})",
              "log": "log({0})", "sqrt": "sqrt({0})", "rsqrt": "(1 / sqrt({0}))",
              "tanh": "tanh({0})", "relu": "where({0} > 0, {0}, 0)",
              "max": "where({0} > {1}, {0}, {1})", "min": "where({0} < {1}, {0}, {1})",
              "pow": "({0} ** {1})"}
    if op in simple:
        return simple[op].format(*a)
    x = a[0]
    if op == "sigmoid":
        return f"where({x} >= 0, 1 / (1 + exp(-abs({x}))), exp(-abs({x})) / (1 + exp(-abs({x}))))"
    if op == "silu":
        return f"({x} * " + _ne(("sigmoid", e[1])) + ")"
    if op == "gelu_tanh":
        return f"(0.5 * {x} * (1 + tanh({TANH_C!r} * ({x} + 0.044715 * {x} * {x} * {x}))))"
    if op == "gelu":
        z = f"abs({x} * {SQRT1_2!r})"
        t = f"(1.0 / (1.0 + 0.5 * {z}))"
        c = _ERF_POLY
        poly = f"{c[9]!r}"
        for k in range(8, 0, -1):
            poly = f"({c[k]!r} + {t} * {poly})"
        poly = f"(-{z} * {z} + {c[0]!r} + {t} * {poly})"
        r = f"(1.0 - {t} * exp({poly}))"
        erf = f"where({x} * {SQRT1_2!r} >= 0, {r}, -{r})"
        return f"({x} * (0.5 * (1.0 + {erf})))"
    raise KeyError(op)


def eval_numpy(e, arrays):
    """Evaluate the expression on numpy arrays (eager's formulas; temporaries)."""
    op = e[0]
    if op == "in":
        return arrays[e[1]]
    if op == "c":
        return e[1]
    a = [eval_numpy(c, arrays) for c in e[1:] if isinstance(c, tuple)]
    with np.errstate(all="ignore"):
        if op == "add":
            return a[0] + a[1]
        if op == "sub":
            return a[0] - a[1]
        if op == "mul":
            return a[0] * a[1]
        if op == "div":
            return a[0] / a[1]
        if op == "neg":
            return -a[0]
        if op == "abs":
            return np.abs(a[0])
        if op in ("exp", "log", "sqrt", "tanh"):
            return getattr(np, op)(a[0])
        if op == "rsqrt":
            return 1 / np.sqrt(a[0])
        if op == "relu":
            return np.maximum(a[0], 0)
        if op == "max":
            return np.maximum(a[0], a[1])
        if op == "min":
            return np.minimum(a[0], a[1])
        if op == "pow":
            return a[0] ** a[1]
        if op == "cast":
            return np.asarray(a[0]).astype(e[2])
        if op == "sigmoid":
            from ..ops.elementwise import _sigmoid
            return _sigmoid(np, np.asarray(a[0]))
        if op == "silu":
            from ..ops.elementwise import _sigmoid
            return a[0] * _sigmoid(np, np.asarray(a[0]))
        if op == "gelu_tanh":
            x = a[0]
            return 0.5 * x * (1 + np.tanh(TANH_C * (x + 0.044715 * x * x * x)))
        if op == "gelu":
            from ..ops.elementwise import erf
            x = a[0]
            return x * (0.5 * (1.0 + erf(np, x * SQRT1_2)))
    raise KeyError(op)
