"""A tiny DDP job for tests/test_timeline.py, run under deepseek-run with
DEEPSEEK_TIMELINE set. TIMELINE_SLOW_RANK (optional) makes that rank sleep each step;
TIMELINE_NO_DESTROY=1 leaves the process group alone at the end (the rank files are
written at exit and the launcher merges them)."""
import os
import time

import numpy as np

import deepseek as ds
import deepseek.nn as nn
import deepseek.distributed as dist
from deepseek.data import DataLoader, TensorDataset

dist.init_process_group()
rank = dist.get_rank()
ds.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
ddp = nn.parallel.DistributedDataParallel(model)
opt = ds.optim.SGD(ddp.parameters(), lr=0.01)
x = ds.tensor(np.random.default_rng(rank).standard_normal((64, 32)).astype(np.float32))
y = ds.tensor(np.zeros(64, dtype=np.int64))
loader = DataLoader(TensorDataset(x, y), batch_size=16)
slow = int(os.environ.get("TIMELINE_SLOW_RANK", "-1"))
for epoch in range(2):
    for xb, yb in loader:
        if rank == slow:
            time.sleep(0.02)
        loss = nn.functional.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
if os.environ.get("TIMELINE_NO_DESTROY") != "1":
    dist.destroy_process_group()
