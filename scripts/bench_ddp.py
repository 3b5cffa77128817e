"""Data-parallel scaling: deepseek DDP next to PyTorch DDP (gloo), in one run.

For each model (an MLP 784-1024-1024-10 and a transformer encoder layer), with a
per-rank batch and 1 BLAS thread per rank, it measures:

  * 1 rank: the plain training step (the scaling baseline);
  * 2 ranks, deepseek DDP, overlap on/off x compression none/fp16: step time,
    samples/s, scaling efficiency = throughput(2) / (2 x throughput(1)), and the
    fraction of communication hidden behind backward = 1 - exposed / comm, where
    exposed = step - local step (the same two processes stepping under no_sync, so
    the contention of two busy processes is in both) and comm = the allreduce time
    of the whole gradient measured alone (in symmetric memory, as DDP's buckets; for
    fp16 over shared memory the fused reduction the hook runs there, shm_fused.py);
  * 2 ranks, PyTorch DDP over gloo, on the same model (where torch is installed).

The no-sync column (two ranks stepping at once without communicating) shows how much
of the lost efficiency is the two processes slowing each other's compute (shared
caches and memory bandwidth) rather than communication.

Configurations are measured interleaved (rounds x steps per round, medians), and the
1-rank and 2-rank jobs alternate --repeats times, because the machines are shared and
noisy: a slow phase then hits all configurations alike.

The step columns are medians of wall time and, next to them, of the rank's process CPU
time (all its threads; the slower rank's), which a shared machine disturbs far less: two
configurations that do the same work (the no-sync steps of all four) differ in wall
time by the load of the moment, in CPU time by little.

    python scripts/bench_ddp.py [--rounds 12] [--per-round 2] [--repeats 3] [--json out.json]
"""
import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _report import write_json  # noqa: E402  (scripts/ is sys.path[0])

MODELS = ("mlp", "transformer")
BATCH = {"mlp": 256, "transformer": 16}


def _build(lib, name):
    nn = lib.nn
    lib.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 10))
        x, y = lib.randn(BATCH[name], 784), lib.randint(0, 10, (BATCH[name],))

        def loss_fn(m):
            return lib.nn.functional.cross_entropy(m(x), y)
    else:
        model = nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, dropout=0.0, batch_first=True)
        x = lib.randn(BATCH[name], 128, 256)

        def loss_fn(m):
            return m(x).pow(2).mean()
    return model, loss_fn


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _pair_median(pairs):
    """(median of the first items, median of the second) of (wall, cpu) pairs."""
    return tuple(_median([p[i] for p in pairs]) for i in (0, 1))


def _interleaved(steps_by_name, rounds, per_round, warmup, barrier):
    """{name: (median wall seconds, median CPU seconds of this process)} per step of each
    named step function, measured in ``rounds`` rounds that each run every function
    ``per_round`` times in turn: on a shared, noisy machine a slow phase then hits
    every configuration alike. The order rotates by one function each round, so no
    configuration always runs right after the same other one (a cold model, a
    communication test). The process's CPU time counts this rank's own work in all its
    threads (compute, the communication and decode threads' passes, the short spins of
    the shared-memory waits) and not the time another process held the core, which
    wall time does."""
    for fn in steps_by_name.values():
        for _ in range(warmup):
            fn()
    names = list(steps_by_name)
    times = {name: ([], []) for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = steps_by_name[name]
            barrier()
            for _ in range(per_round):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[name][1].append(time.process_time() - c0)
                times[name][0].append(time.perf_counter() - t0)
    barrier()
    return {name: (_median(w), _median(c)) for name, (w, c) in times.items()}


def _comm_alone(ds, pg, n, comp):
    """One reduction of ``n`` gradient values as DDP does it, alone: the fp32
    allreduce; for fp16 over shared memory the fused cast-inside-the-reduction pass
    (what the hook runs there), else the fp16 allreduce of the wire buffer."""
    import numpy as np
    from deepseek import collectives as C
    from deepseek.distributed.buckets import GradBucket
    from deepseek.distributed.shm_fused import send_fused, shared_views
    if comp == "fp16":
        p = ds.zeros(n, requires_grad=True)
        bucket = GradBucket(0, [p], ["all"], np.float32,
                            alloc=lambda k, dt: pg.symmetric_empty(k, dt))
        bucket.buffer()[...] = 1e-3
        views = shared_views(pg, bucket)
        if views is not None:
            return lambda: send_fused(pg, bucket, views, True, 2.0 ** 10).wait()
    buf = pg.symmetric_empty(n, np.float32 if comp is None else np.float16)
    buf[...] = 1
    return lambda: pg.allreduce(buf, C.ReduceOp.SUM)


def deepseek_rank(rank, world, name, rounds, per_round, warmup, configs):
    import numpy as np
    import deepseek as ds
    from deepseek import collectives as C
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    pg = C.get_default_group()
    fns = {}
    model, loss_fn = _build(ds, name)
    if world == 1:
        opt = ds.optim.SGD(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad()
            loss_fn(model).backward()
            opt.step()
        return _interleaved({"local": step}, rounds, per_round, warmup, pg.barrier)
    # communication alone: allreduce of a buffer the size of all gradients, in
    # symmetric memory as DDP's buckets are
    n = sum(p.numel() for p in model.parameters())
    for comp in sorted({c for _, c in configs}, key=str):
        fns[f"comm_{comp}"] = _comm_alone(ds, pg, n, comp)
    for overlap, comp in configs:
        model, loss_fn = _build(ds, name)  # one model per configuration: hooks stay apart
        ddp = DistributedDataParallel(model, overlap_comm=overlap, compression=comp)
        opt = ds.optim.SGD(ddp.parameters(), lr=1e-4)

        def step(ddp=ddp, opt=opt, loss_fn=loss_fn):
            opt.zero_grad()
            loss_fn(ddp).backward()
            opt.step()

        def local_step(ddp=ddp, opt=opt, loss_fn=loss_fn):
            opt.zero_grad()
            with ddp.no_sync():
                loss_fn(ddp).backward()
            opt.step()
        fns[f"local_{overlap}_{comp}"] = local_step
        fns[f"ddp_{overlap}_{comp}"] = step
    return _interleaved(fns, rounds, per_round, warmup, pg.barrier)


def torch_rank(rank, world, name, rounds, per_round, warmup, port):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model, loss_fn = _build(torch, name)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    t = _interleaved({"step": step}, rounds, per_round, warmup, dist.barrier)["step"]
    dist.destroy_process_group()
    return t


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--rounds", type=int, default=12, help="rounds over all configurations")
    ap.add_argument("--per-round", type=int, default=2, help="steps of each configuration per round")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh 1-rank / 2-rank jobs, alternated; medians over them")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    from deepseek.testing.multiprocess import spawn_ranks
    env = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    configs = [(True, None), (False, None), (True, "fp16"), (False, "fp16")]
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    rows = []
    hdr = (f"{'model':<12} {'system':<30} {'step ms':>8} {'cpu ms':>8} {'samples/s':>10} "
           f"{'efficiency':>10} {'hidden':>7} {'no-sync ms':>10} {'n-s cpu ms':>10} "
           f"{'comm ms':>8}")
    print(hdr)
    timing = (args.rounds, args.per_round, args.warmup)
    for name in args.models:
        b = BATCH[name]
        ones, twos, t1s, t2s = [], [], [], []
        for _ in range(args.repeats):
            ones.append(spawn_ranks(deepseek_rank, 1, timeout=900, env=env,
                                    args=(name, *timing, configs))[0])
            # a key's time in a 2-rank job is its slower rank's (wall and CPU apart)
            res = spawn_ranks(deepseek_rank, 2, timeout=1800, env=env, args=(name, *timing, configs))
            twos.append({k: tuple(max(r[k][i] for r in res) for i in (0, 1)) for k in res[0]})
            if have_torch:
                t1s.append(spawn_ranks(torch_rank, 1, timeout=900, env=env, store=False,
                                       args=(name, *timing, _free_port()))[0])
                res = spawn_ranks(torch_rank, 2, timeout=900, env=env, store=False,
                                  args=(name, *timing, _free_port()))
                t2s.append(tuple(max(r[i] for r in res) for i in (0, 1)))
        base = _pair_median([o["local"] for o in ones])
        two = {k: _pair_median([t[k] for t in twos]) for k in twos[0]}
        lines = [("deepseek 1 rank", base, 1, None, None, None)]
        for overlap, comp in configs:
            key = f"{overlap}_{comp}"
            step, local, comm = two[f"ddp_{key}"], two[f"local_{key}"], two[f"comm_{comp}"][0]
            hidden = 1 - max(step[0] - local[0], 0.0) / comm if comm > 0 else None
            label = f"deepseek 2 ranks {'overlap' if overlap else 'no-overlap'} {comp or 'fp32'}"
            lines.append((label, step, 2, max(0.0, min(1.0, hidden)) if hidden is not None else None,
                          local, comm))
        if have_torch:
            t1, t2 = _pair_median(t1s), _pair_median(t2s)
            lines.append(("torch 1 rank", t1, 1, None, None, None))
            lines.append(("torch DDP gloo 2 ranks", t2, 2, None, None, None))

        def ms(x):
            return "-" if x is None else f"{1e3 * x:.1f}"
        for label, step, world, hidden, local, comm in lines:
            ref = (t1 if label.startswith("torch") else base) if have_torch else base
            eff = (world * b / step[0]) / (world * b / ref[0]) if world > 1 else 1.0
            row = {"model": name, "system": label, "step_ms": 1e3 * step[0],
                   "step_cpu_ms": 1e3 * step[1],
                   "samples_per_s": world * b / step[0], "efficiency": eff, "hidden": hidden,
                   "no_sync_ms": None if local is None else 1e3 * local[0],
                   "no_sync_cpu_ms": None if local is None else 1e3 * local[1],
                   "comm_ms": None if comm is None else 1e3 * comm}
            rows.append(row)
            print(f"{name:<12} {label:<30} {1e3 * step[0]:>8.1f} {1e3 * step[1]:>8.1f} "
                  f"{world * b / step[0]:>10.0f} {eff:>10.2f} "
                  f"{'-' if hidden is None else f'{hidden:.2f}':>7} "
                  f"{ms(None if local is None else local[0]):>10} "
                  f"{ms(None if local is None else local[1]):>10} {ms(comm):>8}", flush=True)
    write_json(args.json, rows, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
