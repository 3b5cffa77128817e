"""The one registry of deepseek's environment variables.

Every ``DEEPSEEK_*`` variable that any part of deepseek reads is declared once, in
``env_vars.json`` next to this module (data, not code: a table of name, type, default,
bounds and one line of documentation, grouped by who reads them), which this module
loads at import. Code reads them with :func:`get`, which returns the typed value (the default when the variable is unset or
empty) or raises :class:`EnvError` -- a ``ValueError`` that names the variable, the
form that was expected and the value that came::

    DEEPSEEK_COLLECTIVES_TIMEOUT='abc': expected a positive number of seconds

``python -m deepseek.env`` prints the table (name, type, default, current value, what
it does); ``deepseek-run --help`` points here. A test greps the source tree so that
no variable is read without being declared.

Types: ``float``, ``int``, ``bool`` (1/0, true/false, yes/no, on/off), ``str``,
``choice`` (one of a fixed set, case-insensitive) and ``bytes`` (a size: ``65536``,
``64K``, ``1.5MiB``, ``2G``; K/M/G are powers of 1024).

This module is stdlib-only and imports nothing else of deepseek: the native kernels,
the collectives and the launcher all read their settings through it, and
``import deepseek.launcher.cli`` must stay fast.
"""
from __future__ import annotations

import json
import math
import os
import sys

__all__ = ["EnvError", "Var", "VARIABLES", "DECLARATIONS", "get", "parse", "declared", "table"]


class EnvError(ValueError):
    """A variable's value does not have the declared form. ``.name``, ``.value`` and
    ``.expected`` say which variable, what came and what was expected."""

    def __init__(self, name: str, value: str, expected: str):
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"{name}={value!r}: expected {expected}")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SUFFIXES = (("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30),
             ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30))


class Var:
    """The declaration of one variable.

    ``kind`` is one of float, int, bool, str, choice, bytes. ``lo``/``hi`` bound
    numbers (inclusive; ``lo_open`` makes ``lo`` exclusive, i.e. "positive" is
    ``lo=0, lo_open=True``); floats must be finite. ``choices`` lists the canonical
    values of a ``choice`` and ``aliases`` maps other spellings onto them
    (``((spelling, canonical), ...)``). ``unit`` is for messages ("seconds");
    ``set_by`` names who sets it when users are not meant to (documentation);
    ``secret`` keeps the value out of the table.
    """

    # a plain class, not a dataclass: importing dataclasses costs more than this module
    __slots__ = ("name", "kind", "default", "doc", "unit", "lo", "hi", "lo_open",
                 "choices", "aliases", "set_by", "secret")

    def __init__(self, name, kind, default, doc, unit="", lo=None, hi=None,
                 lo_open=False, choices=(), aliases=(), set_by="", secret=False):
        if kind not in ("float", "int", "bool", "str", "choice", "bytes"):
            raise ValueError(f"{name}: unknown kind {kind!r}")
        self.name, self.kind, self.default, self.doc = name, kind, default, doc
        self.unit, self.lo, self.hi, self.lo_open = unit, lo, hi, lo_open
        self.choices, self.aliases = tuple(choices), tuple(aliases)
        self.set_by, self.secret = set_by, secret

    def __repr__(self):
        return f"Var({self.name!r}, {self.kind!r}, default={self.default!r})"

    def expected(self) -> str:
        """The expected form, in words (what the error message says)."""
        if self.kind == "bool":
            return "a boolean: 1/0, true/false, yes/no or on/off"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "str":
            return "a string"
        what = {"float": f"number of {self.unit}" if self.unit else "number",
                "int": f"integer number of {self.unit}" if self.unit else "integer",
                "bytes": "size in bytes"}[self.kind]
        if self.lo == 0 and self.lo_open and self.hi is None:
            text = f"a positive {what}"
        else:
            text = f"a {what}" if what[0] not in "aeiou" else f"an {what}"
            if self.lo is not None and self.hi is not None:
                text += f" in {_num(self.lo)}..{_num(self.hi)}"
            elif self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
            elif self.hi is not None:
                text += f" <= {_num(self.hi)}"
        if self.kind == "bytes":
            text += " (e.g. 65536, 64K, 1MiB)"
        return text

    def parse(self, text: str):
        """``text`` converted to this variable's type; EnvError when it does not fit."""
        raw = text
        text = text.strip()
        if self.kind == "str":
            return text
        low = text.lower()
        if self.kind == "bool":
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise EnvError(self.name, raw, self.expected())
        if self.kind == "choice":
            low = dict(self.aliases).get(low, low)
            if low in self.choices:
                return low
            raise EnvError(self.name, raw, self.expected())
        try:
            if self.kind == "int":
                value = int(text)
            elif self.kind == "float":
                value = float(text)
            else:
                value = _parse_bytes(text)
        except (ValueError, OverflowError):
            raise EnvError(self.name, raw, self.expected()) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise EnvError(self.name, raw, self.expected())
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise EnvError(self.name, raw, self.expected())
        if self.hi is not None and value > self.hi:
            raise EnvError(self.name, raw, self.expected())
        return value


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _parse_bytes(text: str) -> int:
    v, mult = text.upper(), 1
    for suffix, m in _SUFFIXES:
        if v.endswith(suffix):
            v, mult = v[:-len(suffix)], m
            break
    number = float(v)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number * mult)


def _declare(*variables: Var) -> dict:
    out = {}
    for v in variables:
        if not v.name.startswith("DEEPSEEK_") or v.name in out:
            raise ValueError(f"env_vars.json: {v.name!r} is not a new DEEPSEEK_* name")
        out[v.name] = v
    return out


#: Where the declarations live: a data file next to this module (a list of sections,
#: each ``{"section": title, "variables": [...]}``; a variable is ``{"name", "kind",
#: "default", "doc"}`` plus any of ``unit``, ``lo``, ``hi``, ``lo_open``, ``choices``,
#: ``aliases`` (pairs), ``set_by``, ``secret``: :class:`Var`'s arguments).
DECLARATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "env_vars.json")


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        sections = json.load(f)
    return _declare(*(Var(**dict(v, aliases=tuple(tuple(a) for a in v.get("aliases", ()))))
                      for s in sections for v in s["variables"]))


#: Every DEEPSEEK_* variable, by name, in the file's order.
VARIABLES: dict[str, Var] = _load(DECLARATIONS)


def declared(name: str) -> Var:
    """The declaration of ``name``; KeyError naming this module when it has none."""
    try:
        return VARIABLES[name]
    except KeyError:
        raise KeyError(f"{name} is not declared in deepseek/env_vars.json (every "
                       "DEEPSEEK_* variable must be; deepseek/env.py reads it)") from None


def parse(name: str, text: str):
    """``text`` as a value of variable ``name`` (EnvError when it does not fit)."""
    return declared(name).parse(text)


def get(name: str, environ=None):
    """The typed value of ``name`` in ``environ`` (default ``os.environ``): its
    default when unset or empty; :class:`EnvError` when the value has the wrong form."""
    var = declared(name)
    env = os.environ if environ is None else environ
    text = env.get(name)
    if text is None or not text.strip():
        return var.default
    return var.parse(text)


def _shown(var: Var, value) -> str:
    if value is None:
        return "-"
    if var.kind == "bool":
        return "1" if value else "0"
    if var.kind == "bytes" and value >= 1024 and value % 1024 == 0:
        for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % m == 0:
                return f"{value // m}{unit}"
    return _num(value) if isinstance(value, float) else str(value)


def table(environ=None) -> str:
    """The registry as a text table; the current value of each variable that is set
    (``(set)`` for secrets, ``INVALID`` for a value :func:`get` would refuse, with the
    reason under the table)."""
    env = os.environ if environ is None else environ
    rows = [("NAME", "TYPE", "DEFAULT", "CURRENT", "WHAT IT DOES")]
    errors = []
    for var in VARIABLES.values():
        kind = var.kind if var.kind != "choice" else "|".join(var.choices)
        current = ""
        if env.get(var.name) not in (None, ""):
            try:
                value = get(var.name, env)
                current = "(set)" if var.secret else _shown(var, value)
            except EnvError as e:
                current = "INVALID"
                errors.append(str(e))
        doc = var.doc
        if var.unit and var.kind in ("float", "int"):
            doc += f" ({var.unit})"
        if var.set_by:
            doc += f" [set by {var.set_by}]"
        rows.append((var.name, kind, _shown(var, var.default), current, doc))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
             for r in rows]
    if errors:
        lines += ["", "invalid values:"] + [f"  {e}" for e in errors]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m deepseek.env``: print the table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        sys.stderr.write("usage: python -m deepseek.env   (prints every DEEPSEEK_* "
                         "variable: type, default, current value, what it does)\n")
        return 2
    try:
        print(table(), flush=True)
    except BrokenPipeError:             # | head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
