"""deepseek.optim: optimizers and learning-rate schedulers (PyTorch's API and numerics).

``SGD``, ``Adam`` and ``AdamW`` update parameters in place on their raw arrays; fp32
CPU parameters use the fused one-pass kernels of ``deepseek.native`` when they are
built (``fused=None``), everything else a numpy/cupy path with the same results.
"""
from .optimizer import Optimizer
from .sgd import SGD
from .adam import Adam, AdamW
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
