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
input gradient); ``mm_tn`` is ``a.T @ b`` blocked over the contraction (the weight
gradient: tokens x features panels, accumulated in fp32); ``colsum`` is the bias
gradient. ``matmul`` is the general (batched, broadcast) product: it widens both
operands whole.
"""
import numpy as np

from .. import dtypes as _dt
from .. import native as _native

LOW = (_dt.float16, _dt.bfloat16)
_F32 = np.dtype(np.float32)
# fp32 elements of one converted panel (4 Mi = 16 MiB). Measured on a loaded 2-core
# AVX2 machine: OpenBLAS pays a thread hand-off per call, so 1 MiB panels ran the
# (2048, 1024) x (1024, 256) product 6-13x slower than one sgemm, 4 MiB panels 1.5-2x,
# 16 MiB panels within 1.1x; smaller tensors are converted whole anyway
_PANEL = 1 << 22


def applies(*arrays):
    """True when these are CPU (numpy) arrays and one of them is fp16/bf16."""
    return all(isinstance(a, np.ndarray) for a in arrays if a is not None) and \
        any(a is not None and a.dtype in LOW for a in arrays)


def to_f32(a, out=None):
    """``a`` widened to float32 (exact); fp32 arrays pass through when no ``out``."""
    if a.dtype == _F32:
        if out is None:
            return a
        np.copyto(out, a)
        return out
    if a.dtype in LOW and _native.available():
        if a.flags.c_contiguous:
            if out is None:
                out = np.empty(a.shape, _F32)
            _native.cast(a.reshape(-1), _F32, out=out.reshape(-1))
            return out
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
        if out is None:
            out = np.empty(a.shape, dtype)
        _native.cast(a.reshape(-1), dtype, out=out.reshape(-1))
        return out
    if out is None:
        return a.astype(dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def mm(a, b, trans_b=False, bias=None, out_dtype=None):
    """``a @ b`` (or ``a @ b.T``) ``+ bias`` for 2-D ``a`` (M, K), output in ``out_dtype``
    (default ``a.dtype``); ``a`` is converted panel by panel, ``b`` and ``bias`` once."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    b32 = to_f32(b)
    if trans_b:
        b32 = b32.T
    bias32 = None if bias is None else to_f32(bias)
    M, K = a.shape
    N = b32.shape[1]
    out = np.empty((M, N), out_dtype)
    if M == 0:
        return out
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    rows = max(8, _PANEL // max(K, N, 1))
    n0 = min(rows, M)
    abuf = np.empty((n0, K), _F32) if a.dtype != _F32 else None
    obuf = np.empty((n0, N), _F32) if out_dtype != _F32 else None
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        n = r1 - r0
        blk = a[r0:r1] if abuf is None else to_f32(a[r0:r1], out=abuf[:n])
        o = out[r0:r1] if obuf is None else obuf[:n]
        np.matmul(blk, b32, out=o)
        if bias32 is not None:
            o += bias32
        if obuf is not None:
            from_f32(o, out_dtype, out=out[r0:r1])
    return out


def mm_tn(a, b, out_dtype=None):
    """``a.T @ b`` for 2-D ``a`` (K, M) and ``b`` (K, N), blocked over K (row panels of
    both are converted; the (M, N) product accumulates in fp32), output in
    ``out_dtype`` (default ``a.dtype``)."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    K, M = a.shape
    N = b.shape[1]
    acc = np.zeros((M, N), _F32)
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    rows = max(8, _PANEL // max(M, N, 1))
    n0 = min(rows, K) if K else 0
    abuf = np.empty((n0, M), _F32) if a.dtype != _F32 else None
    bbuf = np.empty((n0, N), _F32) if b.dtype != _F32 else None
    part = np.empty((M, N), _F32) if K > rows else None
    for k0 in range(0, K, rows):
        k1 = min(K, k0 + rows)
        n = k1 - k0
        ab = a[k0:k1] if abuf is None else to_f32(a[k0:k1], out=abuf[:n])
        bb = b[k0:k1] if bbuf is None else to_f32(b[k0:k1], out=bbuf[:n])
        if part is None:
            np.matmul(ab.T, bb, out=acc)
        else:
            np.matmul(ab.T, bb, out=part)
            acc += part
    return from_f32(acc, out_dtype)


def colsum(a, out_dtype=None):
    """Sum over the rows of 2-D ``a`` accumulated in fp32 (a bias gradient)."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    M, N = a.shape
    acc = np.zeros(N, _F32)
    a = np.ascontiguousarray(a)
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
