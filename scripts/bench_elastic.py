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
  hot spare that already runs the script), each also with ZeRO-2 (FSDP SHARD_GRAD_OP:
  the dead rank's parameter and momentum shards come from its neighbour's copy, every
  generation builds its model anew and binds it), next to restart-the-world (every
  worker restarted, resumed from the last sharded checkpoint), and the steps redone.
* commit: the steady-state cost of ``elastic.State.commit()`` every k steps as a
  percentage of the step time, for an MLP (784-256-256-10, batch 64, SGD+momentum),
  one process, the fastest of interleaved repetitions (and the direct measure, less
  noisy on a shared machine: the median time the loop spent inside ``commit()`` / k /
  the step time); then the same MLP under ZeRO-1 and ZeRO-2 on 2 ranks, bound as
  ``Sharded`` (a commit copies this rank's shard and exchanges it with the ring
  neighbours), with the all-gather the other design would need per commit, timed for
  the same bytes (``--no-zero`` skips these).

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
    if kind.split("_")[0] in ("inprocess", "spare"):
        env["DEEPSEEK_ELASTIC_IN_PROCESS"] = "1"
        env["DEEPSEEK_ELASTIC_SPARES"] = "1" if kind.startswith("spare") else "0"
        args += ["inprocess", "zero2" if kind.endswith("_zero2") else "ddp"]
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
    rows = {"spare": [], "spare_zero2": [], "inprocess": [], "inprocess_zero2": [],
            "restart": []}
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


def _mlp():
    import deepseek
    from deepseek import nn
    deepseek.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def _commit_overhead(state, step, reps, steps, ks):
    """Step time without commits and with ``state.commit()`` every k steps
    (interleaved repetitions), and the time the loop spent inside ``commit()``."""
    import time
    inside = {k: [] for k in ks}

    def run(k):
        t0 = time.perf_counter()
        for i in range(steps):
            step()
            state.step += 1
            if k and (i + 1) % k == 0:
                t1 = time.perf_counter()
                state.commit()
                inside[k].append(time.perf_counter() - t1)
        return (time.perf_counter() - t0) / steps

    run(0)
    for k in ks:
        inside[k].clear()
    times = {k: [] for k in (0,) + tuple(ks)}
    for _ in range(reps):
        for k in times:                          # interleaved
            times[k].append(run(k))
    # min, not median: on a shared machine the noise is all on one side
    base = min(times[0])
    return [{"k": k, "step_ms": min(times[k]) * 1e3,
             "overhead_pct": (min(times[k]) / base - 1) * 100,
             "commit_ms": statistics.median(inside[k]) * 1e3, "model_step_ms": base * 1e3,
             "expected_pct": statistics.median(inside[k]) / k / base * 100} for k in ks]


def _batch(rank=0):
    import numpy as np
    import deepseek
    rng = np.random.default_rng(rank)
    return (deepseek.tensor(rng.standard_normal((64, 784), np.float32)),
            deepseek.tensor(rng.integers(0, 10, 64)))


def commit_bench(reps=9, steps=20, ks=(1, 10)):
    """Step time of an MLP without commits and with ``State.commit()`` every k steps."""
    sys.path.insert(0, REPO)
    import deepseek
    from deepseek import elastic, nn
    model = _mlp()
    opt = deepseek.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _batch()
    loss_fn = nn.CrossEntropyLoss()
    state = elastic.State(model=model, optimizer=opt, step=0)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return _commit_overhead(state, step, reps, steps, ks)


def commit_rank(rank, world, stage, reps, steps, ks):
    """:func:`commit_bench` on one rank of a ZeRO job (stage 1: DDP +
    ZeroRedundancyOptimizer, 2: FSDP SHARD_GRAD_OP), the model and optimizer bound to
    the State as ``Sharded`` (a commit: this rank's shard copied, the neighbour's
    received)."""
    import deepseek
    from deepseek import collectives as C
    from deepseek import elastic, nn
    from deepseek.distributed import DistributedDataParallel as DDP
    from deepseek.distributed.elastic import Sharded
    from deepseek.distributed.fsdp import FullyShardedDataParallel as FSDP
    from deepseek.distributed.zero import ZeroRedundancyOptimizer
    C.init_process_group()
    model = _mlp()
    if stage == 2:
        runner = FSDP(model, sharding_strategy="SHARD_GRAD_OP")
        opt = deepseek.optim.SGD(runner.parameters(), lr=0.01, momentum=0.9)
    else:
        runner = DDP(model)
        opt = ZeroRedundancyOptimizer(runner.parameters(), deepseek.optim.SGD, lr=0.01,
                                      momentum=0.9)
    x, y = _batch(rank)
    loss_fn = nn.CrossEntropyLoss()
    state = elastic.State(step=0)
    state.bind(train=Sharded(runner, opt))

    def step():
        opt.zero_grad()
        loss_fn(runner(x), y).backward()
        opt.step()
    try:
        res = _commit_overhead(state, step, reps, steps, ks)
        # the other way: every commit all-gathers every rank's shard (the full state
        # on every rank); its communication alone, for the same bytes
        import time
        import numpy as np
        pg = C.get_default_group()
        mine = state._saved["parts"][pg.rank][1]
        full = np.empty(mine.size * pg.size, np.uint8)
        ts = []
        for _ in range(20):
            pg.barrier()
            t0 = time.perf_counter()
            pg.allgather(full, mine)
            ts.append(time.perf_counter() - t0)
        # commit()'s own time: the ranks aligned by a barrier first (inside the loop
        # a commit also waits out the peer's lag, which on a loaded machine is
        # scheduling noise)
        alone = []
        for _ in range(20):
            pg.barrier()
            t0 = time.perf_counter()
            state.commit()
            alone.append(time.perf_counter() - t0)
        for r in res:
            r["shard_kib"] = mine.size / 1024
            r["allgather_ms"] = statistics.median(ts) * 1e3
            r["alone_ms"] = statistics.median(alone) * 1e3
            r["alone_pct"] = r["alone_ms"] / r["k"] / r["model_step_ms"] * 100
        return res
    finally:
        C.destroy_process_group()


def sharded_commit_bench(reps=9, steps=20, ks=(1, 10), world=2):
    """:func:`commit_rank` on ``world`` spawned ranks for ZeRO-1 and ZeRO-2 (rank 0's
    numbers; the ranks step in lockstep)."""
    sys.path.insert(0, REPO)
    from deepseek.testing.multiprocess import spawn_ranks
    out = {}
    for stage in (1, 2):
        out[stage] = spawn_ranks(commit_rank, world, timeout=600,
                                 args=(stage, reps, steps, ks),
                                 env={"OMP_NUM_THREADS": "1"})[0]
    return out


def _print_commit(title, res):
    print(f"{title}; step {res[0]['model_step_ms']:.2f} ms")
    if "allgather_ms" in res[0]:
        print(f"(shard {res[0]['shard_kib']:.0f} KiB; the alternative, all-gathering the "
              f"full state every commit, spends {res[0]['allgather_ms']:.3f} ms in the "
              "all-gather alone and keeps the full state on every rank)")
        print(f"commit() alone, ranks aligned by a barrier: {res[0]['alone_ms']:.3f} ms = "
              + ", ".join(f"{r['alone_pct']:.2f}% at k={r['k']}" for r in res))
    print(f"{'k':>4} {'step ms':>9} {'overhead (step times)':>22} {'commit() ms':>12} "
          f"{'in commit()/k/step':>19}")
    for r in res:
        print(f"{r['k']:>4} {r['step_ms']:>9.2f} {r['overhead_pct']:>21.2f}% "
              f"{r['commit_ms']:>12.3f} {r['expected_pct']:>18.2f}%")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=("restart", "recovery", "commit"))
    ap.add_argument("--no-zero", action="store_true",
                    help="commit: the one-process table only (no 2-rank ZeRO jobs)")
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
                     "spare_zero2": "  the same, ZeRO-2",
                     "inprocess": "in-process (commit/step)",
                     "inprocess_zero2": "  the same, ZeRO-2",
                     "restart": "restart-the-world (ckpt/2)"}
            for r in res:
                if not r["reps"]:
                    print(f"{names[r['mode']]:<28} {'(every run failed)':>16}")
                    continue
                print(f"{names[r['mode']]:<28} {r['recovery_median_s']:>8.3f} "
                      f"({r['recovery_min_s']:.3f}) {r['steps_redone_median']:>13g} "
                      f"{r['failed_runs']:>7}")
        else:
            reps = max(3, 2 * args.reps)
            res = {"plain": commit_bench(reps=reps)}
            if not args.no_zero:
                for stage, r in sharded_commit_bench(reps=reps).items():
                    res[f"zero{stage}"] = r
            if args.json:
                print(json.dumps(res, indent=2))
                return
            _print_commit("State.commit() every k steps, MLP 784-256-256-10 batch 64, one "
                          "process, SGD+momentum", res["plain"])
            for stage, what in ((1, "DDP + ZeroRedundancyOptimizer"),
                                (2, "FSDP SHARD_GRAD_OP")):
                if f"zero{stage}" in res:
                    print()
                    _print_commit(f"ZeRO-{stage} ({what}), 2 ranks, batch 64 per rank, "
                                  "State.bind(Sharded) (shard + neighbour copy)",
                                  res[f"zero{stage}"])
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
