"""Datasets over memory-mapped files: a corpus of any size costs no RAM and opens at once.

Two layouts of one raw binary file (C order, no header) plus a small JSON sidecar
(``<path>.json``: dtype and shape) that :class:`MemmapWriter` writes:

- a token stream (LM pre-training): a 1-d array of token ids (uint16 for vocabularies
  up to 65536, else uint32); ``MemmapDataset(path, seq_len=L)`` has one sample per
  window of ``L`` tokens every ``stride`` (default ``L``) tokens: ``(x, y)`` with ``y``
  the window shifted by one token (``targets=False``: just ``x``), as ``out_dtype``
  (int64, what embeddings index with);
- fixed-shape records (images, features): ``MemmapDataset(path)`` (or with ``dtype=``
  and ``shape=`` the record shape when there is no sidecar) has one sample per record.

Pages are read from the file only when a sample is read and stay in the page cache,
not in the process's own memory. The loader gathers a whole batch in one fancy-index
read (``_get_batch``) and tells the kernel which records come next
(:meth:`MemmapDataset.prefetch`, ``madvise(MADV_WILLNEED)``), so the reads of the next
batches overlap with the current one. Pickled into a worker process a dataset carries
only its path and layout; each process maps the file itself.
"""
import json
import mmap
import os

import numpy as np

from ._batchcodec import arena_empty
from .dataset import Dataset

__all__ = ["MemmapDataset", "MemmapWriter"]

FORMAT = "deepseek.memmap/1"


def _converted(src, dtype):
    """``src`` as a new contiguous array of ``dtype``; in a loader worker, written
    straight into the batch's shared-memory slot (one write instead of three)."""
    out = arena_empty(src.shape, dtype)
    if out is None:
        out = np.empty(src.shape, dtype)
    np.copyto(out, src, casting="unsafe")
    return out


def _sidecar(path):
    return str(path) + ".json"


class MemmapWriter:
    """Append arrays to a memory-mappable file, then write its sidecar.

    ``MemmapWriter(path, dtype, record_shape=())``: ``append(array)`` writes rows whose
    trailing shape is ``record_shape`` (token streams: ``()``, any 1-d array of ids);
    ``close()`` (or leaving the ``with`` block) records dtype and shape in
    ``<path>.json``. Values are checked to fit ``dtype`` (token ids beyond uint16 need
    uint32).
    """

    def __init__(self, path, dtype, record_shape=()):
        self.path, self.dtype = str(path), np.dtype(dtype)
        self.record_shape = tuple(int(d) for d in record_shape)
        self.count = 0
        self._f = open(self.path, "wb")

    def append(self, array):
        a = np.asarray(array)
        if a.shape[a.ndim - len(self.record_shape):] != self.record_shape or \
                a.ndim < len(self.record_shape):
            raise ValueError(f"MemmapWriter: expected records of shape {self.record_shape}, "
                             f"got an array of shape {a.shape}")
        if a.dtype != self.dtype:
            if a.size and self.dtype.kind in "iu" and a.dtype.kind in "iub":
                info = np.iinfo(self.dtype)
                if a.min() < info.min or a.max() > info.max:
                    raise ValueError(f"MemmapWriter: values {a.min()}..{a.max()} do not fit "
                                     f"{self.dtype}")
            a = a.astype(self.dtype)
        a = np.ascontiguousarray(a).reshape((-1,) + self.record_shape)
        self._f.write(a.tobytes())
        self.count += a.shape[0]
        return self

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None
            with open(_sidecar(self.path), "w") as f:
                json.dump({"format": FORMAT, "dtype": self.dtype.str,
                           "shape": [self.count, *self.record_shape]}, f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemmapDataset(Dataset):
    """Samples read from a memory-mapped file (see the module for the layouts).

    ``path``: the raw file; ``dtype`` / ``shape`` (the record shape) when it has no
    sidecar; ``seq_len`` (and ``stride``, ``targets``, ``out_dtype``) for a token stream.
    """

    def __init__(self, path, *, dtype=None, shape=None, seq_len=None, stride=None,
                 targets=True, out_dtype=np.int64):
        self.path = os.fspath(path)
        meta = None
        if os.path.exists(_sidecar(self.path)):
            with open(_sidecar(self.path)) as f:
                meta = json.load(f)
            if meta.get("format") != FORMAT:
                raise ValueError(f"{_sidecar(self.path)}: not a {FORMAT} sidecar")
        if dtype is None:
            if meta is None:
                raise ValueError(f"MemmapDataset({self.path!r}): no sidecar, give dtype=")
            dtype = meta["dtype"]
        self.dtype = np.dtype(dtype)
        if shape is None:
            shape = meta["shape"][1:] if meta is not None else ()
        self.record_shape = tuple(int(d) for d in shape)
        self.seq_len = None if seq_len is None else int(seq_len)
        self.stride = self.seq_len if stride is None else int(stride)
        self.targets = bool(targets)
        self.out_dtype = np.dtype(out_dtype)
        record = self.dtype.itemsize * int(np.prod(self.record_shape, dtype=np.int64))
        self.num_records = os.path.getsize(self.path) // record
        if self.seq_len is not None:
            if self.record_shape:
                raise ValueError("MemmapDataset: seq_len= is for a 1-d token stream")
            if self.seq_len < 1 or self.stride < 1:
                raise ValueError("MemmapDataset: seq_len and stride must be positive")
        self._arr = None

    # the mapping is made lazily in each process; pickling carries the layout only
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_arr"] = None
        return d

    @property
    def array(self):
        """The whole file as a read-only np.memmap (mapped on first use)."""
        if self._arr is None:
            if self.num_records == 0:
                self._arr = np.zeros((0,) + self.record_shape, self.dtype)
            else:
                self._arr = np.memmap(self.path, self.dtype, "r",
                                      shape=(self.num_records,) + self.record_shape)
        return self._arr

    @property
    def _window(self):
        return self.seq_len + (1 if self.targets else 0)

    def __len__(self):
        if self.seq_len is None:
            return self.num_records
        return max(0, (self.num_records - self._window) // self.stride + 1)

    def _check(self, i):
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} is out of range for a MemmapDataset of {n} samples")
        return i

    def __getitem__(self, i):
        i = self._check(i)
        if self.seq_len is None:
            return np.array(self.array[i])
        w = np.asarray(self.array[i * self.stride:i * self.stride + self._window],
                       dtype=self.out_dtype)
        return (w[:-1], w[1:]) if self.targets else w

    def _get_batch(self, indices):
        """The collated batch of ``indices`` in one gather (what default_collate of the
        samples gives: a Tensor, or [x, y] for a token stream with targets)."""
        from .._tensor import Tensor
        idx = np.fromiter((self._check(i) for i in indices), np.int64, len(indices))
        if self.seq_len is None:
            out = arena_empty((len(idx),) + self.record_shape, self.dtype)
            if out is None:
                return Tensor._make(self.array[idx])
            # in a loader worker: read the records straight into the batch's slot
            return Tensor._make(np.take(self.array, idx, axis=0, out=out, mode="clip"))
        rows = (idx * self.stride)[:, None] + np.arange(self._window)
        w = self.array[rows]
        if self.targets:
            return [Tensor._make(_converted(w[:, :-1], self.out_dtype)),
                    Tensor._make(_converted(w[:, 1:], self.out_dtype))]
        return Tensor._make(_converted(w, self.out_dtype))

    def _span(self, i):
        """(first byte, end byte) in the file of sample ``i``."""
        rec = self.dtype.itemsize * int(np.prod(self.record_shape, dtype=np.int64))
        if self.seq_len is None:
            return i * rec, (i + 1) * rec
        return i * self.stride * rec, (i * self.stride + self._window) * rec

    def prefetch(self, indices):
        """Ask the kernel to start reading the pages of these samples now
        (``madvise(MADV_WILLNEED)``; a hint: does nothing where unsupported)."""
        mm = getattr(self.array, "_mmap", None)
        advice = getattr(mmap, "MADV_WILLNEED", None)
        if mm is None or advice is None or not hasattr(mm, "madvise"):
            return
        spans = sorted(self._span(int(i)) for i in indices)
        page = mmap.PAGESIZE
        start, end = None, None
        for a, b in spans + [(None, None)]:
            if a is not None and start is not None and a <= end + page:
                end = max(end, b)
                continue
            if start is not None:
                lo = start // page * page
                try:
                    mm.madvise(advice, lo, min(end, len(mm)) - lo)
                except (OSError, ValueError):
                    return
            start, end = a, b
