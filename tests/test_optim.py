"""deepseek.optim: optimizers and lr schedulers against torch.optim, state_dict formats."""
import math
import warnings

import numpy as np
import pytest

import deepseek as ds
from deepseek import optim
from deepseek.optim import lr_scheduler as lrs

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

SHAPES = [(7, 13), (13,), (), (3, 1, 5)]

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3, maximize=True),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
]
ADAM_CONFIGS = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("Adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    ("Adam", dict(lr=1e-2, betas=(0.3, 0.9))),  # lerp weight > 0.5: torch's other formula
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True)),
]
CONFIGS = [("SGD", c) for c in SGD_CONFIGS] + ADAM_CONFIGS


def make_pair(shapes, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    mine = [ds.nn.Parameter(ds.tensor(a)) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    return mine, theirs


def set_grads(mine, theirs, rng, skip=None):
    for i, (p, q) in enumerate(zip(mine, theirs)):
        if i == skip:
            p.grad, q.grad = None, None
            continue
        g = rng.standard_normal(p.shape).astype(p.dtype)
        p.grad = ds.tensor(g)
        q.grad = torch.tensor(g)


def assert_close(mine, theirs, rtol=2e-6, atol=1e-7):
    for p, q in zip(mine, theirs):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=rtol, atol=atol)


@needs_torch
@pytest.mark.parametrize("fused", [False, None, True], ids=["numpy", "auto", "fused"])
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_matches_torch_step_by_step(name, cfg, fused):
    mine, theirs = make_pair(SHAPES)
    o1 = getattr(optim, name)(mine, fused=fused, **cfg)
    o2 = getattr(torch.optim, name)(theirs, **cfg)
    rng = np.random.default_rng(1)
    for step in range(6):
        # parameter 1 gets no gradient in step 2: it must be skipped (no state change)
        set_grads(mine, theirs, rng, skip=1 if step == 2 else None)
        o1.step()
        o2.step()
        assert_close(mine, theirs)
    sd1, sd2 = o1.state_dict(), o2.state_dict()
    assert sorted(sd1["state"]) == sorted(sd2["state"])
    for k, st in sd2["state"].items():
        assert sorted(sd1["state"][k]) == sorted(st)
        for key, v in st.items():
            np.testing.assert_allclose(np.asarray(sd1["state"][k][key].numpy(), np.float64),
                                       v.numpy().astype(np.float64), rtol=1e-5, atol=1e-7)


@needs_torch
@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                      ("Adam", dict(lr=1e-2, amsgrad=True)),
                                      ("AdamW", dict(lr=1e-2))])
def test_float64_matches_torch(name, cfg):
    mine, theirs = make_pair(SHAPES[:2], dtype=np.float64)
    o1, o2 = getattr(optim, name)(mine, **cfg), getattr(torch.optim, name)(theirs, **cfg)
    rng = np.random.default_rng(2)
    for _ in range(5):
        set_grads(mine, theirs, rng)
        o1.step()
        o2.step()
    assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_params_follow_the_fp32_run(dtype):
    rng = np.random.default_rng(0)
    init = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(3)]
    results = {}
    for dt in ("float32", dtype):
        p = ds.nn.Parameter(ds.tensor(init).to(dt))
        opt = optim.AdamW([p], lr=1e-2)
        for g in grads:
            p.grad = ds.tensor(g).to(dt)
            opt.step()
        assert p.dtype == ds.dtypes.as_dtype(dt)
        assert opt.state[p]["exp_avg"].dtype == p.dtype
        results[dt] = p.detach().float().numpy()
    tol = 1e-2 if dtype == "bfloat16" else 2e-3
    np.testing.assert_allclose(results[dtype], results["float32"], rtol=tol, atol=tol)


@needs_torch
def test_param_groups_with_their_own_options_match_torch():
    mine, theirs = make_pair([(4, 3), (3,), (5,)])
    groups1 = [{"params": mine[:2]}, {"params": mine[2:], "lr": 0.5, "weight_decay": 0.1}]
    groups2 = [{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.5, "weight_decay": 0.1}]
    o1 = optim.SGD(groups1, lr=0.1, momentum=0.9)
    o2 = torch.optim.SGD(groups2, lr=0.1, momentum=0.9)
    assert o1.param_groups[1]["momentum"] == 0.9 and o1.param_groups[1]["lr"] == 0.5
    rng = np.random.default_rng(3)
    for _ in range(4):
        set_grads(mine, theirs, rng)
        o1.step()
        o2.step()
    assert_close(mine, theirs)


def test_add_param_group_and_bad_params():
    a, b = ds.nn.Parameter(ds.ones(2)), ds.nn.Parameter(ds.ones(3))
    opt = optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": b, "betas": (0.5, 0.6)})
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["betas"] == (0.5, 0.6)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="ordered"):
        optim.SGD({a}, lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([a, 3.0], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([a * 2], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.Adam([a], lr=-1)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        optim.AdamW([a], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([a], lr=0.1, nesterov=True)


def test_zero_grad_and_version_counter_and_closure():
    p = ds.nn.Parameter(ds.ones(3))
    opt = optim.SGD([p], lr=0.5)
    loss = (p * p).sum()
    loss.backward()
    v = p._version
    calls = []

    def closure():
        calls.append(ds.is_grad_enabled())
        return 42.0
    with ds.no_grad():
        assert opt.step(closure) == 42.0
    assert calls == [True]  # the closure runs with grad enabled
    assert p._version == v + 1  # one bump per step
    np.testing.assert_allclose(p.detach().numpy(), [0.0, 0.0, 0.0])
    g = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is g and (g.numpy() == 0).all()
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no grads: nothing happens
    assert p._version == v + 1


def test_step_invalidates_tensors_saved_for_backward():
    # an update between forward and backward changes a tensor saved for the gradient
    p = ds.nn.Parameter(ds.ones(3))
    opt = optim.SGD([p], lr=0.1)
    (p * p).sum().backward()
    y = (p * p).sum()
    opt.step()
    with pytest.raises(RuntimeError):
        y.backward()


def test_fused_dispatch_is_one_kernel_call_per_parameter(monkeypatch):
    native = pytest.importorskip("deepseek.native")
    calls = []
    real = native.adamw_step

    def spy(*args, **kwargs):
        calls.append(kwargs["step"])
        return real(*args, **kwargs)
    monkeypatch.setattr(native, "adamw_step", spy)
    ps = [ds.nn.Parameter(ds.ones(4)), ds.nn.Parameter(ds.ones(2, 2))]
    opt = optim.AdamW(ps, lr=0.1, fused=True)
    for _ in range(2):
        for p in ps:
            p.grad = ds.ones(*p.shape)
        opt.step()
    assert calls == [1.0, 1.0, 2.0, 2.0]
    calls.clear()
    optim.AdamW(ps, lr=0.1, fused=False).step()
    assert calls == []  # fused=False: the numpy path
    if native.available():
        optim.AdamW(ps, lr=0.1).step()  # fused=None: small parameters stay in numpy
        assert calls == []
        big = ds.nn.Parameter(ds.ones(optim.AdamW._native_min_numel))
        big.grad = ds.ones(big.numel())
        optim.AdamW(ps + [big], lr=0.1).step()  # ... large ones use the kernel
        assert calls == [1.0]
    with pytest.raises(RuntimeError, match="float32"):
        q = ds.nn.Parameter(ds.ones(3, dtype=ds.float64))
        q.grad = ds.ones(3, dtype=ds.float64)
        optim.SGD([q], lr=0.1, fused=True).step()


@pytest.mark.parametrize("name,cfg", CONFIGS[:-3] + CONFIGS[-2:],  # torch's lerp for beta1<0.5
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS[:-3] + CONFIGS[-2:])])
def test_fused_and_numpy_paths_give_identical_bits(name, cfg):
    rng = np.random.default_rng(5)
    init = rng.standard_normal(3000).astype(np.float32)
    grads = [rng.standard_normal(3000).astype(np.float32) for _ in range(4)]
    results = []
    for fused in (False, True):
        p = ds.nn.Parameter(ds.tensor(init))
        opt = getattr(optim, name)([p], fused=fused, **cfg)
        for g in grads:
            p.grad = ds.tensor(g)
            opt.step()
        results.append(p.detach().numpy())
    np.testing.assert_array_equal(results[0], results[1])


def train_steps(opt, params, grads):
    for g in grads:
        for p, gg in zip(params, g):
            p.grad = ds.tensor(gg)
        opt.step()


@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.1, momentum=0.9)),
                                      ("Adam", dict(lr=1e-2, amsgrad=True)),
                                      ("AdamW", dict(lr=1e-2))])
@pytest.mark.parametrize("via_file", [False, True])
def test_state_dict_round_trip_resumes_identically(tmp_path, name, cfg, via_file):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(6)]

    def fresh():
        params = [ds.nn.Parameter(ds.tensor(a)) for a in init]
        return params, getattr(optim, name)([{"params": params[:2]}, {"params": params[2:],
                                                                      "lr": 0.05}], **cfg)
    ref_p, ref = fresh()
    train_steps(ref, ref_p, grads)

    p1, o1 = fresh()
    train_steps(o1, p1, grads[:3])
    sd = o1.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    if via_file:
        ds.save({"params": p1, "optimizer": sd}, tmp_path / "ckpt.safetensors")
        loaded = ds.load(tmp_path / "ckpt.safetensors")
        sd = loaded["optimizer"]
        assert all(p.requires_grad for p in loaded["params"])
        init_resumed = [p.detach().numpy() for p in loaded["params"]]
    else:
        init_resumed = [p.detach().numpy().copy() for p in p1]
    p2 = [ds.nn.Parameter(ds.tensor(a)) for a in init_resumed]
    o2 = getattr(optim, name)([{"params": p2[:2]}, {"params": p2[2:]}], **cfg)
    o2.load_state_dict(sd)
    assert o2.param_groups[1]["lr"] == 0.05
    train_steps(o2, p2, grads[3:])
    for a, b in zip(p2, ref_p):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    # the loaded state is a copy: stepping o2 must not have changed o1's buffers
    if not via_file and name != "SGD":
        assert float(o1.state_dict()["state"][0]["step"].item()) == 3.0


def test_load_state_dict_refuses_mismatched_groups():
    a, b = ds.nn.Parameter(ds.ones(2)), ds.nn.Parameter(ds.ones(3))
    sd = optim.SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="doesn't match the size"):
        optim.SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        optim.SGD([a], lr=0.1).load_state_dict({"foo": 1})


@needs_torch
def test_loads_a_pytorch_state_dict():
    mine, theirs = make_pair(SHAPES[:2])
    o2 = torch.optim.Adam(theirs, lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = [rng.standard_normal(s).astype(np.float32) for s in SHAPES[:2]]
        for q, gg in zip(theirs, g):
            q.grad = torch.tensor(gg)
        o2.step()
    for p, q in zip(mine, theirs):
        p.data = ds.tensor(q.detach().numpy())
    sd = o2.state_dict()
    converted = {"param_groups": sd["param_groups"],
                 "state": {k: {n: ds.tensor(v.numpy()) for n, v in st.items()}
                           for k, st in sd["state"].items()}}
    o1 = optim.Adam(mine, lr=1e-2)
    o1.load_state_dict(converted)
    for _ in range(2):
        set_grads(mine, theirs, rng)
        o1.step()
        o2.step()
    assert_close(mine, theirs)


# ---- schedulers ----------------------------------------------------------------------

SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 9], gamma=0.3)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=1e-3)),  # runs past T_max: goes back up
    ("LambdaLR", dict(lr_lambda=lambda e: 0.9 ** e + 0.1 * (e % 3))),
    ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.95)),
    ("LinearLR", dict(start_factor=0.25, end_factor=1.0, total_iters=6)),
    ("ConstantLR", dict(factor=0.5, total_iters=4)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("PolynomialLR", dict(total_iters=8, power=2.0)),
]


def sched_pair(groups_lrs=(0.1, 0.02)):
    a = [ds.nn.Parameter(ds.ones(1)) for _ in groups_lrs]
    b = [torch.nn.Parameter(torch.ones(1)) for _ in groups_lrs]
    o1 = optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(a, groups_lrs)], lr=1.0)
    o2 = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(b, groups_lrs)], lr=1.0)
    return o1, o2


def run_both(s1, s2, o1, o2, steps=15, metrics=None):
    lrs1, lrs2 = [s1.get_last_lr()], [s2.get_last_lr()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(steps):
            o1.step()
            o2.step()
            if metrics is None:
                s1.step()
                s2.step()
            else:
                s1.step(metrics[i])
                s2.step(metrics[i])
            lrs1.append(s1.get_last_lr())
            lrs2.append(s2.get_last_lr())
            assert [g["lr"] for g in o1.param_groups] == pytest.approx(
                [g["lr"] for g in o2.param_groups], rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(np.array(lrs1, dtype=np.float64), np.array(lrs2, dtype=np.float64),
                               rtol=1e-12, atol=1e-15)


@needs_torch
@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[n for n, _ in SCHEDULERS])
def test_schedulers_match_torch(name, kwargs):
    o1, o2 = sched_pair()
    s1 = getattr(lrs, name)(o1, **kwargs)
    s2 = getattr(torch.optim.lr_scheduler, name)(o2, **kwargs)
    run_both(s1, s2, o1, o2)


@needs_torch
def test_sequential_warmup_then_cosine_matches_torch():
    o1, o2 = sched_pair()
    mk = [(lambda o, m: m.LinearLR(o, start_factor=0.1, total_iters=4)),
          (lambda o, m: m.CosineAnnealingLR(o, T_max=10))]
    s1 = lrs.SequentialLR(o1, [f(o1, lrs) for f in mk], milestones=[4])
    s2 = torch.optim.lr_scheduler.SequentialLR(
        o2, [f(o2, torch.optim.lr_scheduler) for f in mk], milestones=[4])
    run_both(s1, s2, o1, o2, steps=16)


@needs_torch
def test_chained_and_plateau_match_torch():
    o1, o2 = sched_pair()
    s1 = lrs.ChainedScheduler([lrs.ExponentialLR(o1, 0.9), lrs.StepLR(o1, 3, 0.5)])
    s2 = torch.optim.lr_scheduler.ChainedScheduler([
        torch.optim.lr_scheduler.ExponentialLR(o2, 0.9), torch.optim.lr_scheduler.StepLR(o2, 3, 0.5)])
    run_both(s1, s2, o1, o2, steps=10)
    o1, o2 = sched_pair()
    kw = dict(mode="min", factor=0.5, patience=2, cooldown=1, min_lr=0.004)
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    run_both(lrs.ReduceLROnPlateau(o1, **kw), torch.optim.lr_scheduler.ReduceLROnPlateau(o2, **kw),
             o1, o2, metrics=metrics)


def test_linear_warmup_values():
    o, _ = (optim.SGD([ds.nn.Parameter(ds.ones(1))], lr=0.1), None)
    s = lrs.get_linear_schedule_with_warmup(o, num_warmup_steps=4, num_training_steps=12)
    seen = [s.get_last_lr()[0]]
    for _ in range(14):
        o.step()
        s.step()
        seen.append(s.get_last_lr()[0])
    expected = [0.1 * (t / 4 if t < 4 else max(0.0, (12 - t) / 8)) for t in range(15)]
    assert seen == pytest.approx(expected, abs=1e-15)
    o2 = optim.SGD([ds.nn.Parameter(ds.ones(1))], lr=0.1)
    s2 = lrs.LinearWarmup(o2, warmup_steps=3)  # no total: constant after the warmup
    vals = [s2.get_last_lr()[0]]
    for _ in range(5):
        s2.step()
        vals.append(s2.get_last_lr()[0])
    assert vals == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("make", [
    lambda o: lrs.StepLR(o, 2, 0.5),
    lambda o: lrs.MultiStepLR(o, [2, 4], 0.5),
    lambda o: lrs.CosineAnnealingLR(o, 6),
    lambda o: lrs.LinearWarmup(o, 3, 10),
    lambda o: lrs.SequentialLR(o, [lrs.LinearLR(o, 0.2, total_iters=3), lrs.ExponentialLR(o, 0.9)], [3]),
], ids=["step", "multistep", "cosine", "warmup", "sequential"])
def test_scheduler_state_dict_round_trip_through_a_file(tmp_path, make):
    def fresh():
        o = optim.SGD([ds.nn.Parameter(ds.ones(1))], lr=0.1)
        return o, make(o)
    o_ref, s_ref = fresh()
    for _ in range(8):
        o_ref.step()
        s_ref.step()
    o1, s1 = fresh()
    for _ in range(4):
        o1.step()
        s1.step()
    ds.save({"opt": o1.state_dict(), "sched": s1.state_dict()}, tmp_path / "s.ckpt")
    ck = ds.load(tmp_path / "s.ckpt")
    o2, s2 = fresh()
    o2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["sched"])
    assert s2.get_last_lr() == s1.get_last_lr()
    for _ in range(4):
        o2.step()
        s2.step()
    assert s2.get_last_lr() == pytest.approx(s_ref.get_last_lr(), rel=1e-15)
    assert math.isclose(o2.param_groups[0]["lr"], o_ref.param_groups[0]["lr"], rel_tol=1e-15)
