"""One attempt's worker group on one node: spawn the workers, relay their output line
by line, reap them, signal and stop them.

A :class:`WorkerGroup` knows nothing about what happens after its workers end (that
is the agent's loop, :mod:`deepseek.launcher.agent`): it is made for one attempt and
thrown away. The process-hygiene code that must exist exactly once lives here:

* each worker starts in its own session (``setsid``), so a signal to its process group
  reaches whatever it started, and the terminal's Ctrl-C reaches only deepseek-run;
* each worker gets ``PR_SET_PDEATHSIG(SIGKILL)``: if deepseek-run itself is killed
  with SIGKILL, the kernel kills the workers.

The group does not own the selector: the agent's single-threaded loop multiplexes the
group's pipes with its signal wakeup socket, and hands readable pipes back to
:meth:`WorkerGroup.on_readable`.
"""
from __future__ import annotations

import collections
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 20
_MAX_LINE = 1 << 16     # a "line" longer than this is emitted in pieces


def libc():
    """The C library through ctypes (for prctl), or None where it cannot be loaded."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, ImportError):
        return None


def signame(sig: int) -> str:
    """``SIGTERM`` for 15; ``signal N`` for a number without a name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_exit(rc: int) -> str:
    """Popen's return code in words: ``exit code 3`` or ``killed by SIGKILL (signal 9)``."""
    if rc < 0:
        return f"killed by {signame(-rc)} (signal {-rc})"
    return f"exit code {rc}"


def shell_code(rc: int) -> int:
    """Popen's -N (signal N) becomes 128+N, as shells report it."""
    return 128 - rc if rc < 0 else rc


class Output:
    """deepseek-run's own stdout/stderr: whole writes, and a reader that went away
    (``| head``) never stops the job."""

    def __init__(self):
        self._broken: set[int] = set()

    def write(self, fd: int, data: bytes):
        """Write all of ``data`` to ``fd`` (unless writing to it already failed)."""
        if fd in self._broken:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except InterruptedError:
                continue
            except OSError:              # our stdout went away (| head): keep running
                self._broken.add(fd)
                return
            view = view[n:]

    def note(self, message: str):
        """One line of deepseek-run's own on stderr."""
        self.write(2, f"deepseek-run: {message}\n".encode())

    def block(self, lines, indent: str = "    "):
        """Indented lines on stderr (a traceback, a report), in one write."""
        self.write(2, "".join(f"{indent}{line}\n" for line in lines).encode())


@dataclass
class GroupSpec:
    """What one attempt's workers are: the command, how many, and each one's
    environment, global rank and CPU set."""
    command: list[str]
    nproc: int
    env_for: Callable[[int], dict]            # local rank -> environment
    rank_of: Callable[[int], int]             # local rank -> global rank
    cpus_for: Callable[[int], "set[int] | None"] = lambda local_rank: None
    log_dir: str | None = None
    prefix: bool = True


class Worker:
    """One worker process and what the launcher keeps of it."""

    def __init__(self, local_rank: int, rank: int, proc: subprocess.Popen, log):
        self.local_rank = local_rank
        self.rank = rank
        self.proc = proc
        self.rc: int | None = None
        self.exited_at: float | None = None
        self.log = log
        self.tail = collections.deque(maxlen=_TAIL_LINES)   # last stderr lines
        self.open_streams = 2


class WorkerGroup:
    """The workers of one attempt on this node (see module docstring)."""

    def __init__(self, spec: GroupSpec, sel: selectors.BaseSelector, out: Output,
                 libc_handle=None):
        self.spec = spec
        self.sel = sel
        self.out = out
        self._libc = libc_handle
        self.workers: list[Worker] = []
        self.replaced: list[Worker] = []      # dead workers respawn() replaced
        self.spares: list[Worker] = []        # hot spares not promoted yet

    # ------------------------------------------------------------------ spawning
    def start(self) -> "WorkerGroup":
        """Spawn every worker and register its pipes with the selector."""
        for lr in range(self.spec.nproc):
            w = self._spawn(lr)
            self.workers.append(w)
            for stream, fd in ((w.proc.stdout, 1), (w.proc.stderr, 2)):
                os.set_blocking(stream.fileno(), False)
                self.sel.register(stream, selectors.EVENT_READ, (self, w, fd, bytearray()))
        return self

    def start_spare(self, env: dict) -> Worker:
        """Start a hot spare (in-process recovery): the command with ``env``, kept in
        :attr:`spares` (not waited for, stopped with the group) until
        :meth:`promote` puts it in a dead worker's place."""
        w = self._spawn(0, env=env)
        w.rank = w.local_rank = -1
        self.spares.append(w)
        self._register(w)
        return w

    def promote(self, spare: Worker, dead: Worker):
        """``spare`` takes ``dead``'s rank and place in :attr:`workers`."""
        self.spares.remove(spare)
        spare.rank, spare.local_rank = dead.rank, dead.local_rank
        self.workers[self.workers.index(dead)] = spare
        self.replaced.append(dead)

    def _register(self, w: Worker):
        for stream, fd in ((w.proc.stdout, 1), (w.proc.stderr, 2)):
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream, selectors.EVENT_READ, (self, w, fd, bytearray()))

    def respawn(self, dead: Worker) -> Worker:
        """Start a replacement for ``dead`` (same local rank and environment) in its
        place in :attr:`workers` (in-process recovery); ``dead`` stays in
        :attr:`replaced`, its pipes are relayed until they close."""
        w = self._spawn(dead.local_rank)
        self.workers[self.workers.index(dead)] = w
        self.replaced.append(dead)
        self._register(w)
        return w

    def _spawn(self, local_rank: int, env: dict | None = None) -> Worker:
        lib = self._libc
        cpus = self.spec.cpus_for(local_rank)

        def preexec():
            # Runs in the child between fork and exec: keep it to raw syscalls.
            if lib is not None:
                lib.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if cpus:
                os.sched_setaffinity(0, cpus)

        proc = subprocess.Popen(
            self.spec.command, env=env or self.spec.env_for(local_rank),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=preexec if (lib is not None or cpus) else None)
        rank = self.spec.rank_of(local_rank)
        log = None
        if self.spec.log_dir:
            log = open(os.path.join(self.spec.log_dir, f"rank{rank}.log"), "ab")
        return Worker(local_rank, rank, proc, log)

    # ------------------------------------------------------------------ output
    def _emit(self, w: Worker, fd: int, line: bytes):
        if not line.endswith(b"\n"):
            line += b"\n"
        if fd == 2:
            w.tail.append(line.decode(errors="replace").rstrip("\n"))
        if w.log is not None:
            w.log.write(line)
        # One write per line: lines from different workers never mix mid-line.
        self.out.write(fd, (b"[rank%d]:" % w.rank + line) if self.spec.prefix else line)

    def on_readable(self, key):
        """Relay what one of our pipes has (whole lines only; EOF flushes the rest)."""
        _, w, fd, buf = key.data
        try:
            chunk = os.read(key.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            if buf:
                self._emit(w, fd, bytes(buf))
                buf.clear()
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
            w.open_streams -= 1
            return
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._emit(w, fd, bytes(buf[start:nl + 1]))
            start = nl + 1
        del buf[:start]
        if len(buf) > _MAX_LINE:
            self._emit(w, fd, bytes(buf))
            buf.clear()

    def _keys(self):
        return [k for k in self.sel.get_map().values()
                if isinstance(k.data, tuple) and k.data[0] is self]

    def drain(self, limit: float = 2.0):
        """Relay what is left in the pipes of exited workers (bounded by ``limit``)."""
        deadline = time.monotonic() + limit
        while self._keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in self.sel.select(remaining):
                if isinstance(key.data, tuple) and key.data[0] is self:
                    self.on_readable(key)
                elif key.data is not None and hasattr(key.data, "on_readable"):
                    key.data.on_readable(key)
                else:                       # the agent's wakeup socket: empty it
                    _drain_socket(key.fileobj)

    # ------------------------------------------------------------------ lifecycle
    def reap(self, now: float | None = None) -> list[Worker]:
        """Workers that exited since the last call (their ``rc`` is set now)."""
        now = time.monotonic() if now is None else now
        out = []
        for w in self.workers:
            if w.rc is None and w.proc.poll() is not None:
                w.rc, w.exited_at = w.proc.returncode, now
                out.append(w)
        for w in list(self.spares):          # a spare that died is just gone
            if w.proc.poll() is not None:
                w.rc, w.exited_at = w.proc.returncode, now
                self.spares.remove(w)
                self.replaced.append(w)
        return out

    def running(self) -> list[Worker]:
        """Workers not yet reaped."""
        return [w for w in self.workers if w.rc is None]

    def signal(self, sig: int, include_exited: bool = False):
        """Send ``sig`` to each worker's process group (their children included)."""
        for w in self.workers + self.spares:
            if w.rc is None or include_exited:
                try:
                    os.killpg(w.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def close(self):
        """Kill whatever is left of the workers' process groups, drop our pipes from
        the selector and close the logs (idempotent)."""
        self.signal(signal.SIGKILL, include_exited=True)
        for w in self.replaced:
            if w.log is not None:
                w.log.close()
                w.log = None
        for key in self._keys():
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
        for w in self.workers + self.spares:
            if w.rc is None:
                try:
                    w.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    w.rc = w.proc.returncode
            if w.log is not None:
                w.log.close()
                w.log = None


def _drain_socket(sock):
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
