"""nn.functional ops: gradcheck (float64) and parity with PyTorch (float32)."""
import numpy as np
import pytest

import deepseek as ds
import deepseek.nn.functional as F
from deepseek.testing import check_gradients, compare_with_torch, make_tensor


def _torch():
    return pytest.importorskip("torch")


def _idx(*shape, high, seed=0):
    return ds.tensor(np.random.default_rng(seed).integers(0, high, size=shape))


TOL = dict(rtol=1e-5, atol=1e-5)


# ---- softmax ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, -1, 1])
def test_softmax_family(fn, dim):
    torch = _torch()
    ds_fn, th_fn = getattr(F, fn), getattr(torch.nn.functional, fn)
    check_gradients(lambda x: ds_fn(x, dim), (3, 4, 2))
    compare_with_torch(lambda x: ds_fn(x, dim), lambda x: th_fn(x, dim), [(3, 4, 5)], **TOL)
    compare_with_torch(lambda x: ds_fn(x, dim), lambda x: th_fn(x, dim), [(3, 4, 5)],
                       noncontiguous=True, **TOL)


def test_softmax_stable_and_method():
    x = ds.tensor([[1000.0, 1000.0, -1000.0], [-np.inf, 0.0, 0.0]])
    p = x.softmax(-1).numpy()
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    lp = x.log_softmax(dim=1).numpy()
    assert np.isfinite(lp[0, :2]).all() and np.allclose(lp[0, :2], np.log(0.5))
    assert ds.softmax(x, 1).shape == (2, 3)
    with pytest.raises(RuntimeError, match="floating"):
        F.softmax(ds.tensor([1, 2]), 0)


# ---- losses ----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_indices(reduction, ls, weighted):
    torch = _torch()
    t = _idx(6, high=5, seed=1)
    t._data[2] = -100  # ignored
    w = ds.tensor(np.linspace(0.5, 2.0, 5).astype(np.float32)) if weighted else None
    tw = torch.tensor(w.numpy()) if weighted else None
    compare_with_torch(
        lambda x, t: F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=ls),
        lambda x, t: torch.nn.functional.cross_entropy(x, t, weight=tw, reduction=reduction,
                                                       label_smoothing=ls),
        [(6, 5), t], **TOL)
    w64 = None if w is None else w.double()
    check_gradients(lambda x: F.cross_entropy(x, t, weight=w64, reduction=reduction,
                                              label_smoothing=ls), (6, 5))


def test_cross_entropy_spatial_and_probs():
    torch = _torch()
    t = _idx(2, 3, 4, high=4, seed=2)
    compare_with_torch(F.cross_entropy, torch.nn.functional.cross_entropy, [(2, 4, 3, 4), t], **TOL)
    check_gradients(lambda x: F.cross_entropy(x, t), (2, 4, 3, 4))
    # class probabilities as target (both inputs differentiable)
    probs = ds.tensor(np.random.default_rng(0).dirichlet(np.ones(4), size=5).astype(np.float32))
    compare_with_torch(lambda x, p: F.cross_entropy(x, p, label_smoothing=0.1),
                       lambda x, p: torch.nn.functional.cross_entropy(x, p, label_smoothing=0.1),
                       [(5, 4), probs], **TOL)
    check_gradients(lambda x, p: F.cross_entropy(x, p), (5, 4), probs.double())
    # unbatched (C,) input with a 0-d target
    compare_with_torch(F.cross_entropy, torch.nn.functional.cross_entropy, [(5,), ds.tensor(3)], **TOL)


def test_cross_entropy_errors():
    x = ds.randn(4, 3)
    with pytest.raises(RuntimeError, match="integer dtype"):
        F.cross_entropy(x, ds.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        F.cross_entropy(x, ds.tensor([0, 1, 2, 1, 0]))
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(x, ds.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, ds.tensor([0, 1, 2, 1]), reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(reduction):
    torch = _torch()
    t = _idx(5, high=4, seed=3)
    t._data[0] = 1
    t._data[1] = -100
    w = ds.tensor([1.0, 2.0, 0.5, 1.5])
    compare_with_torch(lambda x, t: F.nll_loss(x, t, weight=w, reduction=reduction),
                       lambda x, t: torch.nn.functional.nll_loss(x, t, weight=torch.tensor(w.numpy()),
                                                                 reduction=reduction),
                       [(5, 4), t], **TOL)
    check_gradients(lambda x: F.nll_loss(x, t, reduction=reduction), (5, 4))
    with pytest.raises(RuntimeError, match="integer dtype"):
        F.nll_loss(ds.randn(5, 4), t.float())


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses(name, reduction):
    torch = _torch()
    ds_fn, th_fn = getattr(F, name), getattr(torch.nn.functional, name)
    compare_with_torch(lambda a, b: ds_fn(a, b, reduction=reduction),
                       lambda a, b: th_fn(a, b, reduction=reduction), [(3, 4), (3, 4)], **TOL)
    check_gradients(lambda a, b: ds_fn(a, b, reduction=reduction), (3, 4), (3, 4))


def test_mse_broadcast_warns_and_errors():
    with pytest.warns(UserWarning, match="broadcast"):
        F.mse_loss(ds.randn(3, 4), ds.randn(4))
    with pytest.raises(RuntimeError, match=r"mse_loss.*\(3, 4\).*\(5,\)"):
        F.mse_loss(ds.randn(3, 4), ds.randn(5))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits(reduction):
    torch = _torch()
    y = ds.tensor((np.random.default_rng(4).random((4, 3)) > 0.5).astype(np.float32))
    pw = ds.tensor([0.5, 2.0, 3.0])
    w = ds.tensor([1.0, 0.5, 2.0])
    compare_with_torch(
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction),
        lambda x, y: torch.nn.functional.binary_cross_entropy_with_logits(
            x, y, weight=torch.tensor(w.numpy()), pos_weight=torch.tensor(pw.numpy()), reduction=reduction),
        [(4, 3), y], low=-20, high=20, **TOL)
    check_gradients(lambda x, y, pw: F.binary_cross_entropy_with_logits(x, y, pos_weight=pw,
                                                                        reduction=reduction),
                    (4, 3), y.double(), pw.double())
    with pytest.raises(ValueError, match="same as input size"):
        F.binary_cross_entropy_with_logits(ds.randn(4, 3), ds.randn(4))
    with pytest.raises(RuntimeError, match="floating point target"):
        F.binary_cross_entropy_with_logits(ds.randn(2), ds.tensor([0, 1]))


def test_binary_cross_entropy():
    torch = _torch()
    y = ds.tensor([[0.0, 1.0, 0.3], [1.0, 0.0, 0.9]])
    compare_with_torch(F.binary_cross_entropy, torch.nn.functional.binary_cross_entropy,
                       [(2, 3), y], low=0.05, high=0.95, **TOL)
    check_gradients(F.binary_cross_entropy, (2, 3), y.double(), low=0.05, high=0.95)


# ---- convolution -------------------------------------------------------------------------
CONV2D_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
    dict(padding="same", dilation=2),
    dict(padding="valid"),
    dict(groups=2, padding=1),
]


@pytest.mark.parametrize("kw", CONV2D_CASES)
def test_conv2d(kw):
    torch = _torch()
    groups = kw.get("groups", 1)
    wshape = (6, 4 // groups, 3, 2)
    compare_with_torch(lambda x, w, b: F.conv2d(x, w, b, **kw),
                       lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **kw),
                       [(2, 4, 7, 6), wshape, (6,)], rtol=1e-5, atol=1e-4)
    check_gradients(lambda x, w, b: F.conv2d(x, w, b, **kw), (1, 4, 5, 5), wshape, (6,))


def test_conv2d_noncontiguous_unbatched_empty():
    torch = _torch()
    compare_with_torch(lambda x, w: F.conv2d(x, w, padding=1), lambda x, w: torch.nn.functional.conv2d(x, w, padding=1),
                       [(2, 3, 5, 6), (4, 3, 3, 3)], noncontiguous=True, rtol=1e-5, atol=1e-4)
    compare_with_torch(lambda x, w: F.conv2d(x, w), lambda x, w: torch.nn.functional.conv2d(x, w),
                       [(3, 5, 6), (4, 3, 3, 3)], rtol=1e-5, atol=1e-4)
    x = ds.zeros(0, 3, 5, 5, requires_grad=True)
    w = ds.randn(4, 3, 3, 3, requires_grad=True)
    out = F.conv2d(x, w, padding=1)
    assert out.shape == (0, 4, 5, 5)
    out.sum().backward()
    assert x.grad.shape == (0, 3, 5, 5) and float(w.grad.abs().sum()) == 0


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=2, dilation=2), dict(groups=3, padding="same")])
def test_conv1d(kw):
    torch = _torch()
    g = kw.get("groups", 1)
    compare_with_torch(lambda x, w, b: F.conv1d(x, w, b, **kw),
                       lambda x, w, b: torch.nn.functional.conv1d(x, w, b, **kw),
                       [(2, 3, 9), (6, 3 // g, 3), (6,)], rtol=1e-5, atol=1e-4)
    check_gradients(lambda x, w, b: F.conv1d(x, w, b, **kw), (2, 3, 7), (6, 3 // g, 3), (6,))


def test_conv_errors():
    x = ds.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"conv2d.*\(4, 2, 3, 3\).*3 channels"):
        F.conv2d(x, ds.randn(4, 2, 3, 3))
    with pytest.raises(RuntimeError, match="conv2d.*dtype"):
        F.conv2d(x, ds.randn(4, 3, 3, 3, dtype=ds.float64))
    with pytest.raises(RuntimeError, match="can't be greater"):
        F.conv2d(x, ds.randn(4, 3, 9, 9))
    with pytest.raises(RuntimeError, match="conv2d.*4-D"):
        F.conv2d(ds.randn(8, 8), ds.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="same"):
        F.conv2d(x, ds.randn(4, 3, 3, 3), stride=2, padding="same")


# ---- pooling -------------------------------------------------------------------------------
POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2), ceil_mode=True),
]


@pytest.mark.parametrize("kw", POOL_CASES + [dict(kernel_size=2, stride=1, dilation=2)])
def test_max_pool2d(kw):
    torch = _torch()
    compare_with_torch(lambda x: F.max_pool2d(x, **kw), lambda x: torch.nn.functional.max_pool2d(x, **kw),
                       [(2, 3, 7, 6)], **TOL)
    check_gradients(lambda x: F.max_pool2d(x, **kw), (1, 2, 5, 6))


def test_max_pool_indices_and_1d():
    torch = _torch()
    x = make_tensor(2, 3, 7, 6, dtype=ds.float32)
    out, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    tout, tidx = torch.nn.functional.max_pool2d(torch.tensor(x.numpy()), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    np.testing.assert_allclose(out.numpy(), tout.numpy())
    assert idx.dtype == ds.int64 and not idx.requires_grad
    compare_with_torch(lambda x: F.max_pool1d(x, 3, 2, 1), lambda x: torch.nn.functional.max_pool1d(x, 3, 2, 1),
                       [(2, 3, 9)], noncontiguous=True, **TOL)


@pytest.mark.parametrize("kw", POOL_CASES + [dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                             dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                  count_include_pad=False),
                                             dict(kernel_size=2, divisor_override=3)])
def test_avg_pool2d(kw):
    torch = _torch()
    compare_with_torch(lambda x: F.avg_pool2d(x, **kw), lambda x: torch.nn.functional.avg_pool2d(x, **kw),
                       [(2, 3, 7, 6)], **TOL)
    check_gradients(lambda x: F.avg_pool2d(x, **kw), (1, 2, 5, 6))


@pytest.mark.parametrize("size", [1, (2, 3), (3, None), 4])
def test_adaptive_avg_pool2d(size):
    torch = _torch()
    compare_with_torch(lambda x: F.adaptive_avg_pool2d(x, size),
                       lambda x: torch.nn.functional.adaptive_avg_pool2d(x, size), [(2, 3, 7, 6)], **TOL)
    check_gradients(lambda x: F.adaptive_avg_pool2d(x, size), (1, 2, 5, 6))


def test_pool_errors():
    with pytest.raises(RuntimeError, match="max_pool2d.*3-D.*4-D"):
        F.max_pool2d(ds.randn(4, 4), 2)
    with pytest.raises(RuntimeError, match="padding should be at most half"):
        F.max_pool2d(ds.randn(1, 1, 4, 4), 2, padding=2)


# ---- normalization ------------------------------------------------------------------------
def test_layer_norm():
    torch = _torch()
    compare_with_torch(lambda x, w, b: F.layer_norm(x, (4,), w, b, 1e-5),
                       lambda x, w, b: torch.nn.functional.layer_norm(x, (4,), w, b, 1e-5),
                       [(3, 5, 4), (4,), (4,)], **TOL)
    compare_with_torch(lambda x: F.layer_norm(x, (5, 4)), lambda x: torch.nn.functional.layer_norm(x, (5, 4)),
                       [(3, 5, 4)], noncontiguous=True, **TOL)
    check_gradients(lambda x, w, b: F.layer_norm(x, (4,), w, b), (3, 4), (4,), (4,))
    with pytest.raises(RuntimeError, match=r"layer_norm.*\(3, 4\).*\(5,\)"):
        F.layer_norm(ds.randn(3, 4), (5,))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 4, 2)])
def test_batch_norm_training_and_running_stats(shape):
    torch = _torch()
    C = shape[1]
    rm, rv = ds.zeros(C), ds.ones(C)
    trm, trv = torch.zeros(C), torch.ones(C)
    compare_with_torch(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3),
                       lambda x, w, b: torch.nn.functional.batch_norm(x, trm, trv, w, b, training=True, momentum=0.3),
                       [shape, (C,), (C,)], **TOL)
    np.testing.assert_allclose(rm.numpy(), trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.numpy(), trv.numpy(), rtol=1e-5, atol=1e-6)
    compare_with_torch(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False),
                       lambda x, w, b: torch.nn.functional.batch_norm(x, trm, trv, w, b, training=False),
                       [shape, (C,), (C,)], **TOL)
    check_gradients(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), shape, (C,), (C,))
    rm64, rv64 = ds.randn(C, dtype=ds.float64), ds.rand(C, dtype=ds.float64) + 0.5
    check_gradients(lambda x, w, b: F.batch_norm(x, rm64, rv64, w, b, training=False), shape, (C,), (C,))


def test_group_norm():
    torch = _torch()
    compare_with_torch(lambda x, w, b: F.group_norm(x, 2, w, b), lambda x, w, b: torch.nn.functional.group_norm(x, 2, w, b),
                       [(2, 4, 3, 3), (4,), (4,)], **TOL)
    check_gradients(lambda x, w, b: F.group_norm(x, 2, w, b), (2, 4, 3), (4,), (4,))


# ---- embedding, dropout, pad, one_hot ---------------------------------------------------------
def test_embedding():
    torch = _torch()
    idx = ds.tensor([[1, 2, 4, 1], [4, 3, 2, 9]])
    for pad in (None, 1):
        for freq in (False, True):
            compare_with_torch(lambda w: F.embedding(idx, w, padding_idx=pad, scale_grad_by_freq=freq),
                               lambda w: torch.nn.functional.embedding(torch.tensor(idx.numpy()), w, padding_idx=pad,
                                                                       scale_grad_by_freq=freq),
                               [(10, 3)], **TOL)
    check_gradients(lambda w: F.embedding(idx, w), (10, 3))
    with pytest.raises(RuntimeError, match="integer dtype"):
        F.embedding(idx.float(), ds.randn(10, 3))
    with pytest.raises(IndexError, match="out of range"):
        F.embedding(ds.tensor([10]), ds.randn(10, 3))


def test_dropout_reproducible_and_scaled():
    x = ds.ones(1000, requires_grad=True)
    ds.manual_seed(5)
    a = F.dropout(x, 0.3)
    ds.manual_seed(5)
    b = F.dropout(x, 0.3)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    vals = np.unique(a.detach().numpy())
    assert len(vals) == 2 and vals[0] == 0 and np.isclose(vals[1], 1 / 0.7)
    assert 0.2 < float((a == 0).float().mean()) < 0.4
    a.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), a.detach().numpy())
    assert F.dropout(x, 0.3, training=False) is x
    assert float(F.dropout(x, 1.0).abs().sum()) == 0
    y = F.dropout2d(ds.ones(4, 8, 3, 3), 0.5).numpy()
    assert (y.reshape(4, 8, 9).std(-1) == 0).all()  # whole channels dropped
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, 1.5)


def test_pad_and_one_hot():
    torch = _torch()
    for mode, pad in [("constant", (1, 2, 0, 1)), ("constant", (-1, 2)), ("reflect", (2, 1, 1, 2)),
                      ("replicate", (3, 1, 1, 0)), ("circular", (2, 1, 1, 1))]:
        kw = dict(value=0.5) if mode == "constant" else {}
        compare_with_torch(lambda x: F.pad(x, pad, mode=mode, **kw),
                           lambda x: torch.nn.functional.pad(x, pad, mode=mode, **kw), [(2, 3, 4, 5)], **TOL)
        check_gradients(lambda x: F.pad(x, pad, mode=mode, **kw), (1, 2, 4, 5))
    oh = F.one_hot(ds.tensor([0, 2, 1]), 4)
    assert oh.dtype == ds.int64 and oh.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]]
    with pytest.raises(RuntimeError, match="integer"):
        F.one_hot(ds.tensor([0.0]))


def test_activations():
    torch = _torch()
    for name in ["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus", "mish", "relu6"]:
        compare_with_torch(getattr(F, name), getattr(torch.nn.functional, name), [(3, 4)], low=-4, high=4, **TOL)
    check_gradients(F.softplus, (3, 4))
    check_gradients(F.elu, (3, 4))


# ---- attention ------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "causal"])
def test_sdpa(mask_kind):
    torch = _torch()
    rng = np.random.default_rng(0)
    L, S = 5, 6
    kw, tkw = {}, {}
    if mask_kind == "bool":
        m = rng.random((L, S)) > 0.3
        m[:, 0] = True
        kw["attn_mask"], tkw["attn_mask"] = ds.tensor(m), torch.tensor(m)
    elif mask_kind == "float":
        m = rng.standard_normal((2, 1, L, S)).astype(np.float32)
        kw["attn_mask"], tkw["attn_mask"] = ds.tensor(m), torch.tensor(m)
    elif mask_kind == "causal":
        S = L
        kw["is_causal"] = tkw["is_causal"] = True
    compare_with_torch(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw),
                       lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, **tkw),
                       [(2, 3, L, 4), (2, 3, S, 4), (2, 3, S, 4)], **TOL)
    if mask_kind == "float":
        kw["attn_mask"] = kw["attn_mask"].double()
    check_gradients(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw),
                    (2, 1, L, 3), (2, 1, S, 3), (2, 1, S, 3))


def test_sdpa_dropout_reproducible_and_weights():
    q = ds.randn(2, 4, 3, requires_grad=True)
    ds.manual_seed(1)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    ds.manual_seed(1)
    b = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    out, w = F.scaled_dot_product_attention(q, q, q, need_weights=True)
    np.testing.assert_allclose(w.sum(-1).detach().numpy(), 1.0, rtol=1e-6)
    check_gradients(lambda q, k: F.scaled_dot_product_attention(q, k, k, need_weights=True)[1],
                    (1, 3, 2), (1, 4, 2))
    with pytest.raises(RuntimeError, match="attn_mask of shape"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=ds.ones(3, 3, dtype=ds.bool))


def test_max_pool_ties_route_to_first_max():
    torch = _torch()
    x = ds.tensor(np.random.default_rng(0).integers(0, 2, size=(2, 2, 6, 6)).astype(np.float32))
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
        compare_with_torch(lambda x: F.max_pool2d(x, **kw), lambda x: torch.nn.functional.max_pool2d(x, **kw),
                           [x], **TOL)


def test_empty_batches():
    torch = _torch()
    x = ds.zeros(0, 4, requires_grad=True)
    t = ds.zeros(0, dtype=ds.int64)
    assert float(F.cross_entropy(x, t, reduction="sum")) == 0
    assert np.isnan(float(F.cross_entropy(x, t)))
    assert np.isnan(float(torch.nn.functional.cross_entropy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))))
    F.cross_entropy(x, t, reduction="sum").backward()
    assert x.grad.shape == (0, 4)
    assert F.cross_entropy(x, t, reduction="none").shape == (0,)
    assert F.layer_norm(ds.zeros(0, 3), (3,)).shape == (0, 3)
    assert F.embedding(ds.zeros(0, 2, dtype=ds.int64), ds.randn(4, 3)).shape == (0, 2, 3)
    assert F.max_pool2d(ds.zeros(0, 2, 4, 4), 2).shape == (0, 2, 2, 2)
    assert F.avg_pool2d(ds.zeros(0, 2, 4, 4), 2).shape == (0, 2, 2, 2)
    assert F.batch_norm(ds.zeros(0, 3), ds.zeros(3), ds.ones(3)).shape == (0, 3)
    assert F.softmax(ds.zeros(0, 3), -1).shape == (0, 3)
    assert F.mse_loss(ds.zeros(0), ds.zeros(0), reduction="sum").item() == 0


def test_low_precision_forward():
    x = ds.randn(4, 8)
    for dt in (ds.float16, ds.bfloat16):
        y = F.softmax(x.to(dt), -1)
        assert y.dtype == dt
        np.testing.assert_allclose(np.asarray(y.float().numpy()), F.softmax(x, -1).numpy(), atol=1e-2)
        ln = F.layer_norm(x.to(dt), (8,))
        assert ln.dtype == dt
        np.testing.assert_allclose(np.asarray(ln.float().numpy()), F.layer_norm(x, (8,)).numpy(), atol=5e-2)
        assert F.cross_entropy(x.to(dt), ds.tensor([0, 1, 2, 3])).dtype == dt
