"""Declarative op checks: run every check an ``OpInfo`` admits, as deepseek tests the
ops of its own table (tests/test_op_table.py)::

    from deepseek.testing import OpInfo, samples, Shape, run_op_checks
    info = OpInfo("my_op", my_op, MyFunction, sample_inputs=samples(((Shape((3, 4)),), {})),
                  ref_numpy=my_numpy_ref, ref_torch=lambda torch, x: torch_ref(x))
    run_op_checks(info)                      # or, one pytest test per check:

    @pytest.mark.parametrize("info,check", op_check_cases([info]), ids=op_check_id)
    def test_my_ops(info, check):
        CHECKS[check](info)

Checks: ``forward_numpy`` (float64, against ``ref_numpy``), ``forward_torch`` (float32
forward and gradients against ``ref_torch``; skipped without PyTorch), ``gradcheck``
(float64 finite differences; never needs PyTorch), ``dtypes`` (every dtype of
``info.dtypes``: output dtype and values), ``inplace`` (in-place variants: result,
version counter, leaf error, gradient, stale saved tensor detection), ``methods``
(the Tensor methods and operators agree with the function and have docstrings).
"""
import numpy as np

from .. import dtypes as _dt
from .._tensor import Tensor
from ..ops.opinfo import FLOATING
from .ops import (assert_close, check_gradients, compare_with_numpy, compare_with_torch,
                  _strided_like, _require_torch)

# (rtol, atol) of the dtypes check: the op in ``dtype`` against float64 math on the
# same (rounded) inputs; loose, since it checks coverage, parity checks precision
_DTYPE_TOLS = {"float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2), "float32": (1e-5, 1e-5),
               "float64": (1e-7, 1e-7)}


def _split(info, s, ref=None):
    """(arrays, deepseek fn of the arrays, reference fn of the arrays): only the
    sample's arrays go through compare_with_* (which would take a tuple-valued dim or
    shape for a shape to draw); the other arguments are put back in place."""
    idx = [i for i, a in enumerate(s.args) if isinstance(a, np.ndarray)]

    def full(arrs):
        args = list(s.args)
        for i, a in zip(idx, arrs):
            args[i] = a
        return args

    ds_fn = lambda *arrs: info(*full(arrs), **s.kwargs)  # noqa: E731
    ref_fn = None if ref is None else (lambda *arrs: ref(*full(arrs), **s.kwargs))
    return [s.args[i] for i in idx], ds_fn, ref_fn


def _floating_arg(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def check_forward_numpy(info):
    """Every sample, in float64, against ``info.ref_numpy``."""
    for s in info.samples():
        try:
            arrays, ds_fn, ref_fn = _split(info, s, info.ref_numpy)
            with np.errstate(all="ignore"):
                compare_with_numpy(ds_fn, ref_fn, arrays, dtype=_dt.float64, rtol=info.tol[0],
                                   atol=info.tol[1], noncontiguous=s.noncontiguous)
        except AssertionError as e:
            raise AssertionError(f"{info.name} {s}: {e}") from None


def check_forward_torch(info):
    """Every sample, in float32, forward and (when differentiable) gradients against
    ``info.ref_torch``; ``unittest.SkipTest`` without PyTorch."""
    torch = _require_torch()
    for s in info.samples():
        try:
            arrays, ds_fn, ref_fn = _split(info, s, lambda *a, **k: info.ref_torch(torch, *a, **k))
            compare_with_torch(ds_fn, ref_fn, arrays, dtype=_dt.float32, backward=info.differentiable,
                               rtol=info.grad_tol[0], atol=info.grad_tol[1], noncontiguous=s.noncontiguous)
        except AssertionError as e:
            raise AssertionError(f"{info.name} {s}: {e}") from None


def check_op_gradients(info):
    """``check_gradients`` (float64 finite differences) on every sample with a floating
    array; PyTorch is not involved."""
    kw = dict(info.gradcheck_kw)
    rg = kw.pop("requires_grad", None)
    ran = 0
    for s in info.samples():
        if not any(_floating_arg(a) for a in s.args):
            continue
        arrays, ds_fn, _ = _split(info, s)
        if rg is not None:  # given per sample argument: keep the arrays' flags
            kw["requires_grad"] = [flag for flag, a in zip(rg, s.args) if isinstance(a, np.ndarray)]
        check_gradients(ds_fn, *[Tensor._make(a) for a in arrays], noncontiguous=s.noncontiguous, **kw)
        ran += 1
    if not ran:
        raise AssertionError(f"{info.name}: no sample has a floating input to differentiate")


def _cast_args(args, dtype, noncontiguous):
    """(deepseek args, float64 reference args) with floating arrays cast to ``dtype``."""
    ds, ref = [], []
    for a in args:
        if _floating_arg(a):
            v = a.astype(_dt.as_dtype(dtype))
            ref.append(v.astype(np.float64))
            ds.append(Tensor._make(_strided_like(v) if noncontiguous and v.ndim else v))
        elif isinstance(a, np.ndarray):
            ref.append(a.copy())
            ds.append(Tensor._make(a.copy()))
        else:
            ref.append(a)
            ds.append(a)
    return ds, ref


def check_dtypes(info):
    """For each dtype of ``info.dtypes``: every sample runs, its output 0 has dtype
    ``info.result_dtype(dtype)`` and its values match float64 math on the same inputs."""
    for dtype in info.dtypes:
        want = info.result_dtype(dtype)
        rtol, atol = _DTYPE_TOLS.get(want, (0.0, 0.0))
        for s in info.samples():
            if dtype not in FLOATING and any(isinstance(a, float) for a in s.args + tuple(s.kwargs.values())):
                continue  # an integer tensor and a float number make a float result
            ds_args, ref_args = _cast_args(s.args, dtype, s.noncontiguous)
            with np.errstate(all="ignore"):
                out = info(*ds_args, **s.kwargs)
                ref = info.ref_numpy(*ref_args, **s.kwargs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
            if isinstance(outs[0], Tensor) and outs[0].dtype.name != want:
                raise AssertionError(f"{info.name} {s} in {dtype}: output dtype {outs[0].dtype.name}, "
                                     f"expected {want}")
            for k, (o, r) in enumerate(zip(outs, refs)):
                assert_close(o, r, rtol=rtol, atol=atol, msg=f"{info.name} {s} in {dtype}, output {k}")


def _first_inplace_sample(info):
    for s in info.samples():
        if s.args and _floating_arg(s.args[0]) and s.args[0].ndim and not s.noncontiguous:
            x = Tensor._make(s.args[0].copy())
            rest = [Tensor._make(a.copy()) if isinstance(a, np.ndarray) else a for a in s.args[1:]]
            with np.errstate(all="ignore"):
                out = info.op(x, *rest, **s.kwargs)
            if isinstance(out, Tensor) and out.shape == x.shape and out.dtype == x.dtype:
                return s
    raise AssertionError(f"{info.name}: no sample suits the in-place check (a floating first "
                         "input the result keeps the shape of)")


def check_inplace(info):
    """Each in-place variant of ``info.inplace`` (``add_``, ``__iadd__``): returns self
    holding the out-of-place result and bumps the version counter; refuses a leaf that
    requires grad; gives the out-of-place gradient inside a graph; and a write into a
    tensor saved for backward (outside the graph) is reported at backward."""
    from ..autograd.grad_mode import no_grad
    s = _first_inplace_sample(info)

    def args():
        x = Tensor._make(s.args[0].copy())
        rest = [Tensor._make(a.copy()) if isinstance(a, np.ndarray) else a for a in s.args[1:]]
        return x, rest

    for name in info.inplace:
        x, rest = args()
        want = info.op(x.clone(), *rest, **s.kwargs)
        v0 = x._version
        res = getattr(x, name)(*rest, **s.kwargs)
        if res is not x:
            raise AssertionError(f"{info.name}: Tensor.{name} must return self")
        assert_close(x, want, msg=f"{info.name}: Tensor.{name} result")
        if x._version <= v0:
            raise AssertionError(f"{info.name}: Tensor.{name} did not bump the version counter")

        leaf, rest = args()
        leaf.requires_grad_(True)
        try:
            getattr(leaf, name)(*rest, **s.kwargs)
        except RuntimeError as e:
            if "leaf" not in str(e):
                raise
        else:
            raise AssertionError(f"{info.name}: Tensor.{name} on a leaf requiring grad must raise")

        x, rest = args()
        check_gradients(lambda a, *r, name=name: getattr(a * 1, name)(*r, **s.kwargs), x, *rest)

        leaf, rest = args()
        leaf.requires_grad_(True)
        a = leaf * 1
        saved = (a * a).sum()  # Mul saves a
        with no_grad():
            getattr(a, name)(*rest, **s.kwargs)
        try:
            saved.backward()
        except RuntimeError as e:
            if "modified by an inplace operation" not in str(e):
                raise
        else:
            raise AssertionError(f"{info.name}: Tensor.{name} under no_grad overwrote a tensor "
                                 "saved for backward and backward did not notice")


def check_methods(info):
    """Each Tensor method/operator of the entry is a documented attribute of Tensor with
    the right name, and (when it takes the op's arguments) gives the op's result."""
    s = next((x for x in info.samples() if x.args and isinstance(x.args[0], np.ndarray)), None)
    names = [m if isinstance(m, tuple) else (m, None) for m in info.methods + info.operators]
    for name, impl in names + [(r, "reflected") for r in info.reflected]:
        attr = Tensor.__dict__.get(name)
        if attr is None:
            raise AssertionError(f"{info.name}: Tensor has no attribute {name!r}")
        fn = attr.fget if isinstance(attr, property) else attr
        if not (fn.__doc__ or "").strip():
            raise AssertionError(f"{info.name}: Tensor.{name} has no docstring")
        if fn.__qualname__ != f"Tensor.{name}":
            raise AssertionError(f"{info.name}: Tensor.{name} has __qualname__ {fn.__qualname__!r}")
        if s is None or impl not in (None, "property", "reflected"):
            continue  # a method with its own argument order: the op's samples don't fit
        ts = [Tensor._make(a.copy()) if isinstance(a, np.ndarray) else a for a in s.args]
        with np.errstate(all="ignore"):
            want = info.op(*ts, **s.kwargs)
            if impl == "property":
                got = getattr(ts[0], name)
            elif impl == "reflected":
                if len(ts) < 2 or not isinstance(ts[1], Tensor):
                    continue
                got = getattr(ts[1], name)(ts[0])
            else:
                got = getattr(ts[0], name)(*ts[1:], **s.kwargs)
        wants = list(want) if isinstance(want, (tuple, list)) else [want]
        gots = list(got) if isinstance(got, (tuple, list)) else [got]
        for w, g in zip(wants, gots):
            assert_close(g, w, rtol=0, atol=0, msg=f"{info.name}: Tensor.{name} vs {info.name}()")


CHECKS = {"forward_numpy": check_forward_numpy, "forward_torch": check_forward_torch,
          "gradcheck": check_op_gradients, "dtypes": check_dtypes, "inplace": check_inplace,
          "methods": check_methods}


def applicable_checks(info):
    """Names of the CHECKS that ``info`` admits (those its fields give data for)."""
    has = info.sample_inputs is not None
    out = []
    if has and info.ref_numpy is not None:
        out.append("forward_numpy")
    if has and info.ref_torch is not None:
        out.append("forward_torch")
    if has and info.differentiable:
        out.append("gradcheck")
    if has and info.ref_numpy is not None and info.dtypes:
        out.append("dtypes")
    if info.inplace:
        out.append("inplace")
    if info.methods or info.operators or info.reflected:
        out.append("methods")
    return out


def op_check_cases(table):
    """(info, check name) for every applicable check of every entry: one test each."""
    return [(info, c) for info in table for c in applicable_checks(info)]


def op_check_id(value):
    """pytest id of an ``op_check_cases`` item (``add`` / ``gradcheck``)."""
    return getattr(value, "name", value)


def run_op_checks(info, checks=None):
    """Run ``checks`` (default: all applicable) on ``info``; the torch check is left
    out when PyTorch is not installed. Returns the names of the checks run."""
    from .ops import torch_available
    ran = []
    for c in checks or applicable_checks(info):
        if c == "forward_torch" and not torch_available():
            continue
        CHECKS[c](info)
        ran.append(c)
    return ran


__all__ = ["CHECKS", "applicable_checks", "op_check_cases", "op_check_id", "run_op_checks",
           "check_forward_numpy", "check_forward_torch", "check_op_gradients", "check_dtypes",
           "check_inplace", "check_methods", "FLOATING"]
