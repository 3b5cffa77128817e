"""FlatParamHandle: one FSDP unit's parameters of one dtype, sharded.

Layout. The unit's parameters are partitioned into gradient buckets exactly as DDP
partitions them (``buckets.build_buckets``, reverse order, ``bucket_cap_mb``), each
bucket padded to a multiple of the group size N. The *full* buffer is the
concatenation of the padded buckets; the original parameters become views of it (so
the module's own forward runs on it unchanged). The *shards* -- ``flat_params``, the
Parameters the optimizer sees, one per bucket -- are this rank's 1/N of each bucket.
So a bucket is both the unit of the gradient reduce-scatter and of the parameter
all-gather, and either can start while other buckets are still busy.

Lifetimes. ZeRO-2 (``releasable=False``): the full buffer is permanent, each shard is a view
of its own place in it (so the optimizer updates the full parameters' memory: 4 bytes
per parameter in all, not 4 + 4/N), and it is re-gathered only when a shard changed
(the optimizer stepped: its version moved).
ZeRO-3 (``releasable=True``): the full buffer is a :class:`ReleasableBuffer`; after
use its pages go back to the OS, the views (and whatever the autograd graph saved)
keep their address, and the next all-gather refills them. Gradients: a bucket's
buffer is made when its first gradient arrives, reduce-scattered (AVG) into the
shard's gradient as soon as it is full, and released when that is done.

Variants. ``offload`` (CPUOffload): the shards are host arrays apart from the full
buffer; each all-gather sends their device copy and each reduce-scatter's shard is
copied back. ``param_dtype`` (MixedPrecision, ZeRO-3, float32 parameters): the full
buffer is in that dtype and each all-gather sends the shard cast to it; the shards
stay float32 (``master_values`` gathers them for a full state dict).
"""
import numpy as np

from ... import native
from ...backend import device_of, get_array_module, to_device
from ..._tensor import Tensor
from ...autograd.grad_mode import no_grad
from ...collectives import ReduceOp
from ...nn.parameter import Parameter
from ..buckets import build_buckets
from ._memory import ReleasableBuffer, ReusedZeros


class FlatParamHandle:
    """``entries``: [(fqns, param)] of one dtype, each parameter once (``fqns``: every
    name it has inside the unit: tied weights have several)."""

    def __init__(self, entries, pg, releasable, bucket_cap_bytes, sync_module_states=True,
                 reduce_dtype=None, offload=False, param_dtype=None, overlap=True):
        self.pg = pg
        # whether collectives go to the group's worker thread (async_op) to overlap
        # compute, or run inline on the caller's thread (see fully_sharded._overlaps)
        self.overlap = bool(overlap)
        # CPUOffload (offload.py): the shards the optimizer sees are host arrays
        self.offload = bool(offload)
        # MixedPrecision(reduce_dtype=...): the dtype of the gradient reduce-scatters
        # (None: the parameters' own)
        self.reduce_dtype = reduce_dtype
        self.entries = entries
        self.params = [p for _, p in entries]
        self.releasable = releasable
        n = pg.size
        named = [(names[0], p) for names, p in entries]
        # no small first bucket (DDP's, to start its first allreduce early): a unit is
        # already a small piece of the model, and splitting it doubles its collectives
        # (an 8-block MLP: 17 all-gathers per forward instead of 9, measured 1.5 ms of
        # rank skew and spinning each)
        self.buckets = build_buckets(named, bucket_cap_bytes, pad_to=n,
                                     first_cap_bytes=bucket_cap_bytes)
        for b in self.buckets:
            # each bucket's buffer comes and goes every backward: keep its pages; only
            # the padding needs zeros (every slot is written whole: by ``fill``'s copy
            # or by ``fill_zeros``)
            b._alloc = ReusedZeros(zero_from=b.numel)
        self._grad_bytes = sum(b.flat.nbytes for b in self.buckets)  # materialized ones
        self.segments = []      # per bucket: (full start, padded numel, shard start, shard numel)
        fs = ss = 0
        for b in self.buckets:
            s = b.padded_numel // n
            self.segments.append((fs, b.padded_numel, ss, s))
            fs += b.padded_numel
            ss += s
        self.full_numel, self.shard_numel = fs, ss
        self.dtype = self.params[0]._data.dtype
        # MixedPrecision(param_dtype=...), FULL_SHARD, float32 parameters: the full
        # buffer holds the gathered parameters in that dtype (the shards stay fp32)
        low = param_dtype is not None and releasable and self.dtype == np.float32
        self.param_dtype = np.dtype(param_dtype) if low else self.dtype
        if low:   # (the fp32 values, to shard, come from a transient full buffer)
            self._buffer = ReleasableBuffer(fs, self.param_dtype)
            self.full = np.zeros(fs, self.dtype)
        elif releasable:
            self._buffer = ReleasableBuffer(fs, self.dtype)
            self.full = self._buffer.array
        else:
            self._buffer = None
            self.full = np.zeros(fs, self.dtype)
        self.slot = {}
        for k, (b, (f0, _, _, _)) in enumerate(zip(self.buckets, self.segments)):
            for i, p in enumerate(b.params):
                self.full[f0 + b.offsets[i]:f0 + b.offsets[i + 1]] = p._data.reshape(-1)
                self.slot[id(p)] = (k, i)
        if sync_module_states and n > 1:
            pg.broadcast(self.full, 0)  # every rank starts from rank 0's parameters
        r = pg.rank
        self.flat_params = []
        for f0, _, s0, s in self.segments:
            mine = self.full[f0 + r * s:f0 + (r + 1) * s]
            # ZeRO-3's shard is a copy (the full buffer's pages come and go). (Tried:
            # the shard in symmetric memory, so the all-gather reads peers in place --
            # 8% slower on the shm backend than the C path's single-copy CMA gather.)
            if offload:
                mine = np.array(to_device(mine, "cpu"), copy=True)
            elif releasable:
                mine = mine.copy()
            self.flat_params.append(Parameter(Tensor._make(mine)))
        if low:
            self.full = self._buffer.array   # (refilled by the first all-gather)
        with no_grad():
            for k, (b, (f0, _, _, _)) in enumerate(zip(self.buckets, self.segments)):
                for i, p in enumerate(b.params):
                    p.data = self.full[f0 + b.offsets[i]:f0 + b.offsets[i + 1]].reshape(p.shape)
        self._pending = None        # works of an all-gather in flight
        self._gathered = True
        self._gathered_version = self._versions()
        self._grad_fresh = False    # this backward writes the shard grad (not adds)
        self.launched = [False] * len(self.buckets)
        if releasable:
            self.reshard()

    # ---- parameters -------------------------------------------------------------------
    def _versions(self):
        return [fp._version for fp in self.flat_params]

    def needs_gather(self):
        if self._pending is not None:
            return False
        return not self._gathered or self._versions() != self._gathered_version

    def unshard(self, async_op=False):
        """All-gather the full parameters (each bucket's shards into its place in the
        full buffer); a no-op when they are there already. ``async_op``: start it and
        return (a later unshard() waits); inline (``overlap`` off) it runs now."""
        async_op = async_op and self.overlap
        if self._pending is not None:
            if not async_op:
                self.wait()
            return
        if not self.needs_gather():
            return
        works = []
        device = device_of(self.full)
        for fp, (f0, padded, s0, s) in zip(self.flat_params, self.segments):
            # (offloaded: the host shard's copy where the full parameters live)
            shard = to_device(fp._data, device) if self.offload else fp._data
            if self.param_dtype != self.dtype:
                low = np.empty(shard.size, self.param_dtype)
                native.wire_pack(shard, low)
                shard = low
            if self.pg.size == 1:
                if not np.shares_memory(shard, self.full):
                    self.full[f0:f0 + padded] = shard
                continue
            if not self.releasable and not self.offload:
                # the shard is a piece of the output (ZeRO-2): a backend may write the
                # output before reading every input, so it sends a copy (one bucket's
                # 1/N, transient)
                shard = shard.copy()
            works.append(self.pg.allgather(self.full[f0:f0 + padded], shard,
                                           async_op=async_op))
        self._gathered = True
        self._gathered_version = self._versions()
        if async_op:
            self._pending = [w for w in works if w is not None]

    def wait(self):
        if self._pending is not None:
            works, self._pending = self._pending, None
            for w in works:
                w.wait()

    def reshard(self):
        """ZeRO-3: hand the full parameters' memory back (a no-op for ZeRO-2)."""
        if not self.releasable:
            return
        self.wait()
        if self._gathered:   # (a released buffer again: the madvise is a wasted syscall)
            self._buffer.release()
        self._gathered = False

    def is_gathered(self):
        return self._gathered and self._pending is None

    def master_values(self):
        """{id(param): its full value in the master dtype}: a blocking all-gather of
        the shards into a transient buffer -- what a full state dict holds when the
        gathered parameters are low precision (``param_dtype``)."""
        buf = np.empty(self.full_numel, self.dtype)
        for fp, (f0, padded, _, _) in zip(self.flat_params, self.segments):
            shard = np.ascontiguousarray(to_device(fp._data, device_of(buf)))
            if self.pg.size == 1:
                buf[f0:f0 + padded] = shard
            else:
                self.pg.allgather(buf[f0:f0 + padded], shard)
        out = {}
        for b, (f0, _, _, _) in zip(self.buckets, self.segments):
            for i, p in enumerate(b.params):
                out[id(p)] = buf[f0 + b.offsets[i]:f0 + b.offsets[i + 1]].reshape(p.shape)
        return out

    # ---- gradients --------------------------------------------------------------------
    def begin_backward(self):
        """A synchronising backward starts: the shard gradient is written by this
        backward's reduce-scatters if there is none yet, else they add to it."""
        self._grad_fresh = [fp._grad is None for fp in self.flat_params]
        for fp, fresh in zip(self.flat_params, self._grad_fresh):
            if fresh:
                fp._grad = Tensor._make(np.empty(fp._data.size, self.dtype))
        self.launched = [False] * len(self.buckets)

    def fill(self, p):
        """``p``'s gradient arrived: into its bucket slot. Returns the bucket index if
        that made the bucket full, else None."""
        k, i = self.slot[id(p)]
        b = self.buckets[k]
        if not b.is_materialized():
            b.materialize()
            self._grad_bytes += b.flat.nbytes
        if not b.fill(i, p):
            return None
        return k if b.is_full() else None

    def complete_missing(self):
        """Slots that got no gradient this backward contribute zeros (an accumulated
        gradient from a ``no_sync`` step is kept)."""
        for b in self.buckets:
            for i in b.missing():
                if not b.is_materialized():
                    b.materialize()
                    self._grad_bytes += b.flat.nbytes
                if b.params[i]._grad is b.views[i]:
                    b.ready[i] = True
                    b.n_ready += 1
                else:
                    b.fill_zeros(i)

    def launch(self, k):
        """Start bucket ``k``'s reduce-scatter (AVG) into the shard gradient."""
        b = self.buckets[k]
        g = self.flat_params[k]._grad._data
        send = b.flat
        if self.reduce_dtype is not None and self.reduce_dtype != self.dtype:
            # low-precision wire: one native cast pass into a transient buffer (dropped
            # with the bucket), the shard comes back in the same dtype (finish casts)
            send = np.empty(b.padded_numel, self.reduce_dtype)
            native.wire_pack(b.flat, send)
            out = np.empty(g.size, self.reduce_dtype)
        elif self.offload:
            # the shard comes back where the full gradient is; finish moves it
            out = get_array_module(b.flat).empty(g.size, self.dtype)
        else:
            out = g if self._grad_fresh[k] else np.empty(g.size, self.dtype)
        work = self.pg.reduce_scatter(out, send, ReduceOp.AVG, async_op=self.overlap)
        b.work = (work, out, send)
        self.launched[k] = True

    def finish(self, k):
        """Wait for bucket ``k``'s reduce-scatter, then drop its full gradient."""
        b = self.buckets[k]
        work, out, _ = b.work
        if work is not None:
            work.wait()
        g = self.flat_params[k]._grad._data
        if self.offload:
            out = to_device(out, "cpu")
        if out.dtype != g.dtype:
            if self._grad_fresh[k]:
                native.wire_unpack(out, g, 1.0)
            else:
                g += out.astype(g.dtype)
        elif not self._grad_fresh[k]:
            g += out
        elif out is not g:
            g[...] = out
        for p in b.params:
            p._grad = None  # the full gradient does not outlive its reduction
        self._grad_bytes -= b.flat.nbytes
        b.release()
        b._alloc.release()
        b.work = None

    def all_launched(self):
        return all(self.launched)

    # ---- accounting -------------------------------------------------------------------
    def resident_bytes(self):
        """Bytes of full (gathered) parameters and full gradients this handle holds."""
        full = self.full.nbytes if (not self.releasable or self._gathered) else 0
        return full, self._grad_bytes   # kept up to date: this runs at every hook

    def local_pieces(self):
        """(entry index, start, end, shard view) for each piece of a parameter in this
        rank's shard (``start:end`` index the parameter's flattened elements; the view
        is the shard's memory, so a checkpoint loads into it in place)."""
        return [(j, a, e, self.flat_params[k]._data[off:off + (e - a)])
                for k, j, a, e, off in self.shard_pieces()]

    def shard_pieces(self):
        """(flat param index, entry index, start, end, offset) for each piece of a
        parameter in this rank's shard: elements ``start:end`` of the parameter's
        flattened data are elements ``offset:offset + end - start`` of flat param
        ``k`` (and so of any per-element optimizer state of it)."""
        r = self.pg.rank
        out = []
        index = {id(p): j for j, p in enumerate(self.params)}
        for k, (b, (f0, _, s0, s)) in enumerate(zip(self.buckets, self.segments)):
            lo, hi = r * s, (r + 1) * s
            for i, p in enumerate(b.params):
                a, e = max(lo, int(b.offsets[i])), min(hi, int(b.offsets[i + 1]))
                if a < e:
                    out.append((k, index[id(p)], a - int(b.offsets[i]),
                                e - int(b.offsets[i]), a - lo))
        return out
