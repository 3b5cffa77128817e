"""Checkpoint and RNG state: what a checkpoint holds and how a fit is put back to it.

A checkpoint (format ``deepseek.trainer/1``) holds the model, optimizers, schedulers,
the loop position (epoch, batches consumed in it, global step), every rank's RNG
states (deepseek's default generator, numpy's and Python's global ones), the
sampler's seed, ``callback_metrics`` and each callback's ``state_dict`` under its
``state_key``. Restoring all of it continues bit for bit where the checkpointed run
was, mid-epoch included.

Where a checkpoint may be taken so that resuming is exact: after an optimizer step
(``on_train_batch_end`` of a window's last micro-batch), or in ``on_train_epoch_end``
and later (the epoch is then recorded as complete: its validation, schedulers and
every callback's epoch-end update are in the state).
"""
import os
import random
import sys

import numpy as np

FORMAT = "deepseek.trainer/1"
LAST = "last.ckpt"


class LoopState:
    """Where training stands: what a checkpoint restores."""

    def __init__(self):
        self.global_step = 0        # optimizer steps taken
        self.epoch = 0              # the epoch being run (or next to run)
        self.batch_in_epoch = 0     # batches of ``epoch`` already consumed
        self.epoch_done = False     # in the epoch's end hooks: all of it has run

    def state_dict(self):
        # during the end-of-epoch hooks the epoch counts as complete
        if self.epoch_done:
            return {"global_step": self.global_step, "epoch": self.epoch + 1,
                    "batch_in_epoch": 0}
        return {"global_step": self.global_step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state):
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.epoch_done = False


# ---- RNG ----------------------------------------------------------------------------

def seed_everything(seed):
    """Seed deepseek's default generator, numpy's and Python's global ones."""
    from .. import random as ds_random
    ds_random.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


def rng_state():
    """Every global RNG a training step may draw from, as JSON-able values."""
    from .. import random as ds_random
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"deepseek": ds_random.get_rng_state(),
            "numpy": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": [list(random.getstate()[1]), random.getstate()[0]]}


def set_rng_state(state):
    from .. import random as ds_random
    ds_random.set_rng_state(state["deepseek"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))


# ---- writing --------------------------------------------------------------------------

def dump_checkpoint(trainer):
    """The training state as a dict (a collective: every rank must call)."""
    strategy = trainer.strategy
    ckpt = {
        "format": FORMAT,
        "state_dict": strategy.model_state_dict(),
        "optimizer_states": [strategy.optimizer_state(o) for o in trainer.optimizers],
        "lr_schedulers": [s["scheduler"].state_dict() for s in trainer.lr_scheduler_configs],
        "loop": trainer._loop.state_dict(),
        "rng": strategy.all_gather_object(rng_state()),
        "sampler": {"seed": trainer._sampler_seed(), "world_size": trainer.world_size},
        "callback_metrics": dict(trainer.callback_metrics),
        "callbacks": {},
        "precision_state": trainer.precision_plugin.state_dict(),
    }
    for cb in trainer.callbacks:
        state = cb.state_dict()
        if state:
            ckpt["callbacks"][cb.state_key] = state
    trainer._hooks.callbacks("on_save_checkpoint", ckpt)
    trainer._hooks.model("on_save_checkpoint", ckpt)
    return ckpt


# ---- reading --------------------------------------------------------------------------

def find_checkpoint(trainer, ckpt_path):
    """The path ``fit(ckpt_path=...)`` means; None for a fresh start."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = _last_path(trainer)
        if not os.path.exists(path):
            # first start of a script that always resumes (elastic restarts): fresh
            if trainer.is_global_zero and trainer.enable_progress_bar:
                sys.stderr.write(f"deepseek.Trainer: no checkpoint at {path}; starting "
                                 "from scratch\n")
            return None
        return path
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"fit(ckpt_path={ckpt_path!r}): no such checkpoint")
    return path


def _last_path(trainer):
    if trainer.checkpoint_dir is not None:
        return os.path.join(trainer.checkpoint_dir, LAST)
    from .callbacks import ModelCheckpoint
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath is not None:
            return os.path.join(cb.dirpath, LAST)
    raise ValueError("fit(ckpt_path='last') needs Trainer(checkpoint_dir=...) or a "
                     "ModelCheckpoint(dirpath=..., save_last=True)")


def load_checkpoint(trainer, path):
    ckpt = trainer.strategy.load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a deepseek.Trainer checkpoint (format "
                         f"{ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    return ckpt


def restore_training_state(trainer, ckpt):
    """Optimizers, schedulers, loop, callbacks, metrics from ``ckpt`` (the model's
    weights were loaded before the strategy's setup). The RNG states are kept for
    :func:`restore_rng`, which the loop calls at the point the checkpoint was taken."""
    strategy = trainer.strategy
    saved = ckpt["optimizer_states"]
    if len(saved) != len(trainer.optimizers):
        raise ValueError(f"the checkpoint has {len(saved)} optimizer states but "
                         f"configure_optimizers() made {len(trainer.optimizers)}")
    for opt, st in zip(trainer.optimizers, saved):
        strategy.load_optimizer_state(opt, st)
    saved = ckpt["lr_schedulers"]
    if len(saved) != len(trainer.lr_scheduler_configs):
        raise ValueError(f"the checkpoint has {len(saved)} lr scheduler states but "
                         f"configure_optimizers() made {len(trainer.lr_scheduler_configs)}")
    for s, st in zip(trainer.lr_scheduler_configs, saved):
        s["scheduler"].load_state_dict(st)
    trainer._loop.load_state_dict(ckpt["loop"])
    trainer.precision_plugin.load_state_dict(ckpt.get("precision_state"))
    states = ckpt["rng"]
    # the same world size: each rank continues its own streams; otherwise (a restart
    # on another number of workers) rank r takes rank r % saved's
    trainer._pending_rng = states[trainer.global_rank % len(states)]
    # the epoch's order must be the checkpointed run's even if this Trainer's seed differs
    trainer._resumed_sampler_seed = int(ckpt["sampler"]["seed"])
    saved_world = ckpt["sampler"]["world_size"]
    if saved_world != trainer.world_size and trainer._loop.batch_in_epoch \
            and trainer.is_global_zero:
        sys.stderr.write(f"deepseek.Trainer: the checkpoint was written by {saved_world} "
                         f"workers, resuming on {trainer.world_size}: the rest of epoch "
                         f"{trainer._loop.epoch} is split differently\n")
    trainer.callback_metrics = dict(ckpt.get("callback_metrics", {}))
    # the model's hook first, then the callbacks' (Lightning's order)
    trainer._hooks.model("on_load_checkpoint", ckpt)
    trainer._hooks.callbacks("on_load_checkpoint", ckpt)
    states = ckpt.get("callbacks", {})
    for cb in trainer.callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])


def restore_rng(trainer):
    """Put the checkpoint's RNG states back (once, where the loop resumes)."""
    if trainer._pending_rng is not None:
        set_rng_state(trainer._pending_rng)
        trainer._pending_rng = None
