"""Profiler overhead and top-ops agreement with torch.profiler (issue 19).

Times one training step (forward, backward, SGD step) of the same models in deepseek
and torch, with the profiler off and on, interleaved blocks (off, on, off, on ...), medians
of many steps; prints a table of overheads. Then profiles one transformer-encoder
step in each framework and prints both top-3 (by self CPU time) with each op mapped
to its kind (matmul, attention, softmax, layer_norm ...), and whether they agree.

    python scripts/bench_profiler.py [--steps 20] [--threads 1]
"""
import argparse
import os
import statistics
import sys
import time

# the BLAS threads are fixed when numpy is first imported: set them before (--threads)
_T = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, _T)

import numpy as np  # noqa: E402


def _ds_mlp(dims, batch):
    import deepseek as ds
    import deepseek.nn as nn
    ds.manual_seed(0)
    layers = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    m = nn.Sequential(*layers[:-1])
    opt = ds.optim.SGD(m.parameters(), lr=0.01)
    x = ds.randn(batch, dims[0])
    y = ds.tensor(np.zeros(batch, np.int64))

    def step():
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _torch_mlp(dims, batch):
    import torch
    import torch.nn as nn
    torch.manual_seed(0)
    layers = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    m = nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x = torch.randn(batch, dims[0])
    y = torch.zeros(batch, dtype=torch.long)

    def step():
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _ds_prof():
    import deepseek.profiler as P
    return P.profile(record_shapes=True, profile_memory=True, with_flops=True)


def _torch_prof():
    import torch.profiler as TP
    return TP.profile(activities=[TP.ProfilerActivity.CPU], record_shapes=True,
                      profile_memory=True, with_flops=True)


def overhead(step, make_prof, steps, block=10):
    """Median step time off and on (us), wall clock and this thread's CPU time (the
    CPU time is what to trust on a shared, loaded machine: it leaves out the time
    other processes take the core). Blocks of ``block`` steps alternate: one off, one
    inside a profile used as in training (``prof.step()`` after each step, included
    in the time; entering and leaving the profile is not timed); ``steps`` blocks of
    each."""
    for _ in range(3):
        step()
    off, on, off_cpu, on_cpu = [], [], [], []
    wall, cpu = time.perf_counter, time.thread_time
    for _ in range(steps):
        t, c = wall(), cpu()
        for _ in range(block):
            step()
        off.append((wall() - t) / block)
        off_cpu.append((cpu() - c) / block)
        with make_prof() as prof:
            t, c = wall(), cpu()
            for _ in range(block):
                step()
                prof.step()
            on.append((wall() - t) / block)
            on_cpu.append((cpu() - c) / block)
    med = statistics.median
    return (med(off) * 1e6, med(on) * 1e6, med(off_cpu) * 1e6, med(on_cpu) * 1e6)


KINDS = (("attention", ("attention", "sdpa", "scaled_dot")),
         ("matmul", ("linear", "addmm", "mm", "bmm", "matmul", "baddbmm")),
         ("softmax", ("softmax",)), ("layer_norm", ("layer_norm", "layernorm")),
         ("dropout", ("dropout",)), ("gelu/relu", ("gelu", "relu", "threshold")),
         ("elementwise", ("add", "mul", "sub", "div", "copy", "fill", "zero")),
         ("reshape/view", ("reshape", "view", "permute", "transpose", "split", "chunk",
                           "unsafe_split")))


def kind(name):
    n = name.lower().split("::")[-1].replace("backward0", "")
    for k, keys in KINDS:
        if any(key in n for key in keys):
            return k
    return n


def top3_ds(batch, seq, d, heads):
    import deepseek as ds
    import deepseek.nn as nn
    import deepseek.profiler as P
    ds.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0,
                                       batch_first=True)
    opt = ds.optim.SGD(layer.parameters(), lr=0.01)
    x = ds.randn(batch, seq, d)
    for _ in range(2):
        layer(x).sum().backward()
    with P.profile() as prof:
        for _ in range(3):
            loss = layer(x).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    rows = sorted((r for r in prof.key_averages() if r.cat in ("cpu_op", "backward")),
                  key=lambda r: -r.self_cpu_time_total)
    return [(r.key, r.self_cpu_time_total) for r in rows[:6]], prof


def top3_torch(batch, seq, d, heads):
    import torch
    import torch.nn as nn
    import torch.profiler as TP
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0,
                                       batch_first=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    x = torch.randn(batch, seq, d)
    for _ in range(2):
        layer(x).sum().backward()
    with TP.profile(activities=[TP.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            loss = layer(x).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    # torch nests aten ops; keep leaves of the aten namespace and autograd nodes' own time
    rows = sorted((r for r in prof.key_averages() if r.key.startswith("aten::")),
                  key=lambda r: -r.self_cpu_time_total)
    return [(r.key, r.self_cpu_time_total) for r in rows[:6]], prof


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="blocks of 10 steps each way")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    configs = [("MLP 784-1024-1024-10 b256 (bench_engine's)", (784, 1024, 1024, 10), 256),
               ("MLP 256-256-256-10 b64 (small ops)", (256, 256, 256, 10), 64)]
    print(f"one training step (fwd+bwd+SGD), {a.threads} thread(s), median over {a.steps} "
          f"alternating off/on blocks of 10 steps (record_shapes, profile_memory, "
          f"with_flops on; prof.step() after each step):")
    print(f"| {'model':<44} | {'framework':<21} | {'off us':>9} | {'on us':>9} | "
          f"{'wall overhead':>13} | {'CPU overhead':>12} |")
    print(f"|{'-' * 46}|{'-' * 23}|{'-' * 11}|{'-' * 11}|{'-' * 15}|{'-' * 14}|")
    import contextlib
    from deepseek.autograd import function as _fn
    # While a dispatch mode is active (the profiler's), every op takes the Python
    # dispatch path; when the C fast path of Function.apply is built the "off" steps
    # take C. The "py dispatch" rows run both off and on through the Python path: the
    # profiler's own cost, like for like.
    py_path = getattr(_fn, "use_fast_path", None)
    for label, dims, batch in configs:
        ds_step, t_step = _ds_mlp(dims, batch), _torch_mlp(dims, batch)
        runs = [("deepseek", ds_step, _ds_prof, contextlib.nullcontext)]
        if py_path is not None and getattr(_fn, "_fast", None) is not None:
            runs.append(("deepseek, py dispatch", ds_step, _ds_prof, lambda: py_path(False)))
        runs.append(("torch", t_step, _torch_prof, contextlib.nullcontext))
        for name, st, mk, around in runs:
            with around():
                off, on, off_c, on_c = overhead(st, mk, a.steps)
            print(f"| {label:<44} | {name:<21} | {off:>9.1f} | {on:>9.1f} | "
                  f"{100 * (on / off - 1):>12.1f}% | {100 * (on_c / off_c - 1):>11.1f}% |",
                  flush=True)
    import deepseek as ds
    import deepseek.profiler as P
    x1 = ds.randn(4)
    off, on = [], []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(2000):
            x1 + x1
        off.append((time.perf_counter() - t) / 2000)
        with P.profile():
            t = time.perf_counter()
            for _ in range(2000):
                x1 + x1
            on.append((time.perf_counter() - t) / 2000)
    print(f"per-op cost of a tiny op (x + x, 4 floats): off {statistics.median(off) * 1e6:.2f} us, "
          f"on {statistics.median(on) * 1e6:.2f} us "
          f"(+{(statistics.median(on) - statistics.median(off)) * 1e6:.2f} us per op recorded)")
    b, s, d, h = 8, 64, 128, 4
    ds_top, prof = top3_ds(b, s, d, h)
    t_top, tprof = top3_torch(b, s, d, h)
    print(f"\ntransformer encoder layer step (batch {b}, seq {s}, d {d}, heads {h}):")
    print("deepseek key_averages().table(sort_by='self_cpu_time_total', row_limit=8):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    print("torch top aten ops by self CPU:")
    print(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    print("deepseek top-3 ops:", [(n, f"{t:.0f}us", kind(n)) for n, t in ds_top[:3]])
    print("torch    top-3 ops:", [(n, f"{t:.0f}us", kind(n)) for n, t in t_top[:3]])
    k1, k2 = [kind(n) for n, _ in ds_top[:3]], [kind(n) for n, _ in t_top[:3]]
    print(f"top-3 ops by kind: deepseek {k1}, torch {k2}: agree = {sorted(k1) == sorted(k2)}")
    dk, tk = by_kind(prof.key_averages()), by_kind(tprof.key_averages(), torch=True)
    print("deepseek top-3 kinds (self time summed over forward + backward):", dk[:3])
    print("torch    top-3 kinds (self time summed over aten ops):", tk[:3])
    a3, b3 = {k for k, _ in dk[:3]}, {k for k, _ in tk[:3]}
    print(f"top-3 kinds in common: {sorted(a3 & b3)} ({len(a3 & b3)}/3)")


def by_kind(rows, torch=False):
    tot = {}
    for r in rows:
        if torch and not r.key.startswith("aten::"):
            continue
        if not torch and r.cat not in ("cpu_op", "backward"):
            continue
        k = kind(r.key)
        tot[k] = tot.get(k, 0.0) + r.self_cpu_time_total
    return sorted(((k, round(v)) for k, v in tot.items()), key=lambda kv: -kv[1])


if __name__ == "__main__":
    main()
