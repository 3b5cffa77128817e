"""The recorder behind ``deepseek.profiler`` (PyTorch's ``torch.profiler`` shape).

What is recorded, each as one event with a start and an end (``time.perf_counter_ns``,
the clock ``collectives.trace`` aligns across ranks):

- every op, at the one dispatch point: a ``DispatchMode`` (``_ProfMode``) times
  ``fn.apply``; an op that records a graph node also gets its backward timed, as an
  event named like PyTorch's (``AddmmBackward0``), by a per-node ``run_backward``
  wrapper (an instance attribute on the node, dropped with it);
- ``record_function("name")`` ranges, and one ``ProfilerStep#N`` range per step;
- ``Optimizer.step`` (``deepseek.optim.optimizer._step_hook``);
- DataLoader waits (``deepseek.data.dataloader._wait_hook``);
- every collective (``collectives.trace.sink``): op, group, seq, bytes, algorithm,
  backend, transport.

When nothing profiles, none of this costs anything beyond the engine's own None /
False checks: the mode is only entered while a profile is recording, and the hooks
are module globals that are None otherwise.

Self time = an event's duration minus that of the events directly inside it (ops are
leaves: an op's inner ops run below the profiler's mode; ranges contain ops).
"""
import enum
import json
import os
import threading
import time

from ..autograd.dispatch_mode import DispatchMode as _DispatchMode

_ns = time.perf_counter_ns

# the recording profiles (all threads); hooks fan out to them
_recording = []
_tls = threading.local()


class ProfilerActivity(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"


class ProfilerAction(enum.Enum):
    NONE = 0
    WARMUP = 1
    RECORD = 2
    RECORD_AND_SAVE = 3


def schedule(*, wait, warmup, active, repeat=0, skip_first=0):
    """PyTorch's ``torch.profiler.schedule``: step -> ProfilerAction. After
    ``skip_first`` steps, cycles of ``wait`` idle, ``warmup`` (recorded, discarded)
    and ``active`` recorded steps, the last of which hands the trace to
    ``on_trace_ready``; ``repeat`` cycles (0: forever)."""
    if wait < 0 or warmup < 0 or active < 1 or repeat < 0 or skip_first < 0:
        raise ValueError("schedule: wait, warmup, repeat, skip_first >= 0 and active >= 1")

    def fn(step):
        if step < skip_first:
            return ProfilerAction.NONE
        step -= skip_first
        cycle = wait + warmup + active
        if repeat and step >= cycle * repeat:
            return ProfilerAction.NONE
        pos = step % cycle
        if pos < wait:
            return ProfilerAction.NONE
        if pos < wait + warmup:
            return ProfilerAction.WARMUP
        return ProfilerAction.RECORD_AND_SAVE if pos == cycle - 1 else ProfilerAction.RECORD
    return fn


def tensorboard_trace_handler(dir_name, worker_name=None):
    """An ``on_trace_ready`` that writes ``<dir>/<worker>.<n>.pt.trace.json``."""
    os.makedirs(dir_name, exist_ok=True)
    count = [0]

    def handler(prof):
        name = worker_name or f"{os.uname().nodename}_{os.getpid()}"
        count[0] += 1
        prof.export_chrome_trace(os.path.join(dir_name, f"{name}.{count[0]}.pt.trace.json"))
    return handler


# ---------------------------------------------------------------- naming, FLOPs
_NAMES = {}  # fn_cls -> (forward name, backward name)


def _camel(name):
    return "".join(p[:1].upper() + p[1:] for p in name.split("_") if p)


def op_names(fn):
    """(forward event name, backward event name) of Function class ``fn``."""
    got = _NAMES.get(fn)
    if got is None:
        from ..ops import registry
        entries = registry.entries_of(fn)
        own = [e for e in entries if e.functions and e.functions[0] is fn]
        name = (own or entries)[0].name if entries else fn.__name__.lower()
        # PyTorch's linear is addmm (x @ W.T + b) in the autograd graph
        bwd = "AddmmBackward0" if name == "linear" else _camel(name) + "Backward0"
        got = _NAMES[fn] = ("deepseek::" + name, bwd)
    return got


def _prod(s):
    n = 1
    for d in s:
        n *= d
    return n


def op_flops(name, in_shapes, out_shapes):
    """Floating-point operations of one call (multiply-add = 2), for the op kinds
    whose cost is dominated by products: matmul family, linear, conv, attention.
    0 for others (as PyTorch's ``with_flops``)."""
    base = name.split("::")[-1]
    try:
        if base in ("matmul", "mm", "bmm", "addmm", "linear") and in_shapes and out_shapes:
            a = in_shapes[0]
            k = a[-1] if a else 1
            return 2 * _prod(out_shapes[0]) * k
        if base.startswith("conv") and len(in_shapes) >= 2 and out_shapes:
            w = in_shapes[1]
            return 2 * _prod(out_shapes[0]) * _prod(w[1:])
        if base == "scaled_dot_product_attention" and len(in_shapes) >= 3:
            q, k = in_shapes[0], in_shapes[1]
            # q k^T and (softmax) @ v: 2 * (2 * B*H*L*S*D)
            return 4 * _prod(q[:-1]) * k[-2] * q[-1]
    except (TypeError, IndexError):
        return 0
    return 0


def _shape_of(a):
    d = getattr(a, "_data", None)
    if d is not None:
        return tuple(d.shape)
    return ()


# ---------------------------------------------------------------- events
class FunctionEvent:
    """One recorded event. Times in ns of ``time.perf_counter_ns``."""

    __slots__ = ("name", "cat", "tid", "start_ns", "end_ns", "child_ns", "input_shapes",
                 "output_shapes", "flops", "mem", "args")

    def __init__(self, name, cat, tid, start_ns, end_ns, input_shapes=None,
                 output_shapes=None, mem=0, args=None):
        self.name, self.cat, self.tid = name, cat, tid
        self.start_ns, self.end_ns = start_ns, end_ns
        self.child_ns = 0
        self.input_shapes, self.output_shapes = input_shapes, output_shapes
        self.flops = None
        self.mem = mem
        self.args = args

    @property
    def cpu_time_total(self):
        return (self.end_ns - self.start_ns) / 1e3  # us, as PyTorch

    @property
    def self_cpu_time_total(self):
        return (self.end_ns - self.start_ns - self.child_ns) / 1e3

    def __repr__(self):
        return (f"<FunctionEvent {self.name} cat={self.cat} "
                f"{self.cpu_time_total:.1f}us>")


class _BackwardTimer:
    """Stands in for a graph node's ``run_backward`` (instance attribute) to time it."""

    __slots__ = ("prof", "ctx", "name", "fwd")

    def __init__(self, prof, ctx, name, fwd):
        self.prof, self.ctx, self.name, self.fwd = prof, ctx, name, fwd

    def __call__(self, grads):
        ctx = self.ctx
        if not self.prof._recording_now:
            return type(ctx).run_backward(ctx, grads)
        t0 = _ns()
        try:
            return type(ctx).run_backward(ctx, grads)
        finally:
            self.prof._leaf(self.name, "backward", t0, _ns(), self.fwd)


class _ProfMode(_DispatchMode):
    """The dispatch mode a recording profile enters: times each op."""

    def __init__(self, prof):
        self.prof = prof
        self.shapes = prof.record_shapes or prof.with_flops
        self.mem = prof.profile_memory

    def __dispatch__(self, fn, args, kwargs):
        t0 = _ns()
        out = fn.apply(*args, **kwargs)
        t1 = _ns()
        prof = self.prof
        names = _NAMES.get(fn) or op_names(fn)
        ins = outs = None
        mem = 0
        multi = type(out) is tuple
        if self.shapes:
            ins = [_shape_of(a) for a in args]
            outs = [_shape_of(o) for o in out] if multi else [_shape_of(out)]
        if self.mem and not fn.is_view:
            for o in (out if multi else (out,)):
                d = getattr(o, "_data", None)
                if d is not None:
                    mem += d.nbytes
        ev = prof._leaf(names[0], "cpu_op", t0, t1, None, ins, outs, mem)
        first = out[0] if multi else out
        node = getattr(first, "grad_fn", None)
        if node is not None and getattr(node, "fn", None) is fn \
                and "run_backward" not in node.__dict__:
            node.run_backward = _BackwardTimer(prof, node, names[1], ev)
        return out


class profile:
    """``with profile(...) as prof: ... prof.step()`` (PyTorch's ``torch.profiler.profile``).

    ``activities`` is accepted for compatibility (CPU is what this engine runs on;
    device kernels are timed as the ops that launch them). ``record_shapes`` keeps
    input/output shapes (``key_averages(group_by_input_shape=True)``);
    ``profile_memory`` counts the bytes of each op's outputs (views: 0);
    ``with_flops`` estimates FLOPs of matmul, linear, conv and attention;
    ``with_stack`` is accepted and ignored. ``schedule`` (see :func:`schedule`) and
    ``on_trace_ready(prof)`` as in PyTorch; without a schedule every step records.
    """

    def __init__(self, *, activities=None, schedule=None, on_trace_ready=None,
                 record_shapes=False, profile_memory=False, with_stack=False,
                 with_flops=False, with_modules=False, experimental_config=None,
                 use_cuda=None):
        self.activities = activities
        self.schedule = schedule
        self.on_trace_ready = on_trace_ready
        self.record_shapes = bool(record_shapes)
        self.profile_memory = bool(profile_memory)
        self.with_flops = bool(with_flops)
        self.with_stack = bool(with_stack)
        self.step_num = 0
        self._events = []
        self._saved = None
        self._recording_now = False
        self._mode = None
        self._step_ev = None
        self._tid_main = threading.get_ident()
        self._started = False

    # -------------------------------------------------------------- control
    def _action(self):
        return ProfilerAction.RECORD if self.schedule is None else self.schedule(self.step_num)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        self._started = True
        self._apply(self._action())

    def stop(self):
        if not self._started:
            return
        act = self._action()
        was = self._recording_now
        self._close_step()
        self._set_recording(False)
        self._started = False
        if was and act != ProfilerAction.WARMUP and \
                any(e.cat != "step" for e in self._events):
            self._saved = self._events
            if self.on_trace_ready is not None:
                self.on_trace_ready(self)

    def step(self):
        """Mark the end of one training step."""
        prev = self._action()
        self._close_step()
        self.step_num += 1
        act = self._action()
        if prev == ProfilerAction.RECORD_AND_SAVE or (
                prev == ProfilerAction.RECORD and act in (ProfilerAction.NONE,
                                                          ProfilerAction.WARMUP)):
            self._saved = self._events
            self._events = []
            if self.on_trace_ready is not None:
                self._set_recording(False)
                self.on_trace_ready(self)
        if prev == ProfilerAction.WARMUP and act != ProfilerAction.WARMUP:
            self._events = []  # warm-up events are discarded
        self._apply(act)

    def _apply(self, act):
        rec = act != ProfilerAction.NONE
        self._set_recording(rec)
        if rec:
            self._open_step()

    def _open_step(self):
        self._step_ev = (f"ProfilerStep#{self.step_num}", _ns(), len(self._events))

    def _close_step(self):
        if self._step_ev is None or not self._recording_now:
            self._step_ev = None
            return
        name, t0, _ = self._step_ev
        self._step_ev = None
        ev = FunctionEvent(name, "step", self._tid_main, t0, _ns())
        # the ops of the step are directly inside it (ranges already carry theirs)
        ev.child_ns = sum(e.end_ns - e.start_ns for e in self._events
                          if e.start_ns >= t0 and e.tid == self._tid_main
                          and getattr(e, "args", None) != "nested")
        self._events.append(ev)

    def _set_recording(self, on):
        if on == self._recording_now:
            return
        self._recording_now = on
        if on:
            self._mode = _ProfMode(self)
            self._mode.__enter__()
            _recording.append(self)
        else:
            self._mode.__exit__(None, None, None)
            self._mode = None
            if self in _recording:
                _recording.remove(self)
        _refresh_hooks()

    # -------------------------------------------------------------- recording
    def _stack(self):
        st = getattr(_tls, "stack", None)
        if st is None:
            st = _tls.stack = []
        return st

    def _leaf(self, name, cat, t0, t1, fwd=None, ins=None, outs=None, mem=0, args=None):
        tid = threading.get_ident()
        ev = FunctionEvent(name, cat, tid, t0, t1, ins, outs, mem, args)
        st = getattr(_tls, "stack", None)
        if st:
            top = st[-1]
            if top[0] is self:
                top[2] += t1 - t0
                ev.args = "nested" if args is None else args
        self._events.append(ev)
        return ev

    def _push_range(self, name, cat="user_annotation"):
        self._stack().append([self, name, 0, _ns(), cat])

    def _pop_range(self):
        st = self._stack()
        while st:
            item = st.pop()
            if item[0] is self:
                t1 = _ns()
                ev = self._leaf(item[1], item[4], item[3], t1)
                ev.child_ns = item[2]
                return

    # -------------------------------------------------------------- results
    def events(self):
        """The recorded events (the last saved trace, else what is recording)."""
        evs = self._events if (self._events or self._saved is None) else self._saved
        return list(evs)

    def key_averages(self, group_by_input_shape=False, group_by_stack_n=0):
        return _key_averages(self.events(), group_by_input_shape, self.with_flops)

    def export_chrome_trace(self, path):
        """Write the events as Chrome-trace JSON (chrome://tracing, Perfetto)."""
        pid = os.getpid()
        out = []
        tids = {}
        for e in self.events():
            tid = tids.setdefault(e.tid, len(tids))
            args = {}
            if e.input_shapes is not None:
                args["Input Dims"] = [list(s) for s in e.input_shapes]
            if e.mem:
                args["bytes"] = e.mem
            if self.with_flops:
                f = _flops_of(e)
                if f:
                    args["flops"] = f
            if isinstance(e.args, dict):
                args.update(e.args)
            out.append({"name": e.name, "cat": e.cat, "ph": "X", "pid": pid, "tid": tid,
                        "ts": e.start_ns / 1e3, "dur": (e.end_ns - e.start_ns) / 1e3,
                        "args": args})
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"name": f"deepseek {pid}"}})
        with open(path, "w") as f:
            json.dump({"traceEvents": out, "displayTimeUnit": "ms"}, f)
        return path


def _flops_of(e):
    if e.flops is None:
        e.flops = op_flops(e.name, e.input_shapes, e.output_shapes) \
            if e.cat == "cpu_op" and e.input_shapes is not None else 0
    return e.flops


# ---------------------------------------------------------------- ranges, hooks
class record_function:
    """A named range in the profile (context manager or decorator); nothing when no
    profile records."""

    def __init__(self, name, args=None):
        self.name = name
        self._profs = ()

    def __enter__(self):
        if _recording:
            self._profs = tuple(_recording)
            for p in self._profs:
                p._push_range(self.name)
        return self

    def __exit__(self, *exc):
        for p in self._profs:
            p._pop_range()
        self._profs = ()
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with record_function(self.name):
                return fn(*a, **k)
        return wrapper


def _opt_hook(opt, phase):
    if phase == 0:
        for p in list(_recording):
            p._push_range(f"Optimizer.step#{type(opt).__name__}.step", "optimizer")
    else:
        for p in list(_recording):
            p._pop_range()


def _wait_hook(loader, dt):
    t1 = _ns()
    t0 = t1 - int(dt * 1e9)
    for p in list(_recording):
        p._leaf("DataLoader.__next__ (wait)", "dataloader", t0, t1)


def _coll_sink(ev):
    for p in list(_recording):
        p._leaf(f"{ev['op']}", "collective", ev["t0"], ev["t1"],
                args={k: v for k, v in ev.items() if k not in ("t0", "t1")})


_coll_sink_on = [False]


def _refresh_hooks():
    from ..optim import optimizer as _opt
    from ..data import dataloader as _dl
    on = bool(_recording)
    _opt._step_hook = _opt_hook if on else None
    _dl._wait_hook = _wait_hook if on else None
    try:
        from ..collectives import trace as _trace
    except ImportError:  # pragma: no cover
        return
    if on and not _coll_sink_on[0]:
        _trace.add_sink(_coll_sink)
        _coll_sink_on[0] = True
    elif not on and _coll_sink_on[0]:
        _trace.remove_sink(_coll_sink)
        _coll_sink_on[0] = False


# ---------------------------------------------------------------- key_averages
class FunctionEventAvg:
    __slots__ = ("key", "count", "cpu_time_total", "self_cpu_time_total", "flops",
                 "cpu_memory_usage", "self_cpu_memory_usage", "input_shapes", "cat")

    def __init__(self, key, shapes, cat):
        self.key, self.input_shapes, self.cat = key, shapes, cat
        self.count = 0
        self.cpu_time_total = self.self_cpu_time_total = 0.0
        self.flops = 0
        self.cpu_memory_usage = self.self_cpu_memory_usage = 0

    @property
    def cpu_time(self):
        return self.cpu_time_total / self.count if self.count else 0.0

    @property
    def self_cpu_time(self):
        return self.self_cpu_time_total / self.count if self.count else 0.0

    def __repr__(self):
        return (f"<FunctionEventAvg {self.key} count={self.count} "
                f"self={self.self_cpu_time_total:.1f}us total={self.cpu_time_total:.1f}us>")


class EventList(list):
    """``key_averages()``'s result: FunctionEventAvg rows, with ``table()``."""

    def table(self, sort_by="self_cpu_time_total", row_limit=100, header=None,
              max_name_column_width=55, top_level_events_only=False):
        key = sort_by.replace("cuda", "cpu").replace("device", "cpu")
        rows = sorted(self, key=lambda r: getattr(r, key, 0) or 0, reverse=True)
        if row_limit is not None and row_limit >= 0:
            rows = rows[:row_limit]
        tot_self = sum(r.self_cpu_time_total for r in self) or 1.0
        has_shapes = any(r.input_shapes is not None for r in rows)
        has_flops = any(r.flops for r in self)
        has_mem = any(r.cpu_memory_usage for r in self)
        w = min(max([len("Name")] + [len(r.key) for r in rows]), max_name_column_width)
        cols = [("Name", w), ("Self CPU %", 11), ("Self CPU", 11), ("CPU total", 11),
                ("CPU time avg", 12)]
        if has_mem:
            cols += [("CPU Mem", 11), ("Self CPU Mem", 12)]
        cols += [("# of Calls", 10)]
        if has_flops:
            cols += [("Total MFLOPs", 13)]
        if has_shapes:
            cols += [("Input Shapes", 40)]
        sep = "-" * (sum(c[1] for c in cols) + 2 * (len(cols) - 1))

        def fmt(vals):
            return "  ".join(str(v)[:wd].ljust(wd) if i == 0 or i == len(cols) - 1 and has_shapes
                             else str(v).rjust(wd) for i, (v, (_, wd)) in enumerate(zip(vals, cols)))
        lines = [sep, fmt([c[0] for c in cols]), sep]
        for r in rows:
            vals = [r.key, f"{100 * r.self_cpu_time_total / tot_self:.2f}%",
                    _t(r.self_cpu_time_total), _t(r.cpu_time_total), _t(r.cpu_time)]
            if has_mem:
                vals += [_b(r.cpu_memory_usage), _b(r.self_cpu_memory_usage)]
            vals += [r.count]
            if has_flops:
                vals += [f"{r.flops / 1e6:.3f}" if r.flops else "--"]
            if has_shapes:
                vals += [str([list(s) for s in r.input_shapes]) if r.input_shapes else "[]"]
            lines.append(fmt(vals))
        lines += [sep, f"Self CPU time total: {_t(tot_self)}", ""]
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _t(us):
    if us >= 1e6:
        return f"{us / 1e6:.3f}s"
    if us >= 1e3:
        return f"{us / 1e3:.3f}ms"
    return f"{us:.3f}us"


def _b(n):
    for unit, s in (("Gb", 1 << 30), ("Mb", 1 << 20), ("Kb", 1 << 10)):
        if abs(n) >= s:
            return f"{n / s:.2f} {unit}"
    return f"{n} b"


def _key_averages(events, by_shape, with_flops):
    rows = {}
    for e in events:
        if e.cat == "step":
            continue
        shapes = tuple(e.input_shapes) if (by_shape and e.input_shapes is not None) else None
        k = (e.name, shapes)
        r = rows.get(k)
        if r is None:
            r = rows[k] = FunctionEventAvg(e.name, shapes, e.cat)
        r.count += 1
        r.cpu_time_total += e.cpu_time_total
        r.self_cpu_time_total += e.self_cpu_time_total
        r.cpu_memory_usage += e.mem
        r.self_cpu_memory_usage += e.mem
        if with_flops:
            r.flops += _flops_of(e)
    return EventList(rows.values())
