"""ResNet-18/50 in torchvision's layout: a state dict by torchvision's names (saved as
safetensors, no config.json) loads through the hub, and the forward pass matches a
PyTorch reference computed from the same tensors."""
import os

import numpy as np
import pytest

import deepseek
from deepseek import hub
from deepseek.models import resnet18, resnet50
from deepseek.serialization import save_file

# torchvision's resnet18().state_dict() names (a sample) and count
TV18 = ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight", "fc.bias"]


def _random_state(model, seed):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, v in model.state_dict().items():
        shape = tuple(v.shape)
        if k.endswith("num_batches_tracked"):
            sd[k] = np.array(7, dtype=np.int64)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "1.weight")) and len(shape) == 1:
            sd[k] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
        else:
            fan = int(np.prod(shape[1:])) if len(shape) > 1 else 10
            sd[k] = (rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32)
    return sd


def _torch_forward(sd, x, block, layers):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = {k: torch.tensor(v) for k, v in sd.items()}

    def bn(x, p):
        return F.batch_norm(x, t[p + ".running_mean"], t[p + ".running_var"], t[p + ".weight"],
                            t[p + ".bias"], False, 0.0, 1e-5)
    x = torch.tensor(x)
    x = F.max_pool2d(F.relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for li, n in enumerate(layers):
        for b in range(n):
            p = f"layer{li + 1}.{b}"
            stride = 2 if (li > 0 and b == 0) else 1
            if block == "basic":
                o = F.relu(bn(F.conv2d(x, t[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
                o = bn(F.conv2d(o, t[p + ".conv2.weight"], padding=1), p + ".bn2")
            else:
                o = F.relu(bn(F.conv2d(x, t[p + ".conv1.weight"]), p + ".bn1"))
                o = F.relu(bn(F.conv2d(o, t[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn2"))
                o = bn(F.conv2d(o, t[p + ".conv3.weight"]), p + ".bn3")
            idt = x
            if p + ".downsample.0.weight" in t:
                idt = bn(F.conv2d(x, t[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
            x = F.relu(o + idt)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.linear(x, t["fc.weight"], t["fc.bias"]).numpy()


@pytest.mark.parametrize("depth,block,layers", [(18, "basic", [2, 2, 2, 2]),
                                                (50, "bottleneck", [3, 4, 6, 3])])
def test_resnet_torchvision_layout(tmp_path, depth, block, layers):
    m = resnet18() if depth == 18 else resnet50()
    keys = list(m.state_dict())
    assert len(keys) == (122 if depth == 18 else 320)     # torchvision's counts
    if depth == 18:
        assert all(k in keys for k in TV18)
    sd = _random_state(m, depth)
    save_file(sd, os.path.join(tmp_path, "model.safetensors"))
    hub.register(f"tv-resnet{depth}", "ResNet", path=str(tmp_path), config={"depth": depth})
    try:
        got = hub.load(f"tv-resnet{depth}")
    finally:
        hub._registered.pop(f"tv-resnet{depth}")
    assert not got.training
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with deepseek.no_grad():
        out = got(deepseek.tensor(x)).numpy()
    want = _torch_forward(sd, x, block, layers)
    assert out.shape == (2, 1000)
    np.testing.assert_allclose(out, want, atol=2e-4, rtol=1e-3)
