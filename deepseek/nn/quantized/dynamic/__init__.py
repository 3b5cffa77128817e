"""Dynamically quantized modules (deepseek.quantization.quantize_dynamic): int8 weights
quantized once per output channel, activations quantized on every call."""
import numpy as np

from ... import modules as _m
from .._common import (ACT_MODES, PackedInt8Module, as_array, buffer, linear_rows,
                       quantize_per_channel)

__all__ = ["Linear"]


class Linear(PackedInt8Module):
    """y = dequant(quant(x) @ q(W).T) + b on the native int8 GEMM (int32 accumulation,
    fp32 output). Buffers: ``weight`` int8 [out, in], ``weight_scale`` fp32 [out],
    ``bias`` fp32 [out] (if any). ``act_mode``: "per_row" (one dynamic scale per input
    row, the default: more accurate) or "per_tensor". ``reduce_range``: activations in
    7 bits ([-63, 63]) instead of 8, PyTorch fbgemm's choice: faster on AVX2 CPUs."""

    _FLOAT_MODULE = _m.Linear

    def __init__(self, in_features, out_features, bias=True, act_mode="per_row",
                 reduce_range=False):
        super().__init__()
        if act_mode not in ACT_MODES:
            raise ValueError(f"act_mode must be one of {ACT_MODES}, got {act_mode!r}")
        self.in_features, self.out_features, self.act_mode = in_features, out_features, act_mode
        self.reduce_range = bool(reduce_range)
        self._init_buffers(out_features, in_features, bias)

    @classmethod
    def from_float(cls, mod, act_mode="per_row", reduce_range=False):
        w = as_array(mod.weight).astype(np.float32)
        q, s = quantize_per_channel(w)
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, act_mode,
                  reduce_range)
        new._set_weight(q, s)
        if mod.bias is not None:
            new.bias = buffer(as_array(mod.bias).astype(np.float32))
        return new

    def forward(self, input):
        x = as_array(input)
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"{self._get_name()}: input has {x.shape[-1]} features, "
                               f"expected {self.in_features}")
        return linear_rows(x, self.in_features, self.out_features,
                           lambda x2: self._int8_matmul(x2, self.act_mode,
                                                        qmax=63 if self.reduce_range else 127))

    def _get_name(self):
        return "DynamicQuantizedLinear"

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"dtype=qint8, qscheme=per_channel_symmetric, act={self.act_mode}"
                + (", reduce_range=True" if self.reduce_range else ""))
