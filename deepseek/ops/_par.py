"""The CPU threads of the ops: OpenBLAS's thread count, a pool of worker threads, and
passes split over rows.

The ops run on numpy, which threads nothing but its BLAS. Where an op's pass is long and
its work divides into independent pieces (the rows of a layer norm, the halves of an
elementwise pass, the (batch, head) items of attention), the pieces run on this
module's pool, one per thread OpenBLAS would use (``OPENBLAS_NUM_THREADS`` /
``OMP_NUM_THREADS`` / threadpoolctl), as PyTorch's intra-op threads do: the C kernels
and numpy's loops release the GIL. Every piece does the operations it did in one pass
(a row or an element does not care which thread computes it), so the results are the
same bits whatever the thread count.
"""
import contextlib
import ctypes
import os
import threading

import numpy as np

# a pass of fewer elements runs on the calling thread: waking a worker costs more
ROWS_MIN_ELEMENTS = 1 << 19


_blas_fns = None
_blas_lock = threading.Lock()
_blas_depth = [0, 0]       # [active single-thread sections, thread count to restore]


def _blas_find():
    """OpenBLAS's (get_num_threads, set_num_threads), or () when numpy's BLAS is not an
    OpenBLAS found in this process."""
    global _blas_fns
    if _blas_fns is not None:
        return _blas_fns
    _blas_fns = ()
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower()
                           and line.split()[-1].startswith("/")})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                          ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get) and hasattr(lib, set_):
                g, s = getattr(lib, get), getattr(lib, set_)
                g.restype, s.argtypes = ctypes.c_int, [ctypes.c_int]
                _blas_fns = (g, s)
                return _blas_fns
    return _blas_fns


def blas_threads():
    """The thread count OpenBLAS uses now (1 when it is not OpenBLAS, or inside a
    :func:`blas_single_thread` block)."""
    fns = _blas_find()
    if not fns:
        return 1
    with _blas_lock:
        return _blas_depth[1] if _blas_depth[0] else fns[0]()


@contextlib.contextmanager
def blas_single_thread():
    """OpenBLAS at one thread inside the block, restored after (nesting and concurrent
    blocks from several threads are counted: the last one out restores). The setting is
    process-wide: a large GEMM another thread runs meanwhile also runs on one thread."""
    fns = _blas_find()
    if not fns:
        yield
        return
    get, set_ = fns
    with _blas_lock:
        if _blas_depth[0] == 0:
            _blas_depth[1] = get()
            if _blas_depth[1] > 1:
                set_(1)
        _blas_depth[0] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth[0] -= 1
            if _blas_depth[0] == 0 and _blas_depth[1] > 1:
                set_(_blas_depth[1])


_pool = None
_pool_size = 0
# The pool's threads are idle between calls, and a forked child forgets the pool (the
# threads do not exist there), so they do not make fork unsafe: the DataLoader's
# start-method choice (data/_procs.py) ignores threads with this name prefix.
FORK_SAFE_THREAD_PREFIX = "deepseek-sdpa"


def _forget_pool_in_child():
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def run(items, fn, workers):
    """``fn(item)`` for every item, on ``workers`` threads (the caller is one of them)."""
    global _pool, _pool_size
    if workers <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    if _pool is None or _pool_size < workers - 1:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(workers - 1, thread_name_prefix=FORK_SAFE_THREAD_PREFIX)
        _pool_size = workers - 1
    chunks = [items[i::workers] for i in range(workers)]

    def many(ch):
        for it in ch:
            fn(it)
    futs = [_pool.submit(many, ch) for ch in chunks[1:]]
    many(chunks[0])
    for f in futs:
        f.result()


def _on_pool_thread():
    return threading.current_thread().name.startswith(FORK_SAFE_THREAD_PREFIX)


def split_rows(rows, elements, fn):
    """``fn(lo, hi)`` over ``[0, rows)`` cut into one contiguous range per thread
    (:func:`blas_threads` of them), the caller running the first; on the calling thread
    alone when the pass has fewer than ``ROWS_MIN_ELEMENTS`` elements, when threads
    are not there to use, or when the caller is itself a pool thread (it must not wait
    on the pool it occupies)."""
    workers = min(blas_threads(), rows) if elements >= ROWS_MIN_ELEMENTS else 1
    if workers <= 1 or _on_pool_thread():
        fn(0, rows)
        return
    cuts = [rows * i // workers for i in range(workers + 1)]
    run(list(zip(cuts[:-1], cuts[1:])), lambda r: fn(*r), workers)


def add_rows(a, b, out):
    """``out = a + b`` on C-contiguous 2-D ``a`` and ``out`` (rows, n), ``b`` (n,) or
    (rows, n), the rows split over the threads (numpy's add releases the GIL)."""
    per_row = b.ndim == 1

    def part(lo, hi):
        np.add(a[lo:hi], b if per_row else b[lo:hi], out=out[lo:hi])
    split_rows(a.shape[0], a.size, part)
    return out
