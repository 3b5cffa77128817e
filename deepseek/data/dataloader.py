"""DataLoader: batches of a dataset (PyTorch's arguments and semantics), and collation."""
import collections.abc
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .dataset import IterableDataset
from .sampler import SequentialSampler, RandomSampler, BatchSampler

__all__ = ["DataLoader", "default_collate", "default_convert", "get_worker_info"]


def default_collate(batch):
    """Stack a list of samples into a batch, recursively (PyTorch's default_collate).

    Tensors and numpy arrays are stacked along a new first dimension; Python floats
    become a float64 tensor, ints an int64 tensor, bools a bool tensor; str/bytes stay a
    list; dicts collate per key, namedtuples per field, other sequences per position (as a
    list, like PyTorch).
    """
    from .._tensor import Tensor
    from ..backend import get_array_module
    if len(batch) == 0:
        raise ValueError("default_collate: got an empty batch")
    elem = batch[0]
    if isinstance(elem, Tensor):
        arrays = [b._data for b in batch]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise RuntimeError(f"default_collate: stack expects each tensor to be equal size, "
                               f"but got {sorted(shapes)} in one batch (pad the samples or "
                               "pass a collate_fn)")
        xp = get_array_module(arrays[0])
        return Tensor._make(xp.stack(arrays))
    if isinstance(elem, np.ndarray):
        if elem.dtype.kind in "OSU":
            raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, "
                            f"numbers, dicts or lists; found an array of dtype {elem.dtype}")
        return default_collate([Tensor._make(np.asarray(b)) for b in batch])
    if isinstance(elem, np.generic) and not isinstance(elem, (np.str_, np.bytes_)):
        return Tensor._make(np.array(batch))
    if isinstance(elem, bool):
        return Tensor._make(np.array(batch, dtype=np.bool_))
    if isinstance(elem, int):
        return Tensor._make(np.array(batch, dtype=np.int64))
    if isinstance(elem, float):
        return Tensor._make(np.array(batch, dtype=np.float64))
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, collections.abc.Mapping):
        try:
            return type(elem)({k: default_collate([d[k] for d in batch]) for k in elem})
        except TypeError:
            return {k: default_collate([d[k] for d in batch]) for k in elem}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        if any(len(b) != size for b in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        return [default_collate(list(s)) for s in zip(*batch)]
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, "
                    f"dicts or lists; found {type(elem).__name__}")


def default_convert(data):
    """What a loader without batching (batch_size=None) yields: numpy arrays become
    Tensors, containers are converted element-wise, everything else is unchanged."""
    from .._tensor import Tensor
    if isinstance(data, np.ndarray) and data.dtype.kind not in "OSU":
        return Tensor._make(data)
    if isinstance(data, collections.abc.Mapping):
        return {k: default_convert(v) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(v) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(default_convert(v) for v in data)
    return data


class _WorkerInfo:
    def __init__(self, id, num_workers, seed, dataset):
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset


_worker_local = threading.local()


def get_worker_info():
    """In a loader worker thread: its (id, num_workers, seed, dataset); else None."""
    return getattr(_worker_local, "info", None)


class DataLoader:
    """Iterate over a dataset in batches.

    Arguments (PyTorch's): ``batch_size`` (None: no batching), ``shuffle`` (a new random
    order every epoch), ``sampler`` / ``batch_sampler`` (your own order; exclusive with
    ``shuffle`` and, for batch_sampler, with batch_size/drop_last), ``drop_last``,
    ``collate_fn``, ``generator`` (a deepseek.Generator: reproducible shuffling), and
    ``num_workers``: 0 loads in the calling thread; N > 0 loads batches ahead in N
    threads (numpy releases the GIL in the copies), still in order. deepseek extension:
    ``seed=`` is shorthand for ``generator=deepseek.Generator().manual_seed(seed)``.

    Map-style datasets that can gather a whole batch at once (TensorDataset, a Subset of
    one) are read with one gather per tensor instead of one call per sample.
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None,
                 num_workers=0, collate_fn=None, pin_memory=False, drop_last=False, timeout=0,
                 worker_init_fn=None, multiprocessing_context=None, generator=None, *,
                 prefetch_factor=None, persistent_workers=False, pin_memory_device="",
                 in_order=True, seed=None):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers option should be a non-negative integer, got "
                             f"{num_workers!r}")
        if multiprocessing_context is not None:
            raise NotImplementedError("DataLoader loads in threads (num_workers > 0), not "
                                      "processes: multiprocessing_context is not supported")
        if prefetch_factor is not None and num_workers == 0:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing "
                             "(num_workers > 0)")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if seed is not None:
            if generator is not None:
                raise ValueError("DataLoader: give seed= or generator=, not both")
            from ..random import Generator
            generator = Generator().manual_seed(seed)
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = 2 if prefetch_factor is None else prefetch_factor
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.generator = generator
        self.shuffle = shuffle
        self.batch_sampler_given = batch_sampler is not None
        self._iterable = isinstance(dataset, IterableDataset)

        if self._iterable:
            if shuffle not in (None, False):
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified "
                                 f"shuffle option, but got shuffle={shuffle}")
            if sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                                 "option, but got sampler=" + repr(sampler))
            if batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified "
                                 "batch_sampler option")
        else:
            shuffle = bool(shuffle)
            if sampler is not None and shuffle:
                raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size = None
            drop_last = False
        elif batch_size is None:
            if drop_last:
                raise ValueError("batch_size=None option disables auto-batching and is mutually "
                                 "exclusive with drop_last")
        elif not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got "
                             f"batch_size={batch_size!r}")

        if sampler is None and not self._iterable:
            sampler = (RandomSampler(dataset, generator=generator) if shuffle
                       else SequentialSampler(dataset))
        if batch_size is not None and batch_sampler is None and not self._iterable:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self._auto_collation = batch_sampler is not None or (self._iterable and batch_size is not None)
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn

    @property
    def _index_sampler(self):
        return self.batch_sampler if self.batch_sampler is not None else self.sampler

    def __len__(self):
        if self._iterable:
            n = len(self.dataset)  # TypeError when the stream has no length, like PyTorch
            if self.batch_size is not None:
                return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            return n
        return len(self._index_sampler)

    def _fetch(self, index):
        """One batch (or one sample without auto-collation) from the indices of one step."""
        if self._auto_collation:
            if self.collate_fn is default_collate:
                gather = getattr(self.dataset, "_get_batch", None)
                if gather is not None:
                    out = gather(index)
                    if out is not None:
                        return out
            getitems = getattr(self.dataset, "__getitems__", None)
            samples = getitems(index) if getitems is not None else [self.dataset[i] for i in index]
            return self.collate_fn(samples)
        return self.collate_fn(self.dataset[index])

    def _iter_iterable(self):
        it = iter(self.dataset)
        if self.batch_size is None:
            for sample in it:
                yield self.collate_fn(sample)
            return
        while True:
            chunk = list(itertools.islice(it, self.batch_size))
            if not chunk or (self.drop_last and len(chunk) < self.batch_size):
                return
            yield self.collate_fn(chunk)

    def __iter__(self):
        if self._iterable:
            if self.num_workers > 0:
                raise NotImplementedError("DataLoader: num_workers > 0 is not supported for "
                                          "an IterableDataset (its stream can't be split "
                                          "between threads); use num_workers=0")
            return self._iter_iterable()
        if self.num_workers == 0:
            return (self._fetch(index) for index in self._index_sampler)
        return self._iter_threads()

    def _iter_threads(self):
        """Fetch up to num_workers * prefetch_factor batches ahead, yield them in order."""
        counter = itertools.count()
        lock = threading.Lock()
        base_seed = int(np.random.SeedSequence().entropy % (2 ** 32)) if self.generator is None \
            else int(self.generator.numpy.integers(0, 2 ** 32))

        def init():
            with lock:
                wid = next(counter)
            _worker_local.info = _WorkerInfo(wid, self.num_workers, base_seed + wid, self.dataset)
            if self.worker_init_fn is not None:
                self.worker_init_fn(wid)

        ahead = max(1, self.num_workers * self.prefetch_factor)
        pool = ThreadPoolExecutor(max_workers=self.num_workers, initializer=init,
                                  thread_name_prefix="deepseek-dataloader")
        try:
            indices = iter(self._index_sampler)
            pending = collections.deque()
            for index in itertools.islice(indices, ahead):
                pending.append(pool.submit(self._fetch, index))
            while pending:
                fut = pending.popleft()
                batch = fut.result(timeout=self.timeout or None)
                nxt = next(indices, _DONE)
                if nxt is not _DONE:
                    pending.append(pool.submit(self._fetch, nxt))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self):
        return (f"DataLoader(dataset={type(self.dataset).__name__}, batch_size={self.batch_size}, "
                f"shuffle={bool(self.shuffle)}, drop_last={self.drop_last}, "
                f"num_workers={self.num_workers})")


_DONE = object()
