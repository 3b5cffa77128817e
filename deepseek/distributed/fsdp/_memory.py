"""Buffers whose memory can be handed back while their address stays valid.

ZeRO-3 frees a unit's gathered parameters right after its forward, yet the autograd
graph keeps views of them (saved for backward) and backward gathers into the same
place again. PyTorch resizes the storage to 0 and back (into its caching allocator);
numpy cannot, so the gathered buffer is a private anonymous mapping and "freeing" it
is an ``madvise``: the mapping (and every view's address) stays, the pages go back.

Which advice (``DEEPSEEK_FSDP_RELEASE``):

* ``free`` (default): ``MADV_FREE``. The kernel takes the pages whenever it needs
  memory (before any swapping, at no I/O cost) and until then they stay where they
  are, so the next all-gather writes into them without a page fault. This is the
  analogue of PyTorch's caching allocator: memory that the process does not hold in
  use, that the system gets back under pressure. Measured on the 2-core test VM: a
  release + re-gather of one 8-block MLP unit (263 KB) costs 24 us with ``free`` and
  250 us with ``dontneed`` (64 page faults, each a VM exit); a ZeRO-3 step does 18 of
  them. The resident size drops only when the kernel reclaims.
* ``dontneed``: ``MADV_DONTNEED``. The pages go back at once (the resident size
  drops immediately, what a hard RSS budget needs) and the next write faults fresh
  zero pages in.
"""
import mmap

import numpy as np

from ... import env as envvars

_PAGE = mmap.PAGESIZE
_ADVICE = {"free": getattr(mmap, "MADV_FREE", mmap.MADV_DONTNEED),
           "dontneed": mmap.MADV_DONTNEED}


def release_advice():
    """The madvise advice ``release`` uses (``DEEPSEEK_FSDP_RELEASE``, read at each
    buffer's creation: 'free' or 'dontneed')."""
    return _ADVICE[envvars.get("DEEPSEEK_FSDP_RELEASE")]


class ReleasableBuffer:
    """``array``: a 1-D array of ``numel`` ``dtype`` elements whose pages can be
    released (:meth:`release`) and come back on the next write."""

    def __init__(self, numel, dtype):
        dtype = np.dtype(dtype)
        nbytes = max(int(numel) * dtype.itemsize, 1)
        self._map = mmap.mmap(-1, -(-nbytes // _PAGE) * _PAGE,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.array = np.frombuffer(self._map, dtype=dtype, count=int(numel))
        self.nbytes = int(numel) * dtype.itemsize
        self._advice = release_advice()

    def release(self):
        """Give the pages back (the contents become undefined: zeros or the old
        values; the next all-gather overwrites every element)."""
        try:
            self._map.madvise(self._advice)
        except OSError:   # a kernel without MADV_FREE (< 4.5): the strict form
            self._advice = mmap.MADV_DONTNEED
            self._map.madvise(self._advice)


class ReusedZeros:
    """A gradient bucket's allocator (``GradBucket(alloc=...)``) that hands out the
    same releasable memory every time, zero-filled from element ``zero_from`` on (0:
    all of it; a bucket passes its unpadded size, since every slot before that is
    overwritten by a gradient's copy, and a memset of it cost 0.3 ms per 1 MB unit per
    backward): FSDP makes a bucket's buffer at
    each backward and drops it after its reduce-scatter, and a fresh ``np.zeros`` of a
    bucket above malloc's mmap threshold faults every page in again (measured: 90 us
    per 263 KB bucket on the test VM, against 15 us for a memset of pages kept by
    ``MADV_FREE``). :meth:`release` gives the pages back as :meth:`ReleasableBuffer.
    release` does."""

    def __init__(self, zero_from=0):
        self._buf = None
        self._zero_from = int(zero_from)

    def __call__(self, numel, dtype):
        buf = self._buf
        if buf is None or buf.array.size != numel or buf.array.dtype != np.dtype(dtype):
            buf = self._buf = ReleasableBuffer(numel, dtype)
        buf.array[min(self._zero_from, numel):] = 0
        return buf.array

    def release(self):
        if self._buf is not None:
            self._buf.release()
