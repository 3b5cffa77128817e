"""Adadelta, Adagrad, RMSprop, Adamax, NAdam, RAdam, Rprop, ASGD, LBFGS against
torch.optim on the same least-squares problem: the weights after 12 steps."""
import numpy as np
import pytest

import deepseek as ds

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)
W = rng.normal(size=(5, 3)).astype(np.float32)
X = rng.normal(size=(8, 5)).astype(np.float32)
Y = rng.normal(size=(8, 3)).astype(np.float32)


def _run(lib, name, kw, steps=12):
    w = lib.tensor(W.copy(), requires_grad=True)
    opt = getattr(lib.optim, name)([w], **kw)
    x, y = lib.tensor(X), lib.tensor(Y)

    def closure():
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        return loss
    for _ in range(steps):
        if name == "LBFGS":
            opt.step(closure)
        else:
            closure()
            opt.step()
    return w.detach().numpy(), opt


CASES = [("Adadelta", {}), ("Adadelta", dict(lr=0.5, weight_decay=0.1)),
         ("Adagrad", dict(lr=0.1, lr_decay=0.01)), ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5)),
         ("RMSprop", dict(lr=0.01)), ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
         ("Adamax", dict(lr=0.05)), ("NAdam", dict(lr=0.05)),
         ("NAdam", dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)), ("RAdam", dict(lr=0.05)),
         ("RAdam", dict(lr=0.05, weight_decay=0.1)), ("Rprop", dict(lr=0.01)), ("ASGD", dict(lr=0.05, t0=2)),
         ("RMSprop", dict(lr=0.01, maximize=True)), ("LBFGS", dict(lr=0.5))]


@pytest.mark.parametrize("name,kw", CASES, ids=lambda v: str(v))
def test_matches_torch(name, kw):
    a, _ = _run(ds, name, kw)
    b, _ = _run(torch, name, kw)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, W)  # it moved


def test_lbfgs_strong_wolfe_converges_like_torch():
    a, _ = _run(ds, "LBFGS", dict(lr=1, line_search_fn="strong_wolfe"), 4)
    b, _ = _run(torch, "LBFGS", dict(lr=1, line_search_fn="strong_wolfe"), 4)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=3e-4)  # float64 internals here, float32 there
    with pytest.raises(RuntimeError, match="closure"):
        ds.optim.LBFGS([ds.zeros(2, requires_grad=True)]).step(None)


def test_state_names_match_torch_and_round_trip():
    for name, kw in [("Adadelta", {}), ("RMSprop", dict(momentum=0.9, centered=True)), ("Adamax", {}),
                     ("NAdam", {}), ("Adagrad", {})]:
        _, od = _run(ds, name, kw, 2)
        _, ot = _run(torch, name, kw, 2)
        assert set(od.state_dict()["state"][0]) == set(ot.state_dict()["state"][0]), name
        w = ds.tensor(W.copy(), requires_grad=True)
        fresh = getattr(ds.optim, name)([w], **kw)
        fresh.load_state_dict(od.state_dict())


def test_invalid_arguments_raise_value_error():
    p = [ds.zeros(2, requires_grad=True)]
    for cls, kw in [("Adadelta", dict(rho=1.5)), ("Adagrad", dict(lr=-1)), ("RMSprop", dict(alpha=-1)),
                    ("Adamax", dict(betas=(1.0, 0.9))), ("RAdam", dict(eps=-1)), ("Rprop", dict(etas=(1.5, 2)))]:
        with pytest.raises(ValueError):
            getattr(ds.optim, cls)(p, **kw)
