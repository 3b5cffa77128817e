"""nn.Module machinery: registration, traversal, state_dict, hooks, modes, repr, dtype,
containers, init and utils."""
import copy
import math

import numpy as np
import pytest

import deepseek as ds
import deepseek.nn as nn
import deepseek.nn.functional as F
from deepseek.nn import init


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm1d(3)
        self.scale = nn.Parameter(ds.ones(1))
        self.register_buffer("steps", ds.zeros(1))
        self.register_buffer("cache", ds.zeros(2), persistent=False)

    def forward(self, x):
        return self.bn(self.act(self.fc1(x))) * self.scale


def test_registration_and_traversal():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "fc1.weight", "fc1.bias", "bn.weight", "bn.bias"]
    assert [n for n, _ in net.named_buffers()] == ["steps", "cache", "bn.running_mean",
                                                   "bn.running_var", "bn.num_batches_tracked"]
    assert [n for n, _ in net.named_children()] == ["fc1", "act", "bn"]
    assert [n for n, _ in net.named_modules()] == ["", "fc1", "act", "bn"]
    assert [n for n, _ in net.named_parameters(prefix="m", recurse=False)] == ["m.scale"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert net.fc1.weight is net.get_parameter("fc1.weight")
    assert net.get_submodule("bn") is net.bn
    # shared parameters appear once unless remove_duplicate=False
    net.fc2 = net.fc1
    assert len(list(net.parameters())) == 5
    assert len(list(net.named_parameters(remove_duplicate=False))) == 7
    del net.fc2
    assert "fc2" not in dict(net.named_children())
    # reassigning a parameter slot with a plain tensor is an error
    with pytest.raises(TypeError, match="nn.Parameter or None expected"):
        net.scale = ds.ones(1)
    net.scale = None
    assert "scale" not in [n for n, _ in net.named_parameters()]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        net.nope
    with pytest.raises(KeyError, match="contain"):
        net.register_buffer("a.b", ds.zeros(1))


def test_state_dict_roundtrip_and_sharing():
    ds.manual_seed(0)
    a = Net()
    sd = a.state_dict()
    assert list(sd) == ["scale", "steps", "fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert "cache" not in sd
    assert not any(v.requires_grad for v in sd.values())
    assert np.shares_memory(sd["fc1.weight"].numpy(), a.fc1.weight._data)
    b = Net()
    res = b.load_state_dict(sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k].numpy())
    # state_dict with prefix
    assert "net.fc1.weight" in a.state_dict(prefix="net.")
    # numpy arrays are accepted as values
    b.load_state_dict({k: np.array(v.numpy()) for k, v in sd.items()})


def test_load_state_dict_errors():
    net = Net()
    sd = net.state_dict()
    sd.pop("fc1.bias")
    sd["extra.weight"] = ds.zeros(1)
    sd["fc1.weight"] = ds.zeros(5, 4)
    with pytest.raises(RuntimeError) as ei:
        net.load_state_dict(sd)
    msg = str(ei.value)
    assert "Error(s) in loading state_dict for Net" in msg
    assert 'Missing key(s) in state_dict: "fc1.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in msg
    assert "size mismatch for fc1.weight: copying a param with shape (5, 4) from checkpoint, " \
           "the shape in current model is (3, 4)" in msg
    # strict=False: key problems are reported, shape mismatch is still an error
    with pytest.raises(RuntimeError, match="size mismatch for fc1.weight") as ei:
        net.load_state_dict(sd, strict=False)
    assert "Missing key" not in str(ei.value)
    sd["fc1.weight"] = ds.zeros(3, 4)
    res = net.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["fc1.bias"] and res.unexpected_keys == ["extra.weight"]
    assert float(net.fc1.weight.abs().sum()) == 0


@pytest.mark.parametrize("value,says", [
    ("hello", "got str 'hello'"),
    (np.array(["a", "b"]), "array of dtype <U1"),
    (object(), "got object"),
])
def test_load_state_dict_names_a_value_of_the_wrong_type(value, says):
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(RuntimeError) as ei:
        net.load_state_dict({"0.weight": value, "0.bias": ds.zeros(2)})
    msg = str(ei.value)
    assert 'parameter named "0.weight", expected a Tensor or a numeric array' in msg
    assert says in msg and "size mismatch" not in msg
    # plain numeric arrays and nested lists are still accepted
    net.load_state_dict({"0.weight": [[1.0, 2.0], [3.0, 4.0]], "0.bias": np.zeros(2)})
    assert net[0].weight.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_forward_hooks_and_handles():
    net = Net()
    calls = []

    def pre(mod, args):
        calls.append(("pre", type(mod).__name__))
        return (args[0] * 0,)

    def post(mod, args, out):
        calls.append(("post", type(mod).__name__))
        return out + 1

    h1 = net.fc1.register_forward_pre_hook(pre)
    h2 = net.fc1.register_forward_hook(post)
    x = ds.randn(5, 4)
    out = net.fc1(x)
    np.testing.assert_allclose(out.detach().numpy(), (net.fc1.bias.detach().numpy() + 1)[None].repeat(5, 0), rtol=1e-6)
    assert calls == [("pre", "Linear"), ("post", "Linear")]
    h1.remove()
    h2.remove()
    np.testing.assert_allclose(net.fc1(x).detach().numpy(), F.linear(x, net.fc1.weight, net.fc1.bias).detach().numpy())

    seen = {}
    h = net.register_forward_pre_hook(lambda m, a, k: seen.update(k) or (a, k), with_kwargs=True)
    net.train()(x)
    h.remove()
    g = nn.register_module_forward_hook(lambda m, a, o: seen.setdefault("global", []).append(type(m).__name__))
    net(x)
    g.remove()
    assert seen["global"] == ["Linear", "ReLU", "BatchNorm1d", "Net"]


def test_train_eval_zero_grad_apply_requires_grad():
    net = Net()
    assert net.training and net.bn.training
    assert net.eval() is net and not net.bn.training
    net.train()
    assert net.bn.training
    out = net(ds.randn(6, 4)).sum()
    out.backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(float(p.grad.abs().sum()) == 0 for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "ReLU", "BatchNorm1d", "Net"]
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_to_dtype_keeps_parameter_identity():
    net = Net()
    w = net.fc1.weight
    net.double()
    assert net.fc1.weight is w and w.dtype == ds.float64 and isinstance(w, nn.Parameter)
    assert net.bn.running_mean.dtype == ds.float64
    assert net.bn.num_batches_tracked.dtype == ds.int64
    net.to(ds.float32)
    assert w.dtype == ds.float32
    net.half().float()
    net.to("cpu")
    out = net(ds.randn(3, 4))
    assert out.dtype == ds.float32
    with pytest.raises(TypeError, match="floating point"):
        net.to(ds.int64)


def test_repr_like_pytorch():
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(16, 10), nn.BatchNorm1d(10), nn.LayerNorm(10), nn.Dropout(0.1),
                      nn.GELU(), nn.Softmax(dim=1))
    assert repr(m) == """Sequential(
  (0): Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (1): ReLU()
  (2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (3): Flatten(start_dim=1, end_dim=-1)
  (4): Linear(in_features=16, out_features=10, bias=True)
  (5): BatchNorm1d(10, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
  (6): LayerNorm((10,), eps=1e-05, elementwise_affine=True, bias=True)
  (7): Dropout(p=0.1, inplace=False)
  (8): GELU(approximate='none')
  (9): Softmax(dim=1)
)"""
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Flatten(), torch.nn.Linear(16, 10), torch.nn.BatchNorm1d(10),
                             torch.nn.LayerNorm(10), torch.nn.Dropout(0.1), torch.nn.GELU(),
                             torch.nn.Softmax(dim=1))
    assert repr(m) == repr(tm)
    tl = torch.nn.TransformerEncoderLayer(8, 2, 16)
    assert repr(nn.TransformerEncoderLayer(8, 2, 16)) == repr(tl)


def test_containers():
    s = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    s.append(nn.Linear(3, 1))
    assert len(s) == 3 and isinstance(s[-1], nn.Linear) and isinstance(s[1:], nn.Sequential)
    assert len(s[1:]) == 2
    assert s(ds.randn(4, 2)).shape == (4, 1)
    s[1] = nn.Tanh()
    assert isinstance(s[1], nn.Tanh)
    del s[1]
    assert [n for n, _ in s.named_children()] == ["0", "1"]
    with pytest.raises(IndexError):
        s[5]
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    ml.append(nn.ReLU())
    assert len(ml) == 4 and len(list(ml.parameters())) == 6
    assert [n for n, _ in ml.named_parameters()][:2] == ["0.weight", "0.bias"]
    md = nn.ModuleDict({"a": nn.Linear(1, 1), "b": nn.ReLU()})
    assert list(md.keys()) == ["a", "b"] and "a" in md and len(md) == 2
    from collections import OrderedDict
    s2 = nn.Sequential(OrderedDict([("first", nn.Linear(1, 2)), ("act", nn.ReLU())]))
    assert s2.first is s2[0]
    pl = nn.ParameterList([nn.Parameter(ds.ones(2)), ds.zeros(3)])
    assert len(list(pl.parameters())) == 2


def test_parameter_basics_and_deepcopy():
    t = ds.randn(3)
    p = nn.Parameter(t)
    assert p.requires_grad and np.shares_memory(p._data, t._data) and p.is_leaf
    assert repr(p).startswith("Parameter containing:\ntensor(")
    q = copy.deepcopy(p)
    assert isinstance(q, nn.Parameter) and not np.shares_memory(q._data, p._data)
    net = copy.deepcopy(Net())
    assert isinstance(net.fc1.weight, nn.Parameter)
    with pytest.raises(RuntimeError, match="floating point"):
        nn.Parameter(ds.tensor([1, 2]))
    assert not nn.Parameter(ds.tensor([1, 2]), requires_grad=False).requires_grad


def test_init_functions():
    ds.manual_seed(3)
    w = nn.Parameter(ds.empty(64, 32))
    init.kaiming_uniform_(w, a=math.sqrt(5))
    bound = math.sqrt(6 / ((1 + 5) * 32))
    assert np.abs(w._data).max() <= bound
    init.xavier_uniform_(w)
    assert np.abs(w._data).max() <= math.sqrt(6 / 96)
    init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w._data.std() - math.sqrt(2 / 32)) < 0.03
    init.trunc_normal_(w, std=0.5, a=-0.4, b=0.4)
    assert np.abs(w._data).max() <= 0.4 and w._data.std() > 0.1
    init.zeros_(w)
    assert not w._data.any()
    init.constant_(w, 2.5)
    assert (w._data == 2.5).all()
    init.orthogonal_(w)
    np.testing.assert_allclose(w._data.T @ w._data, np.eye(32), atol=1e-5)
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert w.grad_fn is None and w.requires_grad


def test_clip_grad_and_vectors():
    torch = pytest.importorskip("torch")
    ps = [nn.Parameter(ds.randn(3, 4)), nn.Parameter(ds.randn(5))]
    tps = [torch.tensor(p.detach().numpy(), requires_grad=True) for p in ps]
    for p, tp in zip(ps, tps):
        g = np.random.default_rng(0).standard_normal(tuple(p.shape)).astype(np.float32) * 3
        p.grad = ds.tensor(g)
        tp.grad = torch.tensor(g)
    for norm_type in (2.0, 1.0, math.inf):
        n = nn.utils.clip_grad_norm_(ps, 1.5, norm_type=norm_type)
        tn = torch.nn.utils.clip_grad_norm_(tps, 1.5, norm_type=norm_type)
        assert float(n) == pytest.approx(float(tn), rel=1e-5)
        for p, tp in zip(ps, tps):
            np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-5, atol=1e-6)
    ps[0].grad._data[0, 0] = np.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    ps[0].grad._data[0, 0] = 10.0
    nn.utils.clip_grad_value_(ps, 0.1)
    assert float(ps[0].grad.abs().max()) <= 0.1 + 1e-7
    vec = nn.utils.parameters_to_vector(ps)
    assert vec.shape == (17,)
    nn.utils.vector_to_parameters(ds.arange(17).float(), ps)
    assert ps[1].tolist() == [12.0, 13.0, 14.0, 15.0, 16.0]
    with pytest.raises(ValueError, match="17 elements"):
        nn.utils.vector_to_parameters(ds.zeros(3), ps)
