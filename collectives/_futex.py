"""Sleeping on a 32-bit word in shared memory without burning a core.

Ranks on one host wait for each other's progress counters in a shared-memory segment.
Spinning is fastest but, on a machine with as many busy ranks as cores, it steals the
core the awaited peer needs. So a waiter spins briefly, then sleeps in the kernel with
``futex(FUTEX_WAIT)`` on the counter's address (a shared, not private, futex: the
mapping is shared between processes) and the poster calls ``FUTEX_WAKE`` when a
"sleepers" word says somebody may be asleep.

The sleeper flag is set with a plain store, so a wake-up can in rare cases be missed
(store/load reordering between the two processes); every sleep therefore has a short
timeout and the waiter re-checks: a missed wake costs at most ``MAX_SLEEP`` seconds,
never a hang. Without a usable futex (not Linux) the wait degrades to short sleeps.
"""
import ctypes
import platform
import time

from .. import env as _envvars

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238}.get(
    platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
MAX_SLEEP = 0.002  # seconds; bound on the cost of a missed wake-up


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load():
    if _SYS_FUTEX is None or _envvars.get("DEEPSEEK_NO_FUTEX"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
        fn.restype = ctypes.c_long
        return fn
    except (OSError, AttributeError):  # pragma: no cover
        return None


_syscall = _load()


def available():
    """True when the kernel futex is used (else waits fall back to sleeping)."""
    return _syscall is not None


def wait(addr, expected, timeout=MAX_SLEEP):
    """Sleep while the int32 at ``addr`` equals ``expected`` (at most ``timeout`` s).

    Returns early on a wake-up, a changed value or a signal; callers always re-check.
    The GIL is released by ctypes during the call, so other threads keep running.
    """
    if _syscall is None:
        time.sleep(min(timeout, 0.0002))
        return
    ts = _Timespec(int(timeout), int((timeout % 1.0) * 1e9))
    _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_int(expected),
             ctypes.byref(ts), None, 0)


def wake(addr, count=2 ** 30):
    """Wake up to ``count`` sleepers on the int32 at ``addr``."""
    if _syscall is not None:
        _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, ctypes.c_int(count),
                 None, None, 0)
