"""Per-op eager overhead next to PyTorch: tiny tensors, so the time is dispatch, not math.

Cases (8x8 float32 tensors, 1 thread for both systems):
  add / mul / relu            one op, inputs without requires_grad (no graph recorded)
  add / mul / relu  (grad)    one op, inputs require grad (the graph node is recorded)
  fwd+bwd 4 ops               ((a * b + c).relu()).sum().backward() with a, b, c leaves

Both systems run in this one process, in interleaved rounds (deepseek, torch, deepseek,
...), each round timing ``--iters`` calls of one case; the table shows the median of
the rounds per call in microseconds, and deepseek's time over PyTorch's.

    python scripts/bench_overhead.py [--rounds 15] [--iters 2000] [--clock wall|cpu]
                                     [--profile CASE]

``--profile add_grad`` (or any case name) runs deepseek's case under cProfile and prints
where the time goes, for finding the next thing to cut.
"""
import argparse
import os
import statistics
import sys
import time

# one thread before numpy / torch load (their pools read these at import)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def cases(lib):
    """name -> zero-argument callable running one call of the case with ``lib``
    (the ``deepseek`` or ``torch`` module)."""
    lib.manual_seed(0)
    x = lib.randn(8, 8)
    y = lib.randn(8, 8)
    xg = lib.randn(8, 8, requires_grad=True)
    yg = lib.randn(8, 8, requires_grad=True)
    a, b, c = (lib.randn(8, 8, requires_grad=True) for _ in range(3))

    def fwd_bwd():
        ((a * b + c).relu()).sum().backward()

    return {
        "add": lambda: x + y,
        "mul": lambda: x * y,
        "relu": lambda: x.relu(),
        "add_grad": lambda: xg + yg,
        "mul_grad": lambda: xg * yg,
        "relu_grad": lambda: xg.relu(),
        "fwd_bwd_4ops": fwd_bwd,
    }


LABELS = {"add": "add", "mul": "mul", "relu": "relu", "add_grad": "add (grad)",
          "mul_grad": "mul (grad)", "relu_grad": "relu (grad)",
          "fwd_bwd_4ops": "fwd+bwd 4 ops"}


def time_per_call(fn, iters, clock=time.perf_counter):
    """Seconds per call of ``fn`` over ``iters`` calls (a loop unrolled by 4)."""
    n = max(iters // 4, 1)
    t0 = clock()
    for _ in range(n):
        fn()
        fn()
        fn()
        fn()
    return (clock() - t0) / (4 * n)


# --clock cpu: this thread's CPU time. Both systems run single-threaded in this thread,
# so it is the per-op work itself, without the time other processes take the core
# (on a shared machine wall-clock rounds swing by 2x).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def run(rounds, iters, clock="wall"):
    """{case: {"deepseek": [us...], "torch": [us...]}} measured in interleaved rounds."""
    import deepseek
    import torch
    torch.set_num_threads(1)
    deepseek.set_num_threads(1)
    systems = {"deepseek": cases(deepseek), "torch": cases(torch)}
    out = {name: {s: [] for s in systems} for name in systems["deepseek"]}
    tick = CLOCKS[clock]
    for name in out:  # warm-up: first calls allocate caches
        for s in systems:
            time_per_call(systems[s][name], 200, tick)
    for _ in range(rounds):
        for name in out:
            for s in systems:
                out[name][s].append(1e6 * time_per_call(systems[s][name], iters, tick))
    return out


def ratio_table(results, first="case", unit="us", scale=1.0, labels=None):
    """The markdown table of ``{row: {"deepseek": [...], "torch": [...]}}``: each
    system's median over rounds (times ``scale``, in ``unit``) and deepseek / PyTorch
    (bench_programs uses it too)."""
    lines = [f"| {first} | deepseek ({unit}) | PyTorch ({unit}) | deepseek / PyTorch |",
             "|---|---:|---:|---:|"]
    for name, r in results.items():
        d, t = statistics.median(r["deepseek"]), statistics.median(r["torch"])
        label = (labels or {}).get(name, name)
        lines.append(f"| {label} | {scale * d:.2f} | {scale * t:.2f} | {d / t:.2f}x |")
    return "\n".join(lines)


def cprofile(fn, calls, warmup, rows=25):
    """Print cProfile's view (by own time) of ``calls`` calls of ``fn`` after ``warmup``
    untimed ones (bench_programs uses it too)."""
    import cProfile
    import pstats
    for _ in range(warmup):
        fn()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(rows)


def profile(name, iters):
    """Print cProfile's view of deepseek running case ``name`` ``iters`` times."""
    import deepseek
    deepseek.set_num_threads(1)
    cprofile(cases(deepseek)[name], iters, warmup=200)


def main(argv=None):
    """Measure (or profile) and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--iters", type=int, default=2000, help="calls per round and case")
    p.add_argument("--profile", metavar="CASE", help="cProfile deepseek's CASE instead")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall clock (default) or this thread's CPU time (shared machines)")
    a = p.parse_args(argv)
    if a.profile:
        profile(a.profile, a.iters * 5)
        return
    print(f"clock: {a.clock}")
    print(ratio_table(run(a.rounds, a.iters, a.clock), labels=LABELS))


if __name__ == "__main__":
    main()
