"""The engine's half of the whole-job timeline (``DEEPSEEK_TIMELINE=path``).

``install()`` (run once when the engine is first loaded with the variable set:
``deepseek/_api.py``; call it yourself to start earlier or from a thread of your
choice) starts a profile that stays on for the life of the process in the calling
thread, and adds its compute (ops, backward nodes, ``record_function`` ranges,
optimizer steps) and data-loading events to ``collectives.trace``'s per-rank
timeline, which records the collectives itself, aligns the clocks through the store
and writes/merges the files (see collectives/trace.py). With
``DEEPSEEK_STRAGGLER_REPORT=N`` it also starts the every-N-steps straggler report
(:mod:`deepseek.profiler.straggler`).
"""
from ..collectives import trace as _trace
from . import profiler as _p

_prof = None


def _source(prof):
    def events():
        out = []
        for name, cat, _tid, t0, t1, *_ in prof.raw_events():
            if cat in ("collective", "p2p", "step"):
                continue  # the timeline records collectives itself (with p2p ops)
            tid = _trace.TID_DATA if cat == "dataloader" else _trace.TID_COMPUTE
            out.append((name, cat, tid, t0, t1, None))
        return out
    return events


def install():
    """Start recording this process's compute and data events into the timeline;
    returns the profile (None when DEEPSEEK_TIMELINE is unset)."""
    global _prof
    if _prof is not None:
        return _prof
    tl = _trace.timeline()
    if tl is None:
        return None
    # host events only: the timeline reads raw events and never resolves CUDA events,
    # so device timing would cost two events per GPU op for the life of the process
    prof = _p.profile(activities=[_p.ProfilerActivity.CPU])
    prof.start()
    tl.sources.append(_source(prof))
    _prof = prof
    from .. import env as _env
    every = _env.get("DEEPSEEK_STRAGGLER_REPORT")
    if every:
        from . import straggler
        straggler.install(tl, every)
    return prof


def uninstall():
    global _prof
    if _prof is not None:
        _prof.stop()
        _prof = None
