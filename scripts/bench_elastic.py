"""Restart latency: deepseek-run --max-restarts next to torchrun --max-restarts on the
same failure.

One rank of a --nproc N job dies (``os._exit(1)`` right after its first step); the
launcher stops the other workers, starts a new rendezvous round and the world again.
Two times per run, measured from the moment the failing rank dies (it writes the
wall-clock time just before exiting; all processes are on this machine):

* first line: until the first line of user code runs again in *every* rank of the
  restarted world;
* first step: until every rank of the restarted world has finished
  ``init_process_group`` and one allreduce (deepseek: ``deepseek.collectives``; torch:
  ``torch.distributed`` with gloo) -- importing the framework included.

Both launchers run with their defaults otherwise (``--standalone``; torchrun's
``--monitor-interval`` is its default). The surviving ranks sleep in Python, so
SIGTERM stops them at once: what is measured is the launchers, not a slow teardown.
Median (and min) over --reps good runs, printed as a table with the number of jobs
whose restarted world failed or hung for 60 s (those are run again); --json for
machines.

    python scripts/bench_elastic.py [--nproc 2] [--reps 5] [--json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The attempt comes from TORCHELASTIC_RESTART_COUNT, which both launchers set.
_COMMON = """\
import time; _t0 = time.time()
import os
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
rank = os.environ["RANK"]
d = os.environ["BENCH_DIR"]
def stamp(kind, t):
    with open(os.path.join(d, f"{kind}.{attempt}.{rank}"), "w") as f:
        f.write(repr(t))
stamp("FIRST", _t0)
stamp("PID", os.getpid())
"""

DEEPSEEK_WORKER = _COMMON + """\
import numpy as np
from deepseek import collectives as C
pg = C.init_process_group()
pg.allreduce(np.ones(1024, np.float32))
stamp("STEP", time.time())
if attempt == 0:
    if rank == "1":
        stamp("DEATH", time.time())
        os._exit(1)
    time.sleep(300)
C.destroy_process_group()
"""

TORCH_WORKER = _COMMON + """\
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
dist.all_reduce(torch.ones(1024))
stamp("STEP", time.time())
if attempt == 0:
    if rank == "1":
        stamp("DEATH", time.time())
        os._exit(1)
    time.sleep(300)
dist.destroy_process_group()
"""


def _kill_session(sid):
    """SIGKILL every process of session ``sid`` (a worker may have left the launcher's
    process group, never its session)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    os.kill(int(name), 9)
            except (ProcessLookupError, PermissionError):
                pass


def _kill_workers(d):
    """SIGKILL every worker that wrote its pid to ``d`` and is still there."""
    for name in os.listdir(d):
        if name.startswith("PID."):
            with open(os.path.join(d, name)) as f:
                pid = int(float(f.read()))
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def one_run(cmd, nproc, env, timeout=60.0):
    """One job: returns (first line, first step) of the restarted world, in seconds
    after the death of the failing rank."""
    d = env["BENCH_DIR"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own, and a worker stuck in
        # gloo outlives torchrun (holding our pipes): kill every worker by its pid
        _kill_session(p.pid)
        _kill_workers(d)
        out, err = p.communicate(timeout=30)
        err += f"\n(killed: no end after {timeout:g}s)"
        p.returncode = p.returncode or 1
    _kill_workers(d)
    stamps = {}
    for name in os.listdir(d):
        kind, attempt, rank = name.split(".")
        with open(os.path.join(d, name)) as f:
            stamps[kind, int(attempt), rank] = float(f.read())
        os.unlink(os.path.join(d, name))
    if p.returncode != 0:
        return None, err
    death = stamps.get(("DEATH", 0, "1"))
    first = [t for (k, a, _), t in stamps.items() if k == "FIRST" and a == 1]
    step = [t for (k, a, _), t in stamps.items() if k == "STEP" and a == 1]
    if death is None or len(first) != nproc or len(step) != nproc:
        raise RuntimeError(f"missing stamps {sorted(stamps)}:\n{out}\n{err}")
    return (max(first) - death, max(step) - death), err


def bench(name, cmd, nproc, reps, env):
    """``reps`` good runs (after one to warm the page cache). A job whose restarted
    world fails is counted and run again (at most 3 * reps times in all): torchrun's
    restart sometimes fails in gloo's connect (see the report)."""
    rows, failed, last_err = [], 0, ""
    one_run(cmd, nproc, env)                # warm the page cache
    while len(rows) < reps and failed + len(rows) < 3 * reps:
        row, err = one_run(cmd, nproc, env)
        if row is None:
            failed, last_err = failed + 1, err
        else:
            rows.append(row)
    if not rows:
        raise RuntimeError(f"{name}: every run failed; the last one said:\n{last_err[-2000:]}")
    first, step = zip(*rows)
    return {"launcher": name, "nproc": nproc, "reps": len(rows), "failed_runs": failed,
            "first_line_median_s": statistics.median(first), "first_line_min_s": min(first),
            "first_step_median_s": statistics.median(step), "first_step_min_s": min(step)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_elastic_")
    scripts = {}
    for kind, text in (("deepseek", DEEPSEEK_WORKER), ("torch", TORCH_WORKER)):
        scripts[kind] = os.path.join(tmp, f"{kind}_worker.py")
        with open(scripts[kind], "w") as f:
            f.write(text)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               BENCH_DIR=os.path.join(tmp, "stamps"))
    env.pop("DEEPSEEK_TOKEN", None)
    os.makedirs(env["BENCH_DIR"])

    results = []
    try:
        ds = [sys.executable, "-m", "deepseek.launcher", "--standalone", "--max-restarts",
              "1", "--nproc", str(args.nproc), scripts["deepseek"]]
        results.append(bench("deepseek-run", ds, args.nproc, args.reps, env))
        try:
            import importlib.util
            has_torch = importlib.util.find_spec("torch") is not None
        except Exception:
            has_torch = False
        if has_torch:
            tr = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--max-restarts", "1", "--nproc-per-node", str(args.nproc),
                  scripts["torch"]]
            try:
                import torch
                name = f"torchrun {torch.__version__.split('+')[0]}"
            except Exception:
                name = "torchrun"
            results.append(bench(name, tr, args.nproc, args.reps, env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"restart latency after a worker's death, nproc={args.nproc}, median (min) of "
          f"{args.reps} runs, seconds")
    print(f"{'launcher':<16} {'first line, all ranks':>22} {'first step, all ranks':>22} "
          f"{'failed restarts':>16}")
    for r in results:
        print(f"{r['launcher']:<16} {r['first_line_median_s']:>13.3f} ({r['first_line_min_s']:.3f})"
              f" {r['first_step_median_s']:>13.3f} ({r['first_step_min_s']:.3f})"
              f" {r['failed_runs']:>10} of {r['failed_runs'] + r['reps']}")


if __name__ == "__main__":
    main()
