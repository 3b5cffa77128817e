"""Export of the dynamically quantized Linear (``deepseek.quantization.quantize_dynamic``).

``nn.quantized.dynamic.Linear`` computes in numpy and the native int8 GEMM, outside the op
dispatch, so it is a leaf module: one node, written here as ONNX's dynamic quantization
pattern (what onnxruntime's own quantizer emits, and what its kernels fuse)::

    x_q, x_scale, x_zp = DynamicQuantizeLinear(x)          # uint8, per tensor, asymmetric
    acc = MatMulInteger(x_q, W_q^T + 128, x_zp, 128)       # deepseek's int8 weights, int32
    y = Cast(acc, float) * (x_scale * w_scale) + bias

The weights are deepseek's own int8 values and per-channel scales; only the activation
quantization differs (deepseek: symmetric int8, one scale per row or per tensor), so the
two results differ by at most the activations' rounding steps times the weights' L1 norms
(``activation_error_bound``).
"""
import numpy as np

__all__ = ["dynamic_linear", "activation_error_bound"]


def dynamic_linear(g, module, x):
    """Rule of ``nn.quantized.dynamic.Linear``."""
    w = np.ascontiguousarray(module.weight._data, np.int8)
    if w.shape != (module.out_features, module.in_features):
        w = np.ascontiguousarray(w[:module.out_features, :module.in_features])
    # the weights as uint8 with zero point 128 (the same integers): onnxruntime's x86 u8*s8
    # kernels pair products into int16 and saturate on full-range int8 weights
    # (its docs: "reduce_range"); u8*u8 does not
    wt = g.const(np.ascontiguousarray((w.T.astype(np.int16) + 128).astype(np.uint8)))
    xn = g.name(x, np.float32)
    xq, xs, xz = g.op("DynamicQuantizeLinear", xn, outputs=3)
    acc = g.op("MatMulInteger", xq, wt, xz, g.const(np.array(128, np.uint8)))
    scale = g.op("Mul", xs, g.const(np.asarray(module.weight_scale._data, np.float32)))
    y = g.op("Mul", g.cast(acc, np.float32), scale)
    b = module._buffers.get("bias")
    if b is not None:
        y = g.op("Add", y, g.const(np.asarray(b._data, np.float32)))
    return y


def activation_error_bound(module, x, act_mode=None):
    """Elementwise bound on |exported - eager| for input ``x`` (numpy [..., K]): both use
    the same int8 weights W_q * s_w; the activations are rounded to within half a step
    (ONNX: (max(x, 0) - min(x, 0)) / 255 per tensor; deepseek: amax / 127 per row or per
    tensor), so each output differs by at most (step_onnx + step_ds) / 2 * sum_k |W[n, k]|."""
    x2 = np.asarray(x, np.float32).reshape(-1, module.in_features)
    step_onnx = (max(float(x2.max()), 0.0) - min(float(x2.min()), 0.0)) / 255.0
    mode = act_mode or module.act_mode
    amax = np.abs(x2).max(axis=1)
    if mode == "per_tensor":
        amax = np.full_like(amax, amax.max())
    step_ds = np.where(amax > 0, amax / 127.0, 0.0)
    w = np.asarray(module.weight._data, np.float32)[:module.out_features, :module.in_features]
    l1 = np.abs(w * np.asarray(module.weight_scale._data, np.float32)[:, None]).sum(axis=1)
    bound = (step_onnx + step_ds)[:, None] / 2 * l1[None, :]
    return bound.reshape(np.shape(x)[:-1] + (module.out_features,))


def _register():
    from ..nn.quantized import dynamic as nnqd
    from . import register_module
    register_module(nnqd.Linear, dynamic_linear)


_register()
