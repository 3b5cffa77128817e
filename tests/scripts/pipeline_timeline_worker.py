"""A 2-stage GPipe job for tests/test_timeline.py, run under deepseek-run with
DEEPSEEK_TIMELINE set: the stages' activation sends and gradient receives (p2p ops)
show up in the merged timeline, paired send -> recv."""
import numpy as np

import deepseek as ds
import deepseek.nn as nn
import deepseek.distributed as dist
from deepseek.distributed.pipelining import PipelineStage, ScheduleGPipe

dist.init_process_group()
rank = dist.get_rank()
ds.manual_seed(0)
mod = nn.Sequential(nn.Linear(16, 32), nn.ReLU()) if rank == 0 else nn.Linear(32, 4)
stage = PipelineStage(mod, rank, 2)
sched = ScheduleGPipe(stage, n_microbatches=4,
                      loss_fn=lambda out, y: nn.functional.cross_entropy(out, y))
opt = ds.optim.SGD(mod.parameters(), lr=0.01)
rng = np.random.default_rng(0)
x = ds.tensor(rng.standard_normal((32, 16)).astype(np.float32))
y = ds.tensor(np.zeros(32, dtype=np.int64))
for _ in range(3):
    opt.zero_grad()
    if rank == 0:
        sched.step(x)
    else:
        sched.step(target=y)
    opt.step()
dist.destroy_process_group()
