"""Leaving a bucket's zero blocks off the wire (embedding tables over TCP).

An embedding table's gradient is zero except in the rows of the batch's tokens:
BERT-base's word embeddings are 94 MB of gradient (a bucket of their own, and the last
one, ready only when backward ends), of which a batch of 64 tokens per rank touches at
most 64 rows. Sent densely, those zeros are a fifth of BERT's bytes and, being last,
the whole tail of the step after backward (scripts/bench_multihost.py --timeline).

:func:`skip_zero_blocks` wraps a built-in comm hook. A bucket is cut into blocks of
``BLOCK`` elements; each rank marks its blocks holding a non-zero bit, a MAX allreduce
of the marks (one byte a block) gives their union -- the same on every rank --, and
only the union's blocks are reduced, by the wrapped hook on a compact copy, and
written back. Every other block is zero on every rank, so its average is zero: the
result is the dense one bit for bit (the reductions are elementwise).

Which buckets: those of at least ``MIN_BYTES`` whose first reduced gradient (the same
on every rank, so every rank decides alike) has at most ``MAX_DENSITY`` of its blocks
non-zero. Such a bucket leaves the mode for good in a step whose union is denser (that
step is reduced densely). The compact reduction runs when DDP waits for the bucket
(continuations run in bucket order on every rank, so the collectives line up).
"""
import numpy as np

from ..collectives import ReduceOp
from .comm_hooks import BOUND_KEY as _BOUND
from .comm_hooks import _group
from .futures import Future

BLOCK = 256             # elements a mark covers (1 KiB of fp32; BERT's rows are 3)
MIN_BYTES = 1 << 20     # smaller buckets: the marks' round trip is not worth it
MAX_DENSITY = 0.25      # at most this share of non-zero blocks to go sparse
_MODE = "zero_blocks"   # bucket.scratch: None (undecided), True (sparse), False (dense)
_INNER = "zero_blocks_scratch"  # bucket.scratch: the compact proxy's own scratch
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def block_marks(flat, out=None):
    """One uint8 per ``BLOCK`` elements of ``flat`` (the last block may be short): 1
    where a block has a non-zero bit (-0.0 and NaN count as non-zero), else 0."""
    bits = flat.view(_BITS[flat.itemsize])
    full = flat.size // BLOCK
    n = full + (flat.size % BLOCK > 0)
    out = np.empty(n, np.uint8) if out is None else out
    if full:
        # OR over each block: one vectorised pass, no temporary of the bucket's size
        out[:full] = np.bitwise_or.reduce(bits[:full * BLOCK].reshape(full, BLOCK),
                                          axis=1) != 0
    if n > full:
        out[full] = bool(bits[full * BLOCK:].any())
    return out


class _Compact:
    """The bucket-shaped object the wrapped hook reduces: the union's blocks, packed.
    Its wire buffers are plain arrays (their size changes from step to step, and the
    symmetric allocation is collective), kept at their largest size."""

    def __init__(self, bucket, flat):
        self._bucket, self.flat, self.numel = bucket, flat, flat.size
        self.scratch = bucket.scratch.setdefault(_INNER, {})

    def buffer(self):
        """The packed blocks (what the wrapped hook reduces in place)."""
        return self.flat

    def index(self):
        """The real bucket's index."""
        return self._bucket.index()

    def is_last(self):
        """Whether the real bucket is the last one."""
        return self._bucket.is_last()

    def wire_buffer(self, dtype, extra=0):
        """A plain ``numel + extra`` buffer of ``dtype`` (GradBucket.wire_buffer's
        contract, without the collective allocation)."""
        key = ("wire", np.dtype(dtype), int(extra))
        buf = self.scratch.get(key)
        if buf is None or buf.size < self.numel + extra:
            buf = self.scratch[key] = np.empty(self.numel + extra, dtype)
        return buf[:self.numel + extra]


def _gather(flat, whole, tail, out):
    """The whole blocks ``whole`` of ``flat`` (and its short last block if ``tail``)
    packed into ``out``."""
    full = flat.size // BLOCK
    k = whole.size * BLOCK
    np.take(flat[:full * BLOCK].reshape(full, BLOCK), whole, axis=0,
            out=out[:k].reshape(whole.size, BLOCK))
    if tail:
        out[k:] = flat[full * BLOCK:]


def _scatter(comp, flat, whole):
    """Inverse of :func:`_gather`: the packed blocks written back in place."""
    full = flat.size // BLOCK
    k = whole.size * BLOCK
    flat[:full * BLOCK].reshape(full, BLOCK)[whole] = comp[:k].reshape(whole.size, BLOCK)
    if k < comp.size:
        flat[full * BLOCK:] = comp[k:]


def _decide(bucket, fut):
    """After a bucket's first (dense) reduction: sparse from now on if it is sparse."""
    value = fut.value()
    marks = block_marks(bucket.buffer())
    bucket.scratch[_MODE] = bool(marks.sum() <= MAX_DENSITY * marks.size)
    return value


def _reduce_blocks(hook, state, bucket, marks, wire):
    """The marks' union is known: reduce its blocks only (or the whole bucket, densely,
    when the union is too dense -- the same decision on every rank)."""
    flat = bucket.buffer()
    idx = np.flatnonzero(marks)
    if idx.size > MAX_DENSITY * marks.size:
        bucket.scratch[_MODE] = False
        fut = hook(state, bucket)
        value = fut.wait()
        wire[:] = list(getattr(fut, "wire_dtypes", None) or ("hook",))
        return value
    wire[:] = ["zero-blocks"]
    if idx.size == 0:
        return None  # zero on every rank: the average is what the bucket holds
    full = flat.size // BLOCK
    whole = idx[idx < full]
    tail = whole.size < idx.size  # the short last block is in the union
    n = whole.size * BLOCK + (flat.size - full * BLOCK if tail else 0)
    inner = bucket.scratch.setdefault(_INNER, {})
    comp = inner.get("packed")
    if comp is None or comp.size < n or comp.dtype != flat.dtype:
        comp = inner["packed"] = np.empty(n, flat.dtype)
    comp = comp[:n]
    _gather(flat, whole, tail, comp)
    compact = _Compact(bucket, comp)
    # the fp16 hook's scale bound (max |g| summed over the ranks) is the dense one:
    # zero blocks add nothing to it, so the packed reduction keeps the bucket's
    compact.scratch[_BOUND] = bucket.scratch.get(_BOUND)
    fut = hook(state, compact)
    out = fut.wait()
    bucket.scratch[_BOUND] = compact.scratch.get(_BOUND)
    if out is not None and getattr(out, "_data", out) is not comp:
        comp[...] = getattr(out, "_data", out).reshape(-1)
    _scatter(comp, flat, whole)
    wire += list(getattr(fut, "wire_dtypes", None) or ("hook",))
    return None


def skip_zero_blocks(hook):
    """``hook`` (a built-in comm hook that reduces in place) that leaves the zero
    blocks of sparse buckets off the wire; see the module docstring."""

    def wrapped(state, bucket):
        flat = bucket.buffer()
        mode = bucket.scratch.get(_MODE)
        if flat.nbytes < MIN_BYTES or type(flat) is not np.ndarray or mode is False:
            return hook(state, bucket)
        if mode is None:
            inner = hook(state, bucket)
            fut = inner.then(lambda f: _decide(bucket, f))
            fut.wire_dtypes = inner.wire_dtypes
            return fut
        marks = block_marks(flat, bucket.scratch.get("marks"))
        bucket.scratch["marks"] = marks
        work = _group(state).allreduce(marks, ReduceOp.MAX, async_op=True)
        wire = ["zero-blocks"]
        fut = Future.from_work(work).then(
            lambda _: _reduce_blocks(hook, state, bucket, marks, wire))
        fut.wire_dtypes = wire
        return fut

    prepare = getattr(hook, "prepare", None)
    if prepare is not None:
        wrapped.prepare = prepare
    wrapped.__name__ = f"skip_zero_blocks({getattr(hook, '__name__', 'hook')})"
    wrapped.__doc__ = skip_zero_blocks.__doc__
    return wrapped
