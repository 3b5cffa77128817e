"""deepseek.distributed: PyTorch-named collectives on deepseek tensors.

The thin bridge between the engine and ``deepseek.collectives`` (the only engine
package that imports it): every function hands the tensor's storage (``t.array``, no
copy) to the process group and records the in-place write in the tensor's version
counter. ``group=None`` means the default group; ranks given as ``src``/``dst`` are
*global* ranks, as in PyTorch (the ProcessGroup methods themselves take group ranks).

    import deepseek.distributed as dist
    dist.init_process_group()                       # deepseek-run / mpirun / srun / plain
    dist.all_reduce(t)                              # in place, SUM
    work = dist.all_reduce(g, op=dist.ReduceOp.AVG, async_op=True); work.wait()

``broadcast_object_list``/``all_gather_object`` move small JSON-serialisable values;
nothing is ever unpickled. Also here: ``DDPStrategy`` and ``DistributedDataParallel``.

Submodules (imported on first use, so ``import deepseek.distributed`` stays cheap):
``buckets`` (``GradBucket``: flat gradient buffers, shared by DDP and ZeRO),
``comm_hooks`` (how DDP reduces a bucket: ``allreduce_hook``, ``fp16_compress_hook``,
``bf16_compress_hook``), ``futures`` (``Future``, what a hook returns) and
``functional`` (collectives with a backward, for tensor parallelism),
``device_mesh`` (``init_device_mesh``: dp x pp x tp groups), ``pipelining`` (pipeline
stages and schedules), ``tensor_parallel`` (Megatron-style layers), ``zero``
(``ZeroRedundancyOptimizer``, ZeRO-1), ``fsdp`` (``FullyShardedDataParallel``,
ZeRO-2/3) and ``checkpoint`` (sharded checkpoints that reshard on load).
"""
import importlib
import json

import numpy as np

from deepseek import collectives as _C
from deepseek.collectives import (CollectiveError, ProcessGroup, ReduceOp, Work,  # noqa: F401
                                  destroy_process_group, get_local_rank, is_initialized)

__all__ = [
    "init_process_group", "destroy_process_group", "is_initialized", "get_rank",
    "get_world_size", "get_local_rank", "get_backend", "new_group", "barrier",
    "all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
    "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
    "gather", "scatter", "send", "recv", "isend", "irecv", "broadcast_object_list",
    "all_gather_object", "symmetric_empty", "ReduceOp", "ProcessGroup", "Work",
    "CollectiveError",
    "DDPStrategy", "DistributedDataParallel", "GradBucket", "Future",
    "Strategy", "SingleDeviceStrategy",
    "ZeroRedundancyOptimizer", "FullyShardedDataParallel", "ZeROStrategy",
    "buckets", "comm_hooks", "functional", "futures", "fsdp", "checkpoint",
    "init_device_mesh", "DeviceMesh", "device_mesh", "pipelining", "tensor_parallel",
]

_LAZY = {"DDPStrategy": ".strategy", "DistributedDataParallel": ".ddp",
         "GradBucket": ".buckets", "Future": ".futures",
         "Strategy": ".strategy", "SingleDeviceStrategy": ".strategy",
         "ZeroRedundancyOptimizer": ".zero", "FullyShardedDataParallel": ".fsdp",
         "ZeROStrategy": ".strategy",
         "init_device_mesh": ".device_mesh", "DeviceMesh": ".device_mesh"}
_SUBMODULES = ("buckets", "comm_hooks", "functional", "futures", "ddp", "strategy", "zero",
               "fsdp", "checkpoint", "device_mesh", "pipelining", "tensor_parallel")


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'deepseek.distributed' has no attribute {name!r}")


def init_process_group(backend="auto", timeout=None, **kwargs):
    """Join the default group (see ``deepseek.collectives.init_process_group``)."""
    return _C.init_process_group(backend=backend, timeout=timeout, **kwargs)


def _group(group):
    return group if group is not None else _C.get_default_group()


def _grank(group, rank, what):
    """Global rank -> rank in ``group``."""
    try:
        return group.ranks.index(int(rank))
    except ValueError:
        raise _C.CollectiveArgumentError(
            f"{what}={rank} is not a member of group {group.name!r} "
            f"(global ranks {group.ranks})") from None


def _arr(t):
    """The storage of a tensor (or an array as is)."""
    return t.array if hasattr(t, "array") and hasattr(t, "_bump_version") else t


def _bump(tensors):
    for t in tensors:
        if hasattr(t, "_bump_version"):
            t._bump_version()


def _done(work, written):
    """Bump the written tensors' versions when the op completes."""
    written = [t for t in written if t is not None]
    if work is None:
        _bump(written)
        return None
    work.add_done_callback(lambda w: _bump(written) if w.is_success() else None)
    return work


def get_rank(group=None):
    """Global rank (default) or rank inside ``group``; -1 when not a member."""
    if group is None:
        return _C.get_rank() if _C.is_initialized() else 0
    return group.rank


def get_world_size(group=None):
    if group is None:
        return _C.get_world_size() if _C.is_initialized() else 1
    return group.size


def get_backend(group=None):
    return _group(group).backend


def new_group(ranks=None, timeout=None, backend=None, **kwargs):
    """Subgroup of global ``ranks``; every rank calls it; non-members get None."""
    return _C.new_group(ranks, timeout=timeout, **kwargs)


def barrier(group=None, async_op=False, timeout=None):
    return _group(group).barrier(async_op=async_op, timeout=timeout)


def symmetric_empty(*size, dtype=None, group=None):
    """A zero-filled tensor in memory that every rank of ``group`` maps (PyTorch's
    ``symmetric_memory.empty`` and ``rendezvous`` in one call); every rank must call it
    with the same size and dtype. On shared memory an ``all_reduce`` of it, or of a
    slice taken at the same place on every rank, reads each rank's copy where it lies
    (no staging copy; DDP's buckets live there). Elsewhere it is an ordinary tensor."""
    from deepseek import dtypes as _dt
    from deepseek._tensor import from_numpy

    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    dtype = _dt.get_default_dtype() if dtype is None else _dt.as_dtype(dtype)
    return from_numpy(_group(group).symmetric_empty(size, dtype))


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    w = _group(group).allreduce(_arr(tensor), op, async_op=async_op)
    return _done(w, [tensor])


def broadcast(tensor, src=0, group=None, async_op=False):
    g = _group(group)
    w = g.broadcast(_arr(tensor), _grank(g, src, "src"), async_op=async_op)
    return _done(w, [tensor])


def reduce(tensor, dst=0, op=ReduceOp.SUM, group=None, async_op=False):
    g = _group(group)
    d = _grank(g, dst, "dst")
    w = g.reduce(_arr(tensor), d, op, async_op=async_op)
    return _done(w, [tensor] if g.rank == d else [])


def all_gather(tensor_list, tensor, group=None, async_op=False):
    w = _group(group).allgather([_arr(t) for t in tensor_list], _arr(tensor),
                                async_op=async_op)
    return _done(w, tensor_list)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    w = _group(group).allgather(_arr(output_tensor), _arr(input_tensor), async_op=async_op)
    return _done(w, [output_tensor])


def reduce_scatter(output, input_list, op=ReduceOp.SUM, group=None, async_op=False):
    w = _group(group).reduce_scatter(_arr(output), [_arr(t) for t in input_list], op,
                                     async_op=async_op)
    return _done(w, [output])


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):
    w = _group(group).reduce_scatter(_arr(output), _arr(input), op, async_op=async_op)
    return _done(w, [output])


def all_to_all(output_tensor_list, input_tensor_list, group=None, async_op=False):
    w = _group(group).all_to_all([_arr(t) for t in output_tensor_list],
                                 [_arr(t) for t in input_tensor_list], async_op=async_op)
    return _done(w, output_tensor_list)


def all_to_all_single(output, input, group=None, async_op=False):
    w = _group(group).all_to_all(_arr(output), _arr(input), async_op=async_op)
    return _done(w, [output])


def gather(tensor, gather_list=None, dst=0, group=None, async_op=False):
    g = _group(group)
    d = _grank(g, dst, "dst")
    out = [_arr(t) for t in gather_list] if (g.rank == d and gather_list) else None
    w = g.gather(_arr(tensor), out, d, async_op=async_op)
    return _done(w, gather_list if g.rank == d and gather_list else [])


def scatter(tensor, scatter_list=None, src=0, group=None, async_op=False):
    g = _group(group)
    s = _grank(g, src, "src")
    inp = [_arr(t) for t in scatter_list] if (g.rank == s and scatter_list) else None
    w = g.scatter(_arr(tensor), inp, s, async_op=async_op)
    return _done(w, [tensor])


def send(tensor, dst, group=None, tag=0):
    g = _group(group)
    g.send(_arr(tensor), _grank(g, dst, "dst"), tag)


def recv(tensor, src, group=None, tag=0):
    """Receive into ``tensor`` from global rank ``src`` (a source is required);
    returns ``src``."""
    if src is None:
        raise _C.CollectiveArgumentError("recv: src=None (any source) is not supported")
    g = _group(group)
    g.recv(_arr(tensor), _grank(g, src, "src"), tag)
    _bump([tensor])
    return src


def isend(tensor, dst, group=None, tag=0):
    g = _group(group)
    return g.send(_arr(tensor), _grank(g, dst, "dst"), tag, async_op=True)


def irecv(tensor, src, group=None, tag=0):
    if src is None:
        raise _C.CollectiveArgumentError("irecv: src=None (any source) is not supported")
    g = _group(group)
    return _done(g.recv(_arr(tensor), _grank(g, src, "src"), tag, async_op=True), [tensor])


# -------------------------------------------------------------- small Python objects
def _encode(obj):
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()
    except (TypeError, ValueError) as e:
        raise _C.CollectiveArgumentError(
            f"object collectives carry JSON-serialisable values only "
            f"(nothing is pickled): {e}") from None


def broadcast_object_list(object_list, src=0, group=None):
    """Replace ``object_list``'s items on every rank with those of ``src`` (JSON)."""
    g = _group(group)
    s = _grank(g, src, "src")
    n = len(object_list)
    blobs = [_encode(o) for o in object_list] if g.rank == s else None
    sizes = np.array([len(b) for b in blobs] if blobs else [0] * n, np.int64)
    g.broadcast(sizes, s)
    buf = np.frombuffer(b"".join(blobs), np.uint8).copy() if blobs else \
        np.empty(int(sizes.sum()), np.uint8)
    g.broadcast(buf, s)
    if g.rank != s:
        off = 0
        for i, k in enumerate(sizes.tolist()):
            object_list[i] = json.loads(buf[off:off + k].tobytes().decode())
            off += k


def all_gather_object(object_list, obj, group=None):
    """``object_list[r]`` = rank r's ``obj`` (JSON), on every rank."""
    g = _group(group)
    if len(object_list) != g.size:
        raise _C.CollectiveArgumentError(
            f"all_gather_object: object_list has {len(object_list)} items, the group "
            f"{g.size}")
    blob = _encode(obj)
    sizes = np.empty(g.size, np.int64)
    g.allgather(sizes, np.array([len(blob)], np.int64))
    width = int(sizes.max()) if g.size else 0
    mine = np.zeros(width, np.uint8)
    mine[:len(blob)] = np.frombuffer(blob, np.uint8)
    out = np.empty(g.size * width, np.uint8)
    g.allgather(out, mine)
    for r in range(g.size):
        k = int(sizes[r])
        object_list[r] = json.loads(out[r * width:r * width + k].tobytes().decode())
