"""The per-node agent of deepseek-run: hosts or joins the store, spawns the workers,
relays their output line by line, watches them, forwards signals, and cleans up.

Process hygiene, and why:

* Each worker starts in its own session (``setsid``) so a signal to its process group
  reaches whatever it started, and the terminal's Ctrl-C reaches only deepseek-run,
  which forwards it deliberately (once to all; a second one kills).
* Each worker gets ``PR_SET_PDEATHSIG(SIGKILL)``: if deepseek-run itself is killed
  with SIGKILL the kernel kills the workers.
* deepseek-run makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): processes
  that workers start and orphan (even ones that called setsid) are re-parented to us
  rather than to init, so the final sweep finds and kills them.
* The store runs in threads of this process, so it cannot outlive it.
* Once every worker and everything they started is gone -- however they ended:
  success, failure, a worker killed with SIGKILL, SIGTERM/SIGINT/SIGHUP to us -- the
  job's shared-memory segments still named in /dev/shm are unlinked (by the job's
  prefix, :func:`deepseek.collectives.shm.cleanup_job`). The workers unlink each
  segment as soon as every rank has attached it; this sweep covers a rank that dies
  in the short window between creation and the last attach. (SIGKILL of deepseek-run
  itself leaves no chance to sweep.)

The main loop is single-threaded: a selector over all worker pipes plus a wakeup
socket that signal handlers (SIGCHLD included) write to, so worker exits and signals
are noticed at once without polling.
"""
from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

# deepseek.collectives is lazy (PEP 562): this loads store.py (stdlib only), not
# numpy or the process-group code
from ..collectives import shm
from ..collectives.store import StoreClient, StoreError, StoreServer, new_token
from .cli import Config, available_cores

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_TAIL_LINES = 20
_MAX_LINE = 1 << 16     # a "line" longer than this is emitted in pieces


class StartupError(Exception):
    """Refused before any worker started (busy port, unreachable node 0 ...)."""


def _libc():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, ImportError):
        return None


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_exit(rc: int) -> str:
    if rc < 0:
        return f"killed by {_signame(-rc)} (signal {-rc})"
    return f"exit code {rc}"


def shell_code(rc: int) -> int:
    """Popen's -N (signal N) becomes 128+N, as shells report it."""
    return 128 - rc if rc < 0 else rc


class Worker:
    def __init__(self, local_rank: int, rank: int, proc: subprocess.Popen, log):
        self.local_rank = local_rank
        self.rank = rank
        self.proc = proc
        self.rc: int | None = None
        self.exited_at: float | None = None
        self.log = log
        self.tail = collections.deque(maxlen=_TAIL_LINES)   # last stderr lines
        self.open_streams = 2


class Agent:
    def __init__(self, config: Config):
        self.c = config
        self.token = config.token or new_token()
        self.server: StoreServer | None = None
        self.client: StoreClient | None = None
        self.run_id = None
        self.port = config.master_port
        self.prefix_ok = True
        self._setup_store()

    # ------------------------------------------------------------------ store
    def _setup_store(self):
        c = self.c
        if c.node_rank == 0:
            # One node: listen on loopback only. Several: every interface (the token
            # keeps others out), since --master-addr may be any of our names.
            bind = "127.0.0.1" if c.nnodes == 1 and c.master_addr in (
                "127.0.0.1", "localhost") else "0.0.0.0"
            try:
                self.server = StoreServer(bind, c.master_port, self.token).start()
            except OSError as e:
                raise StartupError(f"cannot listen on port {c.master_port} for the store: "
                                   f"{e.strerror or e}" +
                                   (" (port busy)" if c.master_port else "")) from None
            self.port = self.server.port
            self.run_id = new_token()[:12]
            if c.nnodes > 1:
                self.client = StoreClient("127.0.0.1", self.port, self.token,
                                          timeout=c.timeout)
                self.client.set("deepseek/run/id", self.run_id)
                self.client.set("deepseek/run/nproc", str(c.nproc))
        else:
            try:
                self.client = StoreClient(c.master_addr, c.master_port, self.token,
                                          timeout=c.timeout, connect_timeout=c.timeout)
                self.run_id = self.client.get("deepseek/run/id").decode()
                nproc0 = int(self.client.get("deepseek/run/nproc"))
            except StoreError as e:
                raise StartupError(f"node {c.node_rank} cannot join node 0's store at "
                                   f"{c.master_addr}:{c.master_port}: {e}") from None
            # From now on the client only polls and reports: don't let a vanished node 0
            # stall the main loop for the whole rendezvous timeout.
            self.client.connect_timeout = min(c.timeout, 10.0)
            if nproc0 != c.nproc:
                raise StartupError(f"--nproc {c.nproc} on node {c.node_rank} but node 0 "
                                   f"runs {nproc0}: every node needs the same --nproc")

    def _store_addr(self) -> str:
        c = self.c
        if c.nnodes == 1:
            return f"127.0.0.1:{self.port}" if self.server.host in (
                "127.0.0.1", "0.0.0.0") else f"{c.master_addr}:{self.port}"
        return f"{c.master_addr}:{self.port}"

    # ------------------------------------------------------------------ spawning
    def _worker_env(self, local_rank: int) -> dict:
        c = self.c
        env = dict(os.environ)
        world = c.nnodes * c.nproc
        env.update({
            "RANK": str(c.node_rank * c.nproc + local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(c.nproc),
            "NODE_RANK": str(c.node_rank),
            "GROUP_RANK": str(c.node_rank),
            "MASTER_ADDR": c.master_addr,
            "MASTER_PORT": str(self.port),
            "DEEPSEEK_STORE_ADDR": self._store_addr(),
            "DEEPSEEK_TOKEN": self.token,
            "DEEPSEEK_LAUNCHER": "deepseek-run",
            "DEEPSEEK_RUN_ID": self.run_id,
            "DEEPSEEK_NNODES": str(c.nnodes),
            "DEEPSEEK_RDZV_TIMEOUT": f"{c.timeout:g}",
        })
        env.setdefault("PYTHONUNBUFFERED", "1")
        if c.omp_threads is not None:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[name] = str(c.omp_threads)
        return env

    def _cpus_for(self, local_rank: int) -> set[int] | None:
        if self.c.bind != "core":
            return None
        cores = available_cores()
        share = max(1, len(cores) // self.c.nproc)
        if self.c.nproc > len(cores):       # more workers than cores: wrap around
            return {cores[local_rank % len(cores)]}
        return set(cores[local_rank * share:(local_rank + 1) * share])

    def _spawn(self, local_rank: int) -> Worker:
        libc = self._libc
        cpus = self._cpus_for(local_rank)

        def preexec():
            # Runs in the child between fork and exec: keep it to raw syscalls.
            if libc is not None:
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if cpus:
                os.sched_setaffinity(0, cpus)

        proc = subprocess.Popen(
            self.c.command, env=self._worker_env(local_rank), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=preexec if (libc is not None or cpus) else None)
        rank = self.c.node_rank * self.c.nproc + local_rank
        log = None
        if self.c.log_dir:
            log = open(os.path.join(self.c.log_dir, f"rank{rank}.log"), "ab")
        return Worker(local_rank, rank, proc, log)

    # ------------------------------------------------------------------ output
    def _write(self, fd: int, data: bytes):
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

    def _emit(self, w: Worker, fd: int, line: bytes):
        if not line.endswith(b"\n"):
            line += b"\n"
        if fd == 2:
            w.tail.append(line.decode(errors="replace").rstrip("\n"))
        if w.log is not None:
            w.log.write(line)
        # One write per line: lines from different workers never mix mid-line.
        self._write(fd, (b"[rank%d]:" % w.rank + line) if self.c.prefix else line)

    def _on_readable(self, key):
        w, fd, buf = key.data
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

    def note(self, message: str):
        self._write(2, f"deepseek-run: {message}\n".encode())

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame):
        self._signals.append(signum)

    def _install_signals(self):
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        # A no-op handler (not SIG_DFL) so that SIGCHLD writes to the wakeup fd.
        self._old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *a: None)

    def _restore_signals(self):
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        signal.set_wakeup_fd(self._old_wakeup)
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ process groups
    def _signal_workers(self, sig: int, include_exited: bool = False):
        for w in self.workers:
            if w.rc is None or include_exited:
                try:
                    os.killpg(w.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def _sweep_orphans(self):
        """Kill what workers left behind: their process groups, then anything that was
        re-parented to us (we are a subreaper), until nothing is left."""
        self._signal_workers(signal.SIGKILL, include_exited=True)
        me = os.getpid()
        for _ in range(20):
            kids = _children_of(me)
            kids.discard(self._store_pid_guard)
            if not kids:
                return
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in kids:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def _sweep_shm(self) -> list[str]:
        """Unlink the job's shared-memory segments the workers left named in /dev/shm
        (the workers get DEEPSEEK_RUN_ID=run_id, and segment names carry it); returns
        their names."""
        if not self.run_id:
            return []
        return shm.cleanup_job(self.run_id)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        c = self.c
        self._libc = _libc()
        self._broken: set[int] = set()
        self._signals: list[int] = []
        self._store_pid_guard = -1
        if self._libc is not None:
            self._libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if c.omp_default and c.nproc > 1:
            self.note(f"OMP_NUM_THREADS={c.omp_threads} per worker ({len(available_cores())} "
                      f"cores / {c.nproc} workers); set --omp-threads to change it")
        self._install_signals()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.workers: list[Worker] = []
        failed: Worker | None = None
        got_signal: int | None = None
        stop_deadline: float | None = None
        killed = False
        try:
            for lr in range(c.nproc):
                w = self._spawn(lr)
                self.workers.append(w)
                for stream, fd in ((w.proc.stdout, 1), (w.proc.stderr, 2)):
                    os.set_blocking(stream.fileno(), False)
                    self.sel.register(stream, selectors.EVENT_READ, (w, fd, bytearray()))
            remote = self._watch_remote() if c.nnodes > 1 else None

            while True:
                timeout = None if stop_deadline is None else max(0.0,
                                                                 stop_deadline - time.monotonic())
                if remote is not None and stop_deadline is None:
                    timeout = 0.5 if timeout is None else min(timeout, 0.5)
                for key, _ in self.sel.select(timeout):
                    if key.data is None:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    else:
                        self._on_readable(key)

                # Signals to us: forward the first, kill on a repeat.
                while self._signals:
                    sig = self._signals.pop(0)
                    if got_signal is None and failed is None:
                        got_signal = sig
                        self.note(f"got {_signame(sig)}: forwarding it to the workers")
                        self._signal_workers(sig)
                        stop_deadline = time.monotonic() + c.grace
                    elif not killed:
                        self.note(f"got {_signame(sig)} again: killing the workers")
                        self._signal_workers(signal.SIGKILL)
                        killed = True

                # Reap workers and notice the first failure.
                now = time.monotonic()
                for w in self.workers:
                    if w.rc is None and w.proc.poll() is not None:
                        w.rc, w.exited_at = w.proc.returncode, now
                        if w.rc != 0 and failed is None and got_signal is None:
                            failed = w
                            self._publish_failure(w)
                            # before stopping the others: they write their part
                            self._hang_report = self._collect_hang_report()
                            self._signal_workers(signal.SIGTERM)
                            stop_deadline = now + c.grace

                if remote is not None and failed is None and got_signal is None:
                    msg = remote()
                    if msg:
                        self.note(msg + "; stopping this node's workers")
                        self._remote_failure = msg
                        got_signal = signal.SIGTERM
                        self._signal_workers(signal.SIGTERM)
                        stop_deadline = now + c.grace

                running = [w for w in self.workers if w.rc is None]
                if not running:
                    # Grandchildren may still hold the pipes open: stop them, then drain.
                    self._signal_workers(signal.SIGKILL, include_exited=True)
                    self._drain()
                    break
                if stop_deadline is not None and time.monotonic() >= stop_deadline and not killed:
                    self.note(f"{len(running)} worker(s) still running {c.grace:g}s after "
                              "SIGTERM: sending SIGKILL")
                    self._signal_workers(signal.SIGKILL)
                    killed = True
                    stop_deadline = None
        finally:
            self._sweep_orphans()
            # nothing of the job runs now that could still attach a segment
            removed = self._sweep_shm()
            self._restore_signals()
            for w in getattr(self, "workers", []):
                if w.log is not None:
                    w.log.close()
            self.sel.close()

        code = self._finish(failed, got_signal)
        if removed:
            self.note(f"removed {len(removed)} shared-memory segment(s) the workers left "
                      f"in {shm.SHM_DIR}: {', '.join(sorted(removed))}")
        self._close_store(code)
        return code

    def _drain(self, limit: float = 2.0):
        deadline = time.monotonic() + limit
        while any(k.data is not None for k in self.sel.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in self.sel.select(remaining):
                if key.data is not None:
                    self._on_readable(key)
                else:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass

    def _finish(self, failed: Worker | None, got_signal: int | None) -> int:
        if failed is not None:
            others = [w for w in self.workers if w is not failed and w.rc not in (0, None)]
            self.note(f"rank {failed.rank} (local rank {failed.local_rank}, pid "
                      f"{failed.proc.pid}) failed first: {describe_exit(failed.rc)}")
            if failed.tail:
                self.note(f"last lines of rank {failed.rank}'s stderr:")
                self._write(2, "".join(f"    {line}\n" for line in failed.tail).encode())
            else:
                self.note(f"rank {failed.rank} wrote nothing to stderr")
            if others:
                self.note("stopped the other workers: " + ", ".join(
                    f"rank {w.rank} ({describe_exit(w.rc)})" for w in others))
            report = getattr(self, "_hang_report", None)
            if report:
                self.note("a collective timed out; what every rank was doing:")
                self._write(2, "".join(f"    {line}\n" for line in report.splitlines())
                            .encode())
            return shell_code(failed.rc)
        if got_signal is not None:
            if getattr(self, "_remote_failure", None):
                return 1
            return 128 + got_signal
        return 0

    def _collect_hang_report(self) -> str | None:
        """The job's hang report if a collective timed out (a rank asked every rank
        for its pending op and stacks through the store: collectives/hang.py), read
        from the store node 0 hosts while the other workers are still alive to add
        their part; None otherwise (checked with one store round trip)."""
        if self.server is None:
            return None                  # node 0 prints it, once for the whole job
        from ..collectives import hang  # stdlib only, like the store
        client = self.client
        try:
            if client is None:
                client = StoreClient("127.0.0.1", self.port, self.token, timeout=5.0,
                                     connect_timeout=5.0)
            # give every rank's watchdog one poll to write its part
            wait = 1.0 + (self.c.hang_poll or 1.0)
            return hang.collect_job_report(client, wait=min(wait, 10.0))
        except Exception as e:  # noqa: BLE001 - a report must never break the teardown
            return f"(hang report unavailable: {e})"
        finally:
            if client is not None and client is not self.client:
                client.close()

    # ------------------------------------------------------------------ multi-node
    def _publish_failure(self, w: Worker):
        if self.client is None:
            return
        try:
            self.client.compare_set(
                "deepseek/run/failed", b"",
                f"rank {w.rank} on node {self.c.node_rank} failed: {describe_exit(w.rc)}")
        except StoreError:
            pass

    def _watch_remote(self):
        """Another node failing (or node 0 vanishing) stops ours. Returns a poll
        function: None while all is well, else a message."""
        client = self.client
        state = {"next": 0.0}

        def poll():
            now = time.monotonic()
            if now < state["next"]:
                return None
            state["next"] = now + 0.5
            try:
                if client.check(["deepseek/run/failed"]):
                    return client.get("deepseek/run/failed", timeout=1).decode()
            except StoreError as e:
                return f"lost node 0's store ({e})"
            return None

        return poll

    def _close_store(self, code: int):
        c = self.c
        if self.client is not None:
            try:
                self.client.set(f"deepseek/run/done/{c.node_rank}", str(code))
                if self.server is not None:
                    # Node 0 hosts the store: keep it up until every node is done
                    # with it (bounded by the rendezvous timeout).
                    keys = [f"deepseek/run/done/{r}" for r in range(c.nnodes)]
                    missing = self.client.missing(keys)
                    if missing and code == 0:
                        try:
                            self.client.wait(keys, timeout=c.timeout)
                        except StoreError:
                            self.note("not every node reported done within --timeout; "
                                      "closing the store")
            except StoreError:
                pass
            self.client.close()
        if self.server is not None:
            self.server.close()


def _children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    out = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the ")" that closes the command name.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.add(int(name))
    return out
