"""The per-node agent of deepseek-run: process hygiene, signals, the loop that watches
one attempt's workers, and the static (one-attempt) job.

The pieces, each with one job:

* :class:`deepseek.launcher.group.WorkerGroup` is one attempt's workers on this node:
  spawn (setsid, ``PR_SET_PDEATHSIG``), relay output, reap, signal, stop.
* :class:`NodeAgent` runs attempts: :meth:`NodeAgent.run_attempt` watches one group
  until every worker has exited -- the first failure stops the others, signals to us
  are forwarded, an outside reason (another node failed, the round ended) stops them
  too -- and :meth:`NodeAgent.end_attempt` sweeps what the attempt left. What to do
  *after* an attempt is decided by the subclass: :class:`Agent` (here) runs exactly
  one attempt of a job of fixed size; :class:`deepseek.launcher.elastic_agent.ElasticAgent`
  restarts the world through rendezvous rounds.

Process hygiene, and why:

* Each worker starts in its own session and gets ``PR_SET_PDEATHSIG(SIGKILL)``
  (:mod:`deepseek.launcher.group`): a signal to its process group reaches whatever it
  started, and SIGKILL of deepseek-run itself makes the kernel kill the workers.
* deepseek-run makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): processes
  that workers start and orphan (even ones that called setsid) are re-parented to us
  rather than to init, so the sweep after every attempt finds and kills them.
* The store runs in threads of this process, so it cannot outlive it.
* Once every worker and everything they started is gone -- however they ended:
  success, failure, a worker killed with SIGKILL, SIGTERM/SIGINT/SIGHUP to us -- the
  attempt's shared-memory segments still named in /dev/shm are unlinked (by the run
  id's prefix, :func:`deepseek.collectives.shm.cleanup_job`). The workers unlink each
  segment as soon as every rank has attached it; this sweep covers a rank that dies
  in the short window between creation and the last attach. (SIGKILL of deepseek-run
  itself leaves no chance to sweep.)

The main loop is single-threaded: a selector over all worker pipes plus a wakeup
socket that signal handlers (SIGCHLD included) write to, so worker exits and signals
are noticed at once without polling.
"""
from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field

# deepseek.collectives is lazy (PEP 562): this loads store.py (stdlib only), not
# numpy or the process-group code
from ..collectives import shm
from ..collectives.store import StoreClient, StoreError, StoreServer, new_token
from .cli import Config, available_cores
from .group import (GroupSpec, Output, Worker, WorkerGroup, describe_exit, libc,
                    shell_code, signame)

__all__ = ["StartupError", "NodeAgent", "Agent", "AttemptResult", "describe_exit",
           "shell_code"]

_PR_SET_CHILD_SUBREAPER = 36

# kept for callers of the names that used to live here
_signame = signame


class StartupError(Exception):
    """Refused before any worker started (busy port, unreachable node 0 ...)."""


@dataclass
class AttemptResult:
    """How one attempt's workers on this node ended."""
    workers: list[Worker]
    failed: Worker | None = None        # the first worker that failed
    signal: int | None = None           # a signal to deepseek-run stopped them
    stopped: str | None = None          # an outside reason stopped them (a message)
    removed: list[str] = field(default_factory=list)   # /dev/shm names swept

    @property
    def succeeded(self) -> bool:
        return self.failed is None and self.signal is None and self.stopped is None


class NodeAgent:
    """Process hygiene, signals and the watch loop of one attempt; subclasses decide
    what a job is (see module docstring)."""

    def __init__(self, config: Config):
        self.c = config
        self.out = Output()
        self.sel: selectors.BaseSelector | None = None

    def note(self, message: str):
        """One line of deepseek-run's own on stderr."""
        self.out.note(message)

    # ------------------------------------------------------------------ lifetime
    def begin(self):
        """Become a subreaper, install the signal handlers, make the selector."""
        c = self.c
        self._libc = libc()
        self._signals: list[int] = []
        if self._libc is not None:
            self._libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if c.omp_default and c.nproc > 1:
            self.note(f"OMP_NUM_THREADS={c.omp_threads} per worker ({len(available_cores())} "
                      f"cores / {c.nproc} workers); set --omp-threads to change it")
        self._install_signals()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)

    def end(self):
        """Undo :meth:`begin` (after the last attempt was swept)."""
        self._restore_signals()
        self.sel.close()

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

    def _drain_wakeup(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ------------------------------------------------------------------ one attempt
    def _cpus_for(self, local_rank: int) -> set[int] | None:
        if self.c.bind != "core":
            return None
        cores = available_cores()
        share = max(1, len(cores) // self.c.nproc)
        if self.c.nproc > len(cores):       # more workers than cores: wrap around
            return {cores[local_rank % len(cores)]}
        return set(cores[local_rank * share:(local_rank + 1) * share])

    def start_group(self, env_for, rank_of) -> WorkerGroup:
        """Spawn this node's workers of one attempt."""
        c = self.c
        spec = GroupSpec(command=c.command, nproc=c.nproc, env_for=env_for,
                         rank_of=rank_of, cpus_for=self._cpus_for, log_dir=c.log_dir,
                         prefix=c.prefix)
        group = WorkerGroup(spec, self.sel, self.out, self._libc)
        self.group = group
        return group.start()

    def run_attempt(self, group: WorkerGroup, on_failure=None, watch=None,
                    watch_interval: float = 0.5, recover=None) -> AttemptResult:
        """Watch ``group`` until every worker has exited.

        The first worker to fail stops the others (SIGTERM, SIGKILL after --grace);
        ``on_failure(worker)`` runs before that (publish it, collect a hang report). A
        signal to us is forwarded once, a repeat kills. ``recover(worker)`` returning
        True means the failure was dealt with (in-process recovery replaced the
        worker): the others go on. ``watch()``, called about every
        ``watch_interval`` seconds while nothing is stopping the group, returns a
        message when something outside this node means the workers must stop."""
        c = self.c
        res = AttemptResult(workers=group.workers)
        stop_deadline: float | None = None
        killed = False

        def stopping():
            return res.failed is not None or res.signal is not None or res.stopped is not None

        while True:
            timeout = None if stop_deadline is None else max(0.0,
                                                             stop_deadline - time.monotonic())
            if watch is not None and not stopping():
                timeout = watch_interval if timeout is None else min(timeout, watch_interval)
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    self._drain_wakeup()
                else:
                    key.data[0].on_readable(key)

            # Signals to us: forward the first, kill on a repeat.
            while self._signals:
                sig = self._signals.pop(0)
                if not stopping():
                    res.signal = sig
                    self.note(f"got {signame(sig)}: forwarding it to the workers")
                    group.signal(sig)
                    stop_deadline = time.monotonic() + c.grace
                elif not killed:
                    self.note(f"got {signame(sig)} again: killing the workers")
                    group.signal(signal.SIGKILL)
                    killed = True
                    if res.signal is None:
                        res.signal = sig

            # Reap workers and notice the first failure.
            now = time.monotonic()
            for w in group.reap(now):
                if w.rc != 0 and not stopping():
                    if recover is not None and recover(w):
                        continue
                    res.failed = w
                    if on_failure is not None:
                        on_failure(w)
                    group.signal(signal.SIGTERM)
                    stop_deadline = now + c.grace

            if watch is not None and not stopping():
                msg = watch()
                if msg:
                    self.note(msg + "; stopping this node's workers")
                    res.stopped = msg
                    group.signal(signal.SIGTERM)
                    stop_deadline = now + c.grace

            running = group.running()
            if not running:
                # Grandchildren may still hold the pipes open: stop them, then drain.
                group.signal(signal.SIGKILL, include_exited=True)
                group.drain()
                return res
            if stop_deadline is not None and time.monotonic() >= stop_deadline and not killed:
                self.note(f"{len(running)} worker(s) still running {c.grace:g}s after "
                          "SIGTERM: sending SIGKILL")
                group.signal(signal.SIGKILL)
                killed = True
                stop_deadline = None

    def end_attempt(self, group: WorkerGroup | None, run_id: str | None) -> list[str]:
        """Kill everything the attempt left (process groups, orphans re-parented to us),
        then unlink its shared-memory segments; returns their names."""
        if group is not None:
            group.signal(signal.SIGKILL, include_exited=True)
        self._sweep_orphans()
        if group is not None:
            group.close()
        # nothing of the attempt runs now that could still attach a segment
        return shm.cleanup_job(run_id) if run_id else []

    def _sweep_orphans(self):
        """Kill what workers left behind and was re-parented to us (we are a
        subreaper), until nothing is left. The store is threads, never a child."""
        me = os.getpid()
        for _ in range(20):
            kids = _children_of(me)
            if not kids:
                return
            for pid in kids:
                with contextlib.suppress(ProcessLookupError):   # it exited meanwhile
                    os.kill(pid, signal.SIGKILL)
            for pid in kids:
                with contextlib.suppress(ChildProcessError):    # already reaped
                    os.waitpid(pid, 0)

    def note_removed(self, removed: list[str]):
        if removed:
            self.note(f"removed {len(removed)} shared-memory segment(s) the workers left "
                      f"in {shm.SHM_DIR}: {', '.join(sorted(removed))}")

    def report_failure(self, failed: Worker, workers: list[Worker]):
        """Name the worker that failed first, the end of its stderr, the others."""
        others = [w for w in workers if w is not failed and w.rc not in (0, None)]
        self.note(f"rank {failed.rank} (local rank {failed.local_rank}, pid "
                  f"{failed.proc.pid}) failed first: {describe_exit(failed.rc)}")
        if failed.tail:
            self.note(f"last lines of rank {failed.rank}'s stderr:")
            self.out.block(failed.tail)
        else:
            self.note(f"rank {failed.rank} wrote nothing to stderr")
        if others:
            self.note("stopped the other workers: " + ", ".join(
                f"rank {w.rank} ({describe_exit(w.rc)})" for w in others))

    def collect_hang_report(self, host: str, port: int, token: str,
                            client: StoreClient | None = None) -> str | None:
        """The job's hang report if a collective timed out (a rank asked every rank
        for its pending op and stacks through the store: collectives/hang.py), read
        while the other workers are still alive to add their part; None otherwise
        (checked with one store round trip)."""
        from ..collectives import hang  # stdlib only, like the store
        own = None
        try:
            if client is None:
                client = own = StoreClient(host, port, token, timeout=5.0,
                                           connect_timeout=5.0)
            # give every rank's watchdog one poll to write its part
            wait = 1.0 + (self.c.hang_poll or 1.0)
            return hang.collect_job_report(client, wait=min(wait, 10.0))
        except Exception as e:  # noqa: BLE001 - a report must never break the teardown
            return f"(hang report unavailable: {e})"
        finally:
            if own is not None:
                own.close()

    def print_hang_report(self, report: str | None):
        if report:
            self.note("a collective timed out; what every rank was doing:")
            self.out.block(report.splitlines())


class Agent(NodeAgent):
    """A job of fixed size, run once: node 0 hosts the store on --master-port, every
    node runs its --nproc workers, the first failure anywhere stops every node."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.token = config.token or new_token()
        self.server: StoreServer | None = None
        self.client: StoreClient | None = None
        self.run_id = None
        self.port = config.master_port
        self._hang_report = None
        self._remote_failure = None
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

    def _worker_env(self, local_rank: int) -> dict:
        c = self.c
        return worker_env(c, rank=c.node_rank * c.nproc + local_rank, local_rank=local_rank,
                          world_size=c.nnodes * c.nproc, node_rank=c.node_rank,
                          nnodes=c.nnodes, master_addr=c.master_addr,
                          master_port=self.port, store_addr=self._store_addr(),
                          token=self.token, run_id=self.run_id, restart_count=0)

    # ------------------------------------------------------------------ the job
    def run(self) -> int:
        """Run the job's one attempt on this node; returns deepseek-run's exit code."""
        c = self.c
        self.begin()
        group = None
        try:
            group = self.start_group(self._worker_env,
                                     lambda lr: c.node_rank * c.nproc + lr)
            res = self.run_attempt(group, on_failure=self._on_failure,
                                   watch=self._watch_remote() if c.nnodes > 1 else None)
        finally:
            removed = self.end_attempt(group, self.run_id)
            self.end()

        code = self._finish(res)
        self.note_removed(removed)
        self._close_store(code)
        return code

    def _on_failure(self, w: Worker):
        self._publish_failure(w)
        if self.server is not None:   # node 0 prints it, once for the whole job
            # before stopping the others: they write their part
            self._hang_report = self.collect_hang_report("127.0.0.1", self.port,
                                                         self.token, self.client)

    def _finish(self, res: AttemptResult) -> int:
        if res.failed is not None:
            self.report_failure(res.failed, res.workers)
            self.print_hang_report(self._hang_report)
            return shell_code(res.failed.rc)
        if res.stopped is not None:
            return 1
        if res.signal is not None:
            return 128 + res.signal
        return 0

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
            with contextlib.suppress(StoreError):       # the store is gone: nobody to tell
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
            self.client.close()
        if self.server is not None:
            self.server.close()


def worker_env(c: Config, *, rank: int, local_rank: int, world_size: int, node_rank: int,
               nnodes: int, master_addr: str, master_port: int, store_addr: str,
               token: str, run_id: str, restart_count: int) -> dict:
    """The environment of one worker: ours, plus what torchrun sets, plus the job's
    DEEPSEEK_* variables (the store, its token, the run id, the attempt)."""
    env = dict(os.environ)
    env.update({
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(c.nproc),
        "NODE_RANK": str(node_rank),
        "GROUP_RANK": str(node_rank),
        "GROUP_WORLD_SIZE": str(nnodes),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "DEEPSEEK_STORE_ADDR": store_addr,
        "DEEPSEEK_TOKEN": token,
        "DEEPSEEK_LAUNCHER": "deepseek-run",
        "DEEPSEEK_RUN_ID": run_id,
        "DEEPSEEK_NNODES": str(nnodes),
        "DEEPSEEK_RDZV_TIMEOUT": f"{c.timeout:g}",
        # which attempt this is (0: the first); torchrun's name for scripts written for it
        "DEEPSEEK_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(c.max_restarts),
    })
    env.setdefault("PYTHONUNBUFFERED", "1")
    if c.timeline:
        env["DEEPSEEK_TIMELINE"] = c.timeline
    if c.omp_threads is not None:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(c.omp_threads)
    return env


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
