"""The fp16 hook's reduction done inside shared memory, in one native pass.

Over the shared-memory transport DDP's buckets live in symmetric memory, so every rank
can read every rank's fp32 bucket where it lies. Sending fp16 there saves no wire: it
costs a cast pass (fp32 read, fp16 write), an fp16 allreduce and a decode pass (fp16
read, fp32 write), about 16 bytes of memory traffic per element against the 8 of the
fp32 allreduce. Here each rank instead reduces its 1/n of the bucket straight from
every rank's fp32 copy, casting on the fly, and writes the decoded average into every
copy (``deepseek._native.wire_sym_reduce``, native/src/dsn_wire.c): the traffic of the
fp32 allreduce, and bit for bit the values the cast / fp16 allreduce / decode sequence
gives (a block that would overflow fp16 is instead the exact fp32 average).

Synchronisation, all through the group's ordinary collectives, so it is ordered with
every other op on every rank: an asynchronous tiny MAX allreduce when the bucket is
full (every rank's bucket is final once it completes; it also checks that the ranks
passed the same piece of the same symmetric buffer), then, in the waiting thread, the
native pass and a second tiny MAX allreduce (the bound and the fallback flag; once it
returns every rank has written its segment into every bucket, so the buckets may be
used).
"""
import numpy as np

from .. import native
from ..collectives import ReduceOp
from .futures import Future

_VIEWS, _CHECK, _STATS = "shm_views", "shm_check", "shm_stats"  # bucket.scratch keys


def _kernel():
    ext = getattr(native, "_ext", None)
    if native.available() and hasattr(ext, "wire_sym_reduce"):
        return ext.wire_sym_reduce
    return None


def shared_views(pg, bucket):
    """Every rank's copy of ``bucket``'s fp32 buffer when the fused reduction can run
    (a group of 2+ over shared memory, the buffer in symmetric memory and at least the
    size from which the symmetric allreduce is used, native kernels on), else None."""
    flat = bucket.buffer()
    backend = getattr(pg, "_backend", None)
    find = getattr(backend, "symmetric_views", None)
    if pg.size < 2 or find is None or type(flat) is not np.ndarray \
            or flat.dtype != np.float32 or flat.nbytes < getattr(backend, "sym_bytes", 0) \
            or _kernel() is None:
        return None
    addr = flat.__array_interface__["data"][0]
    hit = bucket.scratch.get(_VIEWS)
    if hit is None or hit[0] != addr or hit[1] != flat.nbytes:
        found = find(flat)
        views, (ident, off) = found if found is not None else (None, (0, 0))
        mine = np.array([ident, off, flat.size], dtype=np.int64)
        # MAX of (x, -x) is (max, -min): every rank gets back its own iff all agree
        bucket.scratch[_CHECK] = (np.concatenate([mine, -mine]), np.empty(6, np.int64))
        bucket.scratch[_STATS] = np.zeros(2, dtype=np.float32)
        hit = bucket.scratch[_VIEWS] = (addr, flat.nbytes, views)
    return hit[2]


def send_fused(pg, bucket, views, cast, scale):
    """Start the fused reduction of ``bucket`` (after :func:`shared_views` gave
    ``views``): cast True for the fp16 rounding (scaled by ``scale``), False for an
    exact fp32 sum. The future's value is ``(bound, fell_back)``: max over elements of
    the sum of the ranks' |g| (the same on every rank), and whether some block was
    averaged in fp32 because fp16 would have overflowed (or met inf / NaN)."""
    mine, got = bucket.scratch[_CHECK]
    got[...] = mine
    work = pg.allreduce(got, ReduceOp.MAX, async_op=True)
    return Future.from_work(work).then(
        lambda _: _reduce(pg, bucket, views, cast, scale, mine, got))


def _reduce(pg, bucket, views, cast, scale, mine, got):
    if not np.array_equal(got, mine):
        raise RuntimeError(
            "fp16_compress_hook: the ranks passed different pieces of symmetric memory "
            f"for bucket {bucket.index()} (this rank: allocation {mine[0]}, byte offset "
            f"{mine[1]}, {mine[2]} elements); every rank must build the same buckets")
    bound, fell = _kernel()(views, pg.rank, bool(cast), float(scale),
                            1.0 / (float(scale) * pg.size), native.isa() != "scalar")
    backend = pg._backend
    # it read every rank's bucket in place: the symmetric allreduces' count (tests, stats)
    backend.sym_allreduces = getattr(backend, "sym_allreduces", 0) + 1
    stats = bucket.scratch[_STATS]
    stats[0], stats[1] = bound, 1.0 if fell else 0.0
    pg.allreduce(stats, ReduceOp.MAX)
    return float(stats[0]), bool(stats[1])
