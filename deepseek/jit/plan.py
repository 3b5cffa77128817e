"""The inference executor: lowering a graph to one generated Python function over
preallocated buffers, with fused kernels.

``InferencePlan(graph, batch, params)`` fixes every shape (the dynamic batch size is
substituted), then:

1. decomposes a few ops into executor primitives so their parts fuse: ``Linear`` into
   a GEMM (``np.matmul(..., out=)``) plus a bias add that joins the following
   elementwise chain (bias + GELU is one kernel); ``SDPA`` without dropout (no mask,
   a bool mask or an added one) into scale, ``q @ k^T``, a (causal, masked) row
   softmax and ``p @ v``; ``LayerNorm`` and last-axis ``Softmax`` into C row kernels;
2. fuses elementwise chains (``fusion.find_groups``) into one kernel each: C from
   ``cgen`` (default), a numexpr expression, or plain numpy (``backend``);
3. plans memory: every intermediate gets a buffer from a pool, returned to the pool
   after its last reader (exact-size reuse; an elementwise kernel may write over an
   input that dies there); views (reshape, permute, split, slicing) of buffers are
   computed once, at plan time, and cost nothing per step;
4. generates the step function's Python source (``plan.code``): inputs are copied into
   static input buffers, so every array, view and pointer the step uses is a constant
   of the generated code.

A Linear of a few rows runs the packed-weight GEMM of ``cgemm`` (its weight packed
here, once); where BLAS has threads, large calls of the plan's own kernels are cut
into row ranges run at once (``parallel``).

Ops without a lowering run their Function's ``forward`` (or the Tensor method, for
``method`` nodes) and are copied into their planned buffer: each such output is one
allocation per step, counted in ``allocs_per_step`` (0 for the models of the tests
with the C backend) and in ``alloc_counter`` at run time.
"""
import numpy as np

from ..autograd.function import Context
from .graph import Ref, container_source, map_refs, map_syms
from . import fusion, cgen, cgemm, parallel

__all__ = ["InferencePlan", "resolve_backend"]


def resolve_backend(name=None):
    """The fused-kernel backend to use: "c", "numexpr" or "numpy" (``name`` or
    DEEPSEEK_JIT_BACKEND; "auto" picks the first that works)."""
    from .. import env
    name = name or env.get("DEEPSEEK_JIT_BACKEND")
    if name == "auto":
        if cgen.available():
            return "c"
        try:
            import numexpr  # noqa: F401
            return "numexpr"
        except ImportError:
            return "numpy"
    return name


def _fn_name(n):
    return n.fn.__name__ if n.kind == "function" else n.fn


def _prod(shape):
    p = 1
    for s in shape:
        p *= s
    return p


def _shares(a, b):
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.may_share_memory(a, b)


class InferencePlan:
    """A compiled inference step for one concrete signature.

    ``run(*input_arrays)`` returns the result structure with arrays; ``code`` is the
    generated source, ``kernels_source`` the C unit of its fused kernels and
    ``rows_source`` that of the row kernels it uses (C backend), ``steps`` the number
    of generated statements, ``allocs_per_step`` the buffers allocated per call after
    warm-up (0 when every op is lowered; +1 per output unless ``static_outputs``),
    ``packed_params`` the parameters whose packed copy the GEMMs read, ``threads``
    how many parts a large kernel call runs in."""

    def __init__(self, graph, batch, params, backend="c", static_outputs=False):
        self.backend = backend
        self.static_outputs = static_outputs
        self.g = g = self._concretize(graph, batch)
        self.param_arrays = params
        self._decompose(g)
        self.groups, self.absorbed = fusion.find_groups(g)
        self.ns = {"_copyto": np.copyto, "_matmul": np.matmul, "_Context": Context, "np": np}
        self.lines = []
        self.kernels = []       # C sources
        self.kernel_calls = []  # (name, n_inputs, placeholder) fixed up once built
        self.allocs_per_step = 0
        self.alloc_counter = [0]
        self.ns["_alloc"] = self.alloc_counter
        self.buffers_bytes = 0
        self.n_buffers = 0
        self.packed_params = set()  # parameters copied into packed GEMM layout
        self.threads = _threads(backend)  # parts a large kernel call is cut into
        self._lower()
        self._finish()

    # ---- preparation -----------------------------------------------------------------
    @staticmethod
    def _concretize(graph, batch):
        g = graph.copy()
        if graph.dynamic_batch:
            g.values = {k: type(v)(v.vid, v.kind, map_syms(v.shape, batch), v.dtype, v.name, v.array)
                        for k, v in g.values.items()}
            g.nodes = [type(n)(n.kind, n.fn, map_syms(n.args, batch), map_syms(n.kwargs, batch),
                               n.outs, n.multi, n.src) for n in g.nodes]
        return g

    def _decompose(self, g):
        """Rewrite Linear/SDPA/LayerNorm/Softmax into executor primitives (see module doc)."""
        from ..ops import elementwise as E
        fl = fusion.FUSIBLE_DTYPES
        out = []
        c_ok = self.backend == "c"
        for n in g.nodes:
            name = _fn_name(n) if n.kind == "function" else None
            vals = [g.values[v] for v in n.inputs()]
            if name == "Linear" and not n.kwargs and all(v.dtype == vals[0].dtype for v in vals) \
                    and vals[0].dtype in fl and len(vals[0].shape) >= 1 and not n.multi:
                x, w = n.args[0], n.args[1]
                o = g.values[n.outs[0]]
                if len(n.args) > 2 and n.args[2] is not None:
                    t = g.add_value("node", o.shape, o.dtype)
                    out.append(type(n)("jit", "linear_mm", (x, w), {}, (t,), False, n.src))
                    out.append(type(n)("function", E.Add, (Ref(t), n.args[2]), {}, n.outs, False, n.src))
                else:
                    out.append(type(n)("jit", "linear_mm", (x, w), {}, n.outs, False, n.src))
                continue
            mask = _sdpa_mask(g, n) if name == "SDPA" and c_ok else _NO
            if mask is not _NO:
                q, k, v = n.args[:3]
                qv, kv = g.values[q.vid], g.values[k.vid]
                L, S = qv.shape[-2], kv.shape[-2]
                qs = g.add_value("node", qv.shape, qv.dtype)
                sc = g.add_value("node", qv.shape[:-1] + (S,), qv.dtype)
                p = g.add_value("node", qv.shape[:-1] + (S,), qv.dtype)
                scale = n.kwargs.get("scale", 1.0)
                out.append(type(n)("function", E.Mul, (q, float(qv.dtype.type(scale))), {}, (qs,), False, n.src))
                out.append(type(n)("jit", "bmm_t", (Ref(qs), k), {}, (sc,), False, n.src))
                out.append(type(n)("jit", "softmax", (Ref(sc), mask),
                                   {"causal": L if n.kwargs.get("is_causal") else 0}, (p,), False, n.src))
                out.append(type(n)("jit", "bmm", (Ref(p), v), {}, n.outs, False, n.src))
                continue
            if name == "LayerNorm" and c_ok and vals[0].dtype in fl and all(v.dtype == vals[0].dtype for v in vals):
                args = list(n.args) + [None] * (3 - len(n.args))
                kw = {"nd": n.kwargs.get("nd", 1), "eps": n.kwargs.get("eps", 1e-5)}
                out.append(type(n)("jit", "layernorm", tuple(args[:3]), kw, n.outs, False, n.src))
                continue
            if name == "Softmax" and c_ok and vals and vals[0].dtype in fl:
                axis = n.kwargs.get("axis", n.args[1] if len(n.args) > 1 else None)
                nd = len(vals[0].shape)
                if axis is not None and nd and axis % nd == nd - 1:
                    out.append(type(n)("jit", "softmax", (n.args[0], None), {"causal": 0}, n.outs, False, n.src))
                    continue
            out.append(n)
        g.nodes = out

    # ---- memory -------------------------------------------------------------------------
    def _const(self, obj, prefix="c"):
        name = f"_{prefix}{len(self.ns)}"
        self.ns[name] = obj
        return name

    def _alloc(self, shape, dtype, reuse=()):
        """A buffer of ``shape``: an input's buffer in ``reuse`` that dies here, a free
        pooled one of the same size, or a new one."""
        dtype = np.dtype(dtype)
        n = _prod(shape)
        for vid in reuse:
            s = self.storage.get(vid)
            if s is not None and self.refs.get(s, 0) == 1 and s in self.owned \
                    and self.flat[s].size == n and self.flat[s].dtype == dtype \
                    and self.arr[vid].flags.c_contiguous and self.arr[vid].size == n \
                    and self.dies_here(vid):
                return s, self.flat[s].reshape(shape)
        key = (n, dtype)
        free = self.pool.get(key)
        if free:
            s = free.pop()
            return s, self.flat[s].reshape(shape)
        buf = np.empty(max(n, 1), dtype)[:n]
        s = len(self.flat)
        self.flat.append(buf)
        self.owned.add(s)
        self.n_buffers += 1
        self.buffers_bytes += buf.nbytes
        return s, buf.reshape(shape)

    def _define(self, vid, array, storage):
        self.arr[vid] = array
        self.storage[vid] = storage
        if storage is not None:
            self.refs[storage] = self.refs.get(storage, 0) + 1

    def dies_here(self, vid):
        return self.last_use.get(vid, -1) == self.t

    def _release_after(self, t):
        for s in self.pending:
            buf = self.flat[s]
            self.pool.setdefault((buf.size, buf.dtype), []).append(s)
        self.pending = []
        for vid in self.readers_at.get(t, ()):
            self._drop(vid)

    def _drop(self, vid):
        s = self.storage.get(vid)
        if s is None or vid in self.keep:
            return
        self.refs[s] -= 1
        if self.refs[s] == 0 and s in self.owned:
            buf = self.flat[s]
            self.pool.setdefault((buf.size, buf.dtype), []).append(s)

    # ---- lowering ------------------------------------------------------------------------
    def _lower(self):
        g = self.g
        self.arr, self.storage, self.refs = {}, {}, {}
        self.flat, self.owned, self.pool, self.pending = [], set(), {}, []
        items = [(i, n) for i, n in enumerate(g.nodes) if i not in self.absorbed]
        self.keep = set(g.outputs())
        self.last_use = {}
        for t, (i, n) in enumerate(items):
            ins = self.groups[i].inputs if i in self.groups else n.inputs()
            for v in ins:
                self.last_use[v] = t
        self.readers_at = {}
        for v, t in self.last_use.items():
            self.readers_at.setdefault(t, []).append(v)
        self.input_names = []
        for k, vid in enumerate(g.inputs):
            v = g.values[vid]
            s, buf = self._alloc(v.shape, v.dtype)
            self.keep.add(vid)
            self._define(vid, buf, s)
            name = self._const(buf, "in")
            self.input_names.append(name)
            self.lines.append(f"_copyto({name}, x{k})")
        for v in g.values.values():
            if v.kind == "param":
                self._define(v.vid, self.param_arrays[v.name], None)
            elif v.kind == "const":
                self._define(v.vid, v.array, None)
        for t, (i, n) in enumerate(items):
            self.t = t
            if i in self.groups:
                self._lower_group(self.groups[i])
            elif n.kind == "jit":
                getattr(self, "_lower_" + n.fn)(n)
            elif n.kind == "function" and n.fn.is_view and self._lower_view(n):
                pass
            else:
                self._lower_fallback(n)
            for o in n.outs:
                if o not in self.last_use:
                    self.last_use[o] = t
                    self.readers_at.setdefault(t, []).append(o)
            self._release_after(t)

    def _a(self, vid):
        return self.arr[vid]

    def _name(self, vid):
        return self._const(self.arr[vid], "a")

    def _contig(self, vid):
        """A C-contiguous array of value ``vid`` (a per-step copy into a scratch buffer
        when it is a strided view)."""
        a = self._a(vid)
        if a.flags.c_contiguous:
            return a
        s, buf = self._alloc(a.shape, a.dtype)
        self.lines.append(f"_copyto({self._const(buf, 'b')}, {self._name(vid)})")
        self.pending.append(s)  # back to the pool once this item is planned
        return buf

    def _out(self, vid, reuse=()):
        v = self.g.values[vid]
        s, buf = self._alloc(v.shape, v.dtype, reuse)
        self._define(vid, buf, s)
        return buf

    def _lower_group(self, grp):
        out_v = self.g.values[grp.out]
        shape = tuple(out_v.shape)
        ins = [self._a(v) for v in grp.inputs]
        if self.backend == "c":
            n = _prod(shape)
            pats, arrays, inner = [], [], None
            for a in ins:
                if a.shape == shape and a.flags.c_contiguous:
                    pats.append("full")
                elif a.size == 1:
                    pats.append("scalar")
                else:
                    core = a.shape
                    while core and core[0] == 1:
                        core = core[1:]
                    if core == shape[len(shape) - len(core):] and a.flags.c_contiguous and \
                            (inner is None or inner == _prod(core)):
                        inner = _prod(core)
                        pats.append("inner")
                    else:
                        pats.append("materialize")
                arrays.append(a)
            for k, p in enumerate(pats):
                if p == "materialize":
                    s, buf = self._alloc(shape, arrays[k].dtype)
                    self.lines.append(f"_copyto({self._const(buf, 'b')}, "
                                      f"{self._const(np.broadcast_to(arrays[k], shape), 'a')})")
                    self.pending.append(s)
                    arrays[k], pats[k] = buf, "full"
            reuse = [v for v, p in zip(grp.inputs, pats) if p == "full"]
            out = self._out(grp.out, reuse)
            inner = inner or n
            outer = n // inner if inner else 0
            kname = f"ds_fused_{len(self.kernels)}"
            self.kernels.append(cgen.group_kernel(kname, grp.expr, out_v.dtype.name,
                                                  [a.dtype.name for a in arrays], pats))
            fname = f"_k{len(self.kernels)}"
            self.kernel_calls.append((fname, kname, len(arrays) + 1, 2, ()))
            self._call(fname, [outer, inner] + [a.ctypes.data for a in [out] + arrays],
                       parallel.group_parts(self.threads, outer, inner, [out] + arrays, ["full"] + pats),
                       grp.describe())
            return
        out = self._out(grp.out)
        names = {f"in{k}": a for k, a in enumerate(ins)}
        if self.backend == "numexpr":
            ex = fusion.numexpr_expr(grp.expr)
            if ex is not None:
                import numexpr
                self.ns.setdefault("_ne", numexpr.evaluate)
                self.lines.append(f"_ne({ex!r}, local_dict={self._const(names, 'd')}, "
                                  f"out={self._const(out, 'b')}, casting='unsafe')")
                return
        # plain numpy: eager's formulas, one temporary per op
        n_ops = _count_ops(grp.expr)
        self.ns.setdefault("_eval", fusion.eval_numpy)
        self.lines.append(f"_copyto({self._const(out, 'b')}, _eval({self._const(grp.expr, 'e')}, "
                          f"{self._const(ins, 'l')}), casting='unsafe')")
        self.lines.append(f"_alloc[0] += {n_ops}")
        self.allocs_per_step += n_ops

    def _lower_linear_mm(self, n):
        x, w = (self._a(r.vid) for r in n.args)
        o = self.g.values[n.outs[0]]
        if x.ndim == 1:
            x2 = x.reshape(1, -1)
        else:
            x2 = x.reshape(-1, x.shape[-1])
        if not _shares(x2, x):
            x2 = self._contig(n.args[0].vid).reshape(-1, x.shape[-1])
        out = self._out(n.outs[0])
        o2 = out.reshape(x2.shape[0], w.shape[0])
        wv = self.g.values[n.args[1].vid]
        if self.backend == "c" and wv.kind in ("param", "const") and cgemm.fits(x2, w, _SMALL_GEMM):
            packed = cgemm.pack(w)
            if wv.kind == "param":
                self.packed_params.add(wv.name)
            self._const(packed, "w")  # kept alive by the namespace
            if not any(c[4] == "gemm" for c in self.kernel_calls):
                self.kernel_calls.append(("_gemm", "ds_gemm_packed", 0, 0, "gemm"))
            m, k = x2.shape
            self.lines.append(f"_gemm({m}, {w.shape[0]}, {k}, {x2.ctypes.data}, {x2.strides[0] // 4}, "
                              f"{packed.ctypes.data}, {o2.ctypes.data}, {w.shape[0]})"
                              f"  # linear {tuple(o.shape)} (packed weight)")
            return
        self.lines.append(f"_matmul({self._const(x2, 'a')}, {self._const(w.T, 'a')}, "
                          f"out={self._const(o2, 'b')})  # linear {tuple(o.shape)}")

    def _lower_bmm_t(self, n):
        a, b = (self._a(r.vid) for r in n.args)
        self._batched_matmul(a, np.swapaxes(b, -1, -2), self._out(n.outs[0]))

    def _lower_bmm(self, n):
        a, b = (self._a(r.vid) for r in n.args)
        self._batched_matmul(a, b, self._out(n.outs[0]))

    def _batched_matmul(self, a, b, out):
        """``out = a @ b`` over the batch dims. Many small products run with one BLAS
        thread, as eager's attention does: OpenBLAS threading each small GEMM costs
        more CPU in thread hand-offs than it saves (5x the CPU time at 128x32x128)."""
        each = a.shape[-2] * a.shape[-1] * b.shape[-1]
        mm = "_matmul"
        if a.ndim > 2 and each < _SMALL_GEMM <= each * (out.size // max(out.shape[-2] * out.shape[-1], 1)):
            from ..ops.attention import blas_single_thread
            self.ns.setdefault("_mm1", _matmul_one_thread(blas_single_thread))
            mm = "_mm1"
            batch = out.shape[0]
            if self.threads > 1 and a.ndim == b.ndim == out.ndim and a.shape[0] == b.shape[0] == batch \
                    and max(a.size, out.size) >= 2 * parallel.MIN_ELEMENTS:
                parts = tuple((a[i:j], b[i:j], out[i:j]) for i, j in parallel.cuts(batch, self.threads))
                if len(parts) > 1:
                    self.ns.setdefault("_mm1p", _matmul_parts(blas_single_thread, parallel.workers(self.threads)))
                    self.lines.append(f"_mm1p({self._const(parts, 'p')})  # {len(parts)} threads")
                    return
        self.lines.append(f"{mm}({self._const(a, 'a')}, {self._const(b, 'a')}, "
                          f"out={self._const(out, 'b')})")

    def _lower_layernorm(self, n):
        x = self._contig(n.args[0].vid)
        w = self._a(n.args[1].vid) if isinstance(n.args[1], Ref) else None
        b = self._a(n.args[2].vid) if isinstance(n.args[2], Ref) else None
        nd = n.kwargs["nd"]
        d = _prod(x.shape[x.ndim - nd:])
        rows = x.size // d if d else 0
        out = self._out(n.outs[0])
        kname = f"ds_layernorm_{x.dtype.name}"
        fname = f"_k_ln_{x.dtype.name}"
        self.kernel_calls.append((fname, kname, 0, 0, "layernorm"))
        args = [rows, d, x.ctypes.data, cgen.addr(w), cgen.addr(b), float(n.kwargs["eps"]), out.ctypes.data]
        self._call(fname, args, parallel.layernorm_parts(self.threads, args, x.itemsize), "layer_norm")

    def _lower_softmax(self, n):
        x = self._contig(n.args[0].vid)
        d = x.shape[-1]
        rows = x.size // d if d else 0
        mask, mkind, dims, strides, msize = self._softmax_mask(n.args[1], x.shape)
        out = self._out(n.outs[0], reuse=[n.args[0].vid] if x is self._a(n.args[0].vid) else ())
        kname = f"ds_softmax_{x.dtype.name}"
        fname = f"_k_sm_{x.dtype.name}"
        self.kernel_calls.append((fname, kname, 0, 0, "softmax"))
        causal = int(n.kwargs["causal"])
        args = [rows, d, causal, x.ctypes.data, out.ctypes.data, mask, mkind, dims[0], dims[1]] + list(strides)
        self._call(fname, args, parallel.softmax_parts(self.threads, args, x.itemsize, msize), "softmax")

    def _call(self, fname, args, parts, comment):
        """A kernel call line: ``fname(*args)``, or its ``parts`` (argument lists, one
        per row range) run at once on ``self.threads`` threads when there are several."""
        if parts is not None and len(parts) > 1:
            self.ns.setdefault("_par", parallel.workers(self.threads).run)
            tup = tuple(tuple(p) for p in parts)
            self.lines.append(f"_par({fname}, {self._const(tup, 'p')})  # {comment} ({len(parts)} threads)")
        else:
            self.lines.append(f"{fname}({', '.join(map(_lit, args))})  # {comment}")

    def _softmax_mask(self, ref, shape):
        """The softmax kernel's mask arguments for mask value ``ref`` (None: no mask) on
        scores of ``shape``: (address or None, kind -- 0 none, 1 added, 2 bool keep --,
        the two inner leading dims, the element strides of the three leading dims, the
        mask's item size). A mask whose
        broadcast view is not (rows of) contiguous rows is copied per step into a
        scratch buffer of the scores' shape."""
        if ref is None:
            return None, 0, (1, 1), (0, 0, 0), 0
        m = self._a(ref.vid)
        kind = 2 if m.dtype == np.bool_ else 1
        lead = shape[:-1]
        view = np.broadcast_to(m, shape)
        st = _merge_dims(lead, [s // view.itemsize for s in view.strides[:-1]])
        if st is None or (view.strides[-1] != view.itemsize and shape[-1] > 1):
            slot, buf = self._alloc(shape, m.dtype)
            self.lines.append(f"_copyto({self._const(buf, 'b')}, {self._const(view, 'a')})")
            self.pending.append(slot)  # back to the pool once this item is planned
            view = buf
            st = _merge_dims(lead, [s // buf.itemsize for s in buf.strides[:-1]])
        dims, strides = st
        addr = view.__array_interface__["data"][0]
        return addr, kind, dims, strides, view.itemsize

    def _args_of(self, n):
        return (map_refs(n.args, lambda r: self._a(r.vid)),
                map_refs(n.kwargs, lambda r: self._a(r.vid)))

    def _lower_view(self, n):
        """A view op on static arrays: computed now, free per step. False when it copies."""
        args, kwargs = self._args_of(n)
        src = args[0] if args and isinstance(args[0], np.ndarray) else None
        if src is None:
            return False
        res = n.fn.forward(Context(n.fn), *args, **kwargs)
        outs = res if isinstance(res, tuple) else (res,)
        if all(_shares(o, src) for o in outs):
            s = self.storage.get(n.args[0].vid)
            for vid, o in zip(n.outs, outs):
                self._define(vid, o, s)
            return True
        if _fn_name(n) == "Reshape":
            out = self._out(n.outs[0])
            self.lines.append(f"_copyto({self._const(out.reshape(src.shape), 'b')}, "
                              f"{self._const(src, 'a')})  # reshape (copy)")
            return True
        return False

    def _lower_fallback(self, n):
        args, kwargs = self._args_of(n)
        outs = [self._out(o) for o in n.outs]
        a, k = self._const(args, "l"), self._const(kwargs, "d")
        if n.kind == "function":
            f = self._const(n.fn, "f")
            call = f"{f}.forward(_Context({f}), *{a}, **{k})"
        else:
            from .tracer import tensor_method
            from .._tensor import Tensor
            self.ns.setdefault("_wrap", _wrap_call)
            self.ns.setdefault("_Tensor", Tensor)
            call = f"_wrap({self._const(tensor_method(n.fn), 'm')}, {a}, {k})"
        if n.multi:
            tgt = ", ".join(self._const(o, "b") for o in outs)
            self.lines.append(f"for _o, _r in zip(({tgt},), {call}): _copyto(_o, _r, casting='unsafe')")
        else:
            self.lines.append(f"_copyto({self._const(outs[0], 'b')}, {call}, casting='unsafe')"
                              f"  # {n.name} (unplanned)")
        self.lines.append(f"_alloc[0] += {len(outs)}")
        self.allocs_per_step += len(outs)

    # ---- code ---------------------------------------------------------------------------
    def _finish(self):
        if self.kernels or any(c[4] for c in self.kernel_calls):
            rows = sorted({kname.rsplit("_", 1)[1] for _, kname, _, _, kind in self.kernel_calls
                           if kind in ("layernorm", "softmax")})
            self.kernels_source = cgen.unit_source(self.kernels) if self.kernels else ""
            self.rows_source = cgen.row_source(rows) if rows else ""
            gemm = cgemm.SOURCE if any(c[4] == "gemm" for c in self.kernel_calls) else ""
            units = [src for src in (self.kernels_source, self.rows_source, gemm) if src]
            libs = dict(zip(units, cgen.build_many(units)))
            unit_of = {"": self.kernels_source, "layernorm": self.rows_source,
                       "softmax": self.rows_source, "gemm": gemm}
            import ctypes
            for fname, kname, nptr, nlong, kind in self.kernel_calls:
                f = getattr(libs[unit_of[kind or ""]], kname)
                if kind == "gemm":
                    f.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p, ctypes.c_long] + \
                        [ctypes.c_void_p] * 2 + [ctypes.c_long]
                elif kind == "layernorm":
                    f.argtypes = [ctypes.c_long] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_double, ctypes.c_void_p]
                elif kind == "softmax":
                    f.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_long] * 6
                else:
                    f.argtypes = [ctypes.c_long] * nlong + [ctypes.c_void_p] * nptr
                f.restype = None
                self.ns[fname] = f
        else:
            self.kernels_source = self.rows_source = ""
        outs = self.g.out_spec
        ret = self._ret_expr(outs)
        if not self.static_outputs:
            self.allocs_per_step += len(self.g.outputs())
        params = ", ".join(f"x{k}" for k in range(len(self.g.inputs)))
        body = "\n    ".join(self.lines + [f"return {ret}"])
        self.code = f"def step({params}):\n    {body}\n"
        exec(compile(self.code, "<deepseek.jit plan>", "exec"), self.ns)
        self.run = self.ns["step"]
        self.steps = len(self.lines)

    def _ret_expr(self, spec):
        if isinstance(spec, Ref):
            name = self._name(spec.vid)
            return name if self.static_outputs else f"{name}.copy()"
        if isinstance(spec, (tuple, list, dict)):
            return container_source(spec, self._ret_expr)
        return self._const(spec, "r")


# a product of fewer multiply-adds than this gains nothing from BLAS threads (eager
# attention's threshold); a batch of them all together at least this big is worth the
# thread-count switch (a few microseconds)
_SMALL_GEMM = 2 ** 21


def _matmul_one_thread(single):
    def mm(a, b, out):
        with single():
            np.matmul(a, b, out=out)
    return mm


def _threads(backend):
    """How many parts a large kernel call is cut into, for the C backend:
    ``DEEPSEEK_JIT_KERNEL_THREADS``, 0 meaning BLAS's thread count (the cores the user
    gave the process). Off (1) by default: on the 2-core VM the split cost MiniLM's
    compiled forward 8% at 2 threads, idle (the workers' wake-ups and the BLAS threads
    compete for the same cores)."""
    if backend != "c":
        return 1
    from .. import env
    n = env.get("DEEPSEEK_JIT_KERNEL_THREADS")
    if n == 0:
        from ..ops.attention import blas_threads
        n = blas_threads()
    return max(1, n)


def _lit(v):
    """A kernel argument as source: ints, floats (exactly) and None."""
    return repr(float(v)) if isinstance(v, float) else "None" if v is None else str(int(v))


def _matmul_parts(single, workers):
    """Batched products on one BLAS thread each, their batch ranges on ``workers``."""
    def mm_out(a, b, out):
        np.matmul(a, b, out=out)

    def mm(parts):
        with single():
            workers.run(mm_out, parts)
    return mm


def _count_ops(e):
    if e[0] in ("in", "c"):
        return 0
    return 1 + sum(_count_ops(c) for c in e[1:] if isinstance(c, tuple))


def _wrap_call(method, args, kwargs):
    """Run a Tensor method on arrays (``method`` nodes), returning arrays."""
    from .._tensor import Tensor
    wrap = lambda a: Tensor._make(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    res = method(*[wrap(a) for a in args], **{k: wrap(v) for k, v in kwargs.items()})
    if isinstance(res, tuple):
        return tuple(r._data for r in res)
    return res._data


_NO = object()  # "no lowering" (a mask of None is a real answer)


def _sdpa_mask(g, n):
    """The mask argument (a Ref, or None) of an SDPA node the plan lowers, or ``_NO``
    when the node keeps eager's op: dropout, attention weights asked for, mixed or
    unfused dtypes, or a mask that is neither bool nor of the queries' dtype."""
    fl = fusion.FUSIBLE_DTYPES
    if n.multi or len(n.args) < 3 or len(n.args) > 4 or \
            not set(n.kwargs) <= {"scale", "is_causal", "dropout_p", "need_weights", "mask"} or \
            n.kwargs.get("dropout_p", 0) or n.kwargs.get("need_weights", False):
        return _NO
    mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("mask")
    qkv = [g.values[a.vid] if isinstance(a, Ref) else None for a in n.args[:3]]
    if any(v is None for v in qkv) or qkv[0].dtype not in fl or \
            any(v.dtype != qkv[0].dtype for v in qkv):
        return _NO
    if mask is None:
        return None
    if not isinstance(mask, Ref):
        return _NO
    mv = g.values[mask.vid]
    scores = tuple(qkv[0].shape[:-1]) + (qkv[1].shape[-2],)
    if mv.dtype not in (np.dtype(np.bool_), qkv[0].dtype):
        return _NO
    try:
        if np.broadcast_shapes(tuple(mv.shape), scores) != scores:
            return _NO
    except ValueError:
        return _NO
    return mask


def _merge_dims(shape, strides):
    """``shape``/``strides`` (elements) as three dims -- ((d1, d2), (s0, s1, s2)) for
    dims (d0, d1, d2) -- by padding with ones and merging neighbours whose strides
    chain; None when more than three remain."""
    dims = [(d, s) for d, s in zip(shape, strides) if d != 1]
    merged = []
    for d, s in dims:
        if merged and merged[-1][1] == s * d:
            merged[-1] = (merged[-1][0] * d, s)
        else:
            merged.append((d, s))
    if len(merged) > 3:
        return None
    merged = [(1, 0)] * (3 - len(merged)) + merged
    return (merged[1][0], merged[2][0]), tuple(s for _, s in merged)
