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

Two more tables (``--only recovery`` / ``--only commit``):

* recovery: a training job (tests/scripts/elastic_train.py: 3 workers, an MLP, DDP, a
  step every ~50 ms) loses a worker to SIGKILL at a random step; the time from the
  kill until every rank has finished a training step again, in-process recovery
  (``DEEPSEEK_ELASTIC_IN_PROCESS=1``: the survivors stay, a replacement joins, state
  synced from the last commit; with ``DEEPSEEK_ELASTIC_SPARES=1`` the replacement is a
  hot spare that already runs the script) next to restart-the-world (every worker restarted,
  resumed from the last sharded checkpoint), and the steps redone.
* commit: the steady-state cost of ``elastic.State.commit()`` every k steps as a
  percentage of the step time, for an MLP (784-256-256-10, batch 64, SGD+momentum),
  one process, the fastest of interleaved repetitions (and the direct estimate: one
  commit's time / k / the step time).

    python scripts/bench_elastic.py [--nproc 2] [--reps 5] [--json]
        [--only restart|recovery|commit]
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

# one step, then rank 1 dies in the first attempt (the others wait to be stopped)
_STEP_THEN_FAIL_ONCE = """\
stamp("STEP", time.time())
if attempt == 0:
    if rank == "1":
        stamp("DEATH", time.time())
        os._exit(1)
    time.sleep(300)
"""

DEEPSEEK_WORKER = _COMMON + """\
import numpy as np
from deepseek import collectives as C
pg = C.init_process_group()
pg.allreduce(np.ones(1024, np.float32))
""" + _STEP_THEN_FAIL_ONCE + """\
C.destroy_process_group()
"""

TORCH_WORKER = _COMMON + """\
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
dist.all_reduce(torch.ones(1024))
""" + _STEP_THEN_FAIL_ONCE + """\
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


TRAIN = os.path.join(REPO, "tests", "scripts", "elastic_train.py")


def _progress(d):
    path = os.path.join(d, "progress.jsonl")
    out = []
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return [r for r in out if "step" in r]


def recovery_run(kind, env, kill_step, steps=40, nproc=3, timeout=90.0):
    """One job of ``kind`` (inprocess / restart); SIGKILL of rank 1 once step
    ``kill_step`` is done. Returns (seconds from the kill until every rank finished a
    step again, steps redone) or None when the job failed."""
    import signal
    import time
    d = tempfile.mkdtemp(prefix="bench_recovery_")
    env = dict(env, STEP_SLEEP="0.05", DEEPSEEK_DETERMINISTIC="1")
    args = [TRAIN, d, str(steps)]
    if kind in ("inprocess", "spare"):
        env["DEEPSEEK_ELASTIC_IN_PROCESS"] = "1"
        env["DEEPSEEK_ELASTIC_SPARES"] = "1" if kind == "spare" else "0"
    else:
        args += ["checkpoint", "ddp"]
    cmd = [sys.executable, "-m", "deepseek.launcher", "--standalone", "--max-restarts",
           "1", "--nproc", str(nproc), "--omp-threads", "1", *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and p.poll() is None:
            recs = _progress(d)
            if any(r["step"] >= kill_step for r in recs):
                break
            time.sleep(0.005)
        victim = [r for r in _progress(d) if r["rank"] == 1][-1]
        t_kill = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        _, err = p.communicate(timeout=timeout)
    except (subprocess.TimeoutExpired, IndexError, ProcessLookupError):
        _kill_session(p.pid)
        p.communicate()
        shutil.rmtree(d, ignore_errors=True)
        return None
    recs = _progress(d)
    shutil.rmtree(d, ignore_errors=True)
    if p.returncode != 0:
        return None
    after = [r for r in recs if r["gen"] >= 1]
    if {r["rank"] for r in after} != set(range(nproc)):
        return None
    first = {}
    for r in after:
        first[r["rank"]] = min(first.get(r["rank"], 1e30), r["t"])
    done_before = max(r["step"] for r in recs if r["gen"] == 0 and r["t"] <= t_kill)
    resumed_at = min(r["step"] for r in after)
    return max(first.values()) - t_kill, done_before - resumed_at + 1


def recovery_bench(reps, env):
    import random
    rnd = random.Random(0)
    rows = {"spare": [], "inprocess": [], "restart": []}
    failed = {k: 0 for k in rows}
    for _ in range(reps):
        at = rnd.randrange(6, 20)
        for kind in rows:                       # side by side, same kill step
            got = recovery_run(kind, env, at)
            if got is None:
                failed[kind] += 1
            else:
                rows[kind].append(got)
    out = []
    for kind, rs in rows.items():
        if not rs:
            out.append({"mode": kind, "reps": 0, "failed_runs": failed[kind]})
            continue
        t, redo = zip(*rs)
        out.append({"mode": kind, "reps": len(rs), "failed_runs": failed[kind],
                    "recovery_median_s": statistics.median(t), "recovery_min_s": min(t),
                    "steps_redone_median": statistics.median(redo)})
    return out


def commit_bench(reps=9, steps=20, ks=(1, 10)):
    """Step time of an MLP without commits and with ``State.commit()`` every k steps."""
    import time
    import numpy as np
    sys.path.insert(0, REPO)
    import deepseek
    from deepseek import elastic, nn
    deepseek.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = deepseek.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = deepseek.tensor(np.random.default_rng(0).standard_normal((64, 784), np.float32))
    y = deepseek.tensor(np.random.default_rng(1).integers(0, 10, 64))
    loss_fn = nn.CrossEntropyLoss()
    state = elastic.State(model=model, optimizer=opt, step=0)

    def run(k):
        t0 = time.perf_counter()
        for i in range(steps):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            state.step += 1
            if k and (i + 1) % k == 0:
                state.commit()
        return (time.perf_counter() - t0) / steps

    run(0)
    times = {k: [] for k in (0,) + tuple(ks)}
    for _ in range(reps):
        for k in times:                          # interleaved
            times[k].append(run(k))
    # min, not median: on a shared machine the noise is all on one side
    base = min(times[0])
    t0 = time.perf_counter()
    for _ in range(20):
        state.commit()
    one = (time.perf_counter() - t0) / 20
    return [{"k": k, "step_ms": min(times[k]) * 1e3,
             "overhead_pct": (min(times[k]) / base - 1) * 100,
             "commit_ms": one * 1e3, "model_step_ms": base * 1e3,
             "expected_pct": one / k / base * 100} for k in ks]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=("restart", "recovery", "commit"))
    args = ap.parse_args()
    if args.only in ("recovery", "commit"):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("DEEPSEEK_TOKEN", None)
        if args.only == "recovery":
            res = recovery_bench(args.reps, env)
            if args.json:
                print(json.dumps(res, indent=2))
                return
            print(f"recovery after SIGKILL of one of 3 training workers, median (min) of "
                  f"{args.reps} runs, seconds from the kill to every rank's next step")
            print(f"{'mode':<28} {'recovery':>16} {'steps redone':>13} {'failed':>7}")
            names = {"spare": "in-process + hot spare",
                     "inprocess": "in-process (commit/step)",
                     "restart": "restart-the-world (ckpt/2)"}
            for r in res:
                if not r["reps"]:
                    print(f"{names[r['mode']]:<28} {'(every run failed)':>16}")
                    continue
                print(f"{names[r['mode']]:<28} {r['recovery_median_s']:>8.3f} "
                      f"({r['recovery_min_s']:.3f}) {r['steps_redone_median']:>13g} "
                      f"{r['failed_runs']:>7}")
        else:
            res = commit_bench(reps=max(3, 2 * args.reps))
            if args.json:
                print(json.dumps(res, indent=2))
                return
            print(f"State.commit() every k steps, MLP 784-256-256-10 batch 64, one process; "
                  f"step {res[0]['model_step_ms']:.2f} ms, one commit "
                  f"{res[0]['commit_ms']:.3f} ms")
            print(f"{'k':>4} {'step ms':>9} {'overhead (measured)':>20} "
                  f"{'commit/k/step':>14}")
            for r in res:
                print(f"{r['k']:>4} {r['step_ms']:>9.2f} {r['overhead_pct']:>19.2f}% "
                      f"{r['expected_pct']:>13.2f}%")
        return

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
