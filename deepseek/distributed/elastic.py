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
``deepseek.distributed``.
"""
from . import checkpoint as _ckpt

__all__ = ["save", "resume"]   # State, ElasticSampler, run: resolved on use


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


def __getattr__(name):
    if name in ("State", "ElasticSampler", "run"):
        from .. import elastic
        return getattr(elastic, name)
    raise AttributeError(f"module 'deepseek.distributed.elastic' has no attribute {name!r}")
