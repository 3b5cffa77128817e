"""Where a loader stands in its epoch, and how it resumes there: ``state_dict`` support.

A position is a count in the epoch's *global* order, the order before it is split
between ranks. With a :class:`DistributedSampler` of ``W`` ranks that each consumed
``k`` samples, the first ``k * W`` samples of the global order are exactly the ones
seen (rank ``r`` takes every ``W``-th from ``r``), so a position resumes into any number
of ranks: :meth:`DistributedSampler.set_start` splits the rest anew. Without one (one
process), the position is the samples consumed of the sampler's order; a
:class:`RandomSampler`'s order is drawn again from the stream state it was drawn from
(saved in the state), a sequential order needs nothing, any other sampler is replayed
and the seen part skipped (right when its order is reproducible). With a user's
``batch_sampler`` the position counts batches instead; so it does for an
IterableDataset, whose stream is replayed and the batches seen skipped.

The state is plain JSON-able data (ints, strings, dicts), so a checkpoint's metadata
can carry it.
"""
import collections
import itertools
import time

from .distributed import DistributedSampler
from .sampler import RandomSampler, SequentialSampler

VERSION = 1


def sampler_kind(sampler):
    if isinstance(sampler, DistributedSampler):
        return "distributed"
    if type(sampler) is SequentialSampler:
        return "sequential"
    if type(sampler) is RandomSampler:
        return "random"
    return "other"


class Tracker:
    """The running epoch of one loader: where it started and what it has yielded."""

    def __init__(self, epoch, start, replicas, unit, kind, rng=None):
        self.epoch, self.start, self.replicas = epoch, start, replicas
        self.unit, self.kind, self.rng = unit, kind, rng
        self.yielded = 0
        self.done = False
        self.lengths = collections.deque()   # units in each batch handed to the fetcher

    def position(self):
        return self.start + self.yielded * self.replicas


def batched(samples, batch_size, drop_last):
    """BatchSampler's grouping over an iterator of sample indices."""
    it = iter(samples)
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch or (drop_last and len(batch) < batch_size):
            return
        yield batch


def skipping(it, n):
    """``it`` without its first ``n`` items (an IterableDataset's resume: the stream is
    replayed up to where the state was taken); ``it`` is closed when this is."""
    try:
        for k, item in enumerate(it):
            if k >= n:
                yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def counting(indices, tracker, per_sample):
    """``indices`` (batches or samples), recording each one's size in ``tracker``."""
    for index in indices:
        tracker.lengths.append(len(index) if per_sample else 1)
        yield index


class LoaderStats:
    """How long the training loop waited for its batches (``loader.stats``).

    ``batches``: batches handed out; ``wait_s``: total seconds spent inside the loader's
    ``__next__`` (with workers: waiting for a batch not ready yet; without: loading
    it); ``last_wait_s``: the latest batch's wait. A loop is input-bound when
    ``wait_per_batch`` is a sizeable part of its step time. (The profiler will report
    the same number; until it exists, read it here.)
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.batches, self.wait_s, self.last_wait_s = 0, 0.0, 0.0

    def _add_wait(self, dt):
        self.batches += 1
        self.wait_s += dt
        self.last_wait_s = dt

    @property
    def wait_per_batch(self):
        return self.wait_s / self.batches if self.batches else 0.0

    def __repr__(self):
        return (f"LoaderStats(batches={self.batches}, wait_s={self.wait_s:.4f}, "
                f"wait_per_batch={self.wait_per_batch * 1e3:.3f} ms)")


class EpochIter:
    """The iterator of one epoch: counts what it yields (for ``state_dict``), times
    each wait (``loader.stats``), and stops its workers when closed or collected."""

    def __init__(self, inner, tracker, stats, on_done):
        self.inner, self.tracker, self.stats, self.on_done = inner, tracker, stats, on_done

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            batch = next(self.inner)
        except StopIteration:
            if not self.tracker.done:
                self.tracker.done = True
                self.on_done(self.tracker)
            raise
        self.stats._add_wait(time.perf_counter() - t0)
        tr = self.tracker
        tr.yielded += tr.lengths.popleft() if tr.lengths else 1
        return batch

    def close(self):
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def check_state(state):
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError(f"not a DataLoader state (version {VERSION}): {state!r:.200}")
    return state
