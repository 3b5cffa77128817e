"""Op table entries of the ops added for PyTorch API coverage: more elementwise math
(``math_extra``), shape and indexing ops (``shape_extra``), sorting (``sorting``),
cumulative ops (``scan``), einsum and the matrix products (``einsum``), norms and
more reductions (``reduction_extra``). See ``deepseek.ops.registry``.
"""
import importlib
import math

import numpy as np

from . import math_extra as M, shape_extra as SX, sorting as SO, scan as SC
from . import reduction_extra as RX, shape as S, indexing as I, reduction as R, linalg as L
from . import elementwise as E
from .opinfo import Shape, FLOATING, OpInfo, unary_samples, binary_samples, samples
from ._table_core import _to_float, _bool, _int64, _erf, chain

# (``deepseek.ops.einsum`` the attribute is the function, which shadows the module)
ES = importlib.import_module("deepseek.ops.einsum")
_F = ("float32", "float64")


def _composite_only(policy):
    """A CPU autocast policy for a composite op only: ``policy`` when autocast asks for
    the op itself (``deepseek.amp.autocast_mode.composite_inputs``, kwargs key
    ``_autocast_composite``), 'none' for the Function it lists first, which other ops
    share (trace's Diagonal, cdist's VectorNorm)."""
    return lambda args, kwargs: policy if kwargs.get("_autocast_composite") else "none"


def _u(name, op, fn, ref, low=-2.0, high=2.0, inplace=True, dtypes=FLOATING + ("int64",),
       out_dtype=_to_float, torch_name=None, **kw):
    tn = torch_name or name
    return OpInfo(name, op, fn, methods=(name,), inplace=(name + "_",) if inplace else (),
                  sample_inputs=unary_samples(low, high), ref_numpy=ref,
                  ref_torch=lambda t, x, tn=tn: getattr(t, tn)(x), dtypes=dtypes, out_dtype=out_dtype, **kw)


def _erfinv_np(y):
    x = np.zeros_like(y)
    for _ in range(60):  # Newton on math.erf: enough for |y| < 0.9
        x = x - (_erf(x) - y) / (2 / math.sqrt(math.pi) * np.exp(-x * x))
    return x


_SAME = None  # out_dtype: the input's dtype

UNARY = [
    _u("tan", M.tan, M.Tan, np.tan, -1.2, 1.2, export="tan"),
    _u("asin", M.asin, M.Asin, np.arcsin, -0.9, 0.9, dtypes=FLOATING, export="asin"),
    _u("acos", M.acos, M.Acos, np.arccos, -0.9, 0.9, dtypes=FLOATING, export="acos"),
    _u("atan", M.atan, M.Atan, np.arctan, export="atan"),
    _u("sinh", M.sinh, M.Sinh, np.sinh, export="sinh"),
    _u("cosh", M.cosh, M.Cosh, np.cosh, export="cosh"),
    _u("asinh", M.asinh, M.Asinh, np.arcsinh, export="asinh"),
    _u("acosh", M.acosh, M.Acosh, np.arccosh, 1.2, 3.0, export="acosh"),
    _u("atanh", M.atanh, M.Atanh, np.arctanh, -0.9, 0.9, dtypes=FLOATING, export="atanh"),
    _u("log2", M.log2, M.Log2, np.log2, 0.2, 3.0, autocast="fp32", autocast_cpu="none", export="log2"),
    _u("log10", M.log10, M.Log10, np.log10, 0.2, 3.0, autocast="fp32", autocast_cpu="none", export="log10"),
    _u("log1p", M.log1p, M.Log1p, np.log1p, -0.5, 3.0, autocast="fp32", autocast_cpu="none", export="log1p"),
    _u("exp2", M.exp2, M.Exp2, np.exp2, autocast="fp32", autocast_cpu="none", export="exp2"),
    _u("expm1", M.expm1, M.Expm1, np.expm1, autocast="fp32", autocast_cpu="none", export="expm1"),
    _u("reciprocal", M.reciprocal, M.Reciprocal, lambda x: 1 / x, 0.5, 2.0, autocast="fp32", autocast_cpu="none", export="reciprocal"),
    _u("erf", M.erf, M.Erf, _erf, tol=(1e-6, 1e-7), export="erf"),
    _u("erfc", M.erfc, M.Erfc, lambda x: 1 - _erf(x), tol=(1e-6, 1e-7), export="erfc"),
    _u("erfinv", M.erfinv, M.Erfinv, _erfinv_np, -0.8, 0.8, dtypes=FLOATING, tol=(1e-6, 1e-7)),
    _u("frac", M.frac, M.Frac, lambda x: x - np.trunc(x), dtypes=FLOATING, out_dtype=_SAME, export="frac"),
    _u("floor", M.floor, M.Floor, np.floor, out_dtype=_SAME, export="floor"),
    _u("ceil", M.ceil, M.Ceil, np.ceil, out_dtype=_SAME, export="ceil"),
    _u("trunc", M.trunc, M.Trunc, np.trunc, out_dtype=_SAME, aliases=("fix",), export="trunc"),
    OpInfo("round", M.round, M.Round, methods=("round",), inplace=("round_",),
           sample_inputs=chain(unary_samples(-3, 3), samples(
               ((Shape((3, 4), -30, 30),), {"decimals": 1}, "decimals=1"))),
           ref_numpy=lambda x, decimals=0: np.round(x, decimals),
           ref_torch=lambda t, x, **k: t.round(x, **k),
           dtypes=("float32", "float64", "int64"), export="round"),  # decimals= in half precision rounds half-way values
]

# (integer operands and exact multiples, where the gradient jumps, are in tests/test_api_ops.py)
_MODS = samples(((np.array([5.5, -5.5, 5.5, -5.5, 3.2]), np.array([2.0, 2.0, -2.0, -2.0, 1.5])), {}, "signs"),
                ((Shape((2, 3), -4, 4), Shape((3,), 0.5, 2)), {}, "broadcast"),
                ((Shape((2, 3), -4, 4), 1.5), {}, "scalar"))


def _bin(name, op, fn, ref, low=-2.0, high=2.0, methods=True, inplace=True, **kw):
    kw.setdefault("sample_inputs", binary_samples(low, high, scalar=kw.pop("scalar", 1.5)))
    kw.setdefault("ref_torch", lambda t, a, b, name=name: getattr(t, name)(a, b))
    return OpInfo(name, op, fn, methods=(name,) if methods else (),
                  inplace=(name + "_",) if inplace else (), ref_numpy=ref, **kw)


BINARY = [
    _bin("fmod", M.fmod, M.Fmod, np.fmod, sample_inputs=_MODS, dtypes=FLOATING + ("int64",),
         gradcheck_kw={"eps": 1e-6}, export="fmod"),
    _bin("remainder", M.remainder, M.Remainder, np.remainder, sample_inputs=_MODS,
         operators=("__mod__",), reflected=("__rmod__",), inplace=("remainder_", "__imod__"),
         dtypes=FLOATING + ("int64",), gradcheck_kw={"eps": 1e-6}, export="remainder"),
    _bin("copysign", M.copysign, M.Copysign, np.copysign, dtypes=FLOATING, out_dtype=None, export="copysign"),
    _bin("logaddexp", M.logaddexp, M.Logaddexp, np.logaddexp, inplace=False, dtypes=FLOATING, autocast="fp32", autocast_cpu="none",
         scalar=None, export="logaddexp"),
    _bin("logaddexp2", M.logaddexp2, M.Logaddexp2, np.logaddexp2, inplace=False, dtypes=FLOATING, scalar=None,
         export="logaddexp2"),
    _bin("atan2", M.atan2, M.Atan2, np.arctan2, aliases=("arctan2",), dtypes=FLOATING, low=0.3, high=2.0,
         scalar=None, export="atan2"),
    _bin("hypot", M.hypot, M.Hypot, np.hypot, dtypes=FLOATING, low=0.3, high=2.0, scalar=None, export="hypot"),
    OpInfo("lerp", M.lerp, M.Lerp, methods=("lerp",), inplace=("lerp_",),
           sample_inputs=samples(((Shape((2, 3)), Shape((2, 3)), 0.3), {}, "scalar weight"),
                                 ((Shape((2, 3)), Shape((3,)), Shape((2, 3), 0, 1)), {}, "tensor weight"),
                                 ((Shape((3, 4)), Shape((3, 4)), 0.7), {}, "noncontiguous", True)),
           ref_numpy=lambda s, e, w: s + w * (e - s), ref_torch=lambda t, s, e, w: t.lerp(s, e, w),
           dtypes=FLOATING, export="lerp"),
    OpInfo("isclose", M.isclose, methods=("isclose",), differentiable=False,
           sample_inputs=samples(((np.array([1.0, 2.0, np.nan, 1e-9]), np.array([1.0 + 1e-7, 2.1, np.nan, 0.0])), {}),
                                 ((np.array([1.0, np.nan]), np.array([1.0, np.nan])), {"equal_nan": True}),
                                 ((np.array([1.0, 1.5]), np.array([1.1, 1.5])), {"rtol": 0.2})),
           ref_numpy=np.isclose, ref_torch=lambda t, a, b, **k: t.isclose(a, b, **k), dtypes=(), out_dtype=_bool,
           export="isclose"),
    OpInfo("nan_to_num", M.nan_to_num, (E.Where,), methods=("nan_to_num",),
           sample_inputs=samples(((np.array([1.0, np.nan, np.inf, -np.inf]),), {}),
                                 ((np.array([1.0, np.nan, np.inf, -np.inf]),), {"nan": 2.0, "posinf": 9.0, "neginf": -9.0})),
           ref_numpy=lambda x, **k: np.nan_to_num(x, **k), ref_torch=lambda t, x, **k: t.nan_to_num(x, **k),
           dtypes=("float64",)),  # the default bounds are the dtype's: numpy's float64 ones here
    OpInfo("float_power", M.float_power, (E.Pow, S.Cast), methods=("float_power",),
           sample_inputs=samples(((Shape((2, 3), 0.5, 2), Shape((2, 3))), {}), ((Shape((3,), 0.5, 2), 2), {})),
           ref_numpy=np.float_power, ref_torch=lambda t, a, b: t.float_power(a, b), dtypes=_F,
           out_dtype=lambda d: "float64"),
]


def _sh(name, op, fn, items, ref, tref, method=True, dtypes=FLOATING + ("int64",), **kw):
    return OpInfo(name, op, fn, methods=(name,) if method else (), sample_inputs=samples(*items),
                  ref_numpy=ref, ref_torch=tref, dtypes=dtypes, **kw)


def _np_unfold(x, d, size, step):
    idx = np.arange(0, x.shape[d] - size + 1, step)[:, None] + np.arange(size)
    return np.moveaxis(np.take(x, idx, axis=d), d + 1, -1)


def _np_scatter(x, dim, idx, src, add=False):
    out = x.copy()
    for pos in np.ndindex(*idx.shape):
        tgt = list(pos)
        tgt[dim] = idx[pos]
        v = src[pos] if isinstance(src, np.ndarray) else src
        if add:
            out[tuple(tgt)] += v
        else:
            out[tuple(tgt)] = v
    return out


def _np_index_add(x, dim, idx, src, alpha=1):
    out = np.moveaxis(x.copy(), dim, 0)
    np.add.at(out, idx, alpha * np.moveaxis(src, dim, 0))
    return np.moveaxis(out, 0, dim)


_SIDX = np.array([[0, 2, 1, 0], [2, 0, 0, 1]])
SHAPE = [
    _sh("flip", SX.flip, SX.Flip, [((Shape((2, 3, 4)), (0, 2)), {}), ((Shape((3,)), 0), {}), ((Shape((2, 3)), (-1,)), {}),
                                   ((Shape((3, 4)), (0,)), {}, "noncontiguous", True)],
        lambda x, d: np.flip(x, d), lambda t, x, d: t.flip(x, (d,) if isinstance(d, int) else d), export="flip"),
    _sh("fliplr", SX.fliplr, SX.Flip, [((Shape((2, 3)),), {})], np.fliplr, lambda t, x: t.fliplr(x)),
    _sh("flipud", SX.flipud, SX.Flip, [((Shape((2, 3)),), {})], np.flipud, lambda t, x: t.flipud(x)),
    _sh("roll", SX.roll, SX.Roll, [((Shape((2, 3, 4)), (1, -2), (0, 2)), {}), ((Shape((3, 4)), 5), {}, "flat"),
                                   ((Shape((3, 4)), 1, 1), {})],
        lambda x, s, d=None: np.roll(x, s, d), lambda t, x, *a: t.roll(x, *a), export="roll"),
    _sh("narrow", SX.narrow, I.Getitem, [((Shape((4, 5)), 1, 1, 3), {}), ((Shape((4, 5)), 0, -2, 2), {})],
        lambda x, d, s, n: np.take(x, np.arange(s % x.shape[d], s % x.shape[d] + n), axis=d),
        lambda t, x, *a: x.narrow(*a)),
    _sh("diagonal", SX.diagonal, SX.Diagonal,
        [((Shape((3, 4)),), {}), ((Shape((3, 4)), 1), {}), ((Shape((2, 3, 4)), -1, 1, 2), {}), ((Shape((4, 3)), 0, 1, 0), {})],
        lambda x, o=0, a=0, b=1: np.diagonal(x, o, a, b), lambda t, x, *a: t.diagonal(x, *a)),
    _sh("diag", SX.diag, (SX.DiagEmbed, SX.Diagonal), [((Shape((3,)),), {}), ((Shape((3,)), -1), {}), ((Shape((3, 4)), 1), {})],
        lambda x, k=0: np.diag(x, k), lambda t, x, *a: t.diag(x, *a)),
    OpInfo("trace", SX.trace, (SX.Diagonal, R.Sum), methods=("trace",), autocast_cpu=_composite_only("fp32"), sample_inputs=samples(((Shape((3, 4)),), {})),
           ref_numpy=np.trace, ref_torch=lambda t, x: t.trace(x)),
    _sh("unfold", SX.unfold, (SX.TakeAlong, S.Permute), [((Shape((2, 7)), 1, 3, 2), {}), ((Shape((5, 2)), 0, 2, 1), {})],
        _np_unfold, lambda t, x, *a: x.unfold(*a), method=True),
    _sh("repeat_interleave", SX.repeat_interleave, (SX.TakeAlong, S.Reshape),
        [((Shape((2, 3)), 2), {}), ((Shape((2, 3)), 2, 1), {}), ((Shape((3, 2)), np.array([1, 0, 2]), 0), {})],
        lambda x, r, dim=None: np.repeat(x, r, axis=dim), lambda t, x, *a: t.repeat_interleave(x, *a)),
    _sh("masked_select", SX.masked_select, (I.Getitem, S.Expand),
        [((Shape((2, 3)), np.array([[True, False, True], [False, False, True]])), {}),
         ((Shape((2, 3)), np.array([True, False, True])), {}, "broadcast")],
        lambda x, m: np.broadcast_to(x, np.broadcast_shapes(x.shape, m.shape))[np.broadcast_to(m, np.broadcast_shapes(x.shape, m.shape))],
        lambda t, x, m: t.masked_select(x, m)),
    _sh("index_select", SX.index_select, SX.TakeAlong,
        [((Shape((4, 3)), 0, np.array([0, 3, 3])), {}), ((Shape((4, 3)), 1, np.array([2, 0])), {})],
        lambda x, d, i: np.take(x, i, axis=d), lambda t, x, d, i: t.index_select(x, d, i), export="take_along"),
    _sh("movedim", SX.movedim, S.Permute, [((Shape((2, 3, 4)), 0, 2), {}), ((Shape((2, 3, 4)), (0, 1), (2, 0)), {})],
        np.moveaxis, lambda t, x, s, d: t.movedim(x, s, d), aliases=("moveaxis",)),
    _sh("swapaxes", SX.swapaxes, S.Permute, [((Shape((2, 3, 4)), 0, 2), {})], np.swapaxes,
        lambda t, x, a, b: t.swapaxes(x, a, b), aliases=("swapdims",)),
    _sh("tile", SX.tile, (S.Reshape, S.Expand), [((Shape((2, 3)), (2, 1)), {}), ((Shape((3,)), (2, 2)), {})],
        np.tile, lambda t, x, d: t.tile(x, d)),
    OpInfo("hstack", SX.hstack, S.Cat, sample_inputs=samples(((Shape((2, 3)), Shape((2, 1))), {}), ((Shape((3,)), Shape((2,))), {})),
           ref_numpy=lambda *a: np.hstack(a), ref_torch=lambda t, *a: t.hstack(a), call=lambda *a: SX.hstack(list(a))),
    OpInfo("vstack", SX.vstack, (S.Cat, S.Reshape), aliases=("row_stack",),
           sample_inputs=samples(((Shape((2, 3)), Shape((1, 3))), {}), ((Shape((3,)), Shape((3,))), {})),
           ref_numpy=lambda *a: np.vstack(a), ref_torch=lambda t, *a: t.vstack(a), call=lambda *a: SX.vstack(list(a))),
    OpInfo("dstack", SX.dstack, (S.Cat, S.Reshape), sample_inputs=samples(((Shape((2, 3)), Shape((2, 3))), {})),
           ref_numpy=lambda *a: np.dstack(a), ref_torch=lambda t, *a: t.dstack(a), call=lambda *a: SX.dstack(list(a))),
    OpInfo("column_stack", SX.column_stack, (S.Cat, S.Reshape), sample_inputs=samples(((Shape((3,)), Shape((3, 2))), {})),
           ref_numpy=lambda *a: np.column_stack(a), ref_torch=lambda t, *a: t.column_stack(a),
           call=lambda *a: SX.column_stack(list(a))),
    OpInfo("unbind", SX.unbind, I.Getitem, methods=("unbind",), sample_inputs=samples(((Shape((3, 2)),), {}), ((Shape((3, 2)), 1), {})),
           ref_numpy=lambda x, d=0: tuple(np.moveaxis(x, d, 0)), ref_torch=lambda t, x, *a: t.unbind(x, *a)),
    OpInfo("tensor_split", SX.tensor_split, I.Getitem, methods=("tensor_split",),
           sample_inputs=samples(((Shape((7, 2)), 3), {}), ((Shape((2, 7)), [1, 5], 1), {})),
           ref_numpy=lambda x, s, d=0: tuple(np.array_split(x, s, axis=d)),
           ref_torch=lambda t, x, *a: t.tensor_split(x, *a)),
    _sh("take_along_dim", SX.take_along_dim, (I.Gather, S.Expand, S.Reshape),
        [((Shape((3, 4)), np.array([[0, 3], [1, 1], [2, 0]]), 1), {}), ((Shape((3, 4)), np.array([[0], [2]]) , 0), {}, "broadcast"),
         ((Shape((3, 4)), np.array([0, 11])), {}, "flat")],
        lambda x, i, d=None: np.take_along_axis(x.reshape(-1) if d is None else x, i.reshape(-1) if d is None else i,
                                                0 if d is None else d),
        lambda t, x, i, *a: t.take_along_dim(x, i, *a)),
    OpInfo("scatter", SX.scatter, SX.Scatter, methods=("scatter",), inplace=("scatter_",),
           sample_inputs=samples(((Shape((3, 4)), 0, np.array([[0, 2, 1, 0]]), Shape((1, 4))), {}),
                                 ((Shape((3, 4)), 1, np.array([[3], [0], [1]]), 2.5), {}, "scalar")),
           ref_numpy=_np_scatter, ref_torch=lambda t, x, d, i, s: t.scatter(x, d, i, s), export="scatter"),
    OpInfo("scatter_add", SX.scatter_add, SX.Scatter, methods=("scatter_add",), inplace=("scatter_add_",),
           sample_inputs=samples(((Shape((3, 4)), 0, _SIDX, Shape((2, 4))), {}),
                                 ((Shape((3, 4)), 1, np.array([[3, 3], [0, 1], [1, 1]]), Shape((3, 2))), {})),
           ref_numpy=lambda x, d, i, s: _np_scatter(x, d, i, s, True),
           ref_torch=lambda t, x, d, i, s: t.scatter_add(x, d, i, s)),
    OpInfo("index_add", SX.index_add, (SX.Scatter, E.Mul), methods=("index_add",), inplace=("index_add_",),
           sample_inputs=samples(((Shape((4, 3)), 0, np.array([0, 2, 0]), Shape((3, 3))), {}),
                                 ((Shape((4, 3)), 1, np.array([2, 2]), Shape((4, 2))), {"alpha": 2.0})),
           ref_numpy=_np_index_add, ref_torch=lambda t, x, d, i, s, **k: t.index_add(x, d, i, s, **k)),
    OpInfo("index_fill", SX.index_fill, I.IndexPut, methods=("index_fill",), inplace=("index_fill_",),
           sample_inputs=samples(((Shape((4, 3)), 0, np.array([0, 2]), -1.0), {}), ((Shape((4, 3)), 1, np.array([1]), 2.0), {})),
           ref_numpy=lambda x, d, i, v: _np_scatter(x, d, np.broadcast_to(np.expand_dims(i, 1 - d), tuple(
               len(i) if k == d else x.shape[k] for k in range(2))), v),
           ref_torch=lambda t, x, d, i, v: t.index_fill(x, d, i, v)),
    OpInfo("index_copy", SX.index_copy, I.IndexPut, methods=("index_copy",), inplace=("index_copy_",), autocast="promote",
           sample_inputs=samples(((Shape((4, 3)), 0, np.array([3, 1]), Shape((2, 3))), {})),
           ref_numpy=lambda x, d, i, s: _np_scatter(x, d, np.broadcast_to(i[:, None], s.shape), s),
           ref_torch=lambda t, x, d, i, s: t.index_copy(x, d, i, s)),
    OpInfo("meshgrid", SX.meshgrid, (S.Reshape, S.Expand),
           sample_inputs=samples(((Shape((3,)), Shape((4,))), {}), ((Shape((3,)), Shape((4,))), {"indexing": "xy"})),
           ref_numpy=lambda *a, indexing="ij": tuple(np.meshgrid(*a, indexing=indexing)),
           ref_torch=lambda t, *a, **k: t.meshgrid(*a, **k), call=lambda *a, **k: SX.meshgrid(*a, **k)),
]


def _np_sort(x, dim=-1, descending=False):
    idx = np.argsort(-x if descending else x, axis=dim, kind="stable")
    return np.take_along_axis(x, idx, dim), idx


def _np_topk(x, k, dim=-1, largest=True):
    v, i = _np_sort(x, dim, largest)
    sl = (slice(None),) * (dim % x.ndim) + (slice(0, k),)
    return v[sl], i[sl]


def _np_kth(x, k, dim=-1, keepdim=False):
    v, i = _np_sort(x, dim)
    d = dim % x.ndim
    sl = (slice(None),) * d + ((slice(k - 1, k),) if keepdim else (k - 1,))
    return v[sl], i[sl]


def _np_median(x, dim=None, keepdim=False):
    if dim is None:
        return np.sort(x.reshape(-1))[(x.size - 1) // 2]
    return _np_kth(x, (x.shape[dim] - 1) // 2 + 1, dim, keepdim)


# distinct values (no ties) so the indices are unambiguous
_DISTINCT = samples(((np.array([[0.3, -1.2, 2.5, 0.7], [1.1, 0.0, -0.4, 3.3], [-2.2, 1.9, 0.8, -0.9]]),), {}))


def _with(extra):
    base = np.array([[0.3, -1.2, 2.5, 0.7], [1.1, 0.0, -0.4, 3.3], [-2.2, 1.9, 0.8, -0.9]])
    return samples(*[((base,) + tuple(a), k) for a, k in extra])


SORTING = [
    OpInfo("sort", SO.sort, SO.Sort, methods=("sort",),
           sample_inputs=_with([((), {}), ((0,), {}), ((1,), {"descending": True})]),
           ref_numpy=_np_sort, ref_torch=lambda t, x, *a, **k: t.sort(x, *a, **k), dtypes=FLOATING + ("int64",), export="sort"),
    OpInfo("argsort", SO.argsort, methods=("argsort",), differentiable=False,
           sample_inputs=_with([((), {}), ((0,), {"descending": True})]),
           ref_numpy=lambda x, dim=-1, descending=False: _np_sort(x, dim, descending)[1],
           ref_torch=lambda t, x, *a, **k: t.argsort(x, *a, **k), dtypes=FLOATING + ("int64",), out_dtype=_int64),
    OpInfo("msort", SO.msort, SO.Sort, methods=("msort",), sample_inputs=_DISTINCT,
           ref_numpy=lambda x: np.sort(x, 0), ref_torch=lambda t, x: t.msort(x)),
    OpInfo("topk", SO.topk, (SO.Sort, I.Getitem), methods=("topk",),
           sample_inputs=_with([((2,), {}), ((2, 0), {"largest": False}), ((4, 1), {})]),
           ref_numpy=_np_topk, ref_torch=lambda t, x, *a, **k: t.topk(x, *a, **k), dtypes=FLOATING + ("int64",)),
    OpInfo("kthvalue", SO.kthvalue, (SO.Sort, I.Getitem), methods=("kthvalue",),
           sample_inputs=_with([((2,), {}), ((1, 0), {"keepdim": True})]),
           ref_numpy=_np_kth, ref_torch=lambda t, x, *a, **k: t.kthvalue(x, *a, **k)),
    OpInfo("median", SO.median, (SO.Sort, I.Getitem), methods=("median",),
           sample_inputs=_with([((), {}), ((1,), {}), ((0,), {"keepdim": True})]),
           ref_numpy=_np_median, ref_torch=lambda t, x, *a, **k: t.median(x, *a, **k), dtypes=FLOATING + ("int64",)),
    OpInfo("unique", SO.unique, methods=("unique",), differentiable=False,
           sample_inputs=samples(((np.array([3, 1, 3, 2, 1]),), {}), ((np.array([[2.0, 1.0], [2.0, 5.0]]),), {"return_counts": True}),
                                 ((np.array([3, 1, 3]),), {"return_inverse": True})),
           ref_numpy=lambda x, return_inverse=False, return_counts=False: np.unique(
               x, return_inverse=return_inverse, return_counts=return_counts),
           ref_torch=lambda t, x, **k: t.unique(x, **k), dtypes=()),
    OpInfo("unique_consecutive", SO.unique_consecutive, methods=("unique_consecutive",), differentiable=False,
           sample_inputs=samples(((np.array([1, 1, 2, 2, 3, 1, 1]),), {"return_counts": True})),
           ref_numpy=lambda x, return_counts=False: (np.array([1, 2, 3, 1]), np.array([2, 2, 1, 2])),
           ref_torch=lambda t, x, **k: t.unique_consecutive(x, **k), dtypes=()),
    OpInfo("nonzero", SO.nonzero, methods=("nonzero",), differentiable=False,
           sample_inputs=samples(((np.array([[0.0, 1.5], [2.0, 0.0]]),), {}), ((np.array([0, 3, 0, 1]),), {})),
           ref_numpy=lambda x: np.argwhere(x), ref_torch=lambda t, x: t.nonzero(x), dtypes=(), out_dtype=_int64),
    OpInfo("argwhere", SO.argwhere, methods=("argwhere",), differentiable=False,
           sample_inputs=samples(((np.array([[0.0, 1.5], [2.0, 0.0]]),), {})),
           ref_numpy=np.argwhere, ref_torch=lambda t, x: t.argwhere(x), dtypes=()),
    OpInfo("searchsorted", SO.searchsorted, differentiable=False,
           sample_inputs=samples(((np.array([1.0, 3.0, 5.0, 7.0]), np.array([[3.0, 6.0, 9.0], [0.0, 1.0, 7.0]])), {}),
                                 ((np.array([1.0, 3.0, 5.0, 7.0]), np.array([3.0, 7.0])), {"right": True}),
                                 ((np.array([[1.0, 3.0], [2.0, 4.0]]), np.array([[2.0], [5.0]])), {}, "batched")),
           ref_numpy=lambda s, v, right=False: np.searchsorted(s, v, "right" if right else "left") if s.ndim == 1 else
           np.stack([np.searchsorted(a, b, "right" if right else "left") for a, b in zip(s, v)]),
           ref_torch=lambda t, s, v, **k: t.searchsorted(s, v, **k), dtypes=(), out_dtype=_int64),
    OpInfo("bucketize", SO.bucketize, differentiable=False,
           sample_inputs=samples(((np.array([[3.0, 6.0, 9.0]]), np.array([1.0, 3.0, 5.0, 7.0])), {}),
                                 ((np.array([3.0, 7.0]), np.array([1.0, 3.0, 5.0, 7.0])), {"right": True})),
           ref_numpy=lambda x, b, right=False: np.searchsorted(b, x, "right" if right else "left"),
           ref_torch=lambda t, x, b, **k: t.bucketize(x, b, **k), dtypes=(), out_dtype=_int64),
    OpInfo("bincount", SO.bincount, methods=("bincount",), differentiable=False,
           sample_inputs=samples(((np.array([0, 2, 2, 5]),), {}), ((np.array([1, 1, 3]), np.array([0.5, 1.0, 2.0])), {}),
                                 ((np.array([1]),), {"minlength": 4})),
           ref_numpy=lambda x, w=None, minlength=0: np.bincount(x, w, minlength),
           ref_torch=lambda t, x, *a, **k: t.bincount(x, *a, **k), dtypes=()),
    OpInfo("count_nonzero", SO.count_nonzero, methods=("count_nonzero",), differentiable=False,
           sample_inputs=samples(((np.array([[0.0, 1.5], [2.0, 0.0], [3.0, 1.0]]),), {}),
                                 ((np.array([[0.0, 1.5], [2.0, 0.0], [3.0, 1.0]]), 0), {})),
           ref_numpy=lambda x, dim=None: np.count_nonzero(x, axis=dim), ref_torch=lambda t, x, *a: t.count_nonzero(x, *a),
           dtypes=(), out_dtype=_int64, export="count_nonzero"),
    OpInfo("histc", SO.histc, methods=("histc",), differentiable=False,
           sample_inputs=samples(((np.array([1.0, 2.0, 1.0, 2.5, 4.0]),), {"bins": 4, "min": 0, "max": 3}),
                                 ((np.array([1.0, 2.0, 1.0, 2.5, 4.0]),), {"bins": 3})),
           ref_numpy=lambda x, bins=100, min=0, max=0: np.histogram(
               x, bins, (min, max) if min != max else (x.min(), x.max()))[0].astype(x.dtype),
           ref_torch=lambda t, x, **k: t.histc(x, **k), dtypes=()),
]


def _np_cumext(x, dim, fn):
    xm = np.moveaxis(x, dim, 0)
    vals, idx = np.empty_like(xm), np.zeros(xm.shape, np.int64)
    cur, ci = xm[0], np.zeros(xm.shape[1:], np.int64)
    for i in range(xm.shape[0]):
        take = fn(xm[i], cur) | (xm[i] == cur)
        cur, ci = np.where(take, xm[i], cur), np.where(take, i, ci)
        vals[i], idx[i] = cur, ci
    return np.moveaxis(vals, 0, dim), np.moveaxis(idx, 0, dim)


_SCAN = samples(((Shape((3, 4)), 1), {}), ((Shape((3, 4)), 0), {}), ((Shape((2, 3, 2)), -1), {}),
                ((Shape((3, 4)), 1), {}, "noncontiguous", True), ((Shape((0, 3)), 1), {}, "empty"))
SCAN = [
    OpInfo("cumsum", SC.cumsum, SC.Cumsum, methods=("cumsum",), inplace=("cumsum_",), sample_inputs=_SCAN,
           ref_numpy=lambda x, d: np.cumsum(x, d), ref_torch=lambda t, x, d: t.cumsum(x, d),
           dtypes=FLOATING + ("int64",), autocast="fp32", autocast_cpu="none", export="cumsum"),
    OpInfo("cumprod", SC.cumprod, SC.Cumprod, methods=("cumprod",), inplace=("cumprod_",),
           sample_inputs=chain(_SCAN, samples(((np.array([[1.5, 0.0, 2.0, 0.0], [0.5, 2.0, 0.0, 3.0]]), 1), {}, "zeros"))),
           ref_numpy=lambda x, d: np.cumprod(x, d), ref_torch=lambda t, x, d: t.cumprod(x, d),
           dtypes=FLOATING + ("int64",), autocast="fp32", autocast_cpu="none"),
    OpInfo("cummax", SC.cummax, SC.CumExtreme, methods=("cummax",),
           sample_inputs=_SCAN,  # ties (the latest index wins): tests/test_api_ops.py
           ref_numpy=lambda x, d: _np_cumext(x, d, np.greater), ref_torch=lambda t, x, d: t.cummax(x, d),
           dtypes=FLOATING + ("int64",)),
    OpInfo("cummin", SC.cummin, SC.CumExtreme, methods=("cummin",),
           sample_inputs=_SCAN,
           ref_numpy=lambda x, d: _np_cumext(x, d, np.less), ref_torch=lambda t, x, d: t.cummin(x, d),
           dtypes=FLOATING + ("int64",)),
    OpInfo("logcumsumexp", SC.logcumsumexp, SC.Logcumsumexp, methods=("logcumsumexp",), autocast="fp32", autocast_cpu="none",
           sample_inputs=chain(_SCAN, samples(((np.array([[-300.0, 0.0, 300.0, 1.0]]), 1), {}, "wide range"))),
           ref_numpy=lambda x, d: np.logaddexp.accumulate(x, d), ref_torch=lambda t, x, d: t.logcumsumexp(x, d),
           dtypes=FLOATING),
]


def _es(eq, *shapes, name=None):
    return ((eq,) + tuple(Shape(s) for s in shapes), {}, name or eq)


PRODUCTS = [
    OpInfo("einsum", ES.einsum, ES.Einsum, autocast="lower", autocast_cpu=ES.einsum_cpu_policy,
           sample_inputs=samples(_es("ij,jk->ik", (2, 3), (3, 4)), _es("bij,bjk->bik", (2, 2, 3), (2, 3, 4)),
                                 _es("ii->i", (3, 3)), _es("ii", (3, 3)), _es("i,j->ij", (3,), (4,)),
                                 _es("...ij,...jk", (2, 2, 3), (3, 4)), _es("ij->", (2, 3)),
                                 _es("ij,jk,kl->il", (2, 3), (3, 4), (4, 2)), _es("iij->ji", (3, 3, 2))),
           ref_numpy=np.einsum, ref_torch=lambda t, eq, *a: t.einsum(eq, *a), dtypes=FLOATING, export="einsum"),
    OpInfo("mm", ES.mm, L.Matmul, methods=("mm",), autocast="lower", sample_inputs=samples(((Shape((3, 4)), Shape((4, 2))), {})),
           ref_numpy=np.matmul, ref_torch=lambda t, a, b: t.mm(a, b)),
    OpInfo("bmm", ES.bmm, L.Matmul, methods=("bmm",), autocast="lower",
           sample_inputs=samples(((Shape((2, 3, 4)), Shape((2, 4, 2))), {})),
           ref_numpy=np.matmul, ref_torch=lambda t, a, b: t.bmm(a, b)),
    OpInfo("mv", ES.mv, ES.MatVec, methods=("mv",), autocast="lower", autocast_cpu="none", sample_inputs=samples(((Shape((3, 4)), Shape((4,))), {})),
           ref_numpy=np.matmul, ref_torch=lambda t, a, b: t.mv(a, b), export="matmul"),
    OpInfo("dot", ES.dot, ES.MatVec, methods=("dot",), aliases=("vdot",), autocast="lower", autocast_cpu="none",
           sample_inputs=samples(((Shape((4,)), Shape((4,))), {})), ref_numpy=np.dot, ref_torch=lambda t, a, b: t.dot(a, b)),
    OpInfo("inner", ES.inner, ES.Einsum, methods=("inner",),
           sample_inputs=samples(((Shape((2, 3)), Shape((4, 3))), {}), ((Shape((3,)), Shape((3,))), {})),
           ref_numpy=np.inner, ref_torch=lambda t, a, b: t.inner(a, b)),
    OpInfo("outer", ES.outer, (E.Mul, S.Reshape), methods=("outer",), aliases=("ger",),
           sample_inputs=samples(((Shape((3,)), Shape((4,))), {})), ref_numpy=np.outer,
           ref_torch=lambda t, a, b: t.outer(a, b)),
    OpInfo("addmm", ES.addmm, (L.Matmul, E.Add, E.Mul), methods=("addmm",), autocast="lower",
           sample_inputs=samples(((Shape((3, 2)), Shape((3, 4)), Shape((4, 2))), {}),
                                 ((Shape((2,)), Shape((3, 4)), Shape((4, 2))), {"beta": 0.5, "alpha": 2.0}, "broadcast"),
                                 ((Shape((3, 2)), Shape((3, 4)), Shape((4, 2))), {"beta": 0}, "beta=0")),
           ref_numpy=lambda i, a, b, beta=1, alpha=1: beta * i + alpha * (a @ b) if beta else np.broadcast_to(alpha * (a @ b), np.broadcast_shapes(i.shape, (a.shape[0], b.shape[1]))),
           ref_torch=lambda t, i, a, b, **k: t.addmm(i, a, b, **k)),
    OpInfo("baddbmm", ES.baddbmm, (L.Matmul, E.Add, E.Mul), methods=("baddbmm",), autocast="lower",
           sample_inputs=samples(((Shape((2, 3, 2)), Shape((2, 3, 4)), Shape((2, 4, 2))), {"alpha": 0.5})),
           ref_numpy=lambda i, a, b, beta=1, alpha=1: beta * i + alpha * (a @ b),
           ref_torch=lambda t, i, a, b, **k: t.baddbmm(i, a, b, **k)),
    OpInfo("addmv", ES.addmv, (ES.MatVec, E.Add), methods=("addmv",), autocast="lower", autocast_cpu="none",
           sample_inputs=samples(((Shape((3,)), Shape((3, 4)), Shape((4,))), {})),
           ref_numpy=lambda i, a, b: i + a @ b, ref_torch=lambda t, i, a, b: t.addmv(i, a, b)),
    OpInfo("addbmm", ES.addbmm, (L.Matmul, E.Add, R.Sum), methods=("addbmm",), autocast="lower",
           sample_inputs=samples(((Shape((3, 2)), Shape((2, 3, 4)), Shape((2, 4, 2))), {})),
           ref_numpy=lambda i, a, b: i + (a @ b).sum(0), ref_torch=lambda t, i, a, b: t.addbmm(i, a, b)),
    OpInfo("addr", ES.addr, (E.Mul, E.Add), methods=("addr",),
           sample_inputs=samples(((Shape((3, 4)), Shape((3,)), Shape((4,))), {})),
           ref_numpy=lambda i, a, b: i + np.outer(a, b), ref_torch=lambda t, i, a, b: t.addr(i, a, b)),
    OpInfo("tensordot", ES.tensordot, ES.Einsum,
           sample_inputs=samples(((Shape((2, 3, 4)), Shape((3, 4, 5))), {}), ((Shape((2, 3)), Shape((3, 2)), 1), {}),
                                 ((Shape((2, 3, 4)), Shape((4, 2, 3)), ([1, 2], [2, 0])), {}, "pairs")),
           ref_numpy=lambda a, b, dims=2: np.tensordot(a, b, dims), ref_torch=lambda t, a, b, *d: t.tensordot(a, b, *d)),
    OpInfo("kron", ES.kron, (E.Mul, S.Reshape), methods=("kron",),
           sample_inputs=samples(((Shape((2, 3)), Shape((2, 2))), {}), ((Shape((3,)), Shape((2, 2))), {})),
           ref_numpy=np.kron, ref_torch=lambda t, a, b: t.kron(a, b)),
    OpInfo("cross", ES.cross, (E.Mul, E.Sub, S.Stack), methods=("cross",),
           sample_inputs=samples(((Shape((4, 3)), Shape((4, 3))), {"dim": 1}), ((Shape((3, 2)), Shape((3, 2))), {"dim": 0})),
           ref_numpy=lambda a, b, dim=None: np.cross(a, b, axis=dim), ref_torch=lambda t, a, b, **k: t.cross(a, b, **k)),
]


def _np_norm(x, p="fro", dim=None, keepdim=False):
    p = 2 if p == "fro" else p
    a = np.abs(x)
    if p == float("inf"):
        return a.max(axis=dim, keepdims=keepdim)
    if p == 0:
        return (a != 0).sum(axis=dim, keepdims=keepdim).astype(x.dtype)
    return (a ** p).sum(axis=dim, keepdims=keepdim) ** (1 / p)


REDUCTIONS = [
    OpInfo("norm", RX.norm, RX.VectorNorm, methods=("norm",), autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)), 1, 1), {}), ((Shape((3, 4)), 3, 0, True), {}),
                                 ((Shape((3, 4)), float("inf"), 1), {}), ((Shape((2, 3, 2)), 2, (0, 2)), {}),
                                 ((np.array([[0.0, 0.0], [1.0, 2.0]]), 2, 1), {}, "zero row")),
           ref_numpy=_np_norm, ref_torch=lambda t, x, *a: t.norm(x, *a), dtypes=FLOATING, export="vector_norm"),
    OpInfo("vector_norm", RX.vector_norm, RX.VectorNorm, autocast="fp32", autocast_cpu="none",
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)), 1.5, -1), {})),
           ref_numpy=lambda x, o=2, dim=None: _np_norm(x, o, dim), ref_torch=lambda t, x, *a: t.linalg.vector_norm(x, *a)),
    OpInfo("dist", RX.dist, (RX.VectorNorm, E.Sub), sample_inputs=samples(((Shape((3, 4)), Shape((4,))), {}), ((Shape((3,)), Shape((3,)), 1), {})),
           ref_numpy=lambda a, b, p=2: _np_norm(a - b, p), ref_torch=lambda t, a, b, *p: t.dist(a, b, *p)),
    OpInfo("cdist", RX.cdist, (RX.VectorNorm, E.Sub), autocast="fp32", autocast_cpu=_composite_only("fp32"), sample_inputs=samples(((Shape((3, 2)), Shape((4, 2))), {})),
           ref_numpy=lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)), ref_torch=lambda t, a, b: t.cdist(a, b)),
    OpInfo("var_mean", RX.var_mean, (R.Var, R.Mean),
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)), 1), {"keepdim": True}), ((Shape((3, 4)), 0), {"correction": 0})),
           ref_numpy=lambda x, dim=None, keepdim=False, correction=1: (np.var(x, axis=dim, keepdims=keepdim, ddof=correction),
                                                                       np.mean(x, axis=dim, keepdims=keepdim)),
           ref_torch=lambda t, x, *a, **k: t.var_mean(x, *a, **k)),
    OpInfo("std_mean", RX.std_mean, (R.Var, R.Mean, E.Sqrt),
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)), 1), {"keepdim": True})),
           ref_numpy=lambda x, dim=None, keepdim=False: (np.std(x, axis=dim, keepdims=keepdim, ddof=1),
                                                         np.mean(x, axis=dim, keepdims=keepdim)),
           ref_torch=lambda t, x, *a, **k: t.std_mean(x, *a, **k)),
    OpInfo("nansum", RX.nansum, (R.Sum, E.Where), methods=("nansum",),
           sample_inputs=samples(((np.array([[1.0, np.nan], [2.0, 3.0]]),), {}), ((np.array([[1.0, np.nan], [2.0, 3.0]]), 1), {})),
           ref_numpy=lambda x, dim=None: np.nansum(x, axis=dim), ref_torch=lambda t, x, *a: t.nansum(x, *a)),
    OpInfo("nanmean", RX.nanmean, (R.Sum, E.Where, E.Div), methods=("nanmean",),
           sample_inputs=samples(((np.array([[1.0, np.nan], [2.0, 3.0]]),), {}), ((np.array([[1.0, np.nan], [2.0, 3.0]]), 0), {})),
           ref_numpy=lambda x, dim=None: np.nanmean(x, axis=dim), ref_torch=lambda t, x, *a: t.nanmean(x, *a)),
    OpInfo("aminmax", RX.aminmax, R.AmaxAmin, methods=("aminmax",),
           sample_inputs=samples(((Shape((3, 4)),), {}), ((Shape((3, 4)),), {"dim": 1})),
           ref_numpy=lambda x, dim=None: (np.min(x, axis=dim), np.max(x, axis=dim)),
           ref_torch=lambda t, x, **k: t.aminmax(x, **k)),
]

ENTRIES = UNARY + BINARY + SHAPE + SORTING + SCAN + PRODUCTS + REDUCTIONS
