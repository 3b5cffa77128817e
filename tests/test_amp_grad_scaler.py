"""GradScaler: scaling, the skipped inf step and the back-off/growth schedule, unscale_
before clipping, PyTorch's misuse errors, fp16 master-weight refusal, checkpoints, the
found-inf reduction hook, and PyTorch parity of the scale schedule."""
import numpy as np
import pytest

import deepseek as ds
from deepseek import native
from deepseek.amp import GradScaler, autocast


def _model():
    ds.manual_seed(0)
    return ds.nn.Linear(4, 3)


def _backward(scaler, model, poison=None):
    x = ds.randn(5, 4)
    with autocast("cpu"):
        loss = model(x).float().sum()
    scaler.scale(loss).backward()
    if poison is not None:
        model.weight.grad._data.reshape(-1)[0] = poison


def test_scale_multiplies_and_step_unscales():
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler(init_scale=1024.0)
    x = ds.randn(5, 4)
    loss = m(x).sum()
    assert float(s.scale(loss)) == pytest.approx(float(loss) * 1024.0, rel=1e-6)
    s.scale(loss).backward()
    ref = ds.nn.Linear(4, 3)
    ref.load_state_dict(m.state_dict())
    ref(x).sum().backward()
    w0 = m.weight.detach().numpy().copy()
    s.step(opt)
    np.testing.assert_allclose(m.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(m.weight.detach().numpy(), w0 - 0.1 * ref.weight.grad.numpy(), rtol=1e-5)
    s.update()
    assert s.get_scale() == 1024.0


@pytest.mark.parametrize("poison", [np.inf, np.nan])
def test_inf_step_skipped_scale_backs_off_then_grows(poison):
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler(init_scale=256.0, growth_interval=3)
    _backward(s, m, poison)
    w0 = m.weight.detach().numpy().copy()
    s.step(opt)
    s.update()
    np.testing.assert_array_equal(m.weight.detach().numpy(), w0)      # skipped
    assert s.get_scale() == 128.0                             # backed off
    for i in range(3):
        opt.zero_grad()
        _backward(s, m)
        s.step(opt)
        s.update()
        assert s.get_scale() == (256.0 if i == 2 else 128.0)  # grows after 3 clean steps
    assert not np.array_equal(m.weight.detach().numpy(), w0)


def test_schedule_matches_torch():
    torch = pytest.importorskip("torch")
    pattern = [False, True, False, False, True, True, False, False, False, False]
    ours = GradScaler(init_scale=8.0, growth_interval=2)
    tm = torch.nn.Linear(2, 1)
    topt = torch.optim.SGD(tm.parameters(), lr=0.0)
    theirs = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.0)
    for bad in pattern:
        opt.zero_grad()
        _backward(ours, m, np.inf if bad else None)
        ours.step(opt)
        ours.update()
        topt.zero_grad()
        theirs.scale(tm(torch.ones(1, 2)).sum()).backward()
        if bad:
            tm.weight.grad[0, 0] = float("inf")
        theirs.step(topt)
        theirs.update()
        assert ours.get_scale() == theirs.get_scale()


def test_unscale_before_clip_and_misuse_errors():
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler(init_scale=64.0)
    with pytest.raises(AssertionError, match="did not use scaler.scale"):
        s.step(opt)
    _backward(s, m)
    s.unscale_(opt)
    g = m.weight.grad.numpy().copy()
    ds.nn.utils.clip_grad_norm_(m.parameters(), 1e-3)
    with pytest.raises(RuntimeError, match="already been called on this optimizer"):
        s.unscale_(opt)
    s.step(opt)                                    # does not unscale a second time
    assert np.linalg.norm(m.weight.grad.numpy()) <= np.linalg.norm(g)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        s.step(opt)
    with pytest.raises(RuntimeError, match="after step"):
        s.unscale_(opt)
    s.update()
    with pytest.raises(RuntimeError, match="Closure"):
        s.step(opt, closure=lambda: 0)


def test_update_without_steps_asserts_like_torch():
    s = GradScaler()
    s.scale(ds.ones(1))
    with pytest.raises(AssertionError, match="No inf checks"):
        s.update()


def test_fp16_params_without_master_weights_refused():
    m = _model().half()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler()
    s.scale(m(ds.randn(2, 4).half()).float().sum()).backward()
    with pytest.raises(ValueError, match="FP16 gradients.*float32.*autocast"):
        s.step(opt)


def test_disabled_is_a_pass_through():
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler(enabled=False)
    loss = m(ds.randn(2, 4)).sum()
    assert s.scale(loss) is loss
    loss.backward()
    s.step(opt)
    s.update()
    assert s.get_scale() == 1.0 and s.state_dict() == {}


def test_state_dict_round_trip_through_a_checkpoint(tmp_path):
    s = GradScaler(init_scale=512.0, growth_interval=7)
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    for bad in (True, False, False):
        opt.zero_grad()
        _backward(s, m, np.inf if bad else None)
        s.step(opt)
        s.update()
    ds.save({"scaler": s.state_dict()}, str(tmp_path / "ck.safetensors"))
    loaded = ds.load(str(tmp_path / "ck.safetensors"))["scaler"]
    t = GradScaler()
    t.load_state_dict(loaded)
    assert t.state_dict() == s.state_dict() == {
        "scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 7,
        "_growth_tracker": 2}
    with pytest.raises(RuntimeError, match="empty"):
        GradScaler().load_state_dict({})


def test_found_inf_reduce_hook_makes_the_decision_global():
    # a sharded rank that saw no inf must still skip when another rank did
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler()
    seen = []
    s.found_inf_reduce = lambda flag: (seen.append(float(flag[0])), np.maximum(flag, 1.0))[1]
    _backward(s, m)
    w0 = m.weight.detach().numpy().copy()
    s.step(opt)
    s.update()
    assert seen == [0.0]
    np.testing.assert_array_equal(m.weight.detach().numpy(), w0)
    assert s.get_scale() == 2.0 ** 15


@pytest.mark.parametrize("path", ["native", "numpy"])
def test_unscale_is_one_native_pass_with_same_result(path, monkeypatch):
    if path == "native" and not native.available():
        pytest.skip("native extension not built")
    calls = []
    real = native.unscale_
    monkeypatch.setattr(native, "unscale_", lambda g, s: calls.append(len(g)) or real(g, s))
    m = _model()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler(init_scale=4.0)
    with native.use_native(path == "native"):
        _backward(s, m)
        g = [p.grad.numpy().copy() for p in m.parameters()]
        s.unscale_(opt)
    assert calls == [2]                               # all grads in one call
    for a, p in zip(g, m.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), a * np.float32(0.25))
