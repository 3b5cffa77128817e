"""Communication hooks: how DDP reduces a full gradient bucket (PyTorch's
``torch.distributed.algorithms.ddp_comm_hooks.default_hooks`` names).

The contract of a hook, ``hook(state, bucket) -> Future | Work``:

* ``state`` is what was given to ``DistributedDataParallel.register_comm_hook``; the
  built-in hooks take a ProcessGroup (or None: the default group), as PyTorch's.
* ``bucket`` is a :class:`~deepseek.distributed.buckets.GradBucket`; ``bucket.buffer()``
  is its flat gradient array (numpy/cupy), this rank's local gradient.
* The hook is called once per bucket per backward, in bucket order, on every rank, in
  the thread running backward (as soon as the bucket is full with ``overlap_comm``).
  It starts the communication -- normally asynchronously -- and returns a
  :class:`~deepseek.distributed.futures.Future` (or a collectives ``Work``).
* DDP waits the returned objects in bucket order when backward ends. After the wait,
  every rank's bucket must hold the *average* over the group: either the hook wrote it
  into ``bucket.buffer()`` in place (value None, or the buffer itself), or the value is
  an array / tensor of ``bucket.numel`` elements, which DDP copies into the buffer.
* Every rank must register the same hook and issue the same collectives in the same
  order. ``Future.then`` continuations run in the waiting thread, in bucket order, so
  they may issue collectives too (the fp16 hook's fp32 resend does).
* Optional ``hook.prepare(state, buckets)``: called once on every rank when the hook is
  registered, to make what must be made collectively (symmetric wire buffers), since
  allocating inside backward would put a collective among the bucket collectives.
* Optional ``future.wire_dtypes``: names of what went on the wire, counted in DDP's
  ``wire_dtype_counts`` (a hook that does not say is counted as ``"hook"``).

``bucket.scratch`` is a dict that persists across steps for a hook's per-bucket state.
"""
import math

import ml_dtypes
import numpy as np

from .. import native
from ..collectives import ProcessGroup, ReduceOp, get_default_group
from .futures import Future
from .shm_fused import send_fused, shared_views, soon_after

__all__ = ["allreduce_hook", "fp16_compress_hook", "bf16_compress_hook", "compression_hook"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_FP16_MAX = 65504.0
# below this, the fp16 rounding of a sum of fp16 values cannot reach inf
_SAFE_FP16_SUM = 65504.0 * (1 - 2.0 ** -11)
_FP32 = ("fp32",)
# bucket.scratch key: last step's SUM of the ranks' local max|g| (zero_blocks.py
# hands it to the packed reduction of a sparse bucket)
BOUND_KEY = _BOUND = "fp16_bound"


def _group(state):
    """The process group a built-in hook communicates over."""
    if state is None:
        return get_default_group()
    if isinstance(state, ProcessGroup):
        return state
    return getattr(state, "process_group", None) or get_default_group()


def _abs_max(a):
    """max |a| in two vectorised passes (no |a| temporary)."""
    return max(float(a.max()), -float(a.min())) if a.size else 0.0


def _pack(flat, out, scale=None):
    """out[...] = flat * scale (flat when scale is None) in out's dtype; returns max |flat|.
    On the CPU one native pass (``native.wire_pack``): no scaled copy, the bucket is
    left as it is."""
    if isinstance(flat, np.ndarray) and flat.dtype == np.float32:
        return native.wire_pack(flat, out, scale)
    m = _abs_max(flat)
    out[...] = flat if scale is None else flat * np.float32(scale)
    return m


def _unpack(payload, flat, scale):
    """flat[...] = float32(payload) * float32(scale), one native pass on the CPU."""
    if isinstance(payload, np.ndarray) and isinstance(flat, np.ndarray) \
            and flat.dtype == np.float32:
        native.wire_unpack(payload, flat, scale)
    else:
        _cast_into(payload, flat)
        flat *= np.float32(scale)


def _cast_into(src, dst):
    """dst[...] = src; fp32 <-> fp16/bf16 on the CPU through the native kernels
    (numpy's own half-precision conversion is ~10x slower)."""
    if isinstance(src, np.ndarray):
        native.cast(src, dst.dtype, out=dst)
    else:
        dst[...] = src


def allreduce_hook(state, bucket):
    """Average the bucket over the group in place with one allreduce (DDP's default)."""
    work = _group(state).allreduce(bucket.buffer(), ReduceOp.AVG, async_op=True)
    fut = Future.from_work(work)
    fut.wire_dtypes = _FP32
    return fut


def fp16_compress_hook(state, bucket):
    """Allreduce the bucket in float16 (half the bytes), without overflow or flush to
    zero: values are scaled by a power of two from the previous step's bound on the
    summed magnitudes. Every rank appends its local max |g| to the payload, and the
    SUM of those bounds every partial sum, so the scale needs no extra round trip; the
    first step sends fp32 to learn it. Because the reduced buffer is the same on every
    rank, so is the decision to resend a bucket in fp32 should it ever overflow.

    Over shared memory, for a bucket in symmetric memory (DDP's, from the symmetric
    crossover size on), the casts happen inside the reduction instead (``shm_fused``):
    the same values, no wire buffer, the bound is max_i sum_r |g_r[i]| (also a bound on
    every element of the sum), and a block that would overflow is averaged exactly in
    fp32 in place ("fp32-fallback" in DDP's counts; the scale is learnt again)."""
    pg = _group(state)
    flat = bucket.buffer()
    bound = bucket.scratch.get(_BOUND)
    views = shared_views(pg, bucket)
    if bound is None or not math.isfinite(bound):
        if views is not None:
            return _send_shared(pg, bucket, views, "fp32", 1.0)
        # first step (or after a resend): no bound yet, send fp32 and learn it
        payload = bucket.wire_buffer(np.float32, 1)
        # copy and local max |g| in one pass (NaN/inf in the gradient make it non-finite)
        payload[-1] = _pack(flat, payload[:-1])
        return _send(pg, bucket, payload, "fp32", 1.0)
    # largest power of two keeping 4x the last step's sum bound under fp16 max
    bound = max(bound, 1e-30)
    scale = min(2.0 ** math.floor(math.log2(_FP16_MAX / (4.0 * bound))), 2.0 ** 40)
    if views is not None:
        return _send_shared(pg, bucket, views, "fp16", scale)
    payload = bucket.wire_buffer(np.float16, 1)
    # scale, cast and local max |g| in one pass; the bucket keeps the local gradient
    # (what an fp32 resend sends)
    local_max = _pack(flat, payload[:-1], scale)
    # inf when this rank's own values overflowed fp16: the reduced bound then shows it
    payload[-1] = local_max * scale if local_max * scale <= _FP16_MAX else np.inf
    return _send(pg, bucket, payload, "fp16", scale)


def bf16_compress_hook(state, bucket):
    """Allreduce the bucket in bfloat16 (half the bytes; fp32's range, so no scale)."""
    pg = _group(state)
    flat = bucket.buffer()
    payload = bucket.wire_buffer(_BF16, 1)
    payload[-1] = _pack(flat, payload[:-1])  # cast and local max |g| in one pass
    return _send(pg, bucket, payload, "bf16", 1.0)


def _send(pg, bucket, payload, kind, scale):
    """Start the SUM allreduce of ``payload``. When it is done, the decode thread
    decodes it into the bucket at once -- during backward, and while the comm thread
    moves the next bucket -- rather than when DDP waits for it after backward (the
    decode releases the GIL); the future waits for that. An fp32 resend after an
    overflow is a collective, so it stays in the future, run in bucket order."""
    wire = [kind]
    work = pg.allreduce(payload, ReduceOp.SUM, async_op=True)
    decoded = soon_after(work, lambda: _decode(pg, bucket, payload, kind, scale))

    def finish(_):
        if decoded() is _RESEND:  # (re-raises the decode's error)
            # overflow despite the margin: every rank sees the same reduced buffer, so
            # every rank resends this bucket in fp32 (the buffer still holds the local
            # gradient: the send only read it)
            pg.allreduce(bucket.buffer(), ReduceOp.AVG)
            bucket.scratch[_BOUND] = None
            wire.append("fp32-resend")
        return None  # reduced in place

    fut = Future.from_work(work).then(finish)
    fut.wire_dtypes = wire
    return fut


_RESEND = object()  # _decode's answer for a bucket that overflowed fp16


def _decode(pg, bucket, payload, kind, scale):
    """Decode the reduced ``payload`` into the bucket (None), or _RESEND after an fp16
    overflow (then nothing is written)."""
    total = float(payload[-1])
    # every element of the sum is bounded by the sum of the ranks' local maxima (the
    # last slot), so a finite bound under fp16's max proves no element overflowed: no
    # pass over the data is needed to check
    if kind == "fp16" and not (total <= _SAFE_FP16_SUM):
        return _RESEND
    # decode and average straight into the bucket, one pass
    _unpack(payload[:-1], bucket.buffer(), 1.0 / (scale * pg.size))
    bucket.scratch[_BOUND] = total / scale
    return None


def _send_shared(pg, bucket, views, kind, scale):
    """Over shared memory: the same reduction, cast inside it (shm_fused.py)."""
    wire = [kind]

    def done(fut):
        bound, fell = fut.value()
        if fell:
            # some block would have overflowed fp16: that block is the exact fp32
            # average already (the same on every rank); learn the scale again
            wire.append("fp32-fallback")
            bound = None
        bucket.scratch[_BOUND] = bound
        return None  # reduced in place

    fut = send_fused(pg, bucket, views, kind == "fp16", scale).then(done)
    fut.wire_dtypes = wire
    return fut


def _prepare_wire(*dtypes):
    def prepare(state, buckets):
        """Make every bucket's wire buffers now: the allocation is collective."""
        for b in buckets:
            for dt in dtypes:
                b.wire_buffer(dt, 1)  # + 1: the bound rides along
    return prepare


fp16_compress_hook.prepare = _prepare_wire(np.float32, np.float16)
bf16_compress_hook.prepare = _prepare_wire(_BF16)

_COMPRESSION = {"fp16": fp16_compress_hook, "bf16": bf16_compress_hook}


def compression_hook(name):
    """The built-in hook for DDP's short form ``compression='fp16'`` / ``'bf16'``."""
    try:
        return _COMPRESSION[name]
    except KeyError:
        raise ValueError(f"compression must be None, 'fp16' or 'bf16', got {name!r}") from None
