"""Multi-process tests of deepseek.collectives (cpu backend: shared memory and ZeroMQ).

Every test spawns real processes through deepseek.testing.multiprocess.spawn_ranks with
a hard deadline; the rank functions live in collectives_cases.py.
"""
import os

import numpy as np
import pytest

import collectives_cases as cases
from deepseek.collectives.reduce_ops import BFLOAT16, ReduceOp, reduce_into
from deepseek.testing.multiprocess import SpawnError, spawn_ranks

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_all_ops_shm(world, shm_guard):
    # world 3 runs with a small slot so messages take many rounds (uneven chunks,
    # the double-buffered pipeline) and the reduce-scatter path for most sizes
    env = {"DEEPSEEK_SHM_CHUNK": "64KiB", "DEEPSEEK_SHM_RS_BYTES": "2KiB"} if world == 3 else {}
    big = (3 << 20) if world in (2, 3) else None
    res = spawn_ranks(cases.all_ops, world, timeout=150, env=env, kwargs={"big": big})
    assert all(r > 100 for r in res)


def test_all_ops_zmq(shm_guard):
    res = spawn_ranks(cases.all_ops, 3, timeout=120, env={"DEEPSEEK_CPU_TRANSPORT": "zmq"},
                      kwargs={"sizes": (0, 1, 7, 3000), "big": 1 << 20,
                              "dtypes": [np.dtype(np.float32), BFLOAT16, np.dtype(np.int64)]})
    assert all(r > 10 for r in res)


def test_p2p(shm_guard):
    spawn_ranks(cases.p2p, 3, timeout=60)


def test_p2p_zmq():
    spawn_ranks(cases.p2p, 2, timeout=60, env={"DEEPSEEK_CPU_TRANSPORT": "zmq"})


def test_two_hosts_pick_zmq_automatically():
    """Ranks with different host ids cannot share memory: the cpu backend goes TCP."""
    res = spawn_ranks(cases.transport_name, 2, timeout=60,
                      env=lambda r: {"DEEPSEEK_HOST_ID": f"host{r}"})
    assert res == ["zmq", "zmq"]
    assert spawn_ranks(cases.transport_name, 2, timeout=60) == ["shm", "shm"]


def test_many_async():
    spawn_ranks(cases.many_async, 2, timeout=60)


def test_subgroups(shm_guard):
    spawn_ranks(cases.subgroups, 4, timeout=60)


def test_timeout_names_op_and_missing_peer_and_hang_report():
    res = spawn_ranks(cases.timeout_and_report, 2, timeout=60,
                      env={"DEEPSEEK_HANG_POLL": "0.2"})
    assert "not in any collective" in res[0]


@pytest.mark.parametrize("opname", ["broadcast", "allgather", "gather", "reduce_scatter"])
def test_fast_paths_time_out_with_the_same_errors(opname, shm_guard):
    res = spawn_ranks(cases.fast_op_times_out, 2, timeout=60, args=(opname,),
                      env={"DEEPSEEK_HANG_POLL": "0"})
    assert res[0] == "broken", res


def test_peer_dies_mid_collective(shm_guard):
    res = spawn_ranks(cases.peer_dies, 3, timeout=60, return_errors=True)
    assert res[2].exitcode == 7
    for r in (0, 1):
        name, elapsed, msg = res[r]
        assert name in ("PeerFailureError", "CollectiveTimeoutError"), res[r]
        assert elapsed < 10, res[r]


def test_debug_mode_mismatch():
    assert spawn_ranks(cases.debug_mismatch, 2, timeout=60) == ["mismatch"] * 2
    assert spawn_ranks(cases.debug_op_mismatch, 2, timeout=60) == ["mismatch"] * 2


def test_bad_arguments_raise_at_once():
    spawn_ranks(cases.bad_arguments, 2, timeout=60)


def test_shm_unlinked_after_attach_and_after_crash(shm_guard):
    res = spawn_ranks(cases.shm_unlinked, 2, timeout=60, return_errors=True)
    assert res[0] == [], res[0]
    assert res[1].exitcode == -9


def test_deterministic_bitwise():
    spawn_ranks(cases.deterministic, 3, timeout=60, env={"DEEPSEEK_SHM_CHUNK": "256KiB"})


def test_work_wait_timeout():
    spawn_ranks(cases.work_wait_timeout, 2, timeout=60)


def test_async_overlaps_compute():
    spawn_ranks(cases.overlap, 2, timeout=60)


def test_spawn_ranks_reports_rank_and_traceback():
    with pytest.raises(SpawnError) as ei:
        spawn_ranks(cases.raises_on_rank_one, 2, timeout=30)
    assert ei.value.rank == 1
    assert "rank 1" in str(ei.value) and "boom from rank 1" in str(ei.value)


def test_spawn_ranks_env_is_in_place_when_the_interpreter_starts():
    import spawn_env_probe
    got = spawn_ranks(spawn_env_probe.seen_at_import, 2, timeout=60,
                      env=lambda r: {"DEEPSEEK_TEST_ENV_PROBE": f"r{r}"})
    assert got == [("r0", "r0"), ("r1", "r1")]
    assert "DEEPSEEK_TEST_ENV_PROBE" not in os.environ  # the parent's is restored


def test_spawn_ranks_deadline_kills_and_shows_stacks():
    with pytest.raises(SpawnError) as ei:
        spawn_ranks(cases.sleeps_forever, 2, timeout=3)
    assert "deadline" in str(ei.value) and "sleeps_forever" in str(ei.value)


@pytest.mark.parametrize("dtype", [np.float16, BFLOAT16, np.float32, np.int64])
def test_reduce_into_rank_order(dtype):
    rng = np.random.default_rng(0)
    parts = [rng.uniform(-2, 2, 257).astype(dtype) for _ in range(4)]
    for op in ReduceOp:
        if op is ReduceOp.AVG and np.dtype(dtype).kind in "iu":
            continue
        out = np.empty(257, dtype)
        reduce_into(out, parts, op)
        cases.check_equal(out, cases.reference(parts, op), f"{op} {dtype}")


@pytest.mark.parametrize("dtype", [np.float16, BFLOAT16, np.float32, np.float64, np.int32,
                                   np.int64])
def test_native_and_numpy_reductions_agree_bitwise(dtype, monkeypatch):
    """Deterministic results across sizes need both reduction paths to give one answer."""
    from deepseek.collectives import reduce_ops

    rng = np.random.default_rng(1)
    n = 40001
    scale = 3 if np.dtype(dtype).kind in "iu" else 1
    parts = [(rng.uniform(-2, 2, n) * scale).astype(dtype) for _ in range(3)]
    for op in ReduceOp:
        if op is ReduceOp.AVG and np.dtype(dtype).kind in "iu":
            continue
        a, b = np.empty(n, dtype), np.empty(n, dtype)
        monkeypatch.setattr(reduce_ops, "NATIVE_MIN_ELEMS", 0)
        reduce_into(a, parts, op)
        monkeypatch.setattr(reduce_ops, "NATIVE_MIN_ELEMS", 1 << 62)
        reduce_into(b, parts, op)
        cases.check_equal(a, b, f"native vs numpy {op} {dtype}")


def test_all_ops_shm_numpy_protocol(shm_guard):
    """Without the native kernels the shm transport runs the same protocol in numpy
    (the C allreduce and the Python collectives share the segment's state words)."""
    res = spawn_ranks(cases.all_ops, 2, timeout=150,
                      env={"DEEPSEEK_NATIVE": "0", "DEEPSEEK_SHM_CHUNK": "64KiB"},
                      kwargs={"sizes": (0, 1, 7, 1027, 70001), "ops": [ReduceOp.SUM, ReduceOp.MAX]})
    assert all(r > 50 for r in res)


def test_allreduce_fast_path_is_taken_and_matches(shm_guard):
    spawn_ranks(cases.fast_path, 2, timeout=60)


def test_store_import_is_cheap():
    """deepseek-run imports deepseek.collectives.store at start-up: the package is lazy
    (PEP 562), so that loads neither numpy nor the process-group code."""
    import subprocess
    import sys

    code = ("import sys, deepseek.collectives.store, deepseek.collectives.hang; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or "
            "m.startswith('deepseek.collectives.') and m.split('.')[2] not in "
            "('store', 'hang')))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    from deepseek import collectives as C
    assert C.ReduceOp.SUM.value == "sum" and "init_process_group" in dir(C)


@pytest.mark.parametrize("cma", ["auto", "0"])
def test_single_copy_allgather(cma, shm_guard):
    res = spawn_ranks(cases.cma_allgather, 3, timeout=60, env={"DEEPSEEK_SHM_CMA": cma})
    if cma == "0":
        assert [r[0] for r in res] == [False] * 3
    # every rank agrees on whether the probe found cross-memory attach usable
    assert len({r[0] for r in res}) == 1, res
    for on, kinds, mismatch in res:
        assert kinds == ([5, 5, 1] if on else [1, 1, 1]), kinds
        assert mismatch == ("mismatch" if on else "skipped")
