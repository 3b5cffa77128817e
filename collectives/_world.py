"""The default process group and the module-level API of deepseek.collectives
(``init_process_group``, ``new_group``, ...). Imported on first use through
``deepseek.collectives.__getattr__``: it loads numpy and the process-group code, which
``import deepseek.collectives.store`` (the launcher) must not pay for."""
import json
import math
import os
import secrets
import threading

from .. import env as envvars
from . import hang
from .errors import CollectiveArgumentError, CollectiveError
from .process_group import ProcessGroup

__all__ = [
    "init_process_group", "destroy_process_group", "is_initialized", "get_rank",
    "get_world_size", "get_local_rank", "get_default_group", "new_group", "barrier",
    "hang_report", "available_backends",
]


def default_timeout():
    """The default timeout of blocking calls: ``DEEPSEEK_COLLECTIVES_TIMEOUT`` (seconds,
    300 when unset), read and validated now (not at import, so a bad value is reported
    by the call that uses it, naming the variable)."""
    return envvars.get("DEEPSEEK_COLLECTIVES_TIMEOUT")


def __getattr__(name):
    # DEFAULT_TIMEOUT stays importable, read from the environment when asked for
    if name == "DEFAULT_TIMEOUT":
        return default_timeout()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _State:
    def __init__(self):
        self.default = None
        self.groups = []
        self.store = None
        self.own_store = False
        self.prefix = None
        self.job_id = None
        self.counter = 0
        self.backend = None
        self.mpi_world = None
        self.info = None
        self.watchdog = None
        self.timeout = None     # init_process_group's timeout, once initialized
        self.deterministic = False
        self.lock = threading.Lock()


_S = _State()


def available_backends():
    """Backends usable in this process (nccl: cupy and a GPU present)."""
    out = ["cpu"]
    try:
        import mpi4py  # noqa: F401

        out.append("mpi")
    except ImportError:
        pass
    from .backends import nccl

    if nccl.available():
        out.append("nccl")
    return out


def _choose_backend(backend, info):
    backend = (backend or "auto").lower()
    if backend == "gloo":  # PyTorch spelling of "the CPU one"
        backend = "cpu"
    if backend not in ("auto", "cpu", "mpi", "nccl"):
        raise CollectiveArgumentError(
            f"unknown backend {backend!r}: expected auto, cpu, mpi or nccl")
    if backend == "auto":
        backend = envvars.get("DEEPSEEK_BACKEND")
    if backend == "auto":
        backend = "mpi" if info.is_mpi and "mpi" in available_backends() else "cpu"
    return backend


def _seconds(value, what):
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise CollectiveArgumentError(
            f"init_process_group: {what} must be a positive number of seconds, "
            f"not {value!r}")
    return t


def _rendezvous_timeout(info, timeout):
    """(seconds, where they come from) for the waits of init_process_group for the
    other ranks: the launcher's rendezvous timeout when it set one, else ``timeout``."""
    if info.rdzv_timeout is not None:
        if info.launcher == "deepseek-run":
            return info.rdzv_timeout, "deepseek-run --timeout"
        return info.rdzv_timeout, "DEEPSEEK_RDZV_TIMEOUT"
    return timeout, "init_process_group's timeout"


def init_process_group(backend="auto", timeout=None, rank=None, world_size=None,
                       store=None, deterministic=None, debug=None):
    """Join the job's default group.

    Rank, world size and the rendezvous store come from the environment (deepseek-run,
    torchrun-style variables, mpirun, srun; a plain process is a world of one) unless
    given. ``timeout`` (seconds; default ``DEEPSEEK_COLLECTIVES_TIMEOUT``, else 300) is
    the default for every blocking wait of the group. Waiting for the other ranks to
    arrive (reaching the store, the rendezvous) is bounded by the launcher's rendezvous
    timeout when there is one (``deepseek-run --timeout``, ``DEEPSEEK_RDZV_TIMEOUT``),
    else by ``timeout``; when it runs out the error names the ranks that never came.
    ``deterministic`` (default ``DEEPSEEK_DETERMINISTIC``) makes every reduction add
    the ranks' contributions in rank order (bitwise reproducible).
    """
    from . import env

    with _S.lock:
        if _S.default is not None:
            raise CollectiveError("init_process_group: already initialized "
                                  "(call destroy_process_group first)")
        # every setting from the environment is read (and validated) before anything
        # is built, so a bad value leaves nothing half-initialized
        timeout = default_timeout() if timeout is None else _seconds(timeout, "timeout")
        info = env.detect()
        rdzv_timeout, rdzv_source = _rendezvous_timeout(info, timeout)
        backend = _choose_backend(backend, info)
        if deterministic is None:
            deterministic = envvars.get("DEEPSEEK_DETERMINISTIC")
        hang_poll = envvars.get("DEEPSEEK_HANG_POLL")
        mpi_world = None
        if backend == "mpi":
            from .backends.mpi import MpiBackend

            mpi_world = MpiBackend.world()
            rank, world_size = mpi_world.rank, mpi_world.size
        if rank is None:
            rank = info.rank
        if world_size is None:
            world_size = info.world_size
        if not 0 <= rank < world_size:
            raise CollectiveArgumentError(f"rank {rank} outside world size {world_size}")
        own = store is None
        if own:
            if world_size == 1:
                from .store import LocalStore

                store = LocalStore(timeout)
            elif info.world_size == world_size:
                store = env.connect_store(info, timeout, connect_timeout=rdzv_timeout)
            else:
                raise CollectiveArgumentError(
                    "init_process_group: rank/world_size given without a store")
        payload = json.dumps({"uid": secrets.token_hex(8), "pid": os.getpid()})
        try:
            rdz = env.rendezvous(store, rank, world_size, rdzv_timeout, tag="deepseek-pg",
                                 payload=payload)
        except env.RendezvousTimeout as e:
            if own:
                _close_quietly(store)
            raise env.RendezvousTimeout(
                f"init_process_group timed out on rank {rank} after {rdzv_timeout:g}s (the "
                f"rendezvous timeout, {rdzv_source}): {e.arrived} of {world_size} ranks "
                f"arrived; missing ranks: {env._ranges(e.missing_ranks)}", e.arrived,
                e.missing_ranks, e.keys) from None
        uid = json.loads(rdz[0])["uid"]
        _S.prefix = f"deepseek/pg/{uid}"
        _S.job_id = (info.job_id or uid)
        _S.store, _S.own_store, _S.info = store, own, info
        _S.backend, _S.mpi_world, _S.timeout = backend, mpi_world, timeout
        _S.deterministic = bool(deterministic)
        _S.counter = 0
        ranks = list(range(world_size))
        pg = _build_group(ranks, rank, "default", _S.prefix + "/g0", timeout,
                          deterministic, debug, mpi_backend=mpi_world)
        _S.default = pg
        _S.groups = [pg]
        if rank == 0 and world_size > 1:
            hang.publish_job(store, _S.prefix, world_size)
        if world_size > 1 and hang_poll > 0:
            _S.watchdog = hang.Watchdog(store, _S.prefix, rank, interval=hang_poll)
        return pg


def _close_quietly(store):
    try:
        store.close()
    except Exception:  # noqa: BLE001 - already failing; the rendezvous error matters
        pass


def _build_group(ranks, global_rank, name, prefix, timeout, deterministic, debug,
                 mpi_backend=None):
    grank, size = ranks.index(global_rank), len(ranks)
    backend = _S.backend
    if size == 1 and backend != "nccl":
        from .backends.base import Backend

        b = Backend(0, 1)
        b.name = "self"
    elif backend == "mpi":
        b = mpi_backend
    elif backend == "nccl":
        from .backends.nccl import NcclBackend

        b = NcclBackend(grank, size, _S.store, prefix, timeout,
                        device=_S.info.local_rank if _S.info else None)
    else:
        from .backends.cpu import make_cpu_backend

        b = make_cpu_backend(grank, size, _S.store, prefix, _S.job_id, timeout, name, ranks)
    pg = ProcessGroup(b, ranks, name, _S.store, prefix, timeout, deterministic, debug,
                      global_rank=global_rank)
    pg.backend = backend
    pg.hang_prefix = _S.prefix
    return pg


def _require():
    if _S.default is None:
        raise CollectiveError("the default process group is not initialized: call "
                              "init_process_group() first")
    return _S.default


def get_default_group():
    return _require()


def new_group(ranks=None, timeout=None, deterministic=None, debug=None):
    """A subgroup of the default group's ranks (sorted). Every rank of the default
    group must call it, in the same order; non-members get ``None``."""
    world = _require()
    ranks = list(range(world.size)) if ranks is None else sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 0 or ranks[-1] >= world.size:
        raise CollectiveArgumentError(
            f"new_group: ranks {ranks} must be a non-empty subset of 0..{world.size - 1}")
    _S.counter += 1
    k = _S.counter
    me = world.global_rank
    timeout = _S.timeout if timeout is None else float(timeout)
    det = _S.deterministic if deterministic is None else bool(deterministic)
    mpi_sub = None
    if _S.backend == "mpi" and len(ranks) > 1:
        mpi_sub = _S.mpi_world.subgroup(ranks, timeout)  # collective over the world
    if me not in ranks:
        return None
    # the ranks are part of the key: disjoint groups made by the k-th call on different
    # ranks (each rank creating only the groups it belongs to) never share store keys
    pg = _build_group(ranks, me, f"group{k}{ranks}",
                      f"{_S.prefix}/g{k}/" + "-".join(map(str, ranks)), timeout, det,
                      debug, mpi_backend=mpi_sub)
    _S.groups.append(pg)
    return pg


def is_initialized():
    return _S.default is not None


def get_rank(group=None):
    """This process's rank in ``group`` (default: the world); -1 if not a member."""
    if group is None:
        return _require().global_rank
    return group.rank


def get_world_size(group=None):
    if group is None:
        return _require().size
    return group.size


def get_local_rank():
    """Rank of this process on its host (LOCAL_RANK and its MPI/SLURM cousins)."""
    if _S.info is not None:
        return _S.info.local_rank
    from . import env

    return env.detect().local_rank


def barrier(group=None, async_op=False, timeout=None):
    return (group or _require()).barrier(async_op=async_op, timeout=timeout)


def hang_report(wait=2.0):
    """The job's hang report (after a timeout), as text; '' without a default group."""
    if _S.store is None:
        return ""
    return hang.collect_report(_S.store, _S.prefix, _require().size, wait)


def destroy_process_group(group=None):
    """Destroy ``group``, or (default) every group and the default one. Shared memory
    is released; a store this process hosts stays up until every rank has left."""
    if group is not None and group is not _S.default:
        group.destroy()
        if group in _S.groups:
            _S.groups.remove(group)
        return
    if _S.default is None:
        return
    errors = []
    for g in reversed(_S.groups):
        try:
            g.destroy()
        except Exception as e:  # noqa: BLE001 - destroy everything, then report
            errors.append(e)
    if _S.watchdog is not None:
        _S.watchdog.stop()
    store, world = _S.store, _S.default.size
    if _S.own_store and store is not None and world > 1:
        try:
            store.add(f"{_S.prefix}/exit", 1)
            if getattr(store, "_owned", None):  # we host it: wait until all have left
                import time

                end = time.monotonic() + min(_S.timeout, 30.0)
                while store.add(f"{_S.prefix}/exit", 0) < world and time.monotonic() < end:
                    time.sleep(0.01)
        except Exception:  # noqa: BLE001 - the store may already be gone
            pass
    if _S.own_store and store is not None:
        try:
            store.close()
        except Exception:  # noqa: BLE001
            pass
    _S.__init__()
    if errors:
        raise errors[0]
