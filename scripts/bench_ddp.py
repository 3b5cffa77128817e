"""Data-parallel scaling: deepseek DDP next to PyTorch DDP (gloo), in one run.

For each model (an MLP 784-1024-1024-10 and a transformer encoder layer), with a
per-rank batch and 1 BLAS thread per rank, it measures:

  * 1 rank: the plain training step (the scaling baseline);
  * 2 ranks, deepseek DDP, overlap on/off x compression none/fp16: step time,
    samples/s, scaling efficiency = throughput(2) / (2 x throughput(1)), and the
    fraction of communication hidden behind backward = 1 - exposed / comm, where
    exposed = step - local step (the same two processes stepping under no_sync, so
    the contention of two busy processes is in both) and comm = the allreduce time
    of the whole gradient measured alone;
  * 2 ranks, PyTorch DDP over gloo, on the same model (where torch is installed).

    python scripts/bench_ddp.py [--steps 20] [--models mlp transformer] [--json out.json]
"""
import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

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


def _time_steps(step, steps, warmup, barrier):
    for _ in range(warmup):
        step()
    barrier()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    barrier()
    times.sort()
    return times[len(times) // 2]


def deepseek_rank(rank, world, name, steps, warmup, configs):
    import numpy as np
    import deepseek as ds
    from deepseek import collectives as C
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    pg = C.get_default_group()
    out = {}
    model, loss_fn = _build(ds, name)
    if world == 1:
        opt = ds.optim.SGD(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad()
            loss_fn(model).backward()
            opt.step()
        out["local"] = _time_steps(step, steps, warmup, pg.barrier)
        return out
    # communication alone: allreduce of a buffer the size of all gradients
    n = sum(p.numel() for p in model.parameters())
    for comp in sorted({c for _, c in configs}, key=str):
        buf = np.ones(n, dtype=np.float32 if comp is None else np.float16)
        out[f"comm_{comp}"] = _time_steps(lambda: pg.allreduce(buf, C.ReduceOp.SUM), steps, 2, pg.barrier)
    for overlap, comp in configs:
        ddp = DistributedDataParallel(model, overlap_comm=overlap, compression=comp)
        opt = ds.optim.SGD(ddp.parameters(), lr=1e-4)

        def step():
            opt.zero_grad()
            loss_fn(ddp).backward()
            opt.step()

        def local_step():
            opt.zero_grad()
            with ddp.no_sync():
                loss_fn(ddp).backward()
            opt.step()
        out[f"local_{overlap}_{comp}"] = _time_steps(local_step, steps, warmup, pg.barrier)
        out[f"ddp_{overlap}_{comp}"] = _time_steps(step, steps, warmup, pg.barrier)
        for h in ddp._handles:
            h.remove()
    return out


def torch_rank(rank, world, name, steps, warmup, port):
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
    t = _time_steps(step, steps, warmup, dist.barrier)
    dist.destroy_process_group()
    return t


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--steps", type=int, default=20)
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
    hdr = f"{'model':<12} {'system':<30} {'step ms':>8} {'samples/s':>10} {'efficiency':>10} {'hidden':>7}"
    print(hdr)
    for name in args.models:
        b = BATCH[name]
        one = spawn_ranks(deepseek_rank, 1, timeout=900, env=env,
                          args=(name, args.steps, args.warmup, configs))[0]
        two = spawn_ranks(deepseek_rank, 2, timeout=1800, env=env,
                          args=(name, args.steps, args.warmup, configs))
        base = one["local"]
        lines = [("deepseek 1 rank", base, 1, None)]
        for overlap, comp in configs:
            key = f"{overlap}_{comp}"
            step = max(r[f"ddp_{key}"] for r in two)
            local = max(r[f"local_{key}"] for r in two)
            comm = max(r[f"comm_{comp}"] for r in two)
            hidden = 1 - max(step - local, 0.0) / comm if comm > 0 else None
            label = f"deepseek 2 ranks {'overlap' if overlap else 'no-overlap'} {comp or 'fp32'}"
            lines.append((label, step, 2, max(0.0, min(1.0, hidden)) if hidden is not None else None))
        if have_torch:
            t1 = spawn_ranks(torch_rank, 1, timeout=900, env=env, store=False,
                             args=(name, args.steps, args.warmup, _free_port()))[0]
            t2 = max(spawn_ranks(torch_rank, 2, timeout=900, env=env, store=False,
                                 args=(name, args.steps, args.warmup, _free_port())))
            lines.append(("torch 1 rank", t1, 1, None))
            lines.append(("torch DDP gloo 2 ranks", t2, 2, None))
        for label, step, world, hidden in lines:
            ref = (t1 if label.startswith("torch") else base) if have_torch else base
            eff = (world * b / step) / (world * b / ref) if world > 1 else 1.0
            row = {"model": name, "system": label, "step_ms": 1e3 * step,
                   "samples_per_s": world * b / step, "efficiency": eff, "hidden": hidden}
            rows.append(row)
            print(f"{name:<12} {label:<30} {1e3 * step:>8.1f} {world * b / step:>10.0f} {eff:>10.2f} "
                  f"{'-' if hidden is None else f'{hidden:.2f}':>7}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
