"""DistributedSampler: each rank iterates its own disjoint slice of the dataset."""
import math

import numpy as np


class DistributedSampler:
    """Indices for one rank (PyTorch's semantics).

    Every epoch the dataset is shuffled with ``seed + epoch`` (call ``set_epoch``) the
    same way on every rank, then rank ``r`` takes every ``num_replicas``-th index from
    position ``r``. Without ``drop_last`` the list is padded by wrapping around so every
    rank gets the same number of samples; with it, the tail is dropped instead.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            from .. import distributed as dist
            if not dist.is_initialized():
                raise RuntimeError("DistributedSampler needs num_replicas and rank, or an "
                                   "initialized process group (deepseek.distributed.init_process_group())")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        n = len(dataset)
        if drop_last and n % num_replicas:
            self.num_samples = n // num_replicas
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch):
        """Use a different shuffle in every epoch (the same on all ranks)."""
        self.epoch = int(epoch)

    def set_start(self, position, epoch=None):
        """Resume ``epoch`` (default: the current one) at ``position`` of its global
        order: the first ``position`` samples of the epoch's shuffled order (over all
        ranks) count as seen. The rest is split between this sampler's ranks, which
        may be more or fewer than the ranks that saw the first part (an elastic
        restart), without repeating or skipping a sample; padding (``drop_last=False``)
        only tops up the rest to a multiple of ``num_replicas``. Other epochs start
        at 0."""
        self._start = (self.epoch if epoch is None else int(epoch), int(position))

    def _start_position(self):
        start = getattr(self, "_start", None)
        return start[1] if start is not None and start[0] == self.epoch else 0

    def _split(self, m):
        """(samples per rank, total) for ``m`` samples still to hand out."""
        if self.drop_last and m % self.num_replicas:
            per = m // self.num_replicas
        else:
            per = math.ceil(m / self.num_replicas)
        return per, per * self.num_replicas

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            rng = np.random.Generator(np.random.PCG64(self.seed + self.epoch))
            indices = rng.permutation(n)
        else:
            indices = np.arange(n)
        start = self._start_position()
        if start >= n > 0:
            return iter([])
        rest = indices[start:]
        per, total = self._split(len(rest))
        pad = total - len(rest)
        if pad > 0:
            rest = np.concatenate([rest, np.resize(indices, pad)]) if n else rest
        else:
            rest = rest[:total]
        return iter(rest[self.rank:total:self.num_replicas].tolist())

    def __len__(self):
        start = self._start_position()
        if not start:
            return self.num_samples
        n = len(self.dataset)
        return 0 if start >= n else self._split(n - start)[0]
