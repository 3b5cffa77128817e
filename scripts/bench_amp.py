"""Mixed precision on the CPU: step time and activation memory, fp32 against bf16
autocast, side by side with PyTorch's CPU autocast in the same run.

    python scripts/bench_amp.py [--reps 5] [--quick] [--json] [--clock cpu]

Models: the transformer encoder layer (d 256, 4 heads, seq 128, batch 16), an MLP
(784-1024-1024-10, batch 256) and a small-op MLP (64-64-64-10, batch 16: autocast's
per-op cost). ``--models mlp_small`` runs only the named ones. A step is forward +
backward + SGD step; times are medians over ``--reps`` steps after a warm-up, the
configurations interleaved. ``--clock cpu`` times CPU time of the process instead of
wall time: on a machine shared with other jobs it is far steadier, and with
OPENBLAS_NUM_THREADS=1 (and torch at one thread) it is the work of one core; with
more BLAS threads it also counts their spin-waits.
Memory of forward+backward is measured with tracemalloc (numpy reports every array
allocation to it) in a separate, untimed run after a warm-up (``fwd_bwd_memory``): the
peak above what was allocated before the forward (parameter gradients included), that
peak minus the parameter gradients' bytes (">grads": what the activations and working
buffers take at the peak; see ``fwd_bwd_memory``), and what the graph holds between
forward and backward ("saved": the activations). The
fp32 configuration runs outside any autocast region. The GEMM table compares a
(M, K) @ (K, N) product in fp32 (OpenBLAS sgemm), bf16 operands through numpy's
``a @ b`` (what a naive autocast would run: with numpy 2.4 and ml_dtypes 0.5 it runs
at about sgemm speed but returns float32, not bf16) and in bf16 through deepseek's
blocked low-precision GEMM (bf16 output).
"""
import argparse
import contextlib
import json
import time
import tracemalloc

import numpy as np

import deepseek as ds
from deepseek.amp import autocast
from _timing import interleaved_medians  # noqa: E402  (scripts/ is sys.path[0])


def _transformer(lib, nn):
    layer = nn.TransformerEncoderLayer(256, 4, dim_feedforward=2048, dropout=0.0,
                                       batch_first=True)
    x = lib.randn(16, 128, 256)
    return layer, x, lambda out: (out.float() ** 2).mean()


def _mlp(lib, nn):
    m = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                      nn.Linear(1024, 10))
    x = lib.randn(256, 784)
    y = lib.tensor(np.arange(256) % 10)
    return m, x, lambda out: nn.functional.cross_entropy(out.float(), y)


def _mlp_small(lib, nn):
    """Small ops (64 wide, batch 16): the step is dispatch, not math, so this row shows
    what autocast's per-op interception costs."""
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                      nn.Linear(64, 10))
    x = lib.randn(16, 64)
    y = lib.tensor(np.arange(16) % 10)
    return m, x, lambda out: nn.functional.cross_entropy(out.float(), y)


MODELS = {"transformer": _transformer, "mlp": _mlp, "mlp_small": _mlp_small}


def _region(amp):
    """bf16 autocast, or no region at all for fp32 (``autocast(enabled=False)`` would
    still route every op through the dispatch mode, which is not the fp32 baseline)."""
    return autocast("cpu", dtype=ds.bfloat16) if amp else contextlib.nullcontext()


def _ds_step(model, x, loss_fn, opt, amp):
    with _region(amp):
        loss = loss_fn(model(x))
    loss.backward()
    opt.step()
    opt.zero_grad()


def _torch_step(torch, model, x, loss_fn, opt, amp):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(model(x))
    loss.backward()
    opt.step()
    opt.zero_grad()


def fwd_bwd_memory(model, x, loss_fn, amp):
    """(peak, saved, above_grads) bytes of one forward+backward, measured with
    tracemalloc (numpy reports every array allocation to it). A warm-up step first, so
    that one-time allocations (thread pools, caches) count in neither configuration.

    ``peak``: the highest allocation above what existed before the forward (the
    parameters and the input are not counted; the parameter gradients, allocated by the
    backward, are). ``saved``: what the graph holds between the end of the autocast
    region and the backward (the activations and anything else kept for backward).
    ``above_grads``: ``peak`` minus the bytes of the parameter gradients the backward
    made (all of them, fp32 in both precisions: fp32 master weights), i.e. what the
    peak holds besides the gradients: activations, casts, widened panels, GEMM outputs
    and the bf16 copies of gradients. Where the peak falls before the last gradients
    exist, it subtracts those too (a lower bound of what was held besides gradients
    then). The gradients are the same bytes in both precisions, so this column differs
    between them by what the peaks differ by, on a smaller base: a weight-bound model's
    ``peak`` is mostly gradients in both."""
    res = [_traced_step(model, x, loss_fn, amp) for _ in range(2)][-1]  # (a warm-up)
    return res


def _traced_step(model, x, loss_fn, amp):
    """(peak, saved, peak minus the gradients) bytes above the start of one traced
    forward+backward (see ``fwd_bwd_memory``)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with _region(amp):
            loss = loss_fn(model(x))
        saved = tracemalloc.get_traced_memory()[0] - base
        loss.backward()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del loss
    grads = 0
    for p in model.parameters():
        grads += 0 if p.grad is None else p.grad._data.nbytes
        p.grad = None
    return peak, saved, peak - grads


def bench_models(reps, names, with_torch=True, clock=time.perf_counter):
    rows = []
    try:
        import torch
        torch.set_num_threads(max(1, torch.get_num_threads()))
    except ImportError:
        torch = None
    if not with_torch:
        torch = None
    for name in names:
        ds.manual_seed(0)
        model, x, loss_fn = MODELS[name](ds, ds.nn)
        opt = ds.optim.SGD(model.parameters(), lr=1e-4)
        mem = {amp: fwd_bwd_memory(model, x, loss_fn, amp) for amp in (False, True)}
        runs = {"ds fp32": lambda: _ds_step(model, x, loss_fn, opt, False),
                "ds bf16": lambda: _ds_step(model, x, loss_fn, opt, True)}
        if torch is not None:
            torch.manual_seed(0)
            tm, tx, tl = MODELS[name](torch, torch.nn)
            topt = torch.optim.SGD(tm.parameters(), lr=1e-4)
            runs["torch fp32"] = lambda: _torch_step(torch, tm, tx, tl, topt, False)
            runs["torch bf16"] = lambda: _torch_step(torch, tm, tx, tl, topt, True)
        med = {k: v * 1e3 for k, v in interleaved_medians(runs, reps, clock=clock).items()}
        row = {"model": name, "ds_fp32_ms": med["ds fp32"], "ds_bf16_ms": med["ds bf16"],
               "ds_ratio": med["ds bf16"] / med["ds fp32"],
               "peak_fp32_MiB": mem[False][0] / 2 ** 20, "peak_bf16_MiB": mem[True][0] / 2 ** 20,
               "mem_ratio": mem[True][0] / mem[False][0],
               "above_grads_fp32_MiB": mem[False][2] / 2 ** 20,
               "above_grads_bf16_MiB": mem[True][2] / 2 ** 20,
               "above_grads_ratio": mem[True][2] / max(mem[False][2], 1),
               "saved_fp32_MiB": mem[False][1] / 2 ** 20, "saved_bf16_MiB": mem[True][1] / 2 ** 20,
               "saved_ratio": mem[True][1] / max(mem[False][1], 1)}
        if torch is not None:
            row.update(torch_fp32_ms=med["torch fp32"], torch_bf16_ms=med["torch bf16"],
                       torch_ratio=med["torch bf16"] / med["torch fp32"])
        rows.append(row)
    return rows


def bench_gemm(reps, shapes, clock=time.perf_counter):
    from deepseek.ops import _lowp
    bf = ds.bfloat16
    rows = []
    for M, K, N in shapes:
        rng = np.random.default_rng(0)
        a32 = rng.standard_normal((M, K), dtype=np.float32)
        b32 = rng.standard_normal((K, N), dtype=np.float32)
        a, b = a32.astype(bf), b32.astype(bf)
        runs = {"fp32 sgemm": lambda: a32 @ b32, "bf16 lowp": lambda: _lowp.mm(a, b)}
        if M * K * N <= 512 ** 3:
            runs["bf16 numpy"] = lambda: a @ b
        med = interleaved_medians(runs, reps, warmup=0, clock=clock)
        med = {k: v * 1e3 for k, v in med.items()}
        rows.append({"shape": f"{M}x{K}x{N}", **{k + " ms": v for k, v in med.items()}})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the MLP only, 3 reps")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="only these models")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or the process's CPU time (see above)")
    ap.add_argument("--no-torch", action="store_true",
                    help="without the PyTorch columns (its CPU bf16 step is ~30x slower here)")
    args = ap.parse_args()
    reps = 3 if args.quick else args.reps
    names = args.models or (["mlp"] if args.quick else list(MODELS))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    models = bench_models(reps, names, with_torch=not args.no_torch, clock=clock)
    gemm = bench_gemm(reps, [(512, 512, 512), (2048, 256, 1024), (2048, 1024, 256)], clock)
    if args.json:
        print(json.dumps({"models": models, "gemm": gemm}, indent=1))
        return
    print(f"native isa: {ds.native.isa()}, clock: {args.clock}")
    print(f"{'model':12s} {'ds fp32':>9s} {'ds bf16':>9s} {'ratio':>6s} | {'torch fp32':>10s} "
          f"{'torch bf16':>10s} {'ratio':>6s} | {'peak fp32':>10s} {'peak bf16':>10s} {'ratio':>6s} "
          f"| {'>grads fp32':>11s} {'>grads bf16':>11s} {'ratio':>6s} "
          f"| {'saved fp32':>10s} {'saved bf16':>10s} {'ratio':>6s}")
    for r in models:
        tp = (f"{r['torch_fp32_ms']:8.1f}ms {r['torch_bf16_ms']:8.1f}ms {r['torch_ratio']:6.2f}"
              if "torch_fp32_ms" in r else f"{'-':>10s} {'-':>10s} {'-':>6s}")
        print(f"{r['model']:12s} {r['ds_fp32_ms']:7.1f}ms {r['ds_bf16_ms']:7.1f}ms "
              f"{r['ds_ratio']:6.2f} | {tp} | {r['peak_fp32_MiB']:7.1f}MiB "
              f"{r['peak_bf16_MiB']:7.1f}MiB {r['mem_ratio']:6.2f} | "
              f"{r['above_grads_fp32_MiB']:8.1f}MiB {r['above_grads_bf16_MiB']:8.1f}MiB "
              f"{r['above_grads_ratio']:6.2f} | {r['saved_fp32_MiB']:7.1f}MiB "
              f"{r['saved_bf16_MiB']:7.1f}MiB {r['saved_ratio']:6.2f}")
    print()
    for r in gemm:
        print("  ".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in r.items()))


if __name__ == "__main__":
    main()
