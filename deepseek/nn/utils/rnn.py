"""Packed sequences (``torch.nn.utils.rnn``): PackedSequence, pack_padded_sequence,
pad_packed_sequence, pad_sequence, pack_sequence, unpad_sequence, unpack_sequence.

``PackedSequence.data`` holds the time steps one after another, each with the
sequences still running at that step (sorted by decreasing length), and
``batch_sizes[t]`` says how many there are, PyTorch's layout exactly.
"""
from collections import namedtuple

import numpy as np

from ... import ops
from ..._tensor import Tensor


class PackedSequence(namedtuple("PackedSequence", ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])):
    """Packed variable-length sequences; see the module docstring for the layout."""

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if unsorted_indices is None and sorted_indices is not None:
            unsorted_indices = _invert(sorted_indices)
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs):
        """The same packing with ``data`` moved/cast by ``Tensor.to``."""
        return type(self)(self.data.to(*args, **kwargs), self.batch_sizes, self.sorted_indices,
                          self.unsorted_indices)

    @property
    def is_cuda(self):
        """Whether the data lives on a GPU."""
        return self.data.is_cuda


def _invert(perm):
    inv = np.empty(perm.numel(), np.int64)
    inv[np.asarray(perm.tolist(), np.int64)] = np.arange(perm.numel())
    return Tensor._make(inv)


def _lengths_list(lengths):
    if isinstance(lengths, Tensor):
        return [int(v) for v in lengths.tolist()]
    return [int(v) for v in lengths]


def pack_padded_sequence(input, lengths, batch_first=False, enforce_sorted=True):
    """Pack a padded (T, B, *) batch (``batch_first``: (B, T, *)) of sequences of ``lengths``."""
    lens = _lengths_list(lengths)
    if any(n <= 0 for n in lens):
        raise RuntimeError("Length of all samples has to be greater than 0, but found an element in "
                           "'lengths' that is <= 0")
    if enforce_sorted:
        if any(a < b for a, b in zip(lens, lens[1:])):
            raise RuntimeError("`lengths` array must be sorted in decreasing order when `enforce_sorted` "
                               "is True. You can pass `enforce_sorted=False` to pack_padded_sequence "
                               "and/or pack_sequence to sidestep this requirement if you do not need "
                               "ONNX exportability.")
        order = None
    else:
        order_l = sorted(range(len(lens)), key=lambda i: -lens[i])
        order = Tensor._make(np.asarray(order_l, np.int64))
        lens = [lens[i] for i in order_l]
    x = ops.transpose(input, 0, 1) if batch_first else input
    if order is not None:
        x = ops.index_select(x, 1, order)
    T = lens[0]
    if T > x.shape[0]:
        raise RuntimeError(f"pack_padded_sequence: a length ({T}) exceeds the padded length ({x.shape[0]})")
    batch_sizes = [sum(1 for n in lens if n > t) for t in range(T)]
    data = ops.cat([x[t, :b] for t, b in enumerate(batch_sizes)], 0)
    return PackedSequence(data, Tensor._make(np.asarray(batch_sizes, np.int64)), order, None)


def pad_packed_sequence(sequence, batch_first=False, padding_value=0.0, total_length=None):
    """(padded tensor, lengths) of a PackedSequence, in the original batch order."""
    data, bs = sequence.data, [int(b) for b in sequence.batch_sizes.tolist()]
    B, T = bs[0], len(bs)
    if total_length is not None:
        if total_length < T:
            raise ValueError(f"Expected total_length to be at least the length of the longest "
                             f"sequence ({T}), but got total_length={total_length}")
        T = total_length
    rows, off = [], 0
    feat = tuple(data.shape[1:])
    for t in range(T):
        b = bs[t] if t < len(bs) else 0
        part = data[off:off + b] if b else None
        off += b
        if b < B:
            pad = ops.creation.full((B - b,) + feat, padding_value, dtype=data.dtype, device=data.device)
            part = pad if part is None else ops.cat([part, pad], 0)
        rows.append(part)
    out = ops.stack(rows, 0)
    lengths = np.asarray([sum(1 for b in bs if b > i) for i in range(B)], np.int64)
    if sequence.unsorted_indices is not None:
        out = ops.index_select(out, 1, sequence.unsorted_indices)
        lengths = lengths[np.asarray(sequence.unsorted_indices.tolist(), np.int64)]
    if batch_first:
        out = ops.transpose(out, 0, 1)
    return out, Tensor._make(lengths)


def pad_sequence(sequences, batch_first=False, padding_value=0.0, padding_side="right"):
    """Stack variable-length tensors (L_i, *) into (T, B, *) (``batch_first``: (B, T, *))."""
    T = max(s.shape[0] for s in sequences)
    padded = []
    for s in sequences:
        n = T - s.shape[0]
        if n:
            pad = ops.creation.full((n,) + tuple(s.shape[1:]), padding_value, dtype=s.dtype, device=s.device)
            s = ops.cat([s, pad] if padding_side == "right" else [pad, s], 0)
        padded.append(s)
    return ops.stack(padded, 0 if batch_first else 1)


def unpad_sequence(padded_sequences, lengths, batch_first=False):
    """The list of unpadded sequences of a padded batch."""
    x = padded_sequences if batch_first else ops.transpose(padded_sequences, 0, 1)
    return [x[i, :n] for i, n in enumerate(_lengths_list(lengths))]


def pack_sequence(sequences, enforce_sorted=True):
    """Pack a list of variable-length tensors."""
    lengths = [s.shape[0] for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences):
    """The list of sequences of a PackedSequence."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
