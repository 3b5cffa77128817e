"""Running one kernel call of an inference plan as parts on several threads.

The plan's own C kernels (fused elementwise groups, layer norm, softmax) and its
batched attention products on one BLAS thread run on one core, while BLAS spreads the
large GEMMs over ``OPENBLAS_NUM_THREADS``. At MiniLM's batch 32 x 128 those serial
kernels were a third of the step on two cores. Where BLAS has more than one thread,
the plan cuts such a call into row ranges (each part's arguments -- pointers and
counts -- computed once, when the plan is built: ``group_parts``, ``layernorm_parts``,
``softmax_parts``) and ``Workers.run`` runs them at once: part 0 on the calling thread, the others on persistent worker threads.
ctypes and numpy's matmul release the GIL while they work, so the parts really run in
parallel; each part writes its own rows, so the results are the serial ones, bit for
bit.

One set of workers serves the process. A call that finds them busy (plans running on
two Python threads at once) runs its parts one after the other on its own thread
instead of waiting.
"""
import math
import threading

__all__ = ["workers", "Workers", "cuts", "row_cuts", "group_parts", "layernorm_parts",
           "softmax_parts", "MIN_ELEMENTS"]

# a part must be worth a thread hand-off (tens of microseconds on a loaded machine)
MIN_ELEMENTS = 1 << 16


class _Worker:
    def __init__(self):
        self.go = threading.Semaphore(0)
        self.done = threading.Semaphore(0)
        self.job = None
        self.error = None
        threading.Thread(target=self._loop, daemon=True, name="deepseek-jit-worker").start()

    def _loop(self):
        while True:
            self.go.acquire()
            f, args = self.job
            try:
                f(*args)
            except BaseException as e:  # handed to the caller, which re-raises it
                self.error = e
            self.done.release()


class Workers:
    """``n`` - 1 worker threads (started on first use) and the caller: ``run(f, parts)``
    calls ``f(*part)`` for every part, all at once, and returns when all are done."""

    def __init__(self, n):
        if n < 2:
            raise ValueError(f"jit: Workers needs at least 2 threads, got {n}")
        self.n = n
        self._pool = None
        self._busy = threading.Lock()

    def run(self, f, parts):
        """``f(*p)`` for each ``p`` in ``parts`` (at most ``n``), in parallel; the first
        error any part raised is raised here, after every part has finished."""
        if len(parts) > self.n:
            raise ValueError(f"jit: {len(parts)} parts for {self.n} threads")
        if not self._busy.acquire(blocking=False):
            for p in parts:
                f(*p)
            return
        try:
            if self._pool is None:
                self._pool = [_Worker() for _ in range(self.n - 1)]
            used = self._pool[:len(parts) - 1]
            for w, p in zip(used, parts[1:]):
                w.job, w.error = (f, p), None
                w.go.release()
            err = None
            try:
                f(*parts[0])
            except BaseException as e:
                err = e
            for w in used:
                w.done.acquire()
                w.job = None
                err = err or w.error
            if err is not None:
                raise err
        finally:
            self._busy.release()


_workers = {}
_lock = threading.Lock()


def workers(n):
    """The process's shared ``Workers`` of ``n`` threads."""
    with _lock:
        w = _workers.get(n)
        if w is None:
            w = _workers[n] = Workers(n)
        return w


def cuts(total, parts, step=1):
    """``total`` split into at most ``parts`` ranges ``(start, stop)`` whose starts are
    multiples of ``step`` (fewer when ``total`` has fewer steps)."""
    steps = total // step if step > 0 else 0
    k = min(parts, steps)
    if k < 2:
        return [(0, total)]
    bounds = [step * (steps * i // k) for i in range(k)] + [total]
    return list(zip(bounds[:-1], bounds[1:]))


def row_cuts(threads, rows, width, step=1):
    """Row ranges for the parts of a call over ``rows`` rows of ``width`` elements: one
    range unless there are threads to spare and work enough for each."""
    if threads < 2 or rows * width < 2 * MIN_ELEMENTS:
        return [(0, rows)]
    return cuts(rows, threads, step)


# The parts of the plan's kernel calls: argument lists, one per row range, with the
# pointers moved to the range's first row (the kernels' signatures: plan.py / cgen.py).

def group_parts(threads, outer, inner, arrays, pats):
    """A fused kernel ``(outer, inner, out, *ins)``: ranges of its ``outer`` rows
    (pointers of "full" operands move; "inner" and "scalar" ones stay), or, with one
    row and no "inner" operand, ranges of the flat elements; None when it cannot be
    cut."""
    if outer > 1:
        return [[o1 - o0, inner] + [a.ctypes.data + (o0 * inner * a.itemsize if p == "full" else 0)
                                    for a, p in zip(arrays, pats)]
                for o0, o1 in row_cuts(threads, outer, inner)]
    if "inner" in pats:
        return None
    return [[1, j1 - j0] + [a.ctypes.data + (j0 * a.itemsize if p == "full" else 0)
                            for a, p in zip(arrays, pats)]
            for j0, j1 in row_cuts(threads, inner, 1)]


def layernorm_parts(threads, args, itemsize):
    """The layer norm kernel ``(rows, d, x, w, b, eps, out)``: ranges of rows."""
    rows, d, x, w, b, eps, out = args
    return [[r1 - r0, d, x + r0 * d * itemsize, w, b, eps, out + r0 * d * itemsize]
            for r0, r1 in row_cuts(threads, rows, d)]


def softmax_parts(threads, args, xsize, msize):
    """The softmax kernel ``(rows, d, causal, x, out, mask, mkind, d1, d2, s0, s1,
    s2)``: row ranges that start where its mask indexing (row r as (i0, i1, i2) of dims
    (., d1, d2), strides s0-s2) and its causal row counter (r % causal) restart, the
    mask pointer (``msize`` bytes an element) and the dims of each part moved to match."""
    rows, d, causal, x, out, mask, mkind, d1, d2, s0, s1, s2 = args
    if not mkind:
        level, step = None, 1
    elif rows > d1 * d2:
        level, step = 0, d1 * d2
    elif d1 > 1:
        level, step = 1, d2
    else:
        level, step = 2, 1
    if causal:
        step = step * causal // math.gcd(step, causal)
    parts = []
    for r0, r1 in row_cuts(threads, rows, d, step):
        p = [r1 - r0, d, causal, x + r0 * d * xsize, out + r0 * d * xsize] + list(args[5:])
        if level == 0:
            p[5] = mask + (r0 // (d1 * d2)) * s0 * msize
        elif level == 1:
            p[5], p[7] = mask + (r0 // d2) * s1 * msize, (r1 - r0) // d2
        elif level == 2:
            p[5], p[8] = mask + r0 * s2 * msize, r1 - r0
        parts.append(p)
    return parts
