"""Strategies: how the Trainer spreads a model over workers (Lightning's Strategy shape).

The Trainer's loops never touch a process group, a DDP wrapper or a device directly:
every such step goes through the strategy it was given. That is the seam ZeRO,
pipeline and elastic strategies plug into without a change to the loop.

The contract (what the loop calls, in the order it calls it, in ``fit``)::

    setup_environment(trainer)      join/create the process group, select the device
    connect(model)                  remember the user's (unwrapped) model: ``module``
    model_to_device()               move its parameters and buffers to ``root_device``
    load_model_state_dict(state)    resuming only: the full state dict of a checkpoint,
                                    loaded into the unwrapped model *before* setup
    setup(trainer)                  wrap the model (DDP, sharding...): ``model`` is then
                                    what runs the training step
    setup_optimizers(optimizers)    -> the optimizers the loop steps, given those the
                                    model's configure_optimizers() made (a ZeRO
                                    strategy shards their state here, keeping their
                                    param_groups, so lr schedulers keep working)
    load_optimizer_state(opt, st)   resuming only, once per optimizer
    per micro-batch:
        batch_to_device(batch)
        block_backward_sync()       context: gradients of this micro-batch are only
                                    accumulated, not synchronised (not the window's last)
        training_step(batch, i)     -> what the model's training_step returns, on every
                                    rank (a pipeline strategy runs its schedule here and
                                    returns the micro-batch loss on every stage)
        backward(loss)              loss already divided by the window's size
    per optimizer step:
        sync_gradients(optimizers)  only after a window that was cut short while its
                                    synchronisation was blocked (a data source of
                                    unknown length ended inside it)
        clip_gradients(optimizers, max_norm)    the *global* norm (over all shards)
        optimizer_step(opt); zero_grad(opt)     each optimizer
    validation_step(batch, i)       -> what the model's validation_step returns
    reduce(array, op) / all_gather_object(obj) / broadcast(obj, src) / barrier()
    reduce_boolean_decision(flag, all)
                                    metrics, RNG states and callback decisions across
                                    ranks; every rank calls them, in the same order
    model_state_dict()              the *full* model state (what a checkpoint holds;
                                    a sharded strategy gathers it; needed on rank 0)
    optimizer_state(opt)            what a checkpoint holds for ``opt``
    save_checkpoint(ckpt, path)     every rank calls; the strategy decides who writes
                                    (default: rank 0, atomically, then a barrier)
    load_checkpoint(path) / remove_checkpoint(path)
    teardown()                      undo setup (detach hooks); the strategy may be
                                    set up again by a later fit

``validate`` calls setup_environment, connect, model_to_device, then only
validation_step (with batch_to_device and the communication methods) and teardown.

Plus the properties ``world_size``, ``global_rank``, ``local_rank``,
``is_global_zero``, ``root_device`` and ``distributed_sampler_kwargs`` (how the data
is split: a pipeline or tensor-parallel strategy splits by its data-parallel rank,
not by the global one).
"""
import builtins
import contextlib
import os
from dataclasses import dataclass

__all__ = ["Strategy", "SingleDeviceStrategy", "DDPStrategy", "ZeROStrategy"]

_OPS = ("sum", "mean", "max", "min")


class Strategy:
    """The base of every strategy: one process, no communication.

    Subclasses override what differs; every default here is the single-process
    behaviour, so a strategy that shards only optimizer state (ZeRO-1) overrides
    ``setup_optimizers``, ``optimizer_step``, ``clip_gradients`` and ``optimizer_state``
    and inherits the rest.
    """

    def __init__(self):
        self.trainer = None
        self.module = None          # the user's model
        self.model = None           # what runs the training step (module, or a wrapper)
        self.process_group = None
        self._device = "cpu"

    # ---- where we run -----------------------------------------------------------------
    def setup_environment(self, trainer):
        """Join (or create) the processes this strategy runs on and select the device.
        Called at the start of every fit/validate; must be idempotent."""
        self.trainer = trainer
        self._device = trainer.device
        if trainer.accelerator == "gpu":
            from ..backend import set_device
            set_device(trainer.local_rank)

    @property
    def root_device(self):
        """Where the model and the batches live ('cpu' or 'cuda:N')."""
        return self._device

    @property
    def world_size(self):
        return self.process_group.size if self.process_group is not None else 1

    @property
    def global_rank(self):
        return self.process_group.rank if self.process_group is not None else 0

    @property
    def local_rank(self):
        return self.trainer.local_rank if self.trainer is not None else 0

    @property
    def is_global_zero(self):
        return self.global_rank == 0

    @property
    def distributed_sampler_kwargs(self):
        """How the Trainer's DistributedSampler splits the data: this worker's slice."""
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # ---- the model ------------------------------------------------------------------
    def connect(self, model):
        """Take the user's model (unwrapped); ``setup`` may wrap it later."""
        self.module = model
        self.model = model

    def model_to_device(self):
        if self.root_device != "cpu":
            self.module.to(self.root_device)

    def batch_to_device(self, batch):
        """Tensors of a (nested list/tuple/dict) batch moved to ``root_device``."""
        return _to_device(batch, self.root_device)

    def setup(self, trainer):
        """Prepare ``module`` for training (wrap it); ``model`` runs the steps after."""
        self.trainer = trainer
        self.model = self.module

    def setup_optimizers(self, optimizers):
        """The optimizers to step, given those ``module.configure_optimizers()`` made
        (a list). The default steps them as they are."""
        return list(optimizers)

    def teardown(self):
        """Undo ``setup``: the model is the user's again."""
        self.model = self.module

    # ---- steps ----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        return self.model.training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        return self.module.validation_step(batch, batch_idx)

    def block_backward_sync(self):
        """Context for a micro-batch whose gradients are accumulated, not synchronised."""
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def sync_gradients(self, optimizers):
        """Synchronise gradients accumulated under ``block_backward_sync`` (a window
        that a data source of unknown length cut short)."""

    def clip_gradients(self, optimizers, max_norm):
        """Clip the global gradient norm of the optimizers' parameters to ``max_norm``."""
        from ..nn.utils import clip_grad_norm_
        clip_grad_norm_(optimizer_params(optimizers), max_norm)

    def optimizer_step(self, optimizer):
        optimizer.step()

    def zero_grad(self, optimizer):
        optimizer.zero_grad()

    # ---- communication --------------------------------------------------------------
    def reduce(self, array, op="sum"):
        """Reduce a numpy array over the ranks, in place; returns it."""
        if op not in _OPS:
            raise ValueError(f"reduce: op must be one of {_OPS}, got {op!r}")
        return array

    def all_gather_object(self, obj):
        """Every rank's ``obj`` (JSON-serialisable), as a list indexed by rank."""
        return [obj]

    def broadcast(self, obj, src=0):
        """Rank ``src``'s ``obj`` (JSON-serialisable) on every rank."""
        return obj

    def barrier(self, name=None):
        """Wait until every rank got here."""

    def reduce_boolean_decision(self, decision, all=True):
        """One decision for every rank: all ranks agree (``all``) or any rank does."""
        flags = self.all_gather_object(bool(decision))
        return builtins.all(flags) if all else any(flags)

    # ---- state ----------------------------------------------------------------------
    def model_state_dict(self):
        """The full model state dict (what a checkpoint holds)."""
        return self.module.state_dict()

    def load_model_state_dict(self, state):
        self.module.load_state_dict(state)

    def optimizer_state(self, optimizer):
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer, state):
        optimizer.load_state_dict(state)

    def save_checkpoint(self, checkpoint, path):
        """Write ``checkpoint`` to ``path``: rank 0 writes (atomically), then every rank
        waits for it, so nobody reads (or resumes from) a half-written state."""
        if self.is_global_zero:
            from ..serialization import save
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            save(checkpoint, path)
        self.barrier("save_checkpoint")

    def load_checkpoint(self, path):
        from ..serialization import load
        return load(path)

    def remove_checkpoint(self, path):
        """Delete a checkpoint file (rank 0; the others wait)."""
        if self.is_global_zero and os.path.exists(path):
            os.remove(path)
        self.barrier("remove_checkpoint")


class SingleDeviceStrategy(Strategy):
    """One worker on one device: nothing is ever communicated (the base's defaults)."""

    def setup_environment(self, trainer):
        n = trainer._job.world_size
        if n > 1:
            raise ValueError(f"SingleDeviceStrategy in a job of {n} workers would train {n} "
                             "independent models; use strategy='ddp' (or None)")
        super().setup_environment(trainer)


@dataclass
class DDPStrategy(Strategy):
    """Data parallelism with DistributedDataParallel (see its docstring for the knobs).

    Every rank holds the whole model; gradients are averaged during backward. The
    training step runs through DDP's forward (which also broadcasts buffers), and
    accumulation windows skip communication with DDP's ``no_sync``.
    """

    compression: str = None
    overlap_comm: bool = True
    bucket_cap_mb: float = 25
    find_unused_parameters: bool = False
    broadcast_buffers: bool = True

    def __post_init__(self):
        Strategy.__init__(self)

    def wrap(self, module, process_group=None):
        """Wrap ``module`` in DistributedDataParallel with these settings."""
        from .ddp import DistributedDataParallel
        return DistributedDataParallel(
            module, bucket_cap_mb=self.bucket_cap_mb, compression=self.compression,
            overlap_comm=self.overlap_comm, broadcast_buffers=self.broadcast_buffers,
            find_unused_parameters=self.find_unused_parameters, process_group=process_group)

    def setup_environment(self, trainer):
        from .. import collectives as C
        super().setup_environment(trainer)
        if not C.is_initialized():
            from . import init_process_group
            init_process_group()
        self.process_group = C.get_default_group()
        job = trainer._job
        if job.launched and self.process_group.size != job.world_size:
            raise RuntimeError(f"the default process group has {self.process_group.size} "
                               f"ranks but the launcher started {job.world_size}")

    def setup(self, trainer):
        # DDP hooks only the parameters; routing training_step through its forward
        # (the StepModule wrapper) also gives it the buffer broadcast it does there.
        self.trainer = trainer
        self.model = self.wrap(_StepModule(self.module), process_group=self.process_group)

    def teardown(self):
        # detach this fit's DDP from the parameters, so that a later fit (which wraps
        # again) does not also run this one's gradient hooks
        if self.model is not None and self.model is not self.module:
            self.model.remove_hooks()
        self.model = self.module

    def training_step(self, batch, batch_idx):
        return self.model(batch, batch_idx)

    def block_backward_sync(self):
        return self.model.no_sync()

    def sync_gradients(self, optimizers):
        from ..collectives import ReduceOp
        for p in optimizer_params(optimizers):
            if p.grad is not None:
                arr = p.grad.array
                if not arr.flags.c_contiguous:
                    p.grad = p.grad.contiguous() if hasattr(p.grad, "contiguous") \
                        else p.grad.clone()
                    arr = p.grad.array
                self.process_group.allreduce(arr, ReduceOp.AVG)
                p.grad._bump_version()

    def reduce(self, array, op="sum"):
        super().reduce(array, op)
        if self.world_size > 1 and array.size:
            from ..collectives import ReduceOp
            self.process_group.allreduce(array, {"sum": ReduceOp.SUM, "mean": ReduceOp.AVG,
                                                 "max": ReduceOp.MAX,
                                                 "min": ReduceOp.MIN}[op])
        return array

    def all_gather_object(self, obj):
        if self.world_size == 1:
            return [obj]
        from . import all_gather_object
        out = [None] * self.world_size
        all_gather_object(out, obj, group=self.process_group)
        return out

    def broadcast(self, obj, src=0):
        if self.world_size == 1:
            return obj
        from . import broadcast_object_list
        box = [obj]
        broadcast_object_list(box, src=src, group=self.process_group)
        return box[0]

    def barrier(self, name=None):
        if self.world_size > 1:
            self.process_group.barrier()


@dataclass
class ZeROStrategy(DDPStrategy):
    """ZeRO data parallelism: ``stage=1`` shards the optimizer state (DDP +
    ZeroRedundancyOptimizer), ``2`` also the gradients (FSDP SHARD_GRAD_OP), ``3`` also
    the parameters (FSDP FULL_SHARD, one unit per submodule the ``auto_wrap_policy``
    picks). The optimizers ``configure_optimizers`` made keep their ``param_groups``
    (so lr schedulers keep working); their state lives in the sharded optimizer.

    Stages 2/3 wrap the model in ``setup_optimizers`` (the loop calls
    ``configure_optimizers`` between ``setup`` and it, on the unwrapped parameters);
    their optimizers must have one set of options for all groups. The Trainer's
    single-file checkpoints hold the full model; the sharded optimizer state of stages
    2/3 goes through ``deepseek.distributed.checkpoint`` into ``<file>.zero/`` beside
    it (every rank writes its pieces; a resume on any number of ranks reshards it).
    Under ``precision='16-mixed'`` the GradScaler's inf/NaN flag is all-reduced over
    the group, so every rank skips the same steps. ``offload_optimizer`` (ZeRO-Offload,
    stages 2/3) keeps the fp32 master shards and the optimizer state in host memory and
    steps them there with the native fused Adam (FSDP's ``CPUOffload()``; on the CPU
    the same code runs with same-device moves). ``min_unit_numel`` is FSDP's: stage 3
    units coalesced into groups of at least that many parameters, gathered together.
    """

    stage: int = 2
    offload_optimizer: bool = False
    auto_wrap_policy: object = None
    min_unit_numel: int = 0
    _fsdp: object = None

    def __post_init__(self):
        if self.stage not in (1, 2, 3):
            raise ValueError(f"ZeROStrategy: stage must be 1, 2 or 3, got {self.stage!r}")
        if self.offload_optimizer and self.stage == 1:
            raise NotImplementedError("ZeROStrategy(stage=1, offload_optimizer=True): "
                                      "ZeRO-Offload is built on FSDP's shards; use stage 2 "
                                      "or 3")
        Strategy.__init__(self)

    def setup(self, trainer):
        if self.stage == 1:
            return super().setup(trainer)
        self.trainer = trainer
        self.model = self.module  # wrapped in setup_optimizers (see the class docstring)

    def setup_optimizers(self, optimizers):
        from .zero import ZeroRedundancyOptimizer
        scaler = getattr(getattr(self.trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None:
            # '16-mixed': each rank unscales the gradients it holds (its shards): the
            # skip decision is agreed over the group (ShardedGradScaler's reduction)
            from .fsdp.sharded_grad_scaler import agree_on_inf
            scaler.found_inf_reduce = agree_on_inf(self.process_group)
        out = []
        if self.stage >= 2 and optimizers:
            from .fsdp import CPUOffload, FullyShardedDataParallel
            self.model = FullyShardedDataParallel(
                _StepModule(self.module), process_group=self.process_group,
                sharding_strategy="SHARD_GRAD_OP" if self.stage == 2 else "FULL_SHARD",
                auto_wrap_policy=self.auto_wrap_policy, bucket_cap_mb=self.bucket_cap_mb,
                cpu_offload=CPUOffload() if self.offload_optimizer else None,
                min_unit_numel=self.min_unit_numel)
        for opt in optimizers:
            cls = type(opt)
            opts = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            if self.stage == 1:
                z = ZeroRedundancyOptimizer(opt.param_groups, optimizer_class=cls,
                                            process_group=self.process_group, **opt.defaults)
                z.param_groups = opt.param_groups  # the schedulers' groups
                out.append(z)
                continue
            if any(o != opts[0] for o in opts):
                raise NotImplementedError("ZeROStrategy(stage=2/3): parameter groups with "
                                          "different options are not supported")
            new = cls(list(self.model.parameters()), **opts[0])
            opt.param_groups[0]["params"] = new.param_groups[0]["params"]
            del opt.param_groups[1:]
            new.param_groups = opt.param_groups  # the schedulers' groups, now on shards
            out.append(new)
        return out

    def teardown(self):
        if self.stage == 1:
            return super().teardown()
        # the user's module stays sharded (its parameters live in the FSDP shards):
        # model_state_dict() still gathers it through the wrapper
        self._fsdp = self.model if self.model is not self.module else self._fsdp
        self.model = self.module

    def sync_gradients(self, optimizers):
        if self.stage == 1:
            return super().sync_gradients(optimizers)
        raise NotImplementedError("ZeROStrategy(stage=2/3): a window cut short inside "
                                  "no_sync is not supported")

    def clip_gradients(self, optimizers, max_norm):
        if self.stage == 1:
            return super().clip_gradients(optimizers, max_norm)
        self.model.clip_grad_norm_(max_norm)  # the global norm over every shard

    def model_state_dict(self):
        if self.stage == 1:
            return self.module.state_dict()
        fsdp = self.model if self.model is not self.module else self._fsdp
        if fsdp is None:
            return self.module.state_dict()
        sd = fsdp.state_dict()
        return {k[len("model."):]: v for k, v in sd.items()}

    # Checkpoints. Stage 1 consolidates the optimizer state into the Trainer's file
    # (ZeroRedundancyOptimizer.consolidate_state_dict). Stages 2/3 keep it sharded:
    # the file ``path`` (rank 0, the full model) names a version of the directory
    # ``path + ".zero"``, which every rank writes its pieces of every optimizer into
    # through deepseek.distributed.checkpoint -- so no rank ever holds the whole
    # state, and a resume on another number of ranks reshards it. The directory is
    # committed first and keeps the two newest versions: a crash before the file is
    # replaced leaves the previous file naming a version that still exists.
    _ZERO_FORMAT = "deepseek-zero-optim/1"

    def optimizer_state(self, optimizer):
        if self.stage == 1:
            optimizer.consolidate_state_dict(to=self.process_group.ranks[0])
            return optimizer.state_dict() if self.is_global_zero else {}
        index = next(i for i, o in enumerate(self.trainer.optimizers) if o is optimizer)
        # a placeholder: save_checkpoint writes the state and fills in where it went
        return {"format": self._ZERO_FORMAT, "index": index, "stage": self.stage}

    def _sharded_model(self):
        return self.model if self.model is not self.module else self._fsdp

    def save_checkpoint(self, checkpoint, path):
        placeholders = [st for st in checkpoint.get("optimizer_states", ())
                        if isinstance(st, dict) and st.get("format") == self._ZERO_FORMAT]
        if self.stage == 1 or not placeholders:
            return super().save_checkpoint(checkpoint, path)
        from . import checkpoint as dcp
        model = self._sharded_model()
        sd, extra = {}, {}
        for st in placeholders:
            opt = self.trainer.optimizers[st["index"]]
            osd, ex = dcp.get_optimizer_state_dict(model, opt, self.process_group,
                                                   prefix=f"opt{st['index']}.")
            sd.update(osd)
            extra.update(ex)
        side = os.fspath(path) + ".zero"
        version = dcp.save(sd, side, self.process_group, extra=extra, keep=2)
        for st in placeholders:
            st["dir"], st["version"] = os.path.basename(side), version
        super().save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path):
        self._loaded_from = os.fspath(path)  # load_optimizer_state finds ".zero" by it
        return super().load_checkpoint(path)

    def remove_checkpoint(self, path):
        side = os.fspath(path) + ".zero"
        if self.stage > 1 and self.is_global_zero and os.path.isdir(side):
            import shutil
            shutil.rmtree(side, ignore_errors=True)
        super().remove_checkpoint(path)

    def load_optimizer_state(self, optimizer, state):
        if isinstance(state, dict) and state.get("format") == self._ZERO_FORMAT:
            if self.stage == 1:
                raise ValueError("ZeROStrategy(stage=1): this checkpoint holds a sharded "
                                 f"optimizer state of stage {state['stage']}; resume it with "
                                 "stage 2 or 3")
            from . import checkpoint as dcp
            where = os.path.join(os.path.dirname(os.path.abspath(self._loaded_from)),
                                 state["dir"])
            dcp.load_optimizer_state_dict(self._sharded_model(), optimizer, where,
                                          self.process_group, version=state["version"],
                                          prefix=f"opt{state['index']}.")
            return
        optimizer.load_state_dict(state)


def optimizer_params(optimizers):
    """Every parameter of the optimizers' param groups, once, in order."""
    seen, out = set(), []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def _to_device(batch, device):
    from .._tensor import Tensor
    if device == "cpu":
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


_step_module_cls = None


def _StepModule(model):
    """``model`` as a module whose forward is its training_step (what DDP wraps)."""
    global _step_module_cls
    if _step_module_cls is None:
        from .. import nn

        class StepModule(nn.Module):
            """Makes ``training_step`` the forward of a module DDP can wrap."""

            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, batch, batch_idx):
                return self.model.training_step(batch, batch_idx)

        _step_module_cls = StepModule
    return _step_module_cls(model)
