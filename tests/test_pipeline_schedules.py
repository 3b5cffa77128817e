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


def test_measured_bubble_of_an_ideal_timeline():
    """measured_bubble on the timeline simulate's rules produce (every action as soon
    as its input exists, unit costs) gives the formula on every rank; a rank that
    idles longer shows it; no events is an error."""
    from deepseek.distributed.pipelining import measured_bubble

    pp, m, f, b = 3, 6, 1.0, 2.0
    orders = [one_f_one_b_order(r, pp, m) for r in range(pp)]
    done, clock, events = {}, [100.0] * pp, [[] for _ in range(pp)]
    pos = [0] * pp
    while any(pos[r] < len(orders[r]) for r in range(pp)):
        for r in range(pp):
            if pos[r] == len(orders[r]):
                continue
            kind, s, mb = orders[r][pos[r]]
            dep = (("F", s - 1, mb) if s > 0 else None) if kind == "F" else \
                (("B", s + 1, mb) if s < pp - 1 else ("F", s, mb))
            if dep is not None and dep not in done:
                continue
            t0 = max(clock[r], done[dep] if dep else 100.0)
            clock[r] = done[(kind, s, mb)] = t0 + (f if kind == "F" else b)
            events[r].append((kind, s, mb, t0, clock[r]))
            pos[r] += 1
    got = measured_bubble(events)
    assert got["span_s"] == pytest.approx((m + pp - 1) * (f + b))
    for x in got["bubble"]:
        assert x == pytest.approx(bubble_formula(pp, m))
    assert got["mean"] == pytest.approx(got["worst"])
    events[1] = events[1][:-1]  # rank 1 did less: it idled more
    assert measured_bubble(events)["worst"] > bubble_formula(pp, m)
    with pytest.raises(PipelineError, match="no events"):
        measured_bubble([[], []])


def test_events_share_one_clock_across_ranks(shm_guard):
    """Real processes: every rank's events() are on one time base -- stage 1's
    forward of a microbatch starts after stage 0's began, stage 0's backward after
    stage 1's -- so measured_bubble's common span is meaningful; and it is at least
    the span any one rank saw of its own compute."""
    import pp_cases as cases
    from deepseek.distributed.pipelining import measured_bubble
    from deepseek.testing.multiprocess import spawn_ranks

    m = 4
    ranks = spawn_ranks(cases.timing_runs, 2, timeout=120, args=(m,))
    for name in ("gpipe", "1f1b"):
        for step in range(2):
            ev = [r[name][step] for r in ranks]
            at = [{(k, mb): (t0, t1) for k, _, mb, t0, t1 in e} for e in ev]
            for mb in range(m):
                # (an action's time ends after its send: the peer may start just
                # before; never before the action began)
                assert at[1][("F", mb)][0] > at[0][("F", mb)][0], (name, mb)
                assert at[0][("B", mb)][0] > at[1][("B", mb)][0], (name, mb)
            got = measured_bubble(ev)
            own = max(e[-1][4] - e[0][3] for e in ev)
            assert got["span_s"] >= own and 0 < got["worst"] < 1, got
        busy, wall = ranks[0][name + "_stats"]
        assert 0 < busy <= wall
