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

from ..._atomic import fsync_dir, write_atomic
from ..._tensor import Tensor
from ...serialization import CheckpointError
from ...serialization import load as _load_file
from ...serialization import save as _save_file

__all__ = ["save", "load", "get_state_dict", "get_full_state_dict", "ShardedTensor",
           "CheckpointError", "get_optimizer_state_dict", "load_optimizer_state_dict",
           "save_optimizer", "read_metadata"]

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


def save(state_dict, checkpoint_dir, process_group=None, extra=None, keep=1):
    """Write ``state_dict`` into ``checkpoint_dir`` (collective: every rank calls it).

    Every rank writes its own shard file, rank 0 the index; the new version becomes
    the one ``load`` reads only once all of it is on disk. ``extra``: JSON-able data
    stored in the index (rank 0's; :func:`read_metadata` returns it). ``keep``: how
    many complete versions stay (the newest ones; 2 lets a file written after this
    save -- the Trainer's -- keep naming the previous version until it is replaced).
    Returns the version's name (``load(..., version=)`` reads that one)."""
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
        if extra is not None:
            meta["extra"] = extra
        for part in everyone:
            for key, a, b, shape, dtype, f, name in part:
                t = meta["tensors"].setdefault(key, {"shape": shape, "dtype": dtype,
                                                     "chunks": []})
                t["chunks"].append({"start": a, "end": b, "file": f, "name": name})
        blob = json.dumps(meta, indent=1).encode()
        write_atomic(os.path.join(tmp, _INDEX), lambda f: f.write(blob))
        fsync_dir(tmp)
        if _pause_before_commit is not None:
            _pause_before_commit(tmp)
        final = os.path.join(checkpoint_dir, f"v-{version}")
        os.rename(tmp, final)
        fsync_dir(checkpoint_dir)
        write_atomic(os.path.join(checkpoint_dir, _POINTER),
                     lambda f: f.write(f"v-{version}\n".encode()))
        _sweep(checkpoint_dir, keep=f"v-{version}", n_keep=keep)
    if world > 1:
        pg.barrier()
    return f"v-{version}"


def _sweep(checkpoint_dir, keep=None, n_keep=1):
    """Remove temporary versions (a crashed save's) and, given ``keep`` (the version
    just committed), every complete version but the ``n_keep`` newest (``keep`` and
    the ones committed last before it: names start with a time stamp)."""
    cur = keep or _current(checkpoint_dir, missing_ok=True)
    versions = sorted((n for n in os.listdir(checkpoint_dir) if n.startswith("v-")),
                      key=_version_time)
    kept = set(versions[-max(int(n_keep), 1):]) | {cur}
    for name in os.listdir(checkpoint_dir):
        path = os.path.join(checkpoint_dir, name)
        stale_tmp = name.startswith(".v-") and name.endswith(".tmp")
        old = keep is not None and name.startswith("v-") and name not in kept
        if (stale_tmp or old) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def _version_time(name):
    try:
        return int(name[2:].split("-")[0], 16)
    except ValueError:
        return -1


def _current(checkpoint_dir, missing_ok=False):
    try:
        with open(os.path.join(checkpoint_dir, _POINTER)) as f:
            return f.read().strip()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"{checkpoint_dir}: no complete checkpoint ({_POINTER} is "
                              "missing)") from None


def read_metadata(checkpoint_dir, version=None):
    """The index of ``checkpoint_dir``'s latest complete version (or ``version``):
    ``{"world_size", "tensors": {key: {"shape", "dtype", "chunks"}}, "extra"}``."""
    version = os.path.join(checkpoint_dir, version or _current(checkpoint_dir))
    try:
        with open(os.path.join(version, _INDEX)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{version}/{_INDEX}: cannot read the checkpoint index: "
                              f"{e}") from None


def load(state_dict, checkpoint_dir, process_group=None, version=None):
    """Fill ``state_dict`` (what :func:`get_state_dict` or ``model.state_dict()``
    returns: its tensors share the model's memory) in place from ``checkpoint_dir``,
    whatever world size and sharding wrote it (``version``: a name :func:`save`
    returned; default the latest). Returns the index's ``extra`` (or ``{}``)."""
    version = version or _current(checkpoint_dir)
    meta = read_metadata(checkpoint_dir, version)
    version = os.path.join(checkpoint_dir, version)
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
    return meta.get("extra", {})


# ---- optimizer state ------------------------------------------------------------------
#
# Format: one entry per (original parameter, state name), keyed by the parameter's
# fully qualified name in the unwrapped model, so that any sharding reads any other's:
# ``<prefix>state.<fqn>.<name>`` (prefix ``optim.`` by default) is either the per-element state (``exp_avg``,
# ``momentum_buffer``: the parameter's shape, written as the ShardedTensor pieces each
# rank holds) or a replicated scalar (``step``: a 0-d tensor). The options of the
# parameter groups go into the index's ``extra`` (``<prefix>param_groups``), with the
# fqns of each group's parameters.

_OPT = "optim."


def _optimizer_layout(model, optimizer):
    """How ``optimizer``'s state maps onto the model's parameters on this rank:
    ``(kind, items)``; items are ``(state owner, fqns, shape, start, end, offset)``:
    elements ``[start, end)`` of the parameter named ``fqns`` (its flattened shape
    ``shape``) are elements ``[offset, offset + end - start)`` of the flattened state
    arrays of ``state owner`` (the tensor the optimizer keys its state by)."""
    from ..fsdp import FullyShardedDataParallel
    from ..zero import ZeroRedundancyOptimizer
    if isinstance(model, FullyShardedDataParallel):
        return "fsdp", model.optimizer_pieces()
    inner = getattr(model, "module", model)
    names = {}
    for n, p in inner.named_parameters(remove_duplicate=False):   # tied: every name
        names.setdefault(id(p), []).append(n)
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        items = []
        for f in optimizer._flats:
            for p, a, b, view in f.pieces:
                items.append((view, names[id(p)], tuple(p.shape), a, b, 0))
        return "zero1", items
    items = []
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) in names:
                items.append((p, names[id(p)], tuple(p.shape), 0, p.numel(), 0))
    return "replicated", items


def _group_fqns(model, optimizer, layout):
    """Per param group of ``optimizer``: the fqns of its parameters (sorted)."""
    kind, items = layout
    by_owner = {}
    for owner, fqns, *_ in items:
        by_owner.setdefault(id(owner), set()).update(fqns)
    out = []
    groups = optimizer.optim.param_groups if kind == "zero1" else optimizer.param_groups
    for g in groups:
        names = set()
        for p in g["params"]:
            names |= by_owner.get(id(p), set())
        out.append(sorted(names))
    return out


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def get_optimizer_state_dict(model, optimizer, process_group=None, prefix=_OPT):
    """``optimizer``'s state as checkpoint entries (see the format above) and the
    groups' options: ``(state_dict, extra)`` for ``save(state_dict, dir,
    extra=extra)``; its keys start with ``prefix`` (several optimizers in one
    checkpoint take one prefix each). ``model`` is what the optimizer trains: an FSDP model (ZeRO-2/3:
    a plain optimizer on its flat shards), a DDP model with a
    ZeroRedundancyOptimizer (ZeRO-1), or any model and its plain optimizer (every
    rank holds all of it: rank 0 writes). Collective (every rank calls it)."""
    from .. import all_gather_object
    pg = _group(process_group)
    layout = _optimizer_layout(model, optimizer)
    kind, items = layout
    inner = optimizer.optim if kind == "zero1" else optimizer
    out, scalars = {}, {}
    writes_arrays = kind != "replicated" or pg is None or pg.rank == 0
    for owner, fqns, shape, a, b, off in items:
        st = inner.state.get(owner)
        if not st:
            continue
        for name, v in st.items():
            arr = v._data if isinstance(v, Tensor) else np.asarray(v)
            if arr.ndim == 0:
                for fqn in fqns:
                    scalars[prefix + "state." + fqn + "." + name] = (arr.item(), str(arr.dtype))
                continue
            if arr.size != owner.numel():
                raise CheckpointError(f"optimizer state {name!r} of {fqns[0]} has {arr.size} "
                                      f"elements, its parameter {owner.numel()}: not a "
                                      "per-element state this format can shard")
            if not writes_arrays:
                continue   # replicated state: rank 0 writes it
            piece = arr.reshape(-1)[off:off + (b - a)]   # a view: no copy
            for fqn in fqns:
                out.setdefault(prefix + "state." + fqn + "." + name, []).append(
                    ShardedTensor(piece, shape, a, b))
    if pg is not None and pg.size > 1 and kind != "replicated":
        # a scalar (Adam's step) belongs to whoever holds pieces of the parameter:
        # every rank contributes its own, so rank 0 writes them all
        parts = [None] * pg.size
        all_gather_object(parts, scalars, group=pg)
        for part in parts:
            for k, v in part.items():
                scalars.setdefault(k, v)
    for k, (v, dtype) in sorted(scalars.items()):
        out[k] = Tensor._make(np.asarray(v, dtype=dtype))
    groups = []
    fq = _group_fqns(model, optimizer, layout)
    for g, names in zip(optimizer.param_groups, fq):
        opts = {k: _jsonable(v) for k, v in g.items() if k != "params"}
        groups.append({"options": opts, "params": names})
    if pg is not None and pg.size > 1 and kind != "replicated":
        # the groups' parameter names are this rank's pieces: the union over ranks
        parts = [None] * pg.size
        all_gather_object(parts, [g["params"] for g in groups], group=pg)
        for i, g in enumerate(groups):
            g["params"] = sorted({n for part in parts for n in part[i]})
    return out, {prefix + "param_groups": groups, prefix + "layout": kind}


def save_optimizer(model, optimizer, checkpoint_dir, process_group=None, keep=1,
                   prefix=_OPT):
    """Save ``optimizer``'s state (sharded: every rank writes its pieces) into
    ``checkpoint_dir``; :func:`load_optimizer_state_dict` reads it back on any
    number of ranks and any stage. Returns the version's name."""
    sd, extra = get_optimizer_state_dict(model, optimizer, process_group, prefix)
    return save(sd, checkpoint_dir, process_group, extra=extra, keep=keep)


def load_optimizer_state_dict(model, optimizer, checkpoint_dir, process_group=None,
                              version=None, strict=True, prefix=_OPT):
    """Load the optimizer state saved in ``checkpoint_dir`` (by
    :func:`save_optimizer`, or ``save`` of :func:`get_optimizer_state_dict`'s entries)
    into ``optimizer`` -- typically a fresh one -- whatever world size and ZeRO stage
    saved it: the state this rank's pieces need is allocated and read from whichever
    files hold it, scalars and the groups' options are set. ``strict``: every
    parameter of the optimizer must have state in the checkpoint if any has.
    ``prefix``: the one it was saved with."""
    meta = read_metadata(checkpoint_dir, version)
    tensors = meta["tensors"]
    by_fqn = {}
    head = prefix + "state."
    for key, info in tensors.items():
        if key.startswith(head):
            fqn, name = key[len(head):].rsplit(".", 1)
            by_fqn.setdefault(fqn, {})[name] = info
    layout = _optimizer_layout(model, optimizer)
    kind, items = layout
    inner = optimizer.optim if kind == "zero1" else optimizer
    owners = {}
    for owner, fqns, shape, a, b, off in items:
        owners.setdefault(id(owner), (owner, []))[1].append((fqns, shape, a, b, off))
    target, missing = {}, []
    new_state = {}
    for oid, (owner, pieces) in owners.items():
        names = {}
        for fqns, shape, a, b, off in pieces:
            saved = next((by_fqn[f] for f in fqns if f in by_fqn), None)
            if saved is None:
                missing.append(fqns[0])
                continue
            for name, info in saved.items():
                names.setdefault(name, info)
        if not names:
            continue
        st = {}
        numel = owner.numel()
        for name, info in names.items():
            dtype = np.dtype(info["dtype"])
            if len(info["shape"]) == 0:
                st[name] = Tensor._make(np.zeros((), dtype))
                fqn = next(f for fqns, *_ in pieces for f in fqns
                           if name in by_fqn.get(f, {}))
                target[head + fqn + "." + name] = st[name]
            else:
                arr = np.zeros(numel, dtype)
                st[name] = Tensor._make(arr.reshape(owner.shape))
                for fqns, shape, a, b, off in pieces:
                    fqn = next((f for f in fqns if f in by_fqn), None)
                    if fqn is None or name not in by_fqn[fqn]:
                        continue
                    target.setdefault(head + fqn + "." + name, []).append(
                        ShardedTensor(arr[off:off + (b - a)], shape, a, b))
        new_state[oid] = (owner, st)
    if strict and missing and by_fqn:
        raise CheckpointError(f"{checkpoint_dir}: no optimizer state for parameters "
                              f"{sorted(set(missing))[:10]}")
    load(target, checkpoint_dir, process_group, version=version)
    inner.state.clear()
    for owner, st in new_state.values():
        inner.state[owner] = st
    groups = meta.get("extra", {}).get(prefix + "param_groups")
    if groups is not None:
        if len(groups) != len(optimizer.param_groups):
            raise CheckpointError(f"{checkpoint_dir}: {len(groups)} parameter groups saved, "
                                  f"the optimizer has {len(optimizer.param_groups)}")
        for g, sg in zip(optimizer.param_groups, groups):
            for k, v in sg["options"].items():
                g[k] = tuple(v) if isinstance(v, list) else v
        if kind == "zero1":
            for g, ig in zip(optimizer.param_groups, optimizer.optim.param_groups):
                for k, v in g.items():
                    if k != "params":
                        ig[k] = v
