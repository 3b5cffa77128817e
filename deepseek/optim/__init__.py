"""deepseek.optim: optimizers and learning-rate schedulers (PyTorch's API and numerics).

``SGD``, ``Adam`` and ``AdamW`` update parameters in place on their raw arrays; fp32
CPU parameters use the fused one-pass kernels of ``deepseek.native`` when they are
built (``fused=None``), everything else a numpy/cupy path with the same results. Adadelta, Adagrad, RMSprop,
Adamax, NAdam, RAdam, Rprop, ASGD (``_simple``) and LBFGS (``lbfgs``) follow PyTorch's
single-tensor implementations.
"""
from .optimizer import Optimizer
from .sgd import SGD
from .adam import Adam, AdamW
from ._simple import Adadelta, Adagrad, RMSprop, Adamax, NAdam, RAdam, Rprop, ASGD
from .lbfgs import LBFGS
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adadelta", "Adagrad", "RMSprop", "Adamax", "NAdam",
           "RAdam", "Rprop", "ASGD", "LBFGS", "lr_scheduler"]
