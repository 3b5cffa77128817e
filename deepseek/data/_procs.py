"""Worker processes that hand batches over through shared-memory slots.

:class:`WorkerPool` starts the workers (see :mod:`._worker` for their loop and for
what crosses the pipes) and owns the slots; :class:`ProcessIter` is one epoch of a
loader on top of it.

Slots. Each worker has its own slots: POSIX shared-memory segments named with the
job prefix of :mod:`deepseek.collectives.shm` (``dsk_<job>_dl<pool>_...``, so the launcher's
sweep finds them), created by the main process and unlinked as soon as their worker has
mapped them (its first reply from a slot says so) -- from then on only the mappings
keep the memory. A slot is handed to the user as numpy views (wrapped in Tensors by
the default collate) and goes back to its worker's free list only when the last view
of that batch is garbage collected, so a batch the user holds is never overwritten;
when a worker has no free slot a new one is made (holding every batch of an epoch
costs the memory of every batch, as it would with copies). The first batch of each
slot tells the slot's size (the worker answers "need N bytes" and keeps the batch);
later slots are made big enough from the start.

Order and failures. Batch ``s`` of an epoch goes to worker ``s % num_workers``, with
``prefetch_factor`` batches in flight per worker, and batches are yielded in sampler
order (an IterableDataset's epoch, :mod:`._stream`, picks the worker of each request
itself and yields in the order asked). A worker's exception is raised in the main
process, with the worker's traceback and the failing indices; a worker that dies
raises :class:`WorkerDiedError` naming it and its signal; ``timeout`` bounds the wait
for each batch. Either way, and at the end of the epoch (unless the workers are
persistent), on ``close()`` and at garbage collection, every worker is stopped
(SIGTERM, then SIGKILL) and every slot name still linked is unlinked.
"""
import builtins
import collections
import itertools
import json
import os
import secrets
import signal
import threading
import time
import weakref
from multiprocessing.connection import wait as mp_wait

from . import _batchcodec as codec

__all__ = ["WorkerPool", "PoolEpoch", "ProcessIter", "WorkerDiedError", "WorkerError",
           "STREAM_END"]

_JOIN = 1.0         # seconds a worker gets to finish its batch and exit before SIGTERM


#: what :meth:`WorkerPool.get` returns for a batch an IterableDataset worker could not
#: make because its stream had ended
STREAM_END = object()


class WorkerError(RuntimeError):
    """An exception raised inside a worker whose type is not a builtin one."""


class WorkerDiedError(RuntimeError):
    """A worker process ended without being asked to (SIGKILL, the OOM killer, a crash)."""


def _is_stream(index):
    from ._stream import is_stream_request
    return is_stream_request(index)


def _job_id():
    from .. import env
    job = env.get("DEEPSEEK_RUN_ID")
    return job if job else f"dl{os.getpid()}"


def _threads_unsafe_to_fork():
    """Whether another Python thread runs here that a fork would leave broken.

    Attention's idle pool resets itself in a forked child, so its threads do not count:
    without this, one transformer forward before the loader sent every later loader to
    forkserver (slow start, datasets must pickle)."""
    from ..ops.attention import FORK_SAFE_THREAD_PREFIX
    me = threading.current_thread()
    return any(t is not me and not t.name.startswith(FORK_SAFE_THREAD_PREFIX)
               for t in threading.enumerate())


def default_context():
    """Fork where it is safe (Linux, no other thread running in this process), else
    forkserver, else spawn."""
    import multiprocessing as mp
    methods = mp.get_all_start_methods()
    if "fork" in methods and not _threads_unsafe_to_fork() and not _cuda_initialized():
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _cuda_initialized():
    # a process that has talked to the CUDA driver must not fork (the child's context
    # is unusable); deepseek.backend is where cupy is imported, if anywhere
    from ..backend import cupy_available
    return cupy_available()


class _Slot:
    __slots__ = ("seg", "size", "worker", "linked", "retired")

    def __init__(self, seg, worker):
        self.seg, self.size, self.worker = seg, seg.size, worker
        self.linked, self.retired = True, False

    def unlink(self):
        if self.linked:
            self.linked = False
            self.seg.unlink()


def _release(pool_ref, slot):
    """A batch's last view is gone: its slot may be written again."""
    pool = pool_ref()
    if pool is not None and not pool.closed and not slot.retired:
        pool._free[slot.worker].append(slot)


class WorkerPool:
    """``num_workers`` worker processes and their shared-memory slots."""

    def __init__(self, dataset, fetch, num_workers, base_seed, worker_init_fn=None,
                 context=None, prefetch_factor=2):
        from ._worker import worker_main
        # load what every worker and every batch needs once, here: forked workers
        # inherit it instead of each importing it on its first batch
        from .. import _tensor, backend  # noqa: F401
        from ..distributed import shm  # noqa: F401
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.closed = False
        self._job = _job_id()
        # this pool's own name tag: at shutdown every segment that carries it is swept,
        # also one whose creation a Ctrl-C interrupted before it was recorded in _slots
        self._tag = "dl" + secrets.token_hex(3)
        self._hint = 0                       # slot size to make new slots with
        self._slots = []                     # every slot made (to unlink at close)
        self._free = [collections.deque() for _ in range(num_workers)]
        self._inflight = [collections.deque() for _ in range(num_workers)]  # seqs
        self._ready = {}                     # seq -> ("B", batch) | ("E", info)
        self._task = {}                      # seq -> (worker, index, slot)
        self._retired = {}                   # worker -> slot names it should unmap
        self._procs, self._conns = [], []
        ctx = context if context is not None else default_context()
        if isinstance(ctx, str):
            import multiprocessing as mp
            ctx = mp.get_context(ctx)
        self.start_method = ctx.get_start_method()
        self._grace = [_JOIN]
        self._finalizer = weakref.finalize(self, WorkerPool._shutdown, self._procs,
                                           self._conns, self._slots, self._grace,
                                           self._job, self._tag)
        try:
            for wid in range(num_workers):
                here, there = ctx.Pipe(duplex=True)
                p = ctx.Process(target=worker_main, name=f"deepseek-dataloader-{wid}",
                                args=(wid, num_workers, base_seed + wid, there, dataset,
                                      fetch, worker_init_fn, os.getpid()), daemon=True)
                p.start()
                there.close()
                self._procs.append(p)
                self._conns.append(here)
        except BaseException:
            self.close(now=True)
            raise

    # ---- slots -------------------------------------------------------------------

    def _new_slot(self, worker, size):
        from ..distributed import shm
        seg = shm.Segment.create(self._job, self._tag, codec.page_round(size))
        slot = _Slot(seg, worker)
        self._slots.append(slot)
        return slot

    def _slot_for(self, worker):
        free = self._free[worker]
        while free:
            slot = free.popleft()
            if slot.size >= self._hint and not slot.retired:
                return slot
            self._retire(slot)
        return self._new_slot(worker, self._hint) if self._hint else None

    def _retire(self, slot):
        slot.retired = True
        slot.unlink()
        self._retired.setdefault(slot.worker, []).append(slot.seg.name)
        try:
            self._slots.remove(slot)
        except ValueError:
            pass

    # ---- tasks -------------------------------------------------------------------

    def submit(self, seq, index, worker=None):
        """Send batch ``seq`` (dataset indices ``index``) to ``worker`` (default: worker
        ``seq % n``)."""
        w = seq % self.num_workers if worker is None else worker
        slot = self._slot_for(w)
        self._task[seq] = (w, index, slot)
        self._inflight[w].append(seq)
        self._send(w, seq, index, slot)

    def _send(self, w, seq, index, slot):
        retire = self._retired.pop(w, [])
        msg = (seq, index, None if slot is None else slot.seg.name,
               0 if slot is None else slot.size, retire)
        try:
            self._conns[w].send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._died(w, seq)

    def get(self, seq, timeout=None):
        """Batch ``seq`` (waiting for it): the rebuilt batch, or raises the worker's
        exception / :class:`WorkerDiedError` / ``RuntimeError`` on timeout; for a
        stream's worker whose stream has ended, :data:`STREAM_END`."""
        w = self.worker_of(seq)
        deadline = None if not timeout else time.monotonic() + timeout
        conn, proc = self._conns[w], self._procs[w]
        while seq not in self._ready:
            # an answer already waiting is read at once (one poll, no selector set up);
            # else sleep until the worker answers or dies
            if not conn.poll():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    msg = (f"DataLoader timed out after {timeout} s waiting for batch {seq} "
                           f"from worker {w} (pid {proc.pid}); raise timeout= if loading "
                           "one batch takes longer")
                    self.close(now=True)
                    raise RuntimeError(msg)
                ready = mp_wait([conn, proc.sentinel], left)
                if not conn.poll():
                    if proc.sentinel in ready:
                        self._died(w, seq)
                    continue
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                self._died(w, seq)
            self._on_message(w, data)
        kind, value = self._ready.pop(seq)
        self._task.pop(seq, None)
        if kind == "E":
            self._raise(w, value)
        return value

    def worker_of(self, seq):
        """The worker batch ``seq`` was sent to."""
        task = self._task.get(seq)
        return seq % self.num_workers if task is None else task[0]

    def _on_message(self, w, data):
        tag, body = data[:1], json.loads(data[1:])
        seq = body["seq"]
        if tag == b"E":
            if seq == -1:   # worker_init_fn failed: nothing will come from this worker
                self._raise(w, body)
            self._inflight[w].remove(seq)
            self._ready[seq] = ("E", body)
            return
        task = self._task.get(seq)
        if task is None:
            raise RuntimeError(f"DataLoader worker {w} answered for batch {seq}, which "
                               "was not asked of it")
        _, index, slot = task
        if tag == b"S":     # an IterableDataset worker's stream has ended: slot unused
            self._inflight[w].remove(seq)
            if slot is not None:
                _release(weakref.ref(self), slot)
            self._ready[seq] = ("S", STREAM_END)
            return
        if tag == b"N":
            need = int(body["need"])
            self._hint = max(self._hint, need + need // 8)
            if slot is not None:
                self._retire(slot)
            slot = self._new_slot(w, self._hint)
            self._task[seq] = (w, index, slot)
            self._send(w, seq, index, slot)
            return
        if tag != b"B":
            raise RuntimeError(f"DataLoader worker {w} sent a message of unknown kind {tag!r}")
        self._inflight[w].remove(seq)
        slot.unlink()       # the worker has it mapped now: the name is no longer needed
        nbytes = int(body["nbytes"])
        if nbytes > slot.size:
            raise RuntimeError(f"DataLoader worker {w} wrote {nbytes} bytes into a slot of "
                               f"{slot.size}")
        batch, owner = codec.decode(body["tree"], slot.seg.buf, nbytes)
        if owner is None:
            _release(weakref.ref(self), slot)
        else:
            weakref.finalize(owner, _release, weakref.ref(self), slot)
        self._ready[seq] = ("B", batch)

    def _raise(self, w, body):
        if body["index"] == "'worker_init_fn'":
            where = "in worker_init_fn"
        elif body.get("stream"):     # an IterableDataset worker: no indices, a count
            where = f"while making batch {body['index']} of its own stream"
        else:
            where = f"while loading the batch of indices {body['index']}"
        msg = (f"{body['type']}: {body['msg']}\n(raised in DataLoader worker {w} {where}; "
               f"the worker's traceback:)\n{body['tb']}")
        self.close(now=True)
        exc_type = getattr(builtins, body["type"], None)
        if isinstance(exc_type, type) and issubclass(exc_type, Exception) \
                and not issubclass(exc_type, (OSError, UnicodeError)):
            try:
                exc = exc_type(msg)
            except Exception:
                exc = WorkerError(msg)
        else:
            exc = WorkerError(msg)
        if isinstance(exc, KeyError):   # KeyError's str() would quote the whole message
            exc = WorkerError(msg)
        raise exc

    def _died(self, w, seq):
        proc = self._procs[w]
        proc.join(0.5)
        code = proc.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name}" + (
                " (the kernel's out-of-memory killer sends SIGKILL: check dmesg)"
                if -code == signal.SIGKILL else "")
        else:
            how = f"exited with code {code}"
        pending = list(self._inflight[w]) or [seq]
        task = self._task.get(pending[0])
        index = "" if task is None or _is_stream(task[1]) else \
            f"; indices of batch {pending[0]}: {str(task[1])[:200]}"
        msg = (f"DataLoader worker {w} (pid {proc.pid}) {how}, with batches {pending[:8]} of "
               f"this epoch assigned to it{index}")
        self.close(now=True)
        raise WorkerDiedError(msg)

    def drain(self):
        """Wait for (and drop) every batch still in flight: a new epoch starts clean."""
        for w in range(self.num_workers):
            while self._inflight[w]:
                self.get(self._inflight[w][0], timeout=None)
        self._ready.clear()
        self._task.clear()

    # ---- shutdown ----------------------------------------------------------------

    def close(self, now=False):
        """Stop every worker and unlink every slot name still linked (idempotent).
        Workers get a moment to finish the batch they are on, unless ``now``."""
        self.closed = True
        if now:
            self._grace[0] = 0.0
        self._finalizer()

    @staticmethod
    def _shutdown(procs, conns, slots, grace, job, tag):
        for c in conns:
            try:
                c.send(None)
            except Exception:
                pass
        deadline = time.monotonic() + grace[0]
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        for c in conns:
            try:
                c.close()
            except Exception:
                pass
        for s in slots:
            s.unlink()
        from ..distributed import shm
        shm.cleanup_job(job, tag)
        for p in procs:
            try:
                p.close()
            except Exception:
                pass


class PoolEpoch:
    """What every epoch over a :class:`WorkerPool` shares: ``close()`` ends it and, with
    ``own_pool``, stops the workers; else (persistent workers) the pool is drained when
    the epoch starts, so that batches still in flight from the last one are dropped."""

    def __init__(self, pool, timeout=0, own_pool=True):
        self.pool, self.timeout, self.own_pool = pool, timeout, own_pool
        self._done = False
        try:
            if not own_pool:
                pool.drain()
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        """Send the epoch's first requests (``prefetch_factor`` per worker)."""
        raise NotImplementedError

    def __iter__(self):
        return self

    def close(self):
        """End the epoch: with a pool of its own, stop the workers."""
        if not self._done:
            self._done = True
            if self.own_pool:
                self.pool.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class ProcessIter(PoolEpoch):
    """One epoch of batches from a :class:`WorkerPool`, in sampler order (batch ``s``
    of the epoch is the ``s``-th item of ``indices``)."""

    def __init__(self, pool, indices, timeout=0, own_pool=True):
        self.indices = iter(indices)
        self._submitted = 0
        self._yielded = 0
        super().__init__(pool, timeout, own_pool)

    def _start(self):
        ahead = self.pool.num_workers * self.pool.prefetch_factor
        for index in itertools.islice(self.indices, ahead):
            self._submit(index)

    def _submit(self, index):
        # seq numbers restart at 0 every epoch (a persistent pool is drained first)
        self.pool.submit(self._submitted, index)
        self._submitted += 1

    def __next__(self):
        if self._done or self._yielded >= self._submitted:
            self.close()
            raise StopIteration
        try:
            batch = self.pool.get(self._yielded, self.timeout or None)
            self._yielded += 1
            index = next(self.indices, _DONE)
            if index is not _DONE:
                self._submit(index)
        except BaseException:
            self.close()
            raise
        return batch


_DONE = object()
