"""DataLoader: batches of a dataset (PyTorch's arguments and semantics), and collation.

With ``num_workers > 0`` batches are loaded in worker *processes* that hand them over
through shared memory (deepseek.data._procs; ``worker_mode="thread"`` keeps the
older in-process threads). ``state_dict()`` / ``load_state_dict()`` resume mid-epoch
(deepseek.data._resume).
"""
import collections
import collections.abc
import functools
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _resume
from ._batchcodec import arena_empty
from ._nested import copy_arrays, map_nested
from .dataset import IterableDataset
from .sampler import SequentialSampler, RandomSampler, BatchSampler

# Set by deepseek.profiler while a profile records: hook(stats, seconds) after each
# wait for a batch; None otherwise.
_wait_hook = None


class _Stats(_resume.LoaderStats):
    """``loader.stats``, which also tells the profiler about each wait."""

    def _add_wait(self, dt):
        super()._add_wait(dt)
        if _wait_hook is not None:
            _wait_hook(self, dt)

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
        if xp is np:
            return Tensor._make(_stack(arrays))
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


def _stack(arrays):
    """np.stack, in a loader worker straight into the batch's shared-memory slot (one
    write of the batch instead of two; see deepseek.data._batchcodec)."""
    dtype = arrays[0].dtype
    if all(a.dtype == dtype for a in arrays):
        out = arena_empty((len(arrays),) + arrays[0].shape, dtype)
        if out is not None:
            return np.stack(arrays, out=out)
    return np.stack(arrays)


def default_convert(data):
    """What a loader without batching (batch_size=None) yields: numpy arrays become
    Tensors, containers are converted element-wise, everything else is unchanged."""
    from .._tensor import Tensor

    def leaf(x):
        return Tensor._make(x) if isinstance(x, np.ndarray) and x.dtype.kind not in "OSU" else x
    return map_nested(data, leaf)


class _WorkerInfo:
    def __init__(self, id, num_workers, seed, dataset):
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset


_worker_local = threading.local()


def get_worker_info():
    """In a loader worker (process or thread): its (id, num_workers, seed, dataset);
    else None."""
    from . import _worker
    return getattr(_worker_local, "info", None) or _worker.info


def fetch_batch(collate_fn, auto_collation, dataset, index):
    """One batch (or one sample without auto-collation) from the indices of one step
    (what a loader and its workers run)."""
    if auto_collation:
        if collate_fn is default_collate:
            gather = getattr(dataset, "_get_batch", None)
            if gather is not None:
                out = gather(index)
                if out is not None:
                    return out
        getitems = getattr(dataset, "__getitems__", None)
        samples = getitems(index) if getitems is not None else [dataset[i] for i in index]
        return collate_fn(samples)
    return collate_fn(dataset[index])


class DataLoader:
    """Iterate over a dataset in batches.

    Arguments (PyTorch's): ``batch_size`` (None: no batching), ``shuffle`` (a new random
    order every epoch), ``sampler`` / ``batch_sampler`` (your own order; exclusive with
    ``shuffle`` and, for batch_sampler, with batch_size/drop_last), ``drop_last``,
    ``collate_fn``, ``generator`` (a deepseek.Generator: reproducible shuffling),
    ``timeout`` (seconds to wait for each batch from the workers; 0: forever),
    ``worker_init_fn(worker_id)``, ``multiprocessing_context`` ("fork", "forkserver",
    "spawn" or a context; default: fork when this process runs no other thread, else
    forkserver), ``prefetch_factor`` (batches in flight per worker, default 2) and
    ``persistent_workers`` (keep the workers from one epoch to the next).

    ``num_workers``: 0 loads in the calling thread; N > 0 loads in N worker processes,
    still in sampler order, each batch written into shared memory and handed over as
    views without pickling or copying (see deepseek.data._procs: what a held batch
    keeps, how failures are reported). Batches must then be made of arrays, tensors,
    numbers, strings and containers of them. deepseek extensions: ``seed=`` is
    shorthand for ``generator=deepseek.Generator().manual_seed(seed)``;
    ``worker_mode="thread"`` loads in N threads instead (no pickling of the dataset,
    but Python code holds the GIL); ``copy=True`` copies each batch out of shared
    memory (its slot is reused at once); ``loader.stats`` says how long the loop waited
    for its batches.

    An IterableDataset with ``num_workers > 0`` is iterated by each worker on its own
    copy (``get_worker_info()`` lets the copy shard itself), the workers' batches
    interleaved in turn, as PyTorch does (deepseek.data._stream).

    Map-style datasets that can gather a whole batch at once (TensorDataset, a Subset of
    one) are read with one gather per tensor instead of one call per sample.
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None,
                 num_workers=0, collate_fn=None, pin_memory=False, drop_last=False, timeout=0,
                 worker_init_fn=None, multiprocessing_context=None, generator=None, *,
                 prefetch_factor=None, persistent_workers=False, pin_memory_device="",
                 in_order=True, seed=None, worker_mode="process", copy=False):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers option should be a non-negative integer, got "
                             f"{num_workers!r}")
        if worker_mode not in ("process", "thread"):
            raise ValueError(f"worker_mode must be 'process' or 'thread', got {worker_mode!r}")
        if prefetch_factor is not None and num_workers == 0:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing "
                             "(num_workers > 0)")
        if prefetch_factor is not None and (not isinstance(prefetch_factor, int)
                                            or prefetch_factor < 1):
            raise ValueError(f"prefetch_factor must be a positive integer, got {prefetch_factor!r}")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
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
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.persistent_workers = persistent_workers
        self.worker_mode = worker_mode
        self.copy = copy
        self.generator = generator
        self.seed = seed
        self.shuffle = shuffle
        self.batch_sampler_given = batch_sampler is not None
        self._iterable = isinstance(dataset, IterableDataset)
        self.stats = _Stats()
        self._pool = None           # persistent workers
        self._epoch = 0             # epochs completed (and the auto-sharded sampler's epoch)
        self._tracker = None
        self._resume_state = None
        self._stream_token = 0      # IterableDataset epochs started (names each to workers)

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

        self._auto_sharded = False
        if sampler is None and not self._iterable:
            sampler = self._default_sampler(dataset, shuffle, generator)
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

    def _default_sampler(self, dataset, shuffle, generator):
        return (RandomSampler(dataset, generator=generator) if shuffle
                else SequentialSampler(dataset))

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
        return fetch_batch(self.collate_fn, self._auto_collation, self.dataset, index)

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

    # ---- one epoch --------------------------------------------------------------

    def _epoch_indices(self):
        """(tracker, the epoch's batch indices), starting where a loaded state says."""
        resume, self._resume_state = self._resume_state, None
        s = self.sampler
        kind = _resume.sampler_kind(s)
        per_sample = self.batch_size is not None and not self.batch_sampler_given
        unit = "sample" if (per_sample or self.batch_size is None) and \
            not self.batch_sampler_given else "batch"
        if kind == "distributed":
            if self._auto_sharded:
                s.set_epoch(self._epoch)
            if resume is not None and resume["epoch"] == s.epoch:
                s.set_start(resume["position"])
            tracker = _resume.Tracker(s.epoch, s._start_position(), s.num_replicas, unit, kind)
            samples = iter(s)
            skip = 0
        else:
            if resume is not None and resume.get("rng") is not None and kind == "random":
                s._replay = resume["rng"]
            skip = resume["position"] if resume is not None else 0
            tracker = _resume.Tracker(self._epoch, skip, 1, unit, kind)
            samples = iter(s) if s is not None else None
            if kind == "random":
                tracker.rng = s.epoch_rng_state
        if per_sample:
            if skip:
                samples = itertools.islice(samples, skip, None)
            indices = _resume.batched(samples, self.batch_size, self.drop_last)
        elif self.batch_size is None and not self.batch_sampler_given:
            indices = itertools.islice(samples, skip, None) if skip else samples
        else:   # the user's batch_sampler: skip the batches already seen
            indices = iter(self.batch_sampler)
            if skip:
                indices = itertools.islice(indices, skip, None)
        return tracker, _resume.counting(indices, tracker, per_sample)

    def _epoch_done(self, tracker):
        self._epoch = tracker.epoch + 1

    def __iter__(self):
        if self._iterable:
            return self._iter_stream()
        tracker, indices = self._epoch_indices()
        self._tracker = tracker
        if self.num_workers == 0:
            inner = (self._fetch(index) for index in indices)
        elif self.worker_mode == "thread":
            inner = self._iter_threads(indices)
        else:
            inner = self._iter_processes(indices)
        if self.pin_memory:
            from ._pin import pin_iter
            inner = pin_iter(inner, self.pin_memory_device)
        return _resume.EpochIter(inner, tracker, self.stats, self._epoch_done)

    def _iter_stream(self):
        """One epoch of an IterableDataset: in this thread, or interleaved from worker
        processes that each iterate their own copy (deepseek.data._stream). A loaded
        state skips the batches its epoch had already yielded (exact when each worker's
        stream is the same again, as a stream sharded by worker id and seeded is)."""
        if self.num_workers and self.worker_mode == "thread":
            raise NotImplementedError("DataLoader: an IterableDataset with worker_mode="
                                      "'thread' is not supported (threads would share one "
                                      "copy of the stream); use worker_mode='process'")
        resume, self._resume_state = self._resume_state, None
        skip = resume["position"] if resume is not None else 0
        tracker = _resume.Tracker(self._epoch, skip, 1, "batch", "iterable")
        self._tracker = tracker
        if self.num_workers == 0:
            inner = self._iter_iterable()
        else:
            from ._stream import StreamFetch, StreamIter
            pool = self._worker_pool(StreamFetch(self.collate_fn, self.batch_size,
                                                 self.drop_last))
            self._stream_token += 1   # a new iterator in every worker, also persistent ones
            inner = StreamIter(pool, self._stream_token, self.timeout,
                               own_pool=not self.persistent_workers)
            inner = _copying(inner) if self.copy else inner
        if skip:
            inner = _resume.skipping(inner, skip)
        if self.pin_memory:
            from ._pin import pin_iter
            inner = pin_iter(inner, self.pin_memory_device)
        return _resume.EpochIter(inner, tracker, self.stats, self._epoch_done)

    def _worker_pool(self, fetch):
        """The persistent pool if there is one, else a new pool of worker processes."""
        from ._procs import WorkerPool
        pool = self._pool
        if pool is None or pool.closed:
            pool = WorkerPool(self.dataset, fetch, self.num_workers, self._base_seed(),
                              self.worker_init_fn, self.multiprocessing_context,
                              self.prefetch_factor)
            self._pool = pool if self.persistent_workers else None
        return pool

    def _base_seed(self):
        return int(np.random.SeedSequence().entropy % (2 ** 32)) if self.generator is None \
            else int(self.generator.numpy.integers(0, 2 ** 32))

    def _iter_processes(self, indices):
        from ._procs import ProcessIter
        pool = self._worker_pool(functools.partial(fetch_batch, self.collate_fn,
                                                   self._auto_collation))
        it = ProcessIter(pool, indices, self.timeout, own_pool=not self.persistent_workers)
        return _copying(it) if self.copy else it

    def _iter_threads(self, indices):
        """Fetch up to num_workers * prefetch_factor batches ahead, yield them in order."""
        counter = itertools.count()
        lock = threading.Lock()
        base_seed = self._base_seed()

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

    # ---- state ------------------------------------------------------------------

    def state_dict(self):
        """Where this loader stands: JSON-able data that :meth:`load_state_dict` of a
        loader over the same dataset (same batch size, sampler kind and seed; with a
        DistributedSampler any number of ranks) resumes from at the next unseen sample.
        Mid-epoch it is the running epoch's position; after a complete epoch, the start
        of the next one."""
        tr, s = self._tracker, self.sampler
        kind = self._state_kind()
        replicas = s.num_replicas if kind == "distributed" else 1
        unit = "batch" if self.batch_sampler_given or self._iterable else "sample"
        state = {"version": _resume.VERSION, "kind": kind, "num_replicas": replicas,
                 "batch_size": self.batch_size, "unit": unit, "rng": None}
        if tr is not None and not tr.done:          # mid-epoch
            state.update(epoch=tr.epoch, position=tr.position(), rng=tr.rng)
        elif tr is None and self._resume_state is not None:   # loaded, not yet iterated
            state.update(self._resume_state)
        else:                                       # the start of the next epoch
            epoch = self._epoch
            if tr is None and kind == "distributed" and not self._auto_sharded:
                epoch = s.epoch
            state.update(epoch=epoch, position=0)
            if kind == "random" and s.generator is not None:
                state["rng"] = s.generator.numpy.bit_generator.state
        return state

    def _state_kind(self):
        return "iterable" if self._iterable else _resume.sampler_kind(self.sampler)

    def load_state_dict(self, state):
        """Resume at the position ``state`` (from :meth:`state_dict`) records: the next
        ``iter(loader)`` starts at the first sample not yet seen. With a
        DistributedSampler the sampler's epoch is set to the state's, and the rest of
        that epoch is split between this loader's ranks (which may be more or fewer
        than the saving ones)."""
        state = _resume.check_state(state)
        kind = self._state_kind()
        if (state["kind"] == "iterable") != self._iterable:
            kinds = ("a map-style dataset", "an IterableDataset")
            raise ValueError(f"DataLoader.load_state_dict: the state is of a loader over "
                             f"{kinds[state['kind'] == 'iterable']}, this one is over "
                             f"{kinds[self._iterable]} ({type(self.dataset).__name__})")
        if (state["kind"] == "distributed") != (kind == "distributed"):
            raise ValueError(f"DataLoader.load_state_dict: the state is of a loader with a "
                             f"{state['kind']} sampler, this one's is {kind}")
        if kind != "distributed" and state["num_replicas"] != 1:
            raise ValueError("DataLoader.load_state_dict: a state of several ranks needs a "
                             "DistributedSampler")
        if state.get("batch_size") != self.batch_size and state["unit"] == "batch":
            raise ValueError("DataLoader.load_state_dict: the state counts batches of "
                             f"{state.get('batch_size')}, this loader's are {self.batch_size}")
        if kind == "distributed":
            if not self._auto_sharded:
                self.sampler.set_epoch(state["epoch"])
        self._epoch = int(state["epoch"])
        self._resume_state = {"epoch": int(state["epoch"]), "position": int(state["position"]),
                              "rng": state.get("rng")}
        self._tracker = None

    def close(self):
        """Stop persistent workers now (they also stop when the loader is collected)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self):
        return (f"{type(self).__name__}(dataset={type(self.dataset).__name__}, "
                f"batch_size={self.batch_size}, shuffle={bool(self.shuffle)}, "
                f"drop_last={self.drop_last}, num_workers={self.num_workers})")


def _copying(it):
    try:
        for batch in it:
            yield copy_arrays(batch)
    finally:
        it.close()


_DONE = object()
