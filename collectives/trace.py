"""Collective events, per-rank timelines, clock alignment and merging (stdlib only).

Three parts:

- **The hook.** ``sink`` is None unless something listens; ``ProcessGroup`` tests it
  once per collective (a module global) and, when set, calls it with one dict per
  finished collective: ``op, group, seq, bytes, algorithm, backend, transport, rank,
  t0, t1`` (``time.perf_counter_ns``). ``add_sink`` / ``remove_sink`` manage
  listeners (the profiler, the timeline).
- **The per-rank timeline** (``DEEPSEEK_TIMELINE=path``): when the default group is
  built, every rank measures its clock's offset to rank 0's through the store
  (ping-pong, the sample with the smallest round trip wins; the half round trip is
  the error bound), records its collectives (and whatever the engine adds through
  ``Timeline.add``: compute, data loading), and when the default group is destroyed
  (or at exit) writes ``<path>.rank<N>.json``. Rank 0 then waits (bounded) for the
  other ranks' files and merges them into ``path``.
- **Merging** (``merge(path)``; ``python -m deepseek.collectives.trace PATH``; the launcher
  calls it after the workers exit): one Chrome-trace / Perfetto JSON, one process
  row per rank (``pid`` = rank), threads ``compute`` (1), ``communication`` (2) and
  ``data loading`` (3), every timestamp moved onto rank 0's clock.
"""
import atexit
import glob
import json
import os
import sys
import threading
import time

now = time.perf_counter_ns

sink = None
_sinks = []
_lock = threading.Lock()

TID_COMPUTE, TID_COMM, TID_DATA, TID_OTHER = 1, 2, 3, 4
THREAD_NAMES = {TID_COMPUTE: "compute", TID_COMM: "communication",
                TID_DATA: "data loading", TID_OTHER: "other"}


def _fanout(ev):
    for s in tuple(_sinks):
        s(ev)


def _refresh():
    global sink
    sink = None if not _sinks else (_sinks[0] if len(_sinks) == 1 else _fanout)


def add_sink(fn):
    """Call ``fn(event_dict)`` after every collective of this process."""
    with _lock:
        _sinks.append(fn)
        _refresh()


def remove_sink(fn):
    with _lock:
        if fn in _sinks:
            _sinks.remove(fn)
        _refresh()


def nbytes_of_sig(sig):
    """Bytes of a ProcessGroup signature dict (shape, dtype), 0 if unknown."""
    try:
        if callable(sig):
            sig = sig()
        if not sig or "shape" not in sig:
            return 0
        n = 1
        for d in sig["shape"]:
            n *= int(d)
        dt = str(sig.get("dtype", "float32"))
        size = {"float64": 8, "int64": 8, "uint64": 8, "complex64": 8, "float32": 4,
                "int32": 4, "uint32": 4, "float16": 2, "bfloat16": 2, "int16": 2,
                "uint16": 2, "int8": 1, "uint8": 1, "bool": 1, "complex128": 16}.get(dt, 4)
        return n * size
    except Exception:  # noqa: BLE001 - tracing never breaks a collective
        return 0


def emit_p2p(pg, op, seq, nbytes, peer, tag, issued, t0):
    """Tell the listeners about one finished point-to-point op of group ``pg``
    (``send``/``recv``; ``peer`` is the other side's global rank, ``seq`` the group's
    p2p sequence number). Its dict has ``peer`` and ``tag`` on top of a collective's
    keys: listeners file it as ``p2p``, not as a collective all ranks run."""
    s = sink
    if s is None:
        return
    s({"op": op, "group": pg.name, "seq": seq, "bytes": nbytes, "algorithm": "p2p",
       "backend": pg.backend, "transport": pg.transport, "rank": pg.global_rank,
       "peer": peer, "tag": tag, "issued": issued, "t0": t0, "t1": now()})


def category(ev):
    """``"p2p"`` for a point-to-point event dict, else ``"collective"``."""
    return "p2p" if "peer" in ev else "collective"


# ------------------------------------------------------------------ clock alignment
def align_clock(store, rank, world_size, prefix, rounds=8, timeout=60.0):
    """Offset (ns) to add to this rank's ``perf_counter_ns`` to get rank 0's, and its
    error bound (half the best round trip), measured through the store. Every rank of
    the world calls it at the same point. Rank 0 answers each other rank in turn."""
    if world_size <= 1:
        return 0, 0
    key = f"{prefix}/clock"
    if rank == 0:
        for r in range(1, world_size):
            for i in range(rounds):
                store.get(f"{key}/ping/{r}/{i}", timeout=timeout)
                store.set(f"{key}/pong/{r}/{i}", str(now()))
        return 0, 0
    best = None
    for i in range(rounds):
        t0 = now()
        store.set(f"{key}/ping/{rank}/{i}", str(t0))
        t_ref = int(store.get(f"{key}/pong/{rank}/{i}", timeout=timeout))
        t1 = now()
        rtt = t1 - t0
        if best is None or rtt < best[0]:
            best = (rtt, t_ref - (t0 + t1) // 2)
    for i in range(rounds):
        for k in (f"{key}/ping/{rank}/{i}", f"{key}/pong/{rank}/{i}"):
            try:
                store.delete(k)
            except Exception:  # noqa: BLE001
                pass
    return best[1], best[0] // 2


# ------------------------------------------------------------------ per-rank timeline
class Timeline:
    """The events of this rank, in local ``perf_counter_ns`` (written with the offset)."""

    def __init__(self, path):
        self.path = path
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.offset_ns = 0
        self.offset_err_ns = 0
        self.events = []  # (name, cat, tid, t0, t1, args)
        self.sources = []  # callables returning more such tuples at write time
        self.written = False
        self._elock = threading.Lock()

    def add(self, name, cat, tid, t0, t1, args=None):
        self.events.append((name, cat, tid, t0, t1, args))

    def collective(self, ev):
        self.events.append((ev["op"], category(ev), TID_COMM, ev["t0"], ev["t1"],
                            {k: v for k, v in ev.items() if k not in ("t0", "t1")}))

    def rank_path(self, rank=None):
        return part_path(self.path, self.rank if rank is None else rank)

    def write(self):
        """Write ``<path>.rank<N>.json`` (once)."""
        with self._elock:
            if self.written:
                return self.rank_path()
            self.written = True
        evs = list(self.events)
        for src in self.sources:
            try:
                evs.extend(src())
            except Exception as e:  # noqa: BLE001
                sys.stderr.write(f"deepseek timeline: a source failed: {e}\n")
        doc = {"rank": self.rank, "world_size": self.world_size, "pid": os.getpid(),
               "host": os.uname().nodename, "offset_ns": self.offset_ns,
               "offset_err_ns": self.offset_err_ns,
               "events": [list(e) for e in evs]}
        p = self.rank_path()
        d = os.path.dirname(os.path.abspath(p))
        os.makedirs(d, exist_ok=True)
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, p)
        return p


_timeline = None


def part_path(path, rank):
    return f"{path}.rank{rank}.json"


def timeline():
    """This process's Timeline (``DEEPSEEK_TIMELINE``), created on first use; None
    when the variable is unset."""
    global _timeline
    if _timeline is None:
        from .. import env as envvars
        path = envvars.get("DEEPSEEK_TIMELINE")
        if not path:
            return None
        with _lock:
            if _timeline is None:
                t = Timeline(path)
                _timeline = t
                atexit.register(_at_exit)
        add_sink(_timeline.collective)
    return _timeline


def _at_exit():
    t = _timeline
    if t is not None and not t.written:
        try:
            t.write()
        except Exception as e:  # noqa: BLE001
            sys.stderr.write(f"deepseek timeline: could not write rank file: {e}\n")


def on_default_group(pg):
    """Called by ProcessGroup when the default group is built (every rank)."""
    t = timeline()
    if t is None:
        return
    t.rank, t.world_size = pg.rank, pg.size
    if pg.size > 1 and pg.store is not None:
        t.offset_ns, t.offset_err_ns = align_clock(pg.store, pg.rank, pg.size,
                                                   pg.prefix + "/timeline")
    t.group = pg


def on_default_destroy(pg, wait=30.0):
    """Called by ProcessGroup.destroy of the default group: write this rank's file;
    rank 0 then waits for the others' (through the store) and merges them."""
    t = _timeline
    if t is None or t.written:
        return
    t.write()
    store = pg.store
    if pg.size > 1 and store is not None:
        try:
            store.set(f"{pg.prefix}/timeline/written/{pg.rank}", "1")
            if pg.rank == 0:
                store.wait([f"{pg.prefix}/timeline/written/{r}" for r in range(pg.size)],
                           timeout=wait)
        except Exception as e:  # noqa: BLE001 - merge what is there
            sys.stderr.write(f"deepseek timeline: waiting for ranks: {e}\n")
    if pg.rank == 0:
        try:
            s = merge(t.path, pg.size)
            if pg.size > 1:
                sys.stderr.write(f"deepseek timeline: {format_clock_offsets(s)}\n"
                                 + format_straggler_report(s["stragglers"]) + "\n")
        except Exception as e:  # noqa: BLE001
            sys.stderr.write(f"deepseek timeline: merge failed: {e}\n")


# ------------------------------------------------------------------ merging
def merge(path, world_size=None, parts=None):
    """Merge the rank files of ``path`` into one Chrome-trace JSON at ``path``.

    ``world_size``: expect ranks 0..N-1 (missing ones are listed in the metadata);
    default: whatever ``<path>.rank*.json`` exist. Returns a summary dict (ranks,
    events, offsets and their error bounds in ns)."""
    if parts is None:
        if world_size is not None:
            parts = [part_path(path, r) for r in range(world_size)]
        else:
            parts = sorted(glob.glob(glob.escape(path) + ".rank*.json"),
                           key=lambda p: int(p.rsplit(".rank", 1)[1].split(".")[0]))
    docs, missing = [], []
    for p in parts:
        try:
            with open(p) as f:
                docs.append(json.load(f))
        except (OSError, ValueError):
            missing.append(p)
    if not docs:
        raise FileNotFoundError(f"no timeline rank files for {path} ({missing})")
    t_min = min((e[3] + d["offset_ns"] for d in docs for e in d["events"]), default=0)
    out = []
    for d in docs:
        r = d["rank"]
        clock = "" if r == 0 else \
            f", clock {d['offset_ns'] / 1e3:+.1f} us +- {d['offset_err_ns'] / 1e3:.1f} us"
        out.append({"name": "process_name", "ph": "M", "pid": r, "tid": 0,
                    "args": {"name": f"rank {r} ({d.get('host', '?')} pid {d.get('pid')}"
                                     f"{clock})"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": r, "tid": 0,
                    "args": {"sort_index": r}})
        for tid, tname in THREAD_NAMES.items():
            out.append({"name": "thread_name", "ph": "M", "pid": r, "tid": tid,
                        "args": {"name": tname}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": r, "tid": tid,
                        "args": {"sort_index": tid}})
        off = d["offset_ns"]
        for name, cat, tid, t0, t1, args in d["events"]:
            ev = {"name": name, "cat": cat, "ph": "X", "pid": r, "tid": tid,
                  "ts": round((t0 + off - t_min) / 1e3, 3),
                  "dur": round(max(t1 - t0, 0) / 1e3, 3)}
            if args:
                if "issued" in args:  # onto the common clock (us), like ts
                    args = dict(args, issued=round((args["issued"] + off - t_min) / 1e3, 3))
                ev["args"] = args
            out.append(ev)
    flows = link_p2p(out)
    summary = {"ranks": [d["rank"] for d in docs], "missing": missing, "p2p_links": flows,
               "events": sum(len(d["events"]) for d in docs),
               "offset_ns": {d["rank"]: d["offset_ns"] for d in docs},
               "offset_err_ns": {d["rank"]: d["offset_err_ns"] for d in docs}}
    rep = straggler_report({"traceEvents": out})
    summary["stragglers"] = rep
    doc = {"traceEvents": out, "displayTimeUnit": "ms",
           "metadata": {"deepseek_timeline": summary}}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    return summary


def link_p2p(events):
    """Pair each merged ``send`` with the ``recv`` that took its message (the k-th send
    from rank a to b with tag t in a group is the k-th such recv on b) and append a
    Chrome-trace flow (``ph`` s/f: an arrow in Perfetto and in deepseek's viewer) from
    the send's start to the recv's end; both events get ``args.flow``. Returns the
    number of pairs."""
    sends, recvs = {}, {}
    for e in events:
        if e.get("cat") != "p2p" or e.get("ph") != "X":
            continue
        a = e.get("args") or {}
        if e["name"] == "send":
            sends.setdefault((a.get("group"), e["pid"], a.get("peer"), a.get("tag")),
                             []).append(e)
        elif e["name"] == "recv":
            recvs.setdefault((a.get("group"), a.get("peer"), e["pid"], a.get("tag")),
                             []).append(e)
    n = 0
    for key, ss in sends.items():
        for snd, rcv in zip(sorted(ss, key=lambda e: e["ts"]),
                            sorted(recvs.get(key, ()), key=lambda e: e["ts"])):
            n += 1
            snd["args"]["flow"] = rcv["args"]["flow"] = n
            events.append({"name": "p2p", "cat": "p2p", "ph": "s", "id": n,
                           "pid": snd["pid"], "tid": snd["tid"], "ts": snd["ts"]})
            events.append({"name": "p2p", "cat": "p2p", "ph": "f", "bp": "e", "id": n,
                           "pid": rcv["pid"], "tid": rcv["tid"],
                           "ts": round(rcv["ts"] + max(rcv["dur"] - 0.001, 0), 3)})
    return n


# ------------------------------------------------------------------ stragglers
def _pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return 0.0
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[i]


def straggler_report(trace, threshold=0.2):
    """Who arrives last at the collectives, from a merged timeline (dict or path).

    For every collective that all ranks ran (same group and seq), a rank's arrival is
    when it issued the op (``args.issued``, else the event's start); the last to
    arrive and the skew (last - first arrival) are counted. Per rank: how often it was
    last and its lateness (its arrival - the first) p50/p99. The step time is the
    median interval between optimizer steps (else the span over the number of
    collectives). A rank that computes x% longer than the others arrives about
    x/(1+x) of a step late, so its slowdown is ``late_p50 / (step - late_p50)``; it is
    flagged above ``threshold`` (20%) when it also arrived last at most collectives.
    Returns a dict; ``format_straggler_report`` prints it."""
    if isinstance(trace, str):
        with open(trace) as f:
            trace = json.load(f)
    by_key, ranks, opt = {}, set(), {}
    for e in trace["traceEvents"]:
        if e.get("ph") != "X":
            continue
        if e.get("cat") == "optimizer":
            opt.setdefault(e["pid"], []).append(e["ts"])
        if e.get("cat") != "collective":
            continue
        a = e.get("args", {})
        arr = a.get("issued", e["ts"])
        by_key.setdefault((a.get("group"), a.get("seq"), e["name"]), {})[e["pid"]] = arr
        ranks.add(e["pid"])
    ranks = sorted(ranks)
    full = [v for v in by_key.values() if len(v) == len(ranks)]
    last = {r: 0 for r in ranks}
    late = {r: [] for r in ranks}
    skews = []
    for v in full:
        first = min(v.values())
        lr = max(v, key=v.get)
        last[lr] += 1
        skews.append(v[lr] - first)
        for r, t in v.items():
            late[r].append(t - first)
    steps = []
    for ts in opt.values():
        ts.sort()
        steps += [b - a for a, b in zip(ts, ts[1:])]
    if steps:
        step = _pct(steps, 50)
    else:
        arr = sorted(t for v in full for t in v.values())
        step = (arr[-1] - arr[0]) / max(len(full), 1) if arr else 0.0
    ranks_out, flagged = {}, []
    for r in ranks:
        lp50 = _pct(late[r], 50)
        slower = lp50 / (step - lp50) if step > lp50 else (float("inf") if lp50 > 0 else 0.0)
        ranks_out[r] = {"last": last[r], "late_p50_us": round(lp50, 1),
                        "late_p99_us": round(_pct(late[r], 99), 1),
                        "slower": round(slower, 3) if slower != float("inf") else 1e9}
        if len(ranks) > 1 and slower > threshold and full and last[r] > len(full) / 2:
            flagged.append(r)
    return {"collectives": len(full), "step_us": round(step, 1),
            "skew_p50_us": round(_pct(skews, 50), 1),
            "skew_p99_us": round(_pct(skews, 99), 1), "ranks": ranks_out,
            "flagged": flagged, "threshold": threshold}


def format_clock_offsets(summary):
    """The measured clock offsets of a merge summary (or the merged file's metadata) as
    one line: ``clock offsets vs rank 0: rank 1 +12.3 us +- 4.1 us, ...`` (offset added
    to a rank's clock to get rank 0's, +- its error bound: half the best store round
    trip of the start-up ping-pong)."""
    off = {int(k): v for k, v in summary.get("offset_ns", {}).items()}
    err = {int(k): v for k, v in summary.get("offset_err_ns", {}).items()}
    others = sorted(r for r in off if r != 0)
    if not others:
        return "clock offsets vs rank 0: no other rank"
    parts = [f"rank {r} {off[r] / 1e3:+.1f} us +- {err.get(r, 0) / 1e3:.1f} us" for r in others]
    return ("clock offsets vs rank 0 (measured through the store at start-up): "
            + ", ".join(parts))


def format_straggler_report(rep):
    """The report of :func:`straggler_report` as lines of text."""
    if not rep["collectives"]:
        return "straggler report: no collective ran on every rank"
    lines = [f"straggler report: {rep['collectives']} collectives, step {rep['step_us'] / 1e3:.2f} "
             f"ms, arrival skew p50 {rep['skew_p50_us'] / 1e3:.2f} ms, p99 "
             f"{rep['skew_p99_us'] / 1e3:.2f} ms"]
    for r, v in sorted(rep["ranks"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"  rank {r}: last {v['last']}x, late p50 {v['late_p50_us'] / 1e3:.2f} ms "
                     f"p99 {v['late_p99_us'] / 1e3:.2f} ms, about {100 * v['slower']:.0f}% "
                     f"slower than the first to arrive")
    for r in rep["flagged"]:
        lines.append(f"  STRAGGLER: rank {r} is consistently more than "
                     f"{100 * rep['threshold']:.0f}% slower than the other ranks")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write("usage: python -m deepseek.collectives.trace PATH [WORLD_SIZE]\n"
                         "merges PATH.rank<N>.json into one Chrome trace at PATH\n")
        return 2
    s = merge(argv[0], int(argv[1]) if len(argv) > 1 else None)
    print(json.dumps({k: s[k] for k in ("ranks", "missing", "events", "offset_ns",
                                        "offset_err_ns")}))
    sys.stderr.write(format_clock_offsets(s) + "\n" + format_straggler_report(s["stragglers"])
                     + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
