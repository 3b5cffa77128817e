"""Keep freed memory in the process (glibc malloc tuning), measured in bench_engine.

numpy's large temporaries are otherwise mmap'd and unmapped on every step, and the
page faults of touching fresh pages cost ~20% of an MLP step. Raising glibc's mmap
and trim thresholds keeps freed blocks on the heap for reuse. Set
DEEPSEEK_MALLOC_TUNING=0 to leave malloc alone.
"""
import ctypes
import sys

from . import env as _envvars

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = [False]


def tune_malloc(threshold=1 << 30):
    """Raise glibc's mmap/trim thresholds once per process; False where not applicable."""
    if _done[0]:
        return True
    if not _envvars.get("DEEPSEEK_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mmap threshold is capped by glibc at 32 MiB on 64-bit (HEAP_MAX/2 rules)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, min(threshold, 32 << 20))
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    except (OSError, AttributeError):
        return False
    _done[0] = bool(ok)
    return _done[0]
