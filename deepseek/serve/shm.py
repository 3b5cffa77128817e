"""Shared-memory arenas between the server and its workers.

Each worker gets two arenas that the server creates: ``in`` (the batch's inputs, written by
the server) and ``out`` (the outputs, written by the worker). The worker maps both at start
and says so; the server then unlinks the names at once, so from that moment the memory lives
only as long as a process maps it and nothing can be left in /dev/shm, whoever dies and
however (SIGKILL included). :func:`sweep` covers the short window between creation and the
worker's first message.

The segments themselves are the project's (``deepseek.distributed.shm``, the collectives'
``Segment``, as the DataLoader uses them): names carry the server's job id
(``dsk_serve<pid>_...``), so under ``deepseek-run`` the launcher's sweep covers them too.
This module adds the tensor layout on top.
"""
import os

import numpy as np

from ..distributed import shm as _shm

ALIGN = 64      # every tensor starts on a cache line


def job_id(pid=None):
    """The job id in the segment names of the server with ``pid`` (default: this one)."""
    return f"serve{os.getpid() if pid is None else pid}"


def server_prefix(pid=None):
    """The /dev/shm name prefix of every segment of the server with ``pid``."""
    return _shm.job_prefix(job_id(pid))


def create(tag, size):
    """A new arena of ``size`` bytes of this server (sparse: pages commit when touched)."""
    return _shm.Segment.create(job_id(), tag, size)


def attach(name, size):
    """Map the arena ``name`` made by the server."""
    return _shm.Segment.attach(name, size)


def view(seg, dtype, shape, offset):
    """A numpy array over ``[offset, offset + nbytes)`` of the arena (no copy)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if offset < 0 or offset + n * dtype.itemsize > seg.size:
        raise ValueError(f"a tensor of {n * dtype.itemsize} bytes at offset {offset} does not "
                         f"fit the {seg.size}-byte shared-memory arena (raise --shm-size)")
    return np.frombuffer(seg.buf, dtype=dtype, count=n, offset=offset).reshape(shape)


def pack(seg, arrays):
    """Write ``arrays`` (``[(name, ndarray)]``) one after another into the arena; returns the
    layout ``[[name, dtype, shape, offset], ...]`` a peer passes to :func:`unpack`. Raises
    ValueError when they do not fit."""
    layout, off = [], 0
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.hasobject:
            raise ValueError(f"{name}: object arrays cannot travel through shared memory")
        view(seg, a.dtype, a.shape, off)[...] = a
        layout.append([name, a.dtype.str, list(a.shape), off])
        off += -(-a.nbytes // ALIGN) * ALIGN
    return layout


def unpack(seg, layout):
    """``{name: view}`` for a layout written by :func:`pack` (views into the arena: copy what
    must outlive the next batch)."""
    return {name: view(seg, np.dtype(dt), tuple(shape), off) for name, dt, shape, off in layout}


def sweep(pid=None):
    """Unlink every segment of the server with ``pid`` still named in /dev/shm."""
    return _shm.cleanup_job(job_id(pid))
