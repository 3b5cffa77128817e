"""FastDataLoader: the DataLoader with its I/O-efficiency defaults.

It takes the DataLoader's arguments (switching is a one-word change) and loads the
same batches, in the same order, with the same machinery: worker processes that hand
batches over through shared memory (deepseek.data._procs). What it adds:

- under an initialized process group of several ranks, a loader without a sampler of
  its own shards the dataset with a :class:`DistributedSampler` (shuffled with
  ``seed``, default 0, when ``shuffle=True``), whose epoch it advances itself at each
  new pass; each rank x worker then reads a disjoint, deterministic part;
- datasets with a ``prefetch(indices)`` method (:class:`MemmapDataset`) are told which
  samples come next as soon as their batch is scheduled (``prefetch_factor`` batches
  ahead), so the page cache fills while the current batch is used.
"""
import itertools

from .dataloader import DataLoader
from .distributed import DistributedSampler

__all__ = ["FastDataLoader"]


class FastDataLoader(DataLoader):
    """A DataLoader that shards itself under a process group and prefetches memory-
    mapped data (see the module). Same arguments as :class:`DataLoader`."""

    def _default_sampler(self, dataset, shuffle, generator):
        from .. import distributed as dist
        if dist.is_initialized() and dist.get_world_size() > 1:
            self._auto_sharded = True
            return DistributedSampler(dataset, shuffle=shuffle,
                                      seed=0 if self.seed is None else int(self.seed))
        return super()._default_sampler(dataset, shuffle, generator)

    def _epoch_indices(self):
        tracker, indices = super()._epoch_indices()
        hint = getattr(self.dataset, "prefetch", None)
        if callable(hint) and self._auto_collation:
            # without workers, look prefetch_factor batches ahead ourselves; with them,
            # a batch's indices are pulled when it is sent to a worker: already ahead
            ahead = 0 if self.num_workers else self.prefetch_factor
            indices = _hinting(indices, hint, ahead)
        return tracker, indices


def _hinting(indices, hint, ahead):
    """``indices`` unchanged, calling ``hint(index)`` for each ``ahead`` steps early."""
    it = iter(indices)
    window = list(itertools.islice(it, ahead))
    for index in window:
        hint(index)
    pos = 0
    for index in it:
        hint(index)
        window.append(index)
        yield window[pos]
        pos += 1
        if pos > 64:
            del window[:pos]
            pos = 0
    yield from window[pos:]
