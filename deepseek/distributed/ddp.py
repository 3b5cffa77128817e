"""DistributedDataParallel: gradient averaging overlapped with backward.

Gradients are packed into flat buckets in reverse parameter order (``buckets.py``). A
parameter's post-accumulate-grad hook copies its gradient into its bucket slot (once;
afterwards ``param.grad`` *is* a view of the bucket, so later backwards accumulate
straight into it), and when every slot of a bucket is filled the bucket is handed to
the communication hook, which starts its reduction asynchronously, so communication of
late layers overlaps the backward of early ones. A callback queued on the autograd
engine waits for every bucket when backward ends.

How a bucket is reduced is the comm hook's business (``comm_hooks.py``): by default
``allreduce_hook`` (one fp32 AVG allreduce, in place); ``compression='fp16'`` /
``'bf16'`` is the short form of ``register_comm_hook(group, fp16_compress_hook)`` /
``bf16_compress_hook`` (half the bytes, scaled against overflow, fp32 resend on
overflow; over shared memory fp16 is cast inside the reduction, ``shm_fused.py``).
DDP itself knows nothing about compression. Across hosts the built-in hooks are wrapped
by ``zero_blocks.skip_zero_blocks``: a sparse bucket (an embedding table's gradient)
sends only its non-zero blocks, with the same result.
"""
import contextlib
import json

import numpy as np

from .. import nn
from ..autograd.engine import queue_callback
from ..autograd.grad_mode import no_grad
from ..collectives import ReduceOp, get_default_group
# GradBucket: re-exported
from .buckets import GradBucket, auto_bucket_cap, build_buckets  # noqa: F401
from .comm_hooks import allreduce_hook, compression_hook
from .zero_blocks import skip_zero_blocks as _skip_zero_blocks

# the TCP transports between hosts, where zero blocks stay home by default (the ones
# tests/test_multihost.py checks it on)
_TCP = ("zmq", "hier")


def _hook_output(fut):
    """What a waited hook result holds: None (reduced in place) or an array."""
    get = getattr(fut, "value", None) or getattr(fut, "result", None)
    out = get() if get is not None else None
    if out is None or out is True:
        return None
    return getattr(out, "_data", out)  # a Tensor's storage, or the array itself


class DistributedDataParallel(nn.Module):
    """Data parallelism over a process group (PyTorch's DDP shape).

    Args:
        module: the model, identical on every rank (checked at construction).
        bucket_cap_mb: bucket size in MiB; smaller buckets start communicating
            earlier. None (default): ``buckets.auto_bucket_cap`` -- 1/8 of the model's
            gradient, between 1 MiB and PyTorch's 25 MiB, so that small models get
            several buckets and overlap too.
        compression: None (fp32 on the wire), 'fp16' or 'bf16' (half the bytes): the
            short form of ``register_comm_hook(process_group, fp16_compress_hook)``
            (or ``bf16_compress_hook``); on a group of one nothing is compressed.
        overlap_comm: start each bucket's allreduce during backward (False: all after).
        broadcast_buffers: broadcast rank 0's buffers before every forward.
        find_unused_parameters: tolerate parameters that get no gradient in a step.
        process_group: the group (default: the default group).
        comm_hook: ``hook(bucket) -> Work`` replacing the allreduce of a bucket (the
            older, state-less form of :meth:`register_comm_hook`).
        skip_zero_blocks: leave the all-zero blocks of sparse buckets (embedding
            tables: only the batch's rows are non-zero) off the wire, with the same
            result bit for bit (``zero_blocks.py``); built-in hooks only. None
            (default): on over the TCP transports between hosts (``zmq``, ``hier``),
            where every byte costs the link and the kernel's CPU.

    ``buckets`` are the :class:`GradBucket` s in launch order; ``wire_dtype_counts``
    counts bucket reductions by what went on the wire ("fp32", "fp16", "bf16",
    "fp32-resend", "fp32-fallback" -- fp16 over shared memory averaged some blocks in
    fp32 to avoid an overflow --, "zero-blocks" next to the wire dtype of a bucket
    whose zero blocks stayed home, or "hook" for a hook that does not say).
    """

    def __init__(self, module, bucket_cap_mb=None, compression=None, overlap_comm=True,
                 broadcast_buffers=True, find_unused_parameters=False, process_group=None,
                 comm_hook=None, skip_zero_blocks=None, device_ids=None,
                 output_device=None):
        super().__init__()
        if compression not in (None, "none", "fp16", "bf16"):
            raise ValueError(f"compression must be None, 'fp16' or 'bf16', got {compression!r}")
        if comm_hook is not None and compression not in (None, "none"):
            raise ValueError("DistributedDataParallel: give compression= or comm_hook=, not "
                             "both (compression is itself a comm hook)")
        self.module = module
        self.process_group = process_group or get_default_group()
        self.compression = None if compression == "none" else compression
        self.overlap_comm = overlap_comm
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        # how a full bucket is reduced: hook(state, bucket) (see comm_hooks.py)
        pg = self.process_group
        if skip_zero_blocks is None:
            skip_zero_blocks = pg.size > 1 and getattr(pg, "transport", None) in _TCP
        self.skip_zero_blocks = bool(skip_zero_blocks)
        builtin = _skip_zero_blocks if self.skip_zero_blocks else (lambda hook: hook)
        self._comm_hook = builtin(allreduce_hook)
        self._hook_state = pg
        self._hook_registered = False
        self._backward_seen = False
        self.require_backward_grad_sync = True
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if bucket_cap_mb is None:
            self.bucket_cap_bytes = auto_bucket_cap(sum(p._data.nbytes for _, p in named))
        elif not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be positive (or None: automatic), got "
                             f"{bucket_cap_mb!r}")
        else:
            self.bucket_cap_bytes = int(bucket_cap_mb * (1 << 20))
        self._check_same_model(module)
        self._broadcast_state(module)
        # every rank builds the same buckets in the same order (the model was checked
        # to be identical), so the collective allocations line up
        self.buckets = build_buckets(named, self.bucket_cap_bytes,
                                     alloc=lambda n, dtype: pg.symmetric_empty(n, dtype))
        self._slot = {}
        for b in self.buckets:
            for i, p in enumerate(b.params):
                self._slot[id(p)] = (b, i)
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad_ready)
                         for _, p in named]
        self._in_backward = False
        self._next_launch = 0
        self.events = None  # list to record ("ready"/"launch"/"done", index) when set
        self.wire_dtype_counts = {}  # bucket reductions per wire dtype (fp32/fp16/bf16/hook)
        if comm_hook is not None:
            self.register_comm_hook(None, lambda state, bucket: comm_hook(bucket))
        elif self.compression is not None:
            if pg.size > 1:
                # now, not lazily inside backward: the hook's wire buffers are collective
                self.register_comm_hook(pg, builtin(compression_hook(self.compression)))
            # a group of one sends nothing, so it keeps the plain (exact) path; it still
            # counts as registered, so the API behaves the same at every world size
            self._hook_registered = True

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
        """Reduce each full bucket with ``hook(state, bucket)`` instead of the default
        fp32 allreduce (PyTorch's API; the contract is in ``comm_hooks.py``): the hook
        returns a Future (or a collectives Work) after which the bucket holds the
        group's average, in place or as the future's value.

        Call it once, on every rank, before the first backward; ``compression=`` at
        construction counts as a registration. If the hook has ``hook.prepare(state,
        buckets)``, it is called here (on every rank: it may allocate collectively)."""
        if self._hook_registered:
            raise RuntimeError(
                "DistributedDataParallel: register_comm_hook can only be called once (and "
                "compression='fp16'/'bf16' at construction already registers its hook)")
        if self._backward_seen:
            raise RuntimeError("DistributedDataParallel: register_comm_hook must be called "
                               "before the first backward")
        if not callable(hook):
            raise TypeError(f"register_comm_hook: hook must be callable, got {hook!r}")
        prepare = getattr(hook, "prepare", None)
        if prepare is not None:
            prepare(state, self.buckets)
        self._comm_hook, self._hook_state, self._hook_registered = hook, state, True

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
            self._in_backward = self._backward_seen = True
            self._next_launch = 0
            queue_callback(self._finalize)
        if not b.fill(i, p):
            return  # the same parameter used twice in one graph: accumulated already
        self._record("ready", b.index())
        if self.overlap_comm:
            self._launch_ready()

    def _launch_ready(self):
        # buckets are launched in index order on every rank, so collectives line up
        while self._next_launch < len(self.buckets):
            b = self.buckets[self._next_launch]
            if not b.is_full():
                return
            self._launch(b)
            self._next_launch += 1

    def _launch(self, b):
        self._record("launch", b.index())
        b.work = self._comm_hook(self._hook_state, b)

    def _finish_bucket(self, b):
        fut = b.work
        fut.wait()
        out = _hook_output(fut)
        if out is not None and out is not b.flat:
            b.flat[...] = out.reshape(-1)
        counts = self.wire_dtype_counts
        for kind in getattr(fut, "wire_dtypes", None) or ("hook",):
            counts[kind] = counts.get(kind, 0) + 1
        self._record("done", b.index())

    def _finalize(self):
        missing = [(b, i) for b in self.buckets for i in b.missing()]
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
                b.fill_zeros(i)
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
