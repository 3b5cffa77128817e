"""Rank functions for tests/test_zero*.py (module-level so spawned ranks import them).

Every run trains ``steps`` steps on the same global batches (``_data``) and returns the
final *full* parameters, so a ZeRO run can be compared with DDP and with one process on
the whole batch. ``stage``: "single" (one process, no wrapper), 0 (DDP), 1
(DDP + ZeroRedundancyOptimizer), 2 (FSDP SHARD_GRAD_OP), 3 (FSDP FULL_SHARD).
"""
import contextlib

import numpy as np

GLOBAL_BATCH = 12
IN, HID, OUT = 7, 20, 5        # 7*20+20 = 160 etc: sizes that do not divide by 3 or 4
VOCAB, DIM, SEQ = 13, 10, 5


def build_model(kind="mlp", seed=0, hid=HID, layers=3):
    import deepseek as ds
    import deepseek.nn as nn
    import deepseek.nn.functional as F

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = nn.Linear(d, d)

        def forward(self, x):
            return self.fc(x).tanh() + x

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(IN, hid)
            self.blocks = nn.ModuleList([Block(hid) for _ in range(layers)])
            self.out = nn.Linear(hid, OUT)

        def forward(self, x):
            h = self.inp(x).tanh()
            for b in self.blocks:
                h = b(h)
            return self.out(h)

    class Attn(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.proj = nn.Linear(d, d)
            self.d = d

        def forward(self, x):
            h = self.norm(x)
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            a = F.softmax(q @ k.transpose(-1, -2) * (1.0 / self.d ** 0.5), dim=-1)
            return x + self.proj(a @ v)

    class TinyLM(nn.Module):
        """A transformer whose output layer is its embedding (tied weights)."""

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, DIM)
            self.blocks = nn.ModuleList([Attn(DIM) for _ in range(2)])
            self.norm = nn.LayerNorm(DIM)

        def forward(self, ids):
            h = self.emb(ids)
            for b in self.blocks:
                h = b(h)
            return F.linear(self.norm(h), self.emb.weight)

    ds.manual_seed(seed)
    return {"mlp": MLP, "lm": TinyLM}[kind]()


def _data(kind, step):
    rng = np.random.default_rng(100 + step)
    if kind == "mlp":
        x = rng.standard_normal((GLOBAL_BATCH, IN)).astype(np.float32)
        y = rng.integers(0, OUT, GLOBAL_BATCH)
    else:
        x = rng.integers(0, VOCAB, (GLOBAL_BATCH, SEQ))
        y = rng.integers(0, VOCAB, (GLOBAL_BATCH, SEQ))
    return x, y


def _loss(model, kind, x, y):
    import deepseek as ds
    import deepseek.nn.functional as F
    out = model(ds.tensor(x))
    if kind == "lm":
        return F.cross_entropy(out.reshape(-1, VOCAB), ds.tensor(y.reshape(-1)))
    return F.cross_entropy(out, ds.tensor(y))


def make_optimizer(params, opt):
    import deepseek as ds
    if opt == "adamw":
        return ds.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    return ds.optim.SGD(params, lr=0.1, momentum=0.9)


def _opt_class(opt):
    import deepseek as ds
    if opt == "adamw":
        return ds.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.01}
    return ds.optim.SGD, {"lr": 0.1, "momentum": 0.9}


def wrap(model, stage, opt, pg=None, wrap_blocks=True, **fsdp_kwargs):
    """(what runs the forward, the optimizer) for a ZeRO stage."""
    import deepseek.distributed as dist
    if stage in ("single", 0, 1):
        if stage == "single":
            runner = model
        else:
            runner = dist.DistributedDataParallel(model, process_group=pg)
        if stage == 1:
            cls, hp = _opt_class(opt)
            return runner, dist.ZeroRedundancyOptimizer(runner.parameters(), optimizer_class=cls,
                                                         process_group=pg, **hp)
        return runner, make_optimizer(runner.parameters(), opt)
    from deepseek.distributed.fsdp import ModuleWrapPolicy
    policy = None
    if wrap_blocks:
        blocks = {type(m) for name, m in model.named_modules() if name.startswith("blocks.")
                  and name.count(".") == 1}
        policy = ModuleWrapPolicy(blocks)
    fsdp = dist.FullyShardedDataParallel(
        model, sharding_strategy={2: "SHARD_GRAD_OP", 3: "FULL_SHARD"}[stage],
        auto_wrap_policy=policy, process_group=pg, **fsdp_kwargs)
    return fsdp, make_optimizer(fsdp.parameters(), opt)


def full_params(runner, stage):
    if stage in (2, 3):
        sd = runner.state_dict()
    else:
        model = runner.module if stage in (0, 1) else runner
        sd = model.state_dict()
    return {k: np.array(v.numpy(), copy=True) for k, v in sd.items()}


def _init():
    import deepseek.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group()


def train(rank, world, stage, kind="mlp", opt="adamw", steps=10, accum=1, clip=None,
          seed_offset=True, **fsdp_kwargs):
    """Train ``steps`` steps; returns the final full parameters (every rank)."""
    from deepseek.nn.utils import clip_grad_norm_
    if stage != "single":
        _init()
    model = build_model(kind, seed=rank if (seed_offset and stage != "single") else 0)
    runner, optimizer = wrap(model, stage, opt, **fsdp_kwargs)
    per = GLOBAL_BATCH // world
    norms = []
    for s in range(steps):
        x, y = _data(kind, s)
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        optimizer.zero_grad()
        m = per // accum
        for i in range(accum):
            sync = contextlib.nullcontext() if (i == accum - 1 or stage == "single") \
                else runner.no_sync()
            with sync:
                (_loss(runner, kind, xs[i * m:(i + 1) * m], ys[i * m:(i + 1) * m])
                 * (1.0 / accum)).backward()
        if clip is not None:
            if stage in (2, 3):
                norms.append(float(runner.clip_grad_norm_(clip)))
            else:
                norms.append(float(clip_grad_norm_(model.parameters(), clip)))
        optimizer.step()
    return full_params(runner, stage), norms


def train_many(rank, world, stage, configs):
    """``train`` for each config (a dict of its keyword arguments), in one job."""
    return [train(rank, world, stage, **cfg) for cfg in configs]


def _state_bytes(opt):
    from deepseek._tensor import Tensor
    inner = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer keeps its inner one
    total = 0
    for st in inner.state.values():
        for v in st.values():
            if isinstance(v, Tensor) and v._data.ndim:  # (the 0-d step counter: no)
                total += v._data.nbytes
    return total


def stage_kwargs(stage, min_unit_numel=0):
    """(the stage ``wrap`` takes, FSDP keyword arguments) for a benchmark stage: "3c"
    is stage 3 coalesced into groups of ``min_unit_numel``, "3a" stage 3 with async
    collectives and prefetching (``overlap_collectives=True``)."""
    if stage == "3c":
        return 3, {"min_unit_numel": min_unit_numel}
    if stage == "3a":
        return 3, {"overlap_collectives": True}
    return stage, {}


def memory(rank, world, stages=(0, 1, 2, 3), hid=64, layers=16, min_unit_numel=0):
    """Bytes per parameter this rank holds for each stage, after a backward (the
    optimizer has stepped once before, so its state exists), next to the formula.
    Stage "3c": stage 3 with its blocks coalesced (``min_unit_numel``); its formula
    counts the largest group's gathered parameters."""
    _init()
    out = {}
    for stage in stages:
        model = build_model("mlp", hid=hid, layers=layers)
        nparam = sum(p.numel() for p in model.parameters())
        unit_max = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
        wrap_stage, kw = stage_kwargs(stage, min_unit_numel)
        runner, opt = wrap(model, wrap_stage, "adamw", **kw)
        if stage == "3c":
            unit_max = max(sum(p.numel() for p in h.params)
                           for h in runner._all_handles() if h not in runner._handles)
        for s in range(2):   # the second step's gradients stay: their memory counts
            opt.zero_grad()
            _slice_backward(runner, rank, world, "mlp", s)
            if s == 0:
                opt.step()
        if stage in (0, 1):
            params = sum(f.buffer.nbytes for f in opt._flats) if stage == 1 else \
                sum(p._data.nbytes for p in model.parameters())
            grads = sum(b.flat.nbytes for b in runner.buckets)
            gathered = 0
        else:
            st = runner.memory_stats()
            params, grads = st["params"], st["grads"]
            gathered = st["peak_full_params"] if stage in (3, "3c", "3a") else 0
        state = _state_bytes(opt)
        n = world
        formula = {0: 16, 1: 4 + 4 + 8 / n, 2: 4 + 12 / n, 3: 16 / n, "3c": 16 / n,
                   "3a": 16 / n}[stage]
        if stage in (3, "3c", "3a"):
            formula += 4 * unit_max / nparam
        out[stage] = {"measured": (params + grads + state + gathered) / nparam,
                      "formula": formula, "params": params / nparam, "grads": grads / nparam,
                      "state": state / nparam, "gathered": gathered / nparam}
    return out


def zero1_state_roundtrip(rank, world):
    """consolidate_state_dict on rank 0 gives the same state as a plain AdamW on DDP;
    load_state_dict of it into a fresh ZeRO optimizer continues identically."""
    _init()
    res = {}
    for stage in (0, 1):
        model = build_model("mlp")
        runner, opt = wrap(model, stage, "adamw")
        _steps(runner, opt, rank, world, "mlp", 3)
        if stage == 1:
            opt.consolidate_state_dict(to=0)
            if rank != 0:
                try:
                    opt.state_dict()
                    res["nonroot_raises"] = False
                except RuntimeError:
                    res["nonroot_raises"] = True
                sd = None
            else:
                sd = opt.state_dict()
        else:
            sd = opt.state_dict()
        res[stage] = None if sd is None else {
            str(k): {n: np.array(v.numpy()) for n, v in st.items()}
            for k, st in sd["state"].items()}
    # load rank 0's consolidated full state (shared through a file) into a new optimizer
    return res


def ckpt_save(rank, world, stage, path, steps=2, **fsdp_kwargs):
    """Train ``steps`` steps with ``stage`` and save a sharded checkpoint; returns the
    full parameters."""
    import deepseek.distributed.checkpoint as dcp
    _init()
    model = build_model("lm")
    runner, opt = wrap(model, stage, "sgd", **fsdp_kwargs)
    _steps(runner, opt, rank, world, "lm", steps)
    dcp.save(dcp.get_state_dict(runner), path)
    return full_params(runner, stage)


def ckpt_load(rank, world, stage, path, **fsdp_kwargs):
    """Build a fresh (differently initialised) model under ``stage``, load the
    checkpoint, return the full parameters."""
    import deepseek.distributed.checkpoint as dcp
    if stage != "single":
        _init()
    model = build_model("lm", seed=123)
    if stage == "single":
        runner = model
    else:
        runner, _ = wrap(model, stage, "sgd", **fsdp_kwargs)
    dcp.load(dcp.get_state_dict(runner), path)
    return full_params(runner, stage if stage != "single" else "single")


def trainer_fit(rank, world, strategy, precision="32"):
    """Trainer(strategy=..., precision=...) for two epochs accumulating 2 micro-batches
    (the model of tests/scripts/trainer_model.py); returns the unwrapped model's
    parameters."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
    import trainer_model as tm
    import deepseek
    if strategy.endswith("-offload"):     # "zero3-offload": ZeRO-Offload of the optimizer
        from deepseek.distributed import ZeROStrategy
        strategy = ZeROStrategy(stage=int(strategy[4]), offload_optimizer=True)
    t = deepseek.Trainer(accelerator="cpu", strategy=strategy, seed=0, max_epochs=2,
                         accumulate_grad_batches=2, gradient_clip_val=1.0,
                         enable_progress_bar=False, precision=precision)
    model = tm.make_model(optimizer="sgd", lr=0.1)
    t.fit(model, tm.make_loader(batch_size=8))
    return tm.params(model) if strategy in ("zero1", "ddp") else \
        {k: np.array(v.numpy()) for k, v in t.strategy.model_state_dict().items()}


def _slice_backward(runner, rank, world, kind, s):
    """Backward of step ``s``'s loss on this rank's slice of the global batch."""
    per = GLOBAL_BATCH // world
    x, y = _data(kind, s)
    _loss(runner, kind, x[rank * per:(rank + 1) * per],
          y[rank * per:(rank + 1) * per]).backward()


def _steps(runner, optimizer, rank, world, kind, steps, start=0):
    """Optimizer steps ``start .. start + steps - 1``, each on this rank's slice."""
    for s in range(start, start + steps):
        optimizer.zero_grad()
        _slice_backward(runner, rank, world, kind, s)
        optimizer.step()


def optim_ckpt(rank, world, stage, path, mode, kind="mlp", opt="adamw", first=3, more=3):
    """``mode`` "save": train ``first`` steps under ``stage`` and save the model and the
    (sharded) optimizer state in one checkpoint. "resume": build a differently
    initialised model under ``stage`` (any world size), load both, train ``more``
    steps. Returns the full parameters (and, for "resume", the lr read back)."""
    import deepseek.distributed.checkpoint as dcp
    _init()
    model = build_model(kind, seed=0 if mode == "save" else 77 + rank)
    runner, optimizer = wrap(model, stage, opt)
    if mode == "save":
        _steps(runner, optimizer, rank, world, kind, first)
        optimizer.param_groups[0]["lr"] *= 0.5   # an option the checkpoint must carry
        osd, extra = dcp.get_optimizer_state_dict(runner, optimizer)
        dcp.save(dict(dcp.get_state_dict(runner), **osd), path, extra=extra)
        return full_params(runner, stage), None
    dcp.load(dcp.get_state_dict(runner), path)
    dcp.load_optimizer_state_dict(runner, optimizer, path)
    lr = optimizer.param_groups[0]["lr"]
    _steps(runner, optimizer, rank, world, kind, more, start=first)
    return full_params(runner, stage), lr


def optim_ckpt_reference(kind="mlp", opt="adamw", first=3, more=3):
    """One process, no checkpoint: ``first`` steps, the lr halved, ``more`` steps."""
    model = build_model(kind, seed=0)
    optimizer = make_optimizer(model.parameters(), opt)
    _steps(model, optimizer, 0, 1, kind, first)
    optimizer.param_groups[0]["lr"] *= 0.5
    _steps(model, optimizer, 0, 1, kind, more, start=first)
    return full_params(model, "single")


def trainer_resume(rank, world, strategy, ckpt_dir, phase):
    """Trainer(strategy=...) with a checkpoint at every epoch end: phase "full" fits 3
    epochs straight; "first" fits 1 epoch (writing last.ckpt); "resume" fits to 3
    epochs from it. Adam, so the optimizer state matters. Returns the model's
    parameters and the files the checkpoint left."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
    import trainer_model as tm
    import deepseek
    t = deepseek.Trainer(accelerator="cpu", strategy=strategy, seed=0,
                         max_epochs=1 if phase == "first" else 3,
                         enable_progress_bar=False,
                         checkpoint_dir=None if phase == "full" else ckpt_dir)
    model = tm.make_model(optimizer="adam", lr=0.05)
    t.fit(model, tm.make_loader(batch_size=8),
          ckpt_path="last" if phase == "resume" else None)
    params = {k: np.array(v.numpy()) for k, v in t.strategy.model_state_dict().items()}
    files = sorted(os.listdir(ckpt_dir)) if phase != "full" else []
    return params, files


def train_amp(rank, world, stage, dtype="float16", steps=6, kind="mlp", param_dtype=False,
              reduce_dtype=None):
    """``steps`` steps under ``deepseek.amp.autocast(dtype)`` with a loss-scaling
    ShardedGradScaler (fp16; bf16 runs unscaled), fp32 master parameters sharded as
    ``stage`` shards them (``param_dtype``: gathered in ``dtype``, FSDP's
    ``MixedPrecision(param_dtype=dtype, reduce_dtype=reduce_dtype)``). Returns the full
    parameters and the scale after each step."""
    import deepseek as ds
    from deepseek.amp import autocast
    from deepseek.distributed.fsdp import MixedPrecision, ShardedGradScaler
    _init()
    model = build_model(kind, seed=rank)
    kw = {"mixed_precision": MixedPrecision(param_dtype=getattr(ds, dtype),
                                            reduce_dtype=reduce_dtype)} if param_dtype else {}
    runner, optimizer = wrap(model, stage, "adamw", **kw)
    scaler = ShardedGradScaler(init_scale=2.0 ** 12, enabled=dtype == "float16")
    per = GLOBAL_BATCH // world
    scales = []
    for s in range(steps):
        x, y = _data(kind, s)
        optimizer.zero_grad()
        with autocast("cpu", dtype=getattr(ds, dtype)):
            loss = _loss(runner, kind, x[rank * per:(rank + 1) * per],
                         y[rank * per:(rank + 1) * per])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return full_params(runner, stage), scales


def amp_inf_on_one_rank(rank, world, stage, sharded=True, poke_step=1, steps=3):
    """fp16 AMP steps where, at ``poke_step``, rank 0 alone finds an inf in the
    gradients it holds (written into its first gradient after backward: under ZeRO-2/3
    its own shard). Returns, per step, (whether this rank's parameters changed, the
    scale after the step). ``sharded=False`` uses a plain GradScaler, whose ranks
    decide alone (only used with stage 2/3 and ``steps=poke_step + 1``: the
    ranks' next collectives no longer line up -- under ZeRO-1 already the step's
    parameter all-gather)."""
    import deepseek as ds
    from deepseek.amp import GradScaler, autocast
    from deepseek.distributed.fsdp import ShardedGradScaler
    _init()
    model = build_model("mlp", seed=rank)
    runner, optimizer = wrap(model, stage, "sgd")
    scaler = (ShardedGradScaler if sharded else GradScaler)(init_scale=2.0 ** 10)
    held = [p for g in optimizer.param_groups for p in g["params"]]
    per = GLOBAL_BATCH // world
    out = []
    for s in range(steps):
        x, y = _data("mlp", s)
        optimizer.zero_grad()
        with autocast("cpu", dtype=ds.float16):
            loss = _loss(runner, "mlp", x[rank * per:(rank + 1) * per],
                         y[rank * per:(rank + 1) * per])
        scaler.scale(loss).backward()
        if s == poke_step and rank == 0:
            held[0].grad._data.reshape(-1)[0] = np.inf
        # what this rank holds (its shards): comparing the full parameters would take
        # collectives, which ranks that disagree no longer line up for
        before = [np.array(p._data, copy=True) for p in held]
        scaler.step(optimizer)
        scaler.update()
        changed = any(not np.array_equal(b, p._data) for b, p in zip(before, held))
        out.append((changed, scaler.get_scale()))
    return out


def subgroup_train(rank, world, stage, steps=4):
    """ZeRO over a subgroup: ranks {0, 1} and {2, 3} of 4 are two data-parallel groups
    (the dp dimension of a 2x2 mesh), each training its own copy on its own data.
    Returns (group index, full parameters)."""
    import deepseek.distributed as dist
    _init()
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    gi = rank // 2
    pg = groups[gi]
    local = rank % 2
    model = build_model("mlp", seed=rank)
    runner, optimizer = wrap(model, stage, "adamw", pg=pg)
    per = GLOBAL_BATCH // 2
    for s in range(steps):
        x, y = _data("mlp", s + 50 * gi)   # each group sees other data
        optimizer.zero_grad()
        _loss(runner, "mlp", x[local * per:(local + 1) * per],
              y[local * per:(local + 1) * per]).backward()
        optimizer.step()
    return gi, full_params(runner, stage)


def subgroup_reference(group, steps=4):
    """One process on the whole batch of ``group``'s data (rank 2*group's seed is
    what the group broadcasts)."""
    model = build_model("mlp", seed=2 * group)
    optimizer = make_optimizer(model.parameters(), "adamw")
    for s in range(steps):
        x, y = _data("mlp", s + 50 * group)
        optimizer.zero_grad()
        _loss(model, "mlp", x, y).backward()
        optimizer.step()
    return full_params(model, "single")


def train_reduce_dtype(rank, world, stage, reduce_dtype, steps=6):
    """``train`` (MLP, SGD+momentum) with FSDP's
    ``MixedPrecision(reduce_dtype=reduce_dtype)``: gradients on the wire in bf16/fp16."""
    from deepseek.distributed.fsdp import MixedPrecision
    return train(rank, world, stage, opt="sgd", steps=steps,
                 mixed_precision=MixedPrecision(reduce_dtype=reduce_dtype))


def coalesce_structure(rank, world, min_unit_numel, steps=2):
    """ZeRO-3 with ``min_unit_numel`` on a 4-block MLP: ([(parameters, units sharing
    it)] per handle of the inner units, the root's handle's full bytes, the largest
    inner handle's full bytes, the peak of gathered full parameters over ``steps``
    steps, the number of flat parameters the optimizer sees)."""
    _init()
    model = build_model("mlp", hid=HID, layers=4)
    runner, opt = wrap(model, 3, "adamw", min_unit_numel=min_unit_numel)
    for s in range(steps):
        opt.zero_grad()
        _slice_backward(runner, rank, world, "mlp", s)
        opt.step()
    inner = [u for u in runner._units() if u is not runner]
    handles = [h for h in runner._all_handles() if h not in runner._handles]
    groups = [(sum(p.numel() for p in h.params), sum(h in u._handles for u in inner))
              for h in handles]
    return (groups, sum(h.full.nbytes for h in runner._handles),
            max(h.full.nbytes for h in handles), runner.memory_stats()["peak_full_params"],
            len(list(runner.parameters())))


def offload_layout(rank, world, stage):
    """Under CPUOffload: (every flat parameter a host array apart from the gathered
    full parameters, every shard gradient a host array, the optimizer's state arrays
    count) after one step."""
    from deepseek.backend import device_of
    from deepseek.distributed.fsdp import CPUOffload
    _init()
    runner, opt = wrap(build_model("mlp"), stage, "adamw", cpu_offload=CPUOffload())
    _slice_backward(runner, rank, world, "mlp", 0)
    opt.step()
    hs = runner._all_handles()
    apart = all(not np.shares_memory(fp._data, h.full) and device_of(fp._data).type == "cpu"
                for h in hs for fp in h.flat_params)
    host_grads = all(device_of(fp._grad._data).type == "cpu" for h in hs
                     for fp in h.flat_params)
    return apart, host_grads, _state_bytes(opt)


def gathered_peaks(rank, world, hid=64, layers=4):
    """Stage 3's peak of gathered full parameters (bytes) with inline collectives and
    with async ones (prefetching), next to the largest unit's and the root's bytes."""
    _init()
    out = {}
    for overlap in (False, True):
        model = build_model("mlp", hid=hid, layers=layers)
        unit = max(sum(p._data.nbytes for p in b.parameters()) for b in model.blocks)
        root = sum(p._data.nbytes for n, p in model.named_parameters()
                   if not n.startswith("blocks."))
        runner, opt = wrap(model, 3, "adamw", overlap_collectives=overlap,
                           forward_prefetch=overlap)
        for s in range(2):
            opt.zero_grad()
            _slice_backward(runner, rank, world, "mlp", s)
            opt.step()
        out[overlap] = runner.memory_stats()["peak_full_params"]
    return out, unit, root
