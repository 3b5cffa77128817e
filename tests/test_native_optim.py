"""deepseek.native fused optimizer steps: against torch.optim and the numpy path."""
import contextlib

import ml_dtypes
import numpy as np
import pytest

from deepseek import native as N

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = [0, 1, 7, 15, 16, 17, 1023, (1 << 20) + 3]
BACKENDS = ["numpy"] + (N.isa_list() or ["native"])
NATIVE = N.isa_list() or ["native"]

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3, maximize=True),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
]
ADAM_CONFIGS = [
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    ("adamw", dict(lr=1e-2)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
]


@contextlib.contextmanager
def backend(name):
    if name == "numpy":
        with N.use_native(False):
            yield
        return
    if not N.isa_list():
        pytest.skip("deepseek._native is not built")
    with N.use_native(True), N.use_isa(name):
        yield


def unaligned(n, dtype=np.float32):
    return np.empty(n + 1, dtype)[1:]


def filled(values):
    a = unaligned(values.size)
    a[:] = values
    return a


class SGDState:
    def __init__(self, p, cfg):
        self.p, self.cfg, self.buf, self.first = filled(p), cfg, filled(np.zeros_like(p)), True

    def step(self, g, half=None):
        N.sgd_step(self.p, g, self.buf, param_half=half, first_step=self.first, **self.cfg)
        self.first = False


class AdamState:
    def __init__(self, p, kind, cfg):
        self.p = filled(p)
        self.m, self.v, self.vmax = (filled(np.zeros_like(p)) for _ in range(3))
        cfg = dict(cfg)
        beta1, beta2 = cfg.pop("betas", (0.9, 0.999))
        self.cfg = dict(cfg, beta1=beta1, beta2=beta2)
        self.fn = N.adam_step if kind == "adam" else N.adamw_step
        self.t = 0

    def step(self, g, half=None):
        self.t += 1
        self.fn(self.p, g, self.m, self.v, step=self.t, max_exp_avg_sq=self.vmax,
                param_half=half, **self.cfg)


def grads(n, steps, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(steps)]


def run_steps(name, state, gs, half_dtype=None):
    half = unaligned(state.p.size, half_dtype) if half_dtype is not None else None
    with backend(name):
        for g in gs:
            state.step(filled(g), half)
    return state, half


# ------------------------------------------------------------------ vs PyTorch

@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=range(len(SGD_CONFIGS)))
def test_sgd_matches_torch(name, cfg):
    torch = pytest.importorskip("torch")
    p0 = np.random.default_rng(0).standard_normal(1023).astype(np.float32)
    gs = grads(1023, 5, seed=1)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.SGD([tp], **cfg)
    for g in gs:
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
    state, _ = run_steps(name, SGDState(p0, cfg), gs)
    np.testing.assert_allclose(state.p, tp.detach().numpy(), rtol=1e-6, atol=1e-6)
    if cfg.get("momentum"):
        np.testing.assert_allclose(state.buf, opt.state[tp]["momentum_buffer"].numpy(),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("kind,cfg", ADAM_CONFIGS, ids=range(len(ADAM_CONFIGS)))
def test_adam_matches_torch(name, kind, cfg):
    torch = pytest.importorskip("torch")
    p0 = np.random.default_rng(0).standard_normal(1023).astype(np.float32)
    gs = grads(1023, 6, seed=2)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = (torch.optim.Adam if kind == "adam" else torch.optim.AdamW)([tp], **cfg)
    for g in gs:
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
    state, _ = run_steps(name, AdamState(p0, kind, cfg), gs)
    st = opt.state[tp]
    np.testing.assert_allclose(state.p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.m, st["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.v, st["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)
    if cfg.get("amsgrad"):
        np.testing.assert_allclose(state.vmax, st["max_exp_avg_sq"].numpy(), rtol=1e-5,
                                   atol=1e-9)


# -------------------------------------------------------- native vs numpy path

def assert_close(a, b):
    # Same fp32 operations in the same order: equal in practice; tolerance per issue.
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cfg", [SGD_CONFIGS[0], SGD_CONFIGS[3], SGD_CONFIGS[4]],
                         ids=["plain", "momentum", "nesterov"])
def test_sgd_native_vs_numpy(name, n, cfg):
    p0 = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    gs = grads(n, 2, seed=n + 1)
    half = np.float16 if n % 2 else BF16
    a, ha = run_steps("numpy", SGDState(p0, cfg), gs, half)
    b, hb = run_steps(name, SGDState(p0, cfg), gs, half)
    assert_close(a.p, b.p)
    assert_close(a.buf, b.buf)
    np.testing.assert_array_equal(hb.view(np.uint16), N.cast(b.p, half).view(np.uint16))
    assert_close(ha.astype(np.float32), hb.astype(np.float32))


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind,cfg", [ADAM_CONFIGS[1], ADAM_CONFIGS[2], ADAM_CONFIGS[4]],
                         ids=["adam-amsgrad", "adam-maximize", "adamw-amsgrad"])
def test_adam_native_vs_numpy(name, n, kind, cfg):
    p0 = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    gs = grads(n, 2, seed=n + 1)
    half = np.float16 if n % 2 else BF16
    a, ha = run_steps("numpy", AdamState(p0, kind, cfg), gs, half)
    b, hb = run_steps(name, AdamState(p0, kind, cfg), gs, half)
    for x, y in ((a.p, b.p), (a.m, b.m), (a.v, b.v), (a.vmax, b.vmax)):
        assert_close(x, y)
    np.testing.assert_array_equal(hb.view(np.uint16), N.cast(b.p, half).view(np.uint16))
    assert_close(ha.astype(np.float32), hb.astype(np.float32))


@pytest.mark.parametrize("name", BACKENDS)
def test_adam_without_half_and_nd_shapes(name):
    """Any C-contiguous shape works (flat view of the same memory)."""
    p = np.ones((4, 5), np.float32)
    g = np.full((4, 5), 0.5, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    with backend(name):
        N.adam_step(p, g, m, v, lr=0.1, step=1)
    # first Adam step moves every weight by lr (up to eps) against the gradient sign
    np.testing.assert_allclose(p, 0.9, rtol=1e-6)
