"""deepseek.data: datasets, samplers, DataLoader batching/shuffling/collation."""
import collections
import threading

import numpy as np
import pytest

import deepseek as ds
from deepseek.data import (BatchSampler, ConcatDataset, DataLoader, Dataset, IterableDataset,
                           RandomSampler, SequentialSampler, Subset, SubsetRandomSampler,
                           TensorDataset, WeightedRandomSampler, default_collate, random_split)


def xy(n=10):
    X = ds.tensor(np.arange(n * 3, dtype=np.float32).reshape(n, 3))
    y = ds.arange(n)
    return X, y


def labels(loader):
    return [b[1].tolist() for b in loader]


def test_tensor_dataset():
    X, y = xy()
    d = TensorDataset(X, y)
    assert len(d) == 10
    x5, y5 = d[5]
    assert x5.tolist() == [15.0, 16.0, 17.0] and y5.item() == 5
    with pytest.raises(ValueError, match="Size mismatch"):
        TensorDataset(X, ds.arange(9))
    with pytest.raises(TypeError, match="expected a Tensor"):
        TensorDataset(np.zeros(3))


@pytest.mark.parametrize("drop_last,expected", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batching_in_order_and_drop_last(drop_last, expected):
    X, y = xy()
    dl = DataLoader(TensorDataset(X, y), batch_size=4, drop_last=drop_last)
    assert len(dl) == len(expected)
    batches = list(dl)
    assert [len(b[1]) for b in batches] == expected
    assert sum(labels(dl), []) == list(range(sum(expected)))
    xb, yb = batches[0]
    assert xb.shape == (4, 3) and xb.dtype == ds.float32 and yb.dtype == ds.int64
    np.testing.assert_array_equal(xb.numpy(), X.numpy()[:4])


def test_shuffle_is_a_permutation_reproducible_by_seed_and_new_each_epoch():
    X, y = xy(50)
    d = TensorDataset(X, y)
    dl = DataLoader(d, batch_size=8, shuffle=True, seed=123)
    e1, e2 = sum(labels(dl), []), sum(labels(dl), [])
    assert sorted(e1) == list(range(50)) and sorted(e2) == list(range(50))
    assert e1 != e2 and e1 != list(range(50))
    again = DataLoader(d, batch_size=8, shuffle=True, seed=123)
    assert sum(labels(again), []) == e1 and sum(labels(again), []) == e2
    g = ds.Generator().manual_seed(123)
    assert sum(labels(DataLoader(d, batch_size=8, shuffle=True, generator=g)), []) == e1
    # without a generator: reproducible through the global seed
    ds.manual_seed(7)
    a = sum(labels(DataLoader(d, batch_size=8, shuffle=True)), [])
    ds.manual_seed(7)
    assert sum(labels(DataLoader(d, batch_size=8, shuffle=True)), []) == a
    # the features follow their labels
    for xb, yb in DataLoader(d, batch_size=8, shuffle=True, seed=1):
        np.testing.assert_array_equal(xb.numpy(), X.numpy()[yb.numpy()])


class DictDataset(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"img": np.full((2, 2), i, dtype=np.float32), "label": i, "w": i / 2,
                "name": f"s{i}", "pair": (ds.tensor([i, i]), True)}


def test_collate_dicts_numbers_strings_and_tuples():
    batch = next(iter(DataLoader(DictDataset(), batch_size=3)))
    assert batch["img"].shape == (3, 2, 2) and batch["img"].dtype == ds.float32
    assert batch["label"].tolist() == [0, 1, 2] and batch["label"].dtype == ds.int64
    assert batch["w"].dtype == ds.float64 and batch["w"].tolist() == [0.0, 0.5, 1.0]
    assert batch["name"] == ["s0", "s1", "s2"]
    pair = batch["pair"]
    assert pair[0].tolist() == [[0, 0], [1, 1], [2, 2]] and pair[1].dtype == ds.bool
    Point = collections.namedtuple("Point", "x y")
    out = default_collate([Point(1, 2.0), Point(3, 4.0)])
    assert isinstance(out, Point) and out.x.tolist() == [1, 3]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([ds.zeros(2), ds.zeros(3)])
    with pytest.raises(TypeError, match="found object"):
        default_collate([object()])


def test_custom_collate_sampler_batch_sampler_and_no_batching():
    X, y = xy()
    d = TensorDataset(X, y)
    dl = DataLoader(d, batch_size=3, collate_fn=lambda items: [int(t[1]) for t in items])
    assert list(dl) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    dl = DataLoader(d, batch_size=2, sampler=[9, 8, 7])
    assert labels(dl) == [[9, 8], [7]]
    bs = BatchSampler(SequentialSampler(d), batch_size=4, drop_last=True)
    dl = DataLoader(d, batch_sampler=bs)
    assert labels(dl) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(dl) == 2
    assert dl.batch_sampler_given
    dl = DataLoader(d, batch_size=None)
    first = next(iter(dl))
    assert first[1].item() == 0 and len(dl) == 10
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(d, sampler=[1], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(d, batch_sampler=bs, batch_size=4)
    with pytest.raises(ValueError, match="positive integer"):
        DataLoader(d, batch_size=0)


def test_samplers():
    d = list(range(10))
    assert list(SequentialSampler(d)) == d
    g = ds.Generator().manual_seed(0)
    r = list(RandomSampler(d, generator=g))
    assert sorted(r) == d
    r2 = list(RandomSampler(d, replacement=True, num_samples=25, generator=g))
    assert len(r2) == 25 and all(0 <= i < 10 for i in r2)
    r3 = list(RandomSampler(d, num_samples=15, generator=g))
    assert len(r3) == 15 and sorted(r3[:10]) == d
    assert sorted(SubsetRandomSampler([3, 5, 7], generator=g)) == [3, 5, 7]
    w = list(WeightedRandomSampler([0, 0, 1, 0], 6, generator=g))
    assert w == [2] * 6
    assert list(BatchSampler(d, 4, False)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(BatchSampler(d, 4, True)) == 2



def test_random_sampler_with_replacement_draws_lazily():
    # issue 13: num_samples=10**10 used to build every index at once (74.5 GiB)
    import itertools
    import time
    import tracemalloc
    s = RandomSampler(range(7), replacement=True, num_samples=10 ** 10,
                      generator=ds.Generator().manual_seed(3))
    assert len(s) == 10 ** 10
    assert len(BatchSampler(s, 64, drop_last=False)) == -(-10 ** 10 // 64)
    tracemalloc.start()
    t0 = time.perf_counter()
    first = list(itertools.islice(iter(s), 1000))
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(first) == 1000 and set(first) <= set(range(7)) and len(set(first)) == 7
    assert took < 2.0, took
    assert peak < 4 * 2 ** 20, peak          # a few chunks, not the 80 GB of the whole draw
    again = RandomSampler(range(7), replacement=True, num_samples=10 ** 10,
                          generator=ds.Generator().manual_seed(3))
    assert list(itertools.islice(iter(again), 1000)) == first


def test_random_sampler_without_replacement_and_num_samples():
    # PyTorch: num_samples > n gives back-to-back permutations, the last one cut short
    s = RandomSampler(range(10), num_samples=25, generator=ds.Generator().manual_seed(1))
    r = list(s)
    assert len(r) == len(s) == 25
    assert sorted(r[:10]) == sorted(r[10:20]) == list(range(10))
    assert len(set(r[20:])) == 5
    short = list(RandomSampler(range(10), num_samples=4, generator=ds.Generator().manual_seed(1)))
    assert len(set(short)) == 4
    with pytest.raises(ValueError, match="empty data_source"):
        iter(RandomSampler([], num_samples=3))
    with pytest.raises(ValueError, match="positive integer"):
        RandomSampler(range(3), num_samples=0)


def test_random_sampler_generator_semantics():
    # like PyTorch: the same seed gives the same order, the generator advances so every
    # epoch differs, and without generator= the global seed decides
    g = ds.Generator().manual_seed(5)
    s = RandomSampler(range(50), generator=g)
    e1, e2 = list(s), list(s)
    assert e1 != e2 and sorted(e1) == sorted(e2) == list(range(50))
    assert list(RandomSampler(range(50), generator=ds.Generator().manual_seed(5))) == e1
    # the order is drawn lazily, but draws from the same generator while iterating
    # (the DataLoader takes worker seeds from it) do not change it
    g2 = ds.Generator().manual_seed(5)
    it = iter(RandomSampler(range(50), generator=g2))
    g2.numpy.integers(0, 2 ** 32, size=10)
    assert list(it) == e1
    ds.manual_seed(11)
    a = list(RandomSampler(range(50)))
    ds.manual_seed(11)
    assert list(RandomSampler(range(50))) == a

def test_subset_concat_and_random_split():
    X, y = xy()
    d = TensorDataset(X, y)
    s = Subset(d, [7, 2, 5])
    assert len(s) == 3 and s[0][1].item() == 7
    assert labels(DataLoader(s, batch_size=2)) == [[7, 2], [5]]  # the batch gather path
    c = ConcatDataset([s, d])
    assert len(c) == 13 and c[3][1].item() == 0 and c[-1][1].item() == 9
    assert len(d + d) == 20
    a, b = random_split(d, [7, 3], generator=ds.Generator().manual_seed(0))
    ids = sorted([int(t[1]) for t in a] + [int(t[1]) for t in b])
    assert len(a) == 7 and len(b) == 3 and ids == list(range(10))
    a2, _ = random_split(d, [7, 3], generator=ds.Generator().manual_seed(0))
    assert a2.indices == a.indices
    parts = random_split(range(10), [0.5, 0.3, 0.2], generator=ds.Generator().manual_seed(1))
    assert [len(p) for p in parts] == [5, 3, 2]
    with pytest.raises(ValueError, match="does not equal the length"):
        random_split(d, [5, 6])


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


@pytest.mark.timeout(60)
def test_iterable_dataset(shm_guard):
    assert [b.tolist() for b in DataLoader(Stream(7), batch_size=3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.tolist() for b in DataLoader(Stream(7), batch_size=3, drop_last=True)] == \
        [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="shuffle"):
        DataLoader(Stream(3), shuffle=True)
    # worker processes each iterate their own copy: a stream that does not shard itself
    # (get_worker_info) comes once per worker, interleaved, as in PyTorch
    assert [b.tolist() for b in DataLoader(Stream(3), num_workers=2, timeout=30)] == \
        [[0], [0], [1], [1], [2], [2]]
    with pytest.raises(NotImplementedError, match="worker_mode='process'"):
        iter(DataLoader(Stream(3), num_workers=2, worker_mode="thread"))


def test_worker_threads_keep_the_order():
    seen = set()

    class Slow(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            seen.add(threading.get_ident())
            return i

    inits = []
    dl = DataLoader(Slow(), batch_size=3, num_workers=3, worker_init_fn=inits.append,
                    worker_mode="thread")
    assert sum((b.tolist() for b in dl), []) == list(range(40))
    assert sorted(inits) == [0, 1, 2][:len(inits)] and inits
    assert threading.get_ident() not in seen
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(Slow(), num_workers=-1)
    with pytest.raises(ValueError, match="worker_mode"):
        DataLoader(Slow(), num_workers=1, worker_mode="fiber")


def test_worker_processes_are_the_default(shm_guard):
    import os

    class Pid(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return np.array([i, os.getpid()])

    rows = np.concatenate([b.numpy() for b in DataLoader(Pid(), batch_size=2, num_workers=2)])
    assert rows[:, 0].tolist() == list(range(6))
    assert os.getpid() not in set(rows[:, 1].tolist()) and len(set(rows[:, 1].tolist())) == 2
