"""Data sharding and mid-epoch resume: each train/val source as a :class:`Feed`.

A DataLoader over a sized dataset whose order is sequential or a plain shuffle gets
the Trainer's DistributedSampler (this worker's slice, as the strategy's
``distributed_sampler_kwargs`` say; shuffled by (seed, epoch) when the loader
shuffled); a DistributedSampler of the user's own is kept. Either way each epoch's
indices are known up front, so the loader is rebuilt per epoch (same batch size,
drop_last, collate_fn, workers) over exactly the indices still to come. Anything else
(custom samplers, iterable datasets, plain iterables of batches) is iterated as it
is, skipping consumed batches by reading them; in a job of several workers it must
then shard the data itself, which custom samplers cannot: refused.

The checkpoint's loop position (epoch, batches consumed) with the sampler's seed and
the world size that wrote it is the loader's state (what ``DataLoader.state_dict``
records): a resume on another number of workers (:meth:`Feed.resume`) starts at the
same place of the epoch's global order and splits the rest between the new workers,
no sample repeated or skipped (``DistributedSampler.set_start``).
"""
import itertools


class Feed:
    """One train or val source, sharded for ``strategy`` and shuffled with ``seed``."""

    def __init__(self, loader, strategy, seed):
        from ..data.distributed import DistributedSampler
        self.loader = loader
        self.info = _loader_info(loader)
        self.sampler = None
        self._resume = None     # (epoch, global position, batches in that epoch)
        if self.info is None:
            return
        kind = self.info["sampler"]
        split = strategy.distributed_sampler_kwargs
        if isinstance(kind, DistributedSampler):
            self.sampler = kind
        elif kind in ("sequential", "random"):
            self.sampler = DistributedSampler(
                self.info["dataset"], num_replicas=split["num_replicas"], rank=split["rank"],
                shuffle=kind == "random", seed=seed, drop_last=False)
        elif split["num_replicas"] > 1:
            raise ValueError(
                f"the DataLoader's sampler ({type(kind).__name__}) cannot be split between "
                f"{split['num_replicas']} workers by the Trainer: use shuffle=True/False (the "
                "Trainer inserts a DistributedSampler), or a deepseek.data.DistributedSampler")
        else:
            self.info = None  # a custom order on one worker: iterate as it is

    def resume(self, epoch, skip, saved_world):
        """The checkpoint was taken after ``skip`` batches of ``epoch`` by
        ``saved_world`` workers: with another number of workers now, continue that
        epoch at the same place of its global order (the first ``skip * batch_size *
        saved_world`` samples are seen) instead of at batch ``skip`` of the new split."""
        if self.info is None or not skip or saved_world == self.sampler.num_replicas:
            return
        bs = self.info["batch_size"]
        position = skip * bs * saved_world
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(position, epoch)
        left = len(self.sampler)
        per = left // bs if self.info["drop_last"] else -(-left // bs)
        self._resume = (epoch, position, skip + per)

    def num_batches(self):
        """Batches per epoch on this worker (None: unknown until the source ends)."""
        if self._resume is not None:
            return self._resume[2]
        if self.info is not None:
            n, bs = len(self.sampler), self.info["batch_size"]
            return n // bs if self.info["drop_last"] else -(-n // bs)
        try:
            return len(self.loader)
        except TypeError:
            return None

    def epoch(self, epoch, skip):
        """(batch_idx, batch) of ``epoch`` from batch ``skip`` on."""
        if self.info is None:
            return zip(itertools.count(skip), itertools.islice(iter(self.loader), skip, None))
        self.sampler.set_epoch(epoch)
        bs = self.info["batch_size"]
        if self._resume is not None and self._resume[0] == epoch:
            indices = list(self.sampler)     # the rest of the global order, split anew
        else:
            self.sampler.set_start(0, epoch)
            indices = list(self.sampler)[skip * bs:]
        self._resume = None
        return zip(itertools.count(skip), iter(_rebuild_loader(self.loader, self.info, indices)))


class _FixedSampler:
    """The indices of one (rest of an) epoch, as a sampler."""

    def __init__(self, indices):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _loader_info(loader):
    """What is needed to rebuild a deepseek DataLoader around other indices; None when
    it cannot be (not a DataLoader, own batch_sampler, no batching, unsized dataset).
    ``sampler``: 'sequential', 'random' (a plain shuffle), or the sampler object."""
    from ..data import DataLoader, RandomSampler, SequentialSampler
    if not isinstance(loader, DataLoader):
        return None
    dataset = getattr(loader, "dataset", None)
    bs = getattr(loader, "batch_size", None)
    if dataset is None or not isinstance(bs, int) or getattr(loader, "batch_sampler_given", False):
        return None
    try:
        len(dataset)
    except TypeError:
        return None
    sampler = getattr(loader, "sampler", None)
    if type(sampler) is SequentialSampler:
        kind = "sequential"
    elif type(sampler) is RandomSampler and not sampler.replacement \
            and sampler.num_samples == len(dataset):
        kind = "random"
    else:
        kind = sampler
    return {"dataset": dataset, "batch_size": bs, "drop_last": bool(loader.drop_last),
            "collate_fn": loader.collate_fn, "sampler": kind}


def _rebuild_loader(loader, info, indices):
    kwargs = {"batch_size": info["batch_size"], "drop_last": info["drop_last"],
              "sampler": _FixedSampler(indices), "collate_fn": info["collate_fn"]}
    workers = getattr(loader, "num_workers", 0)
    if workers:
        kwargs.update(num_workers=workers, prefetch_factor=loader.prefetch_factor,
                      worker_init_fn=loader.worker_init_fn, timeout=loader.timeout,
                      multiprocessing_context=getattr(loader, "multiprocessing_context", None),
                      worker_mode=getattr(loader, "worker_mode", "process"),
                      copy=getattr(loader, "copy", False))
    if getattr(loader, "pin_memory", False):
        kwargs.update(pin_memory=True, pin_memory_device=loader.pin_memory_device)
    return type(loader)(info["dataset"], **kwargs)


def as_list(loaders):
    """One loader, or a list of DataLoaders (a list of batches is one loader)."""
    from ..data import DataLoader
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)) and loaders \
            and all(isinstance(v, DataLoader) for v in loaders):
        return list(loaders)
    return [loaders]


def batch_size(batch):
    """Samples in a batch: the length of its first array-like leaf."""
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for b in batch:
            n = batch_size(b)
            if n:
                return n
        return 0
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 0
