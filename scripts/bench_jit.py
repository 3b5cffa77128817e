"""deepseek.jit next to eager deepseek and PyTorch (eager, torch.jit.trace, torch.compile).

Workloads (issue 20), CPU, one BLAS thread for every system, medians of interleaved
rounds:

  mlp1      inference, MLP 784-256-10, batch 1
  tl1       inference, TransformerEncoderLayer d_model 256, 4 heads, ff 1024, seq 32, batch 1
  tl_train  training step (forward + backward) of the wave-1 transformer layer:
            d_model 256, 4 heads, seq 128, batch 16, ff 1024
  tl_train_small  the same step on a small layer (d_model 64, 4 heads, ff 128, seq 16,
            batch 1), where Python overhead dominates
  serve     a saved dynamic-batch MLP 784-256-10 loaded with jit.load and called with
            batch sizes 1..16 in turn (mean per call; the compiled rows only)
  gemms     each GEMM of a tl_train step alone (the same shapes and operand layouts,
            numpy/BLAS), its GFLOP/s next to a 2048 square sgemm's, their sum, and the
            step's ceiling: eager's step over that sum, the speedup a compiled step
            would reach if everything but the GEMMs took no time
  allocs    buffers allocated per compiled step after warm-up (static outputs / default)
  gpt       trace + compile time of a GPT block (d 256), and a second process's load
            of the on-disk kernel cache (compiler calls counted)

    python scripts/bench_jit.py [--rounds 5] [--steps 30] [--json out.json] [--quick]
                                [--base DIR] [--clock wall|cpu]

``--clock cpu`` times each call by this thread's CPU time instead of the wall clock.
``--base DIR``: also time the JIT of another checkout (``DIR/deepseek/jit``, e.g. an
unpacked ``git archive HEAD``) over this checkout's eager ops, interleaved in the same
rounds ("deepseek compiled (base)"): an A/B of a JIT change on a noisy machine.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from _report import write_json  # noqa: E402  (scripts/ is sys.path[0])


_CLOCK = [time.perf_counter]  # --clock cpu: time.thread_time


def timer(fn, steps):
    fn()
    clock = _CLOCK[0]
    t = clock()
    for _ in range(steps):
        fn()
    return (clock() - t) / steps


_BASE = []  # the --base JIT package, when given


def load_base(d):
    """``d``/deepseek/jit imported as ``deepseek.jit_base`` (its relative imports reach
    this checkout's deepseek, so only the JIT differs)."""
    import importlib.util
    import deepseek  # noqa: F401
    path = os.path.join(d, "deepseek", "jit")
    spec = importlib.util.spec_from_file_location("deepseek.jit_base", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["deepseek.jit_base"] = mod
    spec.loader.exec_module(mod)
    _BASE[:] = [mod]


def compiled(m):
    """{label: compiled m} for this checkout's JIT and the --base one."""
    import deepseek
    out = {"deepseek compiled": deepseek.compile(m)}
    if _BASE:
        out["deepseek compiled (base)"] = _BASE[0].compile(m)
    return out


def models(lib, name):
    nn = lib.nn
    lib.manual_seed(0)
    if name == "mlp1":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).eval(), lib.randn(1, 784)
    if name == "tl1":
        return (nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, dropout=0.0,
                                           batch_first=True).eval(), lib.randn(1, 32, 256))
    if name == "tl_train":
        return (nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, dropout=0.0,
                                           batch_first=True), lib.randn(16, 128, 256))
    if name == "tl_train_small":
        return (nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
                                           batch_first=True), lib.randn(1, 16, 64))
    raise KeyError(name)


def _turn(fns, r):
    """``fns``'s items in round ``r``'s order: rotated each round, so no system always
    runs first (or right after the same neighbour) -- that position alone moved a
    median by 10% on a loaded machine."""
    items = list(fns.items())
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def inference_cells(name, steps, rounds):
    import deepseek
    cells = {}
    m, x = models(deepseek, name)
    fns = {"deepseek eager": lambda: m(x)}
    with deepseek.no_grad():
        for k, cm in compiled(m).items():
            cm(x)
            fns[k] = (lambda c: lambda: c(x))(cm)
    try:
        import torch
        torch.set_num_threads(1)
        tm, tx = models(torch, name)
        tm.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in m.state_dict().items()})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tj = torch.jit.trace(tm, tx)
            fns["torch eager"] = lambda: tm(tx)
            fns["torch.jit.trace"] = lambda: tj(tx)
            try:
                tc = torch.compile(tm)
                tc(tx)
                fns["torch.compile"] = lambda: tc(tx)
            except Exception as e:  # no compiler toolchain for inductor, etc.
                cells["torch.compile"] = f"n/a ({type(e).__name__})"
    except ImportError:
        pass
    import torch as _t  # noqa: F401
    times = {k: [] for k in fns}
    for r in range(rounds):  # interleaved: each round times every system once
        for k, f in _turn(fns, r):
            grad = deepseek.no_grad() if k.startswith("deepseek") else _t.no_grad()
            with grad:
                times[k].append(timer(f, steps))
    for k, v in times.items():
        cells[k] = float(np.median(v))
    return cells


def train_cells(steps, rounds, name="tl_train"):
    import deepseek
    m, x = models(deepseek, name)

    def step(f):
        def run():
            m.zero_grad()
            f(x).square().mean().backward()
        return run
    fns = {"deepseek eager": step(m)}
    fns.update({k: step(cm) for k, cm in compiled(m).items()})
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k, f in _turn(fns, r):
            times[k].append(timer(f, steps))
    return {k: float(np.median(v)) for k, v in times.items()}


def _step_gemms(tokens=16 * 128, d=256, ff=1024, batch_heads=16 * 4, seq=128, hd=64):
    """(label, a, b) of every product of a tl_train step (forward and backward), as
    the eager ops compute them: Linear (x @ W.T, dX = g @ W, dW = g.T @ x; the input
    projection has no dX, the step's input needs no gradient) and SDPA's six batched
    products, q/k/v read as the strided views of the projection's output."""
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    out = []
    for name, o, i, dx in (("in_proj", 3 * d, d, False), ("out_proj", d, d, True),
                           ("linear1", ff, d, True), ("linear2", d, ff, True)):
        x, w, g = r(tokens, i), r(o, i), r(tokens, o)
        out.append((f"{name} fwd {tokens}x{i} @ {i}x{o}", x, w.T))
        if dx:
            out.append((f"{name} dX {tokens}x{o} @ {o}x{i}", g, w))
        out.append((f"{name} dW {o}x{tokens} @ {tokens}x{i}", g.T, x))
    qkv = r(batch_heads // 4, seq, 3, 4, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    p, g = r(batch_heads // 4, 4, seq, seq), r(batch_heads // 4, 4, seq, hd)
    t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    for name, a, b in (("q @ k^T", q, t(k)), ("p @ v", p, v), ("p^T @ g", t(p), g),
                       ("g @ v^T", g, t(v)), ("gs @ k", p, k), ("gs^T @ q", t(p), q)):
        out.append((f"sdpa {name} {batch_heads}x({a.shape[-2]}x{a.shape[-1]} @ "
                    f"{b.shape[-2]}x{b.shape[-1]})", a, b))
    return out


GEMM_SUM = "sum of the step's GEMMs"


def gemm_cells(rounds):
    """Each GEMM of the training step timed alone (medians of ``rounds``, this
    thread's CPU time), with GFLOP/s, against a large square sgemm."""
    from deepseek.ops.attention import blas_single_thread
    sq = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    items = _step_gemms() + [("reference: square 2048 sgemm", sq, sq)]
    cells, total = {}, 0.0
    for label, a, b in items:
        res = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                       np.float32)
        flops = 2.0 * res.size * a.shape[-1]
        single = blas_single_thread() if a.ndim > 2 else contextlib.nullcontext()
        times = []
        with single:  # eager attention runs its batched products on one BLAS thread
            for _ in range(rounds + 1):
                t = time.thread_time()
                np.matmul(a, b, out=res)
                times.append(time.thread_time() - t)
        sec = float(np.median(times[1:]))
        if not label.startswith("reference"):
            total += sec
        cells[label] = f"{sec * 1e3:7.2f} ms  {flops / sec / 1e9:5.1f} GFLOP/s"
    cells[GEMM_SUM] = total
    return cells


def serve_cells(rounds, tmp):
    """A loaded dynamic-batch graph served with batch sizes 1..16 in turn."""
    import deepseek
    m, _ = models(deepseek, "mlp1")
    path = os.path.join(tmp, "mlp.dsjit")
    deepseek.jit.trace(m, deepseek.randn(4, 784), dynamic=True).save(path)
    served = deepseek.jit.load(path)
    xs = [deepseek.randn(b, 784) for b in range(1, 17)]
    fns = {"deepseek eager": lambda: [m(x) for x in xs],
           "deepseek compiled": lambda: [served(x) for x in xs]}
    times = {k: [] for k in fns}
    with deepseek.no_grad():
        for _ in range(rounds):
            for k, f in fns.items():
                times[k].append(timer(f, 5) / len(xs))
    return {k: float(np.median(v)) for k, v in times.items()}


def alloc_cells():
    import deepseek
    out = {}
    for name in ("mlp1", "tl1"):
        m, x = models(deepseek, name)
        with deepseek.no_grad():
            for static in (True, False):
                cm = deepseek.compile(m, static_outputs=static)
                cm(x)
                cm(x)
                plan = cm.plan_for(x)
                before = plan.alloc_counter[0]
                for _ in range(10):
                    cm(x)
                counted = (plan.alloc_counter[0] - before) / 10
                out[f"{name} {'static outputs' if static else 'fresh outputs'}"] = \
                    f"{plan.allocs_per_step} planned, {counted:g} counted, {plan.n_buffers} buffers " \
                    f"({plan.buffers_bytes / 1024:.0f} KiB), backend {plan.backend}"
    return out


GPT_CODE = r"""
import time, json, sys
t0 = time.perf_counter()
import deepseek
sys.path.insert(0, sys.argv[1])
from gpt_block import GPTBlock
from deepseek.jit import cgen
m = GPTBlock().eval(); x = deepseek.randn(1, 64, 256)
t = time.perf_counter()
cm = deepseek.jit.trace(m, x, backend="c")
with deepseek.no_grad():
    cm(x)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "compiled": cgen.stats["compiled"], "loaded": cgen.stats["loaded"]}))
"""
# GPT_CODE's one argument: where it imports the block from
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def gpt_cells(tmp):
    env = dict(os.environ, DEEPSEEK_JIT_CACHE_DIR=tmp)
    out = {}
    r1 = subprocess.run([sys.executable, "-c", GPT_CODE, EXAMPLES], capture_output=True, text=True,
                        env=env)
    r2 = subprocess.run([sys.executable, "-c", GPT_CODE, EXAMPLES], capture_output=True, text=True,
                        env=dict(env, CC="false"))
    for label, r in (("cold cache", r1), ("warm cache, CC=false", r2)):
        if r.returncode:
            out[label] = "failed: " + r.stderr[-300:]
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        out[label] = f"trace+compile {d['seconds']:.2f} s, compiler runs {d['compiled']}, " \
                     f"libraries loaded from disk {d['loaded']}"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    ap.add_argument("--base", help="a checkout whose deepseek/jit is timed too (A/B)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time (every system runs on one thread "
                         "here), steadier than wall time on a loaded machine")
    a = ap.parse_args(argv)
    if a.clock == "cpu":
        _CLOCK[0] = time.thread_time
    if a.base:
        load_base(a.base)
    if a.quick:
        a.rounds, a.steps = 3, 10
    import tempfile
    res = {}
    for name in ("mlp1", "tl1"):
        res[name] = inference_cells(name, a.steps, a.rounds)
    res["tl_train"] = train_cells(max(2, a.steps // 10), a.rounds)
    res["tl_train_small"] = train_cells(a.steps * 3, a.rounds, "tl_train_small")
    res["gemms"] = gemm_cells(max(5, a.rounds))
    ceiling = res["tl_train"]["deepseek eager"] / res["gemms"][GEMM_SUM]
    res["gemms"]["ceiling (eager step / GEMM sum)"] = f"{ceiling:.2f}x"
    res["allocs"] = alloc_cells()
    with tempfile.TemporaryDirectory() as tmp:
        res["serve"] = serve_cells(a.rounds, tmp)
        res["gpt"] = gpt_cells(tmp)
    for name, cells in res.items():
        print(f"\n== {name}")
        base = cells.get("deepseek eager")
        w = max([26] + [len(k) for k in cells])
        for k, v in cells.items():
            if isinstance(v, float):
                rel = f"  ({base / v:.2f}x vs deepseek eager)" if base else ""
                print(f"  {k:{w}s} {v * 1e6:12.1f} us{rel}")
            else:
                print(f"  {k:{w}s} {v}")
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
