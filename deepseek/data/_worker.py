"""The loop of one DataLoader worker process.

What crosses, in which direction:

- main -> worker, at start: the dataset, collate_fn and worker_init_fn, through
  multiprocessing's own start mechanism (pickled under spawn/forkserver, inherited
  under fork) -- the user's code, as with PyTorch.
- main -> worker, per batch: ``(seq, index, slot_name, slot_size, retire)`` pickled
  on the worker's pipe (the parent is trusted; the worker unpickles only this).
- worker -> main, per batch: one tag byte + JSON, never pickle: ``B`` a batch written
  into the slot (the header of :mod:`._batchcodec`), ``N`` the slot is too small
  (``need`` bytes; the batch stays cached until the main process sends a bigger slot),
  ``E`` an exception (type name, message, formatted traceback, the failing index),
  ``S`` an IterableDataset worker's stream has ended (:mod:`._stream`).

The worker maps each slot of its own on first use and unmaps the ones the main process
retires. It ignores SIGINT (Ctrl-C is the main process's to handle), exits when its pipe
closes, when it is told to, or when its parent is gone; on the way out it unlinks every
slot name it mapped (the main process normally has already: unlinking twice is fine).
"""
import json
import os
import random
import signal
import sys
import traceback

import numpy as np

from . import _batchcodec as codec
from ._nested import copy_arrays
from ._stream import StreamEnd, StreamFetch

_POLL = 0.5     # how often an idle worker checks that its parent is still alive


class WorkerInfo:
    """What :func:`deepseek.data.get_worker_info` returns inside a worker."""

    def __init__(self, id, num_workers, seed, dataset):
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset

    def __repr__(self):
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


#: set in a worker process (deepseek.data.get_worker_info reads it)
info = None


def _seed_all(seed):
    from .. import random as ds_random
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    ds_random.manual_seed(seed)


def _send(conn, tag, obj):
    conn.send_bytes(tag + json.dumps(obj, separators=(",", ":")).encode())


def _error(conn, seq, index, exc, stream=False):
    """Report ``exc``; ``index`` names what failed (for a stream: its batch number)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        where = repr(index)
    except Exception:
        where = "?"
    _send(conn, b"E", {"seq": seq, "type": type(exc).__name__, "msg": str(exc),
                       "tb": text, "index": where[:200], "stream": stream})


def _failed(conn, seq, index, fetch, exc, made):
    """Report ``exc`` for batch ``seq``: by its indices, or for a stream by its number
    in the worker's stream (``made``: the batch was made, its layout failed)."""
    if isinstance(fetch, StreamFetch):
        _error(conn, seq, fetch.made - made, exc, stream=True)
    else:
        _error(conn, seq, index, exc)


def _serve(conn, seq, index, name, size, dataset, fetch, segments, cached):
    """Make batch ``seq`` and answer for it (``B``, ``N``, ``S`` or ``E``). A fresh batch
    is collated straight into its slot (an Arena, see _batchcodec); the arena's views
    die with this call, so the slot can be unmapped when it is retired."""
    from ..distributed import shm
    seg = None
    if name is not None:
        seg = segments.get(name)
        if seg is None:
            seg = segments[name] = shm.Segment.attach(name, size)
    batch = cached.pop(seq, None)
    arena = None
    if batch is None:
        arena = codec.Arena(seg.buf, size) if seg is not None else None
        codec.set_arena(arena)
        try:
            batch = fetch(dataset, index)
        except StreamEnd:
            _send(conn, b"S", {"seq": seq})
            return
        except Exception as e:
            _failed(conn, seq, index, fetch, e, made=False)
            return
        finally:
            codec.set_arena(None)
    try:
        tree, arrays, nbytes = codec.layout(batch, arena)
    except Exception as e:
        _failed(conn, seq, index, fetch, e, made=True)
        return
    if seg is None or nbytes > size:
        # kept for the bigger slot the main process will send; copied out of this
        # one first when collated into it (this slot is about to be retired)
        cached[seq] = batch if arena is None or not arena.end else copy_arrays(batch)
        _send(conn, b"N", {"seq": seq, "need": nbytes})
        return
    codec.write(seg.buf, arrays)
    del batch, arrays
    if arena is not None:
        arena.release()
    conn.send_bytes(b"B" + json.dumps({"seq": seq, "tree": tree, "nbytes": nbytes},
                                      separators=(",", ":")).encode())


def worker_main(wid, num_workers, seed, conn, dataset, fetch, worker_init_fn, parent):
    """Run worker ``wid`` until told to stop (the target of each worker process)."""
    global info
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = WorkerInfo(wid, num_workers, seed, dataset)
    segments = {}           # name -> Segment mapped here
    # seq -> batch waiting for a bigger slot; several may wait (a stream's batches
    # cannot be made again: each one asked before the first slot came is kept)
    cached = {}
    try:
        _seed_all(seed)
        if worker_init_fn is not None:
            try:
                worker_init_fn(wid)
            except Exception as e:
                _error(conn, -1, "worker_init_fn", e)
                return
        while True:
            if not conn.poll(_POLL):
                if os.getppid() != parent:
                    return
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            seq, index, name, size, retire = msg
            for old in retire:
                seg = segments.pop(old, None)
                if seg is not None:
                    seg.unlink()
                    seg.close()
            _serve(conn, seq, index, name, size, dataset, fetch, segments, cached)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the main process went away
    finally:
        for seg in segments.values():
            seg.unlink()
            seg.close()
        try:
            conn.close()
        except OSError:
            pass
        sys.stdout.flush()
