"""The schedules' action orders, played without processes: they never deadlock, every
microbatch runs forward and backward once per stage, 1F1B's activation bound, and the
idealised bubble against the formulas (p-1)/(m+p-1) and (p-1)/(v*m+p-1)."""
import pytest

from deepseek.distributed.pipelining import (PipelineError, bubble_formula, gpipe_order,
                                             interleaved_order, one_f_one_b_order,
                                             simulate)


def _live_peak(order):
    live = peak = 0
    for kind, _, _ in order:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 3, 4, 8, 13, 32])
def test_gpipe_and_1f1b(pp, m):
    for make in (gpipe_order, one_f_one_b_order):
        orders = [make(r, pp, m) for r in range(pp)]
        for r, o in enumerate(orders):
            assert sorted(o) == sorted([(k, r, i) for k in "FB" for i in range(m)])
        _, _, idle = simulate(orders, pp)
        for x in idle:
            assert x == pytest.approx(bubble_formula(pp, m), abs=1e-12)
    for r in range(pp):
        assert _live_peak(one_f_one_b_order(r, pp, m)) == min(pp - r, m)
        assert _live_peak(gpipe_order(r, pp, m)) == m


@pytest.mark.parametrize("pp,v", [(2, 2), (2, 3), (3, 2), (4, 2), (4, 4)])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_interleaved(pp, v, groups):
    m = groups * pp
    orders = [interleaved_order(r, pp, m, v) for r in range(pp)]
    for r, o in enumerate(orders):
        want = [(k, c * pp + r, i) for k in "FB" for c in range(v) for i in range(m)]
        assert sorted(o) == sorted(want)
    _, _, idle = simulate(orders, pp * v, 1 / v, 2 / v)
    for x in idle:
        assert x == pytest.approx(bubble_formula(pp, m, v), abs=1e-9)
    # the interleaved bubble is smaller than 1F1B's for the same m
    assert bubble_formula(pp, m, v) < bubble_formula(pp, m)


def test_simulate_finds_a_deadlock():
    # rank 1 (last stage) wants to start with a backward whose forward comes later
    orders = [[("F", 0, 0), ("B", 0, 0)], [("B", 1, 0), ("F", 1, 0)]]
    with pytest.raises(PipelineError, match="deadlock"):
        simulate(orders, 2)
