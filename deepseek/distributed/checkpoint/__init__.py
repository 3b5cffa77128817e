"""Sharded checkpoints that reshard on load (torch.distributed.checkpoint's shape).

    sd = checkpoint.get_state_dict(model)          # FSDP: this rank's pieces, in place
    checkpoint.save(sd, "ckpt/")                   # every rank writes its own shard
    checkpoint.load(sd, "ckpt/")                   # any world size, any stage

A state dict's values are Tensors (replicated: rank 0 writes them) or
:class:`ShardedTensor` s: elements ``[start, end)`` of a global tensor, flattened in row
order, held in ``local`` (FSDP's are views of its shards, so loading writes straight
into them). The directory holds versions ``v-<id>/`` -- one safetensors file per rank
(``shard-<rank>.safetensors``, CRC-checked by ``deepseek.serialization``) plus one index
``metadata.json`` naming, for every tensor, its global shape, dtype and which file
holds which element range -- and a pointer file ``LATEST`` naming the complete version.

Atomic as a whole: a version is written under a temporary name, renamed when every
rank's file and the index are on disk (fsync'd), and only then does ``LATEST`` (written
atomically) point to it; a crash at any moment leaves the previous version loadable,
and the next save sweeps what the crash left. Loading reads, for every requested
range, the overlapping ranges of the files that hold it: the world size and the
sharding of the saver do not matter (3 ranks -> 2, 4, 1; ZeRO-3 -> DDP or a plain
model). A missing, corrupt or mismatched shard raises :class:`CheckpointError` naming
the file and the tensor.
"""
import json
import os
import shutil
import time

import numpy as np

from ..._atomic import write_atomic
from ..._tensor import Tensor
from ...serialization import CheckpointError
from ...serialization import load as _load_file
from ...serialization import save as _save_file

__all__ = ["save", "load", "get_state_dict", "get_full_state_dict", "ShardedTensor",
           "CheckpointError"]

_POINTER, _INDEX = "LATEST", "metadata.json"
_pause_before_commit = None   # tests: a callable run before the rename (to kill there)


class ShardedTensor:
    """Elements ``[start, end)`` of the flattened global tensor of ``global_shape``,
    held in ``local`` (a 1-D numpy array of ``end - start`` elements). ``on_load``
    is called after a load wrote into ``local``."""

    def __init__(self, local, global_shape, start, end, on_load=None):
        self.local = local
        self.global_shape = tuple(int(d) for d in global_shape)
        self.start, self.end = int(start), int(end)
        self.on_load = on_load
        if local.size != self.end - self.start:
            raise ValueError(f"ShardedTensor: {local.size} local elements for the range "
                             f"[{start}, {end})")


def _group(process_group):
    from ... import collectives as C
    if process_group is not None:
        return process_group
    return C.get_default_group() if C.is_initialized() else None


def get_state_dict(model):
    """The model's state as a checkpoint state dict: an FSDP model gives this rank's
    pieces of every parameter (views of its shards), anything else its ``state_dict()``
    (DDP / ZeRO-1: the wrapped module's, without the wrapper's prefix)."""
    from ..fsdp import FullyShardedDataParallel
    if isinstance(model, FullyShardedDataParallel):
        out = {}
        for names, shape, a, b, view, h, j in model.sharded_pieces():
            def loaded(h=h):
                for fp in h.flat_params:
                    fp._bump_version()
                if h.releasable:
                    h._gathered = False
            for n in names:
                out.setdefault(n, []).append(ShardedTensor(view, shape, a, b, loaded))
        from ..fsdp.fully_sharded import _walk
        for name, kind, t in _walk(model.module, ""):
            if kind == "buffer":
                out[name] = t.detach()
            elif name not in out:   # a parameter with no piece on this rank
                out[name] = []
        return out
    inner = getattr(model, "module", model)
    return inner.state_dict()


def get_full_state_dict(model):
    """A plain, consolidated state dict (the unwrapped model's names) on rank 0;
    ``{}`` on the other ranks. Collective for an FSDP model."""
    from ..fsdp import FullyShardedDataParallel
    pg = _group(None)
    if isinstance(model, FullyShardedDataParallel):
        sd = model.state_dict()
    else:
        sd = getattr(model, "module", model).state_dict()
    return dict(sd) if pg is None or pg.rank == 0 else {}


def _entries(state_dict, rank):
    """[(key, start, end, global shape, dtype, array)] this rank writes."""
    out = []
    for key, v in state_dict.items():
        items = v if isinstance(v, list) else [v]
        for it in items:
            if isinstance(it, ShardedTensor):
                out.append((key, it.start, it.end, it.global_shape, it.local))
            elif rank == 0:
                arr = it._data if isinstance(it, Tensor) else np.asarray(it)
                out.append((key, 0, int(arr.size), tuple(arr.shape), arr.reshape(-1)))
    return out


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save(state_dict, checkpoint_dir, process_group=None):
    """Write ``state_dict`` into ``checkpoint_dir`` (collective: every rank calls it).

    Every rank writes its own shard file, rank 0 the index; the new version becomes
    the one ``load`` reads only once all of it is on disk."""
    from .. import all_gather_object, broadcast_object_list
    pg = _group(process_group)
    rank, world = (pg.rank, pg.size) if pg is not None else (0, 1)
    os.makedirs(checkpoint_dir, exist_ok=True)
    box = [f"{int(time.time() * 1e6):x}-{os.getpid()}"]
    if world > 1:
        broadcast_object_list(box, src=pg.ranks[0], group=pg)
    version = box[0]
    tmp = os.path.join(checkpoint_dir, f".v-{version}.tmp")
    if rank == 0:
        _sweep(checkpoint_dir)
        os.makedirs(tmp, exist_ok=True)
    if world > 1:
        pg.barrier()
    fname = f"shard-{rank:05d}.safetensors"
    entries = _entries(state_dict, rank)
    arrays, index = {}, []
    for i, (key, a, b, shape, arr) in enumerate(entries):
        name = f"{i}:{key}"
        arrays[name] = np.ascontiguousarray(arr)
        index.append([key, a, b, list(shape), str(arr.dtype), fname, name])
    _save_file(arrays, os.path.join(tmp, fname))
    if world > 1:
        everyone = [None] * world
        all_gather_object(everyone, index, group=pg)
    else:
        everyone = [index]
    if rank == 0:
        meta = {"format": "deepseek-dcp/1", "world_size": world, "tensors": {}}
        for part in everyone:
            for key, a, b, shape, dtype, f, name in part:
                t = meta["tensors"].setdefault(key, {"shape": shape, "dtype": dtype,
                                                     "chunks": []})
                t["chunks"].append({"start": a, "end": b, "file": f, "name": name})
        blob = json.dumps(meta, indent=1).encode()
        write_atomic(os.path.join(tmp, _INDEX), lambda f: f.write(blob))
        _fsync_dir(tmp)
        if _pause_before_commit is not None:
            _pause_before_commit(tmp)
        final = os.path.join(checkpoint_dir, f"v-{version}")
        os.rename(tmp, final)
        _fsync_dir(checkpoint_dir)
        write_atomic(os.path.join(checkpoint_dir, _POINTER),
                     lambda f: f.write(f"v-{version}\n".encode()))
        _sweep(checkpoint_dir, keep=f"v-{version}")
    if world > 1:
        pg.barrier()


def _sweep(checkpoint_dir, keep=None):
    """Remove temporary versions (a crashed save's) and versions older than ``keep``."""
    cur = keep or _current(checkpoint_dir, missing_ok=True)
    for name in os.listdir(checkpoint_dir):
        path = os.path.join(checkpoint_dir, name)
        stale_tmp = name.startswith(".v-") and name.endswith(".tmp")
        old = keep is not None and name.startswith("v-") and name != cur
        if (stale_tmp or old) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def _current(checkpoint_dir, missing_ok=False):
    try:
        with open(os.path.join(checkpoint_dir, _POINTER)) as f:
            return f.read().strip()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"{checkpoint_dir}: no complete checkpoint ({_POINTER} is "
                              "missing)") from None


def load(state_dict, checkpoint_dir, process_group=None):
    """Fill ``state_dict`` (what :func:`get_state_dict` or ``model.state_dict()``
    returns: its tensors share the model's memory) in place from ``checkpoint_dir``,
    whatever world size and sharding wrote it."""
    version = os.path.join(checkpoint_dir, _current(checkpoint_dir))
    try:
        with open(os.path.join(version, _INDEX)) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{version}/{_INDEX}: cannot read the checkpoint index: "
                              f"{e}") from None
    files = {}

    def file_data(fname):
        if fname not in files:
            path = os.path.join(version, fname)
            try:
                files[fname] = _load_file(path)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{path}: {e}") from None
        return files[fname]

    callbacks = []
    for key, v in state_dict.items():
        if key not in meta["tensors"]:
            raise CheckpointError(f"{version}: tensor {key!r} is not in the checkpoint")
        info = meta["tensors"][key]
        items = v if isinstance(v, list) else [v]
        for it in items:
            if isinstance(it, ShardedTensor):
                shape, dst, lo, hi = it.global_shape, it.local, it.start, it.end
                if it.on_load is not None:
                    callbacks.append(it.on_load)
            else:
                arr = it._data if isinstance(it, Tensor) else it
                shape, dst, lo, hi = tuple(arr.shape), arr.reshape(-1), 0, int(arr.size)
                if hasattr(it, "_bump_version"):
                    callbacks.append(it._bump_version)
            if tuple(shape) != tuple(info["shape"]):
                raise CheckpointError(f"{version}: tensor {key!r} has shape "
                                      f"{tuple(info['shape'])} in the checkpoint but "
                                      f"{tuple(shape)} here")
            covered = 0
            for c in info["chunks"]:
                a, b = max(lo, c["start"]), min(hi, c["end"])
                if a >= b:
                    continue
                data = file_data(c["file"]).get(c["name"])
                where = os.path.join(version, c["file"])
                if data is None:
                    raise CheckpointError(f"{where}: tensor {key!r} ({c['name']}) is missing")
                src = data._data.reshape(-1) if isinstance(data, Tensor) else data
                if src.size != c["end"] - c["start"] or str(src.dtype) != info["dtype"]:
                    raise CheckpointError(
                        f"{where}: tensor {key!r} holds {src.size} {src.dtype} elements, "
                        f"the index says {c['end'] - c['start']} {info['dtype']}")
                dst[a - lo:b - lo] = src[a - c["start"]:b - c["start"]]
                covered += b - a
            if covered != hi - lo:
                raise CheckpointError(f"{version}: tensor {key!r}: the checkpoint covers "
                                      f"{covered} of the {hi - lo} elements asked for")
    for cb in callbacks:
        cb()
