"""ProcessGroup: the front end every backend sits behind.

It checks arguments (and raises at once on the calling rank), numbers the collectives
(the sequence number that errors and debug checks use), runs ops inline or on the
group's worker threads (``async_op=True``), turns a backend failure into a broken
group (later calls re-raise at once; the peers are told through ``backend.abort`` so
they fail fast instead of timing out), writes hang reports, and in debug mode
(``DEEPSEEK_DEBUG_COLLECTIVES=1``) checks through the store that all ranks call the
same collective with the same shape, dtype and root before running it. (Without it,
the shared-memory transport still compares every call's op, dtype, byte count, root
and reduce op through its slots, and raises the same CollectiveMismatchError on every
rank: collectives/backends/shm.py, "Signatures".)

Ranks given to the methods (``src``, ``dst``, ``root``) are *group* ranks.
"""
import json
import threading

import numpy as np

from .. import env as envvars
from . import hang
from . import trace as _trace
from ._context import OpContext
from .errors import (CollectiveArgumentError, CollectiveError, CollectiveMismatchError,
                     CollectiveTimeoutError, GroupBrokenError, PeerFailureError)
from .reduce_ops import ReduceOp, check_reduce_dtype, reduce_into
from .work import Worker, Work, completed_work


_SUM = ReduceOp.SUM
_P2P_BUDGET_NS = 20_000_000  # the C send/recv's first wait, before Python checks
# kinds of the shm transport's C collectives (native/src/dsn_shm.h)
_ALLGATHER, _GATHER, _REDUCE_SCATTER, _BROADCAST, _ALLGATHER_CMA = 1, 2, 3, 4, 5


def _is_array(x):
    return hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__")


def _kind(x):
    return "cupy" if hasattr(x, "__cuda_array_interface__") else "numpy"


class ProcessGroup:
    """A set of ranks that run collectives together.

    Attributes: ``rank`` and ``size`` (this process in the group), ``ranks`` (global
    ranks of the members, by group rank), ``backend`` (name), ``name``,
    ``deterministic``, ``timeout`` (default seconds for every blocking wait).
    """

    def __init__(self, backend, ranks, name, store, prefix, timeout, deterministic=False,
                 debug=None, global_rank=None):
        self._backend = backend
        self.rank, self.size = backend.rank, backend.size
        self.ranks = list(ranks)
        self.name = name
        self.backend = backend.name if backend.name not in ("shm", "zmq") else "cpu"
        self.transport = backend.name
        self.store, self.prefix = store, prefix
        self.timeout = float(timeout)
        self.deterministic = bool(deterministic)
        self.debug = envvars.get("DEEPSEEK_DEBUG_COLLECTIVES") \
            if debug is None else bool(debug)
        self.global_rank = self.ranks[self.rank] if global_rank is None else global_rank
        self._seq = 0
        self._p2p_seq = 0
        self._lock = threading.RLock()  # one collective at a time, in issue order
        self._worker = Worker(f"deepseek-coll-{name}")
        self._send_worker = Worker(f"deepseek-send-{name}")
        self._recv_worker = Worker(f"deepseek-recv-{name}")
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._broken = None
        self._closed = False
        self.hang_prefix = prefix  # the job-wide prefix, set by init_process_group
        self._numpy = backend.array_kind == "numpy"
        # allreduce sizes from which an array may be a symmetric buffer (which the
        # backend handles, not the fast path): none until one is allocated
        self._sym_min = float("inf")
        self._cma_min = float("inf")  # single-copy allgather: set below when usable
        self._op_cache = {}
        # fast paths (shm transport with the C kernels: allreduce, allgather, gather,
        # reduce_scatter, broadcast): (dtype, op) -> code; None whenever a call must take
        # the general path (debug mode, broken, closed)
        self._fast = None
        if getattr(backend, "kernel", None) is not None and not self.debug:
            self._fast_kernel = backend.kernel
            self._sym_kernel = backend.sym_kernel
            self._coll_kernel = backend.coll_kernel
            # allgathers from this size on read the peers' memory directly (see
            # ShmTransport.probe_cma)
            self._cma_min = backend.cma_bytes if backend.cma else float("inf")
            self._fast_addr = backend.state_addr
            self._fast_ops = {}
            self._copy_codes = {}  # dtype -> the kernel's code for a plain copy
            for (dt, opname), code in backend._codes.items():
                if str(dt) == "bfloat16":
                    continue  # bfloat16 needs a uint16 view: the general path
                self._fast_ops[(dt, ReduceOp(opname))] = code
            self._fast = {dt: c for (dt, op), c in self._fast_ops.items()
                          if op is ReduceOp.SUM}
        # p2p fast path (shm transport with the C send/recv, native/src/dsn_p2p.c): the
        # kernels, called straight from send/recv; None once the group is broken or
        # closed, so that every call then takes the general path and raises there
        self._p2p_send_k = getattr(backend, "p2p_send_kernel", None)
        self._p2p_recv_k = getattr(backend, "p2p_recv_kernel", None)
        self._p2p_addr = getattr(backend, "p2p_state_addr", 0)
        self._p2p_stash = getattr(backend, "_stash", None)  # messages of other tags
        if name == "default" and envvars.get("DEEPSEEK_TIMELINE"):
            _trace.on_default_group(self)  # clock alignment through the store

    # ------------------------------------------------------------------ properties
    @property
    def world_size(self):
        return self.size

    def __repr__(self):
        return (f"<ProcessGroup {self.name!r} rank {self.rank}/{self.size} "
                f"backend={self.backend}/{self.transport} ranks={self.ranks}>")

    # ------------------------------------------------------------------ validation
    def _arr(self, x, what, writable=False):
        if type(x) is np.ndarray and self._numpy and x.flags.c_contiguous \
                and (x.flags.writeable or not writable) and not x.dtype.hasobject:
            return x.reshape(-1)  # the common case, checked in few steps
        if not _is_array(x):
            raise CollectiveArgumentError(
                f"{what}: expected a numpy or cupy array, got {type(x).__name__}")
        if self._backend.array_kind != _kind(x):
            raise CollectiveArgumentError(
                f"{what}: the {self.backend} backend works on {self._backend.array_kind} "
                f"arrays, got a {_kind(x)} array")
        if not x.flags.c_contiguous:
            raise CollectiveArgumentError(f"{what}: array must be C-contiguous")
        if writable and not getattr(x.flags, "writeable", True):  # cupy: always
            raise CollectiveArgumentError(f"{what}: array is read-only")
        if x.dtype.hasobject or x.dtype.kind == "V" and x.dtype.fields:
            raise CollectiveArgumentError(f"{what}: unsupported dtype {x.dtype}")
        return x.reshape(-1)

    def _rank_arg(self, r, what):
        if not isinstance(r, (int, np.integer)) or isinstance(r, bool) \
                or not 0 <= int(r) < self.size:
            raise CollectiveArgumentError(
                f"{what}={r!r} is not a rank of group {self.name!r} (size {self.size})")
        return int(r)

    def _op_arg(self, op, dtype):
        key = (op, dtype)
        hit = self._op_cache.get(key)
        if hit is None:
            hit = ReduceOp.coerce(op)
            check_reduce_dtype(dtype, hit)
            self._op_cache[key] = hit
        return hit

    @staticmethod
    def _same(a, b, what):
        if a.dtype != b.dtype:
            raise CollectiveArgumentError(
                f"{what}: dtype mismatch between input ({a.dtype}) and output ({b.dtype})")

    def _flat_out(self, out, x, count, what):
        """``out`` is one array of ``count`` elements, or a list of ``size`` arrays
        shaped like ``x``; returns (flat buffer, list-or-None)."""
        if isinstance(out, (list, tuple)):
            if len(out) != self.size:
                raise CollectiveArgumentError(
                    f"{what}: output list has {len(out)} arrays, the group {self.size}")
            for i, o in enumerate(out):
                self._arr(o, f"{what} output[{i}]", writable=True)
                self._same(x, o, what)
                if o.size != x.size:
                    raise CollectiveArgumentError(
                        f"{what}: output[{i}] has {o.size} elements, expected {x.size}")
            return self._empty(count, x), list(out)
        o = self._arr(out, f"{what} output", writable=True)
        self._same(x, o, what)
        if o.size != count:
            raise CollectiveArgumentError(
                f"{what}: output has {o.size} elements, expected {count} "
                f"({self.size} x {count // max(self.size, 1) if self.size else 0})")
        return o, None

    def _flat_in(self, inp, per, like, what):
        """Input given as one array of size*per elements or a list of size arrays."""
        if isinstance(inp, (list, tuple)):
            if len(inp) != self.size:
                raise CollectiveArgumentError(
                    f"{what}: input list has {len(inp)} arrays, the group {self.size}")
            for i, t in enumerate(inp):
                self._arr(t, f"{what} input[{i}]")
                self._same(t, like, what)
                if t.size != per:
                    raise CollectiveArgumentError(
                        f"{what}: input[{i}] has {t.size} elements, expected {per}")
            buf = self._empty(per * self.size, like)
            for i, t in enumerate(inp):
                buf[i * per:(i + 1) * per] = t.reshape(-1)
            return buf
        x = self._arr(inp, f"{what} input")
        self._same(x, like, what)
        if x.size != per * self.size:
            raise CollectiveArgumentError(
                f"{what}: input has {x.size} elements, expected {per * self.size} "
                f"({self.size} x {per})")
        return x

    @staticmethod
    def _empty(n, like):
        if _kind(like) == "cupy":
            import cupy

            return cupy.empty(n, dtype=like.dtype)
        return np.empty(n, dtype=like.dtype)

    # ------------------------------------------------------------------ execution
    def _check_usable(self):
        if self._closed:
            raise GroupBrokenError(f"group {self.name!r} was destroyed")
        if self._broken is not None:
            raise GroupBrokenError(
                f"group {self.name!r} is unusable after an earlier failure on rank "
                f"{self.rank}: {self._broken}") from self._broken

    def _fail(self, ctx, exc):
        if isinstance(exc, (CollectiveTimeoutError, PeerFailureError, CollectiveMismatchError)) \
                or not isinstance(exc, CollectiveError):
            self._broken = exc
            self._fast = None
            self._p2p_send_k = self._p2p_recv_k = None
            try:
                self._backend.abort(f"{type(exc).__name__} in {ctx.describe()}: {exc}"[:400])
            except Exception:  # noqa: BLE001
                pass
        if self.store is not None:
            if isinstance(exc, CollectiveTimeoutError):
                hang.write_report(self.store, self.hang_prefix, self.global_rank, str(exc))
            elif isinstance(exc, (PeerFailureError, CollectiveMismatchError)):
                # this rank is alive but about to leave on a peer's abort: record where it
                # was now, since its watchdog may not get to answer a hang request later
                hang.write_report(self.store, self.hang_prefix, self.global_rank, str(exc),
                                  request=False)

    def _execute(self, opname, seq, timeout, body, sig, issued=None):
        if _trace.sink is not None:
            t0 = _trace.now()
            self._execute_body(opname, seq, timeout, body, sig)
            self._emit(opname, seq, _trace.nbytes_of_sig(sig), t0, "general", issued)
            return
        self._execute_body(opname, seq, timeout, body, sig)

    def _emit(self, opname, seq, nbytes, t0, path, issued=None):
        """Tell collectives.trace's listeners about one finished collective."""
        b = self._backend
        if path == "general" and opname == "allreduce" and self.size > 1:
            if self.deterministic and not getattr(b, "rank_ordered", b.name in ("shm", "zmq")):
                algo = "ordered-allgather"
            else:
                rs = getattr(b, "rs_bytes", None)
                algo = ("rs+ag" if nbytes >= rs else "direct") if rs is not None else b.name
        else:
            algo = path
        _trace.sink({"op": opname, "group": self.name, "seq": seq, "bytes": nbytes,
                     "algorithm": algo, "backend": self.backend, "transport": self.transport,
                     "rank": self.global_rank, "issued": t0 if issued is None else issued,
                     "t0": t0, "t1": _trace.now()})

    def _execute_body(self, opname, seq, timeout, body, sig):
        ctx = OpContext(opname, seq, timeout if timeout is not None else self.timeout,
                        self.name, self.rank, self.ranks)
        with self._lock:
            self._check_usable()
            hang.set_pending(self.name, opname, seq)
            try:
                if sig is not None and self.debug and self.size > 1:
                    self._debug_check(ctx, sig() if callable(sig) else sig)
                body(ctx)
            except BaseException as e:
                self._fail(ctx, e)
                raise
            finally:
                hang.set_pending(self.name, None, None)

    def _collective(self, opname, body, async_op, timeout, sig, result=None):
        self._check_usable()
        self._seq += 1
        seq = self._seq
        if async_op:
            work = Work(f"{opname} (seq {seq}) in group {self.name!r} on rank {self.rank}",
                        result)
            issued = _trace.now() if _trace.sink is not None else None
            return self._worker.submit(
                lambda: self._execute(opname, seq, timeout, body, sig, issued), work)
        # a blocking call completes after every async op issued before it
        if not self._worker.idle:
            self._worker.drain()
        self._execute(opname, seq, timeout, body, sig)
        return None

    def _p2p(self, opname, fn, async_op, timeout, worker, lock, x, peer, tag, nowait=None):
        """Run ``fn(ctx, x, peer, tag)`` (the backend's send or recv): inline when
        blocking -- after the async ops of its direction issued before it -- or on the
        direction's worker thread. No closure, Work or description string is built on
        the blocking path: at 8 bytes these were a good part of the cost."""
        self._check_usable()
        self._p2p_seq += 1
        seq = self._p2p_seq
        issued = _trace.now() if _trace.sink is not None else 0
        if async_op:
            desc = f"{opname} (p2p seq {seq}) in group {self.name!r} on rank {self.rank}"
            if nowait is not None and not worker._pending and lock.acquire(False):
                # a small send whose slot is free completes here: no thread handoff
                try:
                    done, exc = self._p2p_nowait(opname, nowait, seq, timeout, x, peer,
                                                 tag, issued)
                finally:
                    lock.release()
                if done:
                    return completed_work(desc, exc=exc)  # errors come from wait()
            return worker.submit(lambda: self._run_p2p(opname, fn, seq, timeout, lock, x,
                                                       peer, tag, issued), Work(desc))
        if worker._pending:
            worker.drain()
        self._run_p2p(opname, fn, seq, timeout, lock, x, peer, tag, issued)
        return None

    def _p2p_nowait(self, opname, fn, seq, timeout, x, peer, tag, issued):
        """``fn`` (the backend's send_nowait) under the caller's lock: (True, error or
        None) when the op completed (or failed) without waiting, (False, None) when it
        must go to the worker."""
        ctx = OpContext(opname, seq, self.timeout if timeout is None else timeout,
                        self.name, self.rank, self.ranks)
        t0 = _trace.now() if issued else 0
        try:
            self._check_usable()
            if not fn(ctx, x, peer, tag):
                return False, None
        except Exception as e:  # noqa: BLE001 - delivered through Work.wait
            if not isinstance(e, GroupBrokenError):
                self._fail(ctx, e)
            return True, e
        if t0:
            _trace.emit_p2p(self, opname, seq, x.nbytes, self.ranks[peer], tag, issued, t0)
        return True, None

    def _run_p2p(self, opname, fn, seq, timeout, lock, x, peer, tag, issued):
        ctx = OpContext(opname, seq, self.timeout if timeout is None else timeout,
                        self.name, self.rank, self.ranks)
        t0 = _trace.now() if issued else 0
        with lock:
            self._check_usable()
            try:
                fn(ctx, x, peer, tag)
            except BaseException as e:
                self._fail(ctx, e)
                raise
        if t0:  # the timeline/profiler (collectives/trace.py): pipeline sends/recvs
            _trace.emit_p2p(self, opname, seq, x.nbytes, self.ranks[peer], tag, issued, t0)

    def _p2p_fast(self, opname, kernel, lock, x, peer, tag, timeout):
        """The blocking send/recv of the shm transport in one C call (the kernel
        checks the buffer, rank and tag itself and refuses, touching nothing, what the
        general path must explain); False when not taken: the general path runs."""
        if _trace.sink is not None or not lock.acquire(False):
            return False  # tracing: the general path emits the events
        try:
            st = kernel(self._p2p_addr, x, peer, tag, _P2P_BUDGET_NS)
            if st < 0:
                return False
            self._p2p_seq += 1
            if st:
                self._p2p_finish(opname, kernel, st, timeout, x, peer, tag)
            return True
        finally:
            lock.release()

    def _p2p_finish(self, opname, kernel, st, timeout, x, peer, tag):
        """A C send/recv (the fast path of send/recv) that did not complete in its
        first call (status ``st``): finish it with the checks of the general path
        (aborts, dead peers, the deadline, a broken group), or hand the message to the
        Python protocol when the kernel gave it back (another tag or size). Called
        with the direction's lock held, so that nothing else uses the channel."""
        ctx = OpContext(opname, self._p2p_seq, self.timeout if timeout is None else timeout,
                        self.name, self.rank, self.ranks)
        b = self._backend
        f = x.reshape(-1)
        try:
            if not b._p2p_drive(ctx, kernel, f, peer, tag, st):
                (b._send_py if opname == "send" else b._recv_py)(ctx, f, peer, tag)
        except BaseException as e:
            self._fail(ctx, e)
            raise

    def _debug_check(self, ctx, sig):
        sig = dict(sig, op=ctx.op)
        key = f"{self.prefix}/dbg/{ctx.seq}"
        self.store.set(f"{key}/{self.rank}", json.dumps(sig, sort_keys=True))
        keys = [f"{key}/{r}" for r in range(self.size)]
        try:
            vals = self.store.multi_get(keys, timeout=ctx.timeout)
        except TimeoutError:
            missing = [r for r, k in enumerate(keys) if k in set(self.store.missing(keys))]
            raise ctx.timeout_error(missing, "debug check of peers") from None
        if ctx.seq > 2:
            try:
                self.store.delete(f"{self.prefix}/dbg/{ctx.seq - 2}/{self.rank}")
            except Exception:  # noqa: BLE001
                pass
        calls = [json.loads(v) for v in vals]
        if any(c != calls[0] for c in calls):
            raise ctx.mismatch_error(calls, "DEEPSEEK_DEBUG_COLLECTIVES")

    @staticmethod
    def _sig(x, **kw):
        return dict(kw, shape=list(x.shape), dtype=str(x.dtype))

    # ------------------------------------------------------------------ collectives
    def allreduce(self, x, op=ReduceOp.SUM, async_op=False, timeout=None):
        """In place: every rank's ``x`` becomes the reduction over all ranks."""
        fast = self._fast
        if fast is not None and not async_op and type(x) is np.ndarray:
            # the whole op in C, GIL released; the kernels themselves refuse arrays that
            # are not writable and C-contiguous, before touching anything
            code = fast.get(x.dtype) if op is _SUM else self._fast_ops.get((x.dtype, op))
            if code is not None and self._worker._pending == 0:
                # a piece of a symmetric buffer: the zero-copy kernel, given the table
                # of every rank's copy of x
                table = self._backend.symmetric_table(x) if x.nbytes >= self._sym_min \
                    else None
                if self._lock.acquire(False):
                    t0 = _trace.now() if _trace.sink is not None else 0
                    try:
                        if table is None:
                            st = self._fast_kernel(self._fast_addr, x, code, 20_000_000)
                        else:
                            self._backend.sym_allreduces += 1
                            st = self._sym_kernel(self._fast_addr, x, code, 20_000_000,
                                                  table)
                        if st == 0:
                            self._seq += 1
                            if t0:
                                self._emit("allreduce", self._seq, x.nbytes, t0,
                                           "shm-c-symmetric" if table is not None else "shm-c")
                            return None
                        if st > 0:  # still waiting (or a peer aborted): the slow wait
                            self._seq += 1
                            b = self._backend
                            self._fast_finish("allreduce", lambda ctx, status:
                                              b.native_allreduce(ctx, x, code, status,
                                                                 table), st, timeout)
                            if t0:
                                self._emit("allreduce", self._seq, x.nbytes, t0,
                                           "shm-c-symmetric" if table is not None else "shm-c")
                            return None
                    finally:
                        self._lock.release()
        f = self._arr(x, "allreduce", writable=True)
        op = self._op_arg(op, f.dtype)
        b = self._backend
        if self.size == 1:
            body = (lambda ctx: reduce_into(f, [f], op)) if op is ReduceOp.AVG else None
        elif self.deterministic and not getattr(b, "rank_ordered", b.name in ("shm", "zmq")):
            body = lambda ctx: self._allreduce_ordered(ctx, f, op)  # noqa: E731
        else:
            body = lambda ctx: b.allreduce(ctx, f, op)  # noqa: E731
        return self._collective("allreduce", body or (lambda ctx: None), async_op, timeout,
                                lambda: self._sig(f, reduce=op.name), x)

    def symmetric_empty(self, shape, dtype=np.float32, timeout=None):
        """Collective: a zero-filled array in memory that every rank of the group maps
        (PyTorch's symmetric memory). Every rank must call it with the same shape and
        dtype. An allreduce of this array, or of a contiguous piece of it taken at the
        same place on every rank, reads each rank's data where it lies instead of
        staging it through the group's buffers (about half the memory traffic; see
        collectives/backends/shm.py). Where the ranks share no memory (ZeroMQ, MPI,
        NCCL, a group of one) it is a plain ``numpy.zeros`` and everything still works.
        The memory goes when the group is destroyed and no array uses it any more; its
        name is removed from /dev/shm as soon as every rank has mapped it."""
        dtype = np.dtype(dtype)
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else \
            tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise CollectiveArgumentError(f"symmetric_empty: negative dimension in {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        b = self._backend
        if self.size == 1 or nbytes == 0 or not hasattr(b, "alloc_symmetric"):
            return np.zeros(shape, dtype)
        box = []
        self._collective("symmetric_empty",
                         lambda ctx: box.append(b.alloc_symmetric(ctx, nbytes)), False,
                         timeout, {"shape": list(shape), "dtype": str(dtype)})
        self._sym_min = min(self._sym_min, b.sym_bytes)
        return box[0].view(dtype).reshape(shape)

    def _fast_finish(self, opname, resume, status, timeout):
        """A fast-path op that did not complete within its first wait: finish it
        (``resume(ctx, status)``) with the checks of the general path (hang report,
        aborts, dead peers, timeout). Called with the group lock held."""
        ctx = OpContext(opname, self._seq, timeout if timeout is not None
                        else self.timeout, self.name, self.rank, self.ranks)
        hang.set_pending(self.name, opname, self._seq)
        try:
            resume(ctx, status)
        except BaseException as e:
            self._fail(ctx, e)
            raise
        finally:
            hang.set_pending(self.name, None, None)

    def _fast_coll(self, opname, kind, x, out, code, root, timeout):
        """allgather / gather / reduce_scatter / broadcast wholly in C (the shm
        transport's kernel), like the allreduce fast path; False when not taken (the
        kernel refused the arguments before touching anything, or an async op is in
        flight): the general path then runs, and raises for bad arguments. ``code``
        None: a plain copy, which still tells the kernel the dtype (the ranks compare
        it, see collectives/backends/shm.py)."""
        if self._worker._pending or not self._lock.acquire(False):
            return False
        t0 = _trace.now() if _trace.sink is not None else 0
        try:
            if code is None:
                code = self._copy_codes.get(x.dtype)
                if code is None:
                    code = self._copy_codes[x.dtype] = self._backend.copy_code(x.dtype)
            st = self._coll_kernel(self._fast_addr, kind, x, out, code, root, 20_000_000)
            if st < 0:
                return False
            self._seq += 1
            if st > 0:  # still waiting (or a peer aborted): the slow wait
                b = self._backend
                self._fast_finish(opname, lambda ctx, status: b._native_coll(
                    ctx, kind, x, out, code, root, status), st, timeout)
            if t0:
                self._emit(opname, self._seq, x.nbytes, t0, "shm-c")
            return True
        finally:
            self._lock.release()

    def _allreduce_ordered(self, ctx, f, op):
        # deterministic on a backend without rank-ordered reductions (MPI, NCCL):
        # gather everything, add in rank order locally
        buf = self._empty(f.size * self.size, f)
        self._backend.allgather(ctx, buf, f)
        reduce_into(f, [buf[r * f.size:(r + 1) * f.size] for r in range(self.size)], op)

    def _can_fast(self, async_op, x, out=None):
        """Whether an op on these arrays may try its C fast path (see _fast_coll)."""
        return (self._fast is not None and not async_op and type(x) is np.ndarray
                and not x.dtype.hasobject
                and (out is None or type(out) is np.ndarray and out.dtype == x.dtype)
                and (x.nbytes < self._sym_min or self._backend.find_symmetric(x) is None))

    def broadcast(self, x, src=0, async_op=False, timeout=None):
        """In place: every rank's ``x`` becomes ``src``'s."""
        if self._can_fast(async_op, x) and type(src) is int and 0 <= src < self.size \
                and self._fast_coll("broadcast", _BROADCAST, x, None, None, src, timeout):
            return None
        f = self._arr(x, "broadcast", writable=True)
        src = self._rank_arg(src, "src")
        b = self._backend
        body = (lambda ctx: None) if self.size == 1 else (lambda ctx: b.broadcast(ctx, f, src))
        return self._collective("broadcast", body, async_op, timeout,
                                lambda: self._sig(f, root=src), x)

    def reduce(self, x, dst=0, op=ReduceOp.SUM, async_op=False, timeout=None):
        """In place on ``dst``: the reduction; other ranks' ``x`` is left unchanged."""
        f = self._arr(x, "reduce", writable=True)
        dst = self._rank_arg(dst, "dst")
        op = self._op_arg(op, f.dtype)
        b = self._backend
        if self.size == 1:
            body = lambda ctx: reduce_into(f, [f], op)  # noqa: E731
        elif self.deterministic and b.name not in ("shm", "zmq"):
            def body(ctx):
                keep = f.copy()
                self._allreduce_ordered(ctx, f, op)
                if self.rank != dst:
                    f[...] = keep
        else:
            body = lambda ctx: b.reduce(ctx, f, dst, op)  # noqa: E731
        return self._collective("reduce", body, async_op, timeout,
                                lambda: self._sig(f, root=dst, reduce=op.name), x)

    def allgather(self, out, x, async_op=False, timeout=None):
        """``out`` (size x ``x.size`` elements, or a list of ``size`` arrays) gets every
        rank's ``x`` in rank order."""
        if self._can_fast(async_op, x, out) and self._fast_coll(
                "allgather", _ALLGATHER_CMA if x.nbytes >= self._cma_min else _ALLGATHER,
                x, out, None, 0, timeout):
            return None
        f = self._arr(x, "allgather")
        buf, lst = self._flat_out(out, f, f.size * self.size, "allgather")
        b = self._backend

        def body(ctx):
            if self.size == 1:
                buf[...] = f
            else:
                b.allgather(ctx, buf, f)
            if lst is not None:
                for r, o in enumerate(lst):
                    o.reshape(-1)[...] = buf[r * f.size:(r + 1) * f.size]
        return self._collective("allgather", body, async_op, timeout, lambda: self._sig(f),
                                out)

    def gather(self, x, out=None, dst=0, async_op=False, timeout=None):
        """Like allgather, but only ``dst`` receives (``out`` may be None elsewhere)."""
        if type(dst) is int and 0 <= dst < self.size:
            mine = out if self.rank == dst else None
            if (mine is not None or self.rank != dst) and self._can_fast(async_op, x, mine) \
                    and self._fast_coll("gather", _GATHER, x, mine, None, dst, timeout):
                return None
        f = self._arr(x, "gather")
        dst = self._rank_arg(dst, "dst")
        if self.rank == dst:
            if out is None:
                raise CollectiveArgumentError("gather: the destination rank needs `out`")
            buf, lst = self._flat_out(out, f, f.size * self.size, "gather")
        else:
            buf, lst = None, None
        b = self._backend

        def body(ctx):
            if self.size == 1:
                buf[...] = f
            else:
                b.gather(ctx, buf, f, dst)
            if lst is not None:
                for r, o in enumerate(lst):
                    o.reshape(-1)[...] = buf[r * f.size:(r + 1) * f.size]
        return self._collective("gather", body, async_op, timeout,
                                lambda: self._sig(f, root=dst), out)

    def scatter(self, out, x=None, src=0, async_op=False, timeout=None):
        """``out`` gets piece ``rank`` of ``src``'s ``x`` (size x ``out.size`` elements
        or a list of ``size`` arrays; ignored on other ranks)."""
        o = self._arr(out, "scatter output", writable=True)
        src = self._rank_arg(src, "src")
        if self.rank == src:
            if x is None:
                raise CollectiveArgumentError("scatter: the source rank needs `x`")
            buf = self._flat_in(x, o.size, o, "scatter")
        else:
            buf = None
        b = self._backend

        def body(ctx):
            if self.size == 1:
                o[...] = buf
            else:
                b.scatter(ctx, o, buf, src)
        return self._collective("scatter", body, async_op, timeout,
                                lambda: self._sig(o, root=src),
                                out)

    def reduce_scatter(self, out, x, op=ReduceOp.SUM, async_op=False, timeout=None):
        """``out`` = reduction over ranks of piece ``rank`` of ``x`` (``x``: size x
        ``out.size`` elements, or a list of ``size`` arrays)."""
        if self._can_fast(async_op, x, out):
            code = self._fast_ops.get((x.dtype, op))
            if code is not None and self._fast_coll("reduce_scatter", _REDUCE_SCATTER, x, out,
                                                    code, 0, timeout):
                return None
        o = self._arr(out, "reduce_scatter output", writable=True)
        op = self._op_arg(op, o.dtype)
        buf = self._flat_in(x, o.size, o, "reduce_scatter")
        b = self._backend

        def body(ctx):
            if self.size == 1:
                reduce_into(o, [buf], op)
            elif self.deterministic and b.name not in ("shm", "zmq"):
                full = buf.copy()
                self._allreduce_ordered(ctx, full, op)
                o[...] = full[self.rank * o.size:(self.rank + 1) * o.size]
            else:
                b.reduce_scatter(ctx, o, buf, op)
        return self._collective("reduce_scatter", body, async_op, timeout,
                                lambda: self._sig(o, reduce=op.name), out)

    def all_to_all(self, out, x, async_op=False, timeout=None):
        """Piece j of this rank's ``x`` goes to rank j, landing at piece ``rank`` of
        its ``out``. Equal pieces; ``out``/``x`` are arrays or lists of ``size``."""
        if isinstance(x, (list, tuple)):
            if not x:
                raise CollectiveArgumentError("all_to_all: empty input list")
            first = self._arr(x[0], "all_to_all input[0]")
            xb = self._flat_in(x, first.size, first, "all_to_all")
        else:
            xb = self._arr(x, "all_to_all input")
            if xb.size % self.size:
                raise CollectiveArgumentError(
                    f"all_to_all: input has {xb.size} elements, not a multiple of the "
                    f"group size {self.size}")
        per = xb.size // self.size
        buf, lst = self._flat_out(out, xb[:per] if not isinstance(out, (list, tuple))
                                  else xb[:per], xb.size, "all_to_all")
        b = self._backend

        def body(ctx):
            if self.size == 1:
                buf[...] = xb
            else:
                b.all_to_all(ctx, buf, xb)
            if lst is not None:
                for r, o in enumerate(lst):
                    o.reshape(-1)[...] = buf[r * per:(r + 1) * per]
        return self._collective("all_to_all", body, async_op, timeout,
                                lambda: self._sig(xb), out)

    def barrier(self, async_op=False, timeout=None):
        """Return when every rank of the group has entered the barrier."""
        b = self._backend
        body = (lambda ctx: None) if self.size == 1 else (lambda ctx: b.barrier(ctx))
        return self._collective("barrier", body, async_op, timeout, {})

    # ------------------------------------------------------------------ p2p
    def send(self, x, dst, tag=0, async_op=False, timeout=None):
        """Send ``x`` to group rank ``dst``; matched by ``(source, tag)``."""
        k = self._p2p_send_k
        if k is not None and not async_op and type(x) is np.ndarray and type(dst) is int \
                and not self._send_worker._pending \
                and self._p2p_fast("send", k, self._send_lock, x, dst, tag, timeout):
            return None
        f = self._arr(x, "send")
        if type(dst) is not int or not 0 <= dst < self.size:
            dst = self._rank_arg(dst, "dst")
        if dst == self.rank:
            raise CollectiveArgumentError("send: dst is this rank")
        if type(tag) is not int or not 0 <= tag < 2 ** 31:
            tag = self._tag(tag)
        return self._p2p("send", self._backend.send, async_op, timeout,
                         self._send_worker, self._send_lock, f, dst, tag,
                         getattr(self._backend, "send_nowait", None))

    def try_send(self, x, dst, tag=0):
        """Send ``x`` to group rank ``dst`` now if that needs no wait (a message of
        one slot whose slot is free, over the shared-memory transport with its C
        kernels, no async send of this group still queued): True when sent, False
        when nothing was done (then ``send(..., async_op=True)``). One C call instead
        of an async send's bookkeeping, which cost the pipeline ~0.2 ms per 128 KiB
        activation after a hold (docs/parallelism.md)."""
        k = self._p2p_send_k
        free = getattr(self._backend, "slot_free", None)
        if k is None or free is None or type(x) is not np.ndarray or type(dst) is not int \
                or not 0 <= dst < self.size or dst == self.rank \
                or self._send_worker._pending or not free(x.nbytes, dst):
            return False
        return self._p2p_fast("send", k, self._send_lock, x, dst, tag, None)

    def recv(self, x, src, tag=0, async_op=False, timeout=None):
        """Receive into ``x`` the next message from ``src`` with this ``tag``."""
        k = self._p2p_recv_k
        if k is not None and not async_op and type(x) is np.ndarray and type(src) is int \
                and not self._p2p_stash and not self._recv_worker._pending \
                and self._p2p_fast("recv", k, self._recv_lock, x, src, tag, timeout):
            return None
        f = self._arr(x, "recv", writable=True)
        if type(src) is not int or not 0 <= src < self.size:
            src = self._rank_arg(src, "src")
        if src == self.rank:
            raise CollectiveArgumentError("recv: src is this rank")
        if type(tag) is not int or not 0 <= tag < 2 ** 31:
            tag = self._tag(tag)
        return self._p2p("recv", self._backend.recv, async_op, timeout,
                         self._recv_worker, self._recv_lock, f, src, tag)

    @staticmethod
    def _tag(tag):
        if not isinstance(tag, (int, np.integer)) or not 0 <= int(tag) < 2 ** 31:
            raise CollectiveArgumentError(f"tag must be an int in [0, 2**31), got {tag!r}")
        return int(tag)

    # ------------------------------------------------------------------ lifetime
    def abort(self, reason):
        """Tell the peers this rank gives the group up: their pending and later
        collectives on it raise at once, naming ``reason`` (any thread may call it;
        in-process elastic recovery does when a peer is known dead)."""
        if not self._closed:
            self._backend.abort(str(reason)[:400])

    def synchronize(self, timeout=None):
        """Wait for every async op issued so far."""
        for w in (self._worker, self._send_worker, self._recv_worker):
            w.drain(timeout)

    def destroy(self):
        """Finish pending work, close the backend (shared memory is released)."""
        if self._closed:
            return
        try:
            self.synchronize(timeout=self.timeout)
            if self.name == "default" and _trace._timeline is not None:
                _trace.on_default_destroy(self)  # rank files; rank 0 merges
        finally:
            self._closed = True
            self._fast = None
            self._p2p_send_k = self._p2p_recv_k = None
            for w in (self._worker, self._send_worker, self._recv_worker):
                w.stop()
            self._backend.close()


__all__ = ["ProcessGroup", "Work", "completed_work"]
