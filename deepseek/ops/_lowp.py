"""Low-precision (fp16/bf16) GEMM on the CPU: fp32 panels through OpenBLAS sgemm.

numpy has no BLAS for float16/bfloat16: ``a @ b`` on bf16 runs ml_dtypes' scalar loops
(tens of times slower than sgemm) and numpy's fp16 matmul is no better. Here a GEMM on
low-precision operands converts one panel of the big operand at a time to float32
(the native conversion kernels of ``deepseek.native``: AVX2/AVX-512, exact rounding),
multiplies it by the converted small operand with sgemm, adds the bias in fp32 and
rounds the output panel once into the low-precision result. The fp32 working set is
one panel (``_PANEL`` elements) plus the small operand, so the memory the low
precision saves is not spent again on a full fp32 copy, and the arithmetic runs at
sgemm speed. Values equal fp32 math on the (exact) widened inputs, rounded once.

``mm`` is ``a @ b`` / ``a @ b.T`` blocked over the rows of ``a`` (linear forward, the
input gradient), and for a large transposed ``b`` (a linear's weight) over its rows
too, so no whole fp32 copy of the weight is made (``_Weight``); ``b`` may also be an
fp32 master weight read as its bf16/fp16 cast (``b_round``: each block rounded, the
cast itself never made); ``mm_tn`` is ``a.T @ b`` blocked over the columns of the wider operand
(the weight gradient: tokens x features, accumulated in fp32); ``linear_grads`` makes
both gradients of a linear from one widening of its output gradient; ``colsum`` is the
bias gradient. With ``SPLIT_PANELS`` large products share their panels out among
OpenBLAS's thread count of worker threads, each running single-threaded sgemm (off by
default: see there). ``matmul`` is the general
(batched, broadcast) product: it widens both operands whole.

The passes around sgemm are the extension's (``native/src/dsn_lowp.c``) when it is
built: a strided block widened in one call (``_widen_block``), an fp32 block rounded
to 16-bit precision in one call (``_round_block``), bias add and rounding fused per
row into a block of the output (``_narrow_rows``), the column sum straight from the
16-bit rows; the numpy fallback runs the same fp32 operations.
"""
import numpy as np

from .. import dtypes as _dt
from .. import native as _native

LOW = (_dt.float16, _dt.bfloat16)
_F32 = np.dtype(np.float32)
# fp32 elements of one converted panel (2 Mi = 8 MiB: the fp32 working set of a GEMM
# is a few of these, not a full-size copy of a bf16 activation). Every panel's sgemm
# packs the whole other operand again, so small panels cost time where that operand is
# large: sgemm over 1 Mi-element panels of the transformer layer's GEMMs ran 1.01-1.12x
# one sgemm of the whole product (K 2048 x N 256: 1.12x), over 2 Mi panels 0.99-1.04x
# (single thread, thread CPU time); the layer's bf16 step 1.16x against 1.10x of fp32.
# Its bf16 peak is 0.56x fp32's with 2 Mi (4 Mi: 0.68x).
_PANEL = 1 << 21
# fp32 elements of the operand that mm_tn converts whole (per chunk of K rows)
_BIG = 1 << 20
# a linear's weight (``b`` of ``a @ b.T``, the operand converted for every panel) of
# more elements than this is widened in blocks of output columns (contiguous rows of
# the weight) of about this size into one reused buffer, not whole: the MLP's 1024 x
# 1024 layer held a 4 MiB fp32 copy of its 2 MiB bf16 weight (the largest item of its
# forward peak). Smaller weights (every weight of the transformer layer) are widened
# whole, one sgemm per panel as before. The blocks' sgemm calls cost time (the MLP's
# 256 x 1024 x 1024 forward GEMM, thread CPU time, 40 alternating rounds: 12.3 ms
# whole, 12.7 in blocks of 512 Ki elements, 13.7 in blocks of 256 Ki), and 512 Ki
# already takes the forward's peak under the backward's. An untransposed ``b`` (the
# input gradient's ``g @ W``) is converted whole: its column blocks are strided and
# the narrow sgemm calls cost 1.13-1.28x (12.7 against 14.4-16.2 ms), and there the
# copy is freed before the weight gradient's fp32 sum exists, so it sets no peak.
_WBLOCK = 1 << 19
# multiply-adds below which a GEMM runs on the calling thread alone
_PAR_MIN_MACS = 1 << 21


def applies(*arrays):
    """True when these are CPU (numpy) arrays and one of them is fp16/bf16."""
    return all(isinstance(a, np.ndarray) for a in arrays if a is not None) and \
        any(a is not None and a.dtype in LOW for a in arrays)


# the extension's conversion entry and its codes per (source, destination) dtype: the
# panels call it directly. It checks dtypes, contiguity, sizes and overlap itself, so the
# Python-side checks of ``native.cast`` (~5x the call itself, the cost of a small op)
# are not paid once more per panel.
_EXT = getattr(_native, "_ext", None)
_KINDS = {} if _EXT is None else {
    (np.dtype(s), np.dtype(d)): _native._CVT_CODES[n] for n, s, d in (
        ("f32_to_f16", _F32, np.float16), ("f16_to_f32", np.float16, _F32),
        ("f32_to_bf16", _F32, _dt.bfloat16), ("bf16_to_f32", _dt.bfloat16, _F32))}


def _native_convert(src, out):
    """``src`` converted into ``out`` (both C-contiguous, same size) by the kernel."""
    _EXT.convert(_KINDS[(src.dtype, out.dtype)], _native._raw(src), _native._raw(out))
    return out


def _passes():
    """Whether the panel passes of the extension (dsn_lowp.c) run now: one check per
    GEMM, not one per panel (``native.available`` reads the environment)."""
    return _EXT is not None and hasattr(_EXT, "lowp_widen") and _native.available()


def _widen_block(a, r0, r1, c0, c1, out, fast):
    """Rows r0:r1, columns c0:c1 of the C-contiguous 2-D ``a`` widened into the fp32
    panel ``out`` (that shape, contiguous): one native pass over the strided block
    when ``fast`` (a strided numpy copy of the block cost more than its widening)."""
    if fast and a.dtype in LOW:
        _EXT.lowp_widen(_KINDS[(a.dtype, _F32)], _native._raw(a).reshape(-1),
                        r0 * a.shape[1] + c0, a.shape[1], r1 - r0, c1 - c0, out)
    else:
        np.copyto(out, a[r0:r1, c0:c1], casting="unsafe")
    return out


def _narrow_rows(panel, bias, out, r0, c0, fast):
    """``panel + bias`` (fp32 (n, nb), bias optional) rounded into rows r0:r0+n, columns
    c0:c0+nb of the C-contiguous 2-D ``out``: fused row by row when ``fast`` (the panel
    is scratch: the bias is added into it)."""
    n, nb = panel.shape
    if fast and out.dtype in LOW:
        N = out.shape[1]
        _EXT.lowp_narrow(_KINDS[(_F32, out.dtype)], panel, bias, nb,
                         _native._raw(out).reshape(-1), r0 * N + c0, N)
        return
    if bias is not None:
        panel += bias
    dst = out[r0:r0 + n, c0:c0 + nb]
    if dst.flags.c_contiguous:
        from_f32(panel, out.dtype, out=dst)
    else:
        dst[...] = from_f32(panel, out.dtype)


def _round_block(a, r0, r1, c0, c1, dtype, out, fast):
    """Rows r0:r1, columns c0:c1 of the C-contiguous fp32 2-D ``a`` rounded to
    ``dtype``'s precision into the fp32 panel ``out``: the values of casting the block
    to ``dtype`` and widening the cast, bit for bit, without the 16-bit copy."""
    if fast:
        _EXT.lowp_round(_KINDS[(_F32, dtype)], a.reshape(-1), r0 * a.shape[1] + c0,
                        a.shape[1], r1 - r0, c1 - c0, out)
    else:
        to_f32(from_f32(np.ascontiguousarray(a[r0:r1, c0:c1]), dtype), out=out)
    return out


class _Weight:
    """The operand a GEMM converts for each of its row panels (a weight, or the weight
    of an input gradient), as fp32 column blocks of ``op(w)`` ((K, N): ``w.T`` when
    ``trans``, else ``w``). ``w`` is fp16/bf16 (widened), fp32 (used as it is) or, with
    ``rnd``, an fp32 master weight read as its cast to ``rnd`` (rounded block by block:
    the cast itself is never made). A weight of up to ``_WBLOCK`` elements, or one not
    transposed, is converted once, whole; a larger transposed one block by block into
    a buffer of about ``_WBLOCK`` elements."""

    def __init__(self, w, trans, rnd, fast):
        if not w.flags.c_contiguous and w.T.flags.c_contiguous:  # a transposed view
            w, trans = w.T, not trans
        self.w = np.ascontiguousarray(w)
        self.trans, self.rnd, self.fast = trans, rnd, fast
        self.N, self.K = w.shape if trans else w.shape[::-1]
        plain = w.dtype == _F32 and rnd is None
        whole = plain or w.size <= _WBLOCK or not trans  # (see _WBLOCK)
        self.spans = [(0, self.N)] if whole else _split(self.N, -(-w.size // _WBLOCK))
        self.width = max(hi - lo for lo, hi in self.spans) if self.N else 0
        self.whole = None
        if whole:  # converted once, shared by every panel (and thread)
            self.whole = self.w if plain else self._convert(0, self.N, None)
            self.whole = self.whole.T if trans else self.whole

    def _convert(self, j0, j1, buf):
        w, shape = self.w, ((j1 - j0, self.K) if self.trans else (self.K, j1 - j0))
        out = np.empty(shape, _F32) if buf is None else buf[:shape[0] * shape[1]].reshape(shape)
        r0, r1, c0, c1 = (j0, j1, 0, self.K) if self.trans else (0, self.K, j0, j1)
        if self.rnd is not None:
            return _round_block(w, r0, r1, c0, c1, self.rnd, out, self.fast)
        return _widen_block(w, r0, r1, c0, c1, out, self.fast)

    def blocks(self, buf):
        """(j0, j1, fp32 (K, j1 - j0) block of op(w)) for each column block, converted
        into ``buf`` (from ``buffer()``, one per thread) unless whole."""
        if self.whole is not None:
            yield 0, self.N, self.whole
            return
        for j0, j1 in self.spans:
            blk = self._convert(j0, j1, buf)
            yield j0, j1, blk.T if self.trans else blk

    def buffer(self):
        """Scratch for ``blocks``: None for a weight converted whole."""
        return None if self.whole is not None else np.empty(self.K * self.width, _F32)

    def release(self):
        """Drop the whole converted copy (the last panel is done)."""
        self.whole = self.w = None


def _panel_product(blk, wt, wbuf, bias32, out, p0, obuf, fast):
    """Rows p0:p0+n of ``out`` = ``blk`` (fp32 (n, K)) @ op(w) ``+ bias32``, one sgemm
    per column block of ``wt`` (a ``_Weight``); into the low-precision ``out`` through
    the fp32 scratch ``obuf`` (at least n x the block width), rounded once."""
    n = blk.shape[0]
    for j0, j1, wb in wt.blocks(wbuf):
        b32 = None if bias32 is None else bias32[j0:j1]
        if obuf is None:
            dst = out[p0:p0 + n, j0:j1]
            np.matmul(blk, wb, out=dst)
            if b32 is not None:
                dst += b32
        else:
            o = obuf[:n * (j1 - j0)].reshape(n, j1 - j0)
            np.matmul(blk, wb, out=o)
            _narrow_rows(o, b32, out, p0, j0, fast)


def to_f32(a, out=None):
    """``a`` widened to float32 (exact); fp32 arrays pass through when no ``out``."""
    if a.dtype == _F32:
        if out is None:
            return a
        np.copyto(out, a)
        return out
    if a.dtype in LOW and _native.available():
        if a.flags.c_contiguous:
            return _native_convert(a, np.empty(a.shape, _F32) if out is None else out)
        if out is None and a.T.flags.c_contiguous:  # a transposed view: widen its base
            return to_f32(a.T).T
    if out is None:
        return a.astype(_F32)
    np.copyto(out, a, casting="unsafe")
    return out


def from_f32(a, dtype, out=None):
    """float32 ``a`` rounded (to nearest even) to ``dtype``; other dtypes cast by numpy."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype and out is None:
        return a
    if a.dtype == _F32 and dtype in LOW and _native.available():
        if not a.flags.c_contiguous:
            if out is None and a.T.flags.c_contiguous:
                return from_f32(a.T, dtype).T
            a = np.ascontiguousarray(a)
        return _native_convert(a, np.empty(a.shape, dtype) if out is None else out)
    if out is None:
        return a.astype(dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def _split(n, parts):
    """``n`` rows cut into ``parts`` near-equal contiguous ranges [(lo, hi)] (none empty)."""
    parts = max(1, min(parts, n))
    step, extra = divmod(n, parts)
    spans, lo = [], 0
    for i in range(parts):
        hi = lo + step + (i < extra)
        spans.append((lo, hi))
        lo = hi
    return spans


# Share a large product's panels out among worker threads (each running one-thread
# sgemm) instead of letting OpenBLAS thread each panel's sgemm. Off: on an idle 2-core
# machine OpenBLAS's threads ran bf16 GEMMs at 1.3x one fp32 sgemm and the workers at
# 2x (512^3: 2.9 against 5.6 ms; transformer step 1.20x against 1.31x of fp32); the
# workers won only when other processes held the cores. True turns them on.
SPLIT_PANELS = False


def _workers(macs):
    """Threads for a GEMM of ``macs`` multiply-adds: one (OpenBLAS threads the sgemm
    itself) unless SPLIT_PANELS, then OpenBLAS's thread count, or one for a product too
    small to pay for a hand-off."""
    if not SPLIT_PANELS or macs < _PAR_MIN_MACS:
        return 1
    from .attention import blas_threads
    return max(1, blas_threads())


def _parallel(spans, fn):
    """``fn(span)`` for each span, one per thread with OpenBLAS at one thread inside
    (the pool and the switch of scaled_dot_product_attention): every worker converts its
    own panels and runs its own sgemm on them, so a small panel costs no thread hand-off
    inside OpenBLAS (which made 1 MiB panels several times slower on a loaded machine)."""
    if len(spans) == 1:
        fn(spans[0])
        return
    from .attention import blas_single_thread, _run
    with blas_single_thread():
        _run(spans, fn, len(spans))


def mm(a, b, trans_b=False, bias=None, out_dtype=None, b_round=None):
    """``a @ b`` (or ``a @ b.T``) ``+ bias`` for 2-D ``a`` (M, K), output in ``out_dtype``
    (default ``a.dtype``); ``a`` is converted panel by panel (the rows are shared out
    among the worker threads, each with its own panel buffers), ``bias`` once, ``b``
    once, or for a large ``b`` in column blocks per panel (``_Weight``). With
    ``b_round`` (fp16/bf16), the fp32 ``b`` is read as its cast to that dtype."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    fast = _passes()
    wt = _Weight(b, trans_b, None if b_round is None else np.dtype(b_round), fast)
    bias32 = None if bias is None else to_f32(bias)
    M, K = a.shape
    N = wt.N
    out = np.empty((M, N), out_dtype)
    if M == 0:
        return out
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    rows = max(8, _PANEL // max(K, N, 1))
    widen, narrow = a.dtype != _F32, out_dtype != _F32

    def run(span):
        r0, r1 = span
        n0 = min(rows, r1 - r0)
        abuf = np.empty((n0, K), _F32) if widen else None
        obuf = np.empty(n0 * wt.width, _F32) if narrow else None
        wbuf = wt.buffer()
        for p0 in range(r0, r1, rows):
            p1 = min(r1, p0 + rows)
            blk = a[p0:p1] if abuf is None else _widen_block(a, p0, p1, 0, K, abuf[:p1 - p0], fast)
            _panel_product(blk, wt, wbuf, bias32, out, p0, obuf, fast)
    _parallel(_split(M, _workers(M * K * N)), run)
    return out


def mm_tn(a, b, out_dtype=None):
    """``a.T @ b`` for 2-D ``a`` (K, M) and ``b`` (K, N) (a weight gradient: K is the
    token count), output in ``out_dtype`` (default ``a.dtype``), accumulated in fp32.

    The narrower operand is converted whole, in chunks of ``_BIG`` elements along K;
    the wider one is widened one column block (K x a few dozen columns) at a time,
    straight from its strided rows (``_widen_block``), and one sgemm per block writes
    its output rows directly: no full-size fp32 copy of the wide operand and no partial
    sums (except across K chunks, for very many tokens). With SPLIT_PANELS the blocks
    are shared out among the worker threads."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    if b.shape[1] > a.shape[1]:  # the wider side is b: make (b.T @ a), transposed
        return _tn(b, a, out_dtype, transposed=True)
    return _tn(a, b, out_dtype, transposed=False)


def _tn(a, b, out_dtype, transposed):
    """``a.T @ b`` (M, N) for the wider ``a`` (K, M), or its transpose (N, M) when
    ``transposed``: each block's product then fills columns of the result instead of
    rows, so no transposing copy of the output is made."""
    K, M = a.shape
    N = b.shape[1]
    shape = (N, M) if transposed else (M, N)
    acc = np.zeros(shape, _F32) if K == 0 else np.empty(shape, _F32)
    kc = max(8, _BIG // max(N, 1))
    spans = _split(M, _workers(K * M * N))
    a = np.ascontiguousarray(a)
    fast = _passes()

    def block_product(blk, b32, out):
        if transposed:
            np.matmul(b32.T, blk, out=out)
        else:
            np.matmul(blk.T, b32, out=out)

    def run_chunk(k0, k1, first, b32):
        kn = k1 - k0
        cols = max(16, min(M, _PANEL // max(kn, 1)))

        def run(span):
            m0, m1 = span
            c0 = min(cols, m1 - m0)
            abuf = np.empty(kn * c0, _F32)
            part = None if first else np.empty(shape[:1] + (c0,) if transposed else (c0, N), _F32)
            for j0 in range(m0, m1, cols):
                j1 = min(m1, j0 + cols)
                blk = _widen_block(a, k0, k1, j0, j1,
                                   abuf[:kn * (j1 - j0)].reshape(kn, j1 - j0), fast)
                dst = acc[:, j0:j1] if transposed else acc[j0:j1]
                if first:
                    block_product(blk, b32, dst)
                else:
                    o = part[:, :j1 - j0] if transposed else part[:j1 - j0]
                    block_product(blk, b32, o)
                    dst += o
        _parallel(spans, run)

    for k0 in range(0, K, kc):
        k1 = min(K, k0 + kc)
        run_chunk(k0, k1, k0 == 0, to_f32(np.ascontiguousarray(b[k0:k1])))
    return from_f32(acc, out_dtype)


def linear_grads(g, w, x, out_dtype, w_round=None):
    """The input and weight gradients ``(g @ W, g.T @ x)`` of ``x @ W.T`` from one
    widening of ``g``, for 2-D ``g`` (M, N) and ``x`` (M, K) (tokens x features) and the
    weight ``w`` (N, K), both in ``out_dtype``; with ``w_round``, the fp32 ``w`` is read
    as its cast to that dtype (``mm``'s ``b_round``).

    ``mm`` (the input gradient) and ``mm_tn`` (the weight gradient) would each widen
    ``g``, the latter in strided column blocks; here each row panel of ``g`` is widened
    once and serves both products, and ``x`` is widened in the same contiguous row
    panels. That pays where ``g`` is the wide operand (N >= K: a layer that widens,
    the FFN's first linear); the caller picks. The weight gradient is summed over the
    panels in fp32 (one sgemm per panel, the later ones added into the first): fp32 math
    on the exact widened operands, rounded once, as ``mm_tn``. The panels of ``g``,
    ``x`` and the input gradient share the ``_PANEL`` budget; a large weight is
    converted in column blocks (``_Weight``), a small one whole and dropped after the
    last input-gradient panel (one panel: before the weight gradient's fp32 sum
    exists)."""
    out_dtype = np.dtype(out_dtype)
    M, N = g.shape
    K = x.shape[1]
    fast = _passes()
    wt = _Weight(w, False, None if w_round is None else np.dtype(w_round), fast)
    w = None  # (the caller's cast is freed once widened, where nothing else holds it)
    gx = np.empty((M, K), out_dtype)
    g, x = np.ascontiguousarray(g), np.ascontiguousarray(x)
    rows = max(8, _PANEL // max(N + 2 * K, 1))
    n0 = min(rows, M)
    gbuf = np.empty((n0, N), _F32) if g.dtype != _F32 else None
    obuf = np.empty(n0 * wt.width, _F32) if out_dtype != _F32 else None
    wbuf = wt.buffer()
    acc = np.zeros((N, K), _F32) if M == 0 else None
    xbuf = part = None
    for p0 in range(0, M, rows):
        p1 = min(M, p0 + rows)
        n = p1 - p0
        g32 = g[p0:p1] if gbuf is None else _widen_block(g, p0, p1, 0, N, gbuf[:n], fast)
        _panel_product(g32, wt, wbuf, None, gx, p0, obuf, fast)
        if p1 == M:
            wt.release()
            obuf = wbuf = None
        if x.dtype == _F32:
            x32 = x[p0:p1]
        else:
            xbuf = np.empty((n0, K), _F32) if xbuf is None else xbuf
            x32 = _widen_block(x, p0, p1, 0, K, xbuf[:n], fast)
        if acc is None:
            acc = np.matmul(g32.T, x32)
        else:
            part = np.empty((N, K), _F32) if part is None else part
            np.matmul(g32.T, x32, out=part)
            acc += part
    g32 = x32 = gbuf = xbuf = part = None  # (freed before the rounded copy is made)
    return gx, from_f32(acc, out_dtype)


def colsum(a, out_dtype=None):
    """Sum over the rows of 2-D ``a`` accumulated in fp32 (a bias gradient)."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    M, N = a.shape
    acc = np.zeros(N, _F32)
    a = np.ascontiguousarray(a)
    if a.dtype in LOW and N and _passes():  # one native pass, no widened panels
        _EXT.lowp_colsum(_KINDS[(a.dtype, _F32)], _native._raw(a).reshape(-1), N, acc)
        return from_f32(acc, out_dtype)
    rows = max(8, _PANEL // max(N, 1))
    buf = np.empty((min(rows, M), N), _F32) if a.dtype != _F32 and M else None
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        blk = a[r0:r1] if buf is None else to_f32(a[r0:r1], out=buf[:r1 - r0])
        acc += blk.sum(axis=0)
    return from_f32(acc, out_dtype)


def matmul(a, b, out_dtype=None):
    """General ``a @ b`` (numpy broadcasting) with both operands widened whole."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    return from_f32(np.matmul(to_f32(a), to_f32(b)), out_dtype)
