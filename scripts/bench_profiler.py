"""Profiler overhead and top-ops agreement with torch.profiler (issue 19).

Times one training step (forward, backward, SGD step) of the same models in deepseek
and torch, with the profiler off and on, interleaved blocks (off, on, off, on ...), medians
of many steps; prints a table of overheads, and the per-op cost of a tiny op (split
into what any dispatch mode costs and what recording adds). Then profiles one
transformer-encoder step in each framework, interleaved, several times, ranks the
ops by their median self CPU time and prints both top-3 with each op mapped to its
kind (matmul, attention, softmax, layer_norm ...), and whether they agree.

    python scripts/bench_profiler.py [--steps 20] [--threads 1] [--repeats 7] [--seq 128]
                                     [--only overhead|top3]
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


def _lib(name):
    """(framework module, its nn) for "deepseek" or "torch": the same model code runs
    on both."""
    if name == "torch":
        import torch
        import torch.nn as nn
        return torch, nn
    import deepseek
    import deepseek.nn as nn
    return deepseek, nn


def _mlp(fw, dims, batch):
    """One training step (cross-entropy, SGD) of an MLP in framework ``fw``."""
    lib, nn = _lib(fw)
    lib.manual_seed(0)
    layers = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    m = nn.Sequential(*layers[:-1])
    opt = lib.optim.SGD(m.parameters(), lr=0.01)
    x = lib.randn(batch, dims[0])
    y = lib.zeros(batch, dtype=lib.long)

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


def overhead(step, make_prof, steps, block=10, step_each=True):
    """Median step time off and on (us), wall clock and this thread's CPU time (the
    CPU time is what to trust on a shared, loaded machine: it leaves out the time
    other processes take the core). Blocks of ``block`` steps alternate: one off, one
    inside a profile used as in training (``prof.step()`` after each step when
    ``step_each``, included in the time; entering and leaving the profile is not
    timed); ``steps`` blocks of each."""
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
                if step_each:
                    prof.step()
            on.append((wall() - t) / block)
            on_cpu.append((cpu() - c) / block)
    med = statistics.median
    # overheads: the median of each block's ratio to the off block just before it (the
    # two ran under about the same load), steadier on a shared machine than the ratio
    # of the medians
    wall_x = med(b / a for a, b in zip(off, on)) - 1
    cpu_x = med(b / a for a, b in zip(off_cpu, on_cpu)) - 1
    return (med(off) * 1e6, med(on) * 1e6, med(off_cpu) * 1e6, med(on_cpu) * 1e6,
            wall_x, cpu_x)


KINDS = (("attention", ("attention", "sdpa", "scaled_dot")),
         ("matmul", ("linear", "addmm", "mm", "bmm", "matmul", "baddbmm")),
         ("softmax", ("softmax",)), ("layer_norm", ("layer_norm", "layernorm")),
         ("dropout", ("dropout",)), ("gelu/relu", ("gelu", "relu", "threshold", "clamp_min")),
         ("elementwise", ("add", "mul", "sub", "div", "copy", "fill", "zero")),
         ("reshape/view", ("reshape", "view", "permute", "transpose", "split", "chunk",
                           "unsafe_split")))


def kind(name):
    n = name.lower().split("::")[-1].replace("backward0", "")
    for k, keys in KINDS:
        if any(key in n for key in keys):
            return k
    return n


def _encoder(fw, batch, seq, d, heads):
    """One transformer encoder layer's training step in framework ``fw``, warmed up
    (2 steps); returns ``profiled(make_prof, steps=3)``: the finished profile of
    ``steps`` more steps."""
    lib, nn = _lib(fw)
    lib.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0,
                                       batch_first=True)
    opt = lib.optim.SGD(layer.parameters(), lr=0.01)
    x = lib.randn(batch, seq, d)
    for _ in range(2):
        layer(x).sum().backward()

    def profiled(make_prof, steps=3):
        with make_prof() as prof:
            for _ in range(steps):
                loss = layer(x).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return prof
    return profiled


def _ds_rows(prof):
    """{op or backward node: self CPU us} of a deepseek profile."""
    return {r.key: r.self_cpu_time_total for r in prof.key_averages()
            if r.cat in ("cpu_op", "backward")}


def _torch_rows(prof):
    """{aten op: self CPU us} of a torch profile (torch nests aten ops: self times)."""
    return {r.key: r.self_cpu_time_total for r in prof.key_averages()
            if r.key.startswith("aten::")}


def top_ops(batch, seq, d, heads, repeats):
    """Profile the encoder step ``repeats`` times in each framework, interleaved
    (deepseek, torch, deepseek, ...: a burst of load on the shared machine hits both),
    and rank the ops by the median over the repeats of their self CPU time (one
    preempted call cannot put an op in the top 3). Returns ({fw: [(op, us), ...]
    best first}, {fw: its last profile})."""
    import deepseek.profiler as P
    import torch.profiler as TP
    runs = {"deepseek": (_encoder("deepseek", batch, seq, d, heads), P.profile, _ds_rows),
            "torch": (_encoder("torch", batch, seq, d, heads),
                      lambda: TP.profile(activities=[TP.ProfilerActivity.CPU]), _torch_rows)}
    per, last = {fw: {} for fw in runs}, {}
    for _ in range(repeats):
        for fw, (profiled, make_prof, rows) in runs.items():
            last[fw] = profiled(make_prof)
            for k, v in rows(last[fw]).items():
                per[fw].setdefault(k, []).append(v)
    ranked = {fw: sorted(((k, statistics.median(v + [0.0] * (repeats - len(v))))
                          for k, v in ops.items()), key=lambda kv: -kv[1])
              for fw, ops in per.items()}
    return ranked, last


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="blocks of 10 steps each way")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7,
                    help="profiles of the transformer step per framework (top-3)")
    ap.add_argument("--seq", type=int, default=128,
                    help="sequence length of the transformer step (batch 8, d 128, 4 heads)")
    ap.add_argument("--only", choices=("overhead", "top3"), default=None,
                    help="run one part (default: both)")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    if a.only != "top3":
        overhead_tables(a)
    if a.only != "overhead":
        top3_tables(a)


def overhead_tables(a):
    """The overhead table (MLP steps, deepseek and torch) and the tiny-op cost."""
    configs = [("MLP 784-1024-1024-10 b256 (bench_engine's)", (784, 1024, 1024, 10), 256),
               ("MLP 256-256-256-10 b64 (small ops)", (256, 256, 256, 10), 64)]
    print(f"one training step (fwd+bwd+SGD), {a.threads} thread(s), median over {a.steps} "
          f"alternating off/on blocks of 10 steps (record_shapes, profile_memory, "
          f"with_flops on; prof.step() after each step); overhead: median of the on/off "
          f"ratios of neighbouring blocks, wall clock and this thread's CPU time:")
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
        ds_step, t_step = _mlp("deepseek", dims, batch), _mlp("torch", dims, batch)
        runs = [("deepseek", ds_step, _ds_prof, contextlib.nullcontext)]
        if py_path is not None and getattr(_fn, "_fast", None) is not None:
            runs.append(("deepseek, py dispatch", ds_step, _ds_prof, lambda: py_path(False)))
        runs.append(("torch", t_step, _torch_prof, contextlib.nullcontext))
        for name, st, mk, around in runs:
            with around():
                off, on, _, _, wall_x, cpu_x = overhead(st, mk, a.steps)
            print(f"| {label:<44} | {name:<21} | {off:>9.1f} | {on:>9.1f} | "
                  f"{100 * wall_x:>12.1f}% | {100 * cpu_x:>11.1f}% |", flush=True)
    import deepseek as ds
    import deepseek.profiler as P
    x1 = ds.randn(4)

    from deepseek.autograd.dispatch_mode import DispatchMode

    def tiny():
        x1 + x1
    # the part of the cost any dispatch mode pays (AMP's, the JIT tracer's): the op
    # leaves the C fast path for dispatch_mode.run_in_mode and comes back
    for label, mk in (("a do-nothing DispatchMode (the floor)", DispatchMode),
                      ("plain profile()", P.profile),
                      ("record_shapes, profile_memory, with_flops", _ds_prof)):
        off, on, off_c, on_c, _, _ = overhead(tiny, mk, steps=15, block=2000, step_each=False)
        print(f"per-op cost of a tiny op (x + x, 4 floats), {label}: off {off:.2f} us, on "
              f"{on:.2f} us: +{on - off:.2f} us wall, +{on_c - off_c:.2f} us CPU per op",
              flush=True)


def top3_tables(a):
    """The transformer step's top-3 ops by self CPU time, deepseek next to torch."""
    b, s, d, h = 8, a.seq, 128, 4
    ranked, last = top_ops(b, s, d, h, a.repeats)
    ds_top, t_top = ranked["deepseek"], ranked["torch"]
    print(f"\ntransformer encoder layer step (batch {b}, seq {s}, d {d}, heads {h}), "
          f"{a.repeats} interleaved profiles of 3 steps each; ops ranked by the median self "
          f"CPU time over the profiles:")
    print("deepseek key_averages().table(sort_by='self_cpu_time_total', row_limit=8) "
          "(the last profile):")
    print(last["deepseek"].key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    print("torch key_averages().table(sort_by='self_cpu_time_total', row_limit=8) "
          "(the last profile):")
    print(last["torch"].key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    print("deepseek top-3 ops:", [(n, f"{t:.0f}us", kind(n)) for n, t in ds_top[:3]])
    print("torch    top-3 ops:", [(n, f"{t:.0f}us", kind(n)) for n, t in t_top[:3]])
    k1, k2 = [kind(n) for n, _ in ds_top[:3]], [kind(n) for n, _ in t_top[:3]]
    print(f"top-3 ops by kind: deepseek {k1}, torch {k2}: agree = {sorted(k1) == sorted(k2)}")
    dk, tk = by_kind(ds_top), by_kind(t_top)
    print("deepseek top-3 kinds (self time summed over forward + backward):", dk[:3])
    print("torch    top-3 kinds (self time summed over aten ops):", tk[:3])
    a3, b3 = {k for k, _ in dk[:3]}, {k for k, _ in tk[:3]}
    print(f"top-3 kinds in common: {sorted(a3 & b3)} ({len(a3 & b3)}/3)")


def by_kind(ranked):
    """[(kind, us)] best first: the self times of ``[(op, us)]`` summed by op kind."""
    tot = {}
    for key, us in ranked:
        k = kind(key)
        tot[k] = tot.get(k, 0.0) + us
    return sorted(((k, round(v)) for k, v in tot.items()), key=lambda kv: -kv[1])


if __name__ == "__main__":
    main()
