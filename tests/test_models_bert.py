"""BertModel / GPT-2 as plain deepseek modules: under the JIT (the attention mask is an input
of the traced graph, so a padded batch after an unpadded trace gives the eager result),
training, CPU autocast, and random init that follows deepseek.manual_seed."""
import numpy as np

import deepseek
from deepseek._tensor import Tensor
from deepseek.models import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel


def _tiny():
    deepseek.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64)).eval()


def _traced_with_mask(m, out, ids, ones, mask):
    """``out(m(ids, attention_mask=a))`` traced with the all-ones mask ``ones`` (checked
    against eager there), then called with the numpy ``mask``: the same signature, so no
    retrace. (traced, eager, eager with ``ones``) outputs for ``mask``, as numpy."""
    def f(model, i, a):
        return out(model(i, attention_mask=a))
    cf = deepseek.jit.trace(f).compile(m)
    with deepseek.no_grad():
        np.testing.assert_allclose(cf(ids, ones).numpy(),
                                   out(m(ids, attention_mask=ones)).numpy(), atol=1e-5)
        got = cf(ids, Tensor._make(mask)).numpy()
        want = out(m(ids, attention_mask=mask)).numpy()
        unmasked = out(m(ids, attention_mask=ones)).numpy()
    return got, want, unmasked


def test_jit_traces_the_attention_mask():
    m = _tiny()
    rng = np.random.default_rng(0)
    ids = Tensor._make(rng.integers(0, 100, (2, 8)))
    ones = Tensor._make(np.ones((2, 8), np.int64))
    pad = np.ones((2, 8), np.int64)
    pad[1, 5:] = 0

    got, want, unmasked = _traced_with_mask(m, lambda o: o.last_hidden_state, ids, ones, pad)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want[1] - unmasked[1]).max() > 1e-3     # the mask does change row 1


def test_jit_traces_the_mean_pooling_mask():
    """mean_pooling reads a Tensor mask as a graph input: traced with the all-ones mask and
    called with a padded one, it pools over the unpadded tokens only (as eager does)."""
    from deepseek.models.bert import mean_pooling
    m = _tiny()
    ids = Tensor._make(np.random.default_rng(0).integers(0, 100, (2, 8)))
    ones, pad = np.ones((2, 8), np.int64), np.ones((2, 8), np.int64)
    pad[1, 3:] = 0

    def f(model, i, a):
        return mean_pooling(model(i, attention_mask=a).last_hidden_state, a)
    cf = deepseek.jit.trace(f).compile(m)
    with deepseek.no_grad():
        traced_ones = cf(ids, Tensor._make(ones)).numpy()
        got = cf(ids, Tensor._make(pad)).numpy()
        want = f(m, ids, Tensor._make(pad)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want[1] - traced_ones[1]).max() > 1e-3     # the mask does change row 1


def test_random_init_follows_manual_seed():
    a = _tiny().state_dict()
    b = _tiny().state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    deepseek.manual_seed(3)
    g1 = GPT2LMHeadModel(cfg).state_dict()
    deepseek.manual_seed(3)
    g2 = GPT2LMHeadModel(cfg).state_dict()
    assert all(np.array_equal(g1[k].numpy(), g2[k].numpy()) for k in g1)


def test_classifier_trains_and_runs_under_autocast():
    """BertForSequenceClassification learns a separable toy task (loss falls with Adam) and
    its forward runs under CPU autocast (bfloat16) close to float32."""
    from deepseek.models import BertForSequenceClassification
    deepseek.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(
        vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 20, (16, 6))
    labels = rng.integers(0, 2, 16)
    ids[:, 1] = labels + 1                       # token 1 or 2 at position 1 gives the label
    opt = deepseek.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = m(ids, labels=labels)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    assert losses[-1] < 0.5 * losses[0], losses
    m.eval()
    with deepseek.no_grad():
        ref = m(ids)["logits"].numpy()
        with deepseek.amp.autocast("cpu"):
            low = m(ids)["logits"]
    assert np.abs(low.float().numpy() - ref).max() < 0.1


def test_gpt2_under_jit_equals_eager():
    deepseek.manual_seed(1)
    m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                   n_positions=32)).eval()
    ids = Tensor._make(np.random.default_rng(1).integers(0, 64, (2, 10)))

    def f(model, i):
        return model(i).logits
    cf = deepseek.jit.trace(f).compile(m)
    with deepseek.no_grad():
        np.testing.assert_allclose(cf(ids).numpy(), m(ids).logits.numpy(), atol=1e-5)


def test_gpt2_jit_traces_the_attention_mask_and_positions():
    """GPT-2's padding mask and its position ids (counted over attended tokens) are
    functions of the mask input in the traced graph, not the example's frozen values."""
    deepseek.manual_seed(2)
    m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                   n_positions=32)).eval()
    ids = Tensor._make(np.random.default_rng(2).integers(0, 64, (2, 10)))
    ones = Tensor._make(np.ones((2, 10), np.int64))
    left_pad = np.ones((2, 10), np.int64)
    left_pad[1, :4] = 0

    got, want, unmasked = _traced_with_mask(m, lambda o: o.logits, ids, ones, left_pad)
    assert np.isfinite(want).all()                        # fully padded rows stay finite
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want[1, 4:] - unmasked[1, 4:]).max() > 1e-3
