"""deepseek.quantization: quantize_dynamic / quantize_weights / prepare+convert, the
quantized modules, save/load, model_size, accuracy on the real digits data."""
import functools
import importlib.util
import os
import warnings

import numpy as np
import pytest

import deepseek
import deepseek.nn as nn
from deepseek import native as N
from deepseek import quantization as Q
from deepseek.nn import quantized as nnq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MLP(nn.Module):
    def __init__(self, d_in=64, hidden=128, d_out=10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def run(model, x):
    with deepseek.no_grad():
        return model(deepseek.from_numpy(x)).numpy()


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def mlp():
    deepseek.manual_seed(0)
    return MLP(70, 100, 13).eval()


def test_quantize_dynamic_replaces_linear_and_is_close(mlp):
    x = np.random.default_rng(0).standard_normal((9, 70)).astype(np.float32)
    q = Q.quantize_dynamic(mlp, {nn.Linear}, dtype="int8")
    assert type(q.fc1) is nnq.dynamic.Linear and type(q.fc2) is nnq.dynamic.Linear
    assert type(mlp.fc1) is nn.Linear                      # a copy: original untouched
    assert "DynamicQuantizedLinear(in_features=70, out_features=100" in repr(q)
    assert q.fc1.weight.dtype == np.int8 and tuple(q.fc1.weight.shape) == (100, 70)
    assert np.abs(q.fc1.weight.numpy()).max() == 127     # per-channel symmetric range
    ref = run(mlp, x)
    assert rel_err(run(q, x), ref) < 0.02
    assert Q.quantize_dynamic(mlp, dtype=deepseek.qint8) is not mlp
    same = Q.quantize_dynamic(mlp, {nn.Linear}, inplace=True)
    assert same is mlp and type(mlp.fc1) is nnq.dynamic.Linear


def test_dynamic_linear_equals_explicit_int8_math(mlp):
    """The module computes exactly float(q(x) @ q(W).T) * (sx * sw) + b."""
    x = np.random.default_rng(1).standard_normal((4, 70)).astype(np.float32)
    ql = nnq.dynamic.Linear.from_float(mlp.fc1)
    w = mlp.fc1.weight.detach().numpy()
    sw = np.abs(w).max(axis=1) / np.float32(127)
    qw = np.clip(np.rint(w / sw[:, None]), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(ql.weight.numpy(), qw)
    sx = np.abs(x).max(axis=1) / np.float32(127)
    qx = np.clip(np.rint(x * (np.float32(1) / sx)[:, None]), -127, 127).astype(np.int32)
    expect = (qx @ qw.T.astype(np.int32)).astype(np.float32) * (sx[:, None] * sw[None, :]) \
        + mlp.fc1.bias.detach().numpy()
    for name in ["numpy"] + N.int8_isa_list():
        ctx = N.use_native(False) if name == "numpy" else N.use_int8_isa(name)
        with ctx:
            np.testing.assert_array_equal(run(ql, x), expect, err_msg=name)


def test_per_row_vs_per_tensor_activations(mlp):
    """Rows of very different magnitude: per-row scales keep the small rows accurate."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 70)).astype(np.float32) * np.float32([100, 1, 0.01, 1, 1, 5, 1, 1])[:, None]
    ref = run(mlp, x)
    errs = {}
    for mode in ("per_row", "per_tensor"):
        q = Q.quantize_dynamic(mlp, act_mode=mode)
        out = run(q, x)
        errs[mode] = np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert errs["per_row"].max() < 0.05
    assert errs["per_tensor"][2] > 5 * errs["per_row"][2]
    with pytest.raises(ValueError, match="act_mode"):
        Q.quantize_dynamic(mlp, act_mode="per_column")


def test_save_load_state_dict_roundtrip(mlp, tmp_path):
    x = np.random.default_rng(3).standard_normal((5, 70)).astype(np.float32)
    q = Q.quantize_dynamic(mlp)
    sd = q.state_dict()
    assert sd["fc1.weight"].dtype == np.int8 and sd["fc1.weight_scale"].dtype == np.float32
    path = str(tmp_path / "q.safetensors")
    deepseek.save(sd, path)
    with open(path, "rb") as f:
        assert b'"I8"' in f.read(4096)                      # int8 tensors in safetensors
    deepseek.manual_seed(123)
    fresh = Q.quantize_dynamic(MLP(70, 100, 13).eval())    # other weights
    assert not np.array_equal(run(fresh, x), run(q, x))
    fresh.load_state_dict(deepseek.load(path))
    np.testing.assert_array_equal(run(fresh, x), run(q, x))  # repacked after loading
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k].numpy())


def test_model_size_ratios():
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512)).eval()
    f = Q.model_size(m)
    d8 = Q.model_size(Q.quantize_dynamic(m))
    w4 = Q.model_size(Q.quantize_weights(m, "int4", group_size=128))
    w8 = Q.model_size(Q.quantize_weights(m, "int8", group_size=None))
    w8g = Q.model_size(Q.quantize_weights(m, "int8", group_size=128))   # + 4 B per 128
    assert 3.8 < f.memory_bytes / w8g.memory_bytes < 3.9
    assert f.parameters == d8.parameters == w4.parameters == sum(p.numel() for p in m.parameters())
    assert f.memory_bytes == 4 * f.parameters
    for s in (d8, w8):
        assert f.memory_bytes / s.memory_bytes >= 3.9 and f.disk_bytes / s.disk_bytes >= 3.9
    assert f.memory_bytes / w4.memory_bytes >= 7 and f.disk_bytes / w4.disk_bytes >= 7


def test_bad_input(mlp):
    with pytest.raises(ValueError, match="not supported; supported: nn.Linear, nn.Embedding"):
        Q.quantize_dynamic(nn.Sequential(nn.LSTM(3, 4)), {nn.LSTM})
    with pytest.raises(ValueError, match="unsupported dtype 'int3'"):
        Q.quantize_dynamic(mlp, dtype="int3")
    with pytest.raises(ValueError, match="unsupported dtype 'int3'"):
        Q.quantize_weights(mlp, dtype="int3")
    with pytest.raises(ValueError, match="group_size"):
        Q.quantize_weights(mlp, "int4", group_size=3)
    with pytest.raises(TypeError, match="Module"):
        Q.quantize_dynamic(np.zeros(3))
    mlp.train()
    with pytest.warns(UserWarning, match="training mode"):
        q = Q.quantize_dynamic(mlp)
    assert not q.training and mlp.training                 # eval copy, original untouched
    with pytest.raises(RuntimeError, match="not supported"):
        q.fc1.half()


def test_quantize_by_name_and_embedding():
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8), nn.Linear(8, 4)).eval()
    q = Q.quantize_dynamic(m, {"1"})
    assert type(q[1]) is nnq.dynamic.Linear and type(q[2]) is nn.Linear
    qe = Q.quantize_dynamic(m, {nn.Embedding})
    assert type(qe[0]) is nnq.Embedding and "QuantizedEmbedding" in repr(qe)
    idx = deepseek.tensor(np.array([[1, 2, 49], [0, 7, 7]]))
    with deepseek.no_grad():
        a, b = qe[0](idx).numpy(), m[0](idx).numpy()
    assert rel_err(a, b) < 0.01


@pytest.mark.parametrize("dtype,tol", [("int8", 0.01), ("int4", 0.2)])
def test_quantize_weights(mlp, dtype, tol):
    x = np.random.default_rng(4).standard_normal((3, 70)).astype(np.float32)
    q = Q.quantize_weights(mlp, dtype, group_size=32)
    assert type(q.fc1) is nnq.WeightOnlyLinear and f"dtype={dtype}" in repr(q)
    assert q.fc1.weight.dtype == (np.uint8 if dtype == "int4" else np.int8)
    ref = run(mlp, x)
    out = run(q, x)
    assert rel_err(out, ref) < tol and cosine(out, ref) > 0.99
    # exactly the dequantized weights' product (kernel dequantizes in place)
    deq = q.fc1.dequantized_weight()
    h = x @ deq.T + mlp.fc1.bias.detach().numpy()
    with deepseek.no_grad():
        np.testing.assert_allclose(q.fc1(deepseek.from_numpy(x)).numpy(), h, rtol=1e-5,
                                   atol=1e-5)


P99 = Q.QConfig(activation=functools.partial(Q.HistogramObserver, percentile=99.0),
                weight="per_channel")


@pytest.mark.parametrize("qconfig", [Q.default_qconfig, Q.histogram_qconfig, P99])
def test_static_ptq_linear(mlp, qconfig):
    rng = np.random.default_rng(5)
    calib = rng.standard_normal((64, 70)).astype(np.float32)
    p = Q.prepare(mlp, qconfig)
    assert "activation_pre_process" in repr(p)
    assert "activation_pre_process" not in mlp.fc1._modules     # a copy
    run(p, calib)
    c = Q.convert(p)
    assert type(c.fc1) is nnq.Linear and "QuantizedLinear" in repr(c)
    s = float(c.fc1.input_scale.numpy()[0])
    amax = np.abs(calib).max()
    if qconfig is Q.default_qconfig:
        assert s == pytest.approx(amax / 127, rel=1e-6)
    else:
        assert s <= amax / 127 * (1 + 1e-6)
        if qconfig is P99:
            assert s < 0.9 * amax / 127                            # percentile clips
    x = rng.standard_normal((6, 70)).astype(np.float32)
    assert rel_err(run(c, x), run(mlp, x)) < (0.1 if qconfig is P99 else 0.03)


def test_static_observer_without_calibration_errors(mlp):
    with pytest.raises(RuntimeError, match="calibration"):
        Q.convert(Q.prepare(mlp))


def test_histogram_observer_percentile_ignores_outliers():
    o = Q.HistogramObserver(percentile=99.0)
    rng = np.random.default_rng(0)
    o(rng.uniform(-1, 1, 10000).astype(np.float32))
    o(np.float32([1000.0]))                                 # one outlier, range grows
    o(rng.uniform(-1, 1, 10000).astype(np.float32))
    assert 0.9 < o.amax() < 2.0
    m = Q.MinMaxObserver()
    m(np.float32([-3.0, 2.0]))
    assert m.amax() == 3.0


def test_static_ptq_conv2d():
    deepseek.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2),
                      nn.ReLU(), nn.Conv2d(4, 4, 1, padding="same")).eval()
    rng = np.random.default_rng(6)
    p = Q.prepare(m)
    for _ in range(3):
        run(p, rng.standard_normal((2, 3, 11, 10)).astype(np.float32))
    c = Q.convert(p)
    assert type(c[0]) is nnq.Conv2d and type(c[2]) is nnq.Conv2d
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    out, ref = run(c, x), run(m, x)
    assert out.shape == ref.shape
    assert cosine(out, ref) > 0.999 and rel_err(out, ref) < 0.05


def test_transformer_encoder_cosine():
    deepseek.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2).eval()
    x = np.random.default_rng(7).standard_normal((2, 10, 64)).astype(np.float32)
    q = Q.quantize_dynamic(enc)
    n_q = sum(type(m) is nnq.dynamic.Linear for m in q.modules())
    assert n_q == 4                                        # FFN linears; attention kept
    assert cosine(run(q, x), run(enc, x)) > 0.99


def _digits():
    spec = importlib.util.spec_from_file_location("train_digits",
                                                  os.path.join(ROOT, "examples", "train_digits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_digits_accuracy_drop_below_one_point():
    td = _digits()
    Xtr, ytr, Xte, yte = td.load(td.DATA)
    deepseek.manual_seed(0)
    model = td.train_permuted(td.MLP(), Xtr, ytr, epochs=8).eval()

    def acc(m):
        return float((run(m, Xte).argmax(1) == yte).mean())
    base = acc(model)
    assert base > 0.93
    dyn = acc(Q.quantize_dynamic(model))
    p = Q.prepare(model)
    for i in range(0, 512, 64):
        run(p, Xtr[i:i + 64])
    static = acc(Q.convert(p))
    w4 = acc(Q.quantize_weights(model, "int4", group_size=32))
    assert base - dyn < 0.01, (base, dyn)
    assert base - static < 0.01, (base, static)
    assert base - w4 < 0.02, (base, w4)


def test_deepcopy_then_load_and_lazy_exports(mlp, tmp_path):
    import copy
    x = np.random.default_rng(8).standard_normal((3, 70)).astype(np.float32)
    q = Q.quantize_dynamic(mlp)
    c = copy.deepcopy(q)                       # the packed view is rebuilt on first use
    np.testing.assert_array_equal(run(c, x), run(q, x))
    deepseek.manual_seed(5)
    other = Q.quantize_dynamic(MLP(70, 100, 13).eval())
    c2 = copy.deepcopy(q)
    c2.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(run(c2, x), run(other, x))
    assert deepseek.quantization is Q and deepseek.qint8 == np.int8
    p = Q.prepare(mlp)
    assert "MinMaxObserver" in repr(p)


def test_reduce_range_uses_7bit_activations(mlp):
    """reduce_range=True: activations in [-63, 63] (torch fbgemm's choice), close to
    fp32, a little less close than 8 bits, identical with and without the kernels."""
    x = np.random.default_rng(5).standard_normal((16, 70)).astype(np.float32)
    ref = run(mlp, x)
    q8 = Q.quantize_dynamic(mlp)
    q7 = Q.quantize_dynamic(mlp, reduce_range=True)
    assert q7.fc1.reduce_range and not q8.fc1.reduce_range
    assert "reduce_range=True" in repr(q7) and "reduce_range" not in repr(q8)
    e8, e7 = rel_err(run(q8, x), ref), rel_err(run(q7, x), ref)
    assert e7 < 0.04 and e8 < e7
    assert cosine(run(q7, x), ref) > 0.999
    qa, _ = N.int8_quantize_rows(x, qmax=63)
    assert np.abs(qa).max() == 63
    with N.use_native(False):
        fallback = run(q7, x)
    np.testing.assert_array_equal(run(q7, x), fallback)
