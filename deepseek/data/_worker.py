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
  ``E`` an exception (type name, message, formatted traceback, the failing index).

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


def _error(conn, seq, index, exc):
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        where = repr(index)
    except Exception:
        where = "?"
    _send(conn, b"E", {"seq": seq, "type": type(exc).__name__, "msg": str(exc),
                       "tb": text, "index": where[:200]})


def worker_main(wid, num_workers, seed, conn, dataset, fetch, worker_init_fn, parent):
    """Run worker ``wid`` until told to stop (the target of each worker process)."""
    global info
    from ..distributed import shm
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = WorkerInfo(wid, num_workers, seed, dataset)
    segments = {}           # name -> Segment mapped here
    cached = None           # (seq, batch) waiting for a bigger slot
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
            if cached is not None and cached[0] == seq:
                batch = cached[1]
            else:
                try:
                    batch = fetch(dataset, index)
                except Exception as e:
                    _error(conn, seq, index, e)
                    continue
            cached = None
            try:
                tree, arrays, nbytes = codec.layout(batch)
            except Exception as e:
                _error(conn, seq, index, e)
                continue
            if name is None or nbytes > size:
                cached = (seq, batch)
                _send(conn, b"N", {"seq": seq, "need": nbytes})
                continue
            seg = segments.get(name)
            if seg is None:
                seg = segments[name] = shm.Segment.attach(name, size)
            codec.write(seg.buf, arrays)
            del batch, arrays
            conn.send_bytes(b"B" + json.dumps({"seq": seq, "tree": tree, "nbytes": nbytes},
                                              separators=(",", ":")).encode())
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
