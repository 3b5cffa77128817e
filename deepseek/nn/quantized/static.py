"""Statically quantized int8 Linear / Conv2d (deepseek.quantization.prepare / convert):
per-channel int8 weights and one fixed activation scale measured during calibration."""
import numpy as np

from .. import modules as _m
from ..._tensor import Tensor
from ._common import PackedInt8Module, as_array, buffer, linear_rows, quantize_per_channel
from ._repr import linear_repr


class Linear(PackedInt8Module):
    """y = dequant(q(x; input_scale) @ q(W).T) + b; buffers weight (int8), weight_scale,
    input_scale (fp32 [1], from the observer) and bias."""

    _FLOAT_MODULE = _m.Linear

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_buffers(out_features, in_features, bias, input_scale=True)

    @classmethod
    def from_observed(cls, mod, input_scale):
        new = cls(mod.in_features, mod.out_features, mod.bias is not None)
        new._set_weight(*quantize_per_channel(as_array(mod.weight).astype(np.float32)))
        new.input_scale = buffer(np.full(1, input_scale, np.float32))
        if mod.bias is not None:
            new.bias = buffer(as_array(mod.bias).astype(np.float32))
        return new

    def forward(self, input):
        a_scale = float(self.input_scale._data[0])
        return linear_rows(as_array(input), self.in_features, self.out_features,
                           lambda x2: self._int8_matmul(x2, None, a_scale=a_scale))

    def _get_name(self):
        return "QuantizedLinear"

    def extra_repr(self):
        return linear_repr(self, f"dtype=qint8, input_scale={float(self.input_scale._data[0]):.6g}")


class Conv2d(PackedInt8Module):
    """int8 Conv2d (groups=1, zero padding) as im2col + the int8 GEMM; weight int8
    [out, in * kh * kw] per output channel, fixed input scale."""

    _FLOAT_MODULE = _m.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        k = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_buffers(out_channels, k, bias, input_scale=True)

    @classmethod
    def from_observed(cls, mod, input_scale):
        pad = mod.padding
        if isinstance(pad, str):
            if pad == "valid":
                pad = (0, 0)
            else:   # 'same' (stride 1): symmetric only for odd effective kernels
                eff = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
                if any(e % 2 for e in eff):
                    raise ValueError("quantized Conv2d: padding='same' with an even kernel "
                                     "is not supported")
                pad = tuple(e // 2 for e in eff)
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, pad,
                  mod.dilation, mod.bias is not None)
        w = as_array(mod.weight).astype(np.float32).reshape(mod.out_channels, -1)
        new._set_weight(*quantize_per_channel(w))
        new.input_scale = buffer(np.full(1, input_scale, np.float32))
        if mod.bias is not None:
            new.bias = buffer(as_array(mod.bias).astype(np.float32))
        return new

    def forward(self, input):
        x = np.asarray(as_array(input), np.float32)
        squeeze = x.ndim == 3
        if squeeze:
            x = x[None]
        (ph, pw), (kh, kw) = self.padding, self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        b, c, h, w = x.shape
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        win = np.lib.stride_tricks.sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1),
                                                       axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]     # b c oh ow kh kw
        cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(b * oh * ow, -1)
        y = self._int8_matmul(cols, None, a_scale=float(self.input_scale._data[0]))
        y = y.reshape(b, oh, ow, self.out_channels).transpose(0, 3, 1, 2)
        y = np.ascontiguousarray(y)
        return Tensor._make(y[0] if squeeze else y)

    def _get_name(self):
        return "QuantizedConv2d"

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dtype=qint8, "
                f"input_scale={float(self.input_scale._data[0]):.6g}")
