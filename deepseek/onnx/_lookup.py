"""Which export rule serves a traced node: read from the op table's ``export`` fields.

An entry's ``export`` names the rule (a function of ``deepseek.onnx.rules``, by name, or
a callable) of the Function it lists first; ``{Function: rule}`` names one per Function;
an entry computed on arrays (no Function: comparisons, ``argmax``) exports its Tensor
methods. ``register_op`` adds rules for Functions outside the table (user ops).
"""
import sys
import threading

__all__ = ["rule_for", "supported_ops", "register_op", "describe_node", "op_name_codes"]

_lock = threading.Lock()
_maps = None
_USER = {}


def _resolve(rule, where):
    if callable(rule):
        return rule
    from . import rules
    fn = getattr(rules, rule, None)
    if not callable(fn):
        raise RuntimeError(f"op table entry {where!r}: export rule {rule!r} is not a function of "
                           f"deepseek.onnx.rules")
    return fn


def _build():
    from ..ops import registry
    fns, methods = {}, {}

    def put(table, key, rule, where):
        old = table.get(key)
        if old is not None and old[0] is not rule:
            raise RuntimeError(f"op table: two different ONNX export rules for {key!r} "
                               f"({old[1]} and {where})")
        table[key] = (rule, where)

    for e in registry.OP_TABLE:
        exp = getattr(e, "export", None)
        if exp is None:
            continue
        if isinstance(exp, dict):
            for f, r in exp.items():
                put(fns, f, _resolve(r, e.name), e.name)
        elif e.functions:
            put(fns, e.functions[0], _resolve(exp, e.name), e.name)
        else:
            rule = _resolve(exp, e.name)
            for spec in e.methods + e.operators:
                put(methods, registry._named(spec)[0], (rule, False), e.name)
            for name in e.reflected:
                put(methods, name, (rule, True), e.name)
    return fns, methods


def _tables():
    global _maps
    with _lock:
        if _maps is None:
            _maps = _build()
        return _maps


def rule_for(node):
    """(rule, swap_args) for a traced node, or None when the op has no export."""
    fns, methods = _tables()
    if node.kind == "method":
        hit = methods.get(node.fn)
        return None if hit is None else hit[0]
    if node.fn in _USER:
        return _USER[node.fn], False
    hit = fns.get(node.fn)
    return None if hit is None else (hit[0], False)


def has_rule(fn):
    fns, _ = _tables()
    return fn in fns or fn in _USER


def register_op(fn_cls, rule):
    """Export ``fn_cls`` (a Function subclass outside the op table, e.g. a user op) with
    ``rule(g, *args, **kwargs)``; op-table Functions declare theirs in the table."""
    from ..autograd.function import Function
    if not (isinstance(fn_cls, type) and issubclass(fn_cls, Function)):
        raise TypeError(f"register_op: expected a Function subclass, got {fn_cls!r}")
    if not callable(rule):
        raise TypeError(f"register_op: rule must be callable, got {type(rule).__name__}")
    _USER[fn_cls] = rule


def supported_ops():
    """Names of the op-table entries that export: every Function they list has a rule (or,
    for an entry computed on arrays, its Tensor methods do)."""
    from ..ops import registry
    fns, methods = _tables()
    out = []
    for e in registry.OP_TABLE:
        if e.functions:
            if all(f in fns for f in e.functions):
                out.append(e.name)
        elif any(registry._named(s)[0] in methods for s in e.methods + e.operators):
            out.append(e.name)
    return sorted(out)


_codes = None


def op_name_codes():
    """{code object of a table op's public function: entry name} (for error messages)."""
    global _codes
    if _codes is None:
        from ..ops import registry
        c = {}
        for e in registry.OP_TABLE:
            code = getattr(getattr(e.op, "__func__", e.op), "__code__", None)
            if code is not None:
                c.setdefault(code, e.name)
        _codes = c
    return _codes


def public_op_name(skip=2):
    """The name of the innermost op-table function on the call stack, or None."""
    codes = op_name_codes()
    f = sys._getframe(skip)
    while f is not None:
        name = codes.get(f.f_code)
        if name is not None:
            return name
        f = f.f_back
    return None


def describe_node(node):
    """What to call a node's op in an error: its table entries' names."""
    from ..ops import registry
    if node.kind == "method":
        for e in registry.OP_TABLE:
            if any(registry._named(s)[0] == node.fn for s in e.methods + e.operators) or node.fn in e.reflected:
                return e.name
        return node.fn
    names = [e.name for e in registry.entries_of(node.fn)]
    return "/".join(names) if names else node.name
