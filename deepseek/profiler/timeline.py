"""The engine's half of the whole-job timeline (``DEEPSEEK_TIMELINE=path``).

``install()`` (run once when the engine is first loaded with the variable set:
``deepseek/_api.py``; call it yourself to start earlier or from a thread of your
choice) starts a profile that stays on for the life of the process in the calling
thread, and adds its compute (ops, backward nodes, ``record_function`` ranges,
optimizer steps) and data-loading events to ``collectives.trace``'s per-rank
timeline, which records the collectives itself, aligns the clocks through the store
and writes/merges the files (see collectives/trace.py).
"""
from ..collectives import trace as _trace
from . import profiler as _p

_prof = None


def _source(prof):
    def events():
        out = []
        for e in prof._events:
            if e.cat == "collective" or e.cat == "step":
                continue
            tid = _trace.TID_DATA if e.cat == "dataloader" else _trace.TID_COMPUTE
            out.append((e.name, e.cat, tid, e.start_ns, e.end_ns, None))
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
    prof = _p.profile()
    prof.start()
    tl.sources.append(_source(prof))
    _prof = prof
    return prof


def uninstall():
    global _prof
    if _prof is not None:
        _prof.stop()
        _prof = None
