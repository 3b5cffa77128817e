"""Quantized modules: ``dynamic`` (int8 weights, activations quantized per call), static
int8 ``Linear`` / ``Conv2d`` (fixed activation scales from calibration) and the
weight-only ``WeightOnlyLinear`` (int8 / int4 groupwise)."""
from . import dynamic  # noqa: F401
from ._common import QuantizedModule, quantize_per_channel  # noqa: F401
from .static import Conv2d, Linear  # noqa: F401
from .weight_only import Embedding, WeightOnlyLinear, pack_int4, unpack_int4  # noqa: F401

__all__ = ["dynamic", "Linear", "Conv2d", "WeightOnlyLinear", "Embedding", "QuantizedModule"]
