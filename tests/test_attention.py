"""scaled_dot_product_attention's threaded CPU path (work items over the batch, BLAS at one
thread) against its plain batched path and PyTorch: the same forward and gradients for
masks (float, bool, broadcast, fully masked rows), causal, dropout and need_weights."""
import numpy as np
import pytest

import deepseek
from deepseek.ops import attention as A
from deepseek.nn import functional as F
from deepseek._tensor import Tensor


@pytest.fixture(params=["plain", "threaded"])
def path(request, monkeypatch):
    """Run the test once on each path: the threaded one forced on for small shapes (with
    two workers, as on a 2-thread BLAS), the plain one by never reaching the threshold."""
    if request.param == "threaded":
        monkeypatch.setattr(A, "_PAR_MIN_WORK", 0)
        monkeypatch.setattr(A, "blas_threads", lambda: 2)
    else:
        monkeypatch.setattr(A, "_PAR_MIN_WORK", 1 << 62)
    return request.param


def _qkv(B=3, H=2, L=5, S=7, d=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    mk = lambda *s: Tensor._make(rng.standard_normal(s).astype(dtype), requires_grad=True)
    return mk(B, H, L, d), mk(B, H, S, d), mk(B, H, S, d)


def _ref(q, k, v, mask=None, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    t = e.sum(-1, keepdims=True)
    return (e / np.where(t == 0, 1, t)) @ v


def test_plan_is_taken_when_forced(path):
    q, k, v = _qkv()
    plan = A._parallel_plan(np, q._data, k._data, v._data, None)
    assert (plan is not None) == (path == "threaded")
    if plan:
        workers, items = plan
        assert workers == 2 and items == [(i, j) for i in range(3) for j in range(2)]


@pytest.mark.parametrize("kind", ["none", "float", "bool", "broadcast", "causal"])
def test_forward_and_grads_match_reference_and_torch(path, kind):
    q, k, v = _qkv(L=7 if kind == "causal" else 5)
    rng = np.random.default_rng(1)
    mask = None
    S = k.shape[-2]
    if kind == "float":
        mask = rng.standard_normal((3, 2, q.shape[-2], S))
    elif kind == "bool":
        mask = rng.random((3, 1, q.shape[-2], S)) > 0.3
        mask[0, 0, 1] = False                      # a fully masked row: zeros, not nan
    elif kind == "broadcast":
        mask = np.where(rng.random((3, 1, 1, S)) > 0.3, 0.0, -1e9)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else Tensor._make(mask),
                                         is_causal=kind == "causal")
    want = _ref(q._data, k._data, v._data, mask, kind == "causal")
    np.testing.assert_allclose(out.detach().numpy(), want, atol=1e-12)
    g = np.random.default_rng(2).standard_normal(out.shape)
    out.backward(Tensor._make(g))
    torch = pytest.importorskip("torch")
    tq, tk, tv = (torch.tensor(t._data, requires_grad=True) for t in (q, k, v))
    tm = None if mask is None else torch.tensor(mask)
    to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm,
                                                          is_causal=kind == "causal")
    to.backward(torch.tensor(g))
    if kind != "bool":                              # torch gives nan on the fully masked row
        np.testing.assert_allclose(out.detach().numpy(), to.detach().numpy(), atol=1e-12)
        for a, b in ((q, tq), (k, tk), (v, tv)):
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-10)
    else:
        assert np.all(out.detach().numpy()[0, 0, 1] == 0) and np.isfinite(q.grad.numpy()).all()


def test_mask_gradient_and_weights(path):
    q, k, v = _qkv()
    m = Tensor._make(np.random.default_rng(3).standard_normal((3, 2, 5, 7)), requires_grad=True)
    out, w = F.scaled_dot_product_attention(q, k, v, attn_mask=m, need_weights=True)
    np.testing.assert_allclose(w.detach().numpy().sum(-1), 1.0, atol=1e-12)
    (out.sum() + (w * w).sum()).backward()
    torch = pytest.importorskip("torch")
    tq, tk, tv, tm = (torch.tensor(t._data, requires_grad=True) for t in (q, k, v, m))
    s = tq @ tk.transpose(-1, -2) / 2.0 + tm
    tw = torch.softmax(s, -1)
    ((tw @ tv).sum() + (tw * tw).sum()).backward()
    np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), atol=1e-12)
    for a, b in ((q, tq), (k, tk), (v, tv), (m, tm)):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-10)


def test_dropout_same_mask_on_both_paths(monkeypatch):
    """The dropout mask is drawn whole in one call, so a seed gives the same output and
    gradients whichever path runs."""
    res = []
    for forced in (False, True):
        monkeypatch.setattr(A, "_PAR_MIN_WORK", 0 if forced else 1 << 62)
        monkeypatch.setattr(A, "blas_threads", lambda: 2)
        q, k, v = _qkv()
        deepseek.manual_seed(7)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
        out.sum().backward()
        res.append((out.detach().numpy(), q.grad.numpy(), v.grad.numpy()))
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_float32_inference_and_noncontiguous_heads(path):
    """The BERT shape: heads as a transposed view of (B, T, heads, d), float32, no grad;
    the inference path divides ``e @ v`` by the row sums instead of ``e``."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 9, 3, 8)).astype(np.float32)
    q = Tensor._make(x.transpose(0, 2, 1, 3))
    mask = Tensor._make(np.where(rng.random((4, 1, 1, 9)) > 0.2, 0, -3.4e38).astype(np.float32))
    with deepseek.no_grad():
        out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    want = _ref(q._data.astype(np.float64), q._data.astype(np.float64), q._data.astype(np.float64),
                mask._data.astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.detach().numpy(), want, atol=2e-6)


def test_blas_single_thread_nests_and_restores():
    from deepseek.ops import _par
    n = A.blas_threads()
    with A.blas_single_thread():
        with A.blas_single_thread():
            if _par._blas_find():
                assert _par._blas_fns[0]() == 1
        assert A.blas_threads() == n          # what will be restored, seen from inside
    if _par._blas_find():
        assert _par._blas_fns[0]() == n


@pytest.mark.timeout(60)
def test_thread_pool_keeps_fork_and_is_forgotten_in_a_forked_child(monkeypatch):
    """After a threaded attention call the DataLoader still forks (the idle pool is
    fork-safe), and attention in a forked child runs instead of waiting on threads
    that do not exist there."""
    import os
    from deepseek.data import _procs
    monkeypatch.setattr(A, "_PAR_MIN_WORK", 0)
    monkeypatch.setattr(A, "blas_threads", lambda: 2)
    q, k, v = _qkv()
    want = F.scaled_dot_product_attention(q, k, v).detach().numpy()
    from deepseek.ops import _par
    assert _par._pool is not None
    assert _procs.default_context().get_start_method() == "fork"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: attention on the threaded path again, then report
        try:
            got = F.scaled_dot_product_attention(q, k, v).detach().numpy()
            os.write(w, b"ok" if np.allclose(got, want) else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 8) == b"ok"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
