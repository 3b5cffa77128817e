"""Flat layouts: many parameters as contiguous runs of one padded 1-D buffer.

Shared by ZeRO stage 1 (``zero.py``) and FSDP (``fsdp/``). A :class:`FlatLayout` is a
pure function of the parameters' shapes (so every rank computes the same one): each
parameter gets ``[offset, offset + numel)`` in a buffer of ``padded`` elements,
``padded = world * shard_numel``, and rank ``r`` owns ``[r * shard_numel, (r + 1) *
shard_numel)``. The padding at the end is never a parameter: the user does not see it.
"""
import math

import numpy as np


class FlatLayout:
    """Where each of ``numels`` lives in a flat buffer split into ``world`` equal shards."""

    def __init__(self, numels, world):
        self.numels = [int(n) for n in numels]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64).tolist()
        self.numel = self.offsets[-1]
        self.world = int(world)
        self.shard_numel = max(1, math.ceil(self.numel / self.world))
        self.padded = self.shard_numel * self.world

    def shard_range(self, rank):
        """[start, end) of rank ``rank``'s shard in the flat buffer."""
        return rank * self.shard_numel, (rank + 1) * self.shard_numel

    def pieces(self, rank):
        """(param index, start, end) for every parameter overlapping rank's shard:
        ``start``/``end`` are element indices into the *parameter's* flattened data."""
        lo, hi = self.shard_range(rank)
        out = []
        for i, n in enumerate(self.numels):
            a, b = max(lo, self.offsets[i]), min(hi, self.offsets[i] + n)
            if a < b:
                out.append((i, a - self.offsets[i], b - self.offsets[i]))
        return out


def chunk_of(layout, rank, i):
    """(start, end) of parameter ``i``'s elements held in rank's shard (may be empty),
    and where they sit in that shard (shard-relative start)."""
    lo, hi = layout.shard_range(rank)
    off, n = layout.offsets[i], layout.numels[i]
    a, b = max(lo, off), min(hi, off + n)
    if a >= b:
        return 0, 0, 0
    return a - off, b - off, a - lo
