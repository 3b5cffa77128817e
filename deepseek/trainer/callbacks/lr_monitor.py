"""LearningRateMonitor: record every optimizer param group's learning rate.

Names follow Lightning: ``lr-<Optimizer class>`` (``-1``, ``-2`` ... appended for
further optimizers of the same class), with ``/pg<i>`` for each param group when an
optimizer has several. The values go into ``trainer.callback_metrics`` (so a progress
bar or a checkpoint file name can use them) and into :attr:`history`.
"""
from .base import Callback


class LearningRateMonitor(Callback):
    """Log learning rates at optimizer steps and/or epochs.

    Args:
        logging_interval: 'step' (at the start of every optimizer step's window),
            'epoch' (at the start of every epoch) or None (per scheduler interval:
            optimizers with a per-step scheduler at steps, the others at epochs).
        log_momentum: also log ``momentum`` (SGD) or ``betas[0]`` (Adam) as
            ``lr-...-momentum``.
    """

    def __init__(self, logging_interval=None, log_momentum=False):
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(f"LearningRateMonitor(logging_interval={logging_interval!r}): "
                             "use 'step', 'epoch' or None")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.history = []   # (global_step, {name: value}) per record

    def on_train_epoch_start(self, trainer, model):
        if self.logging_interval != "step":
            self._record(trainer, "epoch")

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        # once per optimizer step: at the first micro-batch of its window
        if self.logging_interval != "epoch" and batch_idx % trainer.accumulate_grad_batches == 0:
            self._record(trainer, "step")

    def _record(self, trainer, interval):
        step_sched = {id(s["scheduler"].optimizer) for s in trainer.lr_scheduler_configs
                      if s["interval"] == "step" and hasattr(s["scheduler"], "optimizer")}
        values = {}
        for name, opt in self._named(trainer.optimizers):
            if self.logging_interval is None and (id(opt) in step_sched) != (interval == "step"):
                continue
            groups = opt.param_groups
            for i, group in enumerate(groups):
                key = name if len(groups) == 1 else f"{name}/pg{i + 1}"
                values[key] = float(group["lr"])
                if self.log_momentum:
                    mom = group.get("momentum", None)
                    if mom is None and "betas" in group:
                        mom = group["betas"][0]
                    if mom is not None:
                        values[f"{key}-momentum"] = float(mom)
        if values:
            trainer.callback_metrics.update(values)
            self.history.append((trainer.global_step, values))

    @staticmethod
    def _named(optimizers):
        seen = {}
        for opt in optimizers:
            base = f"lr-{type(opt).__name__}"
            k = seen.get(base, 0)
            seen[base] = k + 1
            yield (base if k == 0 else f"{base}-{k}"), opt
