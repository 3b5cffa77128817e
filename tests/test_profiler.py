"""deepseek.profiler: what it records, how it names and aggregates, and that it costs
nothing when off."""
import json
import time

import numpy as np

import deepseek as ds
import deepseek.nn as nn
import deepseek.profiler as P
from deepseek.autograd import function as _function
from deepseek.optim import optimizer as _optimizer
from deepseek.data import dataloader as _dataloader
from deepseek.collectives import trace as _trace


def _mlp():
    ds.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _step(m, opt, x):
    loss = m(x).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_records_ops_backward_nodes_optimizer_and_ranges():
    m = _mlp()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    x = ds.randn(8, 16)
    with P.profile(record_shapes=True, profile_memory=True, with_flops=True) as prof:
        with P.record_function("my_forward"):
            loss = m(x).sum()
        loss.backward()
        opt.step()
    names = [e.name for e in prof.events()]
    assert names.count("deepseek::linear") == 2
    assert names.count("AddmmBackward0") == 2
    assert "ReluBackward0" in names and "SumBackward0" in names
    assert names.count("Optimizer.step#SGD.step") == 1
    assert names.count("my_forward") == 1
    avg = {r.key: r for r in prof.key_averages()}
    lin = avg["deepseek::linear"]
    assert lin.count == 2
    # FLOPs: 2*M*N*K for each linear
    assert lin.flops == 2 * 8 * 32 * 16 + 2 * 8 * 4 * 32
    # memory: the outputs' bytes (float32)
    assert lin.cpu_memory_usage == (8 * 32 + 8 * 4) * 4
    # the range contains the forward ops: its self time is its total minus theirs
    rng = avg["my_forward"]
    inner = sum(r.cpu_time_total for k, r in avg.items()
                if k.startswith("deepseek::"))
    assert rng.cpu_time_total >= inner
    assert abs(rng.self_cpu_time_total - (rng.cpu_time_total - inner)) < 1.0
    by_shape = prof.key_averages(group_by_input_shape=True)
    shapes = {r.input_shapes for r in by_shape if r.key == "deepseek::linear"}
    assert shapes == {((8, 16), (32, 16), (32,)), ((8, 32), (4, 32), (4,))}
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=3)
    assert "Self CPU" in table and "# of Calls" in table and "Total MFLOPs" in table
    assert len([ln for ln in table.splitlines() if ln and not ln.startswith(("-", "Name", "Self CPU time"))]) == 3


def test_table_sorts_by_self_time():
    class Slow(ds.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            time.sleep(0.02)
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2
    x = ds.randn(4, requires_grad=True)
    with P.profile() as prof:
        (Slow.apply(x) + 1).sum()
    top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=1)
    assert "slow" in top.splitlines()[3].lower(), top
    rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)
    assert rows[0].self_cpu_time_total >= 20000  # us


def test_schedule_and_on_trace_ready():
    m = _mlp()
    opt = ds.optim.SGD(m.parameters(), lr=0.1)
    x = ds.randn(8, 16)
    ready = []
    with P.profile(schedule=P.schedule(wait=1, warmup=1, active=3, repeat=1),
                   on_trace_ready=lambda p: ready.append(
                       sorted({e.name for e in p.events() if e.name.startswith("ProfilerStep")}))) as prof:
        for _ in range(7):
            _step(m, opt, x)
            prof.step()
    # steps 0 (wait) and 1 (warmup) are not in the trace; 2, 3, 4 are; then it stops
    assert ready == [["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]]
    n_lin = sum(1 for e in prof.events() if e.name == "deepseek::linear")
    assert n_lin == 2 * 3


def test_schedule_actions():
    s = P.schedule(wait=1, warmup=1, active=2, repeat=1)
    A = P.ProfilerAction
    assert [s(i) for i in range(5)] == [A.NONE, A.WARMUP, A.RECORD, A.RECORD_AND_SAVE, A.NONE]


def test_chrome_trace_export(tmp_path):
    m = _mlp()
    x = ds.randn(8, 16)
    with P.profile(record_shapes=True) as prof:
        m(x).sum().backward()
    p = tmp_path / "t.json"
    prof.export_chrome_trace(str(p))
    doc = json.loads(p.read_text())
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert {"deepseek::linear", "AddmmBackward0"} <= {e["name"] for e in xs}
    assert all(e["dur"] >= 0 and "ts" in e for e in xs)
    lin = next(e for e in xs if e["name"] == "deepseek::linear")
    assert lin["args"]["Input Dims"][0] == [8, 16]


def test_dataloader_waits_recorded():
    from deepseek.data import DataLoader, TensorDataset
    ds_ = TensorDataset(ds.randn(12, 3))
    loader = DataLoader(ds_, batch_size=4)
    with P.profile() as prof:
        for _ in loader:
            pass
    waits = [e for e in prof.events() if e.cat == "dataloader"]
    assert len(waits) == 3
    assert loader.stats.batches == 3


def test_collectives_recorded_with_metadata():
    import deepseek.distributed as dist
    pg = dist.init_process_group(rank=0, world_size=1)
    try:
        a = np.ones(10, np.float32)
        with P.profile() as prof:
            pg.allreduce(a)
            pg.broadcast(a)
        colls = [e for e in prof.events() if e.cat == "collective"]
        assert [e.name for e in colls] == ["allreduce", "broadcast"]
        a0 = colls[0].args
        assert a0["group"] == "default" and a0["bytes"] == 40 and a0["seq"] == 1
        assert {"algorithm", "backend", "transport", "rank"} <= set(a0)
    finally:
        dist.destroy_process_group()


def test_zero_cost_when_off():
    """Not profiling: no mode, no hook, no collective sink."""
    with P.profile():
        assert _function._hooked and _optimizer._step_hook is not None
        assert _dataloader._wait_hook is not None and _trace.sink is not None
    assert not _function._hooked
    assert _optimizer._step_hook is None and _dataloader._wait_hook is None
    assert _trace.sink is None
    # ops run after the profile are not recorded, and their graph nodes are plain
    x = ds.randn(3, requires_grad=True)
    y = (x * 2).sum()
    assert "run_backward" not in y.grad_fn.__dict__
    y.backward()


def test_backward_outside_profile_not_recorded():
    x = ds.randn(3, requires_grad=True)
    with P.profile() as prof:
        y = (x * 2).sum()
    y.backward()  # after the profile: the node's timer stands aside
    assert not [e for e in prof.events() if e.cat == "backward"]
    assert np.allclose(x.grad.numpy(), 2)


def test_op_flops_formulas():
    assert P.op_flops("deepseek::matmul", [(2, 3), (3, 5)], [(2, 5)]) == 2 * 2 * 3 * 5
    assert P.op_flops("deepseek::conv2d", [(1, 3, 8, 8), (4, 3, 3, 3)], [(1, 4, 6, 6)]) == \
        2 * 4 * 36 * 27
    assert P.op_flops("deepseek::scaled_dot_product_attention",
                      [(2, 4, 8, 16), (2, 4, 8, 16), (2, 4, 8, 16)], [(2, 4, 8, 16)]) == \
        4 * 2 * 4 * 8 * 8 * 16
    assert P.op_flops("deepseek::relu", [(3,)], [(3,)]) == 0
