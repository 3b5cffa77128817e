"""The Trainer's callbacks: the :class:`Callback` base (the hook API) and the first
ones built on it."""
from .base import Callback
from .early_stopping import EarlyStopping
from .lr_monitor import LearningRateMonitor
from .model_checkpoint import ModelCheckpoint
from .progress import ProgressBar

__all__ = ["Callback", "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor",
           "ProgressBar"]
