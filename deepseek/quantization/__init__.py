"""deepseek.quantization: int8 inference on the native int8 GEMM (PyTorch's names).

    quantize_dynamic(model, qconfig_spec={nn.Linear}, dtype=deepseek.qint8 | "int8",
                     inplace=False, act_mode="per_row")
        nn.Linear -> nn.quantized.dynamic.Linear: weights symmetric int8 per output channel
        (fp32 scales), activations quantized per call (per row by default, or
        "per_tensor"), int32 accumulation, fp32 output + bias.
    quantize_weights(model, dtype="int8" | "int4", group_size=128, inplace=False)
        weight-only (memory-bound inference): nn.Linear -> nn.quantized.WeightOnlyLinear,
        groupwise scales, int4 packed two per byte, dequantized in the kernel.
    prepare(model, qconfig=default_qconfig, inplace=False) / convert(model, inplace=False)
        static post-training quantization: observers (MinMaxObserver,
        HistogramObserver = percentile) on the inputs of nn.Linear / nn.Conv2d; run
        calibration batches in between; convert gives int8 modules with fixed
        activation scales.
    model_size(model) -> ModelSize(memory_bytes, disk_bytes, parameters)
"""
from ..dtypes import qint8  # noqa: F401
from .observer import (HistogramObserver, MinMaxObserver, QConfig, default_qconfig,  # noqa: F401
                       histogram_qconfig)
from .quantize import (ModelSize, convert, model_size, prepare, quantize_dynamic,  # noqa: F401
                       quantize_weights)

__all__ = ["quantize_dynamic", "quantize_weights", "prepare", "convert", "model_size",
           "ModelSize", "QConfig", "MinMaxObserver", "HistogramObserver", "default_qconfig",
           "histogram_qconfig", "qint8"]
