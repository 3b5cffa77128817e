"""Timing shared by the benchmark scripts: candidates timed in turn, medians."""
import statistics
import time


def interleaved_medians(fns, repeats, warmup=1, clock=time.perf_counter):
    """{name: median seconds per call} of the zero-argument callables ``fns``, timed
    one after the other in every one of ``repeats`` rounds (so load and drift on a
    shared machine hit every candidate alike), after ``warmup`` untimed calls each.
    ``clock``: wall time by default; ``time.process_time`` counts CPU time instead."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    return {k: float(statistics.median(v)) for k, v in times.items()}


def median_seconds(fn, repeats, warmup=0):
    """Median seconds of one call of the zero-argument ``fn`` over ``repeats`` timed
    calls, after ``warmup`` untimed ones (page faults, caches, lazy set-up)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
