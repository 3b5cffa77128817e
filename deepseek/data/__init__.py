"""deepseek.data: datasets, samplers and the DataLoader (PyTorch's torch.utils.data API).

``DistributedSampler`` gives each rank its own slice of a dataset (deepseek.data.distributed).
``FastDataLoader`` (deepseek.data.fast) is the DataLoader that shards itself under a
process group and prefetches memory-mapped data; with ``num_workers > 0`` both load in
worker processes that hand batches over through shared memory (deepseek.data._procs).
``MemmapDataset`` / ``MemmapWriter`` (deepseek.data.memmap): token streams and record
files of any size, memory-mapped.
"""
from .dataset import (Dataset, IterableDataset, TensorDataset, ConcatDataset, Subset,
                      random_split)
from .sampler import (Sampler, SequentialSampler, RandomSampler, SubsetRandomSampler,
                      WeightedRandomSampler, BatchSampler)
from .dataloader import DataLoader, default_collate, default_convert, get_worker_info
from .distributed import DistributedSampler
from .fast import FastDataLoader
from .memmap import MemmapDataset, MemmapWriter
from ._procs import WorkerDiedError, WorkerError

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "ConcatDataset", "Subset",
           "random_split", "Sampler", "SequentialSampler", "RandomSampler",
           "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler", "DataLoader",
           "FastDataLoader", "default_collate", "default_convert", "get_worker_info",
           "DistributedSampler", "MemmapDataset", "MemmapWriter", "WorkerDiedError",
           "WorkerError"]
