"""Mixed precision on the GPU: the seed's AMP loop (autocast fp16 + GradScaler) on CuPy.

Skips without cupy and a GPU (scripts/gpu_check.py runs it on a GPU machine). The same
checks as the CPU tests, on "cuda": output dtypes of autocast's fp16 region, values near
the fp32 result, fp32 master gradients, GradScaler's skipped inf step and back-off, and
a few training steps of a small transformer layer that follow the fp32 run.
"""
import copy

import numpy as np
import pytest

import deepseek as ds
from deepseek import nn
from deepseek.amp import GradScaler, autocast
from deepseek.backend import cupy_available

pytestmark = pytest.mark.skipif(not cupy_available(), reason="needs cupy and a GPU")


def _np(t):
    return t.detach().to("cpu").numpy()


def _layer():
    ds.manual_seed(0)
    return nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
                                      batch_first=True)


def test_fp16_region_dtypes_and_values_on_cuda():
    cpu = _layer()
    gpu = copy.deepcopy(cpu).to("cuda")
    x = ds.randn(4, 16, 64)
    with autocast("cuda"):
        lin = gpu.linear1(x.cuda())
        out = gpu(x.cuda())
    assert lin.dtype == ds.float16 and lin.is_cuda     # a GEMM runs in fp16, like torch
    assert out.dtype == ds.float32                      # layer norm last: fp32, like torch
    np.testing.assert_allclose(_np(out), _np(cpu(x)), rtol=2e-2, atol=2e-2)


def test_fp16_backward_reaches_fp32_master_grads_on_cuda():
    cpu = _layer()
    gpu = copy.deepcopy(cpu).to("cuda")
    x = ds.randn(4, 16, 64)
    with autocast("cuda"):
        loss = (gpu(x.cuda()).float() ** 2).mean()
    loss.backward()
    (cpu(x) ** 2).mean().backward()
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        assert pg.dtype == ds.float32 and pg.grad.dtype == ds.float32, name
        g, ref = _np(pg.grad), _np(pc.grad)
        assert np.abs(g - ref).max() <= 5e-2 * (np.abs(ref).max() + 1e-3), name


def test_grad_scaler_skips_inf_step_and_backs_off_on_cuda():
    ds.manual_seed(0)
    m = nn.Linear(8, 4).to("cuda")
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaler(init_scale=256.0, growth_interval=2)

    def backward(poison=False):
        opt.zero_grad()
        with autocast("cuda"):
            loss = m(ds.randn(5, 8).cuda()).float().sum()
        s.scale(loss).backward()
        if poison:
            m.weight.grad.data[0, 0] = float("inf")
    backward(poison=True)
    w0 = _np(m.weight).copy()
    s.step(opt)
    s.update()
    np.testing.assert_array_equal(_np(m.weight), w0)         # the step was skipped
    assert s.get_scale() == 128.0                            # and the scale backed off
    for i in range(2):
        backward()
        s.step(opt)
        s.update()
    assert s.get_scale() == 256.0                            # grown after 2 clean steps
    assert not np.array_equal(_np(m.weight), w0)


def test_amp_loop_follows_fp32_training_on_cuda():
    """The seed's loop, as written, on the GPU: 20 steps of fp16 autocast + GradScaler end
    within 2% of the fp32 run's loss (same seed, same data)."""
    rng = np.random.default_rng(0)
    xs = [ds.tensor(rng.standard_normal((8, 16, 64)).astype(np.float32)).cuda()
          for _ in range(4)]
    target = [x * 0.5 for x in xs]

    def train(amp):
        m = _layer().to("cuda")
        opt = ds.optim.Adam(m.parameters(), lr=1e-3)
        scaler = GradScaler(enabled=amp)
        for step in range(20):
            x, y = xs[step % 4], target[step % 4]
            opt.zero_grad()
            with autocast("cuda", enabled=amp):
                loss = ((m(x).float() - y) ** 2).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return float(loss.item())
    fp32, fp16 = train(False), train(True)
    assert abs(fp16 - fp32) <= 0.02 * fp32, (fp16, fp32)
