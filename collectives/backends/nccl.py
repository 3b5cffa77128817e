"""The ``nccl`` backend: ``cupy.cuda.nccl`` for cupy arrays on GPUs.

The NCCL unique id is created by group rank 0 and exchanged through the store. Every
op runs on the group's device (the async worker thread has its own CUDA "current
device", so each call selects it) and on the current CuPy stream of the calling thread,
and is waited for before returning (so ``wait()`` semantics match the CPU backends;
overlap comes from the async worker thread). That wait polls a CUDA event against the
op's deadline: a peer that never arrives gives a CollectiveTimeoutError and an aborted
communicator, not a hang. Without cupy or a GPU, :func:`available` is False and the
tests skip.
bfloat16 has no cupy dtype; NCCL's bfloat16 type code is used when the array's dtype
is named bfloat16. AVG uses ncclAvg where the NCCL build has it, else SUM and a scale.
"""
import base64
import functools
import time

from ..errors import CollectiveArgumentError, CollectiveTimeoutError
from ..reduce_ops import ReduceOp
from .base import Backend


def available():
    try:
        import cupy
        from cupy.cuda import nccl  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device
        return False


def _nccl():
    from cupy.cuda import nccl

    return nccl


def _on_device(fn):
    """Run a backend method with the group's device current, skipping empty arrays
    (every rank has the same element count, so all skip together)."""
    @functools.wraps(fn)
    def call(self, ctx, *arrays_and_args):
        if any(getattr(a, "size", 1) == 0 for a in arrays_and_args[:2]
               if hasattr(a, "__cuda_array_interface__")):
            return None
        with self._device:
            return fn(self, ctx, *arrays_and_args)
    return call


class NcclBackend(Backend):
    name = "nccl"
    array_kind = "cupy"

    def __init__(self, rank, size, store, prefix, timeout, device=None):
        import cupy

        super().__init__(rank, size)
        nccl = _nccl()
        if device is not None:
            count = cupy.cuda.runtime.getDeviceCount()
            if not 0 <= device < count:
                raise CollectiveArgumentError(
                    f"nccl backend: this rank's local rank is {device} but {count} GPU(s) "
                    "are visible; NCCL needs one GPU per rank (start at most that many "
                    "ranks per host, or set CUDA_VISIBLE_DEVICES)")
            cupy.cuda.Device(device).use()
        self._device = cupy.cuda.Device(device if device is not None
                                        else cupy.cuda.Device().id)
        key = f"{prefix}/nccl_id"
        if rank == 0:
            uid = nccl.get_unique_id()  # bytes (cupy >= 14) or a tuple of signed chars
            raw = bytes(uid) if isinstance(uid, (bytes, bytearray)) \
                else bytes(b % 256 for b in uid)
            store.set(key, base64.b64encode(raw))
        raw = base64.b64decode(store.get(key, timeout=timeout))
        # NCCL's own init blocks until every rank joins, with no timeout: meet in the
        # store first, so a rank that never comes is a timeout error naming it
        store.set(f"{prefix}/nccl_here/{rank}", b"1")
        here = [f"{prefix}/nccl_here/{r}" for r in range(size)]
        try:
            store.multi_get(here, timeout=timeout)
        except TimeoutError:
            missing = sorted(here.index(k) for k in store.missing(here))
            raise CollectiveTimeoutError(
                f"nccl backend: timed out after {timeout:g}s waiting for group ranks "
                f"{missing} to create the communicator", op="init", seq=0, group=prefix,
                rank=rank, missing=missing) from None
        try:
            self.comm = nccl.NcclCommunicator(size, raw, rank)
        except TypeError:  # cupy < 14 takes the id as a tuple of signed chars
            self.comm = nccl.NcclCommunicator(
                size, tuple(b - 256 if b > 127 else b for b in raw), rank)
        self._cupy = cupy
        self._ops = {ReduceOp.SUM: nccl.NCCL_SUM, ReduceOp.MAX: nccl.NCCL_MAX,
                     ReduceOp.MIN: nccl.NCCL_MIN, ReduceOp.PRODUCT: nccl.NCCL_PROD,
                     ReduceOp.AVG: getattr(nccl, "NCCL_AVG", None)}
        self._types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
                       "float64": nccl.NCCL_FLOAT64, "int32": nccl.NCCL_INT32,
                       "int64": nccl.NCCL_INT64, "int8": nccl.NCCL_INT8,
                       "uint8": nccl.NCCL_UINT8,
                       "bfloat16": getattr(nccl, "NCCL_BFLOAT16", None)}

    # helpers -------------------------------------------------------------------
    def _stream(self):
        return self._cupy.cuda.get_current_stream()

    def _type(self, x):
        t = self._types.get(str(x.dtype))
        if t is None:
            raise CollectiveArgumentError(f"nccl backend does not support dtype {x.dtype}")
        return t

    def _op(self, op):
        nop = self._ops[op]
        return (self._ops[ReduceOp.SUM], True) if nop is None else (nop, False)

    def _sync(self, stream, ctx=None):
        """Wait for the op just enqueued on ``stream``; give up at the deadline."""
        if ctx is None:
            stream.synchronize()
            return
        ev = self._cupy.cuda.Event(block=False, disable_timing=True)
        ev.record(stream)
        spin_until = time.perf_counter() + 200e-6  # small ops finish within a spin
        pause = 20e-6
        while not ev.done:
            now = time.perf_counter()
            if now < spin_until:
                continue
            if now > ctx.deadline:
                self.abort(f"timeout in {ctx.describe()}")
                raise ctx.timeout_error([r for r in range(self.size) if r != self.rank],
                                        "NCCL peers (any of)")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    # collectives ---------------------------------------------------------------
    @_on_device
    def allreduce(self, ctx, x, op):
        s = self._stream()
        nop, scale = self._op(op)
        self.comm.allReduce(x.data.ptr, x.data.ptr, x.size, self._type(x), nop, s.ptr)
        if scale:
            x /= self.size
        self._sync(s, ctx)

    @_on_device
    def reduce(self, ctx, x, root, op):
        s = self._stream()
        nop, scale = self._op(op)
        self.comm.reduce(x.data.ptr, x.data.ptr, x.size, self._type(x), nop, root, s.ptr)
        if scale and self.rank == root:
            x /= self.size
        self._sync(s, ctx)

    @_on_device
    def broadcast(self, ctx, x, root):
        s = self._stream()
        u = x.view("uint8")
        self.comm.bcast(u.data.ptr, u.size, _nccl().NCCL_UINT8, root, s.ptr)
        self._sync(s, ctx)

    @_on_device
    def allgather(self, ctx, out, x):
        s = self._stream()
        xu, ou = x.view("uint8"), out.view("uint8")
        self.comm.allGather(xu.data.ptr, ou.data.ptr, xu.size, _nccl().NCCL_UINT8, s.ptr)
        self._sync(s, ctx)

    @_on_device
    def reduce_scatter(self, ctx, out, x, op):
        s = self._stream()
        nop, scale = self._op(op)
        self.comm.reduceScatter(x.data.ptr, out.data.ptr, out.size, self._type(x), nop,
                                s.ptr)
        if scale:
            out /= self.size
        self._sync(s, ctx)

    def _grouped(self, fn):
        nccl = _nccl()
        nccl.groupStart()
        try:
            fn()
        finally:
            nccl.groupEnd()

    @_on_device
    def gather(self, ctx, out, x, root):
        s, u8 = self._stream(), _nccl().NCCL_UINT8
        xu = x.view("uint8")
        m = xu.size

        def body():
            self.comm.send(xu.data.ptr, m, u8, root, s.ptr)
            if self.rank == root:
                ou = out.view("uint8")
                for r in range(self.size):
                    self.comm.recv(ou[r * m:(r + 1) * m].data.ptr, m, u8, r, s.ptr)
        self._grouped(body)
        self._sync(s, ctx)

    @_on_device
    def scatter(self, ctx, out, x, root):
        s, u8 = self._stream(), _nccl().NCCL_UINT8
        ou = out.view("uint8")
        m = ou.size

        def body():
            if self.rank == root:
                xu = x.view("uint8")
                for r in range(self.size):
                    self.comm.send(xu[r * m:(r + 1) * m].data.ptr, m, u8, r, s.ptr)
            self.comm.recv(ou.data.ptr, m, u8, root, s.ptr)
        self._grouped(body)
        self._sync(s, ctx)

    @_on_device
    def all_to_all(self, ctx, out, x):
        s, u8 = self._stream(), _nccl().NCCL_UINT8
        xu, ou = x.view("uint8"), out.view("uint8")
        m = xu.size // self.size

        def body():
            for r in range(self.size):
                self.comm.send(xu[r * m:(r + 1) * m].data.ptr, m, u8, r, s.ptr)
                self.comm.recv(ou[r * m:(r + 1) * m].data.ptr, m, u8, r, s.ptr)
        self._grouped(body)
        self._sync(s, ctx)

    @_on_device
    def barrier(self, ctx):
        one = self._cupy.zeros(1, dtype="float32")
        self.allreduce(ctx, one, ReduceOp.SUM)

    @_on_device
    def send(self, ctx, x, dst, tag):
        s = self._stream()
        u = x.view("uint8")
        self.comm.send(u.data.ptr, u.size, _nccl().NCCL_UINT8, dst, s.ptr)
        self._sync(s, ctx)

    @_on_device
    def recv(self, ctx, x, src, tag):
        s = self._stream()
        u = x.view("uint8")
        self.comm.recv(u.data.ptr, u.size, _nccl().NCCL_UINT8, src, s.ptr)
        self._sync(s, ctx)

    def abort(self, reason):
        try:
            self.comm.abort()
        except Exception:  # noqa: BLE001
            pass

    def close(self):
        try:
            self.comm.destroy()
        except Exception:  # noqa: BLE001
            pass
