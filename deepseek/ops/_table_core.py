"""Op table entries of the tensor ops: elementwise, reductions, linalg, shape,
indexing, softmax, and the ops without a gradient. See ``deepseek.ops.registry``.

Each entry's references take numpy arrays (``ref_numpy``) or torch tensors
(``ref_torch``, the torch module first) with the arguments of the sample.
"""
import importlib
import math

import numpy as np

from . import elementwise as E, reduction as R, linalg as L, shape as S, indexing as I
from . import nondiff as ND, tensor_methods as TM
from .opinfo import Shape, FLOATING, OpInfo, unary_samples, binary_samples, reduction_samples, samples

# (``deepseek.ops.softmax`` the attribute is the function, which shadows the module)
SM = importlib.import_module("deepseek.ops.softmax")


def chain(*gens):
    """Samples of several generators, in order."""
    def gen(rng):
        for g in gens:
            yield from g(rng)
    return gen


def _to_float(d):
    return d if d in FLOATING else "float32"


def _bool(d):
    return "bool"


def _int64(d):
    return "int64"


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _clamp_np(x, min=None, max=None):
    return np.clip(x, min, max)


def _unary(name, op, fn, ref, tref, low=-2.0, high=2.0, out_dtype=_to_float, inplace=True,
           autocast="none", **kw):
    return OpInfo(name, op, fn, methods=(name,), inplace=(name + "_",) if inplace else (),
                  autocast=autocast, sample_inputs=unary_samples(low, high), ref_numpy=ref,
                  ref_torch=tref, dtypes=FLOATING + ("int64",), out_dtype=out_dtype, **kw)


def _binary(name, op, fn, ref, tref, low=-2.0, high=2.0, **kw):
    kw.setdefault("sample_inputs", binary_samples(low, high, scalar=kw.pop("scalar", 1.5)))
    kw.setdefault("dtypes", FLOATING + ("int64",))
    return OpInfo(name, op, fn, ref_numpy=ref, ref_torch=tref, **kw)


def _tdim(d):
    """A dim for torch reductions that take no None (all dims: the empty tuple)."""
    return () if d is None else d


ELEMENTWISE = [
    _binary("add", E.add, E.Add, lambda a, b, alpha=1: a + alpha * b,
            lambda t, a, b, **k: t.add(a, b, **k), methods=("add",), operators=("__add__",),
            reflected=("__radd__",), inplace=("add_", "__iadd__"),
            sample_inputs=chain(binary_samples(scalar=2.5),
                                samples(((Shape((2, 3)), Shape((3,))), {"alpha": 2}, "alpha=2"))), export="add"),
    _binary("sub", E.sub, E.Sub, lambda a, b, alpha=1: a - alpha * b,
            lambda t, a, b, **k: t.sub(a, b, **k), aliases=("subtract",),
            methods=("sub", "subtract"), operators=("__sub__",), reflected=("__rsub__",),
            inplace=("sub_", "__isub__"),
            sample_inputs=chain(binary_samples(scalar=2.5),
                                samples(((Shape((2, 3)), Shape((3,))), {"alpha": 0.5}, "alpha=0.5"))), export="sub"),
    _binary("mul", E.mul, E.Mul, np.multiply, lambda t, a, b: t.mul(a, b), aliases=("multiply",),
            methods=("mul", "multiply"), operators=("__mul__",), reflected=("__rmul__",),
            inplace=("mul_", "__imul__"), export="mul"),
    _binary("div", E.div, E.Div, np.true_divide, lambda t, a, b: t.div(a, b), low=0.5, high=2.0,
            aliases=("divide", "true_divide"), methods=("div", "divide"), operators=("__truediv__",),
            reflected=("__rtruediv__",), inplace=("div_", "__itruediv__"), out_dtype=_to_float,
            dtypes=FLOATING, export="div"),
    _binary("pow", E.pow, E.Pow, np.power, lambda t, a, b: t.pow(a, b), low=0.5, high=2.0,
            methods=("pow",), operators=("__pow__",), reflected=("__rpow__",), inplace=("pow_",),
            autocast="fp32", autocast_cpu="none", dtypes=FLOATING, export="pow"),
    _binary("maximum", E.maximum, E.Maximum, np.maximum, lambda t, a, b: t.maximum(a, b),
            methods=("maximum",), scalar=None, export="maximum"),
    _binary("minimum", E.minimum, E.Minimum, np.minimum, lambda t, a, b: t.minimum(a, b),
            methods=("minimum",), scalar=None, export="minimum"),
    OpInfo("where", E.where, E.Where, methods=(("where", TM.where),),
           sample_inputs=samples(((np.array([[True, False, True], [False, False, True]]), Shape((2, 3)),
                                   Shape((3,))), {}, "broadcast"),
                                 ((np.array([True, False, True]), Shape((2, 3)), 0.5), {}, "scalar other"),
                                 ((np.zeros((0, 3), bool), Shape((0, 3)), Shape((0, 3))), {}, "empty"),
                                 ((np.array([True, False, False, True]), Shape((3, 4)), Shape((3, 4))),
                                  {}, "noncontiguous", True)),
           ref_numpy=np.where, ref_torch=lambda t, c, a, b: t.where(c, a, b), dtypes=FLOATING, export="where"),
    OpInfo("clamp", E.clamp, E.Clamp, aliases=("clip",), methods=("clamp", "clip"),
           inplace=("clamp_",), sample_inputs=chain(
               unary_samples(min=-0.5, max=0.7),
               samples(((Shape((3, 4)),), {"min": 0.1}, "min only"), ((Shape((3, 4)),), {"max": 0.1}, "max only"),
                       ((Shape((3, 4)), Shape((4,))), {}, "tensor bound"))),
           ref_numpy=_clamp_np, ref_torch=lambda t, x, *a, **k: t.clamp(x, *a, **k), dtypes=FLOATING, export="clamp"),
    OpInfo("clamp_min", TM.clamp_min, E.Clamp, methods=("clamp_min",),
           sample_inputs=samples(((Shape((3, 4)), 0.1), {})), ref_numpy=lambda x, m: np.maximum(x, m),
           ref_torch=lambda t, x, m: t.clamp_min(x, m)),
    OpInfo("clamp_max", TM.clamp_max, E.Clamp, methods=("clamp_max",),
           sample_inputs=samples(((Shape((3, 4)), 0.1), {})), ref_numpy=lambda x, m: np.minimum(x, m),
           ref_torch=lambda t, x, m: t.clamp_max(x, m)),
    _unary("neg", E.neg, E.Neg, np.negative, lambda t, x: t.neg(x), out_dtype=None,
           operators=("__neg__",), export="neg"),
    _unary("abs", E.abs_, E.Abs, np.abs, lambda t, x: t.abs(x), out_dtype=None,
           operators=("__abs__",), export="abs"),
    _unary("exp", E.exp, E.Exp, np.exp, lambda t, x: t.exp(x), autocast="fp32", autocast_cpu="none", export="exp"),
    _unary("log", E.log, E.Log, np.log, lambda t, x: t.log(x), low=0.2, high=3.0, autocast="fp32", autocast_cpu="none", export="log"),
    _unary("sqrt", E.sqrt, E.Sqrt, np.sqrt, lambda t, x: t.sqrt(x), low=0.2, high=3.0, export="sqrt"),
    _unary("rsqrt", E.rsqrt, E.Rsqrt, lambda x: 1 / np.sqrt(x), lambda t, x: t.rsqrt(x), low=0.2,
           high=3.0, inplace=False, autocast="fp32", autocast_cpu="none", export="rsqrt"),
    _unary("sin", E.sin, E.Sin, np.sin, lambda t, x: t.sin(x), low=-3.0, high=3.0, export="sin"),
    _unary("cos", E.cos, E.Cos, np.cos, lambda t, x: t.cos(x), low=-3.0, high=3.0, export="cos"),
    _unary("tanh", E.tanh, E.Tanh, np.tanh, lambda t, x: t.tanh(x), low=-3.0, high=3.0, export="tanh"),
    _unary("sigmoid", E.sigmoid, E.Sigmoid, _sigmoid, lambda t, x: t.sigmoid(x), low=-6.0, high=6.0, export="sigmoid"),
    _unary("relu", E.relu, E.Relu, lambda x: np.maximum(x, 0), lambda t, x: t.relu(x), out_dtype=None, export="relu"),
    OpInfo("gelu", E.gelu, E.Gelu, methods=("gelu",),
           sample_inputs=chain(unary_samples(-3.0, 3.0), unary_samples(-3.0, 3.0, approximate="tanh")),
           ref_numpy=_gelu, ref_torch=lambda t, x, **k: t.nn.functional.gelu(x, **k), dtypes=FLOATING, export="gelu"),
    _unary("silu", E.silu, E.Silu, lambda x: x * _sigmoid(x), lambda t, x: t.nn.functional.silu(x),
           low=-4.0, high=4.0, inplace=False, export="silu"),
    _unary("sign", E.sign, E.Sign, np.sign, lambda t, x: t.sign(x), out_dtype=None, inplace=False, export="sign"),
    _unary("square", E.square, E.Mul, np.square, lambda t, x: t.square(x), out_dtype=None,
           inplace=False),
    OpInfo("floor_divide", TM.floordiv, operators=("__floordiv__",), reflected=(),
           differentiable=False,
           sample_inputs=samples(((np.array([7, -7, 5, 0]), np.array([2, 2, -3, 4])), {}),
                                 ((Shape((3, 4)), 0.7), {}, "float by scalar")),
           ref_numpy=np.floor_divide, ref_torch=lambda t, a, b: t.floor_divide(a, b), dtypes=(), export="floor_divide"),
    OpInfo("rfloordiv", TM.rfloordiv, operators=("__rfloordiv__",), differentiable=False,
           sample_inputs=samples(((np.array([2, 3, -4]), 7), {})),
           ref_numpy=lambda a, b: np.floor_divide(b, a), ref_torch=lambda t, a, b: b // a, dtypes=(), export="rfloordiv"),
    OpInfo("pos", TM.pos, operators=("__pos__",), sample_inputs=unary_samples(),
           ref_numpy=np.positive, ref_torch=lambda t, x: +x, dtypes=FLOATING, export="pos"),
]


def _np_max(x, dim=None, keepdim=False, fn=np.max, arg=np.argmax):
    if dim is None:
        return fn(x)
    return fn(x, axis=dim, keepdims=keepdim), _np_arg(x, dim, keepdim, arg)


def _np_arg(x, dim=None, keepdim=False, arg=np.argmax):
    if dim is None:
        out = np.asarray(arg(x))
        return out.reshape((1,) * x.ndim) if keepdim else out
    out = arg(x, axis=dim)
    return np.expand_dims(out, dim) if keepdim else out


def _single_dim_samples(low=-2.0, high=2.0):
    return chain(samples(((Shape((2, 3, 2), low, high),), {}, "all")),
                 reduction_samples(dims=(0, 1, -1), low=low, high=high))


def _logsumexp_np(x, dim, keepdim=False):
    m = np.max(x, axis=dim, keepdims=True) if x.size else 0
    out = np.log(np.sum(np.exp(x - m), axis=dim, keepdims=True)) + m
    return out if keepdim else np.squeeze(out, axis=dim)


def _torch_max(name):
    def ref(t, x, dim=None, keepdim=False):
        f = getattr(t, name)
        return f(x) if dim is None else tuple(f(x, dim, keepdim=keepdim))
    return ref


REDUCTIONS = [
    OpInfo("sum", R.sum, R.Sum, methods=("sum",), autocast="fp32", autocast_cpu="none", sample_inputs=reduction_samples(),
           ref_numpy=lambda x, dim=None, keepdim=False: np.sum(x, axis=dim, keepdims=keepdim),
           ref_torch=lambda t, x, dim=None, keepdim=False: t.sum(x, _tdim(dim), keepdim=keepdim),
           dtypes=FLOATING + ("int64", "bool"), out_dtype=lambda d: d if d in FLOATING else "int64", export="sum"),
    OpInfo("mean", R.mean, R.Mean, methods=("mean",), sample_inputs=reduction_samples(),
           ref_numpy=lambda x, dim=None, keepdim=False: np.mean(x, axis=dim, keepdims=keepdim),
           ref_torch=lambda t, x, dim=None, keepdim=False: t.mean(x, _tdim(dim), keepdim=keepdim),
           dtypes=FLOATING, export="mean"),
    OpInfo("var", R.var, R.Var, methods=("var",),
           sample_inputs=chain(reduction_samples(empty=False),
                               samples(((Shape((3, 4)), 1), {"unbiased": False}, "unbiased=False"),
                                       ((Shape((3, 4)), 1), {"correction": 0}, "correction=0"))),
           ref_numpy=lambda x, dim=None, keepdim=False, unbiased=True, correction=None: np.var(
               x, axis=dim, keepdims=keepdim, ddof=(1 if unbiased else 0) if correction is None else correction),
           ref_torch=lambda t, x, dim=None, **k: t.var(x, dim, **k), dtypes=FLOATING, export="var"),
    OpInfo("std", R.std, (R.Var, E.Sqrt), methods=("std",), sample_inputs=reduction_samples(empty=False),
           ref_numpy=lambda x, dim=None, keepdim=False: np.std(x, axis=dim, keepdims=keepdim, ddof=1),
           ref_torch=lambda t, x, dim=None, **k: t.std(x, dim, **k), dtypes=FLOATING),
    OpInfo("max", R.max, R.MaxMin, methods=("max",), sample_inputs=_single_dim_samples(),
           ref_numpy=_np_max, ref_torch=_torch_max("max"), dtypes=FLOATING, export="max_min"),
    OpInfo("min", R.min, R.MaxMin, methods=("min",), sample_inputs=_single_dim_samples(),
           ref_numpy=lambda x, dim=None, keepdim=False: _np_max(x, dim, keepdim, np.min, np.argmin),
           ref_torch=_torch_max("min"), dtypes=FLOATING),
    OpInfo("amax", R.amax, R.AmaxAmin, methods=("amax",), sample_inputs=reduction_samples(),
           ref_numpy=lambda x, dim=None, keepdim=False: np.amax(x, axis=dim, keepdims=keepdim),
           ref_torch=lambda t, x, dim=None, keepdim=False: t.amax(x, _tdim(dim), keepdim=keepdim),
           dtypes=FLOATING + ("int64",), export="amax_amin"),
    OpInfo("amin", R.amin, R.AmaxAmin, methods=("amin",), sample_inputs=reduction_samples(),
           ref_numpy=lambda x, dim=None, keepdim=False: np.amin(x, axis=dim, keepdims=keepdim),
           ref_torch=lambda t, x, dim=None, keepdim=False: t.amin(x, _tdim(dim), keepdim=keepdim),
           dtypes=FLOATING + ("int64",)),
    OpInfo("prod", R.prod, R.Prod, methods=("prod",), autocast="fp32",
           sample_inputs=chain(_single_dim_samples(0.3, 2.0),
                               samples(((np.array([[1.0, 0.0, 3.0], [0.0, 0.0, 2.0]]), 1), {}, "zeros"))),
           ref_numpy=lambda x, dim=None, keepdim=False: np.prod(x, axis=dim, keepdims=keepdim),
           ref_torch=lambda t, x, dim=None, keepdim=False: t.prod(x) if dim is None else t.prod(x, dim, keepdim=keepdim),
           dtypes=("float32", "float64"), export="prod"),
    OpInfo("logsumexp", R.logsumexp, R.Logsumexp, methods=("logsumexp",), autocast="fp32", autocast_cpu="none",
           sample_inputs=reduction_samples(dims=(0, 1, -1, (0, 2))), ref_numpy=_logsumexp_np,
           ref_torch=lambda t, x, dim, keepdim=False: t.logsumexp(x, dim, keepdim=keepdim),
           dtypes=FLOATING, export="logsumexp"),
    OpInfo("argmax", R.argmax, methods=("argmax",), differentiable=False,
           sample_inputs=_single_dim_samples(), ref_numpy=_np_arg,
           ref_torch=lambda t, x, dim=None, keepdim=False: t.argmax(x, dim, keepdim=keepdim),
           out_dtype=_int64, dtypes=FLOATING + ("int64",), export="argmax"),
    OpInfo("argmin", R.argmin, methods=("argmin",), differentiable=False,
           sample_inputs=_single_dim_samples(),
           ref_numpy=lambda x, dim=None, keepdim=False: _np_arg(x, dim, keepdim, np.argmin),
           ref_torch=lambda t, x, dim=None, keepdim=False: t.argmin(x, dim, keepdim=keepdim),
           out_dtype=_int64, dtypes=FLOATING + ("int64",), export="argmin"),
]


def _mm_shapes():
    return samples(*[((Shape(a), Shape(b)), {}, f"{list(a)}@{list(b)}") for a, b in
                     [((3, 4), (4, 5)), ((4,), (4,)), ((2, 3, 4), (4, 2)), ((4,), (4, 3)),
                      ((3, 4), (4,)), ((2, 1, 3, 4), (3, 4, 2)), ((0, 4), (4, 2))]]
                   + [((Shape((3, 4)), Shape((4, 4))), {}, "noncontiguous", True)])


def _linear_np(x, w, b=None):
    out = x @ w.T
    return out if b is None else out + b


LINALG = [
    OpInfo("matmul", L.matmul, L.Matmul, methods=("matmul",), operators=("__matmul__",),
           reflected=("__rmatmul__",), autocast="lower", sample_inputs=_mm_shapes(),
           ref_numpy=np.matmul, ref_torch=lambda t, a, b: t.matmul(a, b), dtypes=FLOATING, export="matmul"),
    OpInfo("linear", L.linear, L.Linear, autocast="lower",
           sample_inputs=samples(((Shape((3, 4)), Shape((5, 4)), Shape((5,))), {}, "bias"),
                                 ((Shape((2, 3, 4)), Shape((5, 4))), {}, "no bias, 3-d"),
                                 ((Shape((3, 4)), Shape((5, 4)), Shape((5,))), {}, "noncontiguous", True)),
           ref_numpy=_linear_np, ref_torch=lambda t, *a: t.nn.functional.linear(*a), dtypes=FLOATING, export="linear"),
]


def _np_split(x, size, dim=0):
    n = x.shape[dim]
    if isinstance(size, int):
        cuts = list(range(size, n, size))
    else:
        cuts = list(np.cumsum(size)[:-1])
    return tuple(np.split(x, cuts, axis=dim))


def _np_chunk(x, chunks, dim=0):
    n = x.shape[dim]
    return _np_split(x, max(-(-n // chunks), 1), dim)


def _np_flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])


def _np_squeeze(x, dim=None):
    if dim is None:
        return np.squeeze(x)
    return np.squeeze(x, dim) if x.shape[dim] == 1 else x


def _np_unflatten(x, dim, sizes):
    d = dim % x.ndim
    return x.reshape(x.shape[:d] + tuple(sizes) + x.shape[d + 1:])


def _np_expand(x, shape):
    shape = tuple(x.shape[i - (len(shape) - x.ndim)] if s == -1 else s for i, s in enumerate(shape))
    return np.broadcast_to(x, shape)


def _shape(name, op, fn, args, ref, tref, method=True, more=(), **kw):
    # the first item of each ``args`` is the input's shape, the rest the op's arguments
    items = [((Shape(ar[0]),) + tuple(ar[1:]), {}, f"{list(ar[0])} {ar[1:]}") for ar in args]
    return OpInfo(name, op, fn, methods=(name,) if method else (), dtypes=FLOATING + ("int64", "bool"),
                  sample_inputs=samples(*items, *more), ref_numpy=ref, ref_torch=tref, **kw)


def _cat_call(*ts, dim=0):
    return S.cat(list(ts), dim=dim)


def _stack_call(*ts, dim=0):
    return S.stack(list(ts), dim=dim)


SHAPE = [
    _shape("reshape", S.reshape, S.Reshape, [((2, 3, 4), (4, 6)), ((2, 3, 4), (-1, 2)), ((), (1, 1)),
                                              ((0, 6), (3, 0, 2))],
           lambda x, s: x.reshape(s), lambda t, x, s: x.reshape(s),
           more=[((Shape((3, 4)), (2, 6)), {}, "noncontiguous", True)], export="reshape"),
    _shape("view", S.view, S.Reshape, [((2, 3, 4), (6, 4)), ((2, 3, 4), (-1,)), ((), (1,))],
           lambda x, s: x.reshape(s), lambda t, x, s: x.view(s)),
    _shape("permute", S.permute, S.Permute, [((2, 3, 4), (2, 0, 1)), ((2, 3), (1, 0)), ((0, 2), (1, 0))],
           lambda x, d: np.transpose(x, d), lambda t, x, d: x.permute(d),
           more=[((Shape((3, 4)), (1, 0)), {}, "noncontiguous", True)], export="permute"),
    _shape("transpose", S.transpose, S.Permute, [((2, 3, 4), 0, -1), ((3, 4), 1, 0)],
           lambda x, a, b: np.swapaxes(x, a, b), lambda t, x, a, b: x.transpose(a, b)),
    _shape("t", S.t, S.Permute, [((3, 4),), ((4,),)], lambda x: x.T, lambda t, x: x.t()),
    _shape("expand", S.expand, S.Expand, [((3, 1), (2, 3, 4)), ((3, 1), (5, -1, 4)), ((), (2, 2))],
           _np_expand, lambda t, x, s: x.expand(s), export="expand"),
    OpInfo("expand_as", S.expand_as, S.Expand, methods=("expand_as",),
           sample_inputs=samples(((Shape((1, 4)), Shape((3, 4))), {})),
           ref_numpy=lambda x, y: np.broadcast_to(x, y.shape), ref_torch=lambda t, x, y: x.expand_as(y),
           gradcheck_kw={"requires_grad": (True, False)}),
    _shape("broadcast_to", S.broadcast_to, S.Expand, [((3, 1), (2, 3, 4))], np.broadcast_to,
           lambda t, x, s: t.broadcast_to(x, s), method=False),
    _shape("squeeze", S.squeeze, S.Reshape, [((1, 3, 1, 2),), ((1, 3, 1, 2), 2), ((1, 3, 1, 2), 1), ((1,),)],
           _np_squeeze, lambda t, x, *d: x.squeeze(*d)),
    _shape("unsqueeze", S.unsqueeze, S.Reshape, [((3, 2), 1), ((3, 2), -1), ((), 0)],
           np.expand_dims, lambda t, x, d: x.unsqueeze(d)),
    _shape("flatten", S.flatten, S.Reshape, [((2, 3, 4),), ((2, 3, 4, 2), 1, 2), ((),)],
           _np_flatten, lambda t, x, *a: x.flatten(*a)),
    _shape("unflatten", S.unflatten, S.Reshape, [((4, 6), 1, (2, 3))], _np_unflatten,
           lambda t, x, d, s: x.unflatten(d, s)),
    OpInfo("cat", S.cat, S.Cat, aliases=("concat", "concatenate"), autocast="promote",
           sample_inputs=samples(((Shape((2, 3)), Shape((4, 3))), {}, "dim 0"),
                                 ((Shape((2, 3)), Shape((2, 1)), Shape((2, 2))), {"dim": -1}, "dim -1"),
                                 ((Shape((0, 3)), Shape((2, 3))), {}, "empty")),
           ref_numpy=lambda *a, dim=0: np.concatenate(a, axis=dim),
           ref_torch=lambda t, *a, dim=0: t.cat(a, dim), dtypes=FLOATING + ("int64",), call=_cat_call, export="cat"),
]
SHAPE += [
    OpInfo("stack", S.stack, S.Stack, autocast="promote",
           sample_inputs=samples(((Shape((2, 3)), Shape((2, 3))), {"dim": 1}),
                                 ((Shape((2, 3)), Shape((2, 3))), {"dim": -1})),
           ref_numpy=lambda *a, dim=0: np.stack(a, axis=dim),
           ref_torch=lambda t, *a, dim=0: t.stack(a, dim), dtypes=FLOATING + ("int64",), call=_stack_call, export="stack"),
    _shape("split", S.split, S.Split, [((3, 5), 2, 1), ((3, 5), [1, 3, 1], 1), ((7, 2), 3)],
           _np_split, lambda t, x, *a: x.split(*a), export="split"),
    _shape("chunk", S.chunk, S.Split, [((7, 2), 3, 0), ((2, 6), 4, 1)], _np_chunk,
           lambda t, x, *a: x.chunk(*a)),
    OpInfo("cast", S.cast, S.Cast, sample_inputs=samples(((Shape((3, 4)), "float32"), {}),
                                                         ((Shape((3, 4)), "float64"), {})),
           ref_numpy=lambda x, d: x.astype(d), ref_torch=lambda t, x, d: x.to(getattr(t, d)), dtypes=(),
           gradcheck_kw={"eps": 1e-3, "atol": 1e-3}, export="cast"),  # float32 outputs: a coarser step
    OpInfo("to_device", S.to_device, S.ToDevice, sample_inputs=samples(((Shape((3, 4)), "cpu"), {})),
           ref_numpy=lambda x, d: x, ref_torch=lambda t, x, d: x.to(d), export="identity"),
    OpInfo("contiguous", S.contiguous, S.Contiguous, methods=("contiguous",),
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)),), {}, "noncontiguous", True)),
           ref_numpy=np.ascontiguousarray, ref_torch=lambda t, x: x.contiguous(),
           dtypes=FLOATING + ("int64",), export="identity"),
    OpInfo("clone", S.clone, S.Clone, methods=("clone",), sample_inputs=unary_samples(),
           ref_numpy=np.copy, ref_torch=lambda t, x: x.clone(), dtypes=FLOATING + ("int64", "bool"), export="identity"),
    OpInfo("repeat", TM.repeat, (S.Reshape, S.Expand), methods=("repeat",),
           sample_inputs=samples(((Shape((3, 2)), 2, 1, 3), {}), ((Shape((3,)), (2, 2)), {})),
           ref_numpy=lambda x, *s: np.tile(x, s[0] if len(s) == 1 else s),
           ref_torch=lambda t, x, *s: x.repeat(*s), dtypes=FLOATING + ("int64",)),
    OpInfo("view_as", TM.view_as, S.Reshape, methods=("view_as",),
           sample_inputs=samples(((Shape((6,)), Shape((2, 3))), {})),
           ref_numpy=lambda x, y: x.reshape(y.shape), ref_torch=lambda t, x, y: x.view_as(y),
           gradcheck_kw={"requires_grad": (True, False)}),
    OpInfo("reshape_as", TM.reshape_as, S.Reshape, methods=("reshape_as",),
           sample_inputs=samples(((Shape((6,)), Shape((3, 2))), {})),
           ref_numpy=lambda x, y: x.reshape(y.shape), ref_torch=lambda t, x, y: x.reshape_as(y),
           gradcheck_kw={"requires_grad": (True, False)}),
    OpInfo("mT", TM.mT, S.Permute, methods=(("mT", "property"),), sample_inputs=samples(((Shape((2, 3, 4)),), {})),
           ref_numpy=lambda x: np.swapaxes(x, -1, -2), ref_torch=lambda t, x: x.mT),
    OpInfo("T", TM.T, S.Permute, methods=(("T", "property"),),
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((4,)),), {})),
           ref_numpy=lambda x: x.T, ref_torch=lambda t, x: x.permute(*reversed(range(x.ndim)))),
]

IDX = np.array([0, 2, 2, 1, 2])


def _setitem_np(x, index, v):
    y = x.copy()
    y[index] = v
    return y


def _setitem_torch(t, x, index, v):
    y = x.clone()
    y[index] = v
    return y


INDEXING = [
    OpInfo("getitem", I.getitem, I.Getitem, operators=("__getitem__",),
           sample_inputs=samples(*[((Shape((4, 3, 5)), ix), {}, name) for name, ix in [
               ("int", 1), ("neg int", -1), ("slice", slice(1, None)),
               ("step", (slice(None, None, 2), slice(1, 3))), ("none ellipsis", (None, Ellipsis, 0)),
               ("int array", IDX), ("bool mask", np.array([True, False, True, True])),
               ("two arrays", (np.array([0, 3, 0]), np.array([1, 1, 1])))]],
               ((Shape((4, 3)), slice(0, 2)), {}, "noncontiguous", True)),
           ref_numpy=lambda x, ix: x[ix], ref_torch=lambda t, x, ix: x[ix], dtypes=FLOATING + ("int64",), export="getitem"),
    OpInfo("index_put", I.index_put, I.IndexPut, autocast="promote",
           sample_inputs=samples(((Shape((4, 3)), (slice(0, 2),), Shape((2, 3))), {}, "slice"),
                                 ((Shape((4, 3)), (np.array([0, 3]),), Shape((3,))), {}, "index broadcast")),
           ref_numpy=_setitem_np, ref_torch=_setitem_torch),
    OpInfo("gather", I.gather, I.Gather, methods=("gather",),
           sample_inputs=samples(((Shape((3, 4)), 1, np.array([[0, 1], [3, 3], [2, 0]])), {}),
                                 ((Shape((3, 4)), 0, np.array([[0, 1, 2, 2]])), {})),
           ref_numpy=lambda x, d, ix: np.take_along_axis(x, ix, d),
           ref_torch=lambda t, x, d, ix: t.gather(x, d, ix), dtypes=FLOATING + ("int64",), export="gather"),
    OpInfo("masked_fill", I.masked_fill, I.MaskedFill, methods=("masked_fill",), inplace=("masked_fill_",),
           sample_inputs=samples(((Shape((4, 3)), np.array([True, False, True]), -1.5), {}),
                                 ((Shape((4, 3)), np.array([[True], [False], [True], [True]]), 0.0), {}),
                                 ((Shape((4, 3)), np.array([True, False, True]), 2.0), {}, "noncontiguous", True)),
           ref_numpy=lambda x, m, v: np.where(m, v, x), ref_torch=lambda t, x, m, v: x.masked_fill(m, v),
           dtypes=FLOATING, export="masked_fill"),
    OpInfo("tril", I.tril, I.Tri, methods=("tril",), inplace=("tril_",),
           sample_inputs=samples(((Shape((4, 4)),), {}), ((Shape((3, 4)), 1), {}), ((Shape((2, 3, 4)), -1), {})),
           ref_numpy=np.tril, ref_torch=lambda t, x, *k: t.tril(x, *k), dtypes=FLOATING + ("int64",), export="tri"),
    OpInfo("triu", I.triu, I.Tri, methods=("triu",), inplace=("triu_",),
           sample_inputs=samples(((Shape((4, 4)),), {}), ((Shape((3, 4)), 1), {}), ((Shape((2, 3, 4)), -1), {})),
           ref_numpy=np.triu, ref_torch=lambda t, x, *k: t.triu(x, *k), dtypes=FLOATING + ("int64",)),
]


def _softmax_np(x, dim):
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


SOFTMAX = [
    OpInfo("softmax", SM.softmax, SM.Softmax, methods=("softmax",), autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((3, 4)), -1), {}), ((Shape((2, 3, 4)), 1), {}), ((Shape((5,)), 0), {}),
                                 ((Shape((3, 4)), 0), {}, "noncontiguous", True)),
           ref_numpy=_softmax_np, ref_torch=lambda t, x, d: t.softmax(x, d), dtypes=FLOATING, export="softmax"),
    OpInfo("log_softmax", SM.log_softmax, SM.LogSoftmax, methods=("log_softmax",), autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((3, 4)), -1), {}), ((Shape((2, 3, 4)), 1), {}),
                                 ((Shape((3, 4)), 0), {}, "noncontiguous", True)),
           ref_numpy=lambda x, d: np.log(_softmax_np(x, d)), ref_torch=lambda t, x, d: t.log_softmax(x, d),
           dtypes=FLOATING, export="log_softmax"),
]


def _compare(name, np_fn, dunder):
    return OpInfo(name, getattr(ND, name), methods=(name,), operators=(dunder,), differentiable=False,
                  sample_inputs=chain(binary_samples(scalar=0.5),
                                      samples(((np.array([1.0, 2.0, 3.0]), np.array([3, 2, 1])), {}, "mixed dtypes"))),
                  ref_numpy=np_fn, ref_torch=lambda t, a, b: getattr(t, name)(a, b),
                  dtypes=FLOATING + ("int64",), out_dtype=_bool, export=name)


_INTS = samples(((np.array([[1, 2], [3, 12]]), np.array([3, 6])), {}, "int64"),
                ((np.array([True, False, True]), np.array([True, True, False])), {}, "bool"))
_FLAGS = samples(((np.array([1.0, np.nan, np.inf, -np.inf, 0.0]),), {}))
_BOOLS = samples(((np.array([[True, False], [True, True]]),), {}), ((np.array([[True, False], [True, True]]), 1), {}),
                 ((np.array([[0.0, 1.0], [2.0, 3.0]]), 0, True), {}), ((np.zeros((0, 2), bool),), {}))


def _nondiff(name, np_fn, sample_inputs, dunder=None, method=True, torch_name=None, **kw):
    kw.setdefault("ref_torch", lambda t, *a: getattr(t, torch_name or name)(*a))
    return OpInfo(name, getattr(ND, name), methods=(name,) if method else (),
                  operators=(dunder,) if dunder else (), differentiable=False, sample_inputs=sample_inputs,
                  ref_numpy=np_fn, dtypes=(), out_dtype=kw.pop("out_dtype", _bool), **kw)


NONDIFF = [
    _compare("eq", np.equal, "__eq__"), _compare("ne", np.not_equal, "__ne__"),
    _compare("lt", np.less, "__lt__"), _compare("le", np.less_equal, "__le__"),
    _compare("gt", np.greater, "__gt__"), _compare("ge", np.greater_equal, "__ge__"),
    _nondiff("bitwise_and", np.bitwise_and, _INTS, "__and__", method=False, export="bitwise_and"),
    _nondiff("bitwise_or", np.bitwise_or, _INTS, "__or__", method=False, export="bitwise_or"),
    _nondiff("bitwise_xor", np.bitwise_xor, _INTS, "__xor__", method=False, export="bitwise_xor"),
    _nondiff("bitwise_not", np.invert, samples(((np.array([1, -2, 0]),), {}), ((np.array([True, False]),), {})),
             "__invert__", method=False, export="bitwise_not"),
    _nondiff("logical_and", np.logical_and, binary_samples(), export="logical_and"),
    _nondiff("logical_or", np.logical_or, binary_samples(), export="logical_or"),
    _nondiff("logical_not", np.logical_not, unary_samples(), export="logical_not"),
    _nondiff("isnan", np.isnan, _FLAGS, export="isnan"), _nondiff("isinf", np.isinf, _FLAGS, export="isinf"),
    _nondiff("isfinite", np.isfinite, _FLAGS, export="isfinite"),
    _nondiff("any", lambda x, dim=None, keepdim=False: np.any(x, axis=dim, keepdims=keepdim), _BOOLS,
             ref_torch=None, export="any"),
    _nondiff("all", lambda x, dim=None, keepdim=False: np.all(x, axis=dim, keepdims=keepdim), _BOOLS,
             ref_torch=None, export="all"),
    _nondiff("equal", lambda a, b: a.shape == b.shape and bool((a == b).all()),
             samples(((np.array([1.0, 2.0]), np.array([1.0, 2.0])), {}),
                     ((np.array([1.0, 2.0]), np.array([1.0, 2.5])), {}),
                     ((np.array([1.0, 2.0]), np.array([[1.0, 2.0]])), {}))),
    _nondiff("allclose", np.allclose, samples(((np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9])), {}),
                                             ((np.array([1.0, 2.0]), np.array([1.0, 2.1])), {}))),
]

ENTRIES = ELEMENTWISE + REDUCTIONS + LINALG + SHAPE + INDEXING + SOFTMAX + NONDIFF
