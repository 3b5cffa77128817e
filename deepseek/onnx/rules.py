"""ONNX export rules of the op table's Functions (named by the entries' ``export`` field).

Each rule is ``rule(g, *args, **kwargs)``: the arguments of the op's ``Function.apply``
(see its ``forward``), tensors as Refs; it writes nodes with ``g.op`` and returns the
output name(s). ``g`` is a :class:`deepseek.onnx._builder.GraphBuilder`. Rules follow
deepseek's own arithmetic (same order of operations) so outputs match eager to float
rounding. Raise ``RuleError`` for a call a rule cannot express.
"""
import builtins as _b
import math

import numpy as np

from ..jit.graph import Ref
from ._builder import RuleError
from ._dims import Dim

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


# ---- elementwise ----------------------------------------------------------------------
def _binary(op_type):
    def rule(g, a, b):
        dt = g.out_dtype()
        return g.op(op_type, g.name(a, dt), g.name(b, dt))
    rule.__name__ = op_type.lower()
    return rule


add, sub, mul, div, maximum, minimum = (_binary(o) for o in ("Add", "Sub", "Mul", "Div", "Max", "Min"))


def pow(g, a, b):
    dt = g.out_dtype()
    return g.op("Pow", g.name(a, dt), g.name(b, dt))


def _unary(op_type):
    def rule(g, a):
        return g.op(op_type, g.name(a, g.out_dtype()))
    rule.__name__ = op_type.lower()
    return rule


(neg, abs, exp, log, sqrt, sin, cos, tanh, sigmoid, relu, sign, tan, asin, acos, atan, sinh, cosh,
 asinh, acosh, atanh, reciprocal, erf, floor, ceil, softsign) = (
    _unary(o) for o in ("Neg", "Abs", "Exp", "Log", "Sqrt", "Sin", "Cos", "Tanh", "Sigmoid", "Relu",
                        "Sign", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
                        "Reciprocal", "Erf", "Floor", "Ceil", "Softsign"))


def rsqrt(g, a):
    return g.op("Reciprocal", g.op("Sqrt", g.name(a, g.out_dtype())))


def silu(g, a):
    x = g.name(a, g.out_dtype())
    return g.op("Mul", x, g.op("Sigmoid", x))


def gelu(g, a, approximate="none"):
    dt = g.out_dtype()
    x = g.name(a, dt)
    half = g.op("Mul", x, g.const(0.5, dt))
    if approximate == "tanh":
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", g.const(0.044715, dt), g.op("Mul", x, g.op("Mul", x, x)))),
                     g.const(math.sqrt(2 / math.pi), dt))
        return g.op("Mul", half, g.op("Add", g.const(1.0, dt), g.op("Tanh", inner)))
    e = g.op("Erf", g.op("Mul", x, g.const(1 / math.sqrt(2), dt)))
    return g.op("Mul", half, g.op("Add", g.const(1.0, dt), e))


def where(g, cond, a, b):
    dt = g.out_dtype()
    return g.op("Where", g.name(cond, np.bool_), g.name(a, dt), g.name(b, dt))


def clamp(g, a, lo=None, hi=None):
    dt = g.out_dtype()
    x = g.name(a, dt)
    if lo is not None:
        x = g.op("Max", x, g.name(lo, dt))
    if hi is not None:
        x = g.op("Min", x, g.name(hi, dt))
    return x


def log2(g, a):
    dt = g.out_dtype()
    return g.op("Div", g.op("Log", g.name(a, dt)), g.const(math.log(2), dt))


def log10(g, a):
    dt = g.out_dtype()
    return g.op("Div", g.op("Log", g.name(a, dt)), g.const(math.log(10), dt))


def log1p(g, a):
    dt = g.out_dtype()
    return g.op("Log", g.op("Add", g.name(a, dt), g.const(1.0, dt)))


def exp2(g, a):
    dt = g.out_dtype()
    return g.op("Pow", g.const(2.0, dt), g.name(a, dt))


def expm1(g, a):
    dt = g.out_dtype()
    return g.op("Sub", g.op("Exp", g.name(a, dt)), g.const(1.0, dt))


def erfc(g, a):
    dt = g.out_dtype()
    return g.op("Sub", g.const(1.0, dt), g.op("Erf", g.name(a, dt)))


def _trunc(g, x, dt):
    return g.op("Where", g.op("Less", x, g.const(0, dt)), g.op("Ceil", x), g.op("Floor", x))


def trunc(g, a):
    dt = g.out_dtype()
    return _trunc(g, g.name(a, dt), dt)


def frac(g, a):
    dt = g.out_dtype()
    x = g.name(a, dt)
    return g.op("Sub", x, _trunc(g, x, dt))


def round(g, a, decimals=0):
    dt = g.out_dtype()
    x = g.name(a, dt)
    if not np.issubdtype(dt, np.floating):
        return g.op("Identity", x)
    if decimals == 0:
        return g.op("Round", x)
    s = g.const(10.0 ** decimals, dt)
    return g.op("Div", g.op("Round", g.op("Mul", x, s)), s)


def fmod(g, a, b):
    dt = g.out_dtype()
    return g.op("Mod", g.name(a, dt), g.name(b, dt), fmod=1)   # C fmod: numpy's, also on ints


def remainder(g, a, b):
    dt = g.out_dtype()
    x, y = g.name(a, dt), g.name(b, dt)
    if not np.issubdtype(dt, np.floating):
        return g.op("Mod", x, y, fmod=0)
    return g.op("Sub", x, g.op("Mul", g.op("Floor", g.op("Div", x, y)), y))


def logaddexp(g, a, b):
    dt = g.out_dtype()
    x, y = g.name(a, dt), g.name(b, dt)
    m = g.op("Max", x, y)
    s = g.op("Add", g.op("Exp", g.op("Sub", x, m)), g.op("Exp", g.op("Sub", y, m)))
    return g.op("Add", m, g.op("Log", s))


def logaddexp2(g, a, b):
    dt = g.out_dtype()
    x, y = g.name(a, dt), g.name(b, dt)
    m = g.op("Max", x, y)
    two = g.const(2.0, dt)
    s = g.op("Add", g.op("Pow", two, g.op("Sub", x, m)), g.op("Pow", two, g.op("Sub", y, m)))
    return g.op("Add", m, g.op("Div", g.op("Log", s), g.const(math.log(2), dt)))


def copysign(g, a, b):
    dt = g.out_dtype()
    x, y = g.op("Abs", g.name(a, dt)), g.name(b, dt)
    zero = g.const(0.0, dt)
    neg = g.op("Or", g.op("Less", y, zero), g.op("Less", g.op("Div", g.const(1.0, dt), y), zero))  # -0.0 too
    return g.op("Where", neg, g.op("Neg", x), x)


def atan2(g, a, b):
    dt = g.out_dtype()
    y, x = g.name(a, dt), g.name(b, dt)
    zero, pi = g.const(0.0, dt), g.const(math.pi, dt)
    base = g.op("Atan", g.op("Div", y, x))
    left = g.op("Where", g.op("GreaterOrEqual", y, zero), g.op("Add", base, pi), g.op("Sub", base, pi))
    out = g.op("Where", g.op("Less", x, zero), left, base)
    both0 = g.op("And", g.op("Equal", x, zero), g.op("Equal", y, zero))
    return g.op("Where", both0, zero, out)


def hypot(g, a, b):
    dt = g.out_dtype()
    x, y = g.name(a, dt), g.name(b, dt)
    return g.op("Sqrt", g.op("Add", g.op("Mul", x, x), g.op("Mul", y, y)))


def lerp(g, start, end, weight):
    dt = g.out_dtype()
    s, e, w = g.name(start, dt), g.name(end, dt), g.name(weight, dt)
    return g.op("Add", s, g.op("Mul", w, g.op("Sub", e, s)))


def hardsigmoid(g, a):
    return g.op("HardSigmoid", g.name(a, g.out_dtype()), alpha=1 / 6, beta=0.5)


def hardswish(g, a):
    return g.op("HardSwish", g.name(a, g.out_dtype()))


def tanhshrink(g, a):
    x = g.name(a, g.out_dtype())
    return g.op("Sub", x, g.op("Tanh", x))


def elu(g, a, alpha, scale, input_scale):
    dt = g.out_dtype()
    x = g.name(a, dt)
    neg = g.op("Mul", g.op("Sub", g.op("Exp", g.op("Mul", g.op("Min", x, g.const(0.0, dt)), g.const(input_scale, dt))),
                           g.const(1.0, dt)), g.const(scale * alpha, dt))
    return g.op("Where", g.op("Greater", x, g.const(0.0, dt)), g.op("Mul", x, g.const(scale, dt)), neg)


def threshold(g, a, th, value):
    dt = g.out_dtype()
    x = g.name(a, dt)
    return g.op("Where", g.op("Greater", x, g.const(th, dt)), x, g.const(value, dt))


def hardshrink(g, a, lambd):
    return g.op("Shrink", g.name(a, g.out_dtype()), lambd=float(lambd), bias=0.0)


def softshrink(g, a, lambd):
    return g.op("Shrink", g.name(a, g.out_dtype()), lambd=float(lambd), bias=float(lambd))


def prelu(g, a, w):
    dt = g.out_dtype()
    return g.op("PRelu", g.name(a, dt), g.name(w, dt))


# ---- reductions -------------------------------------------------------------------------
def _axes(g, a, axes):
    return None if axes is None else [int(x) % _b.max(g.rank(a), 1) for x in g.static(axes, "reduction axes")]


def sum(g, a, axes=None, keepdim=False, dtype=None):
    dt = g.out_dtype()
    x = g.name(a, dt)
    return g.reduce("ReduceSum", x, _axes(g, a, axes), keepdim)


def mean(g, a, axes=None, keepdim=False):
    return g.reduce("ReduceMean", g.name(a, g.out_dtype()), _axes(g, a, axes), keepdim)


def _count(g, a, axes):
    shape = g.shape(a)
    n = 1
    for ax in (range(len(shape)) if axes is None else axes):
        n = n * shape[ax]
    return n


def var(g, a, axes=None, correction=1, keepdim=False):
    dt = g.out_dtype()
    x = g.name(a, dt)
    ax = _axes(g, a, axes)
    m = g.reduce("ReduceMean", x, ax, True)
    d = g.op("Sub", x, m)
    s = g.reduce("ReduceSum", g.op("Mul", d, d), ax, keepdim)
    n = _count(g, a, ax)
    denom = n - correction
    if isinstance(denom, Dim):
        return g.op("Div", s, g.cast(g.dim(denom, scalar=True), dt))
    return g.op("Div", s, g.const(_b.max(denom, 0), dt))


def max_min(g, a, is_max=True, axis=None, keepdim=False):
    x = g.name(a)
    red = "ReduceMax" if is_max else "ReduceMin"
    if axis is None:
        return g.reduce(red, x, None, False)
    axis = int(axis) % g.rank(a)
    vals = g.reduce(red, x, [axis], keepdim)
    idx = g.op("ArgMax" if is_max else "ArgMin", x, axis=axis, keepdims=int(keepdim))
    return [vals, idx]


def amax_amin(g, a, is_max=True, axes=None, keepdim=False):
    return g.reduce("ReduceMax" if is_max else "ReduceMin", g.name(a), _axes(g, a, axes), keepdim)


def prod(g, a, axis=None, keepdim=False):
    return g.reduce("ReduceProd", g.name(a, g.out_dtype()), None if axis is None else [int(axis) % g.rank(a)],
                    keepdim)


def logsumexp(g, a, axes, keepdim=False):
    dt = g.out_dtype()
    x = g.name(a, dt)
    ax = _axes(g, a, axes)
    m = g.reduce("ReduceMax", x, ax, True)
    s = g.reduce("ReduceSum", g.op("Exp", g.op("Sub", x, m)), ax, True)
    out = g.op("Add", g.op("Log", s), m)
    return out if keepdim else g.squeeze(out, ax)


def vector_norm(g, a, p, axes, keepdim):
    dt = g.out_dtype()
    x = g.op("Abs", g.name(a, dt))
    ax = _axes(g, a, axes)
    if p == float("inf"):
        return g.reduce("ReduceMax", x, ax, keepdim)
    if p == -float("inf"):
        return g.reduce("ReduceMin", x, ax, keepdim)
    if p == 0:
        return g.reduce("ReduceSum", g.cast(g.op("Not", g.op("Equal", x, g.const(0, dt))), dt), ax, keepdim)
    if p == 1:
        return g.reduce("ReduceSum", x, ax, keepdim)
    if p == 2:
        return g.op("Sqrt", g.reduce("ReduceSum", g.op("Mul", x, x), ax, keepdim))
    s = g.reduce("ReduceSum", g.op("Pow", x, g.const(p, dt)), ax, keepdim)
    return g.op("Pow", s, g.const(1.0 / p, dt))


def cumsum(g, a, axis, dtype=None):
    return g.op("CumSum", g.name(a, g.out_dtype()), g.const(np.array(int(axis) % g.rank(a), np.int64)))


def softmax(g, a, axis):
    return g.op("Softmax", g.name(a), axis=int(axis) % g.rank(a))


def log_softmax(g, a, axis):
    return g.op("LogSoftmax", g.name(a), axis=int(axis) % g.rank(a))


# ---- linear algebra -----------------------------------------------------------------------
def matmul(g, a, b):
    dt = g.out_dtype()
    return g.op("MatMul", g.name(a, dt), g.name(b, dt))


def linear(g, x, w, b=None):
    wt = g.op("Transpose", g.name(w), perm=[1, 0])
    y = g.op("MatMul", g.name(x), wt)
    return y if b is None else g.op("Add", y, g.name(b))


def einsum(g, *arrays, subs, out):
    dt = g.out_dtype()
    return g.op("Einsum", *[g.name(a, dt) for a in arrays], equation=",".join(subs) + "->" + out)


# ---- shape --------------------------------------------------------------------------------
def reshape(g, a, shape):
    shape = tuple(shape)
    zero = _b.any(not isinstance(s, Dim) and s == 0 for s in shape)
    return g.op("Reshape", g.name(a), g.ints(shape), allowzero=1 if zero else None)


def permute(g, a, dims):
    return g.op("Transpose", g.name(a), perm=[int(d) for d in dims])


def expand(g, a, shape):
    return g.op("Expand", g.name(a), g.ints(tuple(shape)))


def cat(g, axis, *arrays):
    dt = g.out_dtype()
    return g.op("Concat", *[g.name(a, dt) for a in arrays], axis=int(axis) % g.rank(arrays[0]))


def stack(g, axis, *arrays):
    dt = g.out_dtype()
    ax = int(axis) % (g.rank(arrays[0]) + 1)
    return g.op("Concat", *[g.unsqueeze(g.name(a, dt), [ax]) for a in arrays], axis=ax)


def split(g, a, sections, axis):
    axis = int(axis) % g.rank(a)
    sections = list(sections)
    if len(sections) == 1:
        return [g.op("Identity", g.name(a))]
    return g.op("Split", g.name(a), g.ints(sections), axis=axis, outputs=len(sections))


def cast(g, a, dtype):
    return g.cast(g.name(a), dtype)


def identity(g, a, *args, **kwargs):
    return g.op("Identity", g.name(a))


def dropout(g, x, p, mask_shape=None, generator=None):
    # export is for inference: dropout is the identity (as torch.onnx exports it in eval)
    return g.op("Identity", g.name(x))


def flip(g, a, axes):
    axes = [int(x) % g.rank(a) for x in axes]
    n = len(axes)
    if not n:
        return g.op("Identity", g.name(a))
    return g.op("Slice", g.name(a), g.ints([-1] * n), g.ints([INT64_MIN] * n), g.ints(axes), g.ints([-1] * n))


def roll(g, a, shifts, axes):
    x = g.name(a)
    shape = g.shape(a)
    if axes is None:
        n = g.static(int(np.prod(shape)) if shape else 1, "roll size")
        flat = g.op("Reshape", x, g.ints([-1]))
        out = _roll1(g, flat, int(shifts if isinstance(shifts, int) else shifts[0]), n, 0)
        return g.op("Reshape", out, g.ints(shape))
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for s, ax in zip(shifts, axes):
        ax = int(ax) % len(shape)
        x = _roll1(g, x, int(s), g.static(shape[ax], "rolled size"), ax)
    return x


def _roll1(g, x, s, n, ax):
    s = s % n if n else 0
    if not s:
        return x
    tail = g.op("Slice", x, g.ints([n - s]), g.ints([n]), g.ints([ax]))
    head = g.op("Slice", x, g.ints([0]), g.ints([n - s]), g.ints([ax]))
    return g.op("Concat", tail, head, axis=ax)


def take_along(g, a, idx, axis):
    return g.op("Gather", g.name(a), g.name(idx, np.int64), axis=int(axis) % g.rank(a))


def tri(g, a, k, upper):
    return g.op("Trilu", g.name(a), g.const(np.array(int(k), np.int64)), upper=int(bool(upper)))


# ---- indexing -------------------------------------------------------------------------------
def getitem(g, a, index):
    """Basic indexing (ints, slices, None, Ellipsis) plus one integer-array index or one
    boolean mask: Slice, then Gather/Compress, Squeeze and Unsqueeze."""
    items = list(index) if isinstance(index, tuple) else [index]
    rank = g.rank(a)

    def width(it):
        if it is None or it is Ellipsis:
            return 0
        return (g.rank(it) if isinstance(it, Ref) else np.ndim(it)) if _is_bool(g, it) else 1
    used = _b.sum(width(it) for it in items)
    if Ellipsis in items:
        i = items.index(Ellipsis)
        items[i:i + 1] = [slice(None)] * (rank - used)
    else:
        items += [slice(None)] * (rank - used)
    kinds = [("adv" if not isinstance(it, slice) else "s") for it in items if it is not None]
    if "adv" in kinds and _b.any(isinstance(it, (Ref, np.ndarray)) for it in items):
        first, last = kinds.index("adv"), len(kinds) - 1 - kinds[::-1].index("adv")
        if "s" in kinds[first:last]:
            raise RuleError("index arrays and ints separated by a slice (numpy moves their dims first)")
    starts, ends, axes, steps = [], [], [], []
    squeeze, adv, out_none = [], [], []
    dim = 0
    out_pos = 0
    for it in items:
        if it is None:
            out_none.append(out_pos)
            out_pos += 1
            continue
        if isinstance(it, slice):
            if it != slice(None):
                st = 1 if it.step is None else it.step
                if isinstance(st, Dim) or st == 0:
                    raise RuleError("a slice step must be a static non-zero int")
                if st > 0:
                    s0 = 0 if it.start is None else it.start
                    e0 = INT64_MAX if it.stop is None else it.stop
                else:
                    s0 = INT64_MAX if it.start is None else it.start
                    e0 = INT64_MIN if it.stop is None else it.stop
                starts.append(s0)
                ends.append(e0)
                axes.append(dim)
                steps.append(st)
            dim += 1
            out_pos += 1
            continue
        if isinstance(it, (int, np.integer, Dim)) and not isinstance(it, (bool, np.bool_)):
            starts.append(it)
            ends.append(INT64_MAX if (not isinstance(it, Dim) and it == -1) else it + 1)
            axes.append(dim)
            steps.append(1)
            squeeze.append(dim)
            dim += 1
            continue
        adv.append((dim, it, out_pos))
        k = g.rank(it) if isinstance(it, Ref) else np.ndim(it)
        if _is_bool(g, it):
            dim += k
        else:
            dim += 1
        out_pos += 1
    x = g.name(a)
    if axes:
        x = g.op("Slice", x, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps))
    if len(adv) > 1:
        raise RuleError("indexing with more than one index array/mask")
    if adv:
        d, it, _ = adv[0]
        d_now = d   # int dims are squeezed only after this
        if _is_bool(g, it):
            k = g.rank(it) if isinstance(it, Ref) else np.ndim(it)
            if k == 1:
                x = g.op("Compress", x, g.name(it, np.bool_), axis=d_now)
            elif d_now == 0 and k == rank:
                x = g.op("Compress", g.op("Reshape", x, g.ints([-1])),
                         g.op("Reshape", g.name(it, np.bool_), g.ints([-1])), axis=0)
            else:
                raise RuleError("a boolean mask over some but not all dims")
        else:
            x = g.op("Gather", x, g.name(it, np.int64), axis=d_now)
    if squeeze:
        # after a Gather the squeezed dims right of it shift by the index's rank - 1
        shift = 0
        if adv and not _is_bool(g, adv[0][1]):
            idx = adv[0][1]
            shift = (g.rank(idx) if isinstance(idx, Ref) else np.ndim(idx)) - 1
        ax = [s + (shift if adv and s > adv[0][0] else 0) for s in squeeze]
        x = g.squeeze(x, ax)
    if out_none:
        x = g.unsqueeze(x, out_none)
    return x


def _is_bool(g, it):
    if isinstance(it, Ref):
        return g.dtype(it) == np.bool_
    return isinstance(it, np.ndarray) and it.dtype == np.bool_


def gather(g, a, axis, idx):
    axis = int(axis) % g.rank(a)
    x = g.name(a)
    ashape, ishape = g.shape(a), g.shape(idx)
    if tuple(ashape) != tuple(ishape):
        dims = [d for d in range(len(ashape)) if d != axis and ashape[d] != ishape[d]]
        if dims:
            x = g.op("Slice", x, g.ints([0] * len(dims)), g.ints([ishape[d] for d in dims]), g.ints(dims))
    return g.op("GatherElements", x, g.name(idx, np.int64), axis=axis)


def masked_fill(g, a, mask, value):
    dt = g.out_dtype()
    return g.op("Where", g.name(mask, np.bool_), g.const(value, dt), g.name(a))


def scatter(g, a, index, src, axis, reduce):
    axis = int(axis) % g.rank(a)
    dt = g.out_dtype()
    idx = g.name(index, np.int64)
    if isinstance(src, Ref):
        s = g.name(src, dt)
        if tuple(g.shape(src)) != tuple(g.shape(index)):
            n = g.rank(index)
            s = g.op("Slice", s, g.ints([0] * n), g.ints(g.shape(index)), g.ints(list(range(n))))
    else:
        s = g.op("Expand", g.const(src, dt), g.op("Shape", idx))
    red = {None: None, "add": "add", "multiply": "mul"}.get(reduce, "?")
    if red == "?":
        raise RuleError(f"scatter reduce={reduce!r}")
    return g.op("ScatterElements", g.name(a), idx, s, axis=axis, reduction=red)


def embedding(g, weight, idx, padding_idx=None, scale_grad_by_freq=False):
    return g.op("Gather", g.name(weight), g.name(idx, np.int64), axis=0)


def sort(g, a, axis, descending):
    if g.rank(a) == 0:
        return [g.op("Identity", g.name(a)), g.const(np.array(0, np.int64))]
    axis = int(axis) % g.rank(a)
    k = g.dim(g.shape(a)[axis])
    vals, idx = g.op("TopK", g.name(a), k, axis=axis, largest=int(bool(descending)), sorted=1, outputs=2)
    return [vals, idx]


# ---- nn -----------------------------------------------------------------------------------------
def _batched(g, x, nd):
    """(name, unbatched) with a batch dim added when ``x`` has only C + nd dims."""
    if g.rank(x) == nd + 1:
        return g.unsqueeze(g.name(x), [0]), True
    return g.name(x), False


def _pads(pads):
    pads = [tuple(int(v) for v in p) for p in pads]
    return [p[0] for p in pads] + [p[1] for p in pads]


def conv(g, x, w, b=None, stride=(1,), pads=((0, 0),), dilation=(1,), groups=1):
    nd = g.rank(w) - 2
    xn, unb = _batched(g, x, nd)
    y = g.op("Conv", xn, g.name(w), g.name(b) if b is not None else None, strides=list(stride),
             pads=_pads(pads), dilations=list(dilation), group=int(groups),
             kernel_shape=[int(k) for k in g.static(g.shape(w)[2:], "kernel")])
    return g.squeeze(y, [0]) if unb else y


def max_pool(g, x, k, s, p, d, out, pads, return_indices=False):
    if return_indices:
        raise RuleError("max_pool with return_indices=True")
    xn, unb = _batched(g, x, len(k))
    y = g.op("MaxPool", xn, kernel_shape=list(k), strides=list(s), pads=_pads(pads), dilations=list(d))
    return g.squeeze(y, [0]) if unb else y


def avg_pool(g, x, k, s, p, out, pads, count_include_pad=True, divisor_override=None):
    nd = len(k)
    xn, unb = _batched(g, x, nd)
    sym = _b.all(tuple(pp) == (pi, pi) for pp, pi in zip(pads, p))
    kw = dict(kernel_shape=list(k), strides=list(s))
    if divisor_override:
        y = g.op("AveragePool", xn, pads=_pads(pads), count_include_pad=1, **kw)
        y = g.op("Mul", y, g.const(float(np.prod(k)) / float(divisor_override), g.dtype(x)))
    elif sym:
        y = g.op("AveragePool", xn, pads=_pads(pads), count_include_pad=int(bool(count_include_pad)), **kw)
    else:   # ceil_mode: the extra right padding is not counted, as ONNX's ceil_mode does
        y = g.op("AveragePool", xn, pads=[int(v) for v in p] * 2, ceil_mode=1,
                 count_include_pad=int(bool(count_include_pad)), **kw)
    return g.squeeze(y, [0]) if unb else y


def adaptive_avg_pool(g, x, out):
    from ..ops.pooling import _adaptive_matrix
    nd = len(out)
    r = g.rank(x)
    y = g.name(x)
    shape = g.shape(x)
    if _b.all(int(o) == 1 for o in out):
        return g.reduce("ReduceMean", y, list(range(r - nd, r)), True)
    dt = g.dtype(x)
    for i, o in enumerate(out):
        ax = r - nd + i
        if int(o) == 1:
            y = g.reduce("ReduceMean", y, [ax], True)
            continue
        L = g.static(shape[ax], "adaptive pooling input size")
        perm = list(range(r))
        perm[ax], perm[-1] = perm[-1], perm[ax]
        A = _adaptive_matrix(L, int(o), dt)
        y = g.op("Transpose", g.op("MatMul", g.op("Transpose", y, perm=perm), g.const(A.T.copy())), perm=perm)
    return y


def layer_norm(g, x, w=None, b=None, nd=1, eps=1e-5):
    shape = g.static(g.shape(x)[-nd:], "layer_norm's normalized shape")
    dt = g.dtype(x)
    scale = g.name(w) if w is not None else g.const(np.ones(shape, dt))
    if g.opset >= 17:
        return g.op("LayerNormalization", g.name(x), scale, g.name(b) if b is not None else None,
                    axis=-nd, epsilon=float(eps))
    ax = list(range(g.rank(x) - nd, g.rank(x)))
    xn = g.name(x)
    m = g.reduce("ReduceMean", xn, ax, True)
    d = g.op("Sub", xn, m)
    v = g.reduce("ReduceMean", g.op("Mul", d, d), ax, True)
    y = g.op("Mul", g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(eps, dt)))), scale)
    return y if b is None else g.op("Add", y, g.name(b))


def rms_norm(g, x, w=None, nd=1, eps=None):
    dt = g.dtype(x)
    if eps is None:
        eps = float(np.finfo(dt).eps)
    ax = list(range(g.rank(x) - nd, g.rank(x)))
    xn = g.name(x)
    rr = g.op("Reciprocal", g.op("Sqrt", g.op("Add", g.reduce("ReduceMean", g.op("Mul", xn, xn), ax, True),
                                              g.const(eps, dt))))
    y = g.op("Mul", xn, rr)
    return y if w is None else g.op("Mul", y, g.name(w))


def _bshape(g, x, v):
    return g.unsqueeze(g.name(v), list(range(1, g.rank(x) - 1))) if g.rank(x) > 2 else g.name(v)


def group_norm(g, x, w=None, b=None, groups=1, eps=1e-5):
    dt = g.dtype(x)
    xn = g.name(x)
    xg = g.op("Reshape", xn, g.ints([0, int(groups), -1]))
    m = g.reduce("ReduceMean", xg, [2], True)
    d = g.op("Sub", xg, m)
    v = g.reduce("ReduceMean", g.op("Mul", d, d), [2], True)
    y = g.op("Mul", d, g.op("Reciprocal", g.op("Sqrt", g.op("Add", v, g.const(eps, dt)))))
    y = g.op("Reshape", y, g.op("Shape", xn))
    if w is not None:
        y = g.op("Mul", y, _bshape(g, x, w))
    if b is not None:
        y = g.op("Add", y, _bshape(g, x, b))
    return y


def batch_norm(g, x, w=None, b=None, mean=None, var=None, training=True, eps=1e-5, stats_out=None):
    dt = g.dtype(x)
    C = g.static(g.shape(x)[1], "batch_norm channels")
    scale = g.name(w, dt) if w is not None else g.const(np.ones(C, dt))
    bias = g.name(b, dt) if b is not None else g.const(np.zeros(C, dt))
    if training or mean is None:
        ax = [0] + list(range(2, g.rank(x)))
        xn = g.name(x)
        m = g.reduce("ReduceMean", xn, ax, True)
        d = g.op("Sub", xn, m)
        v = g.reduce("ReduceMean", g.op("Mul", d, d), ax, True)
        y = g.op("Mul", d, g.op("Reciprocal", g.op("Sqrt", g.op("Add", v, g.const(eps, dt)))))
        return g.op("Add", g.op("Mul", y, _bshape(g, x, scale)), _bshape(g, x, bias))
    return g.op("BatchNormalization", g.name(x), scale, bias, g.name(mean, dt), g.name(var, dt),
                epsilon=float(eps))


def sdpa(g, q, k, v, mask=None, scale=1.0, is_causal=False, dropout_p=0.0, need_weights=False):
    dt = g.dtype(q)
    qs = g.op("Mul", g.name(q), g.const(scale, dt))
    rk = g.rank(k)
    perm = list(range(rk))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    s = g.op("MatMul", qs, g.op("Transpose", g.name(k), perm=perm))
    safe = False
    if mask is not None:
        if g.dtype(mask) == np.bool_:
            s = g.op("Where", g.name(mask), s, g.const(-np.inf, dt))
            safe = True
        else:
            s = g.op("Add", s, g.name(mask, dt))
    if is_causal:
        L, S = g.shape(q)[-2], g.shape(k)[-2]
        if not isinstance(L, Dim) and not isinstance(S, Dim):
            allowed = g.const(np.tril(np.ones((L, S), dtype=bool)))
        else:
            rows = g.unsqueeze(g.op("Range", g.dim(0, True), g.dim(L, True), g.dim(1, True)), [1])
            cols = g.op("Range", g.dim(0, True), g.dim(S, True), g.dim(1, True))
            allowed = g.op("LessOrEqual", cols, rows)
        s = g.op("Where", allowed, s, g.const(-np.inf, dt))
    if safe:
        # a fully masked row gives zeros (deepseek's and PyTorch's rule), not NaN
        m = g.reduce("ReduceMax", s, [-1 % g.rank(q)], True)
        m = g.op("Where", g.op("IsInf", m), g.const(0.0, dt), m)
        e = g.op("Exp", g.op("Sub", s, m))
        tot = g.reduce("ReduceSum", e, [g.rank(q) - 1], True)
        tot = g.op("Where", g.op("Equal", tot, g.const(0.0, dt)), g.const(1.0, dt), tot)
        p = g.op("Div", e, tot)
    else:
        p = g.op("Softmax", s, axis=-1)
    out = g.op("MatMul", p, g.name(v))
    return [out, p] if need_weights else out


def constant_pad(g, x, pads, value=0.0):
    lead = g.rank(x) - len(pads)
    full = [(0, 0)] * lead + [tuple(p) for p in pads]
    return g.op("Pad", g.name(x), g.ints([p[0] for p in full] + [p[1] for p in full]),
                g.const(value, g.dtype(x)), mode="constant")


def index_pad(g, x, pads, mode):
    lead = g.rank(x) - len(pads)
    if mode in ("reflect", "replicate"):
        full = [(0, 0)] * lead + [tuple(p) for p in pads]
        return g.op("Pad", g.name(x), g.ints([p[0] for p in full] + [p[1] for p in full]),
                    mode="reflect" if mode == "reflect" else "edge")
    if mode != "circular":
        raise RuleError(f"pad mode {mode!r}")
    y = g.name(x)
    shape = g.shape(x)
    for i, (l, r) in enumerate(pads):
        ax = lead + i
        n = g.static(shape[ax], "circular pad size")
        parts = []
        if l:
            parts.append(g.op("Slice", y, g.ints([n - l]), g.ints([n]), g.ints([ax])))
        parts.append(y)
        if r:
            parts.append(g.op("Slice", y, g.ints([0]), g.ints([r]), g.ints([ax])))
        y = g.op("Concat", *parts, axis=ax) if len(parts) > 1 else y
    return y


def interpolate(g, x, mats):
    """Each trailing spatial axis times its (out, in) resampling matrix, as deepseek does."""
    nd = len(mats)
    r = g.rank(x)
    dt = g.dtype(x)
    y = g.name(x)
    for i, m in enumerate(mats):
        ax = r - nd + i
        arr = g.array(m)
        mt = g.const(np.asarray(arr, dt).T.copy()) if arr is not None else g.op("Transpose", g.name(m, dt), perm=[1, 0])
        perm = list(range(r))
        perm[ax], perm[-1] = perm[-1], perm[ax]
        y = g.op("Transpose", g.op("MatMul", g.op("Transpose", y, perm=perm), mt), perm=perm)
    return y


# ---- the table's array-level ops (Tensor methods; kind "method" nodes) ----------------------------
def _cmp(op_type, negate=False):
    def rule(g, a, b):
        dt = np.result_type(*[g.dtype(v) if isinstance(v, Ref) else v for v in (a, b)])
        y = g.op(op_type, g.name(a, dt), g.name(b, dt))
        return g.op("Not", y) if negate else y
    rule.__name__ = op_type.lower()
    return rule


eq, ne, lt, le, gt, ge = (_cmp("Equal"), _cmp("Equal", True), _cmp("Less"), _cmp("LessOrEqual"),
                          _cmp("Greater"), _cmp("GreaterOrEqual"))


def _logical(op_type):
    def rule(g, a, b):
        return g.op(op_type, g.name(a, np.bool_), g.name(b, np.bool_))
    return rule


logical_and, logical_or = _logical("And"), _logical("Or")


def logical_not(g, a):
    return g.op("Not", g.name(a, np.bool_))


def _bitwise(op_type, bool_op):
    def rule(g, a, b):
        dt = np.result_type(*[g.dtype(v) if isinstance(v, Ref) else v for v in (a, b)])
        if dt == np.bool_:
            return g.op(bool_op, g.name(a, dt), g.name(b, dt))
        if g.opset < 18:
            raise RuleError(f"{op_type} on integers needs opset >= 18")
        return g.op(op_type, g.name(a, dt), g.name(b, dt))
    return rule


bitwise_and, bitwise_or, bitwise_xor = (_bitwise("BitwiseAnd", "And"), _bitwise("BitwiseOr", "Or"),
                                        _bitwise("BitwiseXor", "Xor"))


def bitwise_not(g, a):
    if g.dtype(a) == np.bool_:
        return g.op("Not", g.name(a))
    if g.opset < 18:
        raise RuleError("bitwise_not on integers needs opset >= 18")
    return g.op("BitwiseNot", g.name(a))


def isnan(g, a):
    return g.op("IsNaN", g.name(a))


def isinf(g, a):
    return g.op("IsInf", g.name(a))


def isfinite(g, a):
    x = g.name(a)
    return g.op("Not", g.op("Or", g.op("IsNaN", x), g.op("IsInf", x)))


def _anyall(red):
    def rule(g, a, dim=None, keepdim=False):
        nz = g.cast(g.op("Not", g.op("Equal", g.name(a), g.const(0, g.dtype(a)))), np.int32)
        axes = None if dim is None else [int(d) % g.rank(a) for d in ((dim,) if isinstance(dim, int) else dim)]
        return g.cast(g.reduce(red, nz, axes, keepdim), np.bool_)
    return rule


any, all = _anyall("ReduceMax"), _anyall("ReduceMin")


def _arg(op_type):
    def rule(g, a, dim=None, keepdim=False):
        x = g.name(a)
        if dim is None:
            y = g.op(op_type, g.op("Reshape", x, g.ints([-1])), axis=0, keepdims=0)
            return g.op("Reshape", y, g.ints([1] * g.rank(a))) if keepdim else y
        return g.op(op_type, x, axis=int(dim) % g.rank(a), keepdims=int(bool(keepdim)))
    return rule


argmax, argmin = _arg("ArgMax"), _arg("ArgMin")


def floor_divide(g, a, b):
    dt = g.out_dtype()
    x, y = g.name(a, dt), g.name(b, dt)
    if np.issubdtype(dt, np.floating):
        return g.op("Floor", g.op("Div", x, y))
    q = g.op("Div", x, y)                      # truncates toward zero
    r = g.op("Mod", x, y, fmod=1)
    fix = g.op("And", g.op("Not", g.op("Equal", r, g.const(0, dt))),
               g.op("Xor", g.op("Less", x, g.const(0, dt)), g.op("Less", y, g.const(0, dt))))
    return g.op("Sub", q, g.cast(fix, dt))


def rfloordiv(g, a, b):
    return floor_divide(g, b, a)


def pos(g, a):
    return g.op("Identity", g.name(a))


def isclose(g, a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    dt = np.result_type(*[g.dtype(v) if isinstance(v, Ref) else v for v in (a, b)])
    x, y = g.name(a, dt), g.name(b, dt)
    tol = g.op("Add", g.const(atol, dt), g.op("Mul", g.const(rtol, dt), g.op("Abs", y)))
    close = g.op("Or", g.op("Equal", x, y), g.op("LessOrEqual", g.op("Abs", g.op("Sub", x, y)), tol))
    if equal_nan:
        close = g.op("Or", close, g.op("And", g.op("IsNaN", x), g.op("IsNaN", y)))
    return close


def count_nonzero(g, a, dim=None):
    nz = g.cast(g.op("Not", g.op("Equal", g.name(a), g.const(0, g.dtype(a)))), np.int64)
    axes = None if dim is None else [int(d) % g.rank(a) for d in ((dim,) if isinstance(dim, int) else dim)]
    return g.reduce("ReduceSum", nz, axes, False)
