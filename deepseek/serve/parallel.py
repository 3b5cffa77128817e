"""A worker's intra-op parallelism for the deepseek engine: a batch cut into row slices,
each run on its own thread with a one-thread BLAS.

Why not BLAS's own threads: a worker runs next to the HTTP process, the load and the
other workers, on the same cores. OpenBLAS splits each GEMM statically among its threads
and makes them wait for one another inside every call, so one descheduled thread stalls
the GEMM while the others spin (on the 2-core development machine at load 5-10, two BLAS
threads cost 1.7x the CPU of one per MiniLM batch, and up to 10x for one sentence). Row
slices of a batch are independent (the server only stacks requests along a free dim 0),
so each slice runs start to end on one thread and the threads only meet at the end, in a
blocking join. A batch too small to pay for a hand-off runs whole on the calling thread:
the cut is by the measured time per row, so one policy serves a single request (one
thread) and a batch of 64 (all of them) alike, and tiny models never split.
"""
import concurrent.futures
import time

import numpy as np

__all__ = ["SlicedRunner"]

# a slice shorter than this (seconds of one thread's work) does not pay for its thread
MIN_SLICE_SECONDS = 0.004


class SlicedRunner:
    """``run(inputs) -> [(name, array)]`` on up to ``threads`` threads. ``make_fn()``
    returns one thread's model callable (``{name: array} -> [(name, array)]``): the same
    one each time when it is thread-safe, or a new model copy; copies past the first are
    made when a batch is first cut, so a model whose batches are never cut stays one copy.
    ``batchable``: whether rows may be split at all."""

    def __init__(self, make_fn, threads, batchable, min_slice_seconds=MIN_SLICE_SECONDS):
        self.make_fn = make_fn
        self.fns = [make_fn()]
        self.threads = max(1, int(threads))
        self.batchable = batchable
        self.min_slice_seconds = min_slice_seconds
        self._row_seconds = None          # running estimate of one row's CPU time
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

    def run(self, inputs):
        """The model's outputs for ``inputs`` (``{name: array}``), in row order."""
        rows = next(iter(inputs.values())).shape[0] if self.batchable and inputs else 0
        k = self.slices(rows)
        if k == 1:
            out, seconds = self._slice(self.fns[0], inputs, 0, rows)
            self._learn(seconds, rows)
            return out
        while len(self.fns) < k:
            self.fns.append(self.make_fn())
        b = [int(v) for v in np.linspace(0, rows, k + 1)]
        futs = [self._pool.submit(self._slice, self.fns[i], inputs, b[i], b[i + 1])
                for i in range(1, k)]
        outs = [self._slice(self.fns[0], inputs, b[0], b[1])] + [f.result() for f in futs]
        self._learn(sum(o[1] for o in outs), rows)   # f.result() re-raised a slice's error
        return _concat([o[0] for o in outs])

    def _slice(self, fn, inputs, lo, hi):
        """``fn`` on rows [lo, hi) (everything when the model is not batchable): (outputs,
        this thread's CPU seconds)."""
        t = time.thread_time()
        if self.batchable:                  # (row ranges of C-order arrays: views)
            inputs = {name: a[lo:hi] for name, a in inputs.items()}
        return fn(inputs), time.thread_time() - t

    def _learn(self, seconds, rows):
        if rows > 0:
            per = seconds / rows
            # a moving estimate: the model's cost per row drifts with the batch size
            self._row_seconds = per if self._row_seconds is None else \
                0.7 * self._row_seconds + 0.3 * per

    def close(self):
        """Stop the slice threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _concat(outs):
    """Outputs of consecutive row ranges (lists of (name, array)) joined along dim 0."""
    names = [n for n, _ in outs[0]]
    return [(n, np.concatenate([dict(o)[n] for o in outs], axis=0)) for n in names]

