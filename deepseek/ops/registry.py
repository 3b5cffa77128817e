"""The op table: one ``OpInfo`` per public op (``deepseek.ops.opinfo``).

Everything that needs to know about all ops reads it here:

- the Tensor methods and operators are generated from it (``install``, called once
  by ``deepseek.ops`` at import): ``x.add``, ``x + y``, ``x.add_``, ``x += y`` are all
  the table's ``add`` entry, with its docstring and signature;
- AMP asks ``autocast_policy(fn_cls)`` what to do with an op (PyTorch's autocast lists
  are the reference: ``lower`` / ``fp32`` / ``promote`` / ``none``);
- the declarative op tests (tests/test_op_table.py, ``deepseek.testing.op_checks``)
  run every check on every entry, and a test fails when a ``Function`` subclass of
  ``deepseek.ops`` is not in any entry (``unregistered_functions``).

Entries live in ``_table_core`` (tensor ops) and ``_table_nn`` (functional ops), and
``_table_math`` / ``_table_nn_more`` (the ops added for PyTorch API coverage).
"""
from ..autograd.function import Function
from .opinfo import OpInfo, AUTOCAST_POLICIES  # noqa: F401  (re-exported)
from . import _table_core, _table_nn, _table_math, _table_nn_more
from . import tensor_methods as _tm

OP_TABLE = tuple(_table_core.ENTRIES + _table_nn.ENTRIES + _table_math.ENTRIES + _table_nn_more.ENTRIES)

_BY_NAME = {}
for _e in OP_TABLE:
    if _e.name in _BY_NAME:
        raise RuntimeError(f"op table: two entries named {_e.name!r}")
    _BY_NAME[_e.name] = _e

# Function class -> its entries (one Function may back several ops: Reshape backs
# reshape, view, squeeze ...); the first entry's policy is the class's.
_BY_FUNCTION = {}
for _e in OP_TABLE:
    for _f in _e.functions:
        _BY_FUNCTION.setdefault(_f, []).append(_e)


def get(name):
    """The entry named ``name`` (KeyError names the close matches)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, list(_BY_NAME), n=3)
        raise KeyError(f"no op {name!r} in the op table" + (f"; did you mean {close}?" if close else "")) from None


def entries_of(fn_cls):
    """The entries whose op dispatches to Function class ``fn_cls`` (a list)."""
    return list(_BY_FUNCTION.get(fn_cls, ()))


def autocast_policy(fn_cls, device_type="cuda", args=(), kwargs=None):
    """Autocast policy of Function class ``fn_cls``: 'lower', 'fp32', 'promote' or 'none'.

    ``device_type`` picks PyTorch's list of that device ('cpu' reads the entries'
    ``autocast_cpu``, which may depend on the call's ``args``/``kwargs``). The entries
    that list ``fn_cls`` first (its own ops) decide; a composite op that merely uses
    it (addmm uses Add) does not. Among several, the strictest wins (fp32 over promote
    over lower over none); an unknown class (a user op) is 'none'."""
    order = ("fp32", "promote", "lower", "none")
    entries = _BY_FUNCTION.get(fn_cls, ())
    own = [e for e in entries if e.functions[0] is fn_cls] or entries
    pols = {e.autocast_for(device_type, args, kwargs) for e in own}
    return next((p for p in order if p in pols), "none")


def function_subclasses(package="deepseek.ops"):
    """Every ``Function`` subclass defined in a module of ``package`` (abstract bases,
    whose names start with ``_``, excepted)."""
    seen, todo, out = set(), list(Function.__subclasses__()), []
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(c.__subclasses__())
        if c.__module__.startswith(package + ".") and not c.__name__.startswith("_"):
            out.append(c)
    return sorted(out, key=lambda c: (c.__module__, c.__name__))


def unregistered_functions(package="deepseek.ops"):
    """``Function`` subclasses of ``package`` that no table entry lists (should be none)."""
    return [c for c in function_subclasses(package) if c not in _BY_FUNCTION]


# ---- Tensor methods ----------------------------------------------------------------------
def _named(spec):
    return spec if isinstance(spec, tuple) else (spec, None)


def tensor_members(table=OP_TABLE):
    """name -> attribute (function or property) for every Tensor method and operator
    the table defines. Raises on a name defined twice."""
    out = {}

    def put(name, value, entry):
        if name in out:
            raise RuntimeError(f"op table: Tensor.{name} defined by two entries (the second: {entry.name})")
        out[name] = value

    for e in table:
        for spec in e.methods + e.operators:
            name, impl = _named(spec)
            if impl == "property":
                fn = _tm.method_from(e.op, name, e.doc)
                put(name, property(fn, doc=fn.__doc__), e)
            else:
                put(name, _tm.method_from(impl or e.op, name, e.doc), e)
        for name in e.reflected:
            put(name, _tm.reflected_from(e.op, name), e)
        for name in e.inplace:
            put(name, _tm.inplace_from(e.op, name), e)
    for fn in _tm.PLAIN_METHODS:
        if fn.__name__ not in out:
            put(fn.__name__, _tm.method_from(fn, fn.__name__), OpInfo(fn.__name__, fn))
    return out


def install(cls):
    """Define the table's methods and operators on ``cls`` (the Tensor class)."""
    for name, value in tensor_members().items():
        setattr(cls, name, value)
