"""Launch latency: deepseek-run --nproc N next to torchrun --nproc-per-node N.

Two times per run, measured from just before the launcher is started (wall clock; all
processes are on this machine):

* first line: until the first line of user code has run in *every* rank;
* init+barrier: until every rank has finished ``init_process_group`` and a barrier
  (deepseek: ``deepseek.collectives``; torch: ``torch.distributed`` with gloo). This
  includes importing the framework, which is part of what a user waits for.

Median (and min) over --reps runs, printed as a table; --json for machines.

    python scripts/bench_launch.py [--nproc 2] [--reps 5] [--json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _torch import torch_installed  # (scripts/ is sys.path[0])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEEPSEEK_WORKER = """\
import time; _t0 = time.time()
import os, sys
open(os.path.join(os.environ["BENCH_DIR"], "FIRST." + os.environ["RANK"]), "w").write(repr(_t0))
try:
    from deepseek import collectives as C
    C.init_process_group()
    C.barrier()
    C.destroy_process_group()
except (ImportError, AttributeError):
    # No init_process_group yet: the store rendezvous is the whole bootstrap.
    from deepseek.collectives.env import connect_store, detect, rendezvous
    info = detect()
    store = connect_store(info)
    rendezvous(store, info.rank, info.world_size)
open(os.path.join(os.environ["BENCH_DIR"], "READY." + os.environ["RANK"]), "w").write(repr(time.time()))
"""

TORCH_WORKER = """\
import time; _t0 = time.time()
import os
open(os.path.join(os.environ["BENCH_DIR"], "FIRST." + os.environ["RANK"]), "w").write(repr(_t0))
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
open(os.path.join(os.environ["BENCH_DIR"], "READY." + os.environ["RANK"]), "w").write(repr(time.time()))
"""


def one_run(cmd, nproc, env):
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)             # the launcher's session: workers included
        p.communicate()
        raise
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    # Ranks write their timestamps to files (torchrun mixes unprefixed lines mid-line).
    first, ready = {}, {}
    for name in os.listdir(env["BENCH_DIR"]):
        kind, rank = name.split(".")
        with open(os.path.join(env["BENCH_DIR"], name)) as f:
            (first if kind == "FIRST" else ready)[rank] = float(f.read())
        os.unlink(os.path.join(env["BENCH_DIR"], name))
    if len(first) != nproc or len(ready) != nproc:
        raise RuntimeError(f"missing ranks in output:\n{proc.stdout}\n{proc.stderr}")
    return max(first.values()) - t0, max(ready.values()) - t0, time.time() - t0


def bench(name, cmd, nproc, reps, env):
    one_run(cmd, nproc, env)                # warm the page cache
    rows = [one_run(cmd, nproc, env) for _ in range(reps)]
    first, ready, total = zip(*rows)
    return {"launcher": name, "nproc": nproc, "reps": reps,
            "first_line_median_s": statistics.median(first), "first_line_min_s": min(first),
            "init_barrier_median_s": statistics.median(ready),
            "init_barrier_min_s": min(ready), "exit_median_s": statistics.median(total)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_launch_")
    ds_script = os.path.join(tmp, "ds_worker.py")
    torch_script = os.path.join(tmp, "torch_worker.py")
    with open(ds_script, "w") as f:
        f.write(DEEPSEEK_WORKER)
    with open(torch_script, "w") as f:
        f.write(TORCH_WORKER)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               BENCH_DIR=os.path.join(tmp, "stamps"))
    os.makedirs(env["BENCH_DIR"])

    results = []
    ds = [sys.executable, "-m", "deepseek.launcher", "--nproc", str(args.nproc), ds_script]
    results.append(bench("deepseek-run", ds, args.nproc, args.reps, env))
    if torch_installed():
        tr = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", str(args.nproc), torch_script]
        try:
            import torch
            name = f"torchrun {torch.__version__.split('+')[0]}"
        except Exception:
            name = "torchrun"
        results.append(bench(name, tr, args.nproc, args.reps, env))
    shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"launch latency, nproc={args.nproc}, median (min) of {args.reps} runs, seconds")
    print(f"{'launcher':<16} {'first line, all ranks':>22} {'init+barrier, all ranks':>24} "
          f"{'launcher exit':>14}")
    for r in results:
        print(f"{r['launcher']:<16} {r['first_line_median_s']:>13.3f} ({r['first_line_min_s']:.3f})"
              f" {r['init_barrier_median_s']:>15.3f} ({r['init_barrier_min_s']:.3f})"
              f" {r['exit_median_s']:>14.3f}")


if __name__ == "__main__":
    main()
