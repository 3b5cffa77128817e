"""DistributedDataParallel on real processes (deepseek.testing.spawn_ranks)."""
import numpy as np
import pytest

import ddp_cases as cases
from deepseek.testing.multiprocess import spawn_ranks


def _close(a, b, rtol, atol):
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("world", [2, 3])
def test_one_step_equals_single_process_on_concatenated_batch(world):
    ref = cases.reference_params(1)
    results = spawn_ranks(cases.ddp_params, world, timeout=120)
    for params, _ in results:
        _close(params, ref, rtol=1e-5, atol=1e-6)


def test_overlap_on_and_off_give_identical_results():
    on = spawn_ranks(cases.ddp_params, 2, timeout=120, kwargs={"steps": 2, "overlap_comm": True,
                                                               "bucket_cap_mb": 0.001})
    off = spawn_ranks(cases.ddp_params, 2, timeout=120, kwargs={"steps": 2, "overlap_comm": False,
                                                                "bucket_cap_mb": 0.001})
    for (a, _), (b, _) in zip(on, off):
        for name in a:
            assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compression_matches_fp32_within_half_precision(compression):
    steps = 4
    ref = cases.reference_params(steps)
    results = spawn_ranks(cases.ddp_params, 2, timeout=120,
                          kwargs={"steps": steps, "compression": compression})
    for params, counts in results:
        _close(params, ref, rtol=2e-2, atol=2e-3)
        # after the first step (which learns the fp16 scale) buckets go in half precision
        assert counts.get(compression, 0) >= steps - 1, counts
    a, b = results[0][0], results[1][0]
    for name in a:
        assert np.array_equal(a[name], b[name]), f"ranks diverged on {name}"


@pytest.mark.parametrize("compression", [None, "fp16", "bf16"])
def test_buckets_live_in_symmetric_memory(compression):
    # hidden 256: buckets of 256 KiB and more, above the symmetric crossover (64 KiB)
    steps = 3
    ref = cases.reference_params(steps, hid=256)
    results = spawn_ranks(cases.ddp_params, 2, timeout=120,
                          kwargs={"steps": steps, "hid": 256, "compression": compression})
    tol = (1e-5, 1e-6) if compression is None else (2e-2, 2e-3)
    for params, counts in results:
        _close(params, ref, *tol)
        assert counts["symmetric"] >= steps, counts  # the big bucket, every step
    a, b = results[0][0], results[1][0]
    for name in a:
        assert np.array_equal(a[name], b[name]), f"ranks diverged on {name}"


def test_no_sync_accumulation_equals_one_big_batch():
    ref = cases.reference_params(1)
    for params in spawn_ranks(cases.no_sync_params, 2, timeout=120):
        _close(params, ref, rtol=1e-5, atol=1e-6)


def test_buckets_launch_while_backward_still_runs():
    (events, nb), _ = spawn_ranks(cases.event_order, 2, timeout=120, args=(True,))
    assert nb >= 3, nb
    kinds = [e[0] for e in events]
    first_launch = kinds.index("launch")
    last_ready = len(kinds) - 1 - kinds[::-1].index("ready")
    assert first_launch < last_ready, events
    # launches happen in bucket order, each bucket once, and every bucket completes
    assert [e[1] for e in events if e[0] == "launch"] == list(range(nb))
    assert sorted(e[1] for e in events if e[0] == "done") == list(range(nb))


def test_without_overlap_all_launches_follow_backward():
    (events, nb), _ = spawn_ranks(cases.event_order, 2, timeout=120, args=(False,))
    kinds = [e[0] for e in events]
    first_launch = kinds.index("launch")
    assert all(k != "ready" for k in kinds[first_launch:]), events


def test_unused_parameter_error_names_it_and_find_unused_works():
    errs = spawn_ranks(cases.unused_param, 2, timeout=120, args=(False,))
    for e in errs:
        assert isinstance(e, str) and "unused.weight" in e and "find_unused_parameters=True" in e, e
    ok = spawn_ranks(cases.unused_param, 2, timeout=120, args=(True,))
    assert all(isinstance(v, float) for v in ok) and ok[0] == ok[1]


def test_model_mismatch_between_ranks_is_refused():
    msgs = spawn_ranks(cases.mismatched_model, 2, timeout=120)
    for m in msgs:
        assert "differs between ranks" in m and "fc1.weight" in m, m


def test_single_rank_group_is_a_real_group():
    params, _ = spawn_ranks(cases.ddp_params, 1, timeout=120)[0]
    # world 1: the rank's slice is the whole batch
    _close(params, cases.reference_params(1), rtol=1e-6, atol=1e-7)


def test_remove_hooks_stops_gradient_averaging():
    (s0, local0), (s1, local1) = spawn_ranks(cases.grads_after_remove_hooks, 2, timeout=120)
    assert s0 == pytest.approx(s1, rel=1e-6)          # averaged while attached
    assert local0 != pytest.approx(local1, rel=1e-3)  # each rank's own gradient after
    assert s0 == pytest.approx((local0 + local1) / 2, rel=1e-5)


def test_fp16_overflow_is_detected_and_resent_in_fp32():
    (got0, local0, counts), (got1, local1, _) = spawn_ranks(cases.fp16_overflow_grads, 2,
                                                           timeout=120)
    assert counts.get("fp32-resend", 0) >= 1, counts
    for name in got0:
        assert np.isfinite(got0[name]).all(), name
        np.testing.assert_array_equal(got0[name], got1[name], err_msg=name)
        np.testing.assert_allclose(got0[name], (local0[name] + local1[name]) / 2,
                                   rtol=1e-5, atol=1e-2, err_msg=name)
