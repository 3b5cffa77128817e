"""DistributedDataParallel: gradient averaging overlapped with backward.

Gradients are packed into flat buckets in reverse parameter order. A parameter's
post-accumulate-grad hook copies its gradient into its bucket slot (once; afterwards
``param.grad`` *is* a view of the bucket, so later backwards accumulate straight into
it), and when every slot of a bucket is filled the bucket's allreduce is started
asynchronously, so communication of late layers overlaps the backward of early ones.
A callback queued on the autograd engine waits for every bucket when backward ends.

Compression ``'fp16'`` sends each bucket in half precision, scaled so that neither
overflow nor flush-to-zero happens: the scale comes from the previous step's bound on
the summed magnitudes (every rank appends its local max |g| to the bucket, and the
SUM of those bounds every partial sum), so it needs no extra round trip, and because
the reduced buffer is identical on every rank, so is the decision to resend a bucket
in fp32 should it ever overflow. ``'bf16'`` has fp32's range and needs no scale.
"""
import contextlib
import json
import math

import numpy as np

from .. import nn
from ..autograd.engine import queue_callback
from ..autograd.grad_mode import no_grad
from .._tensor import Tensor
from ..collectives import ReduceOp, get_default_group
from .. import native

_FP16_MAX = 65504.0
# below this, the fp16 rounding of a sum of fp16 values cannot reach inf
_SAFE_FP16_SUM = 65504.0 * (1 - 2.0 ** -11)
_FIRST_BUCKET_BYTES = 1 << 20  # as PyTorch: a small first bucket starts comm early


def _abs_max(a):
    """max |a| in two vectorised passes (no |a| temporary)."""
    return max(float(a.max()), -float(a.min())) if a.size else 0.0


def _cast_into(src, dst):
    """dst[...] = src; fp32 <-> fp16/bf16 on the CPU through the native kernels
    (numpy's own half-precision conversion is ~10x slower)."""
    if isinstance(src, np.ndarray):
        native.cast(src, dst.dtype, out=dst)
    else:
        dst[...] = src


def _plain_zeros(n, dtype):
    return np.zeros(n, dtype=dtype)


class GradBucket:
    """One flat gradient buffer and the parameters whose gradients live in it.

    ``alloc(n, dtype)`` makes the flat buffer and the wire buffers; DDP passes the
    group's ``symmetric_empty``, so that on shared memory the allreduce reads every
    rank's bucket where it lies (no staging copy)."""

    def __init__(self, index, params, names, dtype, alloc=_plain_zeros):
        self.index = index
        self.params = params
        self.names = names
        self._alloc = alloc
        sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.numel = int(self.offsets[-1])
        self.flat = alloc(self.numel, dtype)
        self.views = [Tensor._make(self.flat[self.offsets[i]:self.offsets[i + 1]].reshape(p.shape))
                      for i, p in enumerate(params)]
        for v in self.views:
            v._inplace_grad = True  # the engine accumulates into it in place
        self.ready = [False] * len(params)
        self.n_ready = 0
        self.work = None
        self.comm = None        # per-step state of the compressed path
        self.bound = None       # previous step's SUM of local max|g| (fp16 scaling)
        self._payloads = {}     # wire dtype -> reusable send/receive buffer

    def payload(self, dtype):
        """The bucket's wire buffer for ``dtype``: numel + 1 (the bound rides along).
        Made ahead by DDP for its compression (``alloc`` may be collective)."""
        dtype = np.dtype(dtype)
        buf = self._payloads.get(dtype)
        if buf is None:
            buf = self._payloads[dtype] = self._alloc(self.numel + 1, dtype)
        return buf

    def buffer(self):
        """The flat gradient array (what a comm hook must reduce in place)."""
        return self.flat

    def parameters(self):
        return list(self.params)

    def reset(self):
        self.ready = [False] * len(self.params)
        self.n_ready = 0
        self.work = None
        self.comm = None


class DistributedDataParallel(nn.Module):
    """Data parallelism over a process group (PyTorch's DDP shape).

    Args:
        module: the model, identical on every rank (checked at construction).
        bucket_cap_mb: bucket size; smaller buckets start communicating earlier.
        compression: None (fp32 on the wire), 'fp16' or 'bf16' (half the bytes).
        overlap_comm: start each bucket's allreduce during backward (False: all after).
        broadcast_buffers: broadcast rank 0's buffers before every forward.
        find_unused_parameters: tolerate parameters that get no gradient in a step.
        process_group: the group (default: the default group).
        comm_hook: ``hook(bucket) -> Work`` replacing the allreduce of a bucket.
    """

    def __init__(self, module, bucket_cap_mb=25, compression=None, overlap_comm=True,
                 broadcast_buffers=True, find_unused_parameters=False, process_group=None,
                 comm_hook=None, device_ids=None, output_device=None):
        super().__init__()
        if compression not in (None, "none", "fp16", "bf16"):
            raise ValueError(f"compression must be None, 'fp16' or 'bf16', got {compression!r}")
        self.module = module
        self.process_group = process_group or get_default_group()
        self.compression = None if compression == "none" else compression
        self.overlap_comm = overlap_comm
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self._comm_hook = comm_hook
        self._hook_state = None
        self.require_backward_grad_sync = True
        self.bucket_cap_bytes = int(bucket_cap_mb * (1 << 20))

        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self._check_same_model(module)
        self._broadcast_state(module)
        self.buckets = self._build_buckets(named)
        self._slot = {}
        for b in self.buckets:
            for i, p in enumerate(b.params):
                self._slot[id(p)] = (b, i)
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad_ready)
                         for _, p in named]
        self._in_backward = False
        self._next_launch = 0
        self.events = None  # list to record ("ready"/"launch"/"done", index) when set
        self.wire_dtype_counts = {}  # bucket launches per wire dtype (fp32/fp16/bf16/hook)

    # ---- construction --------------------------------------------------------------
    def _exchange_json(self, obj):
        """All ranks' JSON values (through the group: a length MAX, then an allgather)."""
        pg = self.process_group
        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
        n = np.array([data.size], dtype=np.int64)
        pg.allreduce(n, ReduceOp.MAX)
        buf = np.zeros(int(n[0]), dtype=np.uint8)
        buf[:data.size] = data
        out = np.zeros(pg.size * buf.size, dtype=np.uint8)
        pg.allgather(out, buf)
        return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in out.reshape(pg.size, -1)]

    def _check_same_model(self, module):
        sig = [[n, list(p.shape), str(p.dtype)] for n, p in module.named_parameters()]
        if self.process_group.size == 1:
            return
        sigs = self._exchange_json(sig)
        ref = sigs[0]
        for r, other in enumerate(sigs):
            if other == ref:
                continue
            for a, b in zip(ref, other):
                if a != b:
                    raise RuntimeError(
                        f"DistributedDataParallel: the model differs between ranks: rank 0 has "
                        f"parameter {a[0]} with shape {a[1]} ({a[2]}) but rank {r} has {b[0]} with "
                        f"shape {b[1]} ({b[2]}); every rank must build the same model")
            raise RuntimeError(f"DistributedDataParallel: rank 0 has {len(ref)} parameters but rank "
                               f"{r} has {len(other)}; every rank must build the same model")

    def _broadcast_state(self, module):
        """Make every rank start from rank 0's parameters and buffers."""
        if self.process_group.size == 1:
            return
        with no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                arr = t._data
                if not arr.flags.c_contiguous:
                    tmp = np.ascontiguousarray(arr)
                    self.process_group.broadcast(tmp, 0)
                    arr[...] = tmp
                else:
                    self.process_group.broadcast(arr, 0)
                t._bump_version()

    def _build_buckets(self, named):
        # every rank builds the same buckets in the same order (the model was checked
        # to be identical), so the collective allocations line up
        pg = self.process_group
        alloc = lambda n, dtype: pg.symmetric_empty(n, dtype)  # noqa: E731
        buckets, cur, cur_names, cur_bytes = [], [], [], 0
        for name, p in reversed(named):
            cap = min(self.bucket_cap_bytes, _FIRST_BUCKET_BYTES) if not buckets \
                else self.bucket_cap_bytes
            if cur and (cur_bytes + p._data.nbytes > cap or p.dtype != cur[0].dtype):
                buckets.append(GradBucket(len(buckets), cur, cur_names, cur[0].dtype, alloc))
                cur, cur_names, cur_bytes = [], [], 0
            cur.append(p)
            cur_names.append(name)
            cur_bytes += p._data.nbytes
        if cur:
            buckets.append(GradBucket(len(buckets), cur, cur_names, cur[0].dtype, alloc))
        if pg.size > 1 and self.compression is not None:
            import ml_dtypes

            wire = [np.float32, np.float16] if self.compression == "fp16" \
                else [ml_dtypes.bfloat16]
            for b in buckets:  # now, not lazily inside backward: the allocation is collective
                for dt in wire:
                    b.payload(dt)
        return buckets

    # ---- forward -------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and self.process_group.size > 1:
            bufs = [b for b in self.module.buffers()]
            if bufs:
                with no_grad():
                    for b in bufs:
                        self.process_group.broadcast(b._data, 0)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Skip gradient communication inside (gradient accumulation steps)."""
        prev = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = prev

    def register_comm_hook(self, state, hook):
        """Replace each bucket's allreduce with ``hook(state, bucket) -> Work``."""
        self._hook_state = state
        self._comm_hook = lambda bucket: hook(state, bucket)

    def remove_hooks(self):
        """Detach from the wrapped module's parameters: their gradients stop being
        averaged, and the module can be wrapped again (e.g. by a later fit)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ---- backward ------------------------------------------------------------------
    def _record(self, what, index):
        if self.events is not None:
            self.events.append((what, index))

    def _on_grad_ready(self, p):
        if not self.require_backward_grad_sync:
            return
        b, i = self._slot[id(p)]
        if not self._in_backward:
            self._in_backward = True
            self._next_launch = 0
            queue_callback(self._finalize)
        view = b.views[i]
        if p.grad is not view:
            view._data[...] = p.grad._data
            p.grad = view
        if b.ready[i]:
            return  # the same parameter used twice in one graph: accumulated already
        b.ready[i] = True
        b.n_ready += 1
        self._record("ready", b.index)
        if self.overlap_comm:
            self._launch_ready()

    def _launch_ready(self):
        # buckets are launched in index order on every rank, so collectives line up
        while self._next_launch < len(self.buckets):
            b = self.buckets[self._next_launch]
            if b.n_ready < len(b.params):
                return
            self._launch(b)
            self._next_launch += 1

    def _launch(self, b):
        self._record("launch", b.index)
        pg = self.process_group
        if self._comm_hook is not None:
            b.work = self._comm_hook(b)
            kind = "hook"
        elif self.compression is None or pg.size == 1:
            b.work = pg.allreduce(b.flat, ReduceOp.AVG, async_op=True)
            kind = "fp32"
        else:
            b.work = self._launch_compressed(b)
            kind = b.comm[0]
        self.wire_dtype_counts[kind] = self.wire_dtype_counts.get(kind, 0) + 1

    def _launch_compressed(self, b):
        pg = self.process_group
        flat = b.flat
        local_max = _abs_max(flat)  # NaN/inf in the gradient make it non-finite too
        if self.compression == "bf16":
            import ml_dtypes
            payload = b.payload(ml_dtypes.bfloat16)
            _cast_into(flat, payload[:-1])
            payload[-1] = local_max
            b.comm = ("bf16", payload, 1.0)
            return pg.allreduce(payload, ReduceOp.SUM, async_op=True)
        if b.bound is None or not math.isfinite(b.bound):
            # first step: no bound yet, send fp32 (and learn the bound)
            payload = b.payload(np.float32)
            payload[:-1] = flat
            payload[-1] = local_max
            b.comm = ("fp32", payload, 1.0)
            return pg.allreduce(payload, ReduceOp.SUM, async_op=True)
        # largest power of two keeping 4x the last step's sum bound under fp16 max
        bound = max(b.bound, 1e-30)
        scale = 2.0 ** math.floor(math.log2(_FP16_MAX / (4.0 * bound)))
        scale = min(scale, 2.0 ** 40)
        payload = b.payload(np.float16)
        # flat is overwritten by the result when the bucket finishes, so it can carry
        # the scaled values meanwhile (a power of two: exact, and undone exactly)
        flat *= np.float32(scale)
        _cast_into(flat, payload[:-1])
        # inf when this rank's own values overflowed fp16: the reduced bound then shows it
        payload[-1] = local_max * scale if local_max * scale <= _FP16_MAX else np.inf
        b.comm = ("fp16", payload, scale)
        return pg.allreduce(payload, ReduceOp.SUM, async_op=True)

    def _finish_bucket(self, b):
        b.work.wait()
        out = getattr(b.work, "_result", None)
        if self._comm_hook is not None and isinstance(out, np.ndarray) and out is not b.flat:
            b.flat[...] = out.reshape(-1)
        if b.comm is not None:
            kind, payload, scale = b.comm
            n = self.process_group.size
            bound = float(payload[-1]) / scale
            # every element of the sum is bounded by the sum of the ranks' local maxima
            # (the last slot), so a finite bound under fp16's max proves no element
            # overflowed: no pass over the data is needed to check
            if kind == "fp16" and not (float(payload[-1]) <= _SAFE_FP16_SUM):
                # overflow despite the margin: every rank sees the same reduced buffer,
                # so every rank resends this bucket in fp32 (flat still holds the local
                # gradient times a power of two: undone exactly)
                b.flat *= np.float32(1.0 / scale)
                self.process_group.allreduce(b.flat, ReduceOp.AVG)
                b.bound = None
                self.wire_dtype_counts["fp32-resend"] = \
                    self.wire_dtype_counts.get("fp32-resend", 0) + 1
            else:
                _cast_into(payload[:-1], b.flat)
                b.flat *= np.float32(1.0 / (scale * n))
                b.bound = bound
        self._record("done", b.index)

    def _finalize(self):
        missing = [(b, i) for b in self.buckets for i, r in enumerate(b.ready) if not r]
        if missing:
            if not self.find_unused_parameters:
                names = [b.names[i] for b, i in missing]
                self._reset()
                raise RuntimeError(
                    "DistributedDataParallel: these parameters received no gradient in this "
                    f"backward: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}. Either "
                    "use every parameter's output in the loss, or construct DDP with "
                    "find_unused_parameters=True")
            for b, i in missing:
                # unused here: contribute zeros, receive the other ranks' average
                b.views[i]._data[...] = 0
                b.params[i].grad = b.views[i]
                b.ready[i] = True
                b.n_ready += 1
        if self.overlap_comm:
            self._launch_ready()
        else:
            for b in self.buckets:
                self._launch(b)
        try:
            for b in self.buckets:
                self._finish_bucket(b)
        finally:
            self._reset()

    def _reset(self):
        self._in_backward = False
        self._next_launch = 0
        for b in self.buckets:
            b.reset()

    # ---- state ---------------------------------------------------------------------
    def __getstate__(self):
        raise TypeError("DistributedDataParallel cannot be pickled; save ddp.module.state_dict()")


DDP = DistributedDataParallel
