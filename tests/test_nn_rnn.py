"""RNN / LSTM / GRU and their cells against torch.nn given the same weights: outputs,
final states and every gradient, for batch-first, multi-layer, bidirectional, proj_size
and packed (padded + lengths) inputs."""
import numpy as np
import pytest

import deepseek as ds
from deepseek.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence, pack_sequence

torch = pytest.importorskip("torch")

CONFIGS = [("LSTM", {}), ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
           ("LSTM", dict(num_layers=2, proj_size=3)), ("GRU", {}),
           ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)), ("GRU", dict(bias=False)),
           ("RNN", {}), ("RNN", dict(nonlinearity="relu", num_layers=2)),
           ("RNN", dict(bidirectional=True, batch_first=True))]


def _pair(cls, kw):
    tm = getattr(torch.nn, cls)(4, 5, **kw)
    dm = getattr(ds.nn, cls)(4, 5, **kw)
    assert sorted(dm.state_dict()) == sorted(tm.state_dict())
    dm.load_state_dict({k: ds.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return dm, tm


def _first(h):
    return h[0] if isinstance(h, tuple) else h


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=lambda v: str(v))
def test_padded_input_matches_torch(cls, kw):
    dm, tm = _pair(cls, kw)
    x = np.random.default_rng(0).normal(size=(3, 6, 4)).astype(np.float32)
    a, t = ds.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    o, h = dm(a)
    to, th = tm(t)
    np.testing.assert_allclose(o.detach().numpy(), to.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(_first(h).detach().numpy(), _first(th).detach().numpy(), atol=1e-5)
    (o.sum() + _first(h).sum()).backward()
    (to.sum() + _first(th).sum()).backward()
    np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), atol=1e-5)
    tg = dict(tm.named_parameters())
    for n, p in dm.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tg[n].grad.numpy(), atol=1e-4, err_msg=n)


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=lambda v: str(v))
def test_packed_input_matches_torch(cls, kw):
    dm, tm = _pair(cls, kw)
    bf = kw.get("batch_first", False)
    x = np.random.default_rng(1).normal(size=(3, 6, 4) if bf else (6, 3, 4)).astype(np.float32)
    lengths = [5, 6, 2]
    pd = pack_padded_sequence(ds.tensor(x), lengths, batch_first=bf, enforce_sorted=False)
    pt = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), lengths, batch_first=bf, enforce_sorted=False)
    np.testing.assert_array_equal(pd.batch_sizes.numpy(), pt.batch_sizes.numpy())
    np.testing.assert_allclose(pd.data.numpy(), pt.data.numpy())
    o, h = dm(pd)
    to, th = tm(pt)
    od, ld = pad_packed_sequence(o, batch_first=bf)
    ot, lt = torch.nn.utils.rnn.pad_packed_sequence(to, batch_first=bf)
    np.testing.assert_array_equal(ld.numpy(), lt.numpy())
    np.testing.assert_allclose(od.detach().numpy(), ot.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(_first(h).detach().numpy(), _first(th).detach().numpy(), atol=1e-5)


def test_initial_state_and_unbatched_input():
    dm, tm = _pair("LSTM", {})
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    h0 = rng.normal(size=(1, 5)).astype(np.float32)
    c0 = rng.normal(size=(1, 5)).astype(np.float32)
    o, (h, c) = dm(ds.tensor(x), (ds.tensor(h0), ds.tensor(c0)))
    to, (th, tc) = tm(torch.tensor(x), (torch.tensor(h0), torch.tensor(c0)))
    np.testing.assert_allclose(o.detach().numpy(), to.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(c.detach().numpy(), tc.detach().numpy(), atol=1e-5)
    with pytest.raises(RuntimeError, match="hidden size"):
        dm(ds.tensor(x), (ds.zeros(2, 5), ds.zeros(1, 5)))


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_match_torch(cls):
    tm = getattr(torch.nn, cls)(4, 5)
    dm = getattr(ds.nn, cls)(4, 5)
    dm.load_state_dict({k: ds.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    o, to = dm(ds.tensor(x)), tm(torch.tensor(x))
    np.testing.assert_allclose(_first(o).detach().numpy(), _first(to).detach().numpy(), atol=1e-6)


def test_pad_and_pack_sequence_helpers():
    seqs = [np.arange(k * 2, dtype=np.float32).reshape(k, 2) for k in (3, 1, 2)]
    d = pad_sequence([ds.tensor(s) for s in seqs], batch_first=True, padding_value=-1.0)
    t = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=-1.0)
    np.testing.assert_array_equal(d.numpy(), t.numpy())
    p = pack_sequence([ds.tensor(s) for s in seqs], enforce_sorted=False)
    q = torch.nn.utils.rnn.pack_sequence([torch.tensor(s) for s in seqs], enforce_sorted=False)
    np.testing.assert_array_equal(p.data.numpy(), q.data.numpy())
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        pack_padded_sequence(ds.zeros(3, 2, 1), [1, 3])


def test_transformer_decoder_and_full_transformer_match_torch():
    rng = np.random.default_rng(4)
    tm = torch.nn.Transformer(8, 2, 2, 2, 16, dropout=0.0, batch_first=True)
    dm = ds.nn.Transformer(8, 2, 2, 2, 16, dropout=0.0, batch_first=True)
    assert sorted(dm.state_dict()) == sorted(tm.state_dict())
    dm.load_state_dict({k: ds.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    s = rng.normal(size=(2, 6, 8)).astype(np.float32)
    t = rng.normal(size=(2, 5, 8)).astype(np.float32)
    mask_d = ds.nn.Transformer.generate_square_subsequent_mask(5)
    mask_t = torch.nn.Transformer.generate_square_subsequent_mask(5)
    np.testing.assert_array_equal(mask_d.numpy(), mask_t.numpy())
    o = dm(ds.tensor(s), ds.tensor(t), tgt_mask=mask_d)
    to = tm(torch.tensor(s), torch.tensor(t), tgt_mask=mask_t)
    np.testing.assert_allclose(o.detach().numpy(), to.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("cls,kw", [c for c in CONFIGS if c[0] in ("GRU", "LSTM")
                                    and not c[1].get("proj_size")], ids=lambda v: str(v))
def test_fused_recurrence_equals_the_per_step_ops(cls, kw):
    """Outside dispatch modes GRU/LSTM run one fused op per direction; under a mode (here
    one that only passes ops through, as the JIT tracer and the profiler do) the per-step
    ops run instead: the same outputs, final states (c_n too) and gradients."""
    from deepseek.autograd.dispatch_mode import DispatchMode
    m = getattr(ds.nn, cls)(4, 5, **kw)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    L = m.num_layers * (2 if m.bidirectional else 1)
    h0 = rng.normal(size=(L, 3 if kw.get("batch_first") else 6, 5)).astype(np.float32)

    def run():
        a, h = ds.tensor(x, requires_grad=True), ds.tensor(h0, requires_grad=True)
        hx = (h, h * 0.5) if cls == "LSTM" else h
        o, hn = m(a, hx)
        states = hn if cls == "LSTM" else (hn,)
        loss = (o * o).sum() + sum((s * s).sum() for s in states)
        m.zero_grad()
        loss.backward()
        return ([o.detach().numpy()] + [s.detach().numpy() for s in states],
                [a.grad.numpy(), h.grad.numpy()] + [p.grad.numpy().copy() for p in m.parameters()],
                o.grad_fn.name())
    fused_vals, fused_grads, fused_fn = run()
    with DispatchMode():
        step_vals, step_grads, step_fn = run()
    assert "Sequence" not in step_fn
    if not kw.get("bidirectional") and not kw.get("batch_first"):
        assert fused_fn == f"{cls}SequenceBackward", fused_fn     # the fused op did run
    for f, s in zip(fused_vals + fused_grads, step_vals + step_grads):
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-5)
