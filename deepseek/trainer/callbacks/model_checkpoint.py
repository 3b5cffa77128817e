"""ModelCheckpoint: write checkpoints during fit, keeping the best ``save_top_k``.

Checkpoints are full Trainer checkpoints (``fit(ckpt_path=path)`` resumes from any of
them exactly), written atomically with deepseek.save. They are taken at the end of
every ``every_n_epochs``-th epoch (in ``on_train_epoch_end``, after validation and the
epoch's schedulers, so the epoch is complete in them) or after every
``every_n_train_steps``-th optimizer step. ModelCheckpoint runs after every other
callback, so its files hold their state of the same moment.

With ``monitor``, the ``save_top_k`` best by ``callback_metrics[monitor]`` (``mode``
'min' or 'max') are kept and worse files are deleted; without it, the latest one
(``save_top_k=1``), every one (-1) or none (0). ``save_last`` also writes
``last.ckpt`` in ``dirpath`` at every trigger. The decision is taken on rank 0's value
(broadcast), so every rank agrees.
"""
import math
import os
import re

from .base import Callback, monitored_value, rank_zero_print

_FIELD = re.compile(r"\{([^{}:!]+)((?:![rsa])?(?::[^{}]*)?)\}")


class ModelCheckpoint(Callback):
    """Save checkpoints to ``dirpath`` (default: the Trainer's ``checkpoint_dir``).

    Args:
        dirpath: folder of the files.
        filename: a template with ``{epoch}``, ``{step}`` and metric names, e.g.
            ``'{epoch}-{val_loss:.3f}'``; with ``auto_insert_metric_name`` each field
            is written ``name=value`` (default template: ``'{epoch}-{step}'``, giving
            ``epoch=0-step=8.ckpt``). A metric that is missing formats as 0.
        monitor: the metric that ranks the checkpoints (None: the latest wins).
        mode: 'min' or 'max': which values of ``monitor`` are better.
        save_top_k: how many files to keep (-1: all, 0: none but last).
        save_last: also write ``last.ckpt`` at every trigger.
        every_n_epochs / every_n_train_steps: when to save (exclusive; the default is
            every epoch).
        verbose: say on stderr what was saved.
    """

    _monitoring = True
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath=None, filename=None, monitor=None, mode="min", save_top_k=1,
                 save_last=None, every_n_epochs=None, every_n_train_steps=None,
                 auto_insert_metric_name=True, verbose=False):
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'")
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k!r}): an int >= -1")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): "
                             "keeping the top k needs a metric to rank by (monitor=...)")
        for name, v in (("every_n_epochs", every_n_epochs),
                        ("every_n_train_steps", every_n_train_steps)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"ModelCheckpoint({name}={v!r}): an int >= 0 or None")
        if every_n_epochs and every_n_train_steps:
            raise ValueError("ModelCheckpoint: every_n_epochs and every_n_train_steps are "
                             "mutually exclusive")
        if every_n_epochs is None and not every_n_train_steps:
            every_n_epochs = 1
        self._dirpath = None if dirpath is None else os.fspath(dirpath)
        self.dirpath = self._dirpath
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_epochs = every_n_epochs or 0
        self.every_n_train_steps = every_n_train_steps or 0
        self.auto_insert_metric_name = auto_insert_metric_name
        self.verbose = verbose
        self.best_k_models = {}         # path -> score
        self.kth_best_model_path = ""
        self.kth_value = self._worst()
        self.best_model_path = ""
        self.best_model_score = None
        self.current_score = None
        self.last_model_path = ""
        self._last_global_step_saved = -1
        self._step_at_batch_start = None

    @property
    def state_key(self):
        return "ModelCheckpoint" + repr({
            "monitor": self.monitor, "mode": self.mode,
            "every_n_train_steps": self.every_n_train_steps,
            "every_n_epochs": self.every_n_epochs})

    def _worst(self):
        return math.inf if self.mode == "min" else -math.inf

    def _better(self, a, b):
        return a < b if self.mode == "min" else a > b

    # ---- hooks ----------------------------------------------------------------------
    def setup(self, trainer, model, stage):
        if stage != "fit":
            return
        self.dirpath = self._dirpath or trainer.checkpoint_dir
        if self.dirpath is None:
            raise ValueError("ModelCheckpoint needs dirpath=... (or Trainer(checkpoint_dir=...))")

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        n = self.every_n_train_steps
        stepped = trainer.global_step != self._step_at_batch_start
        # only right after an optimizer step: inside an accumulation window the
        # gradients so far are in no checkpoint, so it could not resume exactly
        if n and stepped and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, model):
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            self._save(trainer)

    # ---- saving ---------------------------------------------------------------------
    def _save(self, trainer):
        if trainer.global_step == self._last_global_step_saved:
            return
        self._last_global_step_saved = trainer.global_step
        metrics = dict(trainer.callback_metrics)
        paths, remove = [], []
        if self.save_top_k:
            path = self.format_checkpoint_name(metrics, trainer.current_epoch,
                                               trainer.global_step)
            if self.monitor is None:
                if self.save_top_k == 1 and self.best_model_path \
                        and self.best_model_path != path:
                    remove.append(self.best_model_path)
                self.best_model_path = path
                paths.append(path)
            else:
                current = monitored_value(trainer, self.monitor, "ModelCheckpoint")
                if math.isnan(current):
                    current = self._worst()  # never better than a real value
                self.current_score = current
                if self._makes_top_k(current):
                    remove += self._admit(path, current)
                    paths.append(path)
                    if self.verbose:
                        rank_zero_print(trainer, f"ModelCheckpoint: epoch {trainer.current_epoch}"
                                        f" step {trainer.global_step}: {self.monitor} "
                                        f"{current:.5g} is in the top {self.save_top_k}, "
                                        f"saving {path}")
        if self.save_last:
            self.last_model_path = os.path.join(self.dirpath,
                                                self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            paths.append(self.last_model_path)
        if not paths:
            return
        # the state above is final before the checkpoint is made: it holds itself
        ckpt = trainer._dump_checkpoint()
        for p in paths:
            trainer.strategy.save_checkpoint(ckpt, p)
        for p in remove:
            if p not in paths and p != self.last_model_path:
                trainer.strategy.remove_checkpoint(p)

    def _makes_top_k(self, current):
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        return self._better(current, self.kth_value)

    def _admit(self, path, current):
        """Put ``path`` in the top k; the paths that fall out of it."""
        out = []
        k = self.save_top_k
        if k != -1 and len(self.best_k_models) >= k and path not in self.best_k_models:
            out.append(self.kth_best_model_path)
            del self.best_k_models[self.kth_best_model_path]
        self.best_k_models[path] = current
        ranked = sorted(self.best_k_models.items(), key=lambda kv: kv[1],
                        reverse=self.mode == "max")
        self.best_model_path, self.best_model_score = ranked[0]
        if k == -1 or len(ranked) >= k:
            self.kth_best_model_path, self.kth_value = ranked[-1]
        return out

    def format_checkpoint_name(self, metrics, epoch, step):
        """The file for a checkpoint at ``epoch``/``step`` with these metrics."""
        values = dict(metrics, epoch=epoch, step=step)

        def field(m):
            name, spec = m.group(1), m.group(2)
            text = ("{" + "0" + spec + "}").format(values.get(name, 0))
            return f"{name}={text}" if self.auto_insert_metric_name else text
        name = _FIELD.sub(field, self.filename or "{epoch}-{step}")
        return os.path.join(self.dirpath, name + self.FILE_EXTENSION)

    # ---- state ----------------------------------------------------------------------
    def state_dict(self):
        return {"monitor": self.monitor, "dirpath": self.dirpath,
                "best_model_score": self.best_model_score,
                "best_model_path": self.best_model_path,
                "current_score": self.current_score,
                "best_k_models": dict(self.best_k_models),
                "kth_best_model_path": self.kth_best_model_path,
                "kth_value": self.kth_value, "last_model_path": self.last_model_path,
                "last_global_step_saved": self._last_global_step_saved}

    def load_state_dict(self, state):
        self.best_model_score = state["best_model_score"]
        self.best_model_path = state["best_model_path"]
        if state["dirpath"] != self.dirpath:
            return  # another folder: the files it ranked are not ours to delete
        self.current_score = state["current_score"]
        self.best_k_models = dict(state["best_k_models"])
        self.kth_best_model_path = state["kth_best_model_path"]
        self.kth_value = state["kth_value"]
        self.last_model_path = state["last_model_path"]
        self._last_global_step_saved = state["last_global_step_saved"]
