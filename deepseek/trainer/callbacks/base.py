"""Callback: code that runs at fixed points of the Trainer's loops (Lightning's API).

Subclass and override the hooks you need; every hook gets ``(trainer, model, ...)``,
``model`` being the user's (unwrapped) module. In ``fit`` they come in this order::

    setup(stage='fit')
    [resuming: on_load_checkpoint, load_state_dict]
    on_fit_start, on_train_start
      on_train_epoch_start
        on_train_batch_start(batch, batch_idx)
          on_before_backward(loss), on_after_backward
          on_before_optimizer_step(optimizer), on_before_zero_grad(optimizer)
        on_train_batch_end(outputs, batch, batch_idx)
        on_validation_start, on_validation_epoch_start
          on_validation_batch_start(batch, batch_idx, dataloader_idx)
          on_validation_batch_end(outputs, batch, batch_idx, dataloader_idx)
        on_validation_epoch_end, on_validation_end
      on_train_epoch_end
    on_train_end, on_fit_end
    teardown(stage='fit')               (also after an error, after on_exception)

``validate`` calls setup/teardown(stage='validate') and the validation hooks. Writing
a checkpoint calls ``state_dict`` and then ``on_save_checkpoint(checkpoint)``.

State: what ``state_dict()`` returns is stored in every checkpoint under
``state_key`` and handed to ``load_state_dict`` when a fit resumes from it, so a
callback that counts or remembers (EarlyStopping's patience, ModelCheckpoint's best
files) continues exactly. Two callbacks of one class need different state keys.
"""


class Callback:
    """The base class: every hook does nothing."""

    # monitoring callbacks (early stopping, checkpointing) get on_train_epoch_end after
    # the model's own hook, so what it logs there is visible to them
    _monitoring = False

    @property
    def state_key(self):
        """The key of this callback's state in a checkpoint."""
        return type(self).__qualname__

    def state_dict(self):
        """What a checkpoint keeps of this callback (JSON-able values, arrays)."""
        return {}

    def load_state_dict(self, state_dict):
        """Take back what :meth:`state_dict` returned."""

    def setup(self, trainer, model, stage):
        """Before fit/validate starts; ``stage`` is 'fit' or 'validate'."""

    def teardown(self, trainer, model, stage):
        """After fit/validate ends (also when it failed)."""

    def _no_op(self, trainer, model):
        """Nothing, until overridden (when each hook runs: the module's docstring)."""

    # the hooks that take only (trainer, model) share one that does nothing
    on_fit_start = on_fit_end = _no_op
    on_train_start = on_train_end = _no_op
    on_train_epoch_start = on_train_epoch_end = _no_op
    on_validation_start = on_validation_end = on_validation_epoch_start = _no_op
    on_after_backward = _no_op

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        pass

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        """After the micro-batch (and the optimizer step when it ended a window)."""

    def on_validation_epoch_end(self, trainer, model):
        """The validation metrics are in ``trainer.callback_metrics`` by now."""

    def on_validation_batch_start(self, trainer, model, batch, batch_idx, dataloader_idx=0):
        pass

    def on_validation_batch_end(self, trainer, model, outputs, batch, batch_idx,
                                dataloader_idx=0):
        pass

    def on_before_backward(self, trainer, model, loss):
        pass

    def on_before_optimizer_step(self, trainer, model, optimizer):
        pass

    def on_before_zero_grad(self, trainer, model, optimizer):
        pass

    def on_save_checkpoint(self, trainer, model, checkpoint):
        """``checkpoint`` (a dict) is about to be written; add to it if you like."""

    def on_load_checkpoint(self, trainer, model, checkpoint):
        """A fit resumes from ``checkpoint``."""

    def on_exception(self, trainer, model, exception):
        """fit/validate is failing with ``exception`` (it is raised afterwards)."""


def rank_zero_print(trainer, text):
    """A line on stderr from rank 0 only."""
    import sys
    if trainer.is_global_zero:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def monitored_value(trainer, monitor, who, strict=True):
    """``callback_metrics[monitor]`` as rank 0 has it (every rank must call: decisions
    that lead to collectives must be the same on every rank, and a train metric is
    per rank); None when it is missing and not ``strict``."""
    metrics = trainer.callback_metrics
    value = float(metrics[monitor]) if monitor in metrics else None
    value = trainer.strategy.broadcast(value, 0)
    if value is None and strict:
        raise KeyError(f"{who}(monitor={monitor!r}): nobody logged {monitor!r} (logged: "
                       f"{sorted(metrics)}); log it with self.log({monitor!r}, value) in "
                       f"training_step or validation_step")
    return value
