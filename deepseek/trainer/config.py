"""The Trainer's arguments: checked, normalised, and turned into a job and a strategy
(Lightning's accelerator connector, in small)."""
import numpy as np

_PRECISIONS = {"32": "32", "32-true": "32", 32: "32", "16-mixed": "16-mixed", "16": "16-mixed",
               "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed"}
_ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


class Job:
    """This process's place in a launched job (world size 1 when not launched)."""

    def __init__(self, rank=0, world_size=1, local_rank=0, local_world_size=1, launched=False):
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.launched = launched


def detect_job():
    """The job the environment describes (deepseek-run, torchrun, mpirun, srun, none)."""
    from ..collectives import env
    info = env.detect()
    return Job(info.rank, info.world_size, info.local_rank, info.local_world_size,
               launched=info.launcher != "single")


def check_precision(precision):
    key = str(precision)
    if key not in _PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use one of "
                         f"'32', '16-mixed', 'bf16-mixed'")
    return _PRECISIONS[key]


def check_accelerator(accelerator):
    from ..backend import cupy_available
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


def check_devices(devices, accelerator, job):
    from ..backend import device_count
    if devices == "auto":
        if job.launched:
            return job.local_world_size
        return device_count() if accelerator == "gpu" else 1
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)):
        raise TypeError(f"devices must be an int >= 1 or 'auto', got {devices!r}")
    devices = int(devices)
    if devices < 1:
        raise ValueError(f"devices must be >= 1 (or 'auto'), got {devices}")
    if accelerator == "gpu":
        n = device_count()
        if devices > n:
            raise ValueError(f"devices={devices} but only {n} GPU(s) are visible")
    if job.launched and devices != job.local_world_size:
        raise ValueError(f"Trainer(devices={devices}) but the launcher started "
                         f"{job.local_world_size} worker(s) on this node; pass "
                         f"devices={job.local_world_size} or devices='auto'")
    return devices


def check_strategy(strategy):
    """A Strategy instance, or None for 'auto' (chosen when fit starts: see choose_strategy)."""
    from ..distributed.strategy import DDPStrategy, SingleDeviceStrategy, Strategy
    if isinstance(strategy, Strategy):
        return strategy
    if strategy in (None, "auto"):
        return None
    if strategy == "ddp":
        return DDPStrategy()
    if strategy == "single_device":
        return SingleDeviceStrategy()
    if strategy in ("zero1", "zero2", "zero3"):
        from ..distributed.strategy import ZeROStrategy
        return ZeROStrategy(stage=int(strategy[-1]))
    raise ValueError(f"strategy={strategy!r} is not supported; use None/'auto', 'ddp', "
                     f"'single_device', 'zero1'/'zero2'/'zero3', a "
                     f"deepseek.distributed.DDPStrategy(...) or another "
                     f"deepseek.distributed.Strategy")


def choose_strategy(job):
    """'auto': DDP when there is more than one worker (launched, or a default group of
    several ranks made by the user), else one device."""
    from .. import collectives as C
    from ..distributed.strategy import DDPStrategy, SingleDeviceStrategy
    several = job.world_size > 1 or (C.is_initialized() and C.get_default_group().size > 1)
    return DDPStrategy() if several else SingleDeviceStrategy()


def check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_limits(max_epochs, max_steps):
    def norm(v, name):
        if v is None or v == -1:
            return None
        return check_int(v, name, 0)
    epochs, steps = norm(max_epochs, "max_epochs"), norm(max_steps, "max_steps")
    if max_epochs is None and steps is None:
        epochs = 1000  # Lightning's default; max_epochs=-1 trains until stopped
    return epochs, steps


def check_clip(gradient_clip_val):
    if gradient_clip_val is None:
        return None
    clip = gradient_clip_val
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise ValueError(f"gradient_clip_val must be a positive number or None, got "
                         f"{gradient_clip_val!r}")
    return float(clip)


def check_seed(seed):
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return None if seed is None else int(seed)


def check_callbacks(callbacks, enable_progress_bar):
    """The callback list in calling order: a progress bar first (unless one is given or
    it is disabled), the user's in their order, checkpointing callbacks last so that
    the checkpoints they write hold every other callback's state of the same moment
    (Lightning reorders the same way)."""
    from .callbacks import Callback, ModelCheckpoint, ProgressBar
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be deepseek.trainer.Callback instances, got "
                            f"{type(cb).__name__}")
    if enable_progress_bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.insert(0, ProgressBar())
    if not enable_progress_bar:
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    others = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
    return others + [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
