"""deepseek.data: datasets, samplers and the DataLoader (PyTorch's torch.utils.data API).

``DistributedSampler`` gives each rank its own slice of a dataset (deepseek.data.distributed).
"""
from .dataset import (Dataset, IterableDataset, TensorDataset, ConcatDataset, Subset,
                      random_split)
from .sampler import (Sampler, SequentialSampler, RandomSampler, SubsetRandomSampler,
                      WeightedRandomSampler, BatchSampler)
from .dataloader import DataLoader, default_collate, default_convert, get_worker_info
from .distributed import DistributedSampler

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "ConcatDataset", "Subset",
           "random_split", "Sampler", "SequentialSampler", "RandomSampler",
           "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler", "DataLoader",
           "default_collate", "default_convert", "get_worker_info", "DistributedSampler"]
