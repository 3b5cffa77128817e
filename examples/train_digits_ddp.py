"""Train the digits MLP data-parallel: DDP with fp16 gradient compression.

    deepseek-run --nproc 2 examples/train_digits_ddp.py [--epochs 20] [--seed 0]

Every worker holds the same model (DDP broadcasts rank 0's weights), reads its own
half of each global batch (DistributedSampler), and averages gradients in fp16 while
backward runs. The global batch (--batch-size, split across the workers), learning
rate and schedule are those of examples/train_digits.py, so the run reaches the same
test accuracy (~97-98%). Started as plain `python examples/train_digits_ddp.py` it is
a world of one. Only rank 0 prints; at the end every rank checks that its weights are
bit-identical to rank 0's.
"""
import argparse
import os
import sys
import time

import numpy as np

import deepseek
import deepseek.distributed as dist
import deepseek.nn.functional as F
from deepseek.data import DataLoader, DistributedSampler, TensorDataset
from deepseek.distributed import DistributedDataParallel
from deepseek.optim import AdamW
from deepseek.optim.lr_scheduler import CosineAnnealingLR

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import DATA, MLP, accuracy, load  # noqa: E402  (the same model and data)


def weights_match_rank0(model):
    """True on every rank when all ranks hold rank 0's weights bit for bit."""
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    ref = flat.copy()
    dist.broadcast(deepseek.from_numpy(ref), src=0)
    same = np.array([int(np.array_equal(flat.view(np.uint32), ref.view(np.uint32)))],
                    dtype=np.int32)
    dist.all_reduce(deepseek.from_numpy(same), op=dist.ReduceOp.MIN)
    return bool(same[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the digits MLP with DDP (deepseek-run)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32, help="global batch (all ranks)")
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--compression", choices=["fp16", "bf16", "none"], default="fp16")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args(argv)

    start = time.perf_counter()
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the "
                         f"world size {world}")
    log = print if rank == 0 else (lambda *a, **k: None)

    deepseek.manual_seed(args.seed)
    Xtr, ytr, Xte, yte = load(args.data)
    dataset = TensorDataset(deepseek.from_numpy(Xtr), deepseek.from_numpy(ytr))
    sampler = DistributedSampler(dataset, shuffle=True, seed=args.seed)
    train = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)
    model = MLP()
    ddp = DistributedDataParallel(model, compression=args.compression)
    opt = AdamW(ddp.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = CosineAnnealingLR(opt, T_max=args.epochs * len(train))
    log(f"digits: {len(Xtr)} train / {len(Xte)} test, {world} worker(s), "
        f"global batch {args.batch_size}, compression {args.compression}, {args.epochs} epochs")

    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        total, n = 0.0, 0
        for x, y in train:
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()  # returns with the averaged gradient on every rank
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
        log(f"epoch {epoch:3d}  loss {total / n:.4f} (rank 0's shard)  "
            f"test acc {accuracy(model, Xte, yte):.4f}  lr {sched.get_last_lr()[0]:.2e}",
            flush=True)
    acc = accuracy(model, Xte, yte)
    same = weights_match_rank0(model)
    log(f"weights identical on all {world} ranks: {same}")
    log(f"time: {time.perf_counter() - start:.2f}s")
    log(f"test accuracy: {acc:.4f}")
    dist.destroy_process_group()
    if not same:
        raise SystemExit("DDP replicas diverged: weights differ from rank 0's")
    return acc


if __name__ == "__main__":
    main()
