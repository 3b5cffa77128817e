"""``deepseek.backends``: the ``torch.backends`` flags PyTorch programs set and read.

deepseek's kernels come from numpy (CPU) and CuPy/cuBLAS (GPU); there is no cuDNN
autotuner and no TF32 switch of our own, so the flags are recorded (programs set and
read them back, as with PyTorch) and the ``is_available`` answers are truthful:
cuDNN counts as available when CuPy sees a GPU and ships cuDNN, MPS never is.
"""
from . import cudnn, cuda, mps, cpu, mkldnn, openmp, mkl  # noqa: F401

__all__ = ["cudnn", "cuda", "mps", "cpu", "mkldnn", "openmp", "mkl"]
