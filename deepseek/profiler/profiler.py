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
  backend, transport;
- on the GPU (``ProfilerActivity.CUDA``, the default when cupy sees a GPU), the device
  time of every op and backward node that ran on a CUDA tensor: a second mode
  (``_DeviceProfMode``) records a CUDA event before and after each such op
  (``backend.device_event``) into a ``"device"`` mark next to the op's event; marks
  are paired with their events and the events resolved (``backend.event_elapsed_ns``)
  only when results are asked for. The CPU-only mode is left as it was: no event, no
  test, no per-op cost when not on a GPU.

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
from functools import partial as _partial

from .. import backend as _be
from ..autograd.dispatch_mode import DispatchMode as _DispatchMode

_ns = time.perf_counter_ns
_get_ident = threading.get_ident
# interned input/output shape tuples of recorded ops (see _ProfMode.__dispatch__)
_shapes = {}

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


# ---------------------------------------------------------------- events
class FunctionEvent:
    """One recorded event. Times in ns of ``time.perf_counter_ns``."""

    __slots__ = ("name", "cat", "tid", "start_ns", "end_ns", "child_ns", "input_shapes",
                 "output_shapes", "flops", "mem", "args", "device_ns", "device_start_ns")

    def __init__(self, name, cat, tid, start_ns, end_ns, input_shapes=None,
                 output_shapes=None, mem=0, args=None):
        self.name, self.cat, self.tid = name, cat, tid
        self.start_ns, self.end_ns = start_ns, end_ns
        self.child_ns = 0
        self.input_shapes, self.output_shapes = input_shapes, output_shapes
        self.flops = None
        self.mem = mem
        self.args = args
        # device (CUDA event) time: an op's or backward node's own, a range's the sum
        # of the ops inside it; device_start_ns on the host clock (None: not placed)
        self.device_ns = 0
        self.device_start_ns = None

    @property
    def cpu_time_total(self):
        return (self.end_ns - self.start_ns) / 1e3  # us, as PyTorch

    @property
    def self_cpu_time_total(self):
        return (self.end_ns - self.start_ns - self.child_ns) / 1e3

    @property
    def device_time_total(self):
        """Device time (us) of the kernels of this event (and of the events inside it)."""
        return self.device_ns / 1e3

    @property
    def self_device_time_total(self):
        """Device time (us) of this event's own kernels: 0 for a range (as PyTorch)."""
        return 0.0 if self.cat in _CONTAINERS else self.device_ns / 1e3

    cuda_time_total = device_time_total
    self_cuda_time_total = self_device_time_total

    def __repr__(self):
        return (f"<FunctionEvent {self.name} cat={self.cat} "
                f"{self.cpu_time_total:.1f}us>")


def _timed_backward(prof, name, ctx, grads):
    """A graph node's ``run_backward`` while profiled (an instance attribute, bound
    with ``functools.partial``: C-level, cheaper than a wrapper object; ``release()``
    clears the node's ``__dict__`` after backward, which drops it and the cycle)."""
    run = type(ctx).run_backward  # the class's: the instance attribute is this timer
    if not prof._recording_now:
        return run(ctx, grads)
    t0 = _ns()
    try:
        return run(ctx, grads)
    finally:
        prof._buf.append((name, "backward", _get_ident(), t0, _ns(), None, None, 0, None))


class _ProfMode(_DispatchMode):
    """The dispatch mode a recording profile enters: times each op.

    The per-op path is what the profiler costs (issue 19: < 5% on the MLP step), so it
    does the least it can: two clock reads, one tuple appended to the profile's buffer
    (no event object, no dict, no string built: names come interned from ``_NAMES``;
    ``FunctionEvent``s and self times are made when results are asked for), shapes
    only when asked, and a node's backward timer only when the op made a node."""

    def __init__(self, prof):
        from ..autograd import function as _f
        self.prof = prof
        self.shapes = prof.record_shapes or prof.with_flops
        self.mem = prof.profile_memory
        self.tensor = _f.Tensor
        # the mode is per thread (a context variable): its ops all run in this one
        self.tid = _get_ident()

    def __dispatch__(self, fn, args, kwargs):
        t0 = _ns()
        out = fn.apply(*args, **kwargs)
        t1 = _ns()
        prof = self.prof
        names = _NAMES.get(fn) or op_names(fn)
        multi = type(out) is tuple
        ins = outs = None
        mem = 0
        if self.shapes:
            # interned: the same shapes come back every step, and objects that outlive
            # the op are what makes the cyclic GC run (and each full pass is as long
            # as the whole heap); a temporary that dies at once costs it nothing.
            # Inputs and outputs are one key (one hash, one lookup), and the inputs a
            # loop: a comprehension is a function call in Python 3.11.
            T = self.tensor
            ins = ()
            for a in args:
                ins += (a._data.shape if isinstance(a, T) else (),)
            key = (ins, tuple([o._data.shape for o in out]) if multi else (out._data.shape,))
            ins, outs = _shapes.setdefault(key, key)
        if self.mem and not fn.is_view:
            if multi:
                for o in out:
                    mem += o._data.nbytes
            else:
                mem = out._data.nbytes
        prof._buf.append((names[0], "cpu_op", self.tid, t0, t1, ins, outs, mem, None))
        node = (out[0] if multi else out).grad_fn
        if node is not None and node.fn is fn and "run_backward" not in node.__dict__:
            node.run_backward = _partial(_timed_backward, prof, names[1], node)
        return out


def _device_mark(prof, ta, start):
    """Close a device-time window opened at host time ``ta`` with CUDA event ``start``:
    a ``"device"`` mark around the op / backward event just recorded in this thread
    (paired with it by time in ``_attach_device``: no index into a buffer that other
    threads append to)."""
    prof._buf.append(("", "device", _get_ident(), ta, _ns(), None, None, 0,
                      (start, _be.device_event())))


def _timed_backward_device(prof, name, ctx, grads):
    """``_timed_backward`` with CUDA events around it: the backward node of an op that
    ran on the GPU (set by ``_DeviceProfMode``)."""
    if not prof._recording_now:
        return type(ctx).run_backward(ctx, grads)
    ta = _ns()
    start = _be.device_event()
    try:
        return _timed_backward(prof, name, ctx, grads)
    finally:
        _device_mark(prof, ta, start)


class _DeviceProfMode(_ProfMode):
    """The mode of a profile with device timing (``ProfilerActivity.CUDA`` and a GPU):
    ``_ProfMode``'s op event, plus CUDA events before and after every op whose output
    is a GPU array (and around its backward node). Only this mode pays for events."""

    def __dispatch__(self, fn, args, kwargs):
        be = _be
        ta = _ns()
        start = be.device_event()  # before the op: its kernels are queued after it
        out = _ProfMode.__dispatch__(self, fn, args, kwargs)
        first = out[0] if type(out) is tuple else out
        if be.on_device(first._data):
            _device_mark(self.prof, ta, start)
            node = first.grad_fn
            timer = node.__dict__.get("run_backward") if node is not None else None
            if type(timer) is _partial and timer.func is _timed_backward:
                node.run_backward = _partial(_timed_backward_device, *timer.args)
        return out


def _wants_device(activities, use_cuda):
    """(record CPU events, time the device) for ``profile(activities=, use_cuda=)``:
    PyTorch's rules. No ``activities``: CPU, and CUDA when a GPU is there (or as
    ``use_cuda`` says). CUDA asked for without cupy and a GPU: a warning, CPU only."""
    if activities is None:
        cpu, cuda, asked = True, use_cuda is not False, bool(use_cuda)
    else:
        acts = set(activities)
        bad = [a for a in acts if not isinstance(a, ProfilerActivity)]
        if bad or not acts:
            raise ValueError(f"profile: activities must be a non-empty list of "
                             f"ProfilerActivity (CPU, CUDA), got {list(activities)!r}")
        cpu, cuda = ProfilerActivity.CPU in acts, ProfilerActivity.CUDA in acts
        asked = cuda
    if cuda and not _be.cupy_available():
        if asked:
            import warnings
            warnings.warn("deepseek.profiler: ProfilerActivity.CUDA asked for but cupy sees "
                          "no GPU: no device time is recorded, CPU events are",
                          RuntimeWarning, stacklevel=3)
        cpu, cuda = True, False
    return cpu, cuda


class profile:
    """``with profile(...) as prof: ... prof.step()`` (PyTorch's ``torch.profiler.profile``).

    ``activities``: ``ProfilerActivity.CPU`` records the host events;
    ``ProfilerActivity.CUDA`` adds the device time of the ops that run on CUDA tensors
    (CUDA events around each; ``self_cuda_time_total`` / ``cuda_time_total`` in
    ``key_averages``, a device row in the chrome trace); CUDA alone keeps only the ops
    that ran on the GPU. Default: CPU, and CUDA when cupy sees a GPU. ``record_shapes`` keeps
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
        self._cpu, self._device = _wants_device(activities, use_cuda)
        # (CUDA event, host ns) recorded together when device timing starts: places the
        # device events on the host clock (the chrome trace's device row)
        self._dev_ref = None
        self.schedule = schedule
        self.on_trace_ready = on_trace_ready
        self.record_shapes = bool(record_shapes)
        self.profile_memory = bool(profile_memory)
        self.with_flops = bool(with_flops)
        self.with_stack = bool(with_stack)
        self.step_num = 0
        # raw events: (name, cat, tid, t0, t1, input shapes, output shapes, bytes, args)
        # tuples; FunctionEvents are built from them when results are asked for
        self._buf = []
        self._saved = None
        self._cache = (None, 0, None)
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
                any(e[1] != "step" for e in self._buf):
            self._saved = self._buf
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
            self._saved = self._buf
            self._buf = []
            if self.on_trace_ready is not None:
                self._set_recording(False)
                self.on_trace_ready(self)
        if prev == ProfilerAction.WARMUP and act != ProfilerAction.WARMUP:
            self._buf = []  # warm-up events are discarded
        self._apply(act)

    def _apply(self, act):
        rec = act != ProfilerAction.NONE
        self._set_recording(rec)
        if rec:
            self._open_step()

    def _open_step(self):
        self._step_ev = (f"ProfilerStep#{self.step_num}", _ns())

    def _close_step(self):
        if self._step_ev is None or not self._recording_now:
            self._step_ev = None
            return
        name, t0 = self._step_ev
        self._step_ev = None
        # its self time (what the events directly inside it leave) is found in events()
        self._buf.append((name, "step", self._tid_main, t0, _ns(), None, None, 0, None))

    def _set_recording(self, on):
        if on == self._recording_now:
            return
        self._recording_now = on
        if on:
            if len(_shapes) > 100_000:  # shapes that vary without end: start afresh
                _shapes.clear()
            if self._device:
                self._mode = _DeviceProfMode(self)
                if self._dev_ref is None:
                    ev = _be.device_event()
                    ev.synchronize()  # the device is at the event now: pair it with now
                    self._dev_ref = (ev, _ns())
            else:
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
    def _leaf(self, name, cat, t0, t1, args=None):
        """Record one finished event of the calling thread."""
        self._buf.append((name, cat, _get_ident(), t0, t1, None, None, 0, args))

    def _push_range(self, name, cat="user_annotation"):
        st = _tls.__dict__.setdefault("stack", [])
        st.append((self, name, _ns(), cat))

    def _pop_range(self):
        st = _tls.__dict__.get("stack")
        while st:
            item = st.pop()
            if item[0] is self:
                self._leaf(item[1], item[3], item[2], _ns())
                return

    def raw_events(self):
        """The events recorded since the last saved trace, as the raw tuples
        ``(name, cat, tid, t0_ns, t1_ns, input_shapes, output_shapes, bytes, args)``
        (no copy of the events: for the timeline, which reads them at exit)."""
        return self._buf

    # -------------------------------------------------------------- results
    def events(self):
        """The recorded events (the last saved trace, else what is recording), as
        FunctionEvents with their self times."""
        raw = self._buf if (self._buf or self._saved is None) else self._saved
        src, n, evs = self._cache
        if src is not raw or n != len(raw):
            evs = _materialize(raw, self._dev_ref and (self._dev_ref, _be.event_elapsed_ns))
            if not self._cpu:  # CUDA only: the ops that ran on the device (and ranges)
                evs = [e for e in evs if e.device_ns or e.cat not in ("cpu_op", "backward")]
            self._cache = (raw, len(raw), evs)
        return list(evs)

    def key_averages(self, group_by_input_shape=False, group_by_stack_n=0):
        return _key_averages(self.events(), group_by_input_shape, self.with_flops)

    def export_chrome_trace(self, path):
        """Write the events as Chrome-trace JSON (chrome://tracing, Perfetto)."""
        doc = chrome_trace(self.events(), self.with_flops)
        with open(path, "w") as f:
            json.dump(doc, f)
        return path


def chrome_trace(events, with_flops=False, pid=None):
    """The Chrome-trace document of FunctionEvents: one row per host thread, and a
    ``GPU (CUDA events)`` row with the device time of the ops that have some."""
    pid = os.getpid() if pid is None else pid
    out, dev = [], []
    tids = {}
    for e in events:
        tid = tids.setdefault(e.tid, len(tids))
        args = {}
        if e.input_shapes is not None:
            args["Input Dims"] = [list(s) for s in e.input_shapes]
        if e.mem:
            args["bytes"] = e.mem
        if with_flops:
            f = _flops_of(e)
            if f:
                args["flops"] = f
        if isinstance(e.args, dict):
            args.update(e.args)
        if e.device_ns:
            args["device_time_us"] = e.device_ns / 1e3
        out.append({"name": e.name, "cat": e.cat, "ph": "X", "pid": pid, "tid": tid,
                    "ts": e.start_ns / 1e3, "dur": (e.end_ns - e.start_ns) / 1e3,
                    "args": args})
        if e.device_ns and e.cat not in _CONTAINERS:
            # the device row: when the op's kernels ran (on the host clock where the
            # reference event placed them, else at the op's start)
            ts = e.device_start_ns if e.device_start_ns is not None else e.start_ns
            dev.append({"name": e.name, "cat": "kernel", "ph": "X", "pid": pid,
                        "tid": DEVICE_TID, "ts": ts / 1e3, "dur": e.device_ns / 1e3,
                        "args": {"cpu_op_ts": e.start_ns / 1e3}})
    out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                "args": {"name": f"deepseek {pid}"}})
    if dev:
        out += dev
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": DEVICE_TID,
                    "args": {"name": "GPU (CUDA events)"}})
    return {"traceEvents": out, "displayTimeUnit": "ms"}


# ranges can have events inside them; ops, backward nodes, collectives and data waits
# are leaves (an op's inner ops run below the profiler's mode)
_CONTAINERS = frozenset(("user_annotation", "optimizer", "step"))
# the chrome trace's device row (thread ids of host threads are small indices)
DEVICE_TID = 1 << 20


def _materialize(raw, device=None):
    """FunctionEvents of raw event tuples (in recorded order), with ``child_ns`` (the
    time of the events directly inside each range) found by one sweep per thread.
    ``device``: ``((ref event, ref host ns), elapsed_ns)`` when the profile timed the
    device: its ``"device"`` marks give their ops (and the ranges around) device time."""
    marks = ()
    if device is not None:
        marks = [r for r in raw if r[1] == "device"]
        raw = [r for r in raw if r[1] != "device"]
    evs = [FunctionEvent(*r) for r in raw]
    if marks:
        _attach_device(evs, marks, *device)
    by_tid = {}
    for e in evs:
        by_tid.setdefault(e.tid, []).append(e)
    for lst in by_tid.values():
        lst.sort(key=lambda e: (e.start_ns, -e.end_ns))
        open_ = []  # the ranges that may still contain what comes next
        for e in lst:
            while open_ and open_[-1].end_ns <= e.start_ns:
                open_.pop()
            for i in range(len(open_) - 1, -1, -1):
                parent = open_[i]
                if parent.end_ns >= e.end_ns:
                    parent.child_ns += e.end_ns - e.start_ns
                    if e.device_ns and e.cat not in _CONTAINERS:
                        for outer in open_[:i + 1]:  # every range around it
                            if outer.end_ns >= e.end_ns:
                                outer.device_ns += e.device_ns
                    break
            if e.cat in _CONTAINERS:
                open_.append(e)
    return evs


def _attach_device(evs, marks, ref, elapsed_ns):
    """Give each op / backward event of ``evs`` the device time of its ``"device"``
    mark: the mark of a thread whose host window ``[ta, tb]`` holds the event (the
    first event of that thread starting at or after ``ta``; ops do not nest in one
    thread). ``elapsed_ns(a, b)``: device ns between two events (``ref`` = (event,
    host ns) taken together places each op's kernels on the host clock)."""
    import bisect
    by_tid = {}
    for e in evs:
        if e.cat in ("cpu_op", "backward"):
            by_tid.setdefault(e.tid, []).append(e)
    starts = {}
    for tid, lst in by_tid.items():
        lst.sort(key=lambda e: e.start_ns)
        starts[tid] = [e.start_ns for e in lst]
    ref_ev, ref_ns = ref
    for _, _, tid, ta, tb, _, _, _, (start, end) in marks:
        lst = by_tid.get(tid)
        if not lst:
            continue
        i = bisect.bisect_left(starts[tid], ta)
        if i == len(lst) or lst[i].end_ns > tb:
            continue  # its event was not kept (a discarded warm-up, a swapped buffer)
        e = lst[i]
        e.device_ns = elapsed_ns(start, end)
        try:
            e.device_start_ns = ref_ns + elapsed_ns(ref_ev, start)
        except Exception:  # noqa: BLE001 - another device than the reference's
            e.device_start_ns = None


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


# callables run after every optimizer step while some profile records (the straggler
# report's step clock: deepseek.profiler.straggler)
_step_listeners = []


def add_step_listener(fn):
    """Call ``fn()`` after every ``Optimizer.step`` while a profile records."""
    _step_listeners.append(fn)


def _opt_hook(opt, phase):
    if phase == 0:
        for p in list(_recording):
            p._push_range(f"Optimizer.step#{type(opt).__name__}.step", "optimizer")
    else:
        for p in list(_recording):
            p._pop_range()
        for fn in _step_listeners:
            fn()


def _wait_hook(loader, dt):
    t1 = _ns()
    t0 = t1 - int(dt * 1e9)
    for p in list(_recording):
        p._leaf("DataLoader.__next__ (wait)", "dataloader", t0, t1)


def _coll_sink(ev):
    for p in list(_recording):
        # point-to-point ops carry their peer (collectives.trace.category)
        p._leaf(ev["op"], "p2p" if "peer" in ev else "collective", ev["t0"], ev["t1"],
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
    """One row of ``key_averages()``: the events of one name (and input shapes), summed.
    Times in us; ``*_cuda_*`` are PyTorch's names of the ``*_device_*`` ones."""

    __slots__ = ("key", "count", "cpu_time_total", "self_cpu_time_total", "flops",
                 "cpu_memory_usage", "self_cpu_memory_usage", "input_shapes", "cat",
                 "device_time_total", "self_device_time_total")

    def __init__(self, key, shapes, cat):
        self.key, self.input_shapes, self.cat = key, shapes, cat
        self.count = 0
        self.cpu_time_total = self.self_cpu_time_total = 0.0
        self.device_time_total = self.self_device_time_total = 0.0
        self.flops = 0
        self.cpu_memory_usage = self.self_cpu_memory_usage = 0

    @property
    def cpu_time(self):
        return self.cpu_time_total / self.count if self.count else 0.0

    @property
    def self_cpu_time(self):
        return self.self_cpu_time_total / self.count if self.count else 0.0

    @property
    def device_time(self):
        return self.device_time_total / self.count if self.count else 0.0

    cuda_time_total = property(lambda self: self.device_time_total)
    self_cuda_time_total = property(lambda self: self.self_device_time_total)
    cuda_time = device_time

    def __repr__(self):
        return (f"<FunctionEventAvg {self.key} count={self.count} "
                f"self={self.self_cpu_time_total:.1f}us total={self.cpu_time_total:.1f}us>")


class EventList(list):
    """``key_averages()``'s result: FunctionEventAvg rows, with ``table()``."""

    def table(self, sort_by="self_cpu_time_total", row_limit=100, header=None,
              max_name_column_width=55, top_level_events_only=False):
        has_dev = any(r.device_time_total for r in self)
        # PyTorch's "cuda" sort keys are the "device" ones; with no device time recorded
        # (a CPU run) they sort by the CPU time of the same name
        key = sort_by.replace("cuda", "device")
        if not has_dev:
            key = key.replace("device", "cpu")
        rows = sorted(self, key=lambda r: getattr(r, key, 0) or 0, reverse=True)
        if row_limit is not None and row_limit >= 0:
            rows = rows[:row_limit]
        tot_self = sum(r.self_cpu_time_total for r in self) or 1.0
        tot_dev = sum(r.self_device_time_total for r in self) or 1.0
        has_shapes = any(r.input_shapes is not None for r in rows)
        has_flops = any(r.flops for r in self)
        has_mem = any(r.cpu_memory_usage for r in self)
        w = min(max([len("Name")] + [len(r.key) for r in rows]), max_name_column_width)
        cols = [("Name", w), ("Self CPU %", 11), ("Self CPU", 11), ("CPU total", 11),
                ("CPU time avg", 12)]
        if has_dev:
            cols += [("Self CUDA", 11), ("Self CUDA %", 11), ("CUDA total", 11),
                     ("CUDA time avg", 13)]
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
            if has_dev:
                vals += [_t(r.self_device_time_total),
                         f"{100 * r.self_device_time_total / tot_dev:.2f}%",
                         _t(r.device_time_total), _t(r.device_time)]
            if has_mem:
                vals += [_b(r.cpu_memory_usage), _b(r.self_cpu_memory_usage)]
            vals += [r.count]
            if has_flops:
                vals += [f"{r.flops / 1e6:.3f}" if r.flops else "--"]
            if has_shapes:
                vals += [str([list(s) for s in r.input_shapes]) if r.input_shapes else "[]"]
            lines.append(fmt(vals))
        lines += [sep, f"Self CPU time total: {_t(tot_self)}"]
        if has_dev:
            lines.append(f"Self CUDA time total: {_t(tot_dev)}")
        lines.append("")
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
        if e.device_ns:
            r.device_time_total += e.device_time_total
            r.self_device_time_total += e.self_device_time_total
        r.cpu_memory_usage += e.mem
        r.self_cpu_memory_usage += e.mem
        if with_flops:
            r.flops += _flops_of(e)
    return EventList(rows.values())
