"""Gradient buckets: flat buffers that a parameter's gradient lives in.

A :class:`GradBucket` is one flat array holding the gradients of a run of parameters
(``param.grad`` becomes a view of its slot once filled, so later backwards accumulate
straight into it) plus the bookkeeping of one backward: which slots are filled. It
knows nothing about how it is communicated: DDP hands it to a comm hook
(``comm_hooks.py``) when it is full, and FSDP (ZeRO-2/3, ``fsdp/``) reduce-scatters
the same buckets (padded to a multiple of the group size with ``pad_to``, and released
after their reduction with ``release``/``materialize``).

:func:`build_buckets` partitions parameters into buckets the same way on every rank
(reverse order: gradients arrive roughly last layer first; a small first bucket, as
PyTorch, so communication starts early; one dtype per bucket), which is what lets the
collective allocations and the bucket collectives line up across ranks.

The bucket API follows PyTorch's ``torch.distributed.GradBucket`` (``index()``,
``buffer()``, ``gradients()``, ``parameters()``, ``is_last()``, ``set_buffer()``),
except that ``buffer()`` is the raw backend array (numpy/cupy), which is what the
collectives take.
"""
import numpy as np

from .._tensor import Tensor

FIRST_BUCKET_BYTES = 1 << 20  # as PyTorch: a small first bucket starts comm early
MAX_BUCKET_BYTES = 25 << 20   # PyTorch's cap: large models keep it
MIN_BUCKETS = 8               # the automatic cap cuts a small model into about this many


def auto_bucket_cap(total_bytes):
    """DDP's default cap for a model with ``total_bytes`` of gradient: 1/MIN_BUCKETS of
    it, at least 1 MiB and at most PyTorch's 25 MiB.

    Why: a fixed 25 MB cap (tuned for GPUs, where one launch costs much) leaves a model
    of a few MB with one big bucket that fills only when backward ends, so nothing
    overlaps (the issue's 7.4 MB MLP: two buckets, overlap on or off the same). Over
    TCP between CPU hosts a bucket's fixed cost is about a millisecond (a small
    allreduce between two network namespaces, scripts/bench_multihost.py), so small
    models can afford several buckets; large models (BERT-base: 17 buckets at 25 MiB)
    are unchanged. Parameters are never split, so a bucket may still exceed
    the cap when one parameter does."""
    return int(min(MAX_BUCKET_BYTES, max(FIRST_BUCKET_BYTES, total_bytes // MIN_BUCKETS)))


def _plain_zeros(n, dtype):
    return np.zeros(n, dtype=dtype)


class GradBucket:
    """One flat gradient buffer and the parameters whose gradients live in it.

    Args:
        index: position in launch order (the same on every rank).
        params, names: the parameters (and their names, for error messages).
        dtype: the buffer's dtype (one per bucket).
        alloc: ``alloc(n, dtype) -> array``; DDP passes the group's
            ``symmetric_empty``, so that on shared memory the allreduce reads every
            rank's bucket where it lies (no staging copy). It may be collective: every
            rank makes the same buckets in the same order.
        is_last: whether this is the last bucket launched in a backward.
    """

    def __init__(self, index, params, names, dtype, alloc=_plain_zeros, is_last=False,
                 pad_to=1):
        self._index = index
        self.params = params
        self.names = names
        self._alloc = alloc
        self._is_last = is_last
        self.dtype = np.dtype(dtype)
        sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.numel = int(self.offsets[-1])
        # ZeRO reduce-scatters the bucket: its buffer is padded (with zeros that no
        # parameter sees) to a multiple of the group size; DDP's pad_to is 1
        self.padded_numel = max(1, -(-self.numel // pad_to)) * pad_to if pad_to > 1 \
            else self.numel
        self.flat = None
        self.views = None
        self.materialize()
        self.ready = [False] * len(params)
        self.n_ready = 0
        self.work = None        # what the comm hook returned for this backward
        # per-bucket state a comm hook keeps across steps (fp16_compress_hook keeps its
        # scale bound here); one hook per bucket, so the keys are the hook's own
        self.scratch = {}
        self._wire = {}         # (dtype, extra) -> reusable wire buffer

    # ---- PyTorch's GradBucket ------------------------------------------------------
    def index(self):
        """The bucket's position in launch order (the same on every rank)."""
        return self._index

    def buffer(self):
        """The flat gradient array: what a comm hook reduces (in place, or it returns
        the reduced array, which is copied back)."""
        return self.flat

    def set_buffer(self, array):
        """Overwrite the bucket's gradients with ``array`` (same number of elements)."""
        self.flat[...] = getattr(array, "_data", array).reshape(-1)

    def gradients(self):
        """The gradients as tensors shaped like their parameters (views of the buffer)."""
        return list(self.views)

    def parameters(self):
        """The parameters whose gradients live in this bucket."""
        return list(self.params)

    def is_last(self):
        """Whether this is the last bucket to be launched in a backward."""
        return self._is_last

    # ---- wire buffers --------------------------------------------------------------
    def wire_buffer(self, dtype, extra=0):
        """A reusable buffer of ``numel + extra`` elements of ``dtype``, made with the
        bucket's allocator (symmetric memory under DDP) and cached. The allocation may
        be collective, so a hook makes its buffers ahead, in ``hook.prepare``, not
        lazily inside backward."""
        key = (np.dtype(dtype), int(extra))
        buf = self._wire.get(key)
        if buf is None:
            buf = self._wire[key] = self._alloc(self.numel + key[1], key[0])
        return buf

    # ---- one backward's bookkeeping -------------------------------------------------
    def fill(self, i, param):
        """Slot ``i``'s gradient has been accumulated into ``param.grad``: make it live in
        the bucket (copied once; afterwards ``param.grad`` is the slot's view) and mark
        the slot ready. Returns False if it was ready already (a parameter used twice
        in one graph: the second use accumulated into the view in place)."""
        view = self.views[i]
        if param.grad is not view:
            view._data[...] = param.grad._data
            param.grad = view
        if self.ready[i]:
            return False
        self.ready[i] = True
        self.n_ready += 1
        return True

    def is_full(self):
        """Every slot is ready: the bucket can be communicated."""
        return self.n_ready == len(self.params)

    def missing(self):
        """Indices of the slots not ready yet."""
        return [i for i, r in enumerate(self.ready) if not r]

    def fill_zeros(self, i):
        """Slot ``i`` got no gradient this backward: contribute zeros (its parameter's
        ``grad`` becomes the slot's view, and so receives the other ranks' average)."""
        self.views[i]._data[...] = 0
        self.params[i].grad = self.views[i]
        if not self.ready[i]:
            self.ready[i] = True
            self.n_ready += 1

    # ---- a buffer that comes and goes (ZeRO-2/3) -------------------------------------
    def materialize(self):
        """(Re)allocate the flat buffer and the gradient views over it (zero-filled)."""
        self.flat = self._alloc(self.padded_numel, self.dtype)
        self.views = [Tensor._make(self.flat[self.offsets[i]:self.offsets[i + 1]].reshape(p.shape))
                      for i, p in enumerate(self.params)]
        for v in self.views:
            v._inplace_grad = True  # the engine accumulates into it in place

    def release(self):
        """Drop the flat buffer (ZeRO-2/3, once its reduce-scatter is done: the full
        gradient does not outlive its reduction); :meth:`materialize` makes a new one.
        The parameters' ``grad`` must be cleared by the caller (they are views)."""
        self.flat = None
        self.views = None
        self._wire = {}

    def is_materialized(self):
        return self.flat is not None

    def reset(self):
        """Forget this backward (slots unready, no pending work); scratch stays."""
        self.ready = [False] * len(self.params)
        self.n_ready = 0
        self.work = None

    def __repr__(self):
        return (f"<GradBucket {self._index}: {len(self.params)} params, {self.numel} "
                f"{self.flat.dtype} elements>")


def build_buckets(named_params, cap_bytes, alloc=_plain_zeros,
                  first_cap_bytes=FIRST_BUCKET_BYTES, pad_to=1):
    """Partition ``named_params`` ([(name, param)], in model order) into GradBuckets.

    Parameters are taken in reverse order (gradients arrive roughly last layer first);
    a bucket closes when the next parameter would take it past its cap (the first
    bucket's cap is ``min(cap_bytes, first_cap_bytes)``) or has another dtype. Pure
    function of the parameters' shapes and dtypes, so every rank of a group builds
    the same buckets in the same order. ``pad_to``: each buffer is padded to a multiple
    of it (ZeRO: the group size, so that it reduce-scatters into equal shards)."""
    groups, cur, cur_names, cur_bytes = [], [], [], 0
    for name, p in reversed(named_params):
        cap = min(cap_bytes, first_cap_bytes) if not groups else cap_bytes
        if cur and (cur_bytes + p._data.nbytes > cap or p.dtype != cur[0].dtype):
            groups.append((cur, cur_names))
            cur, cur_names, cur_bytes = [], [], 0
        cur.append(p)
        cur_names.append(name)
        cur_bytes += p._data.nbytes
    if cur:
        groups.append((cur, cur_names))
    return [GradBucket(i, ps, ns, ps[0].dtype, alloc, is_last=(i == len(groups) - 1),
                       pad_to=pad_to)
            for i, (ps, ns) in enumerate(groups)]
