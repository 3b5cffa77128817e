"""Pipeline schedules: GPipe, 1F1B and interleaved 1F1B (PyTorch's class names).

    schedule = Schedule1F1B(stage, n_microbatches=8, loss_fn=loss_fn)
    schedule.step(x, target=y)      # every rank may pass both; each uses what it needs
    optimizer.step()                # == the step on the full batch

``step`` splits the batch (dim 0) into ``n_microbatches`` equal microbatches, runs
forward and backward of each through the stages in the schedule's order, and leaves
in every parameter's ``.grad`` the gradient of the full-batch loss: each microbatch's
loss is scaled by 1/n_microbatches (``loss_fn`` must be a mean over the microbatch,
as the full-batch loss is over the batch). Gradients add to what ``.grad`` held
(zero them first); a leaf input that records its gradient gets the full-batch one
once per step. On the last stage ``step`` returns the mean loss (a float) and
appends each microbatch's loss to ``losses`` when given; elsewhere it returns None.

A schedule is a list of actions per rank, ("F" | "B", stage, microbatch), made by
``gpipe_order`` / ``one_f_one_b_order`` / ``interleaved_order``; ``simulate`` plays them
with unit costs and gives each rank's idle share (the idealised bubble), which for
GPipe and 1F1B is (p-1)/(m+p-1) and for interleaved with v stages per rank
(p-1)/(v*m+p-1). (Megatron-LM writes the interleaved bubble as (p-1)/(v*m): bubble
time over the ideal compute time. As a share of the span, what is measured here,
that is (p-1)/(v*m) / (1 + (p-1)/(v*m)) = (p-1)/(v*m+p-1); each of the v stages
costs 1/v of a rank's compute, so the three schedules compare at equal work.) With ``log_timing=True`` the executor records when each action's
compute started and ended; ``stats()`` gives this rank's busy and idle time per step.
The formula's bubble is idle time over the whole pipeline's span -- from the first
forward on stage 0 to the last backward there -- which no rank sees alone (the last
stage starts late and finishes early): ``events()`` gives a step's actions in
absolute ``time.perf_counter`` seconds, which the processes of one host share
(CLOCK_MONOTONIC), and ``measured_bubble`` turns every rank's events into each
rank's idle share of that common span.

Memory: 1F1B starts the backward of microbatch i as soon as the last stage can, so
stage s holds at most p - s microbatches' activations (GPipe holds all m);
``stage.peak_live`` says how many it held.

With DDP over the data-parallel group wrapped around a stage's submodule, every
backward but the stage's last runs under ``no_sync()``: one gradient reduction per
step.
"""
import contextlib
import time

import numpy as np

from ..._tensor import Tensor
from ...autograd import backward as _autograd_backward
from .stage import PipelineError, PipelineStage

__all__ = ["ScheduleGPipe", "Schedule1F1B", "ScheduleInterleaved1F1B", "gpipe_order",
           "one_f_one_b_order", "interleaved_order", "simulate", "bubble_formula",
           "measured_bubble"]


# ---------------------------------------------------------------------- the orders
def gpipe_order(rank, pp, m):
    """All forwards, then all backwards (stage == rank)."""
    return [("F", rank, i) for i in range(m)] + [("B", rank, i) for i in range(m)]


def one_f_one_b_order(rank, pp, m):
    """p - rank - 1 warm-up forwards, then one forward one backward, then the
    remaining backwards: at most p - rank activations held at once."""
    warm = min(pp - rank - 1, m)
    acts = [("F", rank, i) for i in range(warm)]
    for i in range(m - warm):
        acts += [("F", rank, warm + i), ("B", rank, i)]
    acts += [("B", rank, i) for i in range(m - warm, m)]
    return acts


def interleaved_order(rank, pp, m, v):
    """Megatron-LM's interleaved 1F1B: rank r holds stages r, r+p, ..., r+(v-1)p;
    microbatches go through them in groups of p (m must be a multiple of p)."""
    total = m * v

    def fwd(k):
        chunk = (k // pp) % v
        return ("F", chunk * pp + rank, (k // (pp * v)) * pp + k % pp)

    def bwd(k):
        chunk = v - 1 - (k // pp) % v
        return ("B", chunk * pp + rank, (k // (pp * v)) * pp + k % pp)

    warm = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    acts = [fwd(k) for k in range(warm)]
    for i in range(total - warm):
        acts += [fwd(warm + i), bwd(i)]
    acts += [bwd(k) for k in range(total - warm, total)]
    return acts


def bubble_formula(pp, m, v=1):
    """The idle share of each rank: (p-1)/(v*m+p-1) (v=1: GPipe and 1F1B)."""
    return (pp - 1) / (v * m + pp - 1)


def simulate(orders, num_stages, f_cost=1.0, b_cost=2.0, cost=None):
    """Play per-rank action lists (``orders[r]``) with the given costs per stage and
    no communication time: returns (makespan, busy per rank, idle share per rank).
    ``cost(kind, stage, mb)``, when given, is each action's own cost (a measured
    step's compute replayed without its communication). Raises PipelineError when the
    orders deadlock (an action waits for one that can never run first)."""
    pp = len(orders)
    done = {}
    clock = [0.0] * pp
    busy = [0.0] * pp
    pos = [0] * pp
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(pp):
            if pos[r] == len(orders[r]):
                continue
            kind, s, mb = orders[r][pos[r]]
            if kind == "F":
                dep = ("F", s - 1, mb) if s > 0 else None
            else:
                dep = ("B", s + 1, mb) if s < num_stages - 1 else ("F", s, mb)
            if dep is not None and dep not in done:
                continue
            start = max(clock[r], done[dep] if dep is not None else 0.0)
            c = cost(kind, s, mb) if cost is not None else f_cost if kind == "F" else b_cost
            clock[r] = start + c
            busy[r] += c
            done[(kind, s, mb)] = clock[r]
            pos[r] += 1
            remaining -= 1
            progressed = True
        if not progressed:
            stuck = {r: orders[r][pos[r]] for r in range(pp) if pos[r] < len(orders[r])}
            raise PipelineError(f"schedule deadlocks: next actions {stuck}")
    span = max(clock)
    return span, busy, [1.0 - b / span for b in busy]


def measured_bubble(events_by_rank):
    """Each rank's idle share of one step from the schedules' own timestamps:
    ``events_by_rank[r]`` is rank r's ``schedule.events(step)`` (absolute
    perf_counter seconds, comparable between processes of one host). The span runs
    from the first compute start on any rank to the last compute end; a rank's busy
    time is the sum of its actions' compute. Returns {"span_s", "busy_s" (per rank),
    "bubble" (per rank), "mean", "worst"}."""
    evs = [e for ev in events_by_rank for e in ev]
    if not evs:
        raise PipelineError("measured_bubble: no events (log_timing=True?)")
    span = max(e[4] for e in evs) - min(e[3] for e in evs)
    busy = [sum(t1 - t0 for _, _, _, t0, t1 in ev) for ev in events_by_rank]
    bubble = [1.0 - b / span if span > 0 else 0.0 for b in busy]
    return {"span_s": span, "busy_s": busy, "bubble": bubble,
            "mean": sum(bubble) / len(bubble), "worst": max(bubble)}


# ---------------------------------------------------------------------- the executor
def _split(x, m, what):
    if x is None:
        return [None] * m
    n = x.shape[0]
    if n % m:
        raise PipelineError(f"{what}: batch of {n} does not split into {m} equal "
                            f"microbatches")
    k = n // m
    return [x[i * k:(i + 1) * k] for i in range(m)]


class _LeafInput:
    """The microbatches of a leaf input that records its gradient, as leaves of their
    own (``chunks``); each one's gradient moves into one full-batch array right after
    its backward (``take``), and ``finish`` adds that into ``x.grad`` in one backward
    through ``x`` (its hooks see the full-batch gradient once). Slices of ``x`` would
    each give back a zero-filled full-batch gradient to add: O(m x batch) work and
    memory on the first stage's every backward, 0.7 ms of a 21 ms one at pp = 4
    (docs/parallelism.md). Every element of the sum is the same (the others only
    added zeros)."""

    def __init__(self, x, m):
        self.x, self.k = x, x.shape[0] // m
        self.chunks = [c.requires_grad_(True) for c in _split(x.detach(), m, "inputs")]
        self._full = None

    def take(self, mb):
        """Move microbatch ``mb``'s gradient into the full-batch one (after its
        backward: at most one microbatch's gradient lives on its own)."""
        c = self.chunks[mb]
        if c.grad is None:
            return
        if self._full is None:
            self._full = np.zeros(self.x.shape, self.x.array.dtype)
        self._full[mb * self.k:(mb + 1) * self.k] = c.grad.array
        c.grad = None

    def finish(self):
        """Add the step's gradient into ``x.grad`` (nothing when none came)."""
        if self._full is not None:
            full, self._full = self._full, None
            _autograd_backward([self.x], [Tensor._make(full)])


class _Schedule:
    """What the three schedules share: splitting, the action loop, timing."""

    _v = 1

    def __init__(self, stages, n_microbatches, loss_fn=None, scale_grads=True,
                 log_timing=False):
        self.stages = list(stages)
        for s in self.stages:
            if not isinstance(s, PipelineStage):
                raise TypeError(f"expected PipelineStage, got {type(s).__name__}")
        self.n_microbatches = int(n_microbatches)
        if self.n_microbatches < 1:
            raise PipelineError(f"n_microbatches must be >= 1, got {n_microbatches}")
        self.loss_fn = loss_fn
        self.scale_grads = scale_grads
        self.log_timing = log_timing
        st = self.stages[0]
        self.pp = st.group.size
        self.rank = st.group.rank
        self.num_stages = st.num_stages
        if self.num_stages != self.pp * self._v:
            raise PipelineError(
                f"{type(self).__name__}: {self.num_stages} stages over {self.pp} ranks; "
                f"this schedule needs {self._v} stage(s) per rank")
        if any(s.stage_index % self.pp != self.rank for s in self.stages):
            raise PipelineError("every stage given must live on this rank")
        if any(s.is_last for s in self.stages) and loss_fn is None:
            raise PipelineError("the last stage needs a loss_fn")
        self._by_index = {s.stage_index: s for s in self.stages}
        self.order = self._order()
        self._plan = self._prefetch_plan()
        self.timings = []   # per step: list of (kind, stage, mb, t0, t1)
        self.step_times = []
        self.step_starts = []  # per step: its start, absolute perf_counter seconds

    def _order(self):
        raise NotImplementedError

    def _last_backward(self):
        last = {}
        for i, (kind, s, _) in enumerate(self.order):
            if kind == "B":
                last[s] = i
        return last

    def _prefetch_plan(self):
        """Per action ``i``: the receives to post after it, as (post method, mb) --
        those of the next forward and the next backward that need one (the stage
        posts only messages larger than a slot; it takes smaller ones when needed).
        Strictly in the order the actions will consume them: a group's receives run
        one after another, so one posted out of turn would hold up the one the
        schedule waits for. (When both directions share one group, the single next
        receive of either kind.) Made once: the executor only looks it up."""
        shared = any(st.fwd_group is st.bwd_group for st in self.stages)
        plan = []
        for i in range(len(self.order)):
            posts = []
            want_f = want_b = True
            for kind, s, mb in self.order[i + 1:]:
                st = self._by_index[s]
                if kind == "F" and want_f and not st.is_first:
                    posts.append((st.post_recv_forward, mb))
                    want_f = False
                    want_b = want_b and not shared
                elif kind == "B" and want_b and not st.is_last:
                    posts.append((st.post_recv_backward, mb))
                    want_b = False
                    want_f = want_f and not shared
                if not (want_f or want_b):
                    break
            plan.append(tuple(posts))
        return plan

    def step(self, *args, target=None, losses=None):
        """One pass of the whole batch; see the module doc."""
        m = self.n_microbatches
        x = args[0] if args else None
        needs_input = any(s.is_first for s in self.stages)
        if needs_input and x is None:
            raise PipelineError("the first stage needs the batch: step(inputs, ...)")
        leaf_in = None
        if needs_input and isinstance(x, Tensor) and x.requires_grad and x.grad_fn is None:
            leaf_in = _LeafInput(x, m)
            xs = leaf_in.chunks
        else:
            xs = _split(x, m, "inputs") if needs_input else [None] * m
        has_last = any(s.is_last for s in self.stages)
        if has_last and target is None:
            raise PipelineError("the last stage needs step(..., target=...)")
        ts = _split(target, m, "target") if has_last else [None] * m
        scale = 1.0 / m if self.scale_grads else 1.0
        last_b = self._last_backward()
        # no receive to post ahead (every message fits a slot, headers known): skip
        # the plan's calls, each a few microseconds between two actions after a hold
        plan = self._plan if any(s.may_receive_ahead() for s in self.stages) else None
        mb_losses = [None] * m
        events = []
        clock = time.perf_counter
        t_step = clock()
        for st in self.stages:
            st.peak_live = 0
        try:
            for i, (kind, s, mb) in enumerate(self.order):
                st = self._by_index[s]
                if kind == "F":
                    inp = xs[mb] if st.is_first else st.get_input(mb)
                    t0 = clock()
                    out = st.forward_one(mb, inp)
                    if st.is_last:
                        loss = self.loss_fn(out, ts[mb])
                        st.set_loss(mb, loss)
                        mb_losses[mb] = float(loss.item())
                else:
                    st.get_grad(mb)  # the wait is idle time, not compute
                    t0 = clock()
                    sync = getattr(st.submod, "no_sync", None)
                    ctx = sync() if (sync is not None and i != last_b[s]) else \
                        contextlib.nullcontext()
                    with ctx:
                        st.backward_one(mb, scale)
                    if leaf_in is not None and st.is_first:
                        leaf_in.take(mb)  # the input's gradient: part of the backward
                t1 = clock()
                if self.log_timing:
                    events.append((kind, s, mb, t0 - t_step, t1 - t_step))
                if plan is not None:
                    for post, pmb in plan[i]:
                        post(pmb)
            for st in self.stages:
                st.wait_sends()
            if leaf_in is not None:
                leaf_in.finish()
        except BaseException:
            for st in self.stages:
                st.clear()
            raise
        wall = clock() - t_step
        self.step_times.append(wall)
        self.step_starts.append(t_step)
        if self.log_timing:
            self.timings.append(events)
        if has_last:
            if losses is not None:
                losses.extend(mb_losses)
            return sum(mb_losses) / m
        return None

    def stats(self, step=-1):
        """This rank's busy time, wall time and idle share for a logged step."""
        if not self.timings:
            raise PipelineError("no timings: build the schedule with log_timing=True")
        ev = self.timings[step]
        busy = sum(t1 - t0 for _, _, _, t0, t1 in ev)
        wall = self.step_times[step]
        return {"busy_s": busy, "wall_s": wall, "idle_s": wall - busy,
                "bubble": 1.0 - busy / wall if wall > 0 else 0.0,
                "ideal_bubble": self.ideal_bubble()[self.rank],
                "formula": bubble_formula(self.pp, self.n_microbatches, self._v),
                "peak_live": {s.stage_index: s.peak_live for s in self.stages}}

    def events(self, step=-1):
        """A logged step's actions as (kind, stage, mb, t0, t1) in absolute
        perf_counter seconds (for ``measured_bubble`` across ranks)."""
        if not self.timings:
            raise PipelineError("no timings: build the schedule with log_timing=True")
        t = self.step_starts[step]
        return [(k, s, mb, t + t0, t + t1) for k, s, mb, t0, t1 in self.timings[step]]

    def ideal_bubble(self, f_cost=1.0, b_cost=2.0):
        """Idle share of every rank with unit compute costs and free communication."""
        orders = [self._order_for(r) for r in range(self.pp)]
        return simulate(orders, self.num_stages, f_cost / self._v, b_cost / self._v)[2]

    def _order_for(self, rank):
        raise NotImplementedError


class _SingleStageSchedule(_Schedule):
    """A schedule of one stage per rank; subclasses give ``_order_for(rank)``."""

    def __init__(self, stage, n_microbatches, loss_fn=None, **kw):
        super().__init__([stage], n_microbatches, loss_fn, **kw)

    def _order(self):
        return self._order_for(self.rank)


class ScheduleGPipe(_SingleStageSchedule):
    """GPipe: every microbatch's forward, then every backward (holds m activations)."""

    def _order_for(self, rank):
        return gpipe_order(rank, self.pp, self.n_microbatches)


class Schedule1F1B(_SingleStageSchedule):
    """1F1B (PipeDream-flush): warm-up forwards, then alternate forward and backward;
    stage s holds at most p - s microbatches' activations. Any n_microbatches >= 1."""

    def _order_for(self, rank):
        return one_f_one_b_order(rank, self.pp, self.n_microbatches)


class ScheduleInterleaved1F1B(_Schedule):
    """Interleaved 1F1B: ``stages`` are this rank's v stages (rank r holds stages
    r, r+p, ...); the bubble shrinks to (p-1)/(v*m+p-1). Needs n_microbatches >= p
    and a multiple of p (Megatron-LM's rule)."""

    def __init__(self, stages, n_microbatches, loss_fn=None, **kw):
        stages = list(stages)
        if not stages:
            raise PipelineError("ScheduleInterleaved1F1B: no stages")
        pp = stages[0].group.size
        self._v = len(stages)
        m = int(n_microbatches)
        if m < pp:
            raise PipelineError(
                f"ScheduleInterleaved1F1B: n_microbatches={m} is less than the {pp} "
                f"pipeline ranks; it needs at least one microbatch per rank")
        if m % pp:
            raise PipelineError(
                f"ScheduleInterleaved1F1B: n_microbatches={m} is not a multiple of the "
                f"{pp} pipeline ranks")
        super().__init__(sorted(stages, key=lambda s: s.stage_index), m, loss_fn, **kw)

    def _order_for(self, rank):
        return interleaved_order(rank, self.pp, self.n_microbatches, self._v)

    def _order(self):
        return self._order_for(self.rank)
