"""Rank functions for test_pipeline*.py and test_tensor_parallel.py: the GPT of
examples/train_gpt_3d.py trained on a (dp, pp, tp) layout, and small broken
pipelines."""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

STEPS = 5
BATCH = 12
OPT = dict(optimizer="sgd", lr=0.3)

# (schedule, n_microbatches, virtual stages per rank, split points) per pipeline size:
# uneven splits, n_microbatches not a multiple of the stages for GPipe/1F1B, and the
# interleaved schedule with 2 stages per rank (6 modules: Embed, 4 blocks, Head)
RUNS = {
    1: [("gpipe", 1, 1, []), ("1f1b", 2, 1, [])],
    2: [("gpipe", 3, 1, [2]), ("1f1b", 3, 1, [2]), ("interleaved", 6, 2, [1, 3, 4])],
    3: [("gpipe", 4, 1, [1, 4]), ("1f1b", 4, 1, [1, 4]),
        ("interleaved", 6, 2, [1, 2, 3, 4, 5])],
}


def gpt_runs(rank, world, dp, pp, tp):
    """Every schedule of RUNS[pp] on this layout, one after another."""
    import train_gpt_3d as g

    out = {}
    for sched, m, v, points in RUNS[pp]:
        out[sched] = g.train(dp, pp, tp, sched, steps=STEPS, n_microbatches=m, virtual=v,
                             split_points=points, batch=BATCH, **OPT)
    return out


def reference(rank, world):
    """One process, the full batch, no microbatches."""
    import train_gpt_3d as g

    return g.train(1, 1, 1, "gpipe", steps=STEPS, n_microbatches=1, batch=BATCH, **OPT)


def assemble(results):
    """Full parameters from the ranks' shards (dp replica 0; tp shards in order)."""
    full = {}
    for res in results:
        if res["coord"]["dp"]:
            continue
        for name, (arr, dim) in res["params"].items():
            full.setdefault(name, {})[res["coord"]["tp"]] = (arr, dim)
    out = {}
    for name, shards in full.items():
        dim = shards[0][1]
        out[name] = shards[0][0] if dim is None else \
            np.concatenate([shards[t][0] for t in sorted(shards)], axis=dim)
    return out


# ---------------------------------------------------------------------- broken pipelines
def shape_mismatch(rank, world, give_input_args):
    """Stage 0 makes 16 features, stage 1 expects 32."""
    import deepseek as ds
    from deepseek import nn
    import deepseek.distributed as dist
    from deepseek.distributed.pipelining import PipelineStage, ScheduleGPipe

    dist.init_process_group()
    ds.manual_seed(0)
    mods = [nn.Linear(8, 16), nn.Linear(32, 4)]
    ex = ds.zeros(2, 32) if (rank == 1 and give_input_args) else None
    stage = PipelineStage(mods[rank], rank, 2, input_args=ex)
    sched = ScheduleGPipe(stage, 2, loss_fn=lambda out, y: ((out - y) ** 2).mean())
    sched.step(ds.randn(4, 8), target=ds.zeros(4, 4))
    return True


def dying_stage(rank, world):
    """pp=3; the middle stage's process exits during the second step's forward."""
    import deepseek as ds
    from deepseek import nn
    import deepseek.distributed as dist
    from deepseek.distributed.pipelining import Schedule1F1B, pipeline

    dist.init_process_group()
    ds.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    (stage,) = pipeline(model, [1, 2])
    calls = [0]

    def die(module, inp):
        calls[0] += 1
        if calls[0] == 5:
            os._exit(7)
    if rank == 1:
        stage.submod.register_forward_pre_hook(die)
    sched = Schedule1F1B(stage, 3, loss_fn=lambda out, y: ((out - y) ** 2).mean())
    for _ in range(3):
        sched.step(ds.randn(6, 4), target=ds.zeros(6, 2))
    return True


def interleaved_bad_m(rank, world, m):
    from deepseek import nn
    import deepseek.distributed as dist
    from deepseek.distributed.pipelining import PipelineError, ScheduleInterleaved1F1B, pipeline

    dist.init_process_group()
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    stages = pipeline(model, [1, 2, 3])
    try:
        ScheduleInterleaved1F1B(stages, m, loss_fn=lambda o, y: o.mean())
    except PipelineError as e:
        return str(e)
    return None


def _mlp_stage(world, d):
    """This rank's stage of an MLP stack, one block per rank (same weights on every
    call: seed 0)."""
    import deepseek as ds
    from deepseek import nn
    from deepseek.distributed.pipelining import pipeline

    ds.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(),
                                          nn.Linear(4 * d, d)) for _ in range(world)])
    (stage,) = pipeline(model, list(range(1, world)))
    return stage


def memory_runs(rank, world, m, d=64, seq=32, batch=16):
    """Peak live microbatches and traced numpy bytes per stage, GPipe vs 1F1B."""
    import tracemalloc

    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    dist.init_process_group()
    out = {}
    for name, cls in (("gpipe", ScheduleGPipe), ("1f1b", Schedule1F1B)):
        stage = _mlp_stage(world, d)
        sched = cls(stage, m, loss_fn=lambda o, y: ((o - y) ** 2).mean())
        x, y = ds.randn(batch, seq, d), ds.zeros(batch, seq, d)
        sched.step(x, target=y)  # warm: grads allocated, shapes exchanged
        dist.barrier()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        sched.step(x, target=y)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        out[name] = {"peak_live": stage.peak_live, "peak_bytes": peak}
    return out


def input_grad_runs(rank, world, m=4, d=16, seq=4, batch=8):
    """The gradient of a leaf input that records it, after two 1F1B steps (it
    accumulates), on the first stage; on one process (world 1) the same from the
    full-batch loss of the whole MLP stack, twice."""
    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek.distributed.pipelining import Schedule1F1B

    ds.manual_seed(1)
    x, y = ds.randn(batch, seq, d).requires_grad_(True), ds.randn(batch, seq, d)
    loss_fn = lambda o, t: ((o - t) ** 2).mean()  # noqa: E731
    if world == 1:
        ds.manual_seed(0)
        from deepseek import nn
        model = nn.Sequential(*[nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(),
                                              nn.Linear(4 * d, d)) for _ in range(2)])
        for _ in range(2):
            loss_fn(model(x), y).backward()
        return x.grad.numpy()
    dist.init_process_group()
    sched = Schedule1F1B(_mlp_stage(world, d), m, loss_fn=loss_fn)
    for _ in range(2):
        sched.step(x, target=y)
    return x.grad.numpy() if rank == 0 else None


def timing_runs(rank, world, m, steps=2, d=64, seq=16, batch=16):
    """Each schedule's logged events (absolute perf_counter seconds) for ``steps``
    steps, to compare across ranks (test_pipeline_schedules.py)."""
    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    dist.init_process_group()
    out = {}
    for name, cls in (("gpipe", ScheduleGPipe), ("1f1b", Schedule1F1B)):
        stage = _mlp_stage(world, d)
        sched = cls(stage, m, loss_fn=lambda o, y: ((o - y) ** 2).mean(), log_timing=True)
        x, y = ds.randn(batch, seq, d).requires_grad_(True), ds.zeros(batch, seq, d)
        out[name] = []
        for _ in range(steps):
            dist.barrier()
            sched.step(x, target=y)
            out[name].append(sched.events())
        st = sched.stats()
        out[name + "_stats"] = (st["busy_s"], st["wall_s"])
    return out


def receive_paths(rank, world, m=4, d=64, seq=16, batch=8):
    """One 1F1B and one interleaved step of an MLP stack (a block per stage); per
    schedule the mean loss, this rank's parameter gradients and how many messages
    its stages took from receives posted ahead (those larger than a slot)."""
    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek import nn
    from deepseek.distributed.pipelining import (Schedule1F1B, ScheduleInterleaved1F1B,
                                                 pipeline)

    dist.init_process_group()
    out = {}
    for name, v in (("1f1b", 1), ("interleaved", 2)):
        ds.manual_seed(0)
        n = world * v
        model = nn.Sequential(*[nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(),
                                              nn.Linear(2 * d, d)) for _ in range(n)])
        stages = pipeline(model, list(range(1, n)))
        kw = dict(loss_fn=lambda o, y: ((o - y) ** 2).mean())
        sched = ScheduleInterleaved1F1B(stages, m, **kw) if v > 1 else \
            Schedule1F1B(stages[0], m, **kw)
        ds.manual_seed(1)
        x, y = ds.randn(batch, seq, d), ds.randn(batch, seq, d)
        loss = sched.step(x, target=y)
        out[name] = {"loss": loss,
                     "grads": [p.grad.array.copy() for st in stages
                               for p in st.submod.parameters()],
                     "ahead": sum(st.received_ahead for st in stages)}
    return out
