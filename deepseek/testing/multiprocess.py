"""spawn_ranks: run a function on N real processes, the way a distributed job does.

    def check(rank, world_size):
        from deepseek import collectives as C
        pg = C.init_process_group()          # the environment says who we are
        ...
    results = spawn_ranks(check, world_size=4, timeout=60)

Each rank is a fresh process (``spawn`` start method: nothing inherited but what is
pickled) with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, the address and token of
a rendezvous store hosted by the parent (``DEEPSEEK_STORE_ADDR``/``DEEPSEEK_TOKEN``)
and a job id (``DEEPSEEK_RUN_ID``) in its environment, so ``init_process_group()``
just works inside ``fn``. ``fn(rank, world_size, *args)`` runs with per-rank seeds
(``random``, ``numpy.random``; ``seed + rank``). Its return value comes back to the
parent (pickled through multiprocessing's pipe -- parent and children are the same
trusted program).

On the first failure (an exception -- its traceback is sent back and re-raised in the
parent naming the rank -- or a process exiting with a non-zero code) every other
child is killed; at the deadline every child first dumps its Python stacks (shown in
the error) and is then killed. Shared-memory segments of the job are unlinked and the
store is closed in every case.
"""
import faulthandler
import os
import random
import signal
import sys
import tempfile
import time
import traceback

__all__ = ["spawn_ranks", "SpawnError", "RankFailure"]


class SpawnError(RuntimeError):
    """A rank failed or the job ran past its deadline. ``rank``: the first failing
    rank (None on a deadline); ``failures``: every RankFailure seen."""

    def __init__(self, message, rank=None, failures=()):
        super().__init__(message)
        self.rank = rank
        self.failures = list(failures)


class RankFailure:
    """How one rank failed (returned in place of a result with ``return_errors``)."""

    def __init__(self, rank, exitcode=None, error_type=None, message="", tb=""):
        self.rank, self.exitcode = rank, exitcode
        self.error_type, self.message, self.traceback = error_type, message, tb

    def __repr__(self):
        what = self.error_type or f"exit code {self.exitcode}"
        return f"<RankFailure rank {self.rank}: {what}: {self.message[:200]}>"

    def describe(self):
        if self.traceback:
            return f"rank {self.rank} raised {self.error_type}:\n{self.traceback}"
        return f"rank {self.rank} exited with code {self.exitcode} without a Python error"


def _child(fn, rank, world_size, args, kwargs, seed, conn, stackfile):
    # the rank's environment is already in place: _start_with_env set it before exec
    try:
        f = open(stackfile, "w")
        faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)
    except (OSError, AttributeError, ValueError):
        pass
    random.seed(seed + rank)
    try:
        import numpy as np

        np.random.seed((seed + rank) % 2 ** 32)
    except ImportError:
        pass
    try:
        result = fn(rank, world_size, *args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        try:
            conn.send(("err", rank, type(e).__name__, str(e), traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
        conn.close()
        _cleanup_collectives()
        os._exit(1)
    try:
        conn.send(("ok", rank, result))
    except Exception as e:  # noqa: BLE001 - unpicklable result
        conn.send(("err", rank, type(e).__name__, f"cannot send the result back: {e}",
                   traceback.format_exc()))
    conn.close()
    _cleanup_collectives()


def _cleanup_collectives():
    mod = sys.modules.get("deepseek.collectives")
    if mod is not None:
        try:
            if mod.is_initialized():
                mod.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _kill(procs):
    for p in procs:
        if p.is_alive():
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass
    for p in procs:
        p.join(5)


def _start_with_env(proc, env):
    """Start ``proc`` with ``env`` already in its environment at exec: the spawned
    interpreter imports numpy (unpickling ``fn``, re-importing ``__main__``) before
    ``_child`` runs, and OpenBLAS/OpenMP read their thread counts at load time."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def spawn_ranks(fn, world_size, timeout=60.0, args=(), env=None, seed=0,
                return_errors=False, store=True, kwargs=None):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes.

    Returns the ranks' return values in rank order. ``kwargs``: keyword arguments
    for ``fn``. ``env``: extra environment for
    every rank (a dict), or a callable ``rank -> dict``. ``timeout``: hard deadline in
    seconds for the whole job. ``return_errors=True``: do not raise when ranks fail;
    wait for all (up to the deadline) and return a RankFailure in their place.
    ``store=False``: no rendezvous store (e.g. for an MPI-style test).
    """
    import multiprocessing as mp

    from deepseek.collectives import shm as _shm

    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    ctx = mp.get_context("spawn")
    job = os.urandom(6).hex()
    server = None
    base_env = {"WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
                "DEEPSEEK_RUN_ID": job, "NODE_RANK": "0", "DEEPSEEK_LAUNCHER": "spawn_ranks",
                "MASTER_ADDR": "127.0.0.1"}
    if store:
        from deepseek.collectives.store import StoreServer, new_token

        token = new_token()
        server = StoreServer("127.0.0.1", 0, token).start()
        base_env.update({"DEEPSEEK_STORE_ADDR": server.address, "DEEPSEEK_TOKEN": token,
                         "MASTER_PORT": str(server.port)})
    tmpdir = tempfile.mkdtemp(prefix=f"dsk_spawn_{job}_")
    procs, conns, stackfiles = [], [], []
    results = [None] * world_size
    done = [False] * world_size
    failures = []
    try:
        for r in range(world_size):
            e = dict(base_env, RANK=str(r), LOCAL_RANK=str(r))
            extra = env(r) if callable(env) else env
            if extra:
                e.update({k: str(v) for k, v in extra.items()})
            parent_conn, child_conn = ctx.Pipe(duplex=False)
            sf = os.path.join(tmpdir, f"stack{r}.txt")
            p = ctx.Process(target=_child, name=f"rank{r}",
                            args=(fn, r, world_size, tuple(args), dict(kwargs or {}), seed,
                                  child_conn, sf),
                            daemon=True)
            _start_with_env(p, e)
            child_conn.close()
            procs.append(p)
            conns.append(parent_conn)
            stackfiles.append(sf)
        deadline = time.monotonic() + timeout
        from multiprocessing.connection import wait as mp_wait

        while not all(done):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waitables = [c for r, c in enumerate(conns) if not done[r]] + \
                [p.sentinel for r, p in enumerate(procs) if not done[r]]
            ready = mp_wait(waitables, timeout=min(remaining, 1.0))
            for r in range(world_size):
                if done[r]:
                    continue
                c, p = conns[r], procs[r]
                msg = None
                if c in ready or p.sentinel in ready:
                    try:
                        if c.poll():
                            msg = c.recv()
                    except (EOFError, OSError):
                        msg = None
                if msg is not None:
                    if msg[0] == "ok":
                        results[r] = msg[2]
                    else:
                        failures.append(RankFailure(r, None, msg[2], msg[3], msg[4]))
                        results[r] = failures[-1]
                    done[r] = True
                elif p.sentinel in ready or not p.is_alive():
                    # dead without a message (EOF on the pipe): a crash or os._exit
                    p.join(1)
                    if p.exitcode is not None:
                        if p.exitcode != 0:
                            f = RankFailure(r, p.exitcode)
                            failures.append(f)
                            results[r] = f
                        done[r] = True
            if failures and not return_errors:
                break
        if failures and not return_errors:
            first = failures[0]
            raise SpawnError(f"spawn_ranks: {first.describe()}", first.rank, failures)
        if not all(done):
            pending = [r for r in range(world_size) if not done[r]]
            stacks = _dump_stacks([procs[r] for r in pending], [stackfiles[r] for r in pending])
            raise SpawnError(
                f"spawn_ranks: deadline of {timeout:g}s passed; ranks {pending} were still "
                f"running (killed). Their Python stacks:\n{stacks}", None, failures)
        return results
    finally:
        _kill(procs)
        for c in conns:
            c.close()
        _shm.cleanup_job(job)
        if server is not None:
            server.close()
        for sf in stackfiles:
            try:
                os.unlink(sf)
            except OSError:
                pass
        try:
            os.rmdir(tmpdir)
        except OSError:
            pass


def _dump_stacks(procs, files):
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGUSR1)
        except OSError:
            pass
    def read(f):
        try:
            with open(f) as fh:
                return fh.read().strip()
        except OSError:
            return ""

    # faulthandler writes from a signal handler as soon as the process runs again: on
    # a loaded machine that can take a while, so wait for every dump (up to 3 s)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not all(read(f) for f in files):
        time.sleep(0.05)
    out = []
    for p, f in zip(procs, files):
        text = read(f)
        out.append(f"--- {p.name} (pid {p.pid}) ---\n{text or '(no stack dumped)'}")
    return "\n".join(out)
