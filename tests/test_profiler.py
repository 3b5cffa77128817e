"""deepseek.profiler: what it records, how it names and aggregates, and that it costs
nothing when off."""
import json
import time

import numpy as np
import pytest

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


def _device_marked(raw, ref_ns, dev0):
    """Device marks for the op / backward events of ``raw`` as the device mode makes
    them, with the device clock given as plain ns readings (no GPU here): event i's
    kernels start 2 us after it started on the host and run (i + 1) us. Returns the
    marks and {event index: (device start on the host clock, device ns)}."""
    marks, want = [], {}
    for i, r in enumerate(raw):
        if r[1] in ("cpu_op", "backward"):
            s = dev0 + (r[3] - ref_ns) + 2000
            marks.append(("", "device", r[2], r[3] - 1, r[4] + 1, None, None, 0,
                          (s, s + 1000 * (i + 1))))
            want[i] = (r[3] + 2000, 1000 * (i + 1))
    return marks, want


def test_device_marks_give_ops_ranges_table_and_trace_device_time():
    """The pairing behind the CUDA columns, run on the CPU with the device clock as
    plain numbers: each op and backward node gets the device time of the mark whose
    host window holds it, a range the sum of the ops inside it (self: 0), and the
    table's CUDA columns, its cuda sort keys and the trace's GPU row show them."""
    from deepseek.profiler import profiler as PP
    m = _mlp()
    x = ds.randn(8, 16)
    with P.profile() as prof:
        with P.record_function("fwd"):
            loss = m(x).sum()
        loss.backward()
    raw = list(prof.raw_events())
    ref_ns, dev0 = raw[0][3] - 5000, 10_000_000
    marks, want = _device_marked(raw, ref_ns, dev0)
    # marks that hold no event pair with nothing: one before everything (of a
    # discarded warm-up step), and one whose window ends inside an op (the op's own
    # mark is gone: that op has no device time)
    k = min(want)
    del marks[0], want[k]
    t0k = raw[k][3]
    marks += [("", "device", raw[0][2], 1, 2, None, None, 0, (0, 99)),
              ("", "device", raw[k][2], t0k - 1, t0k + 1, None, None, 0, (0, 77))]
    evs = PP._materialize(raw + marks[::-1], ((dev0, ref_ns), lambda a, b: b - a))
    assert len(evs) == len(raw)
    assert evs[k].device_ns == 0 and evs[k].device_start_ns is None
    for i, e in enumerate(evs):
        if i in want:
            assert (e.device_start_ns, e.device_ns) == want[i], e
            assert e.self_cuda_time_total == e.cuda_time_total == want[i][1] / 1e3
    fwd = next(e for e in evs if e.name == "fwd")
    inside = sum(e.device_ns for e in evs if e.cat == "cpu_op"
                 and fwd.start_ns <= e.start_ns and e.end_ns <= fwd.end_ns)
    assert inside and fwd.device_ns == inside and fwd.self_device_time_total == 0
    step = next(e for e in evs if e.cat == "step")
    assert step.device_ns == sum(d for _, d in want.values())

    avg = PP._key_averages(evs, False, False)
    rows = {r.key: r for r in avg}
    lin = rows["deepseek::linear"]
    assert lin.count == 2 and lin.self_cuda_time_total == lin.device_time_total == sum(
        e.device_ns for e in evs if e.name == "deepseek::linear") / 1e3
    table = avg.table(sort_by="self_cuda_time_total", row_limit=3)
    assert "Self CUDA" in table and "CUDA total" in table and "Self CUDA time total" in table
    top = max((r for r in avg), key=lambda r: r.self_device_time_total)
    assert table.splitlines()[3].startswith(top.key[:20]), table
    top = max(avg, key=lambda r: r.device_time_total)
    assert avg.table(sort_by="cuda_time_total").splitlines()[3].startswith(top.key[:20])
    assert rows["fwd"].device_time_total == fwd.device_ns / 1e3

    doc = P.chrome_trace(evs, pid=7)
    gpu = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "kernel"]
    assert len(gpu) == len(want)
    assert {e["tid"] for e in gpu} == {PP.DEVICE_TID}
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names[(7, PP.DEVICE_TID)] == "GPU (CUDA events)"
    assert sorted((e["ts"], e["dur"]) for e in gpu) == sorted(
        (s / 1e3, d / 1e3) for s, d in want.values())


def test_cpu_run_cuda_sort_keys_fall_back_to_cpu():
    m = _mlp()
    with P.profile() as prof:
        m(ds.randn(8, 16)).sum().backward()
    t_cuda = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=4)
    t_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=4)
    assert t_cuda == t_cpu and "CUDA" not in t_cpu


def test_activities():
    """CPU only (and, without a GPU, every profile): the plain mode, no device events;
    CUDA asked for without a GPU: a warning and CPU events; bad lists: clear errors."""
    from deepseek.profiler import profiler as PP
    from deepseek.backend import cupy_available
    x = ds.randn(3)
    with P.profile(activities=[P.ProfilerActivity.CPU]) as prof:
        assert type(prof._mode) is PP._ProfMode
        x + x
    assert [e.name for e in prof.events() if e.cat == "cpu_op"] == ["deepseek::add"]
    assert not prof._device and prof._dev_ref is None
    for bad in ([], ["cpu"], [P.ProfilerActivity.CPU, 1]):
        with pytest.raises(ValueError, match="ProfilerActivity"):
            P.profile(activities=bad)
    if cupy_available():
        return  # the GPU half: tests/test_profiler_gpu.py
    with P.profile() as prof:  # the default: CPU, and CUDA only with a GPU
        assert type(prof._mode) is PP._ProfMode
    with pytest.warns(RuntimeWarning, match="no GPU"):
        prof = P.profile(activities=[P.ProfilerActivity.CUDA])
    with prof:
        assert type(prof._mode) is PP._ProfMode
        x * x
    assert [e.name for e in prof.events() if e.cat == "cpu_op"] == ["deepseek::mul"]


def test_device_event_helpers_without_cupy():
    """backend's event helpers: a numpy array is not on the device; without cupy an
    event is a clear error (the profiler never asks for one then)."""
    from deepseek import backend
    assert not backend.on_device(np.ones(2, np.float32))
    if backend.cupy_module() is not None:
        pytest.skip("cupy is installed: tests/test_profiler_gpu.py")
    with pytest.raises(RuntimeError, match="cupy is not installed"):
        backend.device_event()
