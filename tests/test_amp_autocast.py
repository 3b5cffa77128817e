"""autocast: output dtypes of every op of the table against torch.autocast on the CPU
(measured live), nesting, threads, the decorator, the parameter-cast cache, master
weights, and the errors."""
import threading

import numpy as np
import pytest

import deepseek as ds
from deepseek import dtypes as _dt
from deepseek.amp import autocast, is_autocast_enabled, get_autocast_dtype
from deepseek.ops.registry import OP_TABLE

torch = pytest.importorskip("torch")

# what each input mode makes of a sample's floating arrays: (first one, the others)
MODES = {"fp32": ("float32", "float32"),            # fp32 activations and parameters
         "bf16_act": ("bfloat16", "float32"),       # bf16 activation, fp32 parameters
         "bf16_all": ("bfloat16", "bfloat16")}      # everything already low precision
_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _inputs(sample, mode):
    first, rest = MODES[mode]
    targs, dargs, seen = [], [], False
    for a in sample.args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            dt = rest if seen else first
            seen = True
            targs.append(torch.from_numpy(np.array(a, copy=True)).to(_TORCH[dt]))
            dargs.append(ds.Tensor._make(a.astype(_dt.as_dtype(dt))))
        elif isinstance(a, np.ndarray):
            targs.append(torch.from_numpy(np.array(a, copy=True)))
            dargs.append(ds.Tensor._make(a.copy()))
        else:
            targs.append(a)
            dargs.append(a)
    return targs, dargs


def _dtypes(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    names = []
    for o in outs:
        if isinstance(o, torch.Tensor):
            names.append(str(o.dtype).replace("torch.", ""))
        elif isinstance(o, ds.Tensor):
            names.append(o.dtype.name)
        else:
            names.append(type(o).__name__)
    return names


_CASES = [e for e in OP_TABLE if e.ref_torch is not None and e.sample_inputs is not None]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("entry", _CASES, ids=lambda e: e.name)
def test_output_dtypes_match_torch_autocast_cpu(entry, mode):
    compared = 0
    for s in entry.samples():
        targs, dargs = _inputs(s, mode)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref = entry.ref_torch(torch, *targs, **s.kwargs)
        except RuntimeError:
            continue  # PyTorch refuses this input mix (index_put of mixed dtypes): no reference
        with autocast("cpu"):
            out = entry(*dargs, **s.kwargs)
        assert _dtypes(out) == _dtypes(ref), f"{entry.name} {s} [{mode}]"
        compared += 1
    assert compared or mode != "fp32", f"{entry.name}: no sample compared"


@pytest.mark.parametrize("name", ["matmul", "linear", "conv2d", "scaled_dot_product_attention",
                                  "layer_norm", "softmax", "cross_entropy", "gelu", "sum"])
def test_values_close_to_torch_autocast(name):
    entry = next(e for e in OP_TABLE if e.name == name)
    for s in entry.samples():
        for mode in ("fp32", "bf16_act"):
            targs, dargs = _inputs(s, mode)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref = entry.ref_torch(torch, *targs, **s.kwargs)
            with autocast("cpu"):
                out = entry(*dargs, **s.kwargs)
            r = (ref[0] if isinstance(ref, tuple) else ref).float().numpy()
            o = np.asarray((out[0] if isinstance(out, tuple) else out).float().numpy())
            np.testing.assert_allclose(o, r, rtol=3e-2, atol=3e-2, err_msg=f"{name} {s} {mode}")


def test_policy_reads_the_op_table_per_device():
    from deepseek.ops import registry, elementwise as E, pooling as P, linalg as L
    assert registry.autocast_policy(E.Exp, "cuda") == "fp32"      # CUDA fp32 list
    assert registry.autocast_policy(E.Exp, "cpu") == "none"       # not on the CPU one
    assert registry.autocast_policy(L.Linear, "cpu") == "lower"
    x = ds.randn(1, 2, 4, 4, 4)
    assert registry.autocast_policy(P.MaxPoolNd, "cpu", (x, (2, 2, 2)), {}) == "fp32"
    assert registry.autocast_policy(P.MaxPoolNd, "cpu", (x, (2, 2)), {}) == "none"


def test_softmax_of_bf16_computes_in_fp32():
    # a row whose bf16 arithmetic would lose the small terms: fp32 inside, bf16 out
    x = ds.tensor(np.linspace(-3, 3, 512).astype(np.float32)).to(ds.bfloat16)
    with autocast("cpu"):
        y = ds.softmax(x, 0)
    assert y.dtype == ds.bfloat16
    ref = torch.softmax(torch.from_numpy(x.float().numpy()), 0).numpy()
    np.testing.assert_allclose(y.float().numpy(), ref, rtol=8e-3, atol=1e-6)


def test_nesting_disabled_region_runs_fp32_and_state_restores():
    a, b = ds.randn(4, 4), ds.randn(4, 4)
    assert not is_autocast_enabled("cpu")
    with autocast("cpu"):
        assert (a @ b).dtype == ds.bfloat16
        with autocast("cpu", enabled=False):
            assert not is_autocast_enabled("cpu")
            assert (a @ b).dtype == ds.float32
            with autocast("cpu", dtype=ds.float16):
                assert (a @ b).dtype == ds.float16
                assert get_autocast_dtype("cpu") == ds.float16
        assert (a @ b).dtype == ds.bfloat16
    assert (a @ b).dtype == ds.float32
    assert not is_autocast_enabled("cpu")


def test_cuda_region_leaves_cpu_ops_alone():
    a = ds.randn(3, 3)
    with autocast("cuda"):
        assert (a @ a).dtype == ds.float32
        assert get_autocast_dtype("cuda") == ds.float16


def test_decorator_and_deepseek_autocast_alias():
    assert ds.autocast is autocast

    @autocast("cpu")
    def f(x):
        return x @ x
    x = ds.randn(3, 3)
    assert f(x).dtype == ds.bfloat16
    assert (x @ x).dtype == ds.float32


def test_state_is_per_thread():
    seen = {}
    entered, done = threading.Event(), threading.Event()

    def other():
        entered.wait(5)
        x = ds.randn(3, 3)
        seen["dtype"] = (x @ x).dtype
        seen["enabled"] = is_autocast_enabled("cpu")
        done.set()
    t = threading.Thread(target=other)
    t.start()
    with autocast("cpu"):
        entered.set()
        done.wait(5)
    t.join(5)
    assert seen == {"dtype": ds.float32, "enabled": False}


def test_parameter_cast_once_per_region_and_grads_reach_fp32_master():
    from deepseek.ops.shape import Cast
    lin = ds.nn.Linear(8, 8)
    x = ds.randn(4, 8)
    n = {"casts": 0}

    class Count(ds.autograd.DispatchMode):
        def __dispatch__(self, fn, args, kwargs):
            if fn is Cast and args[0] is lin.weight:
                n["casts"] += 1
            return fn.apply(*args, **kwargs)
    with Count(), autocast("cpu"):
        y = lin(lin(lin(x)))
    assert n["casts"] == 1
    assert y.dtype == ds.bfloat16
    y.float().sum().backward()
    assert lin.weight.dtype == ds.float32 and lin.weight.grad.dtype == ds.float32
    # the gradient equals the fp32 computation's within bf16 rounding
    w = torch.from_numpy(lin.weight.detach().numpy().copy()).requires_grad_()
    b = torch.from_numpy(lin.bias.detach().numpy().copy()).requires_grad_()
    xt = torch.from_numpy(x.numpy().copy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yt = torch.nn.functional.linear
        out = yt(yt(yt(xt, w, b), w, b), w, b)
    out.float().sum().backward()
    np.testing.assert_allclose(lin.weight.grad.numpy(), w.grad.numpy(), rtol=5e-2, atol=5e-2)


def test_cache_disabled_casts_per_use():
    from deepseek.ops.shape import Cast
    lin = ds.nn.Linear(4, 4)
    n = [0]

    class Count(ds.autograd.DispatchMode):
        def __dispatch__(self, fn, args, kwargs):
            n[0] += fn is Cast and args[0] is lin.weight
            return fn.apply(*args, **kwargs)
    with Count(), autocast("cpu", cache_enabled=False):
        lin(lin(ds.randn(2, 4)))
    assert n[0] == 2


def test_integer_dtype_is_refused():
    with pytest.raises(RuntimeError, match="int32.*autocast dtype"):
        autocast("cpu", dtype=ds.int32)
    with pytest.raises(RuntimeError, match="float32"):
        autocast("cpu", dtype=ds.float32)


def test_fp16_on_cpu_op_without_fp16_path_names_the_op(monkeypatch):
    from deepseek.amp import lowp_compute
    monkeypatch.setattr(lowp_compute, "has_cpu_fp16_path", lambda fn: False)
    x = ds.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"op matmul\b.* has no float16 path.*bfloat16"):
        with autocast("cpu", dtype=ds.float16):
            x @ x.T
    with autocast("cpu", dtype=ds.float16):   # the real table: every 'lower' op has one
        monkeypatch.undo()
        assert (x @ x.T).dtype == ds.float16
