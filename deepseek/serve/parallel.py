"""A worker's intra-op parallelism for the deepseek engine: a batch cut into row pieces,
which threads with a one-thread BLAS take from one queue.

Why not BLAS's own threads: a worker runs next to the HTTP process, the load and the
other workers, on the same cores. OpenBLAS splits each GEMM statically among its threads
and makes them wait for one another inside every call, so one descheduled thread stalls
the GEMM while the others spin (on the 2-core development machine at load 5-10, two BLAS
threads cost 1.7x the CPU of one per MiniLM batch, and up to 10x for one sentence). Row
pieces of a batch are independent (the server only stacks requests along a free dim 0),
so each piece runs start to end on one thread and the threads only meet at the end, in a
blocking join; a thread the machine delays leaves its pieces to the others. A batch too
small to pay for a hand-off runs whole on the calling thread: the cut is by the measured
time per row, so one policy serves a single request (one thread) and a batch of 64 (all
of them) alike, and tiny models never split. Pieces hold at most ``PIECE_ROWS`` rows, so
a JIT graph (one compiled plan per input shape) meets few shapes.
"""
import collections
import concurrent.futures
import threading
import time

import numpy as np

__all__ = ["SlicedRunner"]

# a slice shorter than this (seconds of one thread's work) does not pay for its thread
MIN_SLICE_SECONDS = 0.004
# the most rows a cut batch gives one piece: a JIT graph compiles one plan per piece size
# (per copy), so this bounds the plans and their buffers; a full batch of 64 on two threads
# is two pieces of 32, as before. Smaller pieces cost more CPU per row (MiniLM, 32 tokens,
# 64-row batches on two threads, 12 interleaved rounds at load 5: 16-row pieces 14.2 ms of
# CPU per row on the JIT against 13.8 at 32 rows, 15.7 against 15.1 eager)
PIECE_ROWS = 32


class SlicedRunner:
    """``run(inputs) -> [(name, array)]`` on up to ``threads`` threads. ``make_fn()``
    returns one thread's model callable (``{name: array} -> [(name, array)]``): the same
    one each time when it is thread-safe, or a new model copy; copies past the first are
    made when a batch is first cut, so a model whose batches are never cut stays one copy.
    ``batchable``: whether rows may be split at all. ``plans``: the JIT plans the copies
    have compiled (anything with a ``len``), so that a call that compiled one is not taken
    for the model's cost per row (it would cut the next batches and compile more)."""

    def __init__(self, make_fn, threads, batchable, min_slice_seconds=MIN_SLICE_SECONDS,
                 piece_rows=PIECE_ROWS, plans=None):
        self.make_fn = make_fn
        self.plans = plans
        self.piece_rows = max(1, int(piece_rows))
        self.fns = [make_fn()]
        self.threads = max(1, int(threads))
        self.batchable = batchable
        self.min_slice_seconds = min_slice_seconds
        self._calls = collections.deque(maxlen=32)     # recent (rows, CPU seconds)
        self._row_seconds = None          # their estimate of one row's CPU time
        self._pool = (concurrent.futures.ThreadPoolExecutor(
            self.threads - 1, thread_name_prefix="deepseek-serve-slice")
            if self.threads > 1 and batchable else None)

    def slices(self, rows):
        """How many slices a batch of ``rows`` rows is cut into (1: run it whole)."""
        if self._pool is None or rows < 2 or self._row_seconds is None:
            return 1
        return max(1, min(self.threads, rows,
                          int(rows * self._row_seconds / self.min_slice_seconds)
                          if self.min_slice_seconds > 0 else rows))

    def pieces(self, rows, k):
        """The row ranges ``[(lo, hi), ...]`` a batch of ``rows`` rows run on ``k`` threads
        is cut into: ``k`` near-equal pieces, more when that keeps each at most
        ``piece_rows`` rows (also on one thread, once the batch is worth cutting at all)."""
        n = k
        if rows > self.piece_rows and self._row_seconds is not None and (
                rows * self._row_seconds >= 2 * self.min_slice_seconds):
            n = max(k, -(-rows // self.piece_rows))
        b = [int(v) for v in np.linspace(0, rows, n + 1)]
        return list(zip(b[:-1], b[1:]))

    def run(self, inputs):
        """The model's outputs for ``inputs`` (``{name: array}``), in row order."""
        rows = next(iter(inputs.values())).shape[0] if self.batchable and inputs else 0
        k = self.slices(rows)
        ranges = self.pieces(rows, k)
        built = len(self.plans) if self.plans is not None else 0
        if len(ranges) == 1:
            out, seconds = self._slice(self.fns[0], inputs, 0, rows)
            self._learn(seconds, rows, built)
            return out
        while len(self.fns) < k:
            self.fns.append(self.make_fn())
        todo = iter(range(len(ranges)))
        lock, failed = threading.Lock(), []

        def drain(fn):
            # pieces are taken from one queue, so a thread that the machine's other work
            # delays does not hold the batch up: the others take its share
            done = []
            while not failed:
                with lock:
                    i = next(todo, None)
                if i is None:
                    break
                try:
                    done.append((i,) + self._slice(fn, inputs, *ranges[i]))
                except BaseException as e:
                    failed.append(e)
            return done
        futs = [self._pool.submit(drain, self.fns[j]) for j in range(1, k)]
        done = drain(self.fns[0])
        for f in futs:          # every thread is done with the arena's rows before we go
            done += f.result()
        if failed:
            raise failed[0]
        done.sort(key=lambda d: d[0])
        self._learn(sum(d[2] for d in done), rows, built)
        return _concat([d[1] for d in done])

    def _slice(self, fn, inputs, lo, hi):
        """``fn`` on rows [lo, hi) (everything when the model is not batchable): (outputs,
        this thread's CPU seconds)."""
        t = time.thread_time()
        if self.batchable:                  # (row ranges of C-order arrays: views)
            inputs = {name: a[lo:hi] for name, a in inputs.items()}
        return fn(inputs), time.thread_time() - t

    def _learn(self, seconds, rows, built):
        if self.plans is not None and len(self.plans) != built:
            return                      # the time went into compiling, not the rows
        if rows <= 0:
            return
        self._calls.append((rows, seconds))
        self._row_seconds = _per_row(self._calls)

    def close(self):
        """Stop the slice threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _per_row(calls):
    """One row's CPU seconds from recent ``(rows, seconds)`` calls: the slope of the line
    through them when their sizes differ enough for a slope to mean something (a call's
    fixed cost -- Python, the hand-off -- is not a row's and is not cut into slices: a
    tiny model's 1-row calls would otherwise get its 40-row batches cut), else seconds
    per row."""
    n = len(calls)
    mr = sum(r for r, _ in calls) / n
    ms = sum(t for _, t in calls) / n
    var = sum((r - mr) ** 2 for r, _ in calls) / n
    if var >= 0.25 * mr * mr:          # sizes spread by half their mean or more
        slope = sum((r - mr) * (t - ms) for r, t in calls) / (n * var)
        if slope > 0:
            return min(slope, ms / mr)
    return ms / mr


def _concat(outs):
    """Outputs of consecutive row ranges (lists of (name, array)) joined along dim 0."""
    names = [n for n, _ in outs[0]]
    return [(n, np.concatenate([dict(o)[n] for o in outs], axis=0)) for n in names]

