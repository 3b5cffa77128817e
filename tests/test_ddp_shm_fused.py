"""The fp16 hook's reduction inside shared memory (deepseek/distributed/shm_fused.py,
native/src/dsn_wire.c wire_sym_reduce) on real processes."""
import numpy as np
import pytest

import ddp_cases as cases
from deepseek import native
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not hasattr(getattr(native, "_ext", None), "wire_sym_reduce"),
                                 reason="native kernels not built")]

BLOCK = 2048  # elements per block of the C kernel (WIRE_BLK)


@pytest.mark.parametrize("world", [2, 3])
def test_fused_reduction_is_the_cast_allreduce_decode_sequence(world):
    results = spawn_ranks(cases.shm_fused_reduce, world, timeout=120)
    for out in results:
        got, bound, fell, ref, exact, mag = out["plain"]
        assert not fell
        np.testing.assert_array_equal(got, ref)  # bit for bit the three-pass sequence
        assert bound == mag                      # max over elements of sum_r |g_r|
        got, bound, fell, ref, exact, mag = out["fp32"]
        assert not fell
        np.testing.assert_array_equal(got, ref)
        # an overflowing block is the exact fp32 average, the others stay fp16-rounded
        got, bound, fell, ref, exact, mag = out["overflow"]
        assert fell and np.isfinite(got).all()
        np.testing.assert_array_equal(got[:BLOCK], exact[:BLOCK])
        np.testing.assert_array_equal(got[BLOCK:], ref[BLOCK:])
        assert not np.isfinite(ref[:BLOCK]).all()  # the three-pass sequence overflowed
    for out in results[1:]:
        for case in out:
            np.testing.assert_array_equal(out[case][0], results[0][case][0])


def test_overflow_in_ddp_falls_back_to_fp32_and_relearns_the_scale():
    # hidden 256: the big buckets are in symmetric memory, above the fused crossover
    (got0, local0, counts), (got1, local1, _) = spawn_ranks(cases.fp16_overflow_grads, 2,
                                                           timeout=120, kwargs={"hid": 256})
    assert counts.get("fp32-fallback", 0) >= 1, counts
    assert counts.get("fp16", 0) >= 1, counts  # step 2 went in fp16
    for name in got0:
        assert np.isfinite(got0[name]).all(), name
        np.testing.assert_array_equal(got0[name], got1[name], err_msg=name)
        exact = (local0[name] + local1[name]) / 2
        # fallback blocks are exact; any other block is fp16-rounded against the bound
        np.testing.assert_allclose(got0[name], exact, rtol=2e-3,
                                   atol=2e-3 * float(np.abs(exact).max()), err_msg=name)


def test_the_pass_runs_when_the_collective_is_done_not_when_it_is_waited_for():
    # soon_after queues the fused pass (and the decode of a wire buffer) on the pass
    # thread from the collective's completion, so with overlap_comm it runs during the
    # rest of backward; wait() gives its result, and its error
    import threading
    from deepseek.collectives.work import Work, completed_work
    from deepseek.distributed.shm_fused import soon_after
    ran = threading.Event()
    pending = Work("a collective")
    wait = soon_after(pending, lambda: (ran.set(), threading.current_thread().name)[1])
    assert not ran.is_set()
    pending._finish()
    assert ran.wait(10)  # nobody waited for it
    assert wait() == "deepseek-ddp-decode"
    failing = soon_after(completed_work("done"), lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing()
