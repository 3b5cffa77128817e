"""GPT-2: deterministic random weights written in HF layout load by their names; logits
match transformers' GPT2LMHeadModel (when installed); KV-cache generation equals
uncached; sampling controls; byte-level BPE."""
import json
import os

import numpy as np
import pytest

import deepseek
from deepseek import hub
from deepseek.models import GPT2LMHeadModel, ByteLevelBPETokenizer
from deepseek.serialization import save_file

CFG = dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
           activation_function="gelu_new", architectures=["GPT2LMHeadModel"], model_type="gpt2")


def _write_hf(d, prefix=""):
    """HF's gpt2 checkpoint layout (no 'transformer.' prefix, attn.bias buffers, no lm_head)."""
    rng = np.random.default_rng(0)
    E, L, V, P = CFG["n_embd"], CFG["n_layer"], CFG["vocab_size"], CFG["n_positions"]
    sd = {"wte.weight": rng.normal(0, 0.2, (V, E)), "wpe.weight": rng.normal(0, 0.1, (P, E)),
          "ln_f.weight": 1 + rng.normal(0, 0.1, E), "ln_f.bias": rng.normal(0, 0.1, E)}
    for i in range(L):
        h = f"h.{i}."
        for n, shape in (("ln_1.weight", (E,)), ("ln_1.bias", (E,)), ("ln_2.weight", (E,)),
                         ("ln_2.bias", (E,)), ("attn.c_attn.weight", (E, 3 * E)),
                         ("attn.c_attn.bias", (3 * E,)), ("attn.c_proj.weight", (E, E)),
                         ("attn.c_proj.bias", (E,)), ("mlp.c_fc.weight", (E, 4 * E)),
                         ("mlp.c_fc.bias", (4 * E,)), ("mlp.c_proj.weight", (4 * E, E)),
                         ("mlp.c_proj.bias", (E,))):
            base = 1.0 if n.startswith("ln") and n.endswith("weight") else 0.0
            sd[h + n] = base + rng.normal(0, 0.2, shape)
        sd[h + "attn.bias"] = np.tril(np.ones((1, 1, P, P)))
    sd = {prefix + k: v.astype(np.float32) for k, v in sd.items()}
    os.makedirs(d, exist_ok=True)
    save_file(sd, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(CFG, f)
    return sd


def test_loads_hf_names_and_ties_head(tmp_path):
    sd = _write_hf(tmp_path)
    m = hub.load(str(tmp_path))
    assert isinstance(m, GPT2LMHeadModel)
    assert m.lm_head.weight is m.transformer.wte.weight
    np.testing.assert_array_equal(m.transformer.h[1].attn.c_attn.weight.detach().numpy(),
                                  sd["h.1.attn.c_attn.weight"])


def test_logits_match_transformers(tmp_path):
    tr = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    _write_hf(tmp_path)
    ref = tr.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    m = hub.load(str(tmp_path))
    ids = np.random.default_rng(1).integers(0, 300, (2, 11))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    with deepseek.no_grad():
        got = m(ids).logits.numpy()
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    want_gen = ref.generate(torch.tensor(ids[:1]), max_new_tokens=8, do_sample=False,
                            pad_token_id=0).numpy()
    np.testing.assert_array_equal(m.generate(ids[:1], max_new_tokens=8), want_gen)


def test_kv_cache_generation_equals_uncached(tmp_path):
    _write_hf(tmp_path)
    m = hub.load(str(tmp_path))
    ids = np.random.default_rng(2).integers(0, 300, (3, 5))
    a = m.generate(ids, max_new_tokens=12, use_cache=True)
    b = m.generate(ids, max_new_tokens=12, use_cache=False)
    assert a.shape == (3, 17)
    np.testing.assert_array_equal(a, b)
    s1 = m.generate(ids, 10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=5)
    s2 = m.generate(ids, 10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=5,
                    use_cache=False)
    np.testing.assert_array_equal(s1, s2)
    k1 = m.generate(ids, 10, do_sample=True, top_k=1, seed=9)     # top-k 1 == greedy
    np.testing.assert_array_equal(k1, m.generate(ids, 10))
    e = m.generate(ids, 12, eos_token_id=int(a[0, 7]))
    assert (e[0, 8:] == a[0, 7]).all()


def test_top_p_keeps_smallest_nucleus():
    from deepseek.models.gpt2 import _choose
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    picks = {int(_choose(logits, True, 1.0, 0, 0.7, rng)[0]) for _ in range(300)}
    assert picks == {0, 1}


def _toy_bpe():
    from deepseek.models.tokenizers import bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("ll", "o")]
    vocab = {c: i for i, c in enumerate(chars)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return ByteLevelBPETokenizer(vocab, merges)


def test_byte_level_bpe(tmp_path):
    tok = _toy_bpe()
    assert tok.tokenize("hello the") == ["he", "llo", "Ġthe"]
    for s in ["hello the world", "Café — naïve 日本 🙂", "  two  spaces\n", "it's 2024!"]:
        assert tok.decode(tok.encode(s)) == s
    tok.save_pretrained(str(tmp_path))
    again = ByteLevelBPETokenizer.from_pretrained(str(tmp_path))
    assert again.encode("hello the") == tok.encode("hello the")
    tr = pytest.importorskip("transformers")
    ref = tr.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for s in ["hello the world", "Café — naïve 日本 🙂", "it's 2024!  x", "they'll've"]:
        assert tok.encode(s) == ref.encode(s), s
