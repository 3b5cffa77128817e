"""deepseek.trainer: the Trainer, one job per module.

    trainer.py      Trainer: arguments, public state, fit/validate orchestration
    config.py       argument checks, the job, the 'auto' strategy choice
    loops.py        the fit loop (epochs, accumulation windows, optimizer steps) and
                    the validation loop
    state.py        what a checkpoint holds (loop position, RNG states, callbacks) and
                    how a fit is put back to it
    data.py         sharding the data per worker, mid-epoch resume of a DataLoader
    launch.py       a plain ``python script.py`` with devices > 1 starting its workers
    module.py       what the Trainer asks of the model and gives it (``self.log``)
    optimizers.py   configure_optimizers() shapes and lr scheduler stepping
    hooks.py        calling the hooks in Lightning's order
    callbacks/      Callback and ModelCheckpoint, EarlyStopping, LearningRateMonitor,
                    ProgressBar

Processes, devices and wrappers are a :class:`deepseek.distributed.Strategy`'s job
(``SingleDeviceStrategy``, ``DDPStrategy``); the loops only call it.
"""
from ..distributed.strategy import DDPStrategy, SingleDeviceStrategy, Strategy
from .callbacks import (Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint,
                        ProgressBar)
from .trainer import Trainer

__all__ = ["Trainer", "Callback", "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor",
           "ProgressBar", "Strategy", "SingleDeviceStrategy", "DDPStrategy"]
