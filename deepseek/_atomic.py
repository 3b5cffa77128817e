"""Atomic file writes that leave nothing behind: a temp file beside the target, fsync'd
and renamed over it, removed on any exception and on SIGTERM, and swept by the next
write into the same directory when its writer died some other way (SIGKILL, OOM).

Temp names are ``.<target>.<host>.<pid>.<random>.tmp``: the pid and host say who is
writing, so a later writer removes a temp only when that process (on this host) is
gone. A temp of a live process, or of another host sharing the filesystem, is left
alone.

SIGTERM matters because it is what ``deepseek-run`` (and torchrun, SLURM, Kubernetes)
sends to the survivors of a failed job, and Python's default action for it ends the
process without running ``finally`` blocks. While a write is in progress in the main
thread, a handler removes every temp this process is writing and then lets the signal
do what it would have done (the previous Python handler runs, or the process dies of
SIGTERM as before). Writes from other threads are covered by the sweep.
"""
import os
import re
import signal
import socket
import tempfile
import threading

__all__ = ["write_atomic", "sweep_stale_temps", "fsync_dir"]

_live = set()          # temp paths being written by this process
_live_lock = threading.Lock()
_prev_handler = None   # SIGTERM handler to restore/chain while ours is installed


def _host():
    # the part of the name that can be trusted not to contain separators
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:32] or "host"


def _on_sigterm(signum, frame):
    with _live_lock:
        paths = list(_live)
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass
    prev = _prev_handler
    if callable(prev):
        prev(signum, frame)
        return
    if prev == signal.SIG_IGN:
        return
    # default action: die of SIGTERM, as if no handler had been installed
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _track(path):
    """Register a temp file; install the SIGTERM cleanup when we are the main thread."""
    global _prev_handler
    with _live_lock:
        first = not _live
        _live.add(path)
    if first and threading.current_thread() is threading.main_thread():
        try:
            cur = signal.getsignal(signal.SIGTERM)
            if cur is not _on_sigterm:
                _prev_handler = cur
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not allowed here (embedded interpreter, ...)
            pass


def _untrack(path):
    with _live_lock:
        _live.discard(path)
        last = not _live
    if last and threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is _on_sigterm:
                signal.signal(signal.SIGTERM, _prev_handler if _prev_handler is not None
                              else signal.SIG_DFL)
        except (ValueError, OSError):
            pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temps(path):
    """Remove temp files of ``path`` whose writer on this host no longer runs.

    Returns the list of removed paths. Called by :func:`write_atomic` before it writes.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pat = re.compile(r"^\." + re.escape(os.path.basename(path)) + r"\.(?P<host>[A-Za-z0-9_-]+)"
                     r"\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    host = _host()
    for name in names:
        m = pat.match(name)
        if not m or m["host"] != host:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
        except OSError:
            pass
    return removed


def write_atomic(path, write):
    """Write ``path`` atomically: ``write(f)`` fills a binary file object.

    Readers see the old file or the new one, never a part; on an exception or SIGTERM
    the temp file is removed; stale temps of dead writers are swept first.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.{_host()}.{os.getpid()}.", suffix=".tmp",
        dir=directory)
    _track(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        _untrack(tmp)
    fsync_dir(directory)


def fsync_dir(directory):
    """Make renames in ``directory`` durable (best effort: not every OS/fs allows it)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
