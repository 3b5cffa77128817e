"""deepseek.collectives: moving raw numpy/cupy arrays between processes.

    from deepseek import collectives as C
    C.init_process_group()                  # RANK/WORLD_SIZE/store from the environment
    pg = C.get_default_group()
    pg.allreduce(x)                         # in place, SUM
    w = pg.allreduce(y, C.ReduceOp.AVG, async_op=True); ...; w.wait()
    sub = C.new_group([0, 1])               # called by every rank; None on non-members
    buf = pg.symmetric_empty(n)             # memory all ranks map: zero-copy allreduce

Backends: ``cpu`` (shared memory on one host, ZeroMQ TCP across hosts), ``mpi``
(mpi4py; the default under mpirun/srun when importable -- ``pip install
deepseek[mpi]`` gets mpi4py and the mpich wheel), ``nccl`` (cupy arrays; ask for it
with ``backend="nccl"``). ``backend="auto"`` picks mpi under an MPI launcher, else cpu.

Environment knobs: ``DEEPSEEK_DETERMINISTIC=1`` (rank-order reductions everywhere),
``DEEPSEEK_DEBUG_COLLECTIVES=1`` (cross-rank call check), ``DEEPSEEK_CPU_TRANSPORT``
(auto/shm/zmq), ``DEEPSEEK_SHM_CHUNK`` (slot bytes, default 1 MiB),
``DEEPSEEK_SHM_RS_BYTES`` (allreduce crossover to reduce-scatter+allgather, default
64 KiB), ``DEEPSEEK_SHM_SYM_BYTES`` (symmetric buffers: zero-copy allreduce from this
size, default 32 KiB), ``DEEPSEEK_SHM_CMA`` / ``DEEPSEEK_SHM_CMA_BYTES`` (single-copy
allgather through process_vm_readv where the kernel allows it: 0 turns it off; from 8
KiB per rank; also single-copy send/recv above two p2p slots), ``DEEPSEEK_SHM_SPIN_US`` (spin before sleeping in the kernel; adaptive,
at most 2000 us when ranks <= cores, 20 us when oversubscribed),
``DEEPSEEK_COLLECTIVES_TIMEOUT`` (default timeout, seconds).

This package never imports the tensor engine: it works on raw arrays only.
"""
# Lazy (PEP 562): ``import deepseek.collectives.store`` (what deepseek-run does at
# start-up) must not load numpy or the process-group machinery. Every public name is
# resolved on first access and then cached in the module's namespace.
import importlib as _importlib

_LAZY = {
    # the module-level API and the default group (collectives/_world.py)
    **{name: "_world" for name in (
        "init_process_group", "destroy_process_group", "is_initialized", "get_rank",
        "get_world_size", "get_local_rank", "get_default_group", "new_group", "barrier",
        "hang_report", "available_backends", "DEFAULT_TIMEOUT")},
    "ProcessGroup": "process_group",
    "ReduceOp": "reduce_ops",
    "Work": "work",
    **{name: "errors" for name in (
        "CollectiveError", "CollectiveArgumentError", "CollectiveTimeoutError",
        "CollectiveMismatchError", "PeerFailureError", "GroupBrokenError")},
}

__all__ = [
    "init_process_group", "destroy_process_group", "is_initialized", "get_rank",
    "get_world_size", "get_local_rank", "get_default_group", "new_group", "barrier",
    "ReduceOp", "ProcessGroup", "Work", "CollectiveError", "CollectiveArgumentError",
    "CollectiveTimeoutError", "CollectiveMismatchError", "PeerFailureError",
    "GroupBrokenError", "hang_report", "available_backends",
]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'deepseek.collectives' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
