"""EarlyStopping: stop fit when a monitored metric has stopped improving.

Checked at the end of every epoch (after validation, in ``on_train_epoch_end``, before
ModelCheckpoint, so a checkpoint of the same epoch holds the updated counters). A
value improves on the best so far when it is better by more than ``min_delta``;
after ``patience`` checks in a row without improvement, ``trainer.should_stop`` is
set and fit ends after this epoch. Its counters are part of every checkpoint.
"""
import math

from .base import Callback, monitored_value, rank_zero_print


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs.

    Args:
        monitor: the metric (a key of ``trainer.callback_metrics``).
        min_delta: how much better a value must be to count as an improvement.
        patience: checks without improvement before stopping.
        mode: 'min' or 'max'.
        strict: raise when ``monitor`` was not logged (else skip the check).
        check_finite: stop when the metric becomes nan or inf.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        verbose: say why on stderr (rank 0).
    """

    _monitoring = True

    def __init__(self, monitor, min_delta=0.0, patience=3, verbose=False, mode="min",
                 strict=True, check_finite=True, stopping_threshold=None,
                 divergence_threshold=None):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping(mode={mode!r}): use 'min' or 'max'")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}): an int >= 0")
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopping_reason = None

    @property
    def state_key(self):
        return "EarlyStopping" + repr({"monitor": self.monitor, "mode": self.mode})

    def _better(self, a, b):
        return a < b if self.mode == "min" else a > b

    def on_train_epoch_end(self, trainer, model):
        current = monitored_value(trainer, self.monitor, "EarlyStopping", strict=self.strict)
        if current is None:
            return
        stop, reason = self._evaluate(current)
        # rank 0's value decided on every rank; agreeing once more costs little and
        # keeps ranks together even if a subclass decides on local values
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
            trainer.should_stop = True
        if reason and self.verbose:
            rank_zero_print(trainer, f"EarlyStopping: {reason}")

    def _evaluate(self, current):
        """(stop?, why) for this check; updates the counters."""
        m = self.monitor
        if self.check_finite and not math.isfinite(current):
            return True, f"{m} = {current} is not finite; stopping"
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold):
            return True, f"{m} = {current:.5g} passed the stopping threshold " \
                         f"{self.stopping_threshold}; stopping"
        if self.divergence_threshold is not None \
                and self._better(self.divergence_threshold, current):
            return True, f"{m} = {current:.5g} diverged past {self.divergence_threshold}; stopping"
        delta = -self.min_delta if self.mode == "min" else self.min_delta
        if self._better(current - delta, self.best_score):
            reason = f"{m} improved to {current:.5g}"
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, f"{m} did not improve in the last {self.wait_count} checks " \
                         f"(best {self.best_score:.5g}); stopping"
        return False, None

    def state_dict(self):
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch,
                "best_score": self.best_score, "patience": self.patience}

    def load_state_dict(self, state):
        self.wait_count = int(state["wait_count"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best_score = float(state["best_score"])
        self.patience = int(state["patience"])
