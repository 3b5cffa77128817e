"""Dynamic batching: requests queue here and leave as batches (Triton's two knobs).

A batch holds requests whose inputs agree on everything but dim 0 (same names, dtypes and
trailing shapes: the *key*); requests with different trailing shapes are batched separately,
never padded -- padding changes what some models compute (a BERT without a mask, a
pooling layer), and the server cannot know which. A batch leaves when it has
``max_batch_size`` rows, or when its oldest request has waited ``max_delay`` seconds,
whichever comes first; groups are served oldest head first, so no shape starves.
"""
import asyncio
import collections
import time

__all__ = ["Request", "Batcher"]


class Request:
    """One caller's inputs (``{name: array}``, ``rows`` along dim 0) and the future its
    handler awaits (set to ``{name: array}`` or to an exception)."""

    __slots__ = ("inputs", "rows", "key", "nbytes", "future", "t0", "t_dispatch")

    def __init__(self, inputs, rows, batchable=True):
        self.inputs, self.rows = inputs, rows
        self.key = (tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
                    if batchable else object())     # an unbatchable request is its own group
        self.nbytes = sum(a.nbytes for a in inputs.values())
        self.future = asyncio.get_running_loop().create_future()
        self.t0 = time.monotonic()
        self.t_dispatch = None


class Batcher:
    """The queue. ``submit`` adds a request; ``next_batch`` waits for the next batch."""

    def __init__(self, max_batch_size=8, max_delay=0.005, max_bytes=None):
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_delay = max(0.0, float(max_delay))
        self.max_bytes = max_bytes
        self._groups = collections.OrderedDict()      # key -> deque of requests
        self._rows = collections.Counter()            # key -> queued rows
        self._changed = asyncio.Event()
        self.depth = 0                                # queued requests

    def submit(self, req):
        """Queue ``req`` (its handler then awaits ``req.future``)."""
        self._groups.setdefault(req.key, collections.deque()).append(req)
        self._rows[req.key] += req.rows
        self.depth += 1
        self._changed.set()

    def oldest_wait(self, now=None):
        """How long the oldest queued request has waited (0 when the queue is empty)."""
        if not self.depth:
            return 0.0
        now = time.monotonic() if now is None else now
        return now - min(q[0].t0 for q in self._groups.values())

    def _pick(self, now):
        """(key, None) for a group ready to leave now, else (None, seconds until one is)."""
        full = [k for k in self._groups if self._rows[k] >= self.max_batch_size]
        if full:
            return min(full, key=lambda k: self._groups[k][0].t0), None
        key = min(self._groups, key=lambda k: self._groups[k][0].t0)
        wait = self._groups[key][0].t0 + self.max_delay - now
        return (key, None) if wait <= 0 else (None, wait)

    async def next_batch(self):
        """The next batch: a non-empty list of requests with one key."""
        while True:
            if self.depth:
                key, wait = self._pick(time.monotonic())
                if key is not None:
                    return self._take(key)
            else:
                wait = None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _take(self, key):
        q, batch, rows, nbytes = self._groups[key], [], 0, 0
        while q:
            r = q[0]
            if batch and (rows + r.rows > self.max_batch_size
                          or (self.max_bytes and nbytes + r.nbytes > self.max_bytes)):
                break
            batch.append(q.popleft())
            rows += r.rows
            nbytes += r.nbytes
        self._rows[key] -= rows
        self.depth -= len(batch)
        if not q:
            del self._groups[key]
            del self._rows[key]
        return batch

    def fail_all(self, exc):
        """Answer every queued request with ``exc`` (the server is going away)."""
        for q in self._groups.values():
            for r in q:
                if not r.future.done():
                    r.future.set_exception(exc)
        self._groups.clear()
        self._rows.clear()
        self.depth = 0
