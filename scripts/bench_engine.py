"""Engine speed next to PyTorch (CPU), same thread count, in one run.

Workloads (issue 2):
  mlp          MLP 784-1024-1024-10, batch 256: forward + backward + SGD step
  transformer  TransformerEncoderLayer d_model 256, 4 heads, seq 128, batch 16, ff 1024:
               forward + backward
  cnn          small CNN on 28x28 inputs, batch 64: forward + backward + SGD step

Every (system, workload, threads) cell runs in a fresh subprocess whose BLAS/OpenMP
thread count is fixed through the environment before numpy/torch load, and reports
the median step time over ``--steps`` timed steps after warm-up.

    python scripts/bench_engine.py [--threads 1 2] [--steps 30] [--json out.json]
    python scripts/bench_engine.py --device cuda --threads 1     # CuPy vs torch CUDA

With ``--device cuda`` both systems run on the GPU (deepseek through CuPy) and every
step ends with a device synchronisation, so the time is that of completed work.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from _report import write_json  # (scripts/ is sys.path[0])
from _torch import torch_installed

WORKLOADS = ("mlp", "transformer", "cnn")


# ---- the workloads, written once against the shared PyTorch-style API --------------
def build(lib, name, device="cpu"):
    """Return a zero-argument step function for workload ``name`` using ``lib``
    (the ``deepseek`` or ``torch`` module), with model and data on ``device``."""
    nn, F = lib.nn, lib.nn.functional
    lib.manual_seed(0)

    def dev(m):
        return m.to(device)

    def classifier_step(model, x, y):
        # forward + cross-entropy backward + SGD step (the MLP and the CNN)
        opt = lib.optim.SGD(model.parameters(), lr=0.01)

        def step():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    if name == "mlp":
        model = dev(nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                                  nn.ReLU(), nn.Linear(1024, 10)))
        return classifier_step(model, dev(lib.randn(256, 784)),
                               dev(lib.randint(0, 10, (256,))))
    if name == "transformer":
        layer = dev(nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, dropout=0.0,
                                               batch_first=True))
        x = dev(lib.randn(16, 128, 256))

        def step():
            layer.zero_grad()
            layer(x).sum().backward()
        return step
    if name == "cnn":
        model = dev(nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)))
        return classifier_step(model, dev(lib.randn(64, 1, 28, 28)),
                               dev(lib.randint(0, 10, (64,))))
    raise ValueError(f"unknown workload {name!r}; expected one of {WORKLOADS}")


def _synchronizer(system, device):
    if device == "cpu":
        return lambda: None
    if system == "torch":
        import torch
        return torch.cuda.synchronize
    import cupy
    return cupy.cuda.Device().synchronize


def run_cell(system, workload, threads, steps, warmup, device="cpu"):
    """Time one cell in this process; prints one JSON line."""
    if system == "torch":
        import torch as lib
        lib.set_num_threads(threads)
    else:
        import deepseek as lib
    step = build(lib, workload, device)
    sync = _synchronizer(system, device)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"system": system, "workload": workload, "threads": threads,
                      "device": device, "median_ms": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0]}))


def spawn_cell(system, workload, threads, steps, warmup, extra_env=None, device="cpu"):
    env = dict(os.environ)
    env.update(extra_env or {})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--cell", system, workload, str(threads),
           "--steps", str(steps), "--warmup", str(warmup), "--device", device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"system": system, "workload": workload, "threads": threads,
                "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(result):
    if result is None:
        return "n/a"
    if "error" in result:
        return "error"
    return f"{result['median_ms']:.1f}"


def _ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--cell", nargs=3, metavar=("SYSTEM", "WORKLOAD", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        run_cell(args.cell[0], args.cell[1], int(args.cell[2]), args.steps, args.warmup,
                 args.device)
        return 0
    have_torch = torch_installed()
    rows = []
    print(f"{'workload':<12} {'threads':>7} {'deepseek ms':>12} {'torch ms':>10} {'ratio':>7} "
          f"{'no-malloc-tuning ms':>20}")
    for workload in args.workloads:
        for threads in dict.fromkeys(args.threads):
            # alternate the two systems so slow drifts of a shared machine hit both
            ds = spawn_cell("deepseek", workload, threads, args.steps, args.warmup,
                            device=args.device)
            th = spawn_cell("torch", workload, threads, args.steps, args.warmup,
                            device=args.device) if have_torch else None
            # the same deepseek cell with glibc malloc left alone: what keeping freed
            # memory in the process (deepseek/_memory.py) is worth, measured
            raw = spawn_cell("deepseek", workload, threads, args.steps, args.warmup,
                             {"DEEPSEEK_MALLOC_TUNING": "0"}) if args.device == "cpu" else None
            row = {"workload": workload, "threads": threads, "deepseek": ds, "torch": th,
                   "deepseek_no_malloc_tuning": raw}
            d_ms = ds.get("median_ms")
            t_ms = th.get("median_ms") if th else None
            row["ratio"] = d_ms / t_ms if d_ms and t_ms else None
            rows.append(row)
            print(f"{workload:<12} {threads:>7} {_cell(ds):>12} {_cell(th):>10} "
                  f"{_ratio(row['ratio']):>7} {_cell(raw):>20}", flush=True)
    for row in rows:
        for key in ("deepseek", "torch", "deepseek_no_malloc_tuning"):
            if row[key] and "error" in row[key]:
                print(f"error in {key} {row['workload']} x{row['threads']}: {row[key]['error']}")
    write_json(args.json, rows, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
