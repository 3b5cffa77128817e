"""deepseek.Trainer: the training loop users know from PyTorch Lightning.

    class Net(deepseek.nn.Module):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss
        def validation_step(self, batch, batch_idx):       # optional
            x, y = batch
            self.log("val_acc", (self(x).argmax(-1) == y).float().mean())
        def configure_optimizers(self):
            return deepseek.optim.AdamW(self.parameters(), lr=1e-3)

    trainer = deepseek.Trainer(devices=2, max_epochs=5, checkpoint_dir="ckpt", seed=0,
                               callbacks=[EarlyStopping("val_acc", mode="max")])
    trainer.fit(Net(), train_loader, val_loader, ckpt_path="last")

Where the workers come from:

* under ``deepseek-run`` (or torchrun / mpirun / srun: anything that puts a rank in the
  environment) the Trainer joins the launched job through its strategy (DDP by
  default when there is more than one worker) and gives every train/val DataLoader a
  :class:`~deepseek.data.distributed.DistributedSampler`;
* started as a plain ``python script.py`` with ``devices=N > 1``, ``fit`` starts
  ``deepseek-run --nproc N`` on the same command line (see :mod:`.launch`): every
  worker re-runs the whole script; the parent does not train, and when the workers
  succeed it loads rank 0's final weights into its own model. ``validate`` in the
  parent runs in the parent. A script started this way should have no side effects
  before ``fit`` that must not happen N+1 times.

Exact resume: DataLoaders that shuffle plainly or not at all are fed through the
Trainer's own sampler, whose order is a function of ``(seed, epoch)`` only (custom
samplers and plain iterables are used as they are, on one worker only, and resume
exactly only if their order does not depend on global RNG state); ``last.ckpt`` in
``checkpoint_dir`` is written by rank 0 at the end of every epoch and when training
stops mid-epoch (see :mod:`.state` for what it holds). ``fit(..., ckpt_path="last")``
therefore continues bit for bit where the checkpointed run was, mid-epoch included.

``self.log(name, value)`` (attached to the model unless its class defines ``log``):
in training_step the latest value lands in ``trainer.callback_metrics``; in
validation_step the epoch's mean (weighted by batch size, over all ranks) does. The
mean loss of the last optimizer step is ``callback_metrics['loss']``.

``seed``: the Trainer seeds deepseek, numpy and ``random`` on every rank when it is
constructed, so a model built *after* the Trainer gets the same initial weights on
every rank (DDP broadcasts rank 0's weights anyway); the seed is also the shuffling
seed of the samplers (0 when ``seed`` is None, as in PyTorch's DistributedSampler).
"""
import os

from . import config, launch
from .data import Feed, as_list
from .hooks import Hooks
from .loops import FitLoop, run_validation
from .module import Logs, attach, check_model
from .optimizers import parse_optimizers
from .state import (LAST, LoopState, dump_checkpoint, find_checkpoint, load_checkpoint,
                    restore_training_state, seed_everything)

__all__ = ["Trainer"]


class TrainerState:
    """What the Trainer is doing: ``fn`` is 'fit', 'validate' or None (Lightning's)."""

    def __init__(self):
        self.fn = None

    def __repr__(self):
        return f"TrainerState(fn={self.fn!r})"


class Trainer:
    """Runs ``model.training_step`` over the data with the optimizers the model makes.

    Args:
        accelerator: 'cpu', 'gpu' (alias 'cuda'; needs CuPy and a GPU) or 'auto'.
        devices: workers on this node, an int >= 1 or 'auto' (the launched job's
            local size; else 1, or every GPU for accelerator 'gpu').
        strategy: None/'auto' (DDP when there is more than one worker), 'ddp',
            'single_device', or a ``deepseek.distributed.Strategy`` such as
            ``DDPStrategy(compression='fp16')``.
        max_epochs / max_steps: stop after this many epochs / optimizer steps (None or
            -1: no limit; both None: 1000 epochs, as Lightning does).
        accumulate_grad_batches: micro-batches per optimizer step; each loss is
            divided by the number of micro-batches in its window, gradient
            synchronisation is skipped on all but the last.
        gradient_clip_val: clip the global gradient norm to this before each step.
        precision: '32-true' (alias '32'), 'bf16-mixed' (bf16 autocast) or '16-mixed'
            (fp16 autocast and a GradScaler); parameters stay float32.
        log_every_n_steps: progress lines (when stderr is not a terminal) every n steps.
        checkpoint_dir: where rank 0 writes ``last.ckpt`` (and ModelCheckpoint's
            default folder).
        seed: seed of deepseek, numpy and ``random`` on every rank (set now) and of the
            samplers' shuffling.
        enable_progress_bar: show progress on rank 0 (a ProgressBar callback).
        callbacks: a :class:`~deepseek.trainer.Callback` or a list of them.
    """

    def __init__(self, accelerator="auto", devices="auto", strategy=None, max_epochs=None,
                 max_steps=None, accumulate_grad_batches=1, gradient_clip_val=None,
                 precision="32", log_every_n_steps=50, checkpoint_dir=None, seed=None,
                 enable_progress_bar=True, callbacks=None):
        self.precision = config.check_precision(precision)
        self.accelerator = config.check_accelerator(accelerator)
        from .precision import Precision
        self.precision_plugin = Precision(self.precision, self.accelerator)
        self._job = config.detect_job()
        self.devices = config.check_devices(devices, self.accelerator, self._job)
        self._strategy = config.check_strategy(strategy)
        self.max_epochs, self.max_steps = config.check_limits(max_epochs, max_steps)
        self.accumulate_grad_batches = config.check_int(accumulate_grad_batches,
                                                        "accumulate_grad_batches", 1)
        self.gradient_clip_val = config.check_clip(gradient_clip_val)
        self.log_every_n_steps = config.check_int(log_every_n_steps, "log_every_n_steps", 1)
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.seed = config.check_seed(seed)
        self.enable_progress_bar = bool(enable_progress_bar)
        self.callbacks = config.check_callbacks(callbacks, self.enable_progress_bar)

        self.state = TrainerState()
        self.callback_metrics = {}
        self.validation_metrics = {}     # the metrics of the latest validation
        self.should_stop = False         # set by a callback: fit ends at the next step
        self.model = None                # the user's model of the latest fit/validate
        self.optimizers = []
        self.lr_scheduler_configs = []   # {scheduler, interval, frequency, monitor}
        self.num_training_batches = None
        self._loop = LoopState()
        self._logs = Logs()
        self._hooks = Hooks(self)
        self._active = None              # the strategy of the latest fit/validate
        self._resumed_sampler_seed = None
        self._pending_rng = None
        if self.seed is not None:
            seed_everything(self.seed)

    # ---- public state ---------------------------------------------------------------
    @property
    def strategy(self):
        """The strategy fit runs through (the 'auto' choice is made on first use)."""
        if self._active is not None:
            return self._active
        if self._strategy is None:
            self._strategy = config.choose_strategy(self._job)
        return self._strategy

    @property
    def global_step(self):
        """Optimizer steps taken so far."""
        return self._loop.global_step

    @property
    def current_epoch(self):
        """The epoch being run (after fit: the number of completed epochs)."""
        return self._loop.epoch

    @property
    def world_size(self):
        return self._active.world_size if self._active is not None else self._job.world_size

    @property
    def global_rank(self):
        return self._active.global_rank if self._active is not None else self._job.rank

    @property
    def local_rank(self):
        return self._job.local_rank

    @property
    def is_global_zero(self):
        return self.global_rank == 0

    @property
    def device(self):
        """Where the model and batches live ('cpu' or 'cuda:LOCAL_RANK')."""
        return "cpu" if self.accelerator == "cpu" else f"cuda:{self._job.local_rank}"

    # ---- fit ------------------------------------------------------------------------
    def fit(self, model, train_dataloaders, val_dataloaders=None, ckpt_path=None):
        """Train ``model`` on ``train_dataloaders`` (validating on ``val_dataloaders``
        at the end of every epoch), resuming from ``ckpt_path`` ('last' or a path)."""
        call = launch.next_fit_call()
        check_model(model, need_training=True)
        if train_dataloaders is None:
            raise ValueError("fit() needs train_dataloaders (a DataLoader or an iterable of "
                             "batches)")
        if launch.needs_launch(self):
            return launch.fit_through_launcher(self, model, call)

        strategy = self.strategy
        try:
            self._start(model, strategy, "fit")
            self._hooks.callbacks("setup", "fit")
            path = find_checkpoint(self, ckpt_path)
            ckpt = load_checkpoint(self, path) if path is not None else None
            self._loop = LoopState()
            self._resumed_sampler_seed = self._pending_rng = None
            self.should_stop = False
            if ckpt is not None:
                # before setup: a sharding strategy shards what it was given
                strategy.load_model_state_dict(ckpt["state_dict"])
            strategy.setup(self)
            optimizers, self.lr_scheduler_configs = parse_optimizers(
                model.configure_optimizers())
            self.optimizers = strategy.setup_optimizers(optimizers)
            if ckpt is not None:
                restore_training_state(self, ckpt)
            seed = self._sampler_seed()
            train = Feed(train_dataloaders, strategy, seed)
            if ckpt is not None:   # on another world size: the same place, split anew
                train.resume(self._loop.epoch, self._loop.batch_in_epoch,
                             ckpt["sampler"]["world_size"])
            vals = [Feed(v, strategy, seed) for v in as_list(val_dataloaders)]
            self._hooks("on_fit_start")
            FitLoop(self, train, vals).run()
            self._hooks("on_fit_end")
        except BaseException as e:
            self._hooks.callbacks("on_exception", e)
            raise
        finally:
            self._finish(strategy, "fit")
        launch.publish_result(self, model, call)
        return None

    def _start(self, model, strategy, fn):
        self.state.fn = fn
        self._active = strategy
        strategy.setup_environment(self)
        self.model = model
        attach(model, self)
        strategy.connect(model)
        strategy.model_to_device()

    def _finish(self, strategy, stage):
        try:
            strategy.teardown()
        finally:
            self._logs.current = None
            self._hooks.callbacks("teardown", stage)
            self.state.fn = None

    def _done_steps(self):
        return self.max_steps is not None and self._loop.global_step >= self.max_steps

    def _done_epochs(self):
        if self._done_steps():
            return True
        return self.max_epochs is not None and self._loop.epoch >= self.max_epochs

    # ---- validate -------------------------------------------------------------------
    def validate(self, model, dataloaders):
        """Run ``model.validation_step`` over ``dataloaders``; returns the metrics it
        logged (averaged over batches, weighted by batch size, and over ranks)."""
        check_model(model, need_training=False)
        if not callable(getattr(model, "validation_step", None)):
            raise TypeError(f"{type(model).__name__} has no validation_step(batch, batch_idx)")
        if dataloaders is None:
            raise ValueError("validate() needs dataloaders")
        strategy = self.strategy
        if launch.needs_launch(self):
            # a plain start with devices > 1 validates in this one process (after a
            # launched fit it holds rank 0's trained weights; launching would train again)
            from ..distributed.strategy import SingleDeviceStrategy
            strategy = SingleDeviceStrategy()
        try:
            self._start(model, strategy, "validate")
            self._hooks.callbacks("setup", "validate")
            feeds = [Feed(d, strategy, self._sampler_seed()) for d in as_list(dataloaders)]
            return dict(run_validation(self, feeds))
        except BaseException as e:
            self._hooks.callbacks("on_exception", e)
            raise
        finally:
            self._finish(strategy, "validate")

    # ---- checkpoints ----------------------------------------------------------------
    def _save_last(self):
        if self.checkpoint_dir is not None:
            self.save_checkpoint(os.path.join(self.checkpoint_dir, LAST))

    def save_checkpoint(self, path):
        """Write the training state to ``path`` (rank 0 writes; every rank must call)."""
        self.strategy.save_checkpoint(self._dump_checkpoint(), os.fspath(path))

    def _dump_checkpoint(self):
        if self.state.fn != "fit":
            raise RuntimeError("save_checkpoint: only while fit() runs")
        return dump_checkpoint(self)

    def _sampler_seed(self):
        if self._resumed_sampler_seed is not None:
            return self._resumed_sampler_seed
        return self.seed if self.seed is not None else 0
