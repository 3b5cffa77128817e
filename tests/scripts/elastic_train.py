"""A deterministic training job for the elastic tests and scripts/bench_elastic.py.

``elastic_train.py OUT_DIR STEPS [inprocess|checkpoint] [ddp|zero]``: an MLP on a
fixed data set (seeded), a global batch of 6 samples per step split over the ranks
(6 divides by 1, 2 and 3, so the mean gradient is the same whatever the world size),
SGD with momentum.

* ``inprocess``: under ``@deepseek.elastic.run`` with ``elastic.State`` (model,
  optimizer, ElasticSampler, step), a commit after every step; with ``zero`` (DDP +
  ZeroRedundancyOptimizer, ZeRO-1) or ``zero2`` (FSDP SHARD_GRAD_OP) every generation
  builds a fresh model and optimizer on its group and binds them
  (``State.bind(train=Sharded(...))``): the commit's shards, resharded, overwrite them;
* ``checkpoint``: restart-the-world; a sharded checkpoint (model + optimizer, ZeRO-1
  with ``zero``, FSDP SHARD_GRAD_OP shards with ``zero2``) every 2 steps in OUT_DIR/ckpt through
  :func:`deepseek.distributed.elastic.resume`/``save``: a restart into another world
  size reshards it.

Every rank appends ``{"pid", "rank", "world", "step", "gen", "t", "run"}`` to
OUT_DIR/progress.jsonl after each step and writes its pid to OUT_DIR/<pid>.pid (the
tests' leak check); rank 0 writes the final parameters to OUT_DIR/final.npz and the
losses to OUT_DIR/losses.json. ``STEP_SLEEP`` (env, seconds) slows every step down;
``GLOBAL_BATCH`` (env, default 6; 12 divides by 4 too) is the samples per step.
``on_reset`` records ``{"event": "on_reset", "world"}`` (the user's hook: the batch per
rank is recomputed from the world size at every step).
"""
import json
import os
import sys
import time

import numpy as np

import deepseek
from deepseek import collectives as C
from deepseek import elastic, nn
from deepseek.distributed import DistributedDataParallel as DDP

out, steps = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "inprocess"
variant = sys.argv[4] if len(sys.argv) > 4 else "ddp"
GLOBAL_BATCH = int(os.environ.get("GLOBAL_BATCH", "6"))
pause = float(os.environ.get("STEP_SLEEP", "0"))
with open(os.path.join(out, f"{os.getpid()}.pid"), "w") as f:
    f.write(str(os.getpid()))

rng = np.random.default_rng(0)
X = rng.standard_normal((60, 8)).astype(np.float32)
Y = (X @ rng.standard_normal((8, 1)).astype(np.float32)).astype(np.float32)
deepseek.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
opt = deepseek.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def log(rec):
    rec["run"] = os.environ.get("DEEPSEEK_RUN_ID", "")
    with open(os.path.join(out, "progress.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def one_step(ddp, optimizer, idx):
    optimizer.zero_grad()
    xb, yb = deepseek.tensor(X[idx]), deepseek.tensor(Y[idx])
    loss = ((ddp(xb) - yb) ** 2).mean()
    loss.backward()
    optimizer.step()
    return float(loss.item())


def finish(losses, runner=None):
    sd = (runner or model).state_dict()     # FSDP: the full one (collective)
    if C.get_rank() == 0:
        np.savez(os.path.join(out, "final.npz"),
                 **{k: v.numpy() for k, v in sd.items()})
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump(losses, f)


def build_sharded(pg):
    """A fresh model and optimizer on ``pg`` (``bind`` loads the commit into them)."""
    from deepseek.distributed.fsdp import FullyShardedDataParallel as FSDP
    from deepseek.distributed.zero import ZeroRedundancyOptimizer
    deepseek.manual_seed(1)          # not the first model's: the commit must win
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    if variant == "zero2":
        r = FSDP(m, sharding_strategy="SHARD_GRAD_OP", process_group=pg)
        return r, deepseek.optim.SGD(r.parameters(), lr=0.05, momentum=0.9)
    r = DDP(m, process_group=pg)
    return r, ZeroRedundancyOptimizer(r.parameters(), deepseek.optim.SGD, lr=0.05,
                                      momentum=0.9)


if mode == "inprocess":
    sharded = variant in ("zero", "zero2")
    sampler = elastic.ElasticSampler(len(X), 1, seed=1)
    if sharded:
        # generation 0 starts from the seed-0 model every variant starts from
        from deepseek.distributed.elastic import Sharded
        state = elastic.State(sampler=sampler, step=0, losses=[])
    else:
        state = elastic.State(model=model, optimizer=opt, sampler=sampler, step=0,
                              losses=[])
    current = {}
    state.register_reset_callbacks([lambda: log({
        "event": "on_reset", "pid": os.getpid(), "world": C.get_world_size(),
        "gen": elastic.generation()})])

    @elastic.run
    def train(state):
        pg = C.get_default_group()
        if sharded:
            ddp, optimizer = build_sharded(pg)
            if elastic.generation() == 0 and not state.step:
                (ddp.module if isinstance(ddp, DDP) else ddp).load_state_dict(
                    model.state_dict())
            state.bind(train=Sharded(ddp, optimizer))
            current["runner"] = ddp
        else:
            ddp, optimizer = DDP(model), opt
        try:
            while state.step < steps:
                per = GLOBAL_BATCH // pg.size
                sampler.batch_size = per
                pos = (sampler.epoch, sampler.processed)
                idx = sampler.next_batch(pg.rank, pg.size)
                loss = one_step(ddp, optimizer, idx)
                if pause:
                    time.sleep(pause)
                state.step += 1
                state.losses = state.losses + [loss]
                state.commit()
                log({"pid": os.getpid(), "rank": pg.rank, "world": pg.size,
                     "step": state.step, "gen": elastic.generation(), "t": time.time(),
                     "idx": idx, "pos": pos})
        finally:
            if hasattr(ddp, "remove_hooks"):
                ddp.remove_hooks()

    train(state)
    finish(state.losses, current.get("runner"))
    for e in elastic.inprocess.events:
        log(dict(e, pid=os.getpid(), rank=C.get_rank(), event="reset"))
    C.destroy_process_group()
else:
    from deepseek.distributed import elastic as delastic
    from deepseek.distributed.zero import ZeroRedundancyOptimizer
    C.init_process_group()
    pg = C.get_default_group()
    ddp = DDP(model)
    optimizer = opt
    if variant == "zero":
        optimizer = ZeroRedundancyOptimizer(model.parameters(), deepseek.optim.SGD,
                                            lr=0.05, momentum=0.9)
    elif variant == "zero2":
        from deepseek.distributed.fsdp import FullyShardedDataParallel as FSDP
        ddp.remove_hooks()
        ddp = FSDP(model, sharding_strategy="SHARD_GRAD_OP")
        optimizer = deepseek.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    ckpt = os.path.join(out, "ckpt")
    extra = delastic.resume(ckpt, model, optimizer, model=ddp)
    step = int(extra.get("step", 0))
    losses = list(extra.get("losses", []))
    per = GLOBAL_BATCH // pg.size
    order = np.random.default_rng(1).permutation(len(X))
    while step < steps:
        g0 = (step * GLOBAL_BATCH) % (len(X) - len(X) % GLOBAL_BATCH)
        idx = [int(i) for i in order[g0 + pg.rank * per:g0 + (pg.rank + 1) * per]]
        losses.append(one_step(ddp, optimizer, idx))
        if pause:
            time.sleep(pause)
        step += 1
        log({"pid": os.getpid(), "rank": pg.rank, "world": pg.size, "step": step,
             "gen": int(os.environ.get("DEEPSEEK_RESTART_COUNT", "0")), "t": time.time()})
        if step % 2 == 0:
            delastic.save(ckpt, model, optimizer, model=ddp,
                          extra={"step": step, "losses": losses})
    finish(losses, ddp if variant == "zero2" else None)
    C.destroy_process_group()
