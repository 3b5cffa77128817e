"""Rank functions for tests/test_ddp.py (module-level so spawned ranks can import them)."""
import numpy as np

GLOBAL_BATCH = 12
IN, HID, OUT = 6, 16, 3


def _model(seed=0, extra_unused=False, hid=HID):
    import deepseek as ds
    import deepseek.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(IN, hid)
            self.fc2 = nn.Linear(hid, hid)
            self.fc3 = nn.Linear(hid, OUT)
            if extra_unused:
                self.unused = nn.Linear(hid, OUT)

        def forward(self, x):
            return self.fc3(self.fc2(self.fc1(x).tanh()).tanh())

    ds.manual_seed(seed)
    return Net()


def _data(step):
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((GLOBAL_BATCH, IN)).astype(np.float32)
    y = rng.integers(0, OUT, GLOBAL_BATCH)
    return x, y


def _loss(model, x, y):
    import deepseek as ds
    import deepseek.nn.functional as F
    return F.cross_entropy(model(ds.tensor(x)), ds.tensor(y))


def _sgd_on_my_slice(ddp, rank, world, steps, lr):
    """``steps`` SGD steps of ``ddp``, each on this rank's slice of the global batch."""
    import deepseek as ds
    opt = ds.optim.SGD(ddp.parameters(), lr=lr)
    per = GLOBAL_BATCH // world
    for s in range(steps):
        x, y = _data(s)
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad()
        _loss(ddp, xs, ys).backward()
        opt.step()


def reference_params(steps, lr=0.1, hid=HID):
    """Single process, whole global batch per step."""
    import deepseek as ds
    model = _model(hid=hid)
    opt = ds.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        x, y = _data(s)
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def ddp_params(rank, world, steps=1, lr=0.1, seed_offset=True, hid=HID, **ddp_kwargs):
    """Each rank trains on its slice of the global batch; returns final params."""
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    # different init per rank: DDP must broadcast rank 0's parameters
    model = _model(seed=rank if seed_offset else 0, hid=hid)
    ddp = DistributedDataParallel(model, **ddp_kwargs)
    _sgd_on_my_slice(ddp, rank, world, steps, lr)
    counts = dict(getattr(ddp, "wire_dtype_counts", {}))
    # allreduces that read the buckets in place (symmetric memory, shm transport)
    counts["symmetric"] = getattr(ddp.process_group._backend, "sym_allreduces", 0)
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}, counts


def no_sync_params(rank, world, lr=0.1):
    """Two micro-batches per rank, the first under no_sync; loss halved each."""
    import deepseek as ds
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    model = _model()
    ddp = DistributedDataParallel(model)
    opt = ds.optim.SGD(ddp.parameters(), lr=lr)
    x, y = _data(0)
    per = GLOBAL_BATCH // world
    xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
    half = per // 2
    opt.zero_grad()
    with ddp.no_sync():
        (_loss(ddp, xs[:half], ys[:half]) * 0.5).backward()
    (_loss(ddp, xs[half:], ys[half:]) * 0.5).backward()
    opt.step()
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def event_order(rank, world, overlap):
    """The order of bucket ready/launch events in one backward."""
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    model = _model(hid=64)
    # ~17 KB per Linear(64, 64): a 0.01 MB cap makes one bucket per layer or so
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.01, overlap_comm=overlap)
    ddp.events = []
    x, y = _data(0)
    _loss(ddp, x, y).backward()
    return [list(e) for e in ddp.events], len(ddp.buckets)


def unused_param(rank, world, find_unused):
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    model = _model(extra_unused=True)
    ddp = DistributedDataParallel(model, find_unused_parameters=find_unused)
    x, y = _data(0)
    try:
        _loss(ddp, x, y).backward()
    except RuntimeError as e:
        return "error: " + str(e)
    return float(model.fc1.weight.grad.numpy().sum())


def mismatched_model(rank, world):
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    model = _model(hid=HID + rank)
    try:
        DistributedDataParallel(model)
    except RuntimeError as e:
        return str(e)
    return "accepted"


def grads_after_remove_hooks(rank, world):
    """Gradient sums of fc1.weight with DDP attached, then after remove_hooks()."""
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    model = _model()
    ddp = DistributedDataParallel(model)
    x, y = _data(rank)  # different data per rank: local gradients differ
    _loss(ddp, x, y).backward()
    synced = float(model.fc1.weight.grad.numpy().sum())
    ddp.remove_hooks()
    model.zero_grad()
    _loss(model, x, y).backward()
    return synced, float(model.fc1.weight.grad.numpy().sum())


def fp16_overflow_grads(rank, world, hid=HID):
    """fp16 compression: a step whose gradients jump 1e6x past the learned bound must
    overflow fp16, be detected, and be resent in fp32 (exact average, no inf); with
    hid=256 the big buckets take the fused reduction over shared memory instead."""
    import deepseek as ds
    from deepseek.distributed import init_process_group
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    model = _model(hid=hid)
    ddp = DistributedDataParallel(model, compression="fp16")
    x, y = _data(rank)
    for factor in (1.0, 1.0, 1e6):  # step 1 sends fp32 and learns the bound
        model.zero_grad()
        (_loss(ddp, x, y) * factor).backward()
    got = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    (_loss(model, x, y) * 1e6).backward()  # this rank's own fp32 gradient
    local = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    return got, local, dict(ddp.wire_dtype_counts)


def hook_params(rank, world, kind, steps=2, bucket_cap_mb=0.001):
    """Train ``steps`` steps with a comm hook of ``kind``; returns the final params, the
    bucket indices the hook saw per call (with is_last), the bucket count and the wire
    counters."""
    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek.collectives import ReduceOp
    from deepseek.distributed import comm_hooks
    from deepseek.distributed.ddp import DistributedDataParallel
    from deepseek.distributed.futures import Future
    from deepseek.collectives import get_default_group
    dist.init_process_group()
    pg = get_default_group()
    model = _model(seed=rank)
    seen = []

    def sum_then_scale(state, bucket):
        # the hook's own state; allreduce SUM, then divide: the value is a new array
        state["calls"] += 1
        seen.append((bucket.index(), bucket.is_last()))
        buf = bucket.buffer()
        work = state["group"].allreduce(buf, ReduceOp.SUM, async_op=True)
        return Future.from_work(work, buf).then(lambda fut: fut.value() / state["group"].size)

    def tensor_valued(state, bucket):
        # a blocking deepseek.distributed.all_reduce on a tensor; the value is a Tensor
        seen.append((bucket.index(), bucket.is_last()))
        t = ds.from_numpy(bucket.buffer().copy())
        dist.all_reduce(t)
        return Future.completed(t / world)

    def legacy(bucket):
        seen.append((bucket.index(), bucket.is_last()))
        return pg.allreduce(bucket.buffer(), ReduceOp.AVG, async_op=True)

    if kind == "legacy":
        ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb, comm_hook=legacy)
    else:
        ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
        if kind == "sum_then_scale":
            ddp.register_comm_hook({"calls": 0, "group": pg}, sum_then_scale)
        elif kind == "tensor_valued":
            ddp.register_comm_hook(None, tensor_valued)
        else:  # the built-in hooks by name, e.g. "fp16_compress_hook"
            ddp.register_comm_hook(pg, getattr(comm_hooks, kind))
    _sgd_on_my_slice(ddp, rank, world, steps, 0.1)
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return params, [list(t) for t in seen], len(ddp.buckets), dict(ddp.wire_dtype_counts)


def hook_registration_errors(rank, world):
    """The messages of the refused register_comm_hook calls."""
    from deepseek.distributed import init_process_group
    from deepseek.distributed.comm_hooks import allreduce_hook, fp16_compress_hook
    from deepseek.distributed.ddp import DistributedDataParallel
    init_process_group()
    msgs = {}
    ddp = DistributedDataParallel(_model())
    ddp.register_comm_hook(None, allreduce_hook)
    try:
        ddp.register_comm_hook(None, allreduce_hook)
    except RuntimeError as e:
        msgs["twice"] = str(e)
    ddp = DistributedDataParallel(_model())
    x, y = _data(0)
    _loss(ddp, x, y).backward()
    try:
        ddp.register_comm_hook(None, allreduce_hook)
    except RuntimeError as e:
        msgs["after_backward"] = str(e)
    ddp = DistributedDataParallel(_model(), compression="fp16")
    try:
        ddp.register_comm_hook(None, fp16_compress_hook)
    except RuntimeError as e:
        msgs["after_compression"] = str(e)
    try:
        DistributedDataParallel(_model(), compression="bf16", comm_hook=lambda b: None)
    except ValueError as e:
        msgs["both"] = str(e)
    return msgs


def shm_fused_reduce(rank, world, n=20000):
    """The fused fp16 reduction over shared memory (deepseek/distributed/shm_fused.py)
    on a bucket of known values: returns, per case, the reduced buffer, the bound and
    the fallback flag, and what the cast / fp16 allreduce / decode sequence gives."""
    import deepseek as ds
    from deepseek import collectives as C, native
    from deepseek.distributed import init_process_group
    from deepseek.distributed.buckets import GradBucket
    from deepseek.distributed.shm_fused import send_fused, shared_views
    init_process_group()
    pg = C.get_default_group()
    p = ds.zeros(n, requires_grad=True)
    bucket = GradBucket(0, [p], ["w"], np.float32, alloc=lambda k, dt: pg.symmetric_empty(k, dt))
    views = shared_views(pg, bucket)
    assert views is not None, "bucket not eligible for the fused reduction"
    xs = [np.random.default_rng(7 + r).standard_normal(n).astype(np.float32) * 1e-2
          for r in range(world)]
    out = {}
    for case, scale in (("plain", 2.0 ** 12), ("overflow", 2.0 ** 12), ("fp32", 1.0)):
        if case == "overflow":
            xs[0][5] = 1e9  # rank 0's segment, first block
        bucket.buffer()[...] = xs[rank]
        bound, fell = send_fused(pg, bucket, views, case != "fp32", scale).wait()
        if case == "fp32":
            acc = xs[0].copy()
            for x in xs[1:]:
                acc = acc + x
            ref = acc * np.float32(1.0 / world)
        else:
            acc = None
            for x in xs:
                h = np.empty(n, np.float16)
                native.wire_pack(x, h, scale)
                acc = h.astype(np.float32) if acc is None else acc + h.astype(np.float32)
            ref = np.empty(n, np.float32)
            native.wire_unpack(acc.astype(np.float16), ref, 1.0 / (scale * world))
        exact = xs[0].copy()
        for x in xs[1:]:
            exact = exact + x
        exact = exact / np.float32(world)
        mag = np.zeros(n, np.float32)
        for x in xs:
            mag = mag + np.abs(x)
        out[case] = (bucket.buffer().copy(), bound, fell, ref, exact, float(mag.max()))
    return out
