"""Symbolic sizes of the dynamic axes: ``Dim``, an integer polynomial in named sizes.

A dynamic axis ("batch", "seq") is a symbol; a shape argument that depends on it, such as
``B * T`` in ``x.reshape(B * T, C)``, is a ``Dim`` holding ``{("batch", "seq"): 1}``.
Dims are found by tracing again with the dynamic axes grown (``_trace.generalise``) and
fitting the change; the graph builder evaluates them at run time from the inputs' shapes.
"""
import itertools

__all__ = ["Dim", "fit"]


class Dim:
    """``sum(coef * prod(symbols))``: ``terms`` maps a sorted tuple of symbol names (the
    empty tuple for the constant) to an int coefficient."""

    __slots__ = ("terms",)

    def __init__(self, terms):
        self.terms = {k: int(v) for k, v in terms.items() if v}

    @classmethod
    def symbol(cls, name):
        return cls({(name,): 1})

    def symbols(self):
        return sorted({s for k in self.terms for s in k})

    def at(self, sizes):
        """The value for ``sizes`` (symbol -> int)."""
        total = 0
        for k, c in self.terms.items():
            p = c
            for s in k:
                p *= sizes[s]
            total += p
        return total

    def _lift(self, other):
        return other if isinstance(other, Dim) else Dim({(): other})

    def __add__(self, other):
        o = self._lift(other)
        t = dict(self.terms)
        for k, v in o.terms.items():
            t[k] = t.get(k, 0) + v
        return simplify(Dim(t))

    __radd__ = __add__

    def __neg__(self):
        return Dim({k: -v for k, v in self.terms.items()})

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __rsub__(self, other):
        return self._lift(other) - self

    def __mul__(self, other):
        o = self._lift(other)
        t = {}
        for (k1, v1), (k2, v2) in itertools.product(self.terms.items(), o.terms.items()):
            k = tuple(sorted(k1 + k2))
            t[k] = t.get(k, 0) + v1 * v2
        return simplify(Dim(t))

    __rmul__ = __mul__

    def __eq__(self, other):
        return isinstance(other, Dim) and other.terms == self.terms

    def __hash__(self):
        return hash(tuple(sorted(self.terms.items())))

    def __repr__(self):
        parts = []
        for k, c in sorted(self.terms.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            mono = "*".join(k)
            if not mono:
                parts.append(str(c))
            elif c == 1:
                parts.append(mono)
            else:
                parts.append(f"{c}*{mono}")
        return " + ".join(parts).replace("+ -", "- ") or "0"


def simplify(d):
    """An int when ``d`` has no symbol left, else ``d``."""
    if isinstance(d, Dim) and all(not k for k in d.terms):
        return d.terms.get((), 0)
    return d


def fit(values, base, symbols):
    """The multilinear polynomial through ``values``: {frozenset of grown symbols: value
    of the trace where those symbols were ``base[s] + 1``}. An int when it is constant."""
    if len({v for v in values.values()}) == 1:
        return values[frozenset()]
    result = Dim({})
    for r in range(len(symbols) + 1):
        for sub in itertools.combinations(symbols, r):
            # Moebius inversion: the coefficient of prod(u_s) with u_s = x_s - base_s
            d = sum((-1) ** (len(sub) - k) * values[frozenset(part)]
                    for k in range(len(sub) + 1) for part in itertools.combinations(sub, k))
            if d:
                term = Dim({(): d})
                for s in sub:
                    term = term * Dim({(s,): 1, (): -base[s]})
                result = result + term
    return simplify(result)
