"""Shared pieces of the quantized modules: per-channel weight quantization, the packed
int8 weight cache and tensor plumbing (numpy in, deepseek.Tensor out, no autograd)."""
import numpy as np

from ... import native as _N
from ..._tensor import Tensor
from ..module import Module

ACT_MODES = ("per_row", "per_tensor")


def quantize_per_channel(w):
    """Symmetric int8 per output channel: (q int8 [N, K] in [-127, 127], scale fp32 [N])."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def pack_aligned(q):
    """``deepseek.native.int8_pack(q)`` with the packed rows moved to 64-byte aligned
    memory (numpy only promises 16): the kernels' 32-byte weight loads then never
    straddle two cache lines, worth ~5% of the int8 GEMM. ``packed._w`` stays the
    [N, K] view of the packed data (the module's ``weight`` buffer)."""
    p = _N.int8_pack(np.ascontiguousarray(q, np.int8))
    d = p.data
    if d.ctypes.data % 64:
        raw = np.empty(d.nbytes + 64, np.uint8)
        off = -raw.ctypes.data % 64
        data = raw[off:off + d.nbytes].view(np.int8).reshape(d.shape)
        data[...] = d
        p.data, p._w = data, data[:p.n, :p.k]
    return p


def _owner(a):
    return a if a.base is None else a.base


def _views_packed(w, p):
    """Is the array ``w`` still the [N, K] view into ``p.data`` the kernels read? (a
    replaced buffer is another array; a deepcopy keeps ``w is p._w`` but gives both
    their own memory, so the owners differ). Attribute checks only: once per call."""
    return w is p._w and _owner(w) is _owner(p.data)


def as_array(x):
    return x._data if isinstance(x, Tensor) else np.asarray(x)


def buffer(arr):
    return Tensor._make(np.ascontiguousarray(arr))


def linear_rows(x, in_features, out_features, matmul):
    """``matmul`` (float32 [rows, in] -> [rows, out]) applied along the last dim of the
    array ``x`` whatever its leading dims: a Tensor of shape (..., out_features)."""
    x2 = np.ascontiguousarray(x.reshape(-1, in_features), np.float32)
    return Tensor._make(matmul(x2).reshape(x.shape[:-1] + (out_features,)))


class QuantizedModule(Module):
    """Base of every quantized module: memory_bytes() and weight_count() for
    deepseek.quantization.model_size."""

    def memory_bytes(self):
        return sum(b._data.nbytes for b in self._buffers.values() if b is not None)

    def weight_count(self):
        """Elements of the float module this replaces: weight (+ bias)."""
        b = self._buffers.get("bias")
        return int(np.prod(self.weight_shape)) + (0 if b is None else b._data.size)

    def _apply(self, fn, recurse=True):
        raise RuntimeError(f"{type(self).__name__} holds quantized weights: casting or "
                           "moving it is not supported (quantize after .to())")


class PackedInt8Module(QuantizedModule):
    """Base of the int8 GEMM modules: buffer ``weight`` (int8 [N, K], a view into the
    packed kernel layout, so the weight is held once) and ``weight_scale`` (fp32 [N])."""

    def _init_buffers(self, rows, cols, bias, input_scale=False):
        """Placeholder buffers of a module being built (from_float/from_observed fill
        them): int8 weight [rows, cols], unit scales, a static ``input_scale`` when
        asked, and a zero fp32 ``bias`` (or None)."""
        self._set_weight(np.zeros((rows, cols), np.int8), np.ones(rows, np.float32))
        if input_scale:
            self.register_buffer("input_scale", buffer(np.ones(1, np.float32)))
        if bias:
            self.register_buffer("bias", buffer(np.zeros(rows, np.float32)))
        else:
            self.bias = None

    def _set_weight(self, q, scale):
        self._packed = pack_aligned(q)
        self.register_buffer("weight", Tensor._make(self._packed._w))
        self.register_buffer("weight_scale", buffer(np.asarray(scale, np.float32)))
        self._packed_vc = self.weight._vc[0]

    def _packed_weight(self):
        w = self.weight
        p = self._packed
        fresh = not _views_packed(w._data, p)       # replaced, or copied by deepcopy
        if fresh or w._vc[0] != self._packed_vc:    # ... or edited in place
            if fresh:
                self._packed = p = pack_aligned(w._data)
                self._buffers["weight"] = Tensor._make(p._w)
            else:
                p.rowsum = p.data.astype(np.int32).sum(axis=1, dtype=np.int32)
                p.full_range = bool((p._w == -128).any())
            self._packed_vc = self.weight._vc[0]
        return p

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._packed_vc = -1          # copied into the packed view: refresh sums and flag
        self._packed_weight()

    @property
    def weight_shape(self):
        return self._buffers["weight"].shape

    def memory_bytes(self):
        """Bytes this module holds: packed weight + scales + bias (no double count)."""
        n = self._packed_weight().nbytes
        for name, b in self._buffers.items():
            if b is not None and name != "weight":
                n += b._data.nbytes
        return n

    def _int8_matmul(self, x2d, a_mode, a_scale=None, qmax=127):
        """fp32 [M, N] = dequant(quant(x) @ w.T) * scales + bias (dynamic activations
        in [-qmax, qmax], or static ones with the calibrated ``a_scale``)."""
        p = self._packed_weight()
        kp = p.data.shape[1]
        if a_scale is None:
            q, s = _N.int8_quantize_rows(x2d, per_tensor=a_mode == "per_tensor", kp=kp,
                                         qmax=qmax)
        else:                       # static: fixed per-tensor scale from calibration
            inv = np.float32(1) / np.float32(a_scale)
            q = np.zeros((x2d.shape[0], kp), np.int8)
            q[:, :p.k] = np.clip(np.rint(x2d * inv), -127, 127)
            s = np.full(x2d.shape[0], a_scale, np.float32)
        b = self._buffers.get("bias")
        return _N.int8_linear(q, s, p, self.weight_scale._data,
                              None if b is None else b._data)
