"""Hang reports: what every rank is doing when a collective times out.

When a collective times out on some rank, that rank writes its report (pending op and
Python stacks of all threads) to the store under ``<job prefix>/hang/<rank>`` and sets
``<job prefix>/hang/request``. Every process runs a light watchdog thread that checks
for the request (one store round trip per ``DEEPSEEK_HANG_POLL`` seconds, default 1)
and then writes its own report -- including "not in any collective" and where its main
thread is -- so one place holds the whole picture. :func:`collect_report` formats it
(the launcher prints it; tests read it).
"""
import json
import os
import sys
import threading
import time
import traceback

from .. import env as envvars

_pending = {}  # group name -> (op, seq, started) of the op running now
_lock = threading.Lock()


def set_pending(group, op, seq):
    # hot path (twice per collective): single dict operations are atomic under the GIL
    if op is None:
        _pending.pop(group, None)
    else:
        _pending[group] = (op, seq, time.time())


def _stacks():
    frames = sys._current_frames()
    out = []
    for t in threading.enumerate():
        f = frames.get(t.ident)
        if f is None or t.name.startswith("deepseek-hang"):
            continue
        stack = traceback.extract_stack(f)
        while len(stack) > 1 and stack[-1].filename == __file__:
            stack.pop()  # the reporting itself (the thread that writes the report)
        out.append(f"Thread {t.name!r}:\n" + "".join(traceback.format_list(stack)))
    return "\n".join(out)


def my_report(rank, error=None):
    with _lock:
        pend = {g: {"op": o, "seq": s, "for_s": round(time.time() - t0, 1)}
                for g, (o, s, t0) in list(_pending.items())}
    return {"rank": rank, "pid": os.getpid(), "pending": pend, "error": error,
            "stack": _stacks(), "time": time.time()}


def write_report(store, prefix, rank, error=None, request=True):
    """Write this rank's report and (``request``) ask every other rank for theirs."""
    try:
        store.set(f"{prefix}/hang/{rank}", json.dumps(my_report(rank, error)))
        if request:
            store.set(f"{prefix}/hang/request", "1")
    except Exception:  # noqa: BLE001 - reporting must never mask the real error
        pass


class Watchdog:
    """Daemon thread: on a hang request, write this rank's report once. ``interval``
    (seconds, default ``DEEPSEEK_HANG_POLL``): time between checks; 0 starts no thread."""

    def __init__(self, store, prefix, rank, interval=None):
        self.store, self.prefix, self.rank = store, prefix, rank
        self.interval = envvars.get("DEEPSEEK_HANG_POLL") if interval is None \
            else float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"deepseek-hang-{rank}",
                                        daemon=True)
        if self.interval > 0:  # 0 would be a busy loop: 0 means "no watchdog"
            self._thread.start()

    def _loop(self):
        key = f"{self.prefix}/hang/request"
        while not self._stop.wait(self.interval):
            try:
                if self.store.check([key]):
                    mine = f"{self.prefix}/hang/{self.rank}"
                    if not self.store.check([mine]):
                        self.store.set(mine, json.dumps(my_report(self.rank)))
                    return
            except Exception:  # noqa: BLE001 - store gone: the job is ending
                return

    def stop(self):
        self._stop.set()


CURRENT_KEY = "deepseek/pg/current"  # JSON {"prefix", "world_size"} of the live job


def publish_job(store, prefix, world_size):
    """Rank 0 records where this job's reports go (for the launcher)."""
    store.set(CURRENT_KEY, json.dumps({"prefix": prefix, "world_size": world_size}))


def collect_job_report(store, wait=2.0):
    """For a launcher that hosts the store: the hang report of the job's current
    process group, or None when no rank asked for one (no collective timed out)."""
    if not store.check([CURRENT_KEY]):
        return None
    job = json.loads(store.get(CURRENT_KEY))
    if not store.check([f"{job['prefix']}/hang/request"]):
        return None
    return collect_report(store, job["prefix"], job["world_size"], wait)


def collect_report(store, prefix, world_size, wait=0.0):
    """The job's hang report as text (``wait``: seconds to give late ranks)."""
    keys = [f"{prefix}/hang/{r}" for r in range(world_size)]
    deadline = time.time() + wait
    while True:
        missing = store.missing(keys)
        if not missing or time.time() >= deadline:
            break
        time.sleep(0.1)
    lines = [f"deepseek hang report ({world_size} ranks)"]
    for r, k in enumerate(keys):
        if k in missing:
            lines.append(f"rank {r}: no report (process dead or stuck outside Python)")
            continue
        rep = json.loads(store.get(k))
        if rep["pending"]:
            where = "; ".join(f"{v['op']} seq {v['seq']} in group {g!r} for {v['for_s']}s"
                              for g, v in rep["pending"].items())
        else:
            where = "not in any collective"
        lines.append(f"rank {r} (pid {rep['pid']}): {where}"
                     + (f"\n  error: {rep['error']}" if rep.get("error") else ""))
        lines.append("  " + rep["stack"].replace("\n", "\n  "))
    return "\n".join(lines)
