"""The straggler report every N steps (``DEEPSEEK_STRAGGLER_REPORT=N``, set by
``deepseek-run --straggler-report N``), on top of the whole-job timeline.

Every rank already records when it issued each collective (DDP's and ZeRO's bucket
collectives among them: ``args.issued``, its arrival) on a clock aligned to rank 0's
(collectives/trace.py). After every N-th optimizer step each rank posts the arrivals
and step ends of those N steps to the store; one step later every rank reads all the
posts and rank 0 prints :func:`collectives.trace.format_straggler_report` of that
window: who arrived last how often, by how much (p50/p99), and a flag on a rank
consistently > 20% slower. A window is read one step late on purpose: by then every
rank has gone through a collective of the next step, so every post is there and
reading never waits. (Every rank reads, not rank 0 alone, so that reading costs
every rank the same time: otherwise rank 0 arrives late and reports itself.) The
store holds O(world size) small posts per window; each rank reads all of them, so a
report costs the store world_size^2 reads every N steps. The end-of-job report (over the whole run) is the
timeline merge's.
"""
import json
import sys

from ..collectives import trace as _trace
from . import profiler as _p

_monitor = None


class Monitor:
    """Posts this rank's windows of N steps; rank 0 also reads and prints them."""

    def __init__(self, timeline, every, out=None):
        self.tl = timeline
        self.every = int(every)
        self.out = out or sys.stderr
        self.steps = 0
        self.read_from = 0           # index into timeline.events not yet posted
        self.step_ends = []
        self.pending = []            # windows rank 0 prints at the next step
        self.reports = []            # what rank 0 printed (for tests and callers)

    def _group(self):
        return getattr(self.tl, "group", None)

    def on_step(self):
        """Called after every optimizer step of this process."""
        pg = self._group()
        if pg is None or pg.size < 2 or pg.store is None:
            return
        tl = self.tl
        self.steps += 1
        self.step_ends.append(_trace.now() + tl.offset_ns)
        if self.pending:
            # every rank reads every post, rank 0 alone prints: the reading costs each
            # rank the same, so it does not make one of them (rank 0) the late one at
            # the next collective, which a report on rank 0 alone did (it reported
            # itself as a straggler, by the time the reading took)
            ws, self.pending = self.pending, []
            for w in ws:
                self._report(pg, w)
        if self.steps % self.every:
            return
        w = self.steps // self.every - 1
        evs = tl.events
        end = len(evs)
        arrivals = []
        for i in range(self.read_from, end):
            name, cat, _tid, t0, _t1, args = evs[i]
            if cat == "collective" and args and args.get("group") == pg.name:
                arrivals.append([name, args.get("seq"), args.get("issued", t0) + tl.offset_ns])
        self.read_from = end
        doc = {"arrivals": arrivals, "steps": self.step_ends}
        self.step_ends = self.step_ends[-1:]  # the next window's first interval
        pg.store.set(self._key(pg, w, pg.rank), json.dumps(doc))
        self.pending.append(w)

    def _key(self, pg, w, r):
        return f"{pg.prefix}/straggler/{w}/{r}"

    def _report(self, pg, w):
        keys = [self._key(pg, w, r) for r in range(pg.size)]
        try:
            vals = pg.store.multi_get(keys, timeout=5.0)
        except Exception as e:  # noqa: BLE001 - a report never breaks the job
            if pg.rank == 0:
                self.out.write(f"deepseek straggler report: steps {w * self.every + 1}-"
                               f"{(w + 1) * self.every}: not every rank posted ({e})\n")
            return
        if w >= 2:  # keep the store small (everyone has read window w - 2)
            try:
                pg.store.delete(self._key(pg, w - 2, pg.rank))
            except Exception:  # noqa: BLE001
                pass
        if pg.rank != 0:
            return
        rep = straggler_window({r: json.loads(v) for r, v in enumerate(vals)})
        rep["steps"] = [w * self.every + 1, (w + 1) * self.every]
        self.reports.append(rep)
        self.out.write(f"steps {rep['steps'][0]}-{rep['steps'][1]}: "
                       + _trace.format_straggler_report(rep) + "\n")
        self.out.flush()


def straggler_window(docs):
    """The straggler report of one window: ``docs`` maps rank -> {"arrivals":
    [[op, seq, t_ns], ...], "steps": [t_ns, ...]} (aligned clock)."""
    evs = []
    for r, d in docs.items():
        for name, seq, t in d["arrivals"]:
            evs.append({"ph": "X", "cat": "collective", "name": name, "pid": r,
                        "ts": t / 1e3, "args": {"group": "w", "seq": seq}})
        for t in d["steps"]:
            evs.append({"ph": "X", "cat": "optimizer", "name": "step", "pid": r,
                        "ts": t / 1e3})
    return _trace.straggler_report({"traceEvents": evs})


def install(timeline, every):
    """Start the every-N-steps report of this process (``deepseek.profiler.timeline``
    calls it when ``DEEPSEEK_STRAGGLER_REPORT`` is set); returns the Monitor."""
    global _monitor
    if _monitor is None:
        _monitor = Monitor(timeline, every)
        _p.add_step_listener(_monitor.on_step)
    return _monitor
