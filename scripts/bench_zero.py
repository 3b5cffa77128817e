"""ZeRO benchmark: per-rank memory and step time of DDP (stage 0) and ZeRO stages 1-3,
side by side, next to the ZeRO paper's formula and PyTorch FSDP (gloo) when installed.

    python scripts/bench_zero.py [--hid 512] [--layers 8] [--steps 10] [--json]

Memory: bytes per parameter of parameters + gradients + Adam state that each rank
holds (counted from its arrays, after a backward; stage 3 adds the peak of gathered
full parameters), at 2 and 4 ranks. Step time: median over ``--steps`` steps at 2 ranks
(forward + backward + AdamW step), on an MLP of ``--layers`` residual blocks, one FSDP
unit per block.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _rank_fn(rank, world, stage, hid, layers, steps, batch):
    import zero_cases as zc
    import deepseek as ds
    import deepseek.nn.functional as F
    zc._init()
    model = zc.build_model("mlp", hid=hid, layers=layers)
    runner, opt = zc.wrap(model, stage, "adamw")
    rng = np.random.default_rng(rank)
    x = ds.tensor(rng.standard_normal((batch, zc.IN)).astype(np.float32))
    y = ds.tensor(rng.integers(0, zc.OUT, batch))
    times = []
    for s in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(runner(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    mem = zc.memory(rank, world, stages=(stage,), hid=hid, layers=layers)[stage]
    return statistics.median(times[2:]), mem


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
    times = []
    for s in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fsdp(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    tdist.destroy_process_group()
    return statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hid", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from deepseek.testing.multiprocess import spawn_ranks
    rows = []
    for world in [int(w) for w in args.worlds.split(",")]:
        for stage in (0, 1, 2, 3):
            res = spawn_ranks(_rank_fn, world, timeout=600,
                              args=(stage, args.hid, args.layers, args.steps, args.batch))
            t = max(r[0] for r in res)
            m = res[0][1]
            rows.append({"world": world, "stage": stage, "step_ms": t * 1e3,
                         "bytes_per_param": m["measured"], "formula": m["formula"]})
    torch_ms = torch_error = None
    try:
        import torch  # noqa: F401
        port = 29500 + os.getpid() % 1000
        res = spawn_ranks(_torch_fsdp, 2, timeout=600, store=False,
                          args=(args.hid, args.layers, args.steps, args.batch, port))
        torch_ms = max(res) * 1e3
    except ImportError:
        torch_error = "torch not installed"
    except Exception as e:  # noqa: BLE001 - the reference failing is reported, not fatal
        torch_error = str(e).strip().splitlines()[-1][:200]
    if args.json:
        print(json.dumps({"rows": rows, "torch_fsdp_ms_2ranks": torch_ms,
                          "torch_error": torch_error}, indent=1))
        return
    base = {r["world"]: r["step_ms"] for r in rows if r["stage"] == 0}
    print(f"MLP {args.layers}x{args.hid}, AdamW, batch {args.batch}/rank")
    print(f"{'ranks':>5} {'stage':>5} {'B/param':>8} {'formula':>8} {'step ms':>8} {'x DDP':>6}")
    for r in rows:
        print(f"{r['world']:>5} {r['stage']:>5} {r['bytes_per_param']:>8.2f} "
              f"{r['formula']:>8.2f} {r['step_ms']:>8.2f} "
              f"{r['step_ms'] / base[r['world']]:>6.2f}")
    if torch_ms is not None:
        print(f"torch FSDP FULL_SHARD (gloo), 2 ranks: {torch_ms:.2f} ms/step")
    else:
        print(f"torch FSDP: not measured ({torch_error})")


if __name__ == "__main__":
    main()
