"""bench_3d: point-to-point, pipeline and tensor-parallel numbers, side by side.

    python scripts/bench_3d.py                 # all three tables
    python scripts/bench_3d.py --only p2p --json out.json

- p2p: ping-pong between two ranks over shared memory, deepseek ``send``/``recv``
  next to mpi4py + MPICH ``Send``/``Recv`` (through ``mpiexec``) in the same run:
  half round-trip time at 8 B and 64 KiB, bandwidth at 4 and 64 MiB; the two
  alternate ``--rounds`` times and the table shows medians.
- pipeline: pp = 2 and 4 with m = 4 x pp microbatches on an MLP stack, for GPipe,
  1F1B and interleaved 1F1B (2 stages per rank): the measured bubble (1 - busy/wall,
  from each rank's compute timestamps; the worst rank), the idealised bubble of the
  schedule (its idle slots with unit costs) and the formula, peak microbatches held
  and peak numpy bytes traced on stage 0 (tracemalloc, a separate step).
- tp: one GPT block (attention + MLP), tp = 2 on one host against one process: step
  time, and all-reduce calls and bytes per step against Megatron's count (2
  all-reduces of B*T*d forward per layer, 2 backward).
On an oversubscribed machine (more ranks than cores) wall-clock bubbles and tp step
times measure the scheduler as much as the schedule; the idealised column does not.
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

SIZES = [8, 64 << 10, 4 << 20, 64 << 20]


def _iters(n):
    return 2000 if n <= 1024 else 400 if n <= (64 << 10) else max(4, min(50, (256 << 20) // n))


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


def bench_p2p(rounds=3, sizes=SIZES):
    """deepseek and MPICH ping-pongs, alternated ``rounds`` times (so that both see the
    same background load); per size the median over rounds of each one's median."""
    from deepseek.testing.multiprocess import spawn_ranks

    ours, mpi = [], []
    for _ in range(rounds):
        ours.append(spawn_ranks(p2p_worker, 2, timeout=600, args=(sizes,))[0])
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
        rows.append(r)
    print(f"\np2p send/recv, 2 ranks, one host (one-way time; bandwidth = bytes/time; "
          f"median of {rounds} alternated runs)")
    print(f"{'size':>8} | {'deepseek':>12} | {'MPICH':>12} | ratio (>1: deepseek faster)")
    for r in rows:
        def cell(t):
            if t is None:
                return "-"
            return f"{t * 1e6:.1f} us" if r["bytes"] <= (64 << 10) else \
                f"{r['bytes'] / t / 1e9:.2f} GB/s"
        ratio = float(np.median(r["ratios"])) if r["ratios"] else float("nan")
        print(f"{fmt_size(r['bytes']):>8} | {cell(r['deepseek_s']):>12} | "
              f"{cell(r['mpich_s']):>12} | {ratio:.2f}x")
    return rows


# ---------------------------------------------------------------------- pipeline
def pipe_worker(rank, world, m, d, batch, seq, steps):
    import tracemalloc

    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek import nn
    from deepseek.distributed.pipelining import (Schedule1F1B, ScheduleGPipe,
                                                 ScheduleInterleaved1F1B, pipeline)

    mesh = dist.init_device_mesh(mesh_shape=(world,), mesh_dim_names=("pp",))
    out = {}
    for name, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2)):
        ds.manual_seed(0)
        n = world * v
        model = nn.Sequential(*[nn.Sequential(nn.Linear(d, 4 * d // v), nn.GELU(),
                                              nn.Linear(4 * d // v, d)) for _ in range(n)])
        stages = pipeline(model, list(range(1, n)), group=mesh["pp"])
        kw = dict(loss_fn=lambda o, y: ((o - y) ** 2).mean(), log_timing=True)
        sched = ScheduleInterleaved1F1B(stages, m, **kw) if v > 1 else \
            {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[name](stages[0], m, **kw)
        x, y = ds.randn(batch, seq, d), ds.zeros(batch, seq, d)
        sched.step(x, target=y)
        bubbles = []
        for _ in range(steps):
            mesh["pp"].barrier()
            sched.step(x, target=y)
            bubbles.append(sched.stats()["bubble"])
        mesh["pp"].barrier()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        sched.step(x, target=y)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        st = sched.stats()
        out[name] = {"bubble": float(np.median(bubbles)), "ideal": st["ideal_bubble"],
                     "formula": st["formula"], "peak_live": max(st["peak_live"].values()),
                     "peak_bytes": peak, "wall_s": float(np.median(sched.step_times[1:-1]))}
    return out


def bench_pipeline(pps, d, batch, seq, steps):
    from deepseek.testing.multiprocess import spawn_ranks

    rows = []
    for pp in pps:
        m = 4 * pp
        res = spawn_ranks(pipe_worker, pp, timeout=600, args=(m, d, batch, seq, steps))
        for name in ("gpipe", "1f1b", "interleaved"):
            rs = [r[name] for r in res]
            rows.append({"pp": pp, "m": m, "schedule": name,
                         "bubble_measured": max(r["bubble"] for r in rs),
                         "bubble_ideal": max(r["ideal"] for r in rs),
                         "formula": rs[0]["formula"], "stage0_peak_live": rs[0]["peak_live"],
                         "stage0_peak_MiB": rs[0]["peak_bytes"] / 2 ** 20,
                         "step_s": max(r["wall_s"] for r in rs)})
    print(f"\npipeline: MLP stack d={d}, batch {batch}x{seq}, m = 4 x pp "
          f"({os.cpu_count()} cores)")
    print(f"{'pp':>3} {'m':>3} {'schedule':>12} | {'measured':>8} {'ideal':>7} {'formula':>7} | "
          f"{'held':>4} {'MiB st0':>8} | {'step':>8}")
    for r in rows:
        print(f"{r['pp']:>3} {r['m']:>3} {r['schedule']:>12} | {r['bubble_measured']:>8.3f} "
              f"{r['bubble_ideal']:>7.3f} {r['formula']:>7.3f} | {r['stage0_peak_live']:>4} "
              f"{r['stage0_peak_MiB']:>8.1f} | {r['step_s'] * 1e3:>6.1f}ms")
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
          f"forward + backward")
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
    ap.add_argument("--rounds", type=int, default=3,
                    help="p2p: alternated deepseek / MPICH runs (medians over them)")
    ap.add_argument("--json", nargs="?", const="-", default=None)
    ap.add_argument("--_mpi", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._mpi:
        mpi_p2p(*a._mpi)
        return 0
    out = {}
    if a.only in (None, "p2p"):
        out["p2p"] = bench_p2p(a.rounds)
    if a.only in (None, "pipeline"):
        out["pipeline"] = bench_pipeline(a.pp, a.d, batch=16, seq=32, steps=a.steps)
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
