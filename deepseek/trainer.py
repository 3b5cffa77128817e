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

    trainer = deepseek.Trainer(devices=2, max_epochs=5, checkpoint_dir="ckpt", seed=0)
    trainer.fit(Net(), train_loader, val_loader, ckpt_path="last")

Where the workers come from:

* under ``deepseek-run`` (or torchrun / mpirun / srun: anything that puts a rank in the
  environment) the Trainer joins the launched job: ``init_process_group()``, wraps the
  model with the strategy (DDP by default when there is more than one worker) and
  gives every train/val DataLoader a :class:`~deepseek.data.distributed.DistributedSampler`;
* started as a plain ``python script.py`` with ``devices=N > 1``, ``fit`` starts
  ``deepseek-run --nproc N`` on the same command line: every worker re-runs the whole
  script (Lightning's "subprocess" launcher). The parent does not train; when the
  workers succeed it loads rank 0's final weights into its own model (so code after
  ``fit`` sees the trained model), and it raises when they fail. The script runs once
  in the workers: later ``fit`` calls in the parent take the workers' result of the
  same call, and ``validate`` in the parent runs in the parent. A script started this
  way should have no side effects before ``fit`` that must not happen N+1 times.

Exact resume: DataLoaders that shuffle plainly or not at all are fed through the
Trainer's own sampler, whose order is a function of ``(seed, epoch)`` only (custom
samplers and plain iterables are used as they are, on one worker only, and resume
exactly only if their order does not depend on global RNG state), and a checkpoint (``last.ckpt`` in
``checkpoint_dir``, written by rank 0 at the end of every epoch and when ``max_steps``
is reached) holds the model, optimizers, schedulers, the loop position (epoch, batches
consumed in it, global step) and every rank's RNG states (deepseek's default generator,
numpy's and Python's global ones). ``fit(..., ckpt_path="last")`` therefore continues
bit for bit where the checkpointed run was, mid-epoch included.

``self.log(name, value)`` (attached to the model unless its class defines ``log``):
in training_step the latest value lands in ``trainer.callback_metrics``; in
validation_step the epoch's mean (weighted by batch size, over all ranks) does. The
mean loss of the last optimizer step is ``callback_metrics['loss']``.

``seed``: the Trainer seeds deepseek, numpy and ``random`` on every rank when it is
constructed, so a model built *after* the Trainer gets the same initial weights on
every rank (DDP broadcasts rank 0's weights anyway); the seed is also the shuffling
seed of the samplers (0 when ``seed`` is None, as in PyTorch's DistributedSampler).
"""
import atexit
import contextlib
import functools
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

__all__ = ["Trainer"]

_PRECISIONS = {"32": "32", "32-true": "32", "16-mixed": "16-mixed", "16": "16-mixed",
               "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed"}
_ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
_CKPT_NAME = "last.ckpt"
_CKPT_FORMAT = "deepseek.trainer/1"
# Set by a Trainer that launches workers itself: where rank 0 leaves each fit's result.
_RESULT_ENV = "DEEPSEEK_TRAINER_RESULT_DIR"
_fit_calls = [0]  # fit() calls in this process (matches a parent's fits to its workers')


class _Loop:
    """Where training stands: what a checkpoint restores."""

    def __init__(self):
        self.global_step = 0        # optimizer steps taken
        self.epoch = 0              # the epoch being run (or next to run)
        self.batch_in_epoch = 0     # batches of ``epoch`` already consumed


class Trainer:
    """Runs ``model.training_step`` over the data with the optimizers the model makes.

    Args:
        accelerator: 'cpu', 'gpu' (alias 'cuda'; needs CuPy and a GPU) or 'auto'.
        devices: workers on this node, an int >= 1 or 'auto' (the launched job's
            local size; else 1, or every GPU for accelerator 'gpu').
        strategy: None/'auto' (DDP when there is more than one worker), 'ddp', or a
            ``deepseek.distributed.DDPStrategy(...)``.
        max_epochs / max_steps: stop after this many epochs / optimizer steps (None or
            -1: no limit; both None: 1000 epochs, as Lightning does).
        accumulate_grad_batches: micro-batches per optimizer step; each loss is
            divided by the number of micro-batches in its window, DDP communication
            is skipped (``no_sync``) on all but the last.
        gradient_clip_val: clip the global gradient norm to this before each step.
        precision: '32'; '16-mixed' and 'bf16-mixed' are reserved for deepseek.amp.
        log_every_n_steps: progress lines (when stderr is not a terminal) every n steps.
        checkpoint_dir: where rank 0 writes ``last.ckpt``.
        seed: seed of deepseek, numpy and ``random`` on every rank (set now) and of the
            samplers' shuffling.
        enable_progress_bar: show progress on rank 0.
    """

    def __init__(self, accelerator="auto", devices="auto", strategy=None, max_epochs=None,
                 max_steps=None, accumulate_grad_batches=1, gradient_clip_val=None,
                 precision="32", log_every_n_steps=50, checkpoint_dir=None, seed=None,
                 enable_progress_bar=True):
        self.precision = _check_precision(precision)
        self.accelerator = _check_accelerator(accelerator)
        self._job = _detect_job()
        self.devices = _check_devices(devices, self.accelerator, self._job)
        self.strategy = _check_strategy(strategy)
        self.max_epochs, self.max_steps = _check_limits(max_epochs, max_steps)
        self.accumulate_grad_batches = _check_int(accumulate_grad_batches,
                                                  "accumulate_grad_batches", 1)
        if gradient_clip_val is not None:
            clip = gradient_clip_val
            if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
                raise ValueError(f"gradient_clip_val must be a positive number or None, got "
                                 f"{gradient_clip_val!r}")
            gradient_clip_val = float(gradient_clip_val)
        self.gradient_clip_val = gradient_clip_val
        self.log_every_n_steps = _check_int(log_every_n_steps, "log_every_n_steps", 1)
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.enable_progress_bar = bool(enable_progress_bar)

        self._loop = _Loop()
        self.callback_metrics = {}
        self._pg = None
        self._model = None
        self._logged = None         # name -> value while a step runs
        if self.seed is not None:
            _seed_everything(self.seed)

    # ---- public state ---------------------------------------------------------------
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
        return self._pg.size if self._pg is not None else self._job.world_size

    @property
    def global_rank(self):
        return self._pg.rank if self._pg is not None else self._job.rank

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
        call = _fit_calls[0]
        _fit_calls[0] += 1
        _check_model(model, need_training=True)
        if train_dataloaders is None:
            raise ValueError("fit() needs train_dataloaders (a DataLoader or an iterable of "
                             "batches)")
        if self._needs_launch():
            return self._fit_through_launcher(model, call)

        self._setup_distributed()
        self._attach(model)
        if self.accelerator != "cpu":
            model.to(self.device)
        ckpt = self._load_checkpoint(ckpt_path)
        self._loop = _Loop()
        self._resumed_sampler_seed = None
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
        # DDP hooks only the parameters; routing training_step through its forward
        # (the wrapper below) also gives it the buffer broadcast it does there.
        step_module = model
        if self._use_ddp():
            step_module = self._wrap(model)
        optimizers, schedulers = _parse_optimizers(model.configure_optimizers())
        if ckpt is not None:
            self._restore(ckpt, optimizers, schedulers)

        train = _Feed(train_dataloaders, self)
        vals = [_Feed(v, self) for v in _as_list(val_dataloaders)]
        progress = _Progress(self)
        self._ckpt_parts = (model, optimizers, schedulers)
        try:
            self._run(model, step_module, optimizers, schedulers, train, vals, progress)
        finally:
            progress.close()
            self._ckpt_parts = None
            self._logged = None
            if step_module is not model:
                _unhook(step_module)
        self._publish_result(model, call)
        return None

    def _run(self, model, step_module, optimizers, schedulers, train, vals, progress):
        loop = self._loop
        k = self.accumulate_grad_batches
        ddp = step_module if step_module is not model else None
        for opt in optimizers:
            opt.zero_grad()
        while not self._done_epochs():
            skip = loop.batch_in_epoch
            n = train.num_batches()
            model.train()
            progress.start_epoch(loop.epoch, n)
            window_loss, window_n = 0.0, 0
            stopped = False
            for batch_idx, batch in train.epoch(loop.epoch, skip):
                # the window of micro-batches this one belongs to (counted from the
                # start of the epoch, so a resumed epoch keeps the same windows)
                w0 = (batch_idx // k) * k
                w_size = k if n is None else min(k, n - w0)
                last_micro = batch_idx - w0 == w_size - 1
                batch = _to_device(batch, self.device)
                self._logged = {}
                sync = contextlib.nullcontext() if (ddp is None or last_micro) else ddp.no_sync()
                with sync:
                    out = step_module(batch, batch_idx) if ddp is not None \
                        else model.training_step(batch, batch_idx)
                    loss = _training_loss(out)
                    (loss / w_size if w_size > 1 else loss).backward()
                value = float(loss.detach().item())
                window_loss += value
                window_n += 1
                self._collect_train_logs()
                loop.batch_in_epoch = batch_idx + 1
                progress.samples(_batch_size(batch))
                if not last_micro:
                    continue
                self._optimizer_step(optimizers, schedulers)
                self.callback_metrics["loss"] = window_loss / window_n
                progress.step(self.callback_metrics["loss"])
                window_loss, window_n = 0.0, 0
                if self._done_steps() and (n is None or batch_idx + 1 < n):
                    stopped = True  # mid-epoch: the checkpoint records the position
                    break
            if stopped:
                self._save_last()
                break
            if skip == 0 and loop.batch_in_epoch == 0:
                raise ValueError(f"train_dataloaders yielded no batch in epoch {loop.epoch} "
                                 "(an empty dataset, or drop_last with fewer samples than "
                                 "batch_size on this worker)")
            # end of the epoch (an epoch cut short by max_steps exactly at its end
            # counts as complete, so its validation and schedulers run too)
            if window_n:
                # an iterable of unknown length ended inside a window: its micro-steps
                # all ran under no_sync, so average the gradients here
                if ddp is not None:
                    _average_grads(_all_params(optimizers), self._pg)
                self._optimizer_step(optimizers, schedulers)
                self.callback_metrics["loss"] = window_loss / window_n
            if vals:
                metrics = self._validate_feeds(model, vals)
                self.callback_metrics.update(metrics)
                progress.message(loop.epoch, metrics)
                model.train()
            loop.epoch += 1
            _step_schedulers(schedulers, "epoch", loop.epoch, self.callback_metrics)
            loop.batch_in_epoch = 0
            self._save_last()
            if self._done_steps():
                break

    def _optimizer_step(self, optimizers, schedulers):
        """Clip, step, zero the gradients, count the step, step per-step schedulers."""
        if self.gradient_clip_val is not None:
            from .nn.utils import clip_grad_norm_
            clip_grad_norm_(_all_params(optimizers), self.gradient_clip_val)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad()
        self._loop.global_step += 1
        _step_schedulers(schedulers, "step", self._loop.global_step, self.callback_metrics)

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
        _check_model(model, need_training=False)
        if not callable(getattr(model, "validation_step", None)):
            raise TypeError(f"{type(model).__name__} has no validation_step(batch, batch_idx)")
        if dataloaders is None:
            raise ValueError("validate() needs dataloaders")
        if not self._needs_launch():
            self._setup_distributed()
        # else: a plain start with devices > 1 validates in this one process (after a
        # launched fit it holds rank 0's trained weights; launching would train again)
        self._attach(model)
        if self.accelerator != "cpu":
            model.to(self.device)
        feeds = [_Feed(d, self) for d in _as_list(dataloaders)]
        metrics = self._validate_feeds(model, feeds)
        self.callback_metrics.update(metrics)
        return metrics

    def _validate_feeds(self, model, feeds):
        from .autograd import no_grad
        if not callable(getattr(model, "validation_step", None)):
            return {}
        was_training = getattr(model, "training", True)
        model.eval()
        sums = {}
        try:
            with no_grad():
                for feed in feeds:
                    for batch_idx, batch in feed.epoch(0, 0):
                        batch = _to_device(batch, self.device)
                        self._logged = {}
                        out = model.validation_step(batch, batch_idx)
                        if not self._logged and out is not None:
                            # nothing logged: the returned loss is the metric
                            loss = out.get("loss") if isinstance(out, dict) else out
                            if loss is not None:
                                self._log("val_loss", loss)
                        bs = _batch_size(batch) or 1
                        for name, val in self._logged.items():
                            s = sums.setdefault(name, [0.0, 0.0])
                            s[0] += val * bs
                            s[1] += bs
        finally:
            self._logged = None
            model.train(was_training)
        return self._reduce_metrics(sums)

    def _reduce_metrics(self, sums):
        names = sorted(sums)
        if self._pg is not None and self._pg.size > 1:
            from .collectives import ReduceOp
            # ranks may have logged different names: agree on the union first
            from . import distributed as dist
            gathered = [None] * self._pg.size
            dist.all_gather_object(gathered, names)
            names = sorted(set(itertools.chain.from_iterable(gathered)))
            arr = np.array([sums.get(n, [0.0, 0.0]) for n in names], dtype=np.float64).reshape(-1)
            if arr.size:
                self._pg.allreduce(arr, ReduceOp.SUM)
            pairs = arr.reshape(-1, 2)
        else:
            pairs = np.array([sums[n] for n in names], dtype=np.float64).reshape(-1, 2)
        return {n: float(s / w) if w else float("nan") for n, (s, w) in zip(names, pairs)}

    # ---- logging from inside the model ----------------------------------------------
    def _log(self, name, value, *args, **kwargs):
        """``self.log(name, value)`` inside training_step/validation_step."""
        if not isinstance(name, str):
            raise TypeError(f"log: the name must be a string, got {name!r}")
        if hasattr(value, "detach"):
            if value.numel() != 1:
                raise ValueError(f"log({name!r}): expected a scalar, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            value = value.detach().item()
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"log({name!r}): expected a number or a scalar tensor, got "
                            f"{type(value).__name__}") from None
        if self._logged is None:
            raise RuntimeError("log() can only be called inside training_step or validation_step "
                               "while the Trainer runs them")
        self._logged[name] = value

    def _log_dict(self, metrics, *args, **kwargs):
        for name, value in metrics.items():
            self._log(name, value, *args, **kwargs)

    def _collect_train_logs(self):
        self.callback_metrics.update(self._logged)
        self._logged = None

    def _attach(self, model):
        """Give the model ``trainer`` and (unless it has its own) ``log``/``log_dict``."""
        object.__setattr__(model, "trainer", self)
        for name, fn in (("log", self._log), ("log_dict", self._log_dict)):
            own = getattr(type(model), name, None)
            if own is None:
                object.__setattr__(model, name, fn)

    # ---- processes and devices ------------------------------------------------------
    def _needs_launch(self):
        return self._job.world_size == 1 and self.devices > 1 and _RESULT_ENV not in os.environ \
            and not self._job.launched

    def _setup_distributed(self):
        """Join the launched job (once); a single process stays without a group unless
        a strategy asks for one (a group of size 1 is a real group)."""
        from . import collectives as C
        if C.is_initialized():
            self._pg = C.get_default_group()
        elif self._job.world_size > 1 or self.strategy is not None:
            from . import distributed as dist
            dist.init_process_group()
            self._pg = C.get_default_group()
        if self._pg is not None and self._pg.size != self._job.world_size and self._job.launched:
            raise RuntimeError(f"the default process group has {self._pg.size} ranks but the "
                               f"launcher started {self._job.world_size}")
        if self.accelerator == "gpu":
            import cupy
            cupy.cuda.Device(self._job.local_rank).use()

    def _use_ddp(self):
        return self._pg is not None and (self._pg.size > 1 or self.strategy is not None)

    def _wrap(self, model):
        from .distributed.strategy import DDPStrategy
        strategy = self.strategy if self.strategy is not None else DDPStrategy()
        return strategy.wrap(_StepModule(model), process_group=self._pg)

    def _fit_through_launcher(self, model, call):
        """A plain ``python script.py`` start with devices > 1: run the script under
        ``deepseek-run --nproc devices``, then take rank 0's result."""
        result_dir = _LaunchState.result_dir
        if result_dir is None:
            rerun = _rerun_command()
            import tempfile
            result_dir = tempfile.mkdtemp(prefix="deepseek-trainer-")
            _LaunchState.result_dir = result_dir
            atexit.register(shutil.rmtree, result_dir, ignore_errors=True)
            env = dict(os.environ)
            env[_RESULT_ENV] = result_dir
            pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
            if self.enable_progress_bar:
                sys.stderr.write(f"deepseek.Trainer: starting {self.devices} workers: "
                                 f"deepseek-run --nproc {self.devices} {' '.join(rerun)}\n")
                sys.stderr.flush()
            _LaunchState.rc = _run_launcher(self.devices, rerun, env)
        if _LaunchState.rc != 0:
            raise RuntimeError(f"Trainer.fit: the {self.devices} workers failed (deepseek-run "
                               f"exited with code {_LaunchState.rc}); their output is above")
        path = os.path.join(result_dir, f"fit{call}.ckpt")
        if not os.path.exists(path):
            raise RuntimeError(f"Trainer.fit: the workers finished but rank 0 left no result for "
                               f"fit call #{call} ({path}); did the script call fit() a different "
                               f"number of times in the workers?")
        from .serialization import load
        result = load(path)
        model.load_state_dict(result["state_dict"])
        self._loop = _Loop()
        self._loop.global_step = int(result["global_step"])
        self._loop.epoch = int(result["epoch"])
        self.callback_metrics = dict(result["callback_metrics"])
        self._attach(model)
        return None

    def _publish_result(self, model, call):
        """In a worker started by a Trainer: rank 0 leaves the fit's result for the parent."""
        result_dir = os.environ.get(_RESULT_ENV)
        if not result_dir or not self.is_global_zero:
            return
        from .serialization import save
        save({"state_dict": model.state_dict(), "global_step": self._loop.global_step,
              "epoch": self._loop.epoch, "callback_metrics": dict(self.callback_metrics)},
             os.path.join(result_dir, f"fit{call}.ckpt"))

    # ---- checkpoints ----------------------------------------------------------------
    def _save_last(self):
        if self.checkpoint_dir is not None:
            self.save_checkpoint(os.path.join(self.checkpoint_dir, _CKPT_NAME))

    def save_checkpoint(self, path):
        """Write the training state to ``path`` (rank 0 writes; every rank must call)."""
        if self._ckpt_parts is None:
            raise RuntimeError("save_checkpoint: only while fit() runs")
        model, optimizers, schedulers = self._ckpt_parts
        rng = _rng_state()
        if self._pg is not None and self._pg.size > 1:
            from . import distributed as dist
            states = [None] * self._pg.size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.is_global_zero:
            from .serialization import save
            d = os.path.dirname(os.path.abspath(path))
            os.makedirs(d, exist_ok=True)
            save({
                "format": _CKPT_FORMAT,
                "state_dict": model.state_dict(),
                "optimizer_states": [o.state_dict() for o in optimizers],
                "lr_schedulers": [s["scheduler"].state_dict() for s in schedulers],
                "loop": {"global_step": self._loop.global_step, "epoch": self._loop.epoch,
                         "batch_in_epoch": self._loop.batch_in_epoch},
                "rng": states,
                "sampler": {"seed": self._sampler_seed(), "world_size": self.world_size},
                "callback_metrics": dict(self.callback_metrics),
            }, path)
        if self._pg is not None and self._pg.size > 1:
            self._pg.barrier()  # nobody reads (or resumes from) a half-written state

    _ckpt_parts = None

    def _load_checkpoint(self, ckpt_path):
        if ckpt_path is None:
            return None
        if ckpt_path == "last":
            if self.checkpoint_dir is None:
                raise ValueError("fit(ckpt_path='last') needs Trainer(checkpoint_dir=...)")
            path = os.path.join(self.checkpoint_dir, _CKPT_NAME)
            if not os.path.exists(path):
                # first start of a script that always resumes (elastic restarts): fresh
                if self.is_global_zero and self.enable_progress_bar:
                    sys.stderr.write(f"deepseek.Trainer: no checkpoint at {path}; starting "
                                     "from scratch\n")
                return None
        else:
            path = os.fspath(ckpt_path)
            if not os.path.exists(path):
                raise FileNotFoundError(f"fit(ckpt_path={ckpt_path!r}): no such checkpoint")
        from .serialization import load
        ckpt = load(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{path} is not a deepseek.Trainer checkpoint (format "
                             f"{ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
        return ckpt

    def _restore(self, ckpt, optimizers, schedulers):
        saved = ckpt["optimizer_states"]
        if len(saved) != len(optimizers):
            raise ValueError(f"the checkpoint has {len(saved)} optimizer states but "
                             f"configure_optimizers() made {len(optimizers)}")
        for opt, st in zip(optimizers, saved):
            opt.load_state_dict(st)
        saved = ckpt["lr_schedulers"]
        if len(saved) != len(schedulers):
            raise ValueError(f"the checkpoint has {len(saved)} lr scheduler states but "
                             f"configure_optimizers() made {len(schedulers)}")
        for s, st in zip(schedulers, saved):
            s["scheduler"].load_state_dict(st)
        loop = ckpt["loop"]
        self._loop.global_step = int(loop["global_step"])
        self._loop.epoch = int(loop["epoch"])
        self._loop.batch_in_epoch = int(loop["batch_in_epoch"])
        states = ckpt["rng"]
        # the same world size: each rank continues its own streams; otherwise (a
        # restart on another number of workers) rank r takes rank r % saved's
        _set_rng_state(states[self.global_rank % len(states)])
        # the epoch's order must be the checkpointed run's even if this Trainer's seed differs
        self._resumed_sampler_seed = int(ckpt["sampler"]["seed"])
        saved_world = ckpt["sampler"]["world_size"]
        if saved_world != self.world_size and self._loop.batch_in_epoch and self.is_global_zero:
            sys.stderr.write(f"deepseek.Trainer: the checkpoint was written by {saved_world} "
                             f"workers, resuming on {self.world_size}: the rest of epoch "
                             f"{self._loop.epoch} is split differently\n")
        self.callback_metrics = dict(ckpt.get("callback_metrics", {}))

    _resumed_sampler_seed = None

    def _sampler_seed(self):
        if self._resumed_sampler_seed is not None:
            return self._resumed_sampler_seed
        return self.seed if self.seed is not None else 0


def _run_launcher(nproc, command, env):
    """``deepseek-run --nproc N command`` as a child process; its exit code.

    A subprocess, not deepseek.launcher.main() in this process: the agent makes itself
    a child subreaper and kills every child of its process when it is done, which must
    not hit processes the user's script started. It dies with us (SIGTERM on our death,
    which it forwards to the workers), and after a Ctrl-C, which reached it too (same
    process group), it is given time to stop its workers before we go on.
    """
    preexec = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1

            def preexec():
                libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        except OSError:
            preexec = None
    proc = subprocess.Popen([sys.executable, "-m", "deepseek.launcher", "--nproc", str(nproc),
                             *command], env=env, preexec_fn=preexec)
    try:
        return proc.wait()
    except BaseException:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise


class _LaunchState:
    """What a parent that launched workers knows (one launch per process)."""
    result_dir = None
    rc = None


# ---- the model side -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _step_module_class():
    from . import nn

    class StepModule(nn.Module):
        """Makes ``training_step`` the forward of a module DDP can wrap."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, batch, batch_idx):
            return self.model.training_step(batch, batch_idx)

    return StepModule


def _StepModule(model):
    return _step_module_class()(model)


def _unhook(ddp):
    """Detach a finished fit's DDP from the model's parameters, so that a later fit
    (which wraps again) does not also run this one's gradient hooks."""
    ddp.remove_hooks()


def _check_model(model, need_training):
    from . import nn
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be a deepseek.nn.Module, got {type(model).__name__}")
    if need_training:
        name = type(model).__name__
        if not callable(getattr(model, "training_step", None)):
            raise TypeError(f"{name} has no training_step(batch, batch_idx): define it to return "
                            "the loss (a scalar tensor) for one batch")
        if not callable(getattr(model, "configure_optimizers", None)):
            raise TypeError(f"{name} has no configure_optimizers(): define it to return an "
                            "optimizer, ([optimizers], [schedulers]) or {'optimizer': ..., "
                            "'lr_scheduler': ...}")


def _training_loss(out):
    from ._tensor import Tensor
    loss = out
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"training_step returned a dict without a 'loss' key "
                             f"(keys: {sorted(out)})")
        loss = out["loss"]
    if not isinstance(loss, Tensor):
        raise TypeError(f"training_step must return the loss as a scalar deepseek.Tensor (or "
                        f"a dict with 'loss'), got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"training_step must return a scalar loss, got a tensor of shape "
                         f"{tuple(loss.shape)}: reduce it (e.g. loss.mean())")
    if not loss.requires_grad:
        raise RuntimeError("the loss returned by training_step does not require grad: it was "
                           "computed under no_grad, detached, or from no trainable parameter")
    return loss.reshape(()) if loss.ndim else loss


def _parse_optimizers(conf):
    """configure_optimizers() in any of Lightning's shapes -> (optimizers, schedulers),
    schedulers as dicts {'scheduler', 'interval', 'frequency', 'monitor'}."""
    def is_opt(o):
        return callable(getattr(o, "step", None)) and callable(getattr(o, "zero_grad", None)) \
            and hasattr(o, "param_groups")

    def sched(s):
        d = dict(s) if isinstance(s, dict) else {"scheduler": s}
        if "scheduler" not in d:
            raise ValueError("an lr_scheduler dict needs a 'scheduler' key")
        d.setdefault("interval", "epoch")
        d.setdefault("frequency", 1)
        d.setdefault("monitor", None)
        if d["interval"] not in ("epoch", "step"):
            raise ValueError(f"lr_scheduler interval must be 'epoch' or 'step', got "
                             f"{d['interval']!r}")
        if not callable(getattr(d["scheduler"], "step", None)):
            raise TypeError(f"lr_scheduler {d['scheduler']!r} has no step()")
        return d

    def bad():
        return TypeError(
            "configure_optimizers() must return an optimizer, a list of optimizers, "
            "([optimizers], [lr_schedulers]), or a dict {'optimizer': ..., 'lr_scheduler': ...} "
            f"(or a list of such dicts); got {type(conf).__name__}")

    opts, scheds = [], []
    if conf is None:
        raise bad()
    if is_opt(conf):
        opts = [conf]
    elif isinstance(conf, dict):
        if "optimizer" not in conf:
            raise bad()
        opts = [conf["optimizer"]]
        if conf.get("lr_scheduler") is not None:
            scheds = [conf["lr_scheduler"]]
    elif isinstance(conf, (list, tuple)):
        pair = len(conf) == 2 and all(isinstance(c, (list, tuple)) for c in conf)
        if pair:
            opts, scheds = list(conf[0]), list(conf[1])
        elif all(isinstance(c, dict) for c in conf) and conf:
            for c in conf:
                if "optimizer" not in c:
                    raise bad()
                opts.append(c["optimizer"])
                if c.get("lr_scheduler") is not None:
                    scheds.append(c["lr_scheduler"])
        else:
            opts = list(conf)
    else:
        raise bad()
    if not opts or not all(is_opt(o) for o in opts):
        raise bad()
    return opts, [sched(s) for s in scheds]


def _step_schedulers(schedulers, interval, count, metrics):
    """Step the schedulers of ``interval`` whose frequency divides ``count`` (steps or
    epochs done: derived from the loop, so a resumed run keeps the same rhythm)."""
    for s in schedulers:
        if s["interval"] != interval or count % s["frequency"]:
            continue
        if s["monitor"] is not None:
            if s["monitor"] not in metrics:
                raise KeyError(f"lr_scheduler monitors {s['monitor']!r}, which nobody logged "
                               f"(logged: {sorted(metrics)})")
            s["scheduler"].step(metrics[s["monitor"]])
        else:
            s["scheduler"].step()


def _average_grads(params, pg):
    from .collectives import ReduceOp
    for p in params:
        if p.grad is not None:
            arr = p.grad.array
            if not arr.flags.c_contiguous:
                p.grad = p.grad.contiguous() if hasattr(p.grad, "contiguous") else p.grad.clone()
                arr = p.grad.array
            pg.allreduce(arr, ReduceOp.AVG)
            p.grad._bump_version()


def _all_params(optimizers):
    seen, out = set(), []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


# ---- data ---------------------------------------------------------------------------

class _Feed:
    """One train or val source.

    A DataLoader over a sized dataset whose order is sequential or a plain shuffle gets
    the Trainer's DistributedSampler (this rank's slice; shuffled by (seed, epoch) when
    the loader shuffled); a DistributedSampler of the user's own is kept. Either way
    each epoch's indices are known up front, so the loader is rebuilt per epoch (same
    batch size, drop_last, collate_fn, workers) over exactly the indices still to come.
    Anything else (custom samplers, iterable datasets, plain iterables of batches) is
    iterated as it is, skipping consumed batches by reading them; in a job of several
    workers it must then shard the data itself, which custom samplers cannot: refused.
    """

    def __init__(self, loader, trainer):
        from .data.distributed import DistributedSampler
        self.loader = loader
        self.info = _loader_info(loader)
        self.sampler = None
        if self.info is None:
            return
        kind = self.info["sampler"]
        if isinstance(kind, DistributedSampler):
            self.sampler = kind
        elif kind in ("sequential", "random"):
            self.sampler = DistributedSampler(
                self.info["dataset"], num_replicas=trainer.world_size, rank=trainer.global_rank,
                shuffle=kind == "random", seed=trainer._sampler_seed(), drop_last=False)
        elif trainer.world_size > 1:
            raise ValueError(
                f"the DataLoader's sampler ({type(kind).__name__}) cannot be split between "
                f"{trainer.world_size} workers by the Trainer: use shuffle=True/False (the "
                "Trainer inserts a DistributedSampler), or a deepseek.data.DistributedSampler")
        else:
            self.info = None  # a custom order on one worker: iterate as it is

    def num_batches(self):
        if self.info is not None:
            n, bs = len(self.sampler), self.info["batch_size"]
            return n // bs if self.info["drop_last"] else -(-n // bs)
        try:
            return len(self.loader)
        except TypeError:
            return None

    def epoch(self, epoch, skip):
        """(batch_idx, batch) of ``epoch`` from batch ``skip`` on."""
        if self.info is None:
            return zip(itertools.count(skip), itertools.islice(iter(self.loader), skip, None))
        self.sampler.set_epoch(epoch)
        bs = self.info["batch_size"]
        indices = list(self.sampler)[skip * bs:]
        return zip(itertools.count(skip), iter(_rebuild_loader(self.loader, self.info, indices)))


class _FixedSampler:
    """The indices of one (rest of an) epoch, as a sampler."""

    def __init__(self, indices):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _loader_info(loader):
    """What is needed to rebuild a deepseek DataLoader around other indices; None when
    it cannot be (not a DataLoader, own batch_sampler, no batching, unsized dataset).
    ``sampler``: 'sequential', 'random' (a plain shuffle), or the sampler object."""
    from .data import DataLoader, RandomSampler, SequentialSampler
    if not isinstance(loader, DataLoader):
        return None
    dataset = getattr(loader, "dataset", None)
    bs = getattr(loader, "batch_size", None)
    if dataset is None or not isinstance(bs, int) or getattr(loader, "batch_sampler_given", False):
        return None
    try:
        len(dataset)
    except TypeError:
        return None
    sampler = getattr(loader, "sampler", None)
    if type(sampler) is SequentialSampler:
        kind = "sequential"
    elif type(sampler) is RandomSampler and not sampler.replacement \
            and sampler.num_samples == len(dataset):
        kind = "random"
    else:
        kind = sampler
    return {"dataset": dataset, "batch_size": bs, "drop_last": bool(loader.drop_last),
            "collate_fn": loader.collate_fn, "sampler": kind}


def _rebuild_loader(loader, info, indices):
    kwargs = {"batch_size": info["batch_size"], "drop_last": info["drop_last"],
              "sampler": _FixedSampler(indices), "collate_fn": info["collate_fn"]}
    workers = getattr(loader, "num_workers", 0)
    if workers:
        kwargs.update(num_workers=workers, prefetch_factor=loader.prefetch_factor,
                      worker_init_fn=loader.worker_init_fn)
    return type(loader)(info["dataset"], **kwargs)


def _as_list(loaders):
    """One loader, or a list of DataLoaders (a list of batches is one loader)."""
    from .data import DataLoader
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)) and loaders \
            and all(isinstance(v, DataLoader) for v in loaders):
        return list(loaders)
    return [loaders]


def _to_device(batch, device):
    from ._tensor import Tensor
    if device == "cpu":
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_size(batch):
    """Samples in a batch: the length of its first array-like leaf."""
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for b in batch:
            n = _batch_size(b)
            if n:
                return n
        return 0
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 0


# ---- progress -----------------------------------------------------------------------

class _Progress:
    """One line on rank 0: redrawn with \\r on a terminal, else a plain line every
    ``log_every_n_steps`` optimizer steps. Samples/s counts every rank's samples."""

    def __init__(self, trainer):
        self.t = trainer
        self.on = trainer.enable_progress_bar and trainer.is_global_zero
        self.tty = self.on and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.n = None
        self.epoch = 0
        self.count = 0
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.rate = 0.0
        self.window = (time.perf_counter(), 0)
        self.dirty = False

    def start_epoch(self, epoch, n):
        self.epoch, self.n = epoch, n

    def samples(self, n):
        self.count += n * self.t.world_size

    def step(self, loss):
        if not self.on:
            return
        now = time.perf_counter()
        t0, c0 = self.window
        if now - t0 > 0.5 or not self.rate:
            self.rate = (self.count - c0) / max(now - t0, 1e-9)
            self.window = (now, self.count)
        step = self.t.global_step
        if self.tty:
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                done = self.t._loop.batch_in_epoch
                total = "?" if self.n is None else self.n
                width = 20
                frac = min(done / self.n, 1.0) if self.n else 0.0
                bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
                sys.stderr.write(f"\repoch {self.epoch} [{bar}] {done}/{total} step {step} "
                                 f"loss {loss:.4f} {self.rate:,.0f} samples/s   ")
                sys.stderr.flush()
                self.dirty = True
        elif step % self.t.log_every_n_steps == 0:
            sys.stderr.write(f"epoch {self.epoch} step {step}: loss {loss:.4f}, "
                             f"{self.rate:,.0f} samples/s\n")
            sys.stderr.flush()

    def message(self, epoch, metrics):
        if not self.on or not metrics:
            return
        self._newline()
        text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        sys.stderr.write(f"epoch {epoch}: {text}\n")
        sys.stderr.flush()

    def _newline(self):
        if self.dirty:
            sys.stderr.write("\n")
            self.dirty = False

    def close(self):
        if self.on:
            self._newline()
            sys.stderr.flush()


# ---- RNG ----------------------------------------------------------------------------

def _seed_everything(seed):
    from . import random as ds_random
    ds_random.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


def _rng_state():
    """Every global RNG a training step may draw from, as JSON-able values."""
    from . import random as ds_random
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"deepseek": ds_random.get_rng_state(),
            "numpy": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": [list(random.getstate()[1]), random.getstate()[0]]}


def _set_rng_state(state):
    from . import random as ds_random
    ds_random.set_rng_state(state["deepseek"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))


# ---- argument checks ----------------------------------------------------------------

class _Job:
    """This process's place in a launched job (world size 1 when not launched)."""

    def __init__(self, rank=0, world_size=1, local_rank=0, local_world_size=1, launched=False):
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.launched = launched


def _detect_job():
    from .collectives import env
    info = env.detect()
    return _Job(info.rank, info.world_size, info.local_rank, info.local_world_size,
                launched=info.launcher != "single")


def _check_precision(precision):
    key = str(precision)
    if key not in _PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use one of "
                         f"'32', '16-mixed', 'bf16-mixed'")
    value = _PRECISIONS[key]
    if value != "32":
        raise NotImplementedError(f"precision={value!r} not yet: mixed precision lands with "
                                  f"deepseek.amp; use precision='32' for now")
    return value


def _check_accelerator(accelerator):
    from .backend import cupy_available
    if accelerator not in _ACCELERATORS:
        raise ValueError(f"accelerator={accelerator!r} is not supported; use one of 'cpu', "
                         f"'gpu' (alias 'cuda') or 'auto'")
    if accelerator == "auto":
        return "gpu" if cupy_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        if not cupy_available():
            raise RuntimeError("accelerator='gpu' needs CuPy and a CUDA GPU, and none is usable "
                               "here (pip install 'deepseek[cuda]' on a GPU machine); use "
                               "accelerator='cpu' or 'auto'")
        return "gpu"
    return "cpu"


def _check_devices(devices, accelerator, job):
    if devices == "auto":
        if job.launched:
            return job.local_world_size
        if accelerator == "gpu":
            import cupy
            return int(cupy.cuda.runtime.getDeviceCount())
        return 1
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)):
        raise TypeError(f"devices must be an int >= 1 or 'auto', got {devices!r}")
    devices = int(devices)
    if devices < 1:
        raise ValueError(f"devices must be >= 1 (or 'auto'), got {devices}")
    if accelerator == "gpu":
        import cupy
        n = int(cupy.cuda.runtime.getDeviceCount())
        if devices > n:
            raise ValueError(f"devices={devices} but only {n} GPU(s) are visible")
    if job.launched and devices != job.local_world_size:
        raise ValueError(f"Trainer(devices={devices}) but the launcher started "
                         f"{job.local_world_size} worker(s) on this node; pass "
                         f"devices={job.local_world_size} or devices='auto'")
    return devices


def _check_strategy(strategy):
    from .distributed.strategy import DDPStrategy
    if isinstance(strategy, DDPStrategy):
        return strategy
    if strategy in (None, "auto"):
        return None
    if strategy == "ddp":
        return DDPStrategy()
    raise ValueError(f"strategy={strategy!r} is not supported; use None/'auto', 'ddp' or a "
                     f"deepseek.distributed.DDPStrategy(...)")


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_limits(max_epochs, max_steps):
    def norm(v, name):
        if v is None or v == -1:
            return None
        return _check_int(v, name, 0)
    epochs, steps = norm(max_epochs, "max_epochs"), norm(max_steps, "max_steps")
    if max_epochs is None and steps is None:
        epochs = 1000  # Lightning's default; max_epochs=-1 trains until stopped
    return epochs, steps


def _rerun_command():
    """How this program was started, to start it again in every worker."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = sys.argv[0] if sys.argv else ""
    name = getattr(spec, "name", None) or ""
    if name.split(".")[0] in ("pytest", "_pytest") or os.path.basename(script).startswith("pytest"):
        raise RuntimeError(
            "Trainer(devices>1) under pytest would re-run the whole test session in every "
            "worker; start the training script in a subprocess (python script.py or "
            "deepseek-run --nproc N script.py) instead")
    if name and name != "__main__":
        name = name[:-len(".__main__")] if name.endswith(".__main__") else name
        return ["-m", name, *sys.argv[1:]]
    if not script or script == "-c" or not os.path.isfile(script):
        raise RuntimeError(
            "Trainer(devices>1) started from an interactive session or `python -c` cannot "
            "re-run the program in its workers; put the code in a script and run it as "
            "`python script.py` or `deepseek-run --nproc N script.py`")
    return [script, *sys.argv[1:]]
