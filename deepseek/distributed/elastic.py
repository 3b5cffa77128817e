"""The engine-aware side of elastic training: resuming a restart-the-world attempt
from a sharded checkpoint in whatever world size the new round has.

    extra = elastic.resume(ckpt_dir, module, optimizer, model=ddp)   # {} the first time
    step = extra.get("step", 0)
    ...
    elastic.save(ckpt_dir, module, optimizer, model=ddp, extra={"step": step})

One version of :mod:`deepseek.distributed.checkpoint` holds the model (its state dict;
FSDP: its shards) and the optimizer (every rank's pieces: ZeRO-1's shards, FSDP's, or
a plain optimizer's replicated state) under the ``optim.`` prefix, plus ``extra``
(JSON: the step, the data position). :func:`resume` reads the pieces the *new*
sharding needs from whichever files hold them: saved at 3 ranks, resumed at 2 (or 4,
or 1), with no conversion step. Collective: every rank calls both.

In-process recovery (:mod:`deepseek.elastic`) keeps its commits in memory instead;
``deepseek.elastic.State`` is re-exported here for code that imports from
``deepseek.distributed``. :class:`Sharded` lets a State track a model and an optimizer
whose state is sharded over the group (ZeRO-1's ZeroRedundancyOptimizer, FSDP's
ZeRO-2/3 shards): ``state.bind(train=Sharded(fsdp, opt))`` inside the training
function (elastic itself may not import the engine, so this adapter lives here).
"""
import numpy as np

from . import checkpoint as _ckpt

__all__ = ["save", "resume", "Sharded"]   # State, ElasticSampler, run: resolved on use


def _target(module, model):
    return module if model is None else model


def save(checkpoint_dir, module, optimizer=None, model=None, extra=None, keep=1):
    """Write the model and ``optimizer`` state as one sharded checkpoint version
    (atomic: a crash leaves the previous one). ``model``: the wrapper the optimizer
    trains when it is not ``module`` (DDP for ZeRO-1, the FSDP module). ``extra``:
    JSON-able data returned by :func:`resume`. Returns the version's name."""
    m = _target(module, model)
    sd = dict(_ckpt.get_state_dict(m))
    meta = {"elastic": extra or {}}
    if optimizer is not None:
        osd, oextra = _ckpt.get_optimizer_state_dict(m, optimizer)
        sd.update(osd)
        meta.update(oextra)
    return _ckpt.save(sd, checkpoint_dir, extra=meta, keep=keep)


def resume(checkpoint_dir, module, optimizer=None, model=None) -> dict:
    """Load the latest version :func:`save` wrote into ``module`` (and ``optimizer``),
    resharded to this world's size and sharding; returns its ``extra``, or ``{}``
    when there is no complete version yet (the first attempt)."""
    import os
    if not os.path.exists(os.path.join(checkpoint_dir, "LATEST")):
        return {}
    m = _target(module, model)
    meta = _ckpt.load(dict(_ckpt.get_state_dict(m)), checkpoint_dir)
    if optimizer is not None and any(k.startswith("optim.state.")
                                     for k in _ckpt.read_metadata(checkpoint_dir)["tensors"]):
        _ckpt.load_optimizer_state_dict(m, optimizer, checkpoint_dir)
    return dict(meta.get("elastic", {}))


class Sharded:
    """A model and its optimizer as one object :class:`deepseek.elastic.State` commits
    shard by shard (``State.bind(name=Sharded(model, optimizer))``).

    ``model`` is what the optimizer trains: an FSDP model (ZeRO-2/3: its flat shards),
    DDP with a ZeroRedundancyOptimizer (ZeRO-1), or any model with a plain optimizer.
    Its state is split the way the sharded checkpoints split it (keys are the
    unwrapped model's parameter names, values element ranges of the flattened
    tensors, :mod:`deepseek.distributed.checkpoint`): the *replicated* part (a DDP
    model's parameters, buffers, the groups' options; the same on every rank, so any
    survivor has it) and this rank's *sharded* part (FSDP's parameter shards, the
    optimizer's per-element state of this rank's pieces and their scalars), which
    the State keeps a copy of on the next rank. Loading reads whatever ranges this
    world's sharding needs from the parts of any world: the reshard after a recovery
    into another world size. Local: no collective."""

    def __init__(self, model, optimizer=None):
        self.model, self.optimizer = model, optimizer
        pg = getattr(model, "process_group", None) or getattr(optimizer, "process_group",
                                                             None)
        if pg is None:
            from .. import collectives as C
            pg = C.get_default_group()
        self.process_group = pg

    def _fsdp(self):
        from .fsdp import FullyShardedDataParallel
        return isinstance(self.model, FullyShardedDataParallel)

    def elastic_export(self):
        """``{"replicated": {...}, "sharded": {...}}`` of views (the State copies
        them): ``sharded["p"][key]`` is a list of ``[start, end, 1-D array]`` pieces,
        ``sharded["s"][key]`` a scalar state ``[value, dtype]``."""
        rep, pieces, scalars = {}, {}, {}
        if self._fsdp():
            for key, v in _ckpt.get_state_dict(self.model).items():
                if isinstance(v, list):
                    pieces[key] = [[t.start, t.end, t.local] for t in v]
                else:
                    rep[key] = v._data
        else:
            for key, v in _ckpt.get_state_dict(self.model).items():
                rep[key] = v._data if hasattr(v, "_data") else np.asarray(v)
        groups = []
        if self.optimizer is not None:
            kind, items = _ckpt._optimizer_layout(self.model, self.optimizer)
            inner = self.optimizer.optim if kind == "zero1" else self.optimizer
            for owner, fqns, shape, a, b, off in items:
                for name, v in (inner.state.get(owner) or {}).items():
                    arr = v._data if hasattr(v, "_data") else np.asarray(v)
                    for fqn in fqns:
                        key = f"{fqn}.{name}"
                        if arr.ndim == 0:
                            scalars[key] = [arr.item(), str(arr.dtype)]
                        elif kind == "replicated":
                            rep["optim." + key] = arr
                        else:
                            pieces.setdefault("optim." + key, []).append(
                                [a, b, arr.reshape(-1)[off:off + (b - a)]])
            groups = [{k: _ckpt._jsonable(v) for k, v in g.items() if k != "params"}
                      for g in self.optimizer.param_groups]
        return {"replicated": {"p": rep, "groups": groups},
                "sharded": {"p": pieces, "s": scalars}}

    def elastic_load(self, replicated, parts):
        """Load a committed state: ``replicated`` (one rank's) and the ``sharded``
        parts of every rank of the world that committed it (any size): each range
        this rank's sharding holds now is read from the parts that cover it."""
        merged, scalars = {}, {}
        for part in parts:
            for key, lst in part["p"].items():
                merged.setdefault(key, []).extend(lst)
            scalars.update(part["s"])
        rep = replicated["p"]
        from .._tensor import Tensor
        if self._fsdp():
            for key, v in _ckpt.get_state_dict(self.model).items():
                if isinstance(v, list):
                    for t in v:
                        _fill(t.local, merged, key, t.start, t.end)
                        if t.on_load is not None:
                            t.on_load()
                else:
                    v._data[...] = rep[key]
                    v._bump_version()
        else:
            inner = getattr(self.model, "module", self.model)
            inner.load_state_dict({k: rep[k] for k in inner.state_dict()})
        if self.optimizer is None:
            return
        kind, items = _ckpt._optimizer_layout(self.model, self.optimizer)
        inner = self.optimizer.optim if kind == "zero1" else self.optimizer
        states = {}
        for owner, fqns, shape, a, b, off in items:
            st = states.setdefault(id(owner), (owner, {}))[1]
            n = owner.numel()
            for fqn in fqns:
                for key in [k for k in scalars if k.rsplit(".", 1)[0] == fqn]:
                    v, dtype = scalars[key]
                    st[key.rsplit(".", 1)[1]] = Tensor._make(np.asarray(v, dtype=dtype))
                head = "optim." + fqn + "."
                names = {k[len(head):] for k in (rep if kind == "replicated" else merged)
                         if k.startswith(head) and "." not in k[len(head):]}
                for name in names:
                    if kind == "replicated":
                        st[name] = Tensor._make(np.array(rep[head + name], copy=True)
                                                .reshape(owner.shape))
                        continue
                    if name not in st:
                        dtype = merged[head + name][0][2].dtype
                        st[name] = Tensor._make(np.zeros(owner.shape, dtype))
                    dst = st[name]._data.reshape(-1)[off:off + (b - a)]
                    _fill(dst, merged, head + name, a, b)
                if names:
                    break          # a tied parameter: its first name has it all
        inner.state.clear()
        for owner, st in states.values():
            if st:
                inner.state[owner] = st
        for g, sg in zip(self.optimizer.param_groups, replicated["groups"]):
            for k, v in sg.items():
                g[k] = tuple(v) if isinstance(v, list) else v
        if kind == "zero1":
            for g, ig in zip(self.optimizer.param_groups, self.optimizer.optim.param_groups):
                ig.update({k: v for k, v in g.items() if k != "params"})


def _fill(dst, merged, key, lo, hi):
    """Elements ``[lo, hi)`` of ``key`` into ``dst`` from the pieces that overlap them;
    a range no piece covers means a shard was lost: an error, never zeros."""
    seen = np.zeros(hi - lo, bool)      # (a tied parameter's pieces come twice)
    for a, b, arr in merged.get(key, ()):
        s, e = max(lo, a), min(hi, b)
        if s < e:
            dst[s - lo:e - lo] = arr[s - a:e - a]
            seen[s - lo:e - lo] = True
    covered = int(seen.sum())
    if covered < hi - lo:
        raise RuntimeError(f"elastic: the committed state covers {covered} of the "
                           f"{hi - lo} elements [{lo}, {hi}) of {key!r} this rank needs "
                           "(a shard of the commit is lost)")


def __getattr__(name):
    if name in ("State", "ElasticSampler", "run"):
        from .. import elastic
        return getattr(elastic, name)
    raise AttributeError(f"module 'deepseek.distributed.elastic' has no attribute {name!r}")
