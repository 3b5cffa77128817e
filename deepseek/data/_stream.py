"""An IterableDataset loaded by worker processes, with PyTorch's semantics.

Each worker iterates its own copy of the dataset (inherited under fork, pickled by
multiprocessing's start mechanism under spawn/forkserver, exactly as the map-style
path hands its dataset over); ``deepseek.data.get_worker_info()`` tells the copy which
worker it is in (id, num_workers, seed, dataset), so it can shard itself -- a dataset
that does not gets every sample once per worker, as in PyTorch.

Worker side, :class:`StreamFetch` replaces the map-style fetch: each request makes the
next batch of the worker's own stream (``batch_size`` samples collated, or one sample
with ``batch_size=None``); a stream that ends answers "ended" (tag ``S`` of
:mod:`._worker`) to that request and to every later one of the same epoch. With
``drop_last`` each worker drops its own incomplete last batch (PyTorch's fetcher).

Main side, :class:`StreamIter` asks the workers for batches in turn, cycling over the
workers whose stream has not ended, ``prefetch_factor`` per worker ahead, and yields
the answers in the order asked: worker 0's first batch, worker 1's first, ..., worker
0's second, ..., an ended worker skipped from then on. That is the order PyTorch's
DataLoader yields (its ``_try_put_index`` / ``_IterableDatasetStopIteration``), and
it does not depend on timing. The epoch ends when every worker's stream has.
"""
import itertools

from ._procs import STREAM_END, PoolEpoch

__all__ = ["StreamFetch", "StreamIter", "StreamEnd", "is_stream_request"]


class StreamEnd(Exception):
    """Raised by :class:`StreamFetch` in a worker: its stream has no more batches."""


def is_stream_request(index):
    """Whether a task's ``index`` is a stream request (``("stream", epoch_token)``)."""
    return isinstance(index, tuple) and len(index) == 2 and index[0] == "stream"


class StreamFetch:
    """The worker-side fetch of an IterableDataset: ``fetch(dataset, ("stream", token))``
    is the next batch of the worker's iterator, a new iterator for each new ``token``
    (each new epoch, also with persistent workers)."""

    def __init__(self, collate_fn, batch_size, drop_last):
        self.collate_fn, self.batch_size, self.drop_last = collate_fn, batch_size, drop_last
        self.token = None
        self.it = None
        self.made = 0            # batches made in this epoch (named in error messages)

    def __call__(self, dataset, index):
        token = index[1]
        if token != self.token:
            self.token, self.made = token, 0
            self.it = iter(dataset)
        if self.it is None:      # ended earlier in this epoch: never call next() again
            raise StreamEnd
        try:
            if self.batch_size is None:
                batch = self.collate_fn(next(self.it))
            else:
                chunk = list(itertools.islice(self.it, self.batch_size))
                if not chunk or (self.drop_last and len(chunk) < self.batch_size):
                    raise StopIteration
                batch = self.collate_fn(chunk)
        except StopIteration:
            self.it = None
            raise StreamEnd from None
        self.made += 1
        return batch


class StreamIter(PoolEpoch):
    """One epoch of an IterableDataset from a :class:`~._procs.WorkerPool` (see the
    module for the order); ``token`` names the epoch to the workers."""

    def __init__(self, pool, token, timeout=0, own_pool=True):
        self.request = ("stream", token)
        self.active = [True] * pool.num_workers
        self._cycle = itertools.cycle(range(pool.num_workers))
        self._sent = 0
        self._got = 0
        super().__init__(pool, timeout, own_pool)

    def _start(self):
        for _ in range(self.pool.num_workers * self.pool.prefetch_factor):
            self._ask()

    def _ask(self):
        """Ask the next worker (in turn) whose stream has not ended for a batch."""
        for _ in range(len(self.active)):
            w = next(self._cycle)
            if self.active[w]:
                break
        else:
            return
        self.pool.submit(self._sent, self.request, worker=w)
        self._sent += 1

    def __next__(self):
        try:
            while not self._done and self._got < self._sent:
                seq = self._got
                w = self.pool.worker_of(seq)
                value = self.pool.get(seq, self.timeout or None)
                self._got += 1
                if value is STREAM_END:
                    # later requests already sent to w are answered "ended" too; each
                    # answer frees a place in the pipeline for a worker still going
                    self.active[w] = False
                    self._ask()
                    continue
                self._ask()
                return value
        except BaseException:
            self.close()
            raise
        self.close()
        raise StopIteration
