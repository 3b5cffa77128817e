"""Buffers whose memory can be handed back while their address stays valid.

ZeRO-3 frees a unit's gathered parameters right after its forward, yet the autograd
graph keeps views of them (saved for backward) and backward gathers into the same
place again. PyTorch resizes the storage to 0 and back; numpy cannot, so the gathered
buffer is a private anonymous mapping and "freeing" it is ``madvise(MADV_DONTNEED)``:
the pages go back to the OS (the resident size drops), the mapping stays, and the next
write (the next all-gather) faults fresh zero pages in.
"""
import mmap

import numpy as np

_PAGE = mmap.PAGESIZE


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

    def release(self):
        """Give the pages back (the contents become zeros)."""
        self._map.madvise(mmap.MADV_DONTNEED)
