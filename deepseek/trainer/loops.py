"""The fit and validation loops. They reach processes, devices and wrappers only
through ``trainer.strategy`` and tell the rest of the world what happens only through
the hooks (``trainer._hooks``), so a new strategy or callback changes nothing here.

One epoch of ``fit``, with the hooks in Lightning's order::

    on_train_epoch_start
    per micro-batch: on_train_batch_start, training_step, on_before_backward, backward,
        on_after_backward, [window's last: on_before_optimizer_step, clip, step,
        on_before_zero_grad, zero_grad], on_train_batch_end
    validation (on_validation_start ... on_validation_end), epoch schedulers
    on_train_epoch_end (plain callbacks, the model, then monitoring callbacks)
    last.ckpt in checkpoint_dir

Accumulation windows are counted from the start of the epoch (so a resumed epoch
keeps the same windows); each loss is divided by its window's size, and gradient
synchronisation is blocked on all but the window's last micro-batch.
"""
import contextlib

import numpy as np

from .data import batch_size
from .module import training_loss
from .optimizers import step_schedulers
from .state import restore_rng


class FitLoop:
    """Epochs of training (and validation at each epoch's end) for one ``fit``."""

    def __init__(self, trainer, train, vals):
        self.t = trainer
        self.train = train
        self.vals = vals

    def run(self):
        t = self.t
        hooks = t._hooks
        for opt in t.optimizers:
            t.strategy.zero_grad(opt)
        hooks("on_train_start")
        while not t._done_epochs() and not t.should_stop:
            if not self.run_epoch():
                break
        hooks("on_train_end")

    def run_epoch(self):
        """One (rest of an) epoch; False when training stops inside it."""
        t, strategy, hooks, loop = self.t, self.t.strategy, self.t._hooks, self.t._loop
        k = t.accumulate_grad_batches
        model = t.model
        skip = loop.batch_in_epoch
        n = self.train.num_batches()
        t.num_training_batches = n
        model.train()
        # the RNG states go back where the checkpoint was taken: before the epoch's
        # start hooks when it was taken at an epoch boundary, after them mid-epoch
        if skip == 0:
            restore_rng(t)
        hooks("on_train_epoch_start")
        restore_rng(t)
        window_loss, window_n = 0.0, 0
        for batch_idx, batch in self.train.epoch(loop.epoch, skip):
            w0 = (batch_idx // k) * k
            w_size = k if n is None else min(k, n - w0)
            last_micro = batch_idx - w0 == w_size - 1
            batch = strategy.batch_to_device(batch)
            hooks("on_train_batch_start", batch, batch_idx)
            t._logs.start()
            sync = contextlib.nullcontext() if last_micro else strategy.block_backward_sync()
            with sync:
                with t.precision_plugin.forward_context():
                    out = strategy.training_step(batch, batch_idx)
                loss = training_loss(out)
                scaled = loss / w_size if w_size > 1 else loss
                hooks("on_before_backward", scaled)
                strategy.backward(t.precision_plugin.scale_loss(scaled))
                hooks("on_after_backward")
            window_loss += float(loss.detach().item())
            window_n += 1
            t.callback_metrics.update(t._logs.take())
            loop.batch_in_epoch = batch_idx + 1
            if last_micro:
                self.optimizer_step()
                t.callback_metrics["loss"] = window_loss / window_n
                window_loss, window_n = 0.0, 0
            hooks("on_train_batch_end", out, batch, batch_idx)
            if last_micro and (t._done_steps() or t.should_stop) \
                    and (n is None or batch_idx + 1 < n):
                t._save_last()  # mid-epoch: the checkpoint records the position
                return False
        if skip == 0 and loop.batch_in_epoch == 0:
            raise ValueError(f"train_dataloaders yielded no batch in epoch {loop.epoch} "
                             "(an empty dataset, or drop_last with fewer samples than "
                             "batch_size on this worker)")
        # end of the epoch (an epoch cut short by max_steps exactly at its end counts
        # as complete, so its validation and schedulers run too)
        if window_n:
            # an iterable of unknown length ended inside a window: its micro-steps all
            # ran with synchronisation blocked
            strategy.sync_gradients(t.optimizers)
            self.optimizer_step()
            t.callback_metrics["loss"] = window_loss / window_n
        if self.vals and callable(getattr(model, "validation_step", None)):
            run_validation(t, self.vals)
            model.train()
        step_schedulers(t.lr_scheduler_configs, "epoch", loop.epoch + 1, t.callback_metrics)
        loop.epoch_done = True
        hooks.train_epoch_end()
        loop.epoch += 1
        loop.batch_in_epoch = 0
        loop.epoch_done = False
        t._save_last()
        return not t._done_steps()

    def optimizer_step(self):
        """Clip, step, zero the gradients, count the step, step per-step schedulers."""
        t, strategy, hooks = self.t, self.t.strategy, self.t._hooks
        for opt in t.optimizers:
            hooks("on_before_optimizer_step", opt)
        if t.gradient_clip_val is not None:
            t.precision_plugin.unscale(t.optimizers)  # clip the true gradients
            strategy.clip_gradients(t.optimizers, t.gradient_clip_val)
        for opt in t.optimizers:
            t.precision_plugin.optimizer_step(opt, strategy)
        t.precision_plugin.after_steps()
        for opt in t.optimizers:
            hooks("on_before_zero_grad", opt)
            strategy.zero_grad(opt)
        t._loop.global_step += 1
        step_schedulers(t.lr_scheduler_configs, "step", t._loop.global_step, t.callback_metrics)


def run_validation(trainer, feeds):
    """``validation_step`` over ``feeds`` with the validation hooks; the metrics (each
    the mean over batches weighted by batch size, and over ranks) also land in
    ``trainer.callback_metrics`` and ``trainer.validation_metrics``."""
    from ..autograd import no_grad
    t, strategy, hooks = trainer, trainer.strategy, trainer._hooks
    model = t.model
    was_training = getattr(model, "training", True)
    model.eval()
    sums = {}
    try:
        hooks("on_validation_start")
        hooks("on_validation_epoch_start")
        with no_grad():
            for loader_idx, feed in enumerate(feeds):
                for batch_idx, batch in feed.epoch(0, 0):
                    batch = strategy.batch_to_device(batch)
                    hooks("on_validation_batch_start", batch, batch_idx, loader_idx)
                    t._logs.start()
                    with trainer.precision_plugin.forward_context():
                        out = strategy.validation_step(batch, batch_idx)
                    logged = t._logs.current
                    if not logged and out is not None:
                        # nothing logged: the returned loss is the metric
                        loss = out.get("loss") if isinstance(out, dict) else out
                        if loss is not None:
                            t._logs.log("val_loss", loss)
                    bs = batch_size(batch) or 1
                    for name, val in t._logs.take().items():
                        s = sums.setdefault(name, [0.0, 0.0])
                        s[0] += val * bs
                        s[1] += bs
                    hooks("on_validation_batch_end", out, batch, batch_idx, loader_idx)
        metrics = reduce_metrics(sums, strategy)
        t.callback_metrics.update(metrics)
        t.validation_metrics = metrics
        hooks("on_validation_epoch_end")
        hooks("on_validation_end")
    finally:
        t._logs.current = None
        model.train(was_training)
    return metrics


def reduce_metrics(sums, strategy):
    """name -> [weighted sum, weight] on each rank -> name -> mean over all ranks."""
    names = sorted(sums)
    if strategy.world_size > 1:
        # ranks may have logged different names: agree on the union first
        gathered = strategy.all_gather_object(names)
        names = sorted(set(n for rank_names in gathered for n in rank_names))
        arr = np.array([sums.get(n, [0.0, 0.0]) for n in names], dtype=np.float64).reshape(-1)
        strategy.reduce(arr, "sum")
        pairs = arr.reshape(-1, 2)
    else:
        pairs = np.array([sums[n] for n in names], dtype=np.float64).reshape(-1, 2)
    return {n: float(s / w) if w else float("nan") for n, (s, w) in zip(names, pairs)}
