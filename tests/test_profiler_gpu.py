"""deepseek.profiler on the GPU: device time of every op from CUDA events.

Skips without cupy and a GPU (scripts/gpu_check.py runs it on a GPU machine); the
pairing of device marks with ops, the table's CUDA columns and the trace's GPU row
are also checked on the CPU with the device clock given as numbers
(tests/test_profiler.py).
"""
import json

import pytest

import deepseek as ds
import deepseek.nn as nn
import deepseek.profiler as P
from deepseek import backend
from deepseek.profiler import profiler as PP

pytestmark = pytest.mark.skipif(not backend.cupy_available(), reason="needs cupy and a GPU")

A = P.ProfilerActivity


def _sync():
    backend.cupy_module().cuda.Device().synchronize()


def _mlp_step():
    ds.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).to("cuda")
    opt = ds.optim.SGD(m.parameters(), lr=0.01)
    x = ds.randn(64, 256).cuda()

    def step():
        loss = m(x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    _sync()
    return step


def test_device_time_of_ops_and_backward_nodes(tmp_path):
    step = _mlp_step()
    with P.profile(activities=[A.CPU, A.CUDA]) as prof:
        assert type(prof._mode) is PP._DeviceProfMode
        for _ in range(2):
            step()
            prof.step()
    evs = prof.events()
    for name in ("deepseek::linear", "deepseek::relu", "AddmmBackward0", "ReluBackward0"):
        got = [e for e in evs if e.name == name]
        assert len(got) == (4 if name.endswith("linear") or name.startswith("Addmm") else 2)
        assert all(e.device_ns > 0 for e in got), (name, got)
        # placed on the host clock within the profile (a ms of slack for the reference)
        t0 = min(e.start_ns for e in evs)
        t1 = max(e.end_ns for e in evs) + 1_000_000_000
        assert all(t0 - 1_000_000 <= e.device_start_ns <= t1 for e in got)
    rows = {r.key: r for r in prof.key_averages()}
    lin = rows["deepseek::linear"]
    assert lin.self_cuda_time_total > 0 and lin.cuda_time_total == lin.device_time_total
    step0 = next(e for e in evs if e.name == "ProfilerStep#0")
    inside = [e for e in evs if e.cat in ("cpu_op", "backward")
              and step0.start_ns <= e.start_ns and e.end_ns <= step0.end_ns]
    # a range sums the device time of the ops inside it; its own is 0
    assert step0.device_ns == sum(e.device_ns for e in inside) > 0
    assert step0.cuda_time_total > 0 and step0.self_cuda_time_total == 0
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=5)
    assert "Self CUDA" in table and "CUDA total" in table and "Self CUDA time total" in table
    p = tmp_path / "gpu.json"
    prof.export_chrome_trace(str(p))
    doc = json.loads(p.read_text())
    gpu = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "kernel"]
    assert {e["name"] for e in gpu} >= {"deepseek::linear", "AddmmBackward0"}
    assert all(e["tid"] == PP.DEVICE_TID and e["dur"] > 0 for e in gpu)


def test_device_time_follows_the_work():
    """A 4096^3 matmul takes the device far longer than adding 4 floats (whose device
    time is mostly the gap while the host launches it), and about as long as CUDA
    events around the same matmul outside the profiler say."""
    cp = backend.cupy_module()
    a = ds.randn(4096, 4096).cuda()
    s = ds.randn(4).cuda()
    a @ a
    _sync()
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    e0.record()
    a @ a
    e1.record()
    e1.synchronize()
    ref_ms = cp.cuda.get_elapsed_time(e0, e1)
    with P.profile(activities=[A.CUDA]) as prof:
        s + s
        a @ a
    by = {e.name: e for e in prof.events() if e.cat == "cpu_op"}
    mm, add = by["deepseek::matmul"], by["deepseek::add"]
    assert mm.device_ns > 10 * add.device_ns, (mm.device_ns, add.device_ns)
    assert 0.2 * ref_ms * 1e6 < mm.device_ns < 5 * ref_ms * 1e6 + 200_000, (mm.device_ns, ref_ms)


def test_activities_on_the_gpu():
    """Default: CUDA timing on with a GPU; CPU only: the plain mode, no device time;
    CUDA only: just the ops that ran on the GPU."""
    g = ds.randn(8).cuda()
    c = ds.randn(8)
    with P.profile() as prof:
        g * g
    assert [e.device_ns > 0 for e in prof.events() if e.cat == "cpu_op"] == [True]
    with P.profile(activities=[A.CPU]) as prof:
        assert type(prof._mode) is PP._ProfMode
        g * g
    assert all(e.device_ns == 0 for e in prof.events())
    with P.profile(activities=[A.CUDA]) as prof:
        g + g
        c + c
    ops = [e for e in prof.events() if e.cat == "cpu_op"]
    assert len(ops) == 1 and ops[0].device_ns > 0
