"""Benchmark of deepseek.quantization, side by side with deepseek fp32 and PyTorch's
quantize_dynamic (fbgemm) in one run: sizes, Linear speed, end-to-end encoder, accuracy.

    python scripts/bench_quant.py [--threads 1] [--repeats 15] [--quick]
                                  [--clock wall|thread] [--only sizes,linear,encoder,accuracy,gpt]
                                  [--baseline OLD/deepseek/_native....so]

Every timing is the median of --repeats rounds; the candidates of one table are run
interleaved inside each round (one call each, in turn), so load changes on the machine
hit them alike. BLAS, torch and the int8 kernels all run on --threads threads (the int8
kernels are single-threaded: use 1 for a like-for-like comparison). ``--baseline`` adds
the same int8 modules run on the kernels of another build of the extension (e.g. of
``git archive HEAD``), interleaved with the rest: old and new kernels in one run.
"""
import argparse
import math
import contextlib
import os
import statistics
import sys
import time


def _threads_from_argv():
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


_T = _threads_from_argv()
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _T   # before numpy loads its BLAS

import numpy as np  # noqa: E402

import deepseek  # noqa: E402
import deepseek.nn as dnn  # noqa: E402
from deepseek import native as N  # noqa: E402
from deepseek import quantization as Q  # noqa: E402
from _timing import interleaved_medians  # noqa: E402  (scripts/ is sys.path[0])

try:
    import torch
    import torch.ao.quantization as tq
    torch.set_num_threads(int(_T))
    torch.backends.quantized.engine = "fbgemm"
except ImportError:  # pragma: no cover
    torch = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CLOCK = "wall"      # --clock: "thread" times each call in CPU seconds of this thread
BASE = None         # --baseline: another build of deepseek._native, or None


def load_baseline(path):
    """The extension module built at ``path`` (another checkout's deepseek/_native*.so),
    loaded beside the current one (not registered in sys.modules)."""
    import importlib.util
    if not os.path.isfile(path):
        raise SystemExit(f"--baseline: no such file {path!r}")
    spec = importlib.util.spec_from_file_location("deepseek._native", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "int8_gemm"):
        raise SystemExit(f"--baseline: {path!r} has no int8 kernels")
    return mod


def on_base(fn):
    """``fn`` with deepseek.native calling the --baseline build's kernels."""
    def call():
        cur, N._ext = N._ext, BASE
        try:
            return fn()
        finally:
            N._ext = cur
    return call


def bench(fns, repeats):
    """{name: median seconds}, the fns interleaved in every round (after one warm-up).
    With ``--clock thread`` each call is timed by time.thread_time(): on a shared
    machine whose cores are oversubscribed, wall time counts the slices other processes
    ran; the thread's CPU time does not (every candidate here runs on this one thread)."""
    if CLOCK == "wall":
        return interleaved_medians(fns, repeats)
    cpu = {k: [] for k in fns}

    def timed(name, fn):
        def call():
            t0 = time.thread_time()
            fn()
            cpu[name].append(time.thread_time() - t0)
        return call
    interleaved_medians({k: timed(k, f) for k, f in fns.items()}, repeats)
    return {k: float(statistics.median(v[1:])) for k, v in cpu.items()}   # [0]: warm-up


def bench_inference(fns, repeats):
    """:func:`bench` without autograd on either side (deepseek.no_grad, and torch's
    inference_mode when torch is here)."""
    with deepseek.no_grad(), (torch.inference_mode() if torch else contextlib.nullcontext()):
        return bench(fns, repeats)


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


# ---------------------------------------------------------------- models

def make_encoder(nn, F, layers=6, d=384, heads=12, ffn=1536):
    """A MiniLM-sized BERT encoder (separate q/k/v/o Linear layers, post-norm, GELU),
    written once against the torch-like API both libraries share."""

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.o = nn.Linear(d, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

        def forward(self, x):
            b, t, _ = x.shape
            hd = d // heads

            def split(y):
                return y.reshape(b, t, heads, hd).permute(0, 2, 1, 3)
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = F.softmax(q @ k.transpose(-1, -2) * (1.0 / hd ** 0.5), dim=-1)
            ctx = (att @ v).permute(0, 2, 1, 3).reshape(b, t, d)
            x = self.ln1(x + self.o(ctx))
            return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer() for _ in range(layers)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    return Encoder()


def to_torch(ds_model, t_model):
    sd = {k: torch.from_numpy(np.array(v.numpy())) for k, v in ds_model.state_dict().items()}
    t_model.load_state_dict(sd)
    return t_model.eval()


def sizes(rows, name, model, group=128):
    f = Q.model_size(model)
    d8 = Q.model_size(Q.quantize_dynamic(model))
    w4 = Q.model_size(Q.quantize_weights(model, "int4", group_size=group))
    rows.append([name, f.parameters, f"{f.disk_bytes / 1e6:.3f}",
                 f"{d8.disk_bytes / 1e6:.3f}", f"{f.disk_bytes / d8.disk_bytes:.2f}x",
                 f"{f.memory_bytes / d8.memory_bytes:.2f}x",
                 f"{w4.disk_bytes / 1e6:.3f}", f"{f.disk_bytes / w4.disk_bytes:.2f}x",
                 f"{f.memory_bytes / w4.memory_bytes:.2f}x"])


def train_digits(epochs):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "train_digits", os.path.join(ROOT, "examples", "train_digits.py"))
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    Xtr, ytr, Xte, yte = td.load(td.DATA)
    deepseek.manual_seed(0)
    model = td.MLP()
    opt = deepseek.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        perm = rng.permutation(len(Xtr))
        for i in range(0, len(perm), 32):
            b = perm[i:i + 32]
            loss = dnn.functional.cross_entropy(model(deepseek.from_numpy(Xtr[b])),
                                                deepseek.from_numpy(ytr[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), Xtr, Xte, yte


def run(m, x):
    with deepseek.no_grad():
        return m(deepseek.from_numpy(x)).numpy()


def size_table(model, enc):
    """Size on disk and in memory of fp32 vs int8 vs int4 models."""
    rows = []
    sizes(rows, "digits MLP 64-128-128-10", model, group=32)
    sizes(rows, "MLP 784-1024-1024-10", dnn.Sequential(dnn.Linear(784, 1024), dnn.ReLU(),
                                                       dnn.Linear(1024, 1024), dnn.ReLU(),
                                                       dnn.Linear(1024, 10)))
    sizes(rows, "MiniLM-sized encoder (6 x d384)", enc)
    table("Size (state_dict in safetensors; memory incl. packed kernel layout)",
          ["model", "weights", "fp32 MB", "int8 MB", "int8 disk", "int8 mem", "int4 MB",
           "int4 disk", "int4 mem"], rows)


def linear_table(reps):
    """Linear 768x3072 / 3072x768 at batch 1, 8, 64: every candidate interleaved."""
    rows = []
    rng = np.random.default_rng(0)
    for k, n in ((768, 3072), (3072, 768)):
        deepseek.manual_seed(0)
        lin = dnn.Linear(k, n).eval()
        qd = Q.quantize_dynamic(dnn.Sequential(lin))[0]
        qr = Q.quantize_dynamic(dnn.Sequential(lin), reduce_range=True)[0]
        qw4 = Q.quantize_weights(dnn.Sequential(lin), "int4")[0]
        qw8 = Q.quantize_weights(dnn.Sequential(lin), "int8")[0]
        if torch:
            tl = to_torch(dnn.Sequential(lin), torch.nn.Sequential(torch.nn.Linear(k, n)))
            tqd = tq.quantize_dynamic(tl, {torch.nn.Linear}, dtype=torch.qint8)
        for m in (1, 8, 64):
            x = rng.standard_normal((m, k)).astype(np.float32)
            dx = deepseek.from_numpy(x)
            fns = {"ds fp32": lambda: lin(dx), "ds int8": lambda: qd(dx),
                   "ds int8 rr": lambda: qr(dx), "ds w8": lambda: qw8(dx), "ds w4": lambda: qw4(dx)}
            if torch:
                txx = torch.from_numpy(x)
                fns["torch fp32"] = lambda: tl(txx)
                fns["torch int8"] = lambda: tqd(txx)
            if BASE:
                fns["base int8"] = on_base(lambda: qd(dx))
                fns["base int8 rr"] = on_base(lambda: qr(dx))
            t = bench_inference(fns, reps)
            us = {a: f"{v * 1e6:.0f}" for a, v in t.items()}
            rows.append([f"{k}x{n}", m, us["ds fp32"], us["ds int8"], us["ds int8 rr"],
                         us["ds w8"], us["ds w4"],
                         us.get("torch fp32", "-"), us.get("torch int8", "-"),
                         f"{t['ds fp32'] / t['ds int8']:.2f}x",
                         f"{t['torch int8'] / t['ds int8']:.2f}x" if torch else "-",
                         f"{t['torch int8'] / t['ds int8 rr']:.2f}x" if torch else "-"]
                        + ([us["base int8"], us["base int8 rr"],
                            f"{t['base int8'] / t['ds int8']:.2f}x",
                            f"{t['base int8 rr'] / t['ds int8 rr']:.2f}x"] if BASE else []))
    # "rr": reduce_range=True, 7-bit activations like torch's fbgemm default (torch's
    # quantize_dynamic uses reduce_range on x86), so that column is like for like
    table("Linear (in x out), microseconds per call (rr: reduce_range, 7-bit activations)",
          ["shape", "batch", "ds fp32", "ds int8 dyn", "ds int8 rr", "ds w8", "ds w4",
           "torch fp32", "torch int8 dyn", "int8 vs ds fp32", "int8 vs torch int8",
           "int8 rr vs torch int8"] + (["base int8", "base int8 rr", "int8 vs base",
                                        "int8 rr vs base"] if BASE else []), rows)


def encoder_table(enc, reps):
    """The MiniLM-sized encoder end to end, fp32 vs int8 (and torch), with cosines."""
    rows = []
    rng = np.random.default_rng(1)
    qenc = Q.quantize_dynamic(enc)
    qenc_t = Q.quantize_dynamic(enc, act_mode="per_tensor")
    qenc_rr = Q.quantize_dynamic(enc, reduce_range=True)
    if torch:
        tenc = to_torch(enc, make_encoder(torch.nn, torch.nn.functional))
        tqenc = tq.quantize_dynamic(tenc, {torch.nn.Linear}, dtype=torch.qint8)
    for b in (1, 16):
        x = rng.standard_normal((b, 32, 384)).astype(np.float32)
        dx = deepseek.from_numpy(x)
        fns = {"fp32": lambda: enc(dx), "int8": lambda: qenc(dx), "int8 rr": lambda: qenc_rr(dx)}
        if torch:
            txx = torch.from_numpy(x)
            fns["torch fp32"] = lambda: tenc(txx)
            fns["torch int8"] = lambda: tqenc(txx)
        if BASE:
            fns["base int8"] = on_base(lambda: qenc(dx))
            fns["base int8 rr"] = on_base(lambda: qenc_rr(dx))
        t = bench_inference(fns, max(3, reps // 3))
        ref, out, out_t = run(enc, x), run(qenc, x), run(qenc_t, x)
        out_rr = run(qenc_rr, x)

        def cos(a, c):
            a, c = a.reshape(-1).astype(np.float64), c.reshape(-1).astype(np.float64)
            return a @ c / np.linalg.norm(a) / np.linalg.norm(c)
        ms = {a: f"{v * 1e3:.1f}" for a, v in t.items()}
        rows.append([f"{b} x 32 tokens", ms["fp32"], ms["int8"], ms["int8 rr"],
                     ms.get("torch fp32", "-"), ms.get("torch int8", "-"),
                     f"{t['fp32'] / t['int8']:.2f}x",
                     f"{cos(ref, out):.5f}", f"{cos(ref, out_t):.5f}", f"{cos(ref, out_rr):.5f}"]
                    + ([ms["base int8"], ms["base int8 rr"]] if BASE else []))
    table("MiniLM-sized encoder (6 layers, d 384, 12 heads, ffn 1536), ms per batch",
          ["batch", "ds fp32", "ds int8", "ds int8 rr", "torch fp32", "torch int8",
           "int8 speed-up", "cosine per-row", "cosine per-tensor", "cosine rr"]
          + (["base int8", "base int8 rr"] if BASE else []), rows)


def accuracy_table(model, Xtr, Xte, yte):
    """digits MLP top-1 after each quantization flow."""
    def acc(m):
        return float((run(m, Xte).argmax(1) == yte).mean())
    res = [("fp32", acc(model))]
    res.append(("dynamic int8, per-row act", acc(Q.quantize_dynamic(model))))
    res.append(("dynamic int8, per-tensor act",
                acc(Q.quantize_dynamic(model, act_mode="per_tensor"))))
    res.append(("dynamic int8, per-row act, reduce_range",
                acc(Q.quantize_dynamic(model, reduce_range=True))))
    for name, qc in (("static PTQ min/max", Q.default_qconfig),
                     ("static PTQ histogram 99.99%", Q.histogram_qconfig)):
        p = Q.prepare(model, qc)
        for i in range(0, 512, 64):
            run(p, Xtr[i:i + 64])
        res.append((name, acc(Q.convert(p))))
    res.append(("weight-only int8 (per channel)", acc(Q.quantize_weights(model, "int8",
                                                                         group_size=None))))
    res.append(("weight-only int4 (group 32)", acc(Q.quantize_weights(model, "int4",
                                                                      group_size=32))))
    table("digits MLP top-1 (360 test images)", ["model", "top-1", "drop (points)"],
          [[n, f"{a * 100:.2f}%", f"{(res[0][1] - a) * 100:+.2f}"] for n, a in res])


def gpt_table(steps):
    """Weight-only int8/int4 on a small character-level GPT (bench_programs' model: 2
    pre-LN blocks, d 64, block 64) trained ``steps`` AdamW steps on docs/design.md:
    held-out loss and perplexity next to fp32."""
    from bench_programs import gpt_classes
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "docs", "design.md"), "rb") as f:
        data = np.frombuffer(f.read(), np.uint8).astype(np.int64)
    cut = int(len(data) * 0.9)
    train, held = data[:cut], data[cut:]
    rng = np.random.default_rng(0)
    block, batch = 64, 16

    def windows(src, n):
        i = rng.integers(0, len(src) - block - 1, n)
        return (deepseek.tensor(np.stack([src[j:j + block] for j in i])),
                deepseek.tensor(np.stack([src[j + 1:j + 1 + block] for j in i])))
    deepseek.manual_seed(0)
    model = gpt_classes(deepseek)(256, block, 2, 64, 4)
    opt = deepseek.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        x, y = windows(train, batch)
        opt.zero_grad()
        model(x, y).backward()
        opt.step()
    model.eval()
    evals = [windows(held, 32) for _ in range(8)]

    def loss(m):
        with deepseek.no_grad():
            return float(np.mean([float(m(x, y).item()) for x, y in evals]))
    base = loss(model)
    rows = [["fp32", f"{base:.4f}", f"{math.exp(base):.3f}", "+0.0000", "+0.00%"]]
    for name, m in (("weight-only int8 (per channel)",
                     Q.quantize_weights(model, "int8", group_size=None)),
                    ("weight-only int4 (group 32)", Q.quantize_weights(model, "int4",
                                                                       group_size=32))):
        v = loss(m)
        rows.append([name, f"{v:.4f}", f"{math.exp(v):.3f}", f"{v - base:+.4f}",
                     f"{(math.exp(v) / math.exp(base) - 1) * 100:+.2f}%"])
    table(f"small char GPT (2 blocks, d 64; {steps} AdamW steps on docs/design.md), "
          "held-out loss", ["model", "loss", "perplexity", "loss increase",
                            "perplexity increase"], rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and epochs")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="time calls by wall clock or by this thread's CPU time (use "
                         "'thread' with --threads 1 on an oversubscribed machine)")
    ap.add_argument("--only", default="sizes,linear,encoder,accuracy,gpt",
                    help="comma-separated sections to run")
    ap.add_argument("--baseline", default=None,
                    help="another build's deepseek/_native*.so: its int8 kernels are timed "
                         "too, interleaved ('base' columns)")
    args = ap.parse_args()
    global CLOCK, BASE
    CLOCK = args.clock
    if args.baseline:
        BASE = load_baseline(args.baseline)
    only = set(args.only.split(","))
    bad = only - {"sizes", "linear", "encoder", "accuracy", "gpt"}
    if bad:
        ap.error(f"--only: unknown sections {sorted(bad)}")
    reps = 5 if args.quick else args.repeats
    print(f"int8 path: {N.int8_isa()} (available: {N.int8_isa_list()}), threads={args.threads}, "
          f"torch {torch.__version__ if torch else 'missing'} engine "
          f"{torch.backends.quantized.engine if torch else '-'}; medians of {reps} rounds")

    print(f"timing: {CLOCK} clock, medians of {reps} rounds; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
          + (f"; baseline kernels: {args.baseline}" if BASE else ""))
    deepseek.manual_seed(0)
    model = Xtr = Xte = yte = None
    if only & {"sizes", "accuracy"}:
        model, Xtr, Xte, yte = train_digits(4 if args.quick else 20)
    enc = make_encoder(dnn, dnn.functional).eval()
    if "sizes" in only:
        size_table(model, enc)
    if "linear" in only:
        linear_table(reps)
    if "encoder" in only:
        encoder_table(enc, reps)
    if "accuracy" in only:
        accuracy_table(model, Xtr, Xte, yte)
    if "gpt" in only:
        gpt_table(60 if args.quick else 300)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
