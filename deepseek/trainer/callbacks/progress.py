"""ProgressBar: one line of progress on rank 0, as a callback.

On a terminal the line is redrawn with ``\\r`` (at most every 0.1 s); otherwise a plain
line is written every ``trainer.log_every_n_steps`` optimizer steps. Samples/s counts
every rank's samples. After each validation during fit a line lists its metrics.
"""
import sys
import time

from .base import Callback
from ..data import batch_size


class ProgressBar(Callback):
    """Progress on stderr from rank 0 (``Trainer(enable_progress_bar=True)`` adds one)."""

    def __init__(self):
        self._reset(None)

    def _reset(self, trainer):
        self.on = trainer is not None and trainer.is_global_zero
        self.tty = self.on and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.count = 0
        self.last_draw = 0.0
        self.rate = 0.0
        self.window = (time.perf_counter(), 0)
        self.dirty = False
        self.step_seen = None

    def on_train_start(self, trainer, model):
        self._reset(trainer)

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        self.step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        self.count += batch_size(batch) * trainer.world_size
        if trainer.global_step == self.step_seen or not self.on:
            return  # a micro-batch inside an accumulation window: no step yet
        now = time.perf_counter()
        t0, c0 = self.window
        if now - t0 > 0.5 or not self.rate:
            self.rate = (self.count - c0) / max(now - t0, 1e-9)
            self.window = (now, self.count)
        step, loss = trainer.global_step, trainer.callback_metrics.get("loss", float("nan"))
        epoch, n = trainer.current_epoch, trainer.num_training_batches
        if self.tty:
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                done = batch_idx + 1
                total = "?" if n is None else n
                width = 20
                frac = min(done / n, 1.0) if n else 0.0
                bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
                sys.stderr.write(f"\repoch {epoch} [{bar}] {done}/{total} step {step} "
                                 f"loss {loss:.4f} {self.rate:,.0f} samples/s   ")
                sys.stderr.flush()
                self.dirty = True
        elif step % trainer.log_every_n_steps == 0:
            sys.stderr.write(f"epoch {epoch} step {step}: loss {loss:.4f}, "
                             f"{self.rate:,.0f} samples/s\n")
            sys.stderr.flush()

    def on_validation_end(self, trainer, model):
        metrics = trainer.validation_metrics
        if not self.on or not metrics or trainer.state.fn != "fit":
            return
        self._newline()
        text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        sys.stderr.write(f"epoch {trainer.current_epoch}: {text}\n")
        sys.stderr.flush()

    def _newline(self):
        if self.dirty:
            sys.stderr.write("\n")
            self.dirty = False

    def teardown(self, trainer, model, stage):
        if self.on:
            self._newline()
            sys.stderr.flush()
