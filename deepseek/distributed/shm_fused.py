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
passed the same piece of the same symmetric buffer); as soon as it completes, the
native pass, on a background thread of this process (``soon_after``), so with
``overlap_comm`` it runs during the rest of backward as the fp32 allreduce does, not
after it; then, in the waiting thread, a second tiny MAX allreduce (the bound and the
fallback flag; once it returns every rank has written its segment into every bucket,
so the buckets may be used). It used to run the pass in the waiting thread too: after
backward, ~1.5 ms of the MLP's step exposed that the fp32 allreduce hides.
"""
import os
import threading
import time

import numpy as np

from .. import native
from ..collectives import ReduceOp
from ..collectives.work import Work, Worker
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


_runner = (None, None)  # (pid, Worker): the pass thread of this process
# switch for tests and measurements: False runs the pass in the waiting thread, when
# DDP waits for the bucket (after backward), as before
OVERLAP_PASS = True


def run_soon(fn):
    """Run ``fn`` on this process's pass thread (the hooks' decodes and fused passes,
    one FIFO thread, made again in a forked child, which does not inherit threads);
    its Work."""
    global _runner
    pid, worker = _runner
    if pid != os.getpid():
        worker = Worker("deepseek-ddp-decode")
        _runner = (os.getpid(), worker)
    return worker.submit(fn, Work("decode of a DDP bucket"))


def soon_after(work, fn):
    """Queue ``fn()`` on the pass thread as soon as ``work`` (a collective) is done,
    which may be long before anyone waits for it; returns ``wait()``, which blocks
    until ``fn`` ran and gives its result (re-raising its error, or the work's). The
    passes release the GIL, so they overlap with the caller's backward."""
    queued, out, lock = [], [], threading.Lock()

    def on_done(w):
        # (add_done_callback may call this twice: from Work._finish and at once, if the
        # work finished in between; the fused pass must run once)
        with lock:
            if w.exception() is None and not queued:
                queued.append(run_soon(lambda: out.append(fn())))
    work.add_done_callback(on_done)

    def wait():
        work.wait()  # (re-raises the collective's error)
        # Work._finish sets the work's event before it runs on_done, so this thread
        # may get here first: on_done is about to queue the pass
        while not queued:
            time.sleep(0.0002)
        queued[0].wait()
        return out[0]
    return wait


def send_fused(pg, bucket, views, cast, scale):
    """Start the fused reduction of ``bucket`` (after :func:`shared_views` gave
    ``views``): cast True for the fp16 rounding (scaled by ``scale``), False for an
    exact fp32 sum. The future's value is ``(bound, fell_back)``: max over elements of
    the sum of the ranks' |g| (the same on every rank), and whether some block was
    averaged in fp32 because fp16 would have overflowed (or met inf / NaN)."""
    mine, got = bucket.scratch[_CHECK]
    got[...] = mine
    work = pg.allreduce(got, ReduceOp.MAX, async_op=True)

    def reduce():
        return _reduce(pg, bucket, views, cast, scale, mine, got)
    passed = soon_after(work, reduce) if OVERLAP_PASS else reduce
    return Future.from_work(work).then(lambda _: _exchange(pg, bucket, *passed()))


def _reduce(pg, bucket, views, cast, scale, mine, got):
    """The native pass over this rank's segment of every rank's copy (pass thread)."""
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
    return bound, fell


def _exchange(pg, bucket, bound, fell):
    """The bound and the fallback flag over the group (the waiting thread, in bucket
    order, as every collective of the hook's continuations)."""
    stats = bucket.scratch[_STATS]
    stats[0], stats[1] = bound, 1.0 if fell else 0.0
    pg.allreduce(stats, ReduceOp.MAX)
    return float(stats[0]), bool(stats[1])
