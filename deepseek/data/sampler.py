"""Samplers: which indices a DataLoader reads, in which order, and how they are batched."""
import numpy as np

__all__ = ["Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler",
           "WeightedRandomSampler", "BatchSampler"]


class Sampler:
    """Base class: an iterable of dataset indices (optionally with ``__len__``)."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self):  # pragma: no cover - abstract
        raise NotImplementedError


def _numpy_rng(generator):
    """The numpy Generator to draw an epoch's order from.

    With a deepseek.Generator, its own stream (it advances every epoch). Without one,
    a fresh stream seeded from the global deepseek generator, so ``deepseek.manual_seed``
    makes shuffling reproducible (PyTorch's behaviour with torch.manual_seed).
    """
    if generator is not None:
        return generator.numpy
    from .. import random as ds_random
    seed = int(ds_random.default_generator.numpy.integers(0, 2 ** 63 - 1))
    return np.random.Generator(np.random.PCG64(seed))


class SequentialSampler(Sampler):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


#: indices drawn per numpy call with replacement: enough to amortise the call, small
#: enough that ``num_samples=10**10`` costs kilobytes, not the 74.5 GiB of one big draw.
#: (numpy's int64 ``integers`` stream is the same drawn in chunks or at once.)
_CHUNK = 4096


def _draws_with_replacement(rng, n, num_samples):
    """``num_samples`` uniform indices in [0, n), drawn lazily in chunks (PyTorch draws
    32 at a time)."""
    full, rest = divmod(num_samples, _CHUNK)
    for _ in range(full):
        yield from rng.integers(0, n, size=_CHUNK).tolist()
    if rest:
        yield from rng.integers(0, n, size=rest).tolist()


def _permutations(rng, n, num_samples):
    """``num_samples`` indices as whole permutations of range(n), the last one cut short
    (PyTorch's order for ``replacement=False`` with ``num_samples > n``); one
    permutation is held at a time."""
    full, rest = divmod(num_samples, n)
    for _ in range(full):
        yield from rng.permutation(n).tolist()
    if rest:
        yield from rng.permutation(n)[:rest].tolist()


class RandomSampler(Sampler):
    """A random permutation each epoch (or ``num_samples`` draws with replacement).

    Indices are generated lazily as the loader asks for them, so ``num_samples`` may be
    far larger than memory (``replacement=True, num_samples=10**10``). Without
    replacement, ``num_samples`` larger than the dataset gives back-to-back permutations.

    ``generator``: a deepseek.Generator for a reproducible order; by default the order is
    drawn from the global generator (``deepseek.manual_seed``).
    """

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = generator
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement should be a boolean value, but got replacement={replacement}")
        if not isinstance(self.num_samples, int) or self.num_samples <= 0:
            raise ValueError(f"num_samples should be a positive integer value, but got "
                             f"num_samples={self.num_samples}")

    @property
    def num_samples(self):
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self):
        n = len(self.data_source)
        # a loader resuming mid-epoch sets _replay: draw this epoch's order again from
        # the state its stream had when the order was first drawn
        replay, self._replay = getattr(self, "_replay", None), None
        if self.generator is not None:
            src = self.generator.numpy
            if replay is not None:
                src.bit_generator.state = replay
            #: the stream's state before this epoch's draw (what a loader's state_dict saves)
            self.epoch_rng_state = src.bit_generator.state
            # The indices are drawn lazily, so they come from a private stream seeded by
            # one draw of the generator: whoever else draws from it meanwhile (the
            # DataLoader takes its worker seeds from the same generator) cannot change
            # the order, and the generator advances by one draw per epoch.
            rng = np.random.Generator(np.random.PCG64(int(src.integers(0, 2 ** 63 - 1))))
        else:
            if replay is not None:
                rng = np.random.Generator(np.random.PCG64())
                rng.bit_generator.state = replay
            else:
                rng = _numpy_rng(None)
            self.epoch_rng_state = rng.bit_generator.state
        if n == 0:  # PyTorch fails here too (randint / divide by zero), less clearly
            raise ValueError(f"RandomSampler: cannot draw {self.num_samples} samples from an "
                             "empty data_source")
        if self.replacement:
            return _draws_with_replacement(rng, n, self.num_samples)
        return _permutations(rng, n, self.num_samples)

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given indices in a random order each epoch."""

    def __init__(self, indices, generator=None):
        self.indices = list(indices)
        self.generator = generator

    def __iter__(self):
        rng = _numpy_rng(self.generator)
        return (self.indices[i] for i in rng.permutation(len(self.indices)).tolist())

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices drawn with probability proportional to ``weights``."""

    def __init__(self, weights, num_samples, replacement=True, generator=None):
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"num_samples should be a positive integer value, but got "
                             f"num_samples={num_samples}")
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("weights must be a 1-d sequence of non-negative finite numbers "
                             "with a positive sum")
        if not replacement and num_samples > int((w > 0).sum()):
            raise ValueError(f"cannot draw {num_samples} samples without replacement from "
                             f"{int((w > 0).sum())} non-zero weights")
        self.weights, self.num_samples = w, num_samples
        self.replacement, self.generator = replacement, generator

    def __iter__(self):
        rng = _numpy_rng(self.generator)
        p = self.weights / self.weights.sum()
        return iter(rng.choice(len(p), size=self.num_samples, replace=self.replacement,
                               p=p).tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Group the indices of ``sampler`` into lists of ``batch_size`` (the last one
    shorter, or dropped with ``drop_last``)."""

    def __init__(self, sampler, batch_size, drop_last):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got "
                             f"batch_size={batch_size}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last should be a boolean value, but got drop_last={drop_last}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        batch = []
        for idx in self.sampler:
            batch.append(idx)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
