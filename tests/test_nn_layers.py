"""nn layers next to their PyTorch twins: same weights in, same outputs and grads out."""
import numpy as np
import pytest

import deepseek as ds
import deepseek.nn as nn
import deepseek.nn.functional as F


def _torch():
    return pytest.importorskip("torch")


def _copy_weights(ds_mod, th_mod):
    """Load deepseek's state into the torch module (same names, same layout)."""
    torch = _torch()
    sd = {k: torch.tensor(np.array(v.numpy())) for k, v in ds_mod.state_dict().items()}
    th_mod.load_state_dict(sd, strict=True)


def _run_both(ds_mod, th_mod, *inputs, grad_inputs=True, rtol=1e-5, atol=1e-5, reduce=None):
    """Forward both modules on the same inputs, backward a random cotangent, compare."""
    torch = _torch()
    rng = np.random.default_rng(123)
    ds_in, th_in = [], []
    for a in inputs:
        if isinstance(a, np.ndarray):
            d = ds.tensor(a)
            t = torch.tensor(a)
            if grad_inputs and a.dtype.kind == "f":
                d.requires_grad_(True)
                t.requires_grad_(True)
            ds_in.append(d)
            th_in.append(t)
        else:
            ds_in.append(a)
            th_in.append(a)
    out = ds_mod(*ds_in)
    tout = th_mod(*th_in)
    if reduce is not None:
        out, tout = reduce(out), reduce(tout)
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=rtol, atol=atol)
    g = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(ds.tensor(g))
    tout.backward(torch.tensor(g))
    for d, t in zip(ds_in, th_in):
        if isinstance(d, ds.Tensor) and d.requires_grad:
            np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)
    if not hasattr(ds_mod, "named_parameters"):
        return out, tout
    tparams = dict(th_mod.named_parameters())
    for name, p in ds_mod.named_parameters():
        tp = tparams[name]
        if tp.grad is None:
            assert p.grad is None or float(p.grad.abs().sum()) == 0, name
            continue
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"grad of {name}")
    return out, tout


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_linear_parity_and_init_bounds():
    torch = _torch()
    ds.manual_seed(0)
    m = nn.Linear(7, 5)
    w = m.weight.detach().numpy()
    bound = 1 / np.sqrt(7)
    assert np.abs(w).max() <= bound and np.abs(m.bias.detach().numpy()).max() <= bound
    t = torch.nn.Linear(7, 5)
    _copy_weights(m, t)
    _run_both(m, t, _x(3, 4, 7))
    # non-contiguous input and empty batch
    xt = _x(7, 3).T
    _run_both(m, t, np.ascontiguousarray(xt))
    out = m(ds.zeros(0, 7))
    assert out.shape == (0, 5)
    nb = nn.Linear(3, 2, bias=False)
    assert nb.bias is None and len(list(nb.parameters())) == 1


def test_manual_seed_makes_models_reproducible():
    ds.manual_seed(42)
    a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 4), nn.Embedding(5, 2))
    ds.manual_seed(42)
    b = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 4), nn.Embedding(5, 2))
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=k)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1, bias=False),
                                dict(padding="same", dilation=2, groups=2),
                                dict(padding=1, padding_mode="reflect")])
def test_conv2d_module(kw):
    torch = _torch()
    m = nn.Conv2d(4, 6, 3, **kw)
    t = torch.nn.Conv2d(4, 6, 3, **kw)
    _copy_weights(m, t)
    _run_both(m, t, _x(2, 4, 8, 7), rtol=1e-5, atol=1e-4)


def test_conv1d_module():
    torch = _torch()
    m = nn.Conv1d(3, 5, 4, stride=2, padding=1)
    t = torch.nn.Conv1d(3, 5, 4, stride=2, padding=1)
    _copy_weights(m, t)
    _run_both(m, t, _x(2, 3, 11), rtol=1e-5, atol=1e-4)


def test_batchnorm2d_train_eval_running_stats():
    torch = _torch()
    m = nn.BatchNorm2d(3, momentum=0.2)
    t = torch.nn.BatchNorm2d(3, momentum=0.2)
    with ds.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    _copy_weights(m, t)
    for step in range(3):
        _run_both(m, t, _x(4, 3, 5, 5, seed=step))
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(m, name).numpy(), getattr(t, name).numpy(), rtol=1e-5, atol=1e-6)
    assert int(m.num_batches_tracked.item()) == 3
    m.eval()
    t.eval()
    _run_both(m, t, _x(2, 3, 5, 5, seed=9))
    # momentum=None: cumulative moving average
    m2, t2 = nn.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    for step in range(3):
        _run_both(m2, t2, _x(8, 3, seed=step))
    np.testing.assert_allclose(m2.running_var.numpy(), t2.running_var.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="expected 4D input"):
        m(ds.randn(2, 3, 4))


def test_layernorm_embedding():
    torch = _torch()
    m, t = nn.LayerNorm((5,)), torch.nn.LayerNorm((5,))
    with ds.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    _copy_weights(m, t)
    _run_both(m, t, _x(3, 4, 5))
    e = nn.Embedding(10, 4, padding_idx=0)
    assert float(e.weight[0].abs().sum()) == 0
    te = torch.nn.Embedding(10, 4, padding_idx=0)
    _copy_weights(e, te)
    idx = np.array([[0, 3, 3, 9], [1, 0, 2, 3]])
    _run_both(e, te, idx)
    assert float(e.weight.grad[0].abs().sum()) == 0
    assert repr(e) == "Embedding(10, 4, padding_idx=0)"


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", [None, "attn_bool", "kpm", "both_float"])
def test_multihead_attention(batch_first, masks):
    torch = _torch()
    E, H, L, N = 8, 2, 5, 3
    m = nn.MultiheadAttention(E, H, batch_first=batch_first)
    t = torch.nn.MultiheadAttention(E, H, batch_first=batch_first)
    with ds.no_grad():
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    _copy_weights(m, t)
    x = _x(N, L, E) if batch_first else _x(L, N, E)
    rng = np.random.default_rng(1)
    kw = {}
    if masks == "attn_bool":
        am = np.triu(np.ones((L, L), bool), 1)
        kw = dict(attn_mask=am)
    elif masks == "kpm":
        kpm = rng.random((N, L)) > 0.7
        kpm[:, 0] = False
        kw = dict(key_padding_mask=kpm)
    elif masks == "both_float":
        kw = dict(attn_mask=_x(L, L, seed=3), key_padding_mask=(rng.random((N, L)) > 0.7) & (np.arange(L) > 0))
    for need_weights in (False, True):
        m.zero_grad()
        t.zero_grad()
        dkw = {k: ds.tensor(v) for k, v in kw.items()}
        tkw = {k: torch.tensor(v) for k, v in kw.items()}
        out, w = m(ds.tensor(x), ds.tensor(x), ds.tensor(x), need_weights=need_weights, **dkw)
        tout, tw = t(torch.tensor(x), torch.tensor(x), torch.tensor(x), need_weights=need_weights, **tkw)
        np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-5)
        if need_weights:
            np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
        else:
            assert w is None and tw is None
        g = _x(*out.shape, seed=7)
        out.backward(ds.tensor(g))
        tout.backward(torch.tensor(g))
        tp = dict(t.named_parameters())
        for name, p in m.named_parameters():
            np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=name)


def test_multihead_attention_cross_and_kdim():
    torch = _torch()
    m = nn.MultiheadAttention(8, 4, kdim=6, vdim=5, batch_first=True)
    t = torch.nn.MultiheadAttention(8, 4, kdim=6, vdim=5, batch_first=True)
    _copy_weights(m, t)
    q, k, v = _x(2, 3, 8), _x(2, 4, 6, seed=1), _x(2, 4, 5, seed=2)
    _run_both(lambda q, k, v: m(q, k, v)[0], lambda q, k, v: t(q, k, v)[0], q, k, v, rtol=1e-4)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer(norm_first, activation):
    torch = _torch()
    kw = dict(dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=norm_first, activation=activation)
    m = nn.TransformerEncoderLayer(8, 2, **kw)
    t = torch.nn.TransformerEncoderLayer(8, 2, **kw)
    with ds.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1)
    _copy_weights(m, t)
    kpm = np.zeros((3, 5), bool)
    kpm[1, 3:] = True
    x = _x(3, 5, 8)
    out = m(ds.tensor(x, requires_grad=True), src_key_padding_mask=ds.tensor(kpm))
    tx = torch.tensor(x, requires_grad=True)
    tout = t(tx, src_key_padding_mask=torch.tensor(kpm))
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    _run_both(m, t, x, rtol=1e-4, atol=1e-5)
    enc = nn.TransformerEncoder(m, 2)
    assert len(enc.layers) == 2 and enc.layers[0] is not m
    assert enc(ds.tensor(x)).shape == (3, 5, 8)


def test_dropout_module_train_eval():
    d = nn.Dropout(0.5)
    x = ds.ones(100)
    assert float((d(x) == 0).float().sum()) > 0
    d.eval()
    assert d(x) is x
    assert repr(d) == "Dropout(p=0.5, inplace=False)"


def test_loss_modules():
    torch = _torch()
    x, y = _x(6, 4), np.random.default_rng(0).integers(0, 4, 6)
    w = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
    pairs = [
        (nn.CrossEntropyLoss(weight=ds.tensor(w), label_smoothing=0.1),
         torch.nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.1), y),
        (nn.NLLLoss(reduction="sum"), torch.nn.NLLLoss(reduction="sum"), y),
        (nn.MSELoss(), torch.nn.MSELoss(), _x(6, 4, seed=1)),
        (nn.L1Loss(reduction="none"), torch.nn.L1Loss(reduction="none"), _x(6, 4, seed=1)),
        (nn.BCEWithLogitsLoss(pos_weight=ds.tensor(w)), torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w)),
         (_x(6, 4, seed=2) > 0).astype(np.float32)),
    ]
    for dm, tm, target in pairs:
        dx, tx = ds.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        a, b = dm(dx, ds.tensor(target)), tm(tx, torch.tensor(target))
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
        a.sum().backward()
        b.sum().backward()
        np.testing.assert_allclose(dx.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_small_cnn_end_to_end_matches_torch():
    torch = _torch()
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    t = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.AvgPool2d(2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(8, 10))
    _copy_weights(m, t)
    y = np.random.default_rng(0).integers(0, 10, 4)
    _run_both(lambda x: F.cross_entropy(m(x), ds.tensor(y)),
              lambda x: torch.nn.functional.cross_entropy(t(x), torch.tensor(y)),
              _x(4, 1, 12, 12), rtol=1e-4, atol=1e-5)
    grads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    tgrads = {k: p.grad.numpy() for k, p in t.named_parameters()}
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_multihead_attention_unbatched_and_3d_mask():
    torch = _torch()
    m = nn.MultiheadAttention(8, 2)
    t = torch.nn.MultiheadAttention(8, 2)
    _copy_weights(m, t)
    x = _x(5, 8)
    out, w = m(ds.tensor(x), ds.tensor(x), ds.tensor(x))
    tout, tw = t(torch.tensor(x), torch.tensor(x), torch.tensor(x))
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    xb = _x(5, 3, 8, seed=4)
    mask = _x(6, 5, 5, seed=5)
    out, w = m(ds.tensor(xb), ds.tensor(xb), ds.tensor(xb), attn_mask=ds.tensor(mask), average_attn_weights=False)
    tout, tw = t(torch.tensor(xb), torch.tensor(xb), torch.tensor(xb), attn_mask=torch.tensor(mask),
                 average_attn_weights=False)
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"2D attn_mask is \(4, 4\), but should be \(5, 5\)"):
        m(ds.tensor(xb), ds.tensor(xb), ds.tensor(xb), attn_mask=ds.zeros(4, 4))


def test_linear_with_an_integer_input_names_the_dtypes():
    lin = nn.Linear(3, 4)
    with pytest.raises(RuntimeError, match="same dtype, got input int64, weight float32"):
        lin(ds.ones(2, 3, dtype=ds.int64))
    with pytest.raises(RuntimeError, match="input float64, weight float32"):
        lin(ds.ones(2, 3, dtype=ds.float64))
    assert lin(ds.ones(2, 3)).shape == (2, 4)
