"""bench_3d: point-to-point, pipeline and tensor-parallel numbers, side by side.

    python scripts/bench_3d.py                 # all three tables
    python scripts/bench_3d.py --only p2p --json out.json

- p2p: ping-pong between two ranks over shared memory, deepseek ``send``/``recv``
  next to mpi4py + MPICH ``Send``/``Recv`` (through ``mpiexec``) in the same run:
  half round-trip time at 8 B and 64 KiB, bandwidth at 1, 4, 16 and 64 MiB; the two
  alternate ``--rounds`` times and the table shows medians. With the native
  extension deepseek's blocking send/recv is one C call each
  (native/src/dsn_p2p.c); ``DEEPSEEK_NATIVE=0`` measures the Python protocol.
- pipeline: pp = 2 and 4 with m = 4 x pp microbatches, for GPipe, 1F1B and
  interleaved 1F1B (2 stages per rank): the measured bubble, from the schedules' own
  timestamps (``schedule.events()``, absolute perf_counter seconds, one clock for the
  processes of a host): each rank's idle share of the pipeline's common span, first
  compute start to last compute end over all ranks (``measured_bubble``; a rank's own
  wall clock would miss the last stage's late start and early finish), the mean over
  ranks and the worst rank; next to the replayed bubble (the step's own measured
  compute times played through the schedule with free communication: what unequal
  or jittery compute alone leaves idle, so that measured - replayed is what the
  hand-overs and the executor cost), the idealised bubble of the schedule (its idle
  slots with unit costs) and the formula, with the relative deviation; the median
  hand-over (producer's end to its waiting consumer's start) and gap (a rank's time
  between two actions whose input was there); peak
  microbatches held and peak numpy bytes traced on stage 0 (tracemalloc, a separate
  step; meaningful for the numpy compute). Two kinds of stage compute
  (``--compute``): ``numpy``, an MLP block per stage (one BLAS thread per rank), and
  ``hold``, a layer that holds ``--hold-ms`` forward and twice that backward without a
  core (the ranks' timer slack set to 1 ns, so that a hold overshoots by the
  scheduler's wake-up alone; the last stage's loss a plain mean, ``_loss_fn``) -- an
  emulated device per stage, for hosts with fewer cores than pp ranks
  (pp = 4 on 2 cores: four numpy stages would share two cores, and the measured
  bubble would be the scheduler's).
- tp: one GPT block (attention + MLP), tp = 2 on one host against one process: step
  time, and all-reduce calls and bytes per step against Megatron's count (2
  all-reduces of B*T*d forward per layer, 2 backward).
On an oversubscribed machine (more ranks than cores, or other load) wall-clock
bubbles and tp step times measure the scheduler as much as the schedule: every
hand-over of an activation waits for the receiving process to get a core. The
idealised column does not; note ``uptime`` with every table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = [8, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]


def _iters(n):
    return 2000 if n <= 1024 else 400 if n <= (64 << 10) else max(4, min(50, (256 << 20) // n))


def load_average():
    """The 1, 5 and 15 minute load averages, for the table headers."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_size(n):
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n // k} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------- p2p
def _pingpong(send, recv, rank, n, blocks=5):
    """One-way time of a ping-pong of ``n`` bytes: the median over ``blocks`` timed
    blocks of ``_iters(n)`` round trips (half a round trip each)."""
    buf = np.zeros(max(n, 1), np.uint8)
    it = _iters(n)

    def rounds(k):
        for _ in range(k):
            if rank == 0:
                send(buf, 1)
                recv(buf, 1)
            else:
                recv(buf, 0)
                send(buf, 0)
    rounds(3)  # warm-up
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        rounds(max(1, it // blocks))
        times.append((time.perf_counter() - t0) / max(1, it // blocks) / 2)
    return float(np.median(times))


def p2p_worker(rank, world, sizes):
    from deepseek import collectives as C

    pg = C.init_process_group()
    out = {}
    for n in sizes:
        pg.barrier()
        out[n] = _pingpong(lambda b, p: pg.send(b, p), lambda b, p: pg.recv(b, p), rank, n)
    return out


def mpi_p2p(sizes_path, out_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    sizes = json.load(open(sizes_path))
    out = {}
    for n in sizes:
        comm.Barrier()
        out[n] = _pingpong(lambda b, p: comm.Send(b, dest=p), lambda b, p: comm.Recv(b, source=p),
                           comm.Get_rank(), n)
    if comm.Get_rank() == 0:
        json.dump(out, open(out_path, "w"))


def run_mpich(sizes):
    if shutil.which("mpiexec") is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        sp, op = os.path.join(d, "s.json"), os.path.join(d, "o.json")
        json.dump(sizes, open(sp, "w"))
        subprocess.run(["mpiexec", "-n", "2", sys.executable, __file__, "--_mpi", sp, op],
                       check=True, timeout=600, capture_output=True)
        return {int(k): v for k, v in json.load(open(op)).items()}


def bench_p2p(rounds=3, sizes=SIZES, python_path=False):
    """deepseek and MPICH ping-pongs, alternated ``rounds`` times (so that both see the
    same background load); per size the median over rounds of each one's median.
    ``python_path``: a third run per round with ``DEEPSEEK_NATIVE=0`` (the Python
    protocol instead of the C send/recv)."""
    from deepseek.testing.multiprocess import spawn_ranks

    ours, mpi, py = [], [], []
    for _ in range(rounds):
        ours.append(spawn_ranks(p2p_worker, 2, timeout=600, args=(sizes,))[0])
        if python_path:
            py.append(spawn_ranks(p2p_worker, 2, timeout=600, args=(sizes,),
                                  env={"DEEPSEEK_NATIVE": "0"})[0])
        try:
            m = run_mpich(sizes)
        except Exception as e:  # noqa: BLE001
            print(f"(MPICH run failed: {e})")
            m = None
        if m:
            mpi.append(m)
    rows = []
    for n in sizes:
        r = {"bytes": n, "deepseek_s": float(np.median([o[n] for o in ours])),
             "mpich_s": float(np.median([m[n] for m in mpi])) if mpi else None,
             # per round: MPICH time / ours, from runs next to each other
             "ratios": [m[n] / o[n] for o, m in zip(ours, mpi)]}
        if py:
            r["python_s"] = float(np.median([o[n] for o in py]))
            r["python_ratios"] = [m[n] / o[n] for o, m in zip(py, mpi)]
        rows.append(r)
    print(f"\np2p send/recv, 2 ranks, one host (one-way time; bandwidth = bytes/time; "
          f"median of {rounds} alternated runs; {load_average()})")
    extra = f" | {'Python path':>12} {'ratio':>6}" if py else ""
    print(f"{'size':>8} | {'deepseek':>12} | {'MPICH':>12} | ratio (>1: deepseek faster)"
          + extra)
    for r in rows:
        def cell(t):
            if t is None:
                return "-"
            return f"{t * 1e6:.1f} us" if r["bytes"] <= (64 << 10) else \
                f"{r['bytes'] / t / 1e9:.2f} GB/s"

        def med(xs):
            return float(np.median(xs)) if xs else float("nan")
        tail = f" | {cell(r['python_s']):>12} {med(r['python_ratios']):>5.2f}x" if py else ""
        print(f"{fmt_size(r['bytes']):>8} | {cell(r['deepseek_s']):>12} | "
              f"{cell(r['mpich_s']):>12} | {med(r['ratios']):.2f}x" + tail)
    return rows


# ---------------------------------------------------------------------- pipeline
def _hold_layer(secs):
    """A layer whose forward holds for ``secs`` and backward for 2 x ``secs`` without
    using a core: an emulated accelerator, so that pp ranks can compute at the same
    time on a host with fewer cores (what the formula assumes: a device per stage)."""
    import deepseek as ds
    from deepseek import nn
    from deepseek.autograd.function import Function

    class Hold(Function):
        @staticmethod
        def forward(ctx, a):
            time.sleep(secs)
            return a.copy()

        @staticmethod
        def backward(ctx, g):
            time.sleep(2 * secs)
            return g

    class HoldLayer(nn.Module):
        def forward(self, x):
            return Hold.apply(x)
    ds.manual_seed(0)
    return HoldLayer()


def _tight_timer_slack():
    """Timer slack 1 ns for this thread (Linux prctl PR_SET_TIMERSLACK; default 50 us):
    a hold then overshoots by the scheduler's wake-up alone, not 50 us more (measured:
    sleep(20 ms) median overshoot 105-120 us -> 58-60 us). No-op elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _loss_fn(compute):
    """The last stage's loss. With holds, a plain mean: the formula assumes equal
    stages, and the last stage's loss and its backward run on the CPU outside the
    holds. A mean squared error there measured +0.3 ms forward and +0.25 ms backward
    on the last stage at load 7 (10 ms holds), and the schedule replayed with those
    per-stage medians gives a bubble 6% above the formula at pp = 4 interleaved
    (equal stages: the formula)."""
    if compute == "hold":
        return lambda o, y: o.mean()
    return lambda o, y: ((o - y) ** 2).mean()


def pipe_worker(rank, world, m, d, batch, seq, steps, compute, hold_s):
    import tracemalloc

    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek import nn
    from deepseek.distributed.pipelining import (Schedule1F1B, ScheduleGPipe,
                                                 ScheduleInterleaved1F1B, pipeline)

    mesh = dist.init_device_mesh(mesh_shape=(world,), mesh_dim_names=("pp",))
    if compute == "hold":
        _tight_timer_slack()
    out = {}
    for name, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2)):
        ds.manual_seed(0)
        n = world * v
        if compute == "hold":
            model = nn.Sequential(*[_hold_layer(hold_s / v) for _ in range(n)])
        else:
            model = nn.Sequential(*[nn.Sequential(nn.Linear(d, 4 * d // v), nn.GELU(),
                                                  nn.Linear(4 * d // v, d))
                                    for _ in range(n)])
        stages = pipeline(model, list(range(1, n)), group=mesh["pp"])
        kw = dict(loss_fn=_loss_fn(compute), log_timing=True)
        sched = ScheduleInterleaved1F1B(stages, m, **kw) if v > 1 else \
            {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[name](stages[0], m, **kw)
        # the input records its gradient, so that stage 0's backward does the work of
        # every other stage's (the formula assumes equal stages)
        x, y = ds.randn(batch, seq, d).requires_grad_(True), ds.zeros(batch, seq, d)
        sched.step(x, target=y)
        events = []
        cpu = time.process_time()  # holds use no core: the p2p, executor and autograd CPU
        for _ in range(steps):
            mesh["pp"].barrier()
            sched.step(x, target=y)
            events.append(sched.events())
        cpu = (time.process_time() - cpu) / steps / len(sched.order)
        mesh["pp"].barrier()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        # activations only, not the input's gradient (hold layers have no parameters:
        # without it their stage 0 had nothing to differentiate)
        sched.step(x.detach() if compute == "numpy" else x, target=y)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        st = sched.stats()
        out[name] = {"events": events, "ideal": st["ideal_bubble"], "formula": st["formula"],
                     "cpu_per_action_s": cpu,
                     "peak_live": max(st["peak_live"].values()), "peak_bytes": peak}
    return out


def handoffs(events_by_rank):
    """Hand-over latencies and local gaps of one step. A hand-over: for every action
    whose rank sat idle waiting for its input (its previous action ended before the
    producing action on the neighbouring stage did), the time from the producer's end
    to its own start -- what sending, receiving and waking the process cost on the
    critical path, the part of the measured bubble that the formula does not have. A
    gap: for every other action after a rank's first, the time from its previous
    action's end to its start (its input was there: the executor's own time between
    actions, taking the message included). Returns (hand-overs, gaps) in seconds."""
    end = {(k, s, mb): t1 for ev in events_by_rank for k, s, mb, _, t1 in ev}
    last = max(s for ev in events_by_rank for _, s, _, _, _ in ev)
    hand, gaps = [], []
    for ev in events_by_rank:
        prev_end = None
        for k, s, mb, t0, t1 in ev:
            src = ("F", s - 1, mb) if k == "F" else ("B", s + 1, mb)
            ready = end.get(src) if (k == "F" and s > 0) or (k == "B" and s < last) \
                else None
            if ready is not None and (prev_end is None or prev_end < ready):
                hand.append(t0 - ready)
            elif prev_end is not None:
                gaps.append(t0 - prev_end)
            prev_end = t1
    return hand, gaps


def replayed_bubble(events_by_rank):
    """The mean idle share of one step replayed with its own measured compute times
    and free communication (``simulate`` with each action's duration): what the
    schedule leaves idle given this step's unequal and jittery compute. The measured
    bubble minus this is what hand-overs and the executor between actions cost."""
    from deepseek.distributed.pipelining import simulate

    dur = {(k, s, mb): t1 - t0 for ev in events_by_rank for k, s, mb, t0, t1 in ev}
    orders = [[(k, s, mb) for k, s, mb, _, _ in ev] for ev in events_by_rank]
    n = 1 + max(s for o in orders for _, s, _ in o)
    idle = simulate(orders, n, cost=lambda k, s, mb: dur[(k, s, mb)])[2]
    return sum(idle) / len(idle)


def bench_pipeline(pps, d, seq, steps, computes=("numpy", "hold"), hold_s=0.004):
    """Per pp and compute kind: the bubble measured from every rank's action
    timestamps over the pipeline's common span (median over steps of the ranks'
    mean, and of the worst rank), next to the idealised bubble and the formula."""
    from deepseek.distributed.pipelining import measured_bubble
    from deepseek.testing.multiprocess import spawn_ranks

    rows = []
    # one BLAS thread per rank: the ranks are the parallelism
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for compute in computes:
        for pp in pps:
            m = 4 * pp
            batch = 4 * m  # 4 sequences per microbatch
            res = spawn_ranks(pipe_worker, pp, timeout=600, env=env,
                              args=(m, d, batch, seq, steps, compute, hold_s))
            for name in ("gpipe", "1f1b", "interleaved"):
                rs = [r[name] for r in res]
                per_step = [measured_bubble([r["events"][k] for r in rs])
                            for k in range(steps)]
                hg = [handoffs([r["events"][k] for r in rs]) for k in range(steps)]
                hand = [x for h, _ in hg for x in h]
                gaps = [x for _, g in hg for x in g]
                rows.append({
                    "compute": compute, "pp": pp, "m": m, "schedule": name,
                    "bubble_measured": float(np.median([b["mean"] for b in per_step])),
                    "bubble_worst_rank": float(np.median([b["worst"] for b in per_step])),
                    "bubble_replayed": float(np.median(
                        [replayed_bubble([r["events"][k] for r in rs]) for k in range(steps)])),
                    "bubble_ideal": max(r["ideal"] for r in rs),
                    "formula": rs[0]["formula"], "stage0_peak_live": rs[0]["peak_live"],
                    "stage0_peak_MiB": rs[0]["peak_bytes"] / 2 ** 20,
                    "step_s": float(np.median([b["span_s"] for b in per_step])),
                    "handoff_s": float(np.median(hand)) if hand else 0.0,
                    "gap_s": float(np.median(gaps)) if gaps else 0.0,
                    "cpu_per_action_s": float(np.mean([r["cpu_per_action_s"] for r in rs]))})
    print(f"\npipeline: m = 4 x pp microbatches of 4 x {seq} tokens; compute 'numpy': "
          f"an MLP stack d={d} (one BLAS thread per rank; {os.cpu_count()} cores), "
          f"'hold': {hold_s * 1e3:g} ms forward / {2 * hold_s * 1e3:g} ms backward per "
          f"stage without a core (an emulated device per stage); {load_average()}")
    print("bubble = 1 - busy / span, span = first compute start to last compute end over "
          "all ranks; measured = mean over ranks (worst rank), median over steps; replay: "
          "the step's own compute times replayed with free communication; "
          "handoff: median time from a producer's end to its waiting consumer's start; "
          "gap: median time between a rank's actions when its input was there; CPU/act: "
          "process CPU time per action (holds use none), mean over ranks")
    print(f"{'compute':>7} {'pp':>3} {'m':>3} {'schedule':>12} | {'measured':>8} "
          f"{'(worst)':>8} {'replay':>7} {'ideal':>7} {'formula':>7} {'dev':>6} | {'held':>4} "
          f"{'MiB st0':>8} | {'span':>8} {'handoff':>8} {'gap':>7} {'CPU/act':>8}")
    for r in rows:
        dev = (r["bubble_measured"] - r["formula"]) / r["formula"]
        r["deviation"] = dev
        print(f"{r['compute']:>7} {r['pp']:>3} {r['m']:>3} {r['schedule']:>12} | "
              f"{r['bubble_measured']:>8.3f} {r['bubble_worst_rank']:>8.3f} "
              f"{r['bubble_replayed']:>7.3f} "
              f"{r['bubble_ideal']:>7.3f} {r['formula']:>7.3f} {dev:>+6.0%} | "
              f"{r['stage0_peak_live']:>4} {r['stage0_peak_MiB']:>8.1f} | "
              f"{r['step_s'] * 1e3:>6.1f}ms {r['handoff_s'] * 1e6:>6.0f}us "
              f"{r['gap_s'] * 1e6:>5.0f}us {r['cpu_per_action_s'] * 1e6:>6.0f}us")
    return rows


# ---------------------------------------------------------------------- tensor parallel
def tp_worker(rank, world, d, heads, batch, seq, steps):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import deepseek as ds
    import deepseek.distributed as dist
    import train_gpt_3d as g
    from deepseek.distributed.tensor_parallel import (ColwiseParallel, RowwiseParallel,
                                                      parallelize_module)

    dist.init_process_group()
    tp = dist.new_group(list(range(world)))
    ds.manual_seed(0)
    block = g.Block(d, heads)
    if world > 1:
        parallelize_module(block, tp, {"attn.q_proj": ColwiseParallel(),
                                       "attn.k_proj": ColwiseParallel(),
                                       "attn.v_proj": ColwiseParallel(),
                                       "attn.o_proj": RowwiseParallel(),
                                       "mlp.fc1": ColwiseParallel(),
                                       "mlp.fc2": RowwiseParallel()})
    calls = []
    orig = tp.allreduce

    def counting(arr, *a, **k):
        calls.append(arr.nbytes)
        return orig(arr, *a, **k)
    tp.allreduce = counting
    x = ds.randn(batch, seq, d)
    times = []
    for i in range(steps + 1):
        tp.barrier()
        del calls[:]
        t0 = time.perf_counter()
        block.zero_grad()
        xi = x.detach().requires_grad_(True)
        block(xi).sum().backward()
        times.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(times[1:])), "allreduces": len(calls),
            "bytes": int(sum(calls))}


def bench_tp(d, heads, batch, seq, steps):
    from deepseek.testing.multiprocess import spawn_ranks

    one = spawn_ranks(tp_worker, 1, timeout=600, args=(d, heads, batch, seq, steps))[0]
    two = spawn_ranks(tp_worker, 2, timeout=600, args=(d, heads, batch, seq, steps))[0]
    act = batch * seq * d * 4
    # Megatron: per layer, 2 all-reduces forward (attention out, MLP out) and 2 backward
    # (the inputs of the two column-parallel blocks)
    rows = [{"tp": 1, **one, "megatron_allreduces": 0, "megatron_bytes": 0},
            {"tp": 2, **two, "megatron_allreduces": 4, "megatron_bytes": 4 * act}]
    print(f"\ntensor parallel: one GPT block d={d}, {heads} heads, batch {batch}x{seq}, "
          f"forward + backward; {load_average()}")
    print(f"{'tp':>3} | {'step':>9} | {'all-reduces':>11} {'MiB':>7} | "
          f"{'Megatron':>8} {'MiB':>7}")
    for r in rows:
        print(f"{r['tp']:>3} | {r['step_s'] * 1e3:>7.2f}ms | {r['allreduces']:>11} "
              f"{r['bytes'] / 2 ** 20:>7.2f} | {r['megatron_allreduces']:>8} "
              f"{r['megatron_bytes'] / 2 ** 20:>7.2f}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["p2p", "pipeline", "tp"], default=None)
    ap.add_argument("--pp", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compute", nargs="+", choices=["numpy", "hold"],
                    default=["numpy", "hold"],
                    help="pipeline: stage compute (hold: an emulated device per stage)")
    ap.add_argument("--hold-ms", type=float, default=4.0,
                    help="pipeline, compute 'hold': forward ms per stage (backward 2x)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="p2p: alternated deepseek / MPICH runs (medians over them)")
    ap.add_argument("--python-path", action="store_true",
                    help="p2p: also time the Python protocol (DEEPSEEK_NATIVE=0)")
    ap.add_argument("--json", nargs="?", const="-", default=None)
    ap.add_argument("--_mpi", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._mpi:
        mpi_p2p(*a._mpi)
        return 0
    out = {}
    if a.only in (None, "p2p"):
        out["p2p"] = bench_p2p(a.rounds, python_path=a.python_path)
    if a.only in (None, "pipeline"):
        out["pipeline"] = bench_pipeline(a.pp, a.d, seq=32, steps=a.steps,
                                         computes=a.compute, hold_s=a.hold_ms * 1e-3)
    if a.only in (None, "tp"):
        out["tp"] = bench_tp(a.d, 8, batch=8, seq=64, steps=a.steps)
    if a.json:
        text = json.dumps(out, indent=1)
        if a.json == "-":
            print(text)
        else:
            open(a.json, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
