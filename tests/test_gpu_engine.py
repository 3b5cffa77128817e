"""The engine on CuPy: the same models on "cuda" and on "cpu" give the same numbers.

Skips without cupy and a GPU (scripts/gpu_check.py runs it on a GPU machine). Each
test builds a model on the CPU, copies it to the GPU, runs forward, backward and a few
optimizer steps on both, and compares losses and weights.

Models avoid parameters whose true gradient is zero (a conv bias right before
BatchNorm, attention's key bias): there the gradient is rounding noise that differs
between devices, and Adam's normalisation turns any noise into a full-size step.
"""
import copy

import numpy as np
import pytest

import deepseek as ds
from deepseek import nn
from deepseek.backend import cupy_available

pytestmark = pytest.mark.skipif(not cupy_available(), reason="needs cupy and a GPU")

F = nn.functional


def _np(t):
    return ds.backend.to_device(t.data, "cpu") if hasattr(t, "data") else np.asarray(t)


def _train_both(model, make_batch, loss_fn, opt_cls, steps=3, rtol=2e-4, atol=2e-5,
                **opt_kw):
    """Train a CPU copy and a GPU copy side by side; compare after every step."""
    ds.manual_seed(0)
    cpu = model
    gpu = copy.deepcopy(model).to("cuda")
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    o_cpu, o_gpu = opt_cls(cpu.parameters(), **opt_kw), opt_cls(gpu.parameters(), **opt_kw)
    for step in range(steps):
        inputs, target = make_batch(step)
        losses = []
        for m, opt, dev in ((cpu, o_cpu, "cpu"), (gpu, o_gpu, "cuda")):
            opt.zero_grad()
            out = m(*[x.to(dev) for x in inputs])
            loss = loss_fn(out, target.to(dev))
            loss.backward()
            losses.append(float(loss.item()))
            opt.step()
        np.testing.assert_allclose(losses[1], losses[0], rtol=rtol, atol=atol,
                                   err_msg=f"loss differs at step {step}")
        for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
            assert pg.device.type == "cuda", name
            np.testing.assert_allclose(_np(pg), _np(pc), rtol=rtol, atol=atol,
                                       err_msg=f"{name} differs after step {step}")


def test_tensor_round_trip_and_basic_ops():
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    x = ds.tensor(a, requires_grad=True)
    g = ds.tensor(a).cuda().requires_grad_()
    assert g.is_cuda and str(g.device) == "cuda:0"
    for t in (x, g):
        y = ((t * 2 + 1).exp().log() @ t.T).sum(dim=1).mean()
        y.backward()
    np.testing.assert_allclose(_np(g.grad), _np(x.grad), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(g.detach().cpu().numpy(), a)
    with pytest.raises(RuntimeError, match="same device"):
        x + g


def test_mlp_cross_entropy_sgd_and_adamw():
    ds.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    rng = np.random.default_rng(1)

    def batch(step):
        return ((ds.tensor(rng.standard_normal((16, 32)).astype(np.float32)),),
                ds.tensor(rng.integers(0, 10, 16)))
    _train_both(copy.deepcopy(model), batch, F.cross_entropy, ds.optim.SGD, lr=0.1,
                momentum=0.9)
    _train_both(model, batch, F.cross_entropy, ds.optim.AdamW, lr=1e-2)


def test_cnn_batchnorm_adam():
    ds.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                          nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    rng = np.random.default_rng(2)

    def batch(step):
        return ((ds.tensor(rng.standard_normal((8, 1, 8, 8)).astype(np.float32)),),
                ds.tensor(rng.integers(0, 10, 8)))
    _train_both(model, batch, F.cross_entropy, ds.optim.Adam, lr=1e-2)


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 50)

    def forward(self, tokens):
        return self.head(self.norm(self.layer(self.emb(tokens))))


def test_transformer_sgd():
    ds.manual_seed(0)
    model = _TinyLM()
    rng = np.random.default_rng(3)

    def batch(step):
        tok = rng.integers(0, 50, (4, 12))
        return (ds.tensor(tok),), ds.tensor(rng.integers(0, 50, (4, 12)))

    def loss(out, target):
        return F.cross_entropy(out.reshape(-1, 50), target.reshape(-1))
    _train_both(model, batch, loss, ds.optim.SGD, lr=0.1, momentum=0.9, rtol=1e-3,
                atol=1e-4)


def test_state_dict_from_gpu_saves_and_loads(tmp_path):
    ds.manual_seed(0)
    model = nn.Linear(4, 3).cuda()
    path = tmp_path / "w.safetensors"
    ds.save(model.state_dict(), path)
    back = ds.load(path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(_np(back[k]), _np(v))
