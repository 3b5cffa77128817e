"""Run a block with OpenBLAS limited to one thread.

Batched attention matmuls are hundreds of tiny GEMMs (e.g. 384 of 128x32x128 per BERT
layer); OpenBLAS threading each of them costs far more than it saves, worst on a loaded
machine (measured: 4.7 s threaded vs 0.04 s single-threaded for one MiniLM layer's
q @ k^T at batch 32, seq 128, 2 cores). ``single_thread()`` switches the pool to one
thread for the block and back; a no-op when the BLAS is not an OpenBLAS we can find.
"""
import contextlib
import ctypes

_fns = None


def _find():
    global _fns
    if _fns is not None:
        return _fns
    _fns = ()
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
                _fns = (g, s)
                return _fns
    return _fns


@contextlib.contextmanager
def single_thread():
    fns = _find()
    if not fns:
        yield
        return
    get, set_ = fns
    n = get()
    if n <= 1:
        yield
        return
    set_(1)
    try:
        yield
    finally:
        set_(n)
