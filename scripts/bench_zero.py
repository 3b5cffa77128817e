"""ZeRO benchmark: per-rank memory and step time of DDP (stage 0) and ZeRO stages 1-3,
side by side, next to the ZeRO paper's formula and PyTorch FSDP (gloo) when installed.

    python scripts/bench_zero.py [--hid 512] [--layers 8] [--steps 10] [--json]
    python scripts/bench_zero.py --cap-mb 40     # the memory-cap demo (4 ranks)

Memory: bytes per parameter of parameters + gradients + Adam state that each rank
holds (counted from its arrays, after a backward; stage 3 adds the peak of gathered
full parameters), at 2 and 4 ranks. Step time: on an MLP of ``--layers`` residual
blocks (one FSDP unit per block), forward + backward + AdamW step; every stage is
built in the same job and the stages take their steps in turn (DDP, 1, 2, 3, DDP,
...), so that on a loaded machine they see the same load; the medians of the CPU
time (``time.process_time``: every thread of the rank) and of the wall time per
step, the slowest rank's. Every rank -- and torch -- runs its BLAS on one thread
(``OPENBLAS_NUM_THREADS=1``, ``torch.set_num_threads(1)``): with more, the ranks'
BLAS threads fight over the cores and a step's time measures that fight.

Stage "3c" is stage 3 with ``FullyShardedDataParallel(min_unit_numel=...)``
(``--min-unit-numel``, default 2**20: 4 blocks of the default model per group): the
blocks' units coalesced into groups that are gathered and reduce-scattered together
(fewer, larger collectives; the gathered peak is a group, not one block).
Stage "3a" is stage 3 with ``overlap_collectives=True``: async collectives on the
group's worker thread with the prefetches, where the default on the shared-memory
transport runs them inline (see docs/zero.md).

Memory-cap demo (``--cap-mb``): a model whose fp32 Adam training state (16 bytes per
parameter) exceeds the per-rank budget trains on 4 ranks with ZeRO-3 (16/4 bytes
per parameter + one unit gathered) and fails with DDP. The budget is checked on the
bytes each rank holds (the accounting above, after every backward and step): a hard
``RLIMIT_AS`` would also count address space that holds no memory (ZeRO-3's released
gathered buffers, the symmetric segments every rank maps).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


STAGES = (0, 1, 2, 3, "3c", "3a")
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rank_fn(rank, world, stages, hid, layers, steps, batch, min_unit_numel):
    """Every stage in one job, stepping in turn; returns {stage: (cpu s, wall s, memory)}.
    Stage "3c": stage 3 with its blocks coalesced into groups of ``min_unit_numel``."""
    import zero_cases as zc
    import deepseek as ds
    import deepseek.nn.functional as F
    zc._init()
    runs = {}
    for st in stages:
        stage, kw = zc.stage_kwargs(st, min_unit_numel)
        runs[st] = zc.wrap(zc.build_model("mlp", hid=hid, layers=layers), stage, "adamw", **kw)
    rng = np.random.default_rng(rank)
    x = ds.tensor(rng.standard_normal((batch, zc.IN)).astype(np.float32))
    y = ds.tensor(rng.integers(0, zc.OUT, batch))
    cpu = {st: [] for st in stages}
    wall = {st: [] for st in stages}
    for s in range(steps + 2):
        for st in stages:
            runner, opt = runs[st]
            c0, t0 = time.process_time(), time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(runner(x), y).backward()
            opt.step()
            if s >= 2:   # (the first steps allocate the state and the buffers)
                cpu[st].append(time.process_time() - c0)
                wall[st].append(time.perf_counter() - t0)
    del runs
    mem = zc.memory(rank, world, stages=stages, hid=hid, layers=layers,
                    min_unit_numel=min_unit_numel)
    return {st: (statistics.median(cpu[st]), statistics.median(wall[st]), mem[st])
            for st in stages}


def _cap_rank(rank, world, stage, hid, layers, cap_bytes, steps, batch):
    """Train under a per-rank budget of ``cap_bytes`` held (params + grads + optimizer
    state + gathered full parameters); returns ("trained", peak, losses) or
    ("over budget", peak, message)."""
    import zero_cases as zc
    import deepseek as ds
    import deepseek.nn.functional as F
    zc._init()
    model = zc.build_model("mlp", hid=hid, layers=layers)
    runner, opt = zc.wrap(model, stage, "adamw")
    for g in opt.param_groups:
        g["lr"] = 1e-4   # (the tests' 1e-2 is too much for 8 blocks of 512: it diverges)
    rng = np.random.default_rng(rank)
    x = ds.tensor(rng.standard_normal((batch, zc.IN)).astype(np.float32))
    y = ds.tensor(rng.integers(0, zc.OUT, batch))
    peak, losses = 0, []

    def held():
        if stage == 0:
            params = sum(p._data.nbytes for p in model.parameters())
            grads = sum(b.flat.nbytes for b in runner.buckets)
            gathered = 0
        else:
            st = runner.memory_stats()
            params, grads, gathered = st["params"], st["grads"], st["peak_full_params"]
        return params + grads + gathered + zc._state_bytes(opt)

    try:
        for s in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(runner(x), y)
            loss.backward()
            opt.step()
            peak = max(peak, held())
            losses.append(float(loss))
            if peak > cap_bytes:
                raise MemoryError(f"rank {rank}: {peak / 2**20:.1f} MiB held, over the "
                                  f"{cap_bytes / 2**20:.1f} MiB budget (step {s})")
    except MemoryError as e:
        return "over budget", peak, str(e)
    return "trained", peak, losses


def cap_demo(cap_mb, hid, layers, steps=6, batch=16, world=4):
    """The memory-cap demo: (stage, outcome, peak MiB, detail) for DDP and ZeRO-3."""
    from deepseek.testing.multiprocess import spawn_ranks
    out = []
    for stage in (0, 3):
        res = spawn_ranks(_cap_rank, world, timeout=600, env=ONE_THREAD,
                          args=(stage, hid, layers, int(cap_mb * 2**20), steps, batch))
        kinds = {r[0] for r in res}
        peak = max(r[1] for r in res) / 2**20
        out.append((stage, "trained" if kinds == {"trained"} else "over budget", peak,
                    res[0][2]))
    return out


def _torch_fsdp(rank, world, hid, layers, steps, batch, port):
    import torch
    import torch.distributed as tdist
    from torch.distributed.fsdp import FullyShardedDataParallel as TFSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(hid, hid)

        def forward(self, x):
            return torch.tanh(self.fc(x)) + x

    model = torch.nn.Sequential(torch.nn.Linear(7, hid), *[Block() for _ in range(layers)],
                                torch.nn.Linear(hid, 5))
    fsdp = TFSDP(model, auto_wrap_policy=ModuleWrapPolicy({Block}),
                 device_id=torch.device("cpu"))
    opt = torch.optim.AdamW(fsdp.parameters(), lr=1e-2)
    x, y = torch.randn(batch, 7), torch.randint(0, 5, (batch,))
    cpu, wall = [], []
    for s in range(steps + 2):
        c0, t0 = time.process_time(), time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fsdp(x), y).backward()
        opt.step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    tdist.destroy_process_group()
    return statistics.median(cpu[2:]), statistics.median(wall[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hid", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--min-unit-numel", type=int, default=1 << 20,
                    help="stage '3c': FSDP(min_unit_numel=) coalescing the blocks")
    ap.add_argument("--cap-mb", type=float, default=None,
                    help="run the memory-cap demo with this per-rank budget instead")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from deepseek.testing.multiprocess import spawn_ranks
    if args.cap_mb is not None:
        rows = cap_demo(args.cap_mb, args.hid, args.layers)
        nparam = 7 * args.hid + args.hid + args.layers * (args.hid ** 2 + args.hid) + \
            args.hid * 5 + 5
        print(f"MLP {args.layers}x{args.hid} ({nparam / 1e6:.2f} M params, fp32 Adam "
              f"training state {16 * nparam / 2**20:.1f} MiB at 16 B/param), budget "
              f"{args.cap_mb:g} MiB per rank, 4 ranks")
        for stage, outcome, peak, detail in rows:
            name = "DDP" if stage == 0 else f"ZeRO-{stage}"
            extra = f"loss {detail[0]:.4f} -> {detail[-1]:.4f}" if outcome == "trained" \
                else detail
            print(f"{name:>7}: {outcome:11s} peak held {peak:7.1f} MiB  {extra}")
        return
    rows = []
    for world in [int(w) for w in args.worlds.split(",")]:
        res = spawn_ranks(_rank_fn, world, timeout=900, env=ONE_THREAD,
                          args=(STAGES, args.hid, args.layers, args.steps,
                                args.batch, args.min_unit_numel))
        for stage in STAGES:
            m = res[0][stage][2]
            rows.append({"world": world, "stage": stage,
                         "cpu_ms": max(r[stage][0] for r in res) * 1e3,
                         "step_ms": max(r[stage][1] for r in res) * 1e3,
                         "bytes_per_param": m["measured"], "formula": m["formula"]})
    torch_ms = torch_cpu_ms = torch_error = None
    try:
        import torch  # noqa: F401
        port = 29500 + os.getpid() % 1000
        res = spawn_ranks(_torch_fsdp, 2, timeout=600, store=False, env=ONE_THREAD,
                          args=(args.hid, args.layers, args.steps, args.batch, port))
        torch_cpu_ms = max(r[0] for r in res) * 1e3
        torch_ms = max(r[1] for r in res) * 1e3
    except ImportError:
        torch_error = "torch not installed"
    except Exception as e:  # noqa: BLE001 - the reference failing is reported, not fatal
        torch_error = str(e).strip().splitlines()[-1][:200]
    if args.json:
        print(json.dumps({"rows": rows, "torch_fsdp_ms_2ranks": torch_ms,
                          "torch_fsdp_cpu_ms_2ranks": torch_cpu_ms,
                          "torch_error": torch_error}, indent=1))
        return
    base = {r["world"]: r for r in rows if r["stage"] == 0}
    print(f"MLP {args.layers}x{args.hid}, AdamW, batch {args.batch}/rank")
    print(f"{'ranks':>5} {'stage':>5} {'B/param':>8} {'formula':>8} {'cpu ms':>8} "
          f"{'x DDP':>6} {'wall ms':>8} {'x DDP':>6}")
    for r in rows:
        b = base[r["world"]]
        print(f"{r['world']:>5} {r['stage']:>5} {r['bytes_per_param']:>8.2f} "
              f"{r['formula']:>8.2f} {r['cpu_ms']:>8.2f} {r['cpu_ms'] / b['cpu_ms']:>6.2f} "
              f"{r['step_ms']:>8.2f} {r['step_ms'] / b['step_ms']:>6.2f}")
    if torch_ms is not None:
        print(f"torch FSDP FULL_SHARD (gloo), 2 ranks: cpu {torch_cpu_ms:.2f} ms, "
              f"wall {torch_ms:.2f} ms/step")
    else:
        print(f"torch FSDP: not measured ({torch_error})")


if __name__ == "__main__":
    main()
