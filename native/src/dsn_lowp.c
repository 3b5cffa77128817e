/*
 * dsn_lowp.c - the conversion passes of the low-precision GEMM (deepseek/ops/_lowp.py)
 * around OpenBLAS sgemm, one call per panel instead of several numpy passes, and the
 * bf16 ops CPU autocast runs without widening (deepseek/amp/lowp_native.py).
 *
 *   lowp_widen   a (rows x cols) block of a 16-bit (fp16/bf16) array, its rows `stride`
 *                elements apart, widened into a contiguous fp32 panel. Replaces a
 *                strided numpy copy of the block's words (which cost more than the
 *                widening itself) followed by a conversion of the copy.
 *   lowp_narrow  an fp32 (rows x cols) panel plus an optional fp32 bias row, rounded
 *                into the 16-bit output row by row while the row is still in cache.
 *                Replaces `panel += bias` and a conversion pass over the whole panel.
 *                The output rows may be `stride` elements apart (a column block of
 *                the result: the GEMM's blocks of a large weight).
 *   lowp_round   a strided (rows x cols) block of an fp32 array rounded to fp16/bf16
 *                precision into a contiguous fp32 panel: what casting it to 16 bits
 *                and widening the cast gives, bit for bit, without the 16-bit copy
 *                (the GEMM reads an fp32 master weight block by block).
 *
 *   lowp_colsum  column sums of a 16-bit array, accumulated in fp32 (a bias gradient).
 *   lowp_relu, lowp_relu_grad   relu and its gradient on bfloat16 bits (see there).
 *
 * widen and narrow convert through the kernel table in use (dsn_module.c's `convert`, the one
 * `deepseek.native.cast` runs), so the values are those of the separate passes bit for
 * bit: the bias add is one IEEE fp32 add per element (built with -ffp-contract=off),
 * as numpy's `+=`. The Python caller (_lowp.py) passes 16-bit arrays as their uint16
 * views; the checks here keep a bad call from reading or writing out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "dsn_common.h"

/* the kernel table dsn_module.c dispatches to now (set_isa included) */
const dsn_kernels *dsn_active_kernels(void);

static int lowp_kind(const char *fn, int kind, int widen)
{
    int ok = widen ? (kind == DSN_CVT_F16_F32 || kind == DSN_CVT_BF16_F32)
                   : (kind == DSN_CVT_F32_F16 || kind == DSN_CVT_F32_BF16);
    if (!ok)
        PyErr_Format(PyExc_ValueError, "%s(): bad conversion kind %d", fn, kind);
    return ok ? 0 : -1;
}

static int lowp_buf(const char *fn, const char *name, PyObject *o, Py_buffer *v,
                    Py_ssize_t itemsize, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, v, flags) < 0) return -1;
    if (v->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s(): %s must have %zd-byte items, got %zd", fn, name,
                     itemsize, v->itemsize);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* lowp_widen(kind, src_u16, offset, stride, rows, cols, out_f32) and
   lowp_round(kind, src_f32, offset, stride, rows, cols, out_f32): the (rows x cols)
   block of src at offset, its rows stride items apart, into the contiguous fp32 out;
   widened (kind: f16/bf16 -> f32) or rounded to the precision of kind's narrowing
   conversion (f32 -> f16/bf16) */
static PyObject *lowp_block(PyObject *args, const char *fn, int widen)
{
    int kind;
    Py_ssize_t off, stride, rows, cols, isz = widen ? 2 : 4;
    PyObject *osrc, *oout;
    Py_buffer s, d;
    if (!PyArg_ParseTuple(args, "iOnnnnO", &kind, &osrc, &off, &stride, &rows, &cols,
                          &oout) || lowp_kind(fn, kind, widen) < 0)
        return NULL;
    if (lowp_buf(fn, "src", osrc, &s, isz, 0) < 0) return NULL;
    if (lowp_buf(fn, "out", oout, &d, 4, 1) < 0) { PyBuffer_Release(&s); return NULL; }
    Py_ssize_t ns = s.len / isz, nd = d.len / 4;
    if (off < 0 || rows < 0 || cols < 0 || stride < cols ||
        (rows > 0 && cols > 0 && off + (rows - 1) * stride + cols > ns) || rows * cols > nd) {
        PyErr_Format(PyExc_ValueError, "%s(): block of %zd x %zd at offset %zd, stride %zd "
                     "does not fit src (%zd items) and out (%zd items)", fn, rows, cols, off,
                     stride, ns, nd);
        PyBuffer_Release(&s);
        PyBuffer_Release(&d);
        return NULL;
    }
    const dsn_kernels *k = dsn_active_kernels();
    float *dst = (float *)d.buf;
    Py_BEGIN_ALLOW_THREADS
    if (widen) {
        const uint16_t *src = (const uint16_t *)s.buf + off;
        for (Py_ssize_t r = 0; r < rows; r++)
            k->convert(kind, src + r * stride, dst + r * cols, (size_t)cols);
    } else {
        int back = kind == DSN_CVT_F32_BF16 ? DSN_CVT_BF16_F32 : DSN_CVT_F16_F32;
        const float *src = (const float *)s.buf + off;
        uint16_t tmp[DSN_BLOCK];  /* the 16-bit values of one piece of a row, in cache */
        for (Py_ssize_t r = 0; r < rows; r++)
            for (Py_ssize_t j0 = 0; j0 < cols; j0 += DSN_BLOCK) {
                size_t m = (size_t)(cols - j0 < DSN_BLOCK ? cols - j0 : DSN_BLOCK);
                k->convert(kind, src + r * stride + j0, tmp, m);
                k->convert(back, tmp, dst + r * cols + j0, m);
            }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&s);
    PyBuffer_Release(&d);
    Py_RETURN_NONE;
}

PyObject *dsn_py_lowp_widen(PyObject *self, PyObject *args)
{
    return lowp_block(args, "lowp_widen", 1);
}

PyObject *dsn_py_lowp_round(PyObject *self, PyObject *args)
{
    return lowp_block(args, "lowp_round", 0);
}

/* lowp_narrow(kind, panel_f32 (written: bias added), bias_f32_or_None, cols, out_u16
               [, offset, stride]): out rows `stride` items apart from `offset` (default
               0 and cols: the whole of a contiguous out) */
PyObject *dsn_py_lowp_narrow(PyObject *self, PyObject *args)
{
    const char *fn = "lowp_narrow";
    int kind;
    Py_ssize_t cols, off = 0, stride = -1;
    PyObject *osrc, *obias, *oout;
    Py_buffer s, b = {0}, d;
    if (!PyArg_ParseTuple(args, "iOOnO|nn:lowp_narrow", &kind, &osrc, &obias, &cols, &oout,
                          &off, &stride) ||
        lowp_kind(fn, kind, 0) < 0)
        return NULL;
    int whole = stride < 0;
    if (whole) stride = cols;
    if (lowp_buf(fn, "panel", osrc, &s, 4, 1) < 0) return NULL;
    if (lowp_buf(fn, "out", oout, &d, 2, 1) < 0) { PyBuffer_Release(&s); return NULL; }
    int has_bias = obias != Py_None;
    if (has_bias && lowp_buf(fn, "bias", obias, &b, 4, 0) < 0) {
        PyBuffer_Release(&s);
        PyBuffer_Release(&d);
        return NULL;
    }
    Py_ssize_t n = s.len / 4, nd = d.len / 2;
    Py_ssize_t rows = cols > 0 ? n / cols : 0;
    int bad = cols <= 0 || n % cols || (has_bias && b.len / 4 != cols);
    if (!bad && whole)
        bad = nd != n || off != 0;   /* an offset needs its stride */
    else if (!bad)
        bad = off < 0 || stride < cols || (rows > 0 && off + (rows - 1) * stride + cols > nd);
    if (bad) {
        PyErr_Format(PyExc_ValueError, "%s(): panel of %zd items, out of %zd (offset %zd, "
                     "stride %zd), bias of %zd do not make rows of %zd columns", fn, n, nd,
                     off, stride, has_bias ? b.len / 4 : (Py_ssize_t)0, cols);
        PyBuffer_Release(&s);
        PyBuffer_Release(&d);
        if (has_bias) PyBuffer_Release(&b);
        return NULL;
    }
    const dsn_kernels *k = dsn_active_kernels();
    float *src = (float *)s.buf;
    const float *bias = has_bias ? (const float *)b.buf : NULL;
    uint16_t *dst = (uint16_t *)d.buf + off;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        float *row = src + r * cols;
        if (bias)
            for (Py_ssize_t j = 0; j < cols; j++) row[j] += bias[j];
        k->convert(kind, row, dst + r * stride, (size_t)cols);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&s);
    PyBuffer_Release(&d);
    if (has_bias) PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ relu on bf16 */
/*
 * relu and its gradient straight on bfloat16 arrays, one pass each, with the values of
 * the fp32 path they replace (deepseek.ops.elementwise.Relu on the widened input,
 * rounded): the same fp32 operations per element as numpy's, so NaN, -0 and inf * 0
 * come out as they do there:
 *   forward   out = NaN(x) ? x : (x > 0 ? x : 0)        (numpy's NaN-propagating maximum)
 *   backward  grad = g * (float)(out > 0)                (numpy's g * (out > 0))
 * then rounded as dsn_common.h's scalar conversion rounds (exact for every value but
 * NaN, which becomes sign | 0x7fc0 as ml_dtypes makes it).
 */

/* The loops are plain C, vectorised by the compiler twice: for AVX2 (twice the lanes)
   and for the baseline. Which one runs follows the kernel table's instruction set
   (native.use_isa("scalar") picks the baseline), so tests reach both; the two compute
   the same float operations per element, in the same order per column, so the same
   bits. */
#define LOWP_LOOPS(SUF, ATTR)                                                           \
ATTR static void relu_bf16_##SUF(const uint16_t *src, uint16_t *dst, size_t n)          \
{                                                                                       \
    for (size_t i = 0; i < n; i++) {                                                    \
        float x = dsn_bf16_to_f32_scalar(src[i]);                                       \
        dst[i] = dsn_f32_to_bf16_scalar(x != x ? x : (x > 0.0f ? x : 0.0f));            \
    }                                                                                   \
}                                                                                       \
ATTR static void relu_grad_bf16_##SUF(const uint16_t *g, const uint16_t *out,            \
                                      uint16_t *dst, size_t n)                          \
{                                                                                       \
    for (size_t i = 0; i < n; i++) {                                                    \
        float m = dsn_bf16_to_f32_scalar(out[i]) > 0.0f ? 1.0f : 0.0f;                  \
        dst[i] = dsn_f32_to_bf16_scalar(dsn_bf16_to_f32_scalar(g[i]) * m);              \
    }                                                                                   \
}                                                                                       \
ATTR static void colsum_bf16_##SUF(const uint16_t *src, size_t rows, size_t cols,        \
                                   float *acc)                                          \
{                                                                                       \
    for (size_t r = 0; r < rows; r++) {                                                 \
        const uint16_t *row = src + r * cols;                                           \
        for (size_t j = 0; j < cols; j++) acc[j] += dsn_bf16_to_f32_scalar(row[j]);     \
    }                                                                                   \
}

LOWP_LOOPS(base, )
#if defined(DSN_X86)
LOWP_LOOPS(avx2, __attribute__((target("avx2"))))
/* the AVX2 build unless the kernel table runs the scalar kernels */
static int lowp_vec(void)
{
    const dsn_kernels *k = dsn_active_kernels();
    return k && strcmp(k->name, "scalar") != 0;
}
#define LOWP_PICK(fn) (lowp_vec() ? fn##_avx2 : fn##_base)
#else
#define LOWP_PICK(fn) fn##_base
#endif

/* lowp_relu(src_u16, out_u16) / lowp_relu_grad(g_u16, out_u16, res_u16): bfloat16 bits,
   all the same length; res may not overlap the inputs (the caller's arrays are new) */
static PyObject *lowp_relu_call(const char *fn, PyObject *args, int grad)
{
    PyObject *o[3];
    Py_buffer v[3];
    int nbuf = grad ? 3 : 2;
    if (!PyArg_ParseTuple(args, grad ? "OOO" : "OO", &o[0], &o[1], &o[2])) return NULL;
    for (int i = 0; i < nbuf; i++) {
        if (lowp_buf(fn, i == nbuf - 1 ? "out" : "src", o[i], &v[i], 2, i == nbuf - 1) < 0) {
            while (i-- > 0) PyBuffer_Release(&v[i]);
            return NULL;
        }
        if (v[i].len != v[0].len) {
            PyErr_Format(PyExc_ValueError, "%s(): arguments of %zd and %zd items", fn,
                         v[0].len / 2, v[i].len / 2);
            for (int j = 0; j <= i; j++) PyBuffer_Release(&v[j]);
            return NULL;
        }
    }
    size_t n = (size_t)v[0].len / 2;
    Py_BEGIN_ALLOW_THREADS
    if (grad) LOWP_PICK(relu_grad_bf16)(v[0].buf, v[1].buf, v[2].buf, n);
    else LOWP_PICK(relu_bf16)(v[0].buf, v[1].buf, n);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < nbuf; i++) PyBuffer_Release(&v[i]);
    Py_RETURN_NONE;
}

PyObject *dsn_py_lowp_relu(PyObject *self, PyObject *args)
{
    return lowp_relu_call("lowp_relu", args, 0);
}

PyObject *dsn_py_lowp_relu_grad(PyObject *self, PyObject *args)
{
    return lowp_relu_call("lowp_relu_grad", args, 1);
}

/* ---------------------------------------------------------- column sums of bf16/fp16 */

/* lowp_colsum(kind, src_u16, cols, acc_f32): acc[j] += src[r, j] for every row r in
   order, in fp32 (the bias gradient of a bf16/fp16 linear: numpy's row-by-row sum over
   axis 0, without a widened copy). fp16 rows are widened through the kernel table
   in blocks, as `convert` widens them. */
PyObject *dsn_py_lowp_colsum(PyObject *self, PyObject *args)
{
    const char *fn = "lowp_colsum";
    int kind;
    Py_ssize_t cols;
    PyObject *osrc, *oacc;
    Py_buffer s, a;
    if (!PyArg_ParseTuple(args, "iOnO:lowp_colsum", &kind, &osrc, &cols, &oacc) ||
        lowp_kind(fn, kind, 1) < 0)
        return NULL;
    if (lowp_buf(fn, "src", osrc, &s, 2, 0) < 0) return NULL;
    if (lowp_buf(fn, "acc", oacc, &a, 4, 1) < 0) { PyBuffer_Release(&s); return NULL; }
    Py_ssize_t n = s.len / 2;
    if (cols <= 0 || n % cols || a.len / 4 != cols) {
        PyErr_Format(PyExc_ValueError, "%s(): src of %zd items and acc of %zd do not make "
                     "rows of %zd columns", fn, n, a.len / 4, cols);
        PyBuffer_Release(&s);
        PyBuffer_Release(&a);
        return NULL;
    }
    const uint16_t *src = s.buf;
    float *acc = a.buf;
    size_t rows = (size_t)(n / cols);
    Py_BEGIN_ALLOW_THREADS
    if (kind == DSN_CVT_BF16_F32) {
        LOWP_PICK(colsum_bf16)(src, rows, (size_t)cols, acc);
    } else {
        const dsn_kernels *k = dsn_active_kernels();
        float tmp[DSN_BLOCK];
        for (size_t r = 0; r < rows; r++)
            for (size_t j0 = 0; j0 < (size_t)cols; j0 += DSN_BLOCK) {
                size_t m = (size_t)cols - j0 < DSN_BLOCK ? (size_t)cols - j0 : DSN_BLOCK;
                k->convert(kind, src + r * cols + j0, tmp, m);
                for (size_t j = 0; j < m; j++) acc[j0 + j] += tmp[j];
            }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&s);
    PyBuffer_Release(&a);
    Py_RETURN_NONE;
}
