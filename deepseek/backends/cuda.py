"""``deepseek.backends.cuda``: ``matmul.allow_tf32`` and friends (recorded) and
``is_built`` (True when CuPy is installed)."""
from ._flags import Flags

matmul = Flags("deepseek.backends.cuda.matmul", allow_tf32=False,
               allow_fp16_reduced_precision_reduction=True,
               allow_bf16_reduced_precision_reduction=True)


def is_built():
    """True when deepseek can run on CUDA at all (CuPy imports)."""
    from .. import backend
    return backend.cupy_module() is not None


_sdp = {"flash": True, "mem_efficient": True, "math": True, "cudnn": True}


def enable_flash_sdp(enabled):
    """Record the flash-attention preference (deepseek picks its attention kernel itself)."""
    _sdp["flash"] = bool(enabled)


def enable_mem_efficient_sdp(enabled):
    """Record the memory-efficient-attention preference."""
    _sdp["mem_efficient"] = bool(enabled)


def enable_math_sdp(enabled):
    """Record the math-attention preference."""
    _sdp["math"] = bool(enabled)


def flash_sdp_enabled():
    """The recorded flash-attention preference."""
    return _sdp["flash"]


def mem_efficient_sdp_enabled():
    """The recorded memory-efficient-attention preference."""
    return _sdp["mem_efficient"]


def math_sdp_enabled():
    """The recorded math-attention preference."""
    return _sdp["math"]
