"""Op test helpers: gradient checks, closeness asserts, parity against PyTorch / numpy.

Users test their own ops with these exactly as deepseek tests its own::

    from deepseek.testing import check_gradients, compare_with_torch
    check_gradients(lambda x, w: my_op(x, w), (4, 3), (3, 5))
    compare_with_torch(lambda x: my_op(x), lambda x: torch_ref(x), [(4, 3)])

``compare_with_torch`` raises ``unittest.SkipTest`` (a skip under pytest and unittest)
when PyTorch is not installed; PyTorch is an optional test oracle, never a dependency.
"""
import unittest

import numpy as np

from .. import dtypes as _dt
from ..autograd import gradcheck as _gradcheck, GradcheckError
from .._tensor import Tensor

__all__ = ["make_tensor", "check_gradients", "assert_close", "compare_with_torch",
           "compare_with_numpy", "torch_available", "default_tolerances"]

# (rtol, atol) by dtype, as torch.testing.assert_close picks them
_TOLS = {"float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
         "float64": (1e-7, 1e-7)}


def default_tolerances(dtype):
    """(rtol, atol) suited to ``dtype`` (0, 0 for integer and bool dtypes)."""
    name = _dtype_name(dtype)
    return _TOLS.get(name, (0.0, 0.0))


def torch_available():
    """True when PyTorch imports."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def _require_torch():
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        raise unittest.SkipTest(f"PyTorch is not installed ({e.__class__.__name__}: {e}); "
                                "parity checks against PyTorch are skipped") from None
    return torch


def _dtype_name(dtype):
    if dtype is None:
        return None
    if hasattr(dtype, "is_floating_point") and str(dtype).startswith("torch."):
        return str(dtype)[len("torch."):]
    return _dt.as_dtype(dtype).name


def _is_shape(x):
    return isinstance(x, (tuple, list)) and all(isinstance(s, (int, np.integer)) for s in x)


def _random_array(shape, rng, low, high):
    return rng.uniform(low, high, size=tuple(shape))


def make_tensor(*shape, dtype=_dt.float64, requires_grad=False, low=-2.0, high=2.0, seed=0,
                noncontiguous=False):
    """A random tensor with values uniform in [low, high) drawn from a private seeded
    stream (the global generator is left alone). ``noncontiguous=True`` returns a
    strided view of a larger array, to test ops on non-contiguous inputs."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    rng = np.random.default_rng(seed)
    arr = _random_array(tuple(shape), rng, low, high).astype(_dt.as_dtype(dtype), copy=False)
    if noncontiguous and arr.ndim:
        arr = _strided_like(arr)
    t = Tensor._make(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _strided_like(arr):
    """Same values as ``arr`` in a non-contiguous layout (every other element of a
    buffer twice as long in the last dim)."""
    buf = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
    view = buf[..., ::2]
    view[...] = arr
    return view


# ---- gradients ------------------------------------------------------------------------
def check_gradients(fn, *shapes_or_tensors, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0,
                    low=-2.0, high=2.0, requires_grad=None, noncontiguous=False):
    """Check ``fn``'s backward against float64 finite differences (deepseek.autograd.gradcheck).

    Each positional argument is a shape (tuple of ints: a random float64 tensor in
    [low, high) is made), a Tensor (floating ones are converted to float64 copies),
    or any other value (passed to ``fn`` unchanged, e.g. an index tensor or a dim).
    Every floating tensor input is differentiated unless ``requires_grad`` (one bool
    per argument) says otherwise. Returns True, or raises AssertionError naming the
    worst element.
    """
    rng = np.random.default_rng(seed)
    inputs = []
    for i, x in enumerate(shapes_or_tensors):
        want = True if requires_grad is None else bool(requires_grad[i])
        if _is_shape(x):
            arr = _random_array(x, rng, low, high)
            if noncontiguous and arr.ndim:
                arr = _strided_like(arr)
            t = Tensor._make(arr)
            inputs.append(t.requires_grad_(True) if want else t)
        elif isinstance(x, Tensor) and x.is_floating_point():
            arr = np.array(x.detach().cpu().numpy(), dtype=np.float64)
            if noncontiguous and arr.ndim:
                arr = _strided_like(arr)
            t = Tensor._make(arr)
            inputs.append(t.requires_grad_(True) if want else t)
        else:
            inputs.append(x)
    if not any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
        raise ValueError("check_gradients: no differentiable input: pass shapes or floating tensors")
    name = getattr(fn, "__name__", repr(fn))
    try:
        return _gradcheck(fn, tuple(inputs), eps=eps, atol=atol, rtol=rtol)
    except GradcheckError as e:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else t for t in inputs]
        raise AssertionError(f"check_gradients({name}) with inputs {shapes}: {e}") from None


# ---- closeness ------------------------------------------------------------------------
def _to_numpy(x):
    """float64/int/bool numpy array of a deepseek Tensor, torch tensor, array or scalar."""
    if isinstance(x, Tensor):
        arr = np.asarray(x.detach().cpu().numpy())
    elif type(x).__module__.startswith("torch"):
        import torch
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float64)
        arr = t.numpy()
    else:
        arr = np.asarray(x)
    if arr.dtype.kind not in "biu":
        arr = arr.astype(np.float64)
    return arr


def _dtype_of(x):
    if isinstance(x, Tensor):
        return x.dtype.name
    if type(x).__module__.startswith("torch"):
        return str(x.dtype)[len("torch."):]
    if hasattr(x, "dtype"):
        return np.dtype(x.dtype).name
    return None


def assert_close(actual, expected, rtol=None, atol=None, equal_nan=True, check_dtype=False,
                 msg=None):
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    Takes deepseek Tensors, torch tensors, numpy arrays, lists or scalars; shapes must
    match exactly. Tolerances default to those of the coarser dtype of the two. The
    failure report gives the number of mismatches, the greatest absolute and relative
    differences and the worst element's index and values.
    """
    da, de = _dtype_of(actual), _dtype_of(expected)
    if check_dtype and da is not None and de is not None and da != de:
        raise AssertionError(_prefix(msg) + f"dtype mismatch: actual {da}, expected {de}")
    a, e = _to_numpy(actual), _to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(_prefix(msg) + f"shape mismatch: actual {a.shape}, expected {e.shape}")
    if rtol is None or atol is None:
        cands = [default_tolerances(d) for d in (da, de) if d in _TOLS] or [_TOLS["float32"]]
        r0 = max(c[0] for c in cands)
        a0 = max(c[1] for c in cands)
        rtol = r0 if rtol is None else rtol
        atol = a0 if atol is None else atol
    if a.size == 0:
        return
    af, ef = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(af - ef)
        same = (af == ef)  # also equal infinities
        ok = same | (diff <= atol + rtol * np.abs(ef))
        if equal_nan:
            ok |= np.isnan(af) & np.isnan(ef)
    if ok.all():
        return
    bad = ~ok
    n_bad = int(bad.sum())
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        excess = np.where(bad, np.nan_to_num(diff - (atol + rtol * np.abs(ef)), nan=np.inf), -np.inf)
        rel = np.where(ef != 0, diff / np.abs(ef), np.where(diff == 0, 0.0, np.inf))
    worst = np.unravel_index(int(np.argmax(excess)), a.shape) if a.ndim else ()
    d_abs = np.nan_to_num(np.where(bad, diff, 0), nan=np.inf)
    d_rel = np.nan_to_num(np.where(bad, rel, 0), nan=np.inf)
    i_abs = np.unravel_index(int(np.argmax(d_abs)), a.shape) if a.ndim else ()
    i_rel = np.unravel_index(int(np.argmax(d_rel)), a.shape) if a.ndim else ()
    report = (f"Tensors are not close: {n_bad} / {a.size} elements mismatch "
              f"({100.0 * n_bad / a.size:.1f}%), rtol={rtol:g}, atol={atol:g}\n"
              f"  greatest absolute difference: {float(d_abs[i_abs]):.6g} at index {_idx(i_abs)}\n"
              f"  greatest relative difference: {float(d_rel[i_rel]):.6g} at index {_idx(i_rel)}\n"
              f"  worst element {_idx(worst)}: actual {float(af[worst]):.9g}, expected {float(ef[worst]):.9g}")
    raise AssertionError(_prefix(msg) + report)


def _idx(i):
    return tuple(int(v) for v in i)


def _prefix(msg):
    return f"{msg}: " if msg else ""


# ---- parity ---------------------------------------------------------------------------
def _as_output_list(out, who):
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def _prepare_inputs(inputs, dtype, seed, low, high, noncontiguous):
    """Inputs to float64/int numpy arrays (or pass-through values); shapes are drawn."""
    rng = np.random.default_rng(seed)
    out = []
    for x in inputs:
        if _is_shape(x):
            arr = _random_array(x, rng, low, high)
            out.append(("array", arr, dtype if dtype is not None else _dt.get_default_dtype()))
        elif isinstance(x, Tensor) or isinstance(x, np.ndarray) or type(x).__module__.startswith("torch"):
            dt_name = _dtype_of(x)
            arr = _to_numpy(x)
            if arr.dtype.kind == "f":
                out.append(("array", arr, dtype if dtype is not None else _dt.as_dtype(dt_name)))
            else:
                out.append(("array", arr, arr.dtype))
        else:
            out.append(("value", x, None))
    # values in the target precision, so both libraries see identical inputs
    res = []
    for kind, v, dt in out:
        if kind == "array":
            dt = _dt.as_dtype(dt)
            v = v.astype(dt)
            if noncontiguous and v.ndim:
                v = _strided_like(v)
        res.append((kind, v, dt))
    return res


def compare_with_torch(ds_fn, torch_fn, inputs, dtype=_dt.float32, rtol=None, atol=None,
                       backward=True, check_dtype=True, seed=0, low=-2.0, high=2.0,
                       noncontiguous=False, grad_rtol=None, grad_atol=None):
    """Run ``ds_fn`` and ``torch_fn`` on the same data and compare outputs and gradients.

    ``inputs`` lists shapes (random data in [low, high) is drawn, in ``dtype``), arrays
    or tensors (floating ones are cast to ``dtype`` unless it is None; integer and
    bool ones, e.g. indices, keep their dtype and never require grad) and plain values
    (passed unchanged to both functions). With ``backward=True`` every floating input
    requires grad, the outputs are seeded with one random gradient and the input
    gradients must match too. Tolerances default to the dtype's (see
    ``default_tolerances``). Output dtypes must match (type promotion) unless
    ``check_dtype=False``. Skips (``unittest.SkipTest``) when PyTorch is not installed.
    Returns ``(deepseek_outputs, torch_outputs)``.
    """
    torch = _require_torch()
    from ..autograd import backward as ds_backward
    prepared = _prepare_inputs(inputs, dtype, seed, low, high, noncontiguous)
    ds_in, th_in = [], []
    for kind, v, dt in prepared:
        if kind == "value":
            ds_in.append(v)
            th_in.append(v)
            continue
        t = Tensor._make(v)
        floating = dt in _dt.FLOATING
        if backward and floating:
            t.requires_grad_(True)
        ds_in.append(t)
        th = _torch_tensor(torch, v, dt)
        if backward and floating:
            th.requires_grad_(True)
        th_in.append(th)

    ds_out = _as_output_list(ds_fn(*ds_in), "ds_fn")
    th_out = _as_output_list(torch_fn(*th_in), "torch_fn")
    if len(ds_out) != len(th_out):
        raise AssertionError(f"deepseek returned {len(ds_out)} outputs, PyTorch {len(th_out)}")
    for k, (d, t) in enumerate(zip(ds_out, th_out)):
        if not isinstance(d, Tensor):
            assert_close(d, t, rtol=rtol, atol=atol, msg=f"output {k}")
            continue
        if tuple(d.shape) != tuple(t.shape):
            raise AssertionError(f"output {k}: shape {tuple(d.shape)} (deepseek) vs "
                                 f"{tuple(t.shape)} (PyTorch)")
        if check_dtype and _dtype_of(d) != _dtype_of(t):
            raise AssertionError(f"output {k}: dtype {_dtype_of(d)} (deepseek) vs "
                                 f"{_dtype_of(t)} (PyTorch)")
        assert_close(d, t, rtol=rtol, atol=atol, msg=f"output {k} (forward)")

    if backward:
        rng = np.random.default_rng(seed + 1)
        ds_o, ds_g, th_o, th_g = [], [], [], []
        for d, t in zip(ds_out, th_out):
            if isinstance(d, Tensor) and d.requires_grad and t.requires_grad:
                g = rng.standard_normal(tuple(d.shape)).astype(d.dtype)
                ds_o.append(d)
                ds_g.append(Tensor._make(g))
                th_o.append(t)
                th_g.append(_torch_tensor(torch, g, d.dtype))
        if ds_o:
            ds_backward(ds_o, ds_g)
            torch.autograd.backward(th_o, th_g)
        for k, (x, tx) in enumerate(zip(ds_in, th_in)):
            if not (isinstance(x, Tensor) and x.requires_grad):
                continue
            gd = x.grad
            gt = tx.grad
            if gd is None and gt is None:
                continue
            if gd is None:
                gd = np.zeros(tuple(x.shape))
            if gt is None:
                gt = np.zeros(tuple(x.shape))
            if isinstance(gd, Tensor) and tuple(gd.shape) != tuple(x.shape):
                raise AssertionError(f"gradient of input {k}: shape {tuple(gd.shape)} does not "
                                     f"match the input shape {tuple(x.shape)}")
            assert_close(gd, gt, rtol=grad_rtol if grad_rtol is not None else rtol,
                         atol=grad_atol if grad_atol is not None else atol,
                         msg=f"gradient of input {k}")
    return ds_out, th_out


def _torch_tensor(torch, arr, dt):
    dt = _dt.as_dtype(dt)
    if dt == _dt.bfloat16:  # torch can't take ml_dtypes arrays: go through float32 (exact)
        t = _strided_torch(torch, np.asarray(arr, dtype=np.float32), arr)
        return t.to(torch.bfloat16) if t.is_contiguous() else \
            _strided_torch(torch, np.asarray(arr, dtype=np.float32), arr, torch.bfloat16)
    return _strided_torch(torch, arr, arr)


def _strided_torch(torch, values, layout, to_dtype=None):
    """A torch leaf with ``values`` and, where ``layout`` is not contiguous, a
    non-contiguous layout too (so both libraries see the same kind of input)."""
    if layout.ndim and not layout.flags.c_contiguous:
        buf = np.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype=values.dtype)
        buf[..., ::2] = values
        t = torch.from_numpy(buf)
        if to_dtype is not None:
            t = t.to(to_dtype)
        return t[..., ::2].detach()
    return torch.from_numpy(np.array(values, order="C", copy=True))


def compare_with_numpy(ds_fn, np_fn, inputs, dtype=_dt.float32, rtol=None, atol=None,
                       check_dtype=False, seed=0, low=-2.0, high=2.0, noncontiguous=False):
    """Run ``ds_fn`` on Tensors and ``np_fn`` on numpy arrays holding the same data and
    compare the outputs (forward only). ``inputs`` is as for ``compare_with_torch``.
    Returns ``(deepseek_outputs, numpy_outputs)``."""
    prepared = _prepare_inputs(inputs, dtype, seed, low, high, noncontiguous)
    ds_in = [Tensor._make(v) if kind == "array" else v for kind, v, _ in prepared]
    np_in = [v.copy() if kind == "array" else v for kind, v, _ in prepared]
    ds_out = _as_output_list(ds_fn(*ds_in), "ds_fn")
    np_out = _as_output_list(np_fn(*np_in), "np_fn")
    if len(ds_out) != len(np_out):
        raise AssertionError(f"deepseek returned {len(ds_out)} outputs, numpy {len(np_out)}")
    for k, (d, n) in enumerate(zip(ds_out, np_out)):
        if check_dtype and _dtype_of(d) != _dtype_of(np.asarray(n)):
            raise AssertionError(f"output {k}: dtype {_dtype_of(d)} (deepseek) vs "
                                 f"{_dtype_of(np.asarray(n))} (numpy)")
        assert_close(d, n, rtol=rtol, atol=atol, msg=f"output {k}")
    return ds_out, np_out
