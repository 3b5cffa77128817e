"""Weight-only quantized Linear (deepseek.quantization.quantize_weights): int8 or int4
(two per byte) weights with one fp32 scale per group of input features; fp32
activations; the weight is dequantized group by group inside the product."""
import numpy as np

from .. import modules as _m
from ..._tensor import Tensor
from ._common import QuantizedModule, as_array, buffer, linear_rows
from ._repr import linear_repr


def quantize_groupwise(w, bits, group_size):
    """(q int8 [N, Kg] in [-qmax, qmax], scale fp32 [N, Kg / g]); K zero padded to Kg."""
    n, k = w.shape
    kg = -(-k // group_size) * group_size
    wp = np.zeros((n, kg), np.float32)
    wp[:, :k] = w
    g = wp.reshape(n, kg // group_size, group_size)
    qmax = 7 if bits == 4 else 127
    amax = np.abs(g).max(axis=2)
    scale = np.where(amax > 0, amax / np.float32(qmax), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(g / scale[:, :, None]), -qmax, qmax).astype(np.int8)
    return q.reshape(n, kg), scale


def pack_int4(q):
    """int8 values in [-8, 7], even count per row -> uint8 [N, K / 2]: element 2i in the
    low nibble, 2i + 1 in the high nibble (two's complement nibbles)."""
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(p):
    lo = (p & 0xF).astype(np.int8)
    hi = (p >> 4).astype(np.int8)
    lo = np.where(lo > 7, lo - 16, lo).astype(np.int8)
    hi = np.where(hi > 7, hi - 16, hi).astype(np.int8)
    out = np.empty((p.shape[0], p.shape[1] * 2), np.int8)
    out[:, 0::2], out[:, 1::2] = lo, hi
    return out


class WeightOnlyLinear(QuantizedModule):
    """y = x @ dequant(W).T + b. Buffers: ``weight`` (int8 [out, Kg] or, for int4, uint8
    [out, Kg / 2]), ``weight_scale`` fp32 [out, Kg / group_size], ``bias``."""

    _FLOAT_MODULE = _m.Linear

    def __init__(self, in_features, out_features, bias=True, bits=8, group_size=128):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"WeightOnlyLinear: bits must be 4 or 8, got {bits!r}")
        if group_size is None:      # one scale per output channel (K padded to 32)
            group_size = max(32, -(-in_features // 32) * 32)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        kg = -(-in_features // group_size) * group_size
        cols = kg // 2 if bits == 4 else kg
        self.register_buffer("weight", buffer(np.zeros((out_features, cols),
                                                       np.uint8 if bits == 4 else np.int8)))
        self.register_buffer("weight_scale", buffer(np.ones((out_features, kg // group_size),
                                                            np.float32)))
        if bias:
            self.register_buffer("bias", buffer(np.zeros(out_features, np.float32)))
        else:
            self.bias = None

    @property
    def weight_shape(self):
        return (self.out_features, self.in_features)

    @classmethod
    def from_float(cls, mod, bits=8, group_size=128):
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, bits, group_size)
        q, s = quantize_groupwise(as_array(mod.weight).astype(np.float32), bits, new.group_size)
        new.weight = buffer(pack_int4(q) if bits == 4 else q)
        new.weight_scale = buffer(s)
        if mod.bias is not None:
            new.bias = buffer(as_array(mod.bias).astype(np.float32))
        return new

    def int_weight(self):
        """The integer weight [out, Kg] as int8 (int4 unpacked)."""
        w = self.weight._data
        return unpack_int4(w) if self.bits == 4 else w

    def dequantized_weight(self):
        q = self.int_weight()
        n, kg = q.shape
        g = q.reshape(n, kg // self.group_size, self.group_size).astype(np.float32)
        w = (g * self.weight_scale._data[:, :, None]).reshape(n, kg)
        return w[:, :self.in_features]

    def forward(self, input):
        from ... import native as _N
        bias = None if self.bias is None else self.bias._data
        return linear_rows(as_array(input), self.in_features, self.out_features,
                           lambda x2: _N.wq_linear(x2, self.weight._data, self.weight_scale._data,
                                                   self.bits, self.group_size, bias))

    def _get_name(self):
        return "WeightOnlyQuantizedLinear"

    def extra_repr(self):
        return linear_repr(self, f"dtype=int{self.bits}, group_size={self.group_size}")


class Embedding(QuantizedModule):
    """Weight-only int8 embedding table (quantize_dynamic maps nn.Embedding here): int8
    rows with one fp32 scale per row, looked up and dequantized per call."""

    _FLOAT_MODULE = _m.Embedding

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer("weight", buffer(np.zeros((num_embeddings, embedding_dim), np.int8)))
        self.register_buffer("weight_scale", buffer(np.ones(num_embeddings, np.float32)))

    @property
    def weight_shape(self):
        return (self.num_embeddings, self.embedding_dim)

    @classmethod
    def from_float(cls, mod, **_):
        if mod.max_norm is not None:
            raise ValueError("quantized Embedding: max_norm is not supported")
        from ._common import quantize_per_channel
        new = cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx)
        q, s = quantize_per_channel(as_array(mod.weight).astype(np.float32))
        new.weight, new.weight_scale = buffer(q), buffer(s)
        return new

    def forward(self, input):
        idx = np.asarray(as_array(input))
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be integers, got {idx.dtype}")
        rows = self.weight._data[idx].astype(np.float32)
        return Tensor._make(rows * self.weight_scale._data[idx][..., None])

    def _get_name(self):
        return "QuantizedEmbedding"

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, dtype=qint8, qscheme=per_row"
