"""fp32 arithmetic with fp16/bf16 storage for CPU ops under autocast.

numpy computes on bfloat16 through ml_dtypes' scalar loops (a bf16 ``sum`` is ~30x, an
``add`` ~4x slower than fp32) and has no fp16 BLAS. PyTorch's CPU kernels for bf16
convert vectors to fp32, compute, and round the result; ``LowpCompute`` does the same
one op at a time: it wraps an op (``_inner``, a ``Function``) called on low-precision
inputs, converts them to fp32 with the native kernels, runs the op's own forward, and
rounds its floating outputs back to the input dtype. What the op saved for backward is
stored in the low dtype too (activation memory is what mixed precision is for):

- a saved fp32 copy of an input is replaced by the original low-precision input;
- a saved fp32 output by the rounded output that was returned (no second copy);
- any other fp32 array of activation size (half the largest input or more) is rounded;
  small ones (means, inverse std of a norm) stay fp32.

Backward converts them back, runs the op's backward in fp32, and returns each gradient
in its input's dtype. Outputs have exactly the dtype the op gives on low inputs, so
the autocast parity with PyTorch holds; values are those of fp32 math rounded once.

Only ops that compute run through here (``runs_in_fp32_on_cpu``): the ops of
``deepseek.ops`` outside its data-movement modules. Views and data movement (reshape, cat, indexing, pad) run
on low-precision arrays directly: they copy bytes, which is as fast in any dtype.
matmul/linear/conv have their own blocked GEMM (``deepseek.ops._lowp``).
"""
import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function, Context

_LOW = (_dt.float16, _dt.bfloat16)
# modules of deepseek.ops whose ops move bytes rather than compute (views, copies,
# gathers, padding): they run on low-precision arrays as they are. linalg and conv
# have their own low-precision GEMM. Every other op of deepseek.ops computes.
_DATA_MODULES = frozenset("deepseek.ops." + m for m in (
    "shape", "shape_extra", "indexing", "padding", "embedding", "creation", "nondiff",
    "linalg", "conv"))
_memo = {}


def runs_in_fp32_on_cpu(fn):
    """Whether autocast runs ``fn`` on low-precision CPU inputs through LowpCompute."""
    r = _memo.get(fn)
    if r is None:
        mod = fn.__module__
        r = _memo[fn] = (not fn.is_view and mod.startswith("deepseek.ops.")
                         and mod not in _DATA_MODULES)
    return r


def has_cpu_fp16_path(fn):
    """Whether a 'lower' op can run in float16 on the CPU: the GEMM ops have a native
    fp16 path, the ones computed through LowpCompute run in fp32 inside."""
    from ..ops import linalg, conv
    return fn in (linalg.Matmul, linalg.Linear, conv.ConvNd) or runs_in_fp32_on_cpu(fn)


def _up(a):
    from ..ops._lowp import to_f32
    return to_f32(a)


def _down(a, dtype):
    from ..ops._lowp import from_f32
    return from_f32(a, dtype)


class LowpCompute(Function):
    """``_inner`` computed in fp32 on low-precision inputs (see the module docstring).

    The order of the steps keeps the fp32 working set at what the fp32 op itself has
    (input and output): the widened inputs are dropped before the outputs are
    rounded, and each fp32 output right after its rounding."""

    @staticmethod
    def forward(ctx, *arrays, _inner, _kwargs):
        low = next(a.dtype for a in arrays if isinstance(a, np.ndarray) and a.dtype in _LOW)
        ups, originals = [], {}
        for a in arrays:
            if isinstance(a, np.ndarray) and a.dtype in _LOW:
                ups.append(_up(a))
                originals[id(ups[-1])] = a
            else:
                ups.append(a)
        ictx = Context(_inner)
        ictx.needs_input_grad = ctx.needs_input_grad
        raw = _inner.forward(ictx, *ups, **_kwargs)
        multi = isinstance(raw, tuple)
        outs = list(raw) if multi else [raw]
        del raw
        nondiff = ictx.non_differentiable or ()
        nd_idx = {i for i, o in enumerate(outs) if id(o) in nondiff}
        grad = bool(ctx.needs_input_grad) and any(ctx.needs_input_grad)
        store = _Store(ictx) if grad else None
        if grad:  # saved widened inputs -> the inputs themselves (no copy kept)
            store.replace(lambda a: originals.get(id(a)))
        ups = originals = ictx = None  # the widened inputs are freed here
        new_outs = []
        for i in range(len(outs)):
            o = outs[i]
            if isinstance(o, np.generic):  # numpy ufuncs give scalars for 0-d arrays
                o = np.asarray(o)
            if isinstance(o, np.ndarray) and o.dtype == np.float32:
                r = _down(o, low)
                if grad:  # a saved output is the rounded one we return
                    store.replace(lambda a, o=o, r=r: r if a is o else None)
                outs[i] = o = None
                new_outs.append(r)
            else:
                new_outs.append(o)
        if nd_idx:
            ctx.mark_non_differentiable(*[new_outs[i] for i in nd_idx])
        if grad:
            biggest = max((a.size for a in arrays if isinstance(a, np.ndarray)), default=0)
            # other fp32 arrays of activation size are stored rounded; statistics stay
            store.replace(lambda a: _down(a, low) if 2 * a.size >= biggest and a.size else None)
            ctx.inner, ctx.restore = store.ctx, store.done
            ctx.in_dtypes = [a.dtype if isinstance(a, np.ndarray) else None for a in arrays]
            refs = arrays + tuple(new_outs)
            ctx.save_for_backward(*[a for a in store.kept if any(a is x for x in refs)])
        return tuple(new_outs) if multi else new_outs[0]

    @staticmethod
    def backward(ctx, *grads):
        ictx = ctx.inner
        low_saved, low_dict = ictx.saved, dict(ictx.__dict__)
        saved = list(low_saved)
        ups = {}  # one widened copy per stored array: aliases (p and pd) stay aliases
        for where, key in ctx.restore:
            low = saved[key] if where == "saved" else ictx.__dict__[key]
            up = ups.get(id(low))
            if up is None:
                up = ups[id(low)] = _up(low)
            if where == "saved":
                saved[key] = up
            else:
                ictx.__dict__[key] = up
        low = up = ups = None
        ictx.saved = tuple(saved)
        saved = None
        g32 = [_up(g) if isinstance(g, np.ndarray) and g.dtype in _LOW else g for g in grads]
        try:
            res = ictx.fn.backward(ictx, *g32)
        finally:
            # back to the low-precision copies: the fp32 ones are freed before the
            # gradients are rounded, and a retain_graph backward finds them again
            ictx.saved = low_saved
            ictx.__dict__.update(low_dict)
        g32 = None
        if not isinstance(res, tuple):
            res = (res,)
        out = []
        for g, dt in zip(res, ctx.in_dtypes):
            if g is not None and dt is not None and g.dtype != dt:
                g = _down(g, dt) if g.dtype == np.float32 and dt in _LOW else g.astype(dt)
            out.append(g)
        return tuple(out)


class _Store:
    """The fp32 arrays an op saved (``ctx.saved`` and top-level ``ctx`` attributes),
    replaced in place by low-precision ones; remembers which slots it changed."""

    def __init__(self, ictx):
        self.ctx = ictx
        self.done = []      # ("saved", index) / ("dict", name) of replaced slots
        self.kept = []      # the low-precision arrays put in
        self._saved = list(ictx.saved)

    def replace(self, fn):
        """Put ``fn(a)`` in each fp32 slot ``a`` where it is not None; an array held in
        several slots (attention's ``p`` and ``pd`` without dropout) gets one
        replacement, so it stays one array (not one rounded copy per slot)."""
        taken, memo = set(self.done), {}

        def put(slot, a):
            if slot in taken or not isinstance(a, np.ndarray) or a.dtype != np.float32:
                return None
            if id(a) not in memo:
                memo[id(a)] = fn(a)
            r = memo[id(a)]
            if r is not None:
                self._put(slot, r)
            return r

        for i, a in enumerate(self._saved):
            r = put(("saved", i), a)
            if r is not None:
                self._saved[i] = r
        self.ctx.saved = tuple(self._saved)
        for k, a in list(self.ctx.__dict__.items()):
            r = put(("dict", k), a)
            if r is not None:
                self.ctx.__dict__[k] = r

    def _put(self, slot, r):
        self.done.append(slot)
        self.kept.append(r)


# ---- elementwise ops in chunks ---------------------------------------------------------
# An elementwise op on a big activation (the relu of a 4x-wide FFN hidden) would hold
# its whole fp32 input, output and gradient at once; in chunks of _CHUNK elements the
# fp32 working set is a few chunks (128 Ki elements: 512 KiB, cache-sized) whatever the
# tensor size, and what stays (outputs and saved arrays) is low precision only. At 256 Ki
# the transient of the FFN relu's backward alone was what kept the transformer layer's
# bf16 peak above 0.6x of fp32's.
_CHUNK = 1 << 17
_ELEMENTWISE_MODULES = frozenset({"deepseek.ops.elementwise", "deepseek.ops.dropout",
                                  "deepseek.ops.activation"})


def chunkable(fn, args):
    """Whether ``fn`` on ``args`` runs chunk by chunk (an elementwise op whose array
    arguments all have one shape, big enough for chunks to matter)."""
    if fn.__module__ not in _ELEMENTWISE_MODULES:
        return False
    shapes = {tuple(a.shape) for a in args if hasattr(a, "_data")}
    if len(shapes) != 1:
        return False
    n = 1
    for s in next(iter(shapes)):
        n *= s
    return n > 2 * _CHUNK


class LowpChunked(Function):
    """``LowpCompute`` of an elementwise op, one flat chunk at a time."""

    @staticmethod
    def forward(ctx, *arrays, _inner, _kwargs):
        shape = next(a.shape for a in arrays if isinstance(a, np.ndarray))
        flat = [np.ascontiguousarray(a).reshape(-1) if isinstance(a, np.ndarray) else a
                for a in arrays]
        n = flat[next(i for i, a in enumerate(flat) if isinstance(a, np.ndarray))].size
        fulls, parts, multi = None, [], False
        for c0 in range(0, n, _CHUNK):
            c1 = min(n, c0 + _CHUNK)
            cctx = Context(LowpCompute)
            cctx.needs_input_grad = ctx.needs_input_grad
            chunk = [a[c0:c1] if isinstance(a, np.ndarray) else a for a in flat]
            out = LowpCompute.forward(cctx, *chunk, _inner=_inner, _kwargs=_kwargs)
            multi = isinstance(out, tuple)
            outs = out if multi else (out,)
            if fulls is None:
                fulls = [np.empty(n, o.dtype) for o in outs]
            for f, o in zip(fulls, outs):
                f[c0:c1] = o
                if "inner" in cctx.__dict__:  # saved outputs: views of the full result
                    _swap(cctx, o, f[c0:c1])
            parts.append((c0, c1, cctx if "inner" in cctx.__dict__ else None))
        if any(p[2] is not None for p in parts):
            ctx.parts = parts
            ctx.in_dtypes = [a.dtype if isinstance(a, np.ndarray) else None for a in arrays]
            ctx.shape, ctx.n = shape, n
        res = [f.reshape(shape) for f in fulls]
        return tuple(res) if multi else res[0]

    @staticmethod
    def backward(ctx, *grads):
        flat = [None if g is None else np.ascontiguousarray(g).reshape(-1) for g in grads]
        outs = [None if dt is None else np.empty(ctx.n, dt) for dt in ctx.in_dtypes]
        got = [False] * len(outs)
        for c0, c1, cctx in ctx.parts:
            gs = [None if g is None else g[c0:c1] for g in flat]
            res = LowpCompute.backward(cctx, *gs)
            for i, g in enumerate(res):
                if g is not None and outs[i] is not None:
                    outs[i][c0:c1] = g.reshape(-1)
                    got[i] = True
        return tuple(o.reshape(ctx.shape) if o is not None and ok else None
                     for o, ok in zip(outs, got))


def _swap(cctx, old, new):
    cctx.saved = ()  # (its version checks are the outer op's business)
    ictx = cctx.inner
    saved = list(ictx.saved)
    for where, key in cctx.restore:
        if where == "saved" and saved[key] is old:
            saved[key] = new
        elif where == "dict" and ictx.__dict__.get(key) is old:
            ictx.__dict__[key] = new
    ictx.saved = tuple(saved)
