/*
 * dsn_conv.c - the memory passes around the convolution GEMMs and max pooling
 * (deepseek/ops/conv.py, deepseek/ops/pooling.py) and the Adadelta update
 * (deepseek/optim/_simple.py), each one pass in C instead of several numpy passes.
 *
 *   conv_im2col     the column matrix (C, *k, N, *out) of a strided (N, C, *spatial)
 *                   input, zero padding written in place (no padded copy of the input).
 *   conv_col2im     the input gradient (C, N, *spatial) from the column gradient: per
 *                   (c, n) plane, kernel offsets in the order numpy's loop takes them,
 *                   so every sum is numpy's in the same order (stores, like numpy, when
 *                   the offsets hit disjoint positions).
 *   maxpool_fwd     window max and its flat index into the input plane (first maximum
 *                   of the window in offset order; the first NaN wins, as numpy's argmax).
 *   maxpool_bwd     the gradient scattered to those indices, the outputs of a plane
 *                   walked last to first: for each input element that adds its
 *                   contributions in kernel-offset order, numpy's order.
 *   adadelta        torch.optim.Adadelta's update, numpy's operations one by one per
 *                   element (built with -ffp-contract=off: the same IEEE roundings).
 *
 * Every spatial geometry is 3-d (D, H, W): the Python callers give 1-d and 2-d problems
 * leading dimensions of size 1. Strided inputs come as buffers with strides; outputs
 * are C-contiguous. float32 ("f") and float64 ("d") only; the callers keep their numpy
 * code for other dtypes. Scalar C loops: the compiler vectorises the inner copies.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef struct { Py_ssize_t d, h, w; } dsn_dim3;

typedef struct {
    Py_buffer view;
    int held;
} conv_buf;

static void conv_release(conv_buf *b, int n)
{
    for (int i = 0; i < n; i++)
        if (b[i].held) { PyBuffer_Release(&b[i].view); b[i].held = 0; }
}

/* 'f' -> 4, 'd' -> 8, 'q' (int64) -> 8 with *is_int; else a TypeError and -1 */
static int conv_kind(const char *fn, const char *name, const Py_buffer *v, char want)
{
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    char k = *f;
    if (k == 'l' && v->itemsize == 8) k = 'q';
    int ok = want ? (k == want) : (k == 'f' || k == 'd');
    if (!ok || f[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s(): %s must be %s, got format '%s'", fn, name,
                     want == 'q' ? "int64" : want == 'f' ? "float32" : want == 'd' ? "float64"
                     : "float32 or float64", v->format ? v->format : "B");
        return -1;
    }
    return k;
}

/* a buffer of `ndim` dims (strided, read-only) or C-contiguous (writable when asked) */
static int conv_get(const char *fn, const char *name, PyObject *o, conv_buf *b, int ndim,
                    int contiguous, int writable)
{
    int flags = PyBUF_FORMAT | (contiguous ? PyBUF_C_CONTIGUOUS : PyBUF_STRIDES) |
                (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, &b->view, flags) < 0) return -1;
    b->held = 1;
    if (ndim >= 0 && b->view.ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s(): %s must have %d dims, got %d", fn, name, ndim,
                     b->view.ndim);
        return -1;
    }
    return 0;
}

static Py_ssize_t conv_count(const Py_buffer *v) { return v->len / v->itemsize; }

/* [lo, hi): the outputs o in [0, n) whose input position o*s + base lies in [0, L) */
static void conv_range(Py_ssize_t base, Py_ssize_t s, Py_ssize_t n, Py_ssize_t L,
                       Py_ssize_t *lo, Py_ssize_t *hi)
{
    Py_ssize_t a = base >= 0 ? 0 : (-base + s - 1) / s;
    Py_ssize_t b = base >= L ? 0 : (L - 1 - base) / s + 1;
    if (b > n) b = n;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* geometry tuple arguments: ((kd,kh,kw), (sd,sh,sw), (pd,ph,pw), (dd,dh,dw), (od,oh,ow)) */
#define GEOM_FMT "(nnn)(nnn)(nnn)(nnn)(nnn)"
#define GEOM_ARGS(k, s, p, dl, o) &k.d, &k.h, &k.w, &s.d, &s.h, &s.w, &p.d, &p.h, &p.w, \
    &dl.d, &dl.h, &dl.w, &o.d, &o.h, &o.w

static int conv_geom_ok(const char *fn, dsn_dim3 k, dsn_dim3 s, dsn_dim3 p, dsn_dim3 dl,
                        dsn_dim3 o)
{
    if (k.d < 1 || k.h < 1 || k.w < 1 || s.d < 1 || s.h < 1 || s.w < 1 || dl.d < 1 ||
        dl.h < 1 || dl.w < 1 || p.d < 0 || p.h < 0 || p.w < 0 || o.d < 0 || o.h < 0 ||
        o.w < 0) {
        PyErr_Format(PyExc_ValueError, "%s(): bad geometry (kernel, stride and dilation must "
                     "be positive, padding and output sizes non-negative)", fn);
        return 0;
    }
    return 1;
}

/* The source and destination of im2col (from_cols 0: a strided 5-d input, the columns
 * out) or col2im (1: the columns in, a contiguous 5-d gradient out), one float kind:
 * that kind, or -1 with the error set (b[0], b[1] to release either way). */
static int conv_pair(const char *fn, const char *src_name, PyObject *src, const char *dst_name,
                     PyObject *dst, int from_cols, conv_buf *b)
{
    if (conv_get(fn, src_name, src, &b[0], from_cols ? -1 : 5, from_cols, 0) < 0 ||
        conv_get(fn, dst_name, dst, &b[1], from_cols ? 5 : -1, 1, 1) < 0)
        return -1;
    int kind = conv_kind(fn, src_name, &b[0].view, 0);
    if (kind < 0 || conv_kind(fn, dst_name, &b[1].view, (char)kind) < 0) return -1;
    return kind;
}

/* ------------------------------------------------------------------ im2col */

#define IM2COL_BODY(T)                                                                      \
    {                                                                                       \
        const char *xb = (const char *)x->buf;                                              \
        T *dst = (T *)cols;                                                                 \
        const Py_ssize_t *st = x->strides;                                                  \
        for (Py_ssize_t c = 0; c < C; c++)                                                  \
        for (Py_ssize_t kd = 0; kd < k.d; kd++)                                             \
        for (Py_ssize_t kh = 0; kh < k.h; kh++)                                             \
        for (Py_ssize_t kw = 0; kw < k.w; kw++) {                                           \
            Py_ssize_t w0 = kw * dl.w - p.w, lo, hi;                                        \
            conv_range(w0, s.w, o.w, W, &lo, &hi);                                          \
            Py_ssize_t step = s.w * st[4];                                                  \
            for (Py_ssize_t n = n0; n < n0 + Nb; n++)                                       \
            for (Py_ssize_t od = 0; od < o.d; od++) {                                       \
                Py_ssize_t id = od * s.d + kd * dl.d - p.d;                                 \
                for (Py_ssize_t oh = 0; oh < o.h; oh++, dst += o.w) {                       \
                    Py_ssize_t ih = oh * s.h + kh * dl.h - p.h;                             \
                    if (id < 0 || id >= D || ih < 0 || ih >= H || lo == hi) {               \
                        memset(dst, 0, (size_t)o.w * sizeof(T));                            \
                        continue;                                                           \
                    }                                                                       \
                    const char *row = xb + n * st[0] + c * st[1] + id * st[2] + ih * st[3] \
                                      + (w0 + lo * s.w) * st[4];                            \
                    if (lo) memset(dst, 0, (size_t)lo * sizeof(T));                         \
                    if (step == (Py_ssize_t)sizeof(T))                                      \
                        memcpy(dst + lo, row, (size_t)(hi - lo) * sizeof(T));               \
                    else                                                                    \
                        for (Py_ssize_t ow = lo; ow < hi; ow++, row += step)                \
                            dst[ow] = *(const T *)row;                                      \
                    if (hi < o.w) memset(dst + hi, 0, (size_t)(o.w - hi) * sizeof(T));      \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

static void im2col_f32(const Py_buffer *x, void *cols, Py_ssize_t n0, Py_ssize_t Nb, Py_ssize_t C,
                       Py_ssize_t D, Py_ssize_t H, Py_ssize_t W, dsn_dim3 k, dsn_dim3 s,
                       dsn_dim3 p, dsn_dim3 dl, dsn_dim3 o) IM2COL_BODY(float)

static void im2col_f64(const Py_buffer *x, void *cols, Py_ssize_t n0, Py_ssize_t Nb, Py_ssize_t C,
                       Py_ssize_t D, Py_ssize_t H, Py_ssize_t W, dsn_dim3 k, dsn_dim3 s,
                       dsn_dim3 p, dsn_dim3 dl, dsn_dim3 o) IM2COL_BODY(double)

/* ------------------------------------------------------------------ col2im */

#define COL2IM_BODY(T)                                                                      \
    {                                                                                       \
        const T *src = (const T *)gcols;                                                    \
        T *dst = (T *)gx;                                                                   \
        Py_ssize_t K = k.d * k.h * k.w, P = o.d * o.h * o.w, plane = D * H * W;             \
        for (Py_ssize_t c = 0; c < C; c++)                                                  \
        for (Py_ssize_t n = 0; n < Nb; n++) {                                               \
            T *g = dst + (c * N + n0 + n) * plane;                                          \
            memset(g, 0, (size_t)plane * sizeof(T));                                        \
            Py_ssize_t ko = 0;                                                              \
            for (Py_ssize_t kd = 0; kd < k.d; kd++)                                         \
            for (Py_ssize_t kh = 0; kh < k.h; kh++)                                         \
            for (Py_ssize_t kw = 0; kw < k.w; kw++, ko++) {                                 \
                const T *sp = src + ((c * K + ko) * Nb + n) * P;                            \
                Py_ssize_t w0 = kw * dl.w - p.w, lo, hi;                                    \
                conv_range(w0, s.w, o.w, W, &lo, &hi);                                      \
                for (Py_ssize_t od = 0; od < o.d; od++) {                                   \
                    Py_ssize_t id = od * s.d + kd * dl.d - p.d;                             \
                    for (Py_ssize_t oh = 0; oh < o.h; oh++) {                               \
                        Py_ssize_t ih = oh * s.h + kh * dl.h - p.h;                         \
                        if (id < 0 || id >= D || ih < 0 || ih >= H) continue;               \
                        const T *r = sp + (od * o.h + oh) * o.w;                            \
                        T *q = g + (id * H + ih) * W;                                       \
                        if (store)                                                          \
                            for (Py_ssize_t ow = lo; ow < hi; ow++) q[w0 + ow * s.w] = r[ow]; \
                        else                                                                \
                            for (Py_ssize_t ow = lo; ow < hi; ow++) q[w0 + ow * s.w] += r[ow]; \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

static void col2im_f32(const void *gcols, void *gx, Py_ssize_t N, Py_ssize_t n0,
                       Py_ssize_t Nb, Py_ssize_t C, Py_ssize_t D,
                       Py_ssize_t H, Py_ssize_t W, dsn_dim3 k, dsn_dim3 s, dsn_dim3 p,
                       dsn_dim3 dl, dsn_dim3 o, int store) COL2IM_BODY(float)

static void col2im_f64(const void *gcols, void *gx, Py_ssize_t N, Py_ssize_t n0,
                       Py_ssize_t Nb, Py_ssize_t C, Py_ssize_t D,
                       Py_ssize_t H, Py_ssize_t W, dsn_dim3 k, dsn_dim3 s, dsn_dim3 p,
                       dsn_dim3 dl, dsn_dim3 o, int store) COL2IM_BODY(double)

/* conv_im2col(x (N, C, D, H, W) strided, cols (C*K*Nb*P,), n0, geometry): the columns of
 * samples n0 .. n0+Nb-1; conv_col2im(gcols (C*K*Nb*P,), gx (C, N, D, H, W) contiguous, n0,
 * geometry): those samples of gx from their column gradient (a chunk of the GEMM) */
static PyObject *conv_columns(PyObject *args, int from_cols)
{
    const char *fn = from_cols ? "conv_col2im" : "conv_im2col";
    PyObject *osrc, *odst;
    Py_ssize_t n0;
    dsn_dim3 k, s, p, dl, o;
    conv_buf b[2];
    memset(b, 0, sizeof(b));
    if (!PyArg_ParseTuple(args, "OOn" GEOM_FMT, &osrc, &odst, &n0, GEOM_ARGS(k, s, p, dl, o)) ||
        !conv_geom_ok(fn, k, s, p, dl, o))
        return NULL;
    int kind = from_cols ? conv_pair(fn, "gcols", osrc, "gx", odst, 1, b)
                         : conv_pair(fn, "x", osrc, "cols", odst, 0, b);
    if (kind < 0) goto fail;
    const Py_buffer *img = &b[from_cols ? 1 : 0].view, *cols = &b[from_cols ? 0 : 1].view;
    const Py_ssize_t *sh = img->shape;  /* (N, C, ...) input, (C, N, ...) gradient */
    Py_ssize_t N = sh[from_cols ? 1 : 0], C = sh[from_cols ? 0 : 1];
    Py_ssize_t per = C * k.d * k.h * k.w * o.d * o.h * o.w, got = conv_count(cols);
    Py_ssize_t Nb = per ? got / per : 0;
    if ((per ? got % per : got) || n0 < 0 || n0 + Nb > N) {
        PyErr_Format(PyExc_ValueError, "%s(): the columns have %zd items: not whole samples "
                     "of %zd items from sample %zd of %zd", fn, got, per, n0, N);
        goto fail;
    }
    /* offsets hitting disjoint positions: numpy stores instead of adding */
    int store = s.d >= dl.d * (k.d - 1) + 1 && s.h >= dl.h * (k.h - 1) + 1 &&
                s.w >= dl.w * (k.w - 1) + 1;
    Py_BEGIN_ALLOW_THREADS
    if (from_cols && kind == 'f')
        col2im_f32(cols->buf, img->buf, N, n0, Nb, C, sh[2], sh[3], sh[4], k, s, p, dl, o, store);
    else if (from_cols)
        col2im_f64(cols->buf, img->buf, N, n0, Nb, C, sh[2], sh[3], sh[4], k, s, p, dl, o, store);
    else if (kind == 'f')
        im2col_f32(img, cols->buf, n0, Nb, C, sh[2], sh[3], sh[4], k, s, p, dl, o);
    else
        im2col_f64(img, cols->buf, n0, Nb, C, sh[2], sh[3], sh[4], k, s, p, dl, o);
    Py_END_ALLOW_THREADS
    conv_release(b, 2);
    Py_RETURN_NONE;
fail:
    conv_release(b, 2);
    return NULL;
}

static PyObject *py_conv_im2col(PyObject *self, PyObject *args) { return conv_columns(args, 0); }

static PyObject *py_conv_col2im(PyObject *self, PyObject *args) { return conv_columns(args, 1); }

/* ------------------------------------------------------------------ max pooling */

/* Pool windows lying wholly inside the input (all but the borders) take the kernel
 * offsets from two precomputed tables, byte offset `ob` and plane index `oi`, in numpy's
 * offset order; border windows check bounds per offset. The comparisons branch: the
 * data-dependent selects of a branch-free form were several times slower here. */
#define MAXPOOL_UPDATE(v, i)                                                                \
    if (bi < 0 || v > best || (v != v && best == best)) { best = v; bi = (i); }

#define MAXPOOL_SCAN(T, KC)                                                                 \
    {                                                                                       \
        T nan = best - best; /* NaN when some value is NaN or infinite */                   \
        for (Py_ssize_t j = 1; j < (KC); j++) {                                             \
            T v = *(const T *)(org + ob[j]);                                                \
            nan += v - v;                                                                   \
            if (v > best) { best = v; bj = j; }                                             \
        }                                                                                   \
        if (nan != nan) { /* rare: again with the NaN rule */                               \
            best = *(const T *)org;                                                         \
            bj = 0;                                                                         \
            for (Py_ssize_t j = 1; j < (KC); j++) {                                         \
                T v = *(const T *)(org + ob[j]);                                            \
                if (v > best || (v != v && best == best)) { best = v; bj = j; }             \
            }                                                                               \
        }                                                                                   \
    }

#define MAXPOOL_FWD_BODY(T)                                                                 \
    {                                                                                       \
        const char *xb = (const char *)x->buf;                                              \
        const Py_ssize_t st5[5] = {x->strides[0], x->strides[1], x->strides[2],             \
                                   x->strides[3], x->strides[4]};                           \
        const Py_ssize_t *st = st5;                                                         \
        const Py_ssize_t K = k.d * k.h * k.w;                                               \
        T *restrict yp = y;                                                                 \
        Py_ssize_t wlo, whi; /* outputs whose window is inside along w */                   \
        conv_range(-p.w, s.w, o.w, W - (k.w - 1) * dl.w, &wlo, &whi);                       \
        for (Py_ssize_t n = 0; n < N; n++)                                                  \
        for (Py_ssize_t c = 0; c < C; c++) {                                                \
            const char *plane = xb + n * st[0] + c * st[1];                                 \
            for (Py_ssize_t od = 0; od < o.d; od++)                                         \
            for (Py_ssize_t oh = 0; oh < o.h; oh++) {                                       \
                Py_ssize_t d0 = od * s.d - p.d, h0 = oh * s.h - p.h;                        \
                int inside = d0 >= 0 && d0 + (k.d - 1) * dl.d < D && h0 >= 0 &&             \
                             h0 + (k.h - 1) * dl.h < H;                                     \
                for (Py_ssize_t ow = 0; ow < o.w; ow++, yp++, idx++) {                      \
                    Py_ssize_t w0 = ow * s.w - p.w;                                         \
                    T best = 0;                                                             \
                    int64_t bi = -1;                                                        \
                    if (inside && ow >= wlo && ow < whi) {                                  \
                        const char *org = plane + d0 * st[2] + h0 * st[3] + w0 * st[4];     \
                        Py_ssize_t bj = 0;                                                  \
                        best = *(const T *)org;                                             \
                        /* constant trip counts of the common 2x2 and 3x3 windows unroll */ \
                        if (K == 4) MAXPOOL_SCAN(T, 4)                                      \
                        else if (K == 9) MAXPOOL_SCAN(T, 9)                                 \
                        else MAXPOOL_SCAN(T, K)                                             \
                        bi = (d0 * H + h0) * W + w0 + oi[bj];                               \
                    } else {                                                                \
                        for (Py_ssize_t a = 0; a < k.d; a++) {                              \
                            Py_ssize_t id = d0 + a * dl.d;                                  \
                            if ((size_t)id >= (size_t)D) continue;                          \
                            for (Py_ssize_t b = 0; b < k.h; b++) {                          \
                                Py_ssize_t ih = h0 + b * dl.h;                              \
                                if ((size_t)ih >= (size_t)H) continue;                      \
                                const char *row = plane + id * st[2] + ih * st[3];          \
                                for (Py_ssize_t e = 0; e < k.w; e++) {                      \
                                    Py_ssize_t iw = w0 + e * dl.w;                          \
                                    if ((size_t)iw >= (size_t)W) continue;                  \
                                    T v = *(const T *)(row + iw * st[4]);                   \
                                    MAXPOOL_UPDATE(v, (id * H + ih) * W + iw)               \
                                }                                                           \
                            }                                                               \
                        }                                                                   \
                    }                                                                       \
                    *yp = bi < 0 ? (T)-INFINITY : best;                                     \
                    *idx = bi;                                                              \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

static void maxpool_fwd_f32(const Py_buffer *x, void *y, int64_t *restrict idx, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W,
                            dsn_dim3 k, dsn_dim3 s, dsn_dim3 p, dsn_dim3 dl, dsn_dim3 o,
                            const Py_ssize_t *restrict ob, const Py_ssize_t *restrict oi) MAXPOOL_FWD_BODY(float)

static void maxpool_fwd_f64(const Py_buffer *x, void *y, int64_t *restrict idx, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W,
                            dsn_dim3 k, dsn_dim3 s, dsn_dim3 p, dsn_dim3 dl, dsn_dim3 o,
                            const Py_ssize_t *restrict ob, const Py_ssize_t *restrict oi) MAXPOOL_FWD_BODY(double)

/* maxpool_fwd(x (N, C, D, H, W) strided, y, idx (N*C*P,) contiguous, geometry) */
static PyObject *py_maxpool_fwd(PyObject *self, PyObject *args)
{
    const char *fn = "maxpool_fwd";
    PyObject *ox, *oy, *oi;
    dsn_dim3 k, s, p, dl, o;
    conv_buf b[3];
    memset(b, 0, sizeof(b));
    if (!PyArg_ParseTuple(args, "OOO" GEOM_FMT ":maxpool_fwd", &ox, &oy, &oi,
                          GEOM_ARGS(k, s, p, dl, o)) || !conv_geom_ok(fn, k, s, p, dl, o))
        return NULL;
    if (conv_get(fn, "x", ox, &b[0], 5, 0, 0) < 0 || conv_get(fn, "y", oy, &b[1], -1, 1, 1) < 0 ||
        conv_get(fn, "idx", oi, &b[2], -1, 1, 1) < 0)
        goto fail;
    int kind = conv_kind(fn, "x", &b[0].view, 0);
    if (kind < 0 || conv_kind(fn, "y", &b[1].view, (char)kind) < 0 ||
        conv_kind(fn, "idx", &b[2].view, 'q') < 0)
        goto fail;
    const Py_ssize_t *sh = b[0].view.shape;
    Py_ssize_t N = sh[0], C = sh[1], need = N * C * o.d * o.h * o.w;
    if (conv_count(&b[1].view) != need || conv_count(&b[2].view) != need) {
        PyErr_Format(PyExc_ValueError, "%s(): y and idx need %zd items, got %zd and %zd", fn,
                     need, conv_count(&b[1].view), conv_count(&b[2].view));
        goto fail;
    }
    /* the offset tables of the inside windows: byte offsets and plane indices */
    Py_ssize_t K = k.d * k.h * k.w, *tb = PyMem_Malloc(2 * (size_t)K * sizeof(Py_ssize_t));
    if (!tb) { PyErr_NoMemory(); goto fail; }
    Py_ssize_t *ti = tb + K, j = 0;
    const Py_ssize_t *st = b[0].view.strides;
    for (Py_ssize_t a = 0; a < k.d; a++)
        for (Py_ssize_t h = 0; h < k.h; h++)
            for (Py_ssize_t e = 0; e < k.w; e++, j++) {
                tb[j] = a * dl.d * st[2] + h * dl.h * st[3] + e * dl.w * st[4];
                ti[j] = (a * dl.d * sh[3] + h * dl.h) * sh[4] + e * dl.w;
            }
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f')
        maxpool_fwd_f32(&b[0].view, b[1].view.buf, (int64_t *)b[2].view.buf, N, C, sh[2], sh[3],
                        sh[4], k, s, p, dl, o, tb, ti);
    else
        maxpool_fwd_f64(&b[0].view, b[1].view.buf, (int64_t *)b[2].view.buf, N, C, sh[2], sh[3],
                        sh[4], k, s, p, dl, o, tb, ti);
    Py_END_ALLOW_THREADS
    PyMem_Free(tb);
    conv_release(b, 3);
    Py_RETURN_NONE;
fail:
    conv_release(b, 3);
    return NULL;
}

/* gx (N, C, plane) has any plane order (strides sn, sc in elements): the input's own
 * layout, so the elementwise backward passes after it keep that layout too */
#define MAXPOOL_BWD_BODY(T)                                                                 \
    {                                                                                       \
        int bad = 0; /* an index outside its plane: skipped, reported */                    \
        const T *gp = (const T *)g;                                                         \
        for (Py_ssize_t n = 0; n < N; n++)                                                  \
        for (Py_ssize_t c = 0; c < C; c++) {                                                \
            const T *gb = gp + (n * C + c) * P;                                             \
            const int64_t *ib = idx + (n * C + c) * P;                                      \
            T *dst = (T *)gx + n * sn + c * sc;                                             \
            memset(dst, 0, (size_t)plane * sizeof(T));                                      \
            for (Py_ssize_t j = P - 1; j >= 0; j--) {                                       \
                int64_t i = ib[j];                                                          \
                if (i < 0 || i >= plane) { bad = 1; continue; }                             \
                dst[i] += gb[j];                                                            \
            }                                                                               \
        }                                                                                   \
        return bad;                                                                         \
    }

static int maxpool_bwd_f32(const void *g, const int64_t *idx, void *gx, Py_ssize_t N,
                           Py_ssize_t C, Py_ssize_t sn, Py_ssize_t sc, Py_ssize_t P,
                           Py_ssize_t plane) MAXPOOL_BWD_BODY(float)

static int maxpool_bwd_f64(const void *g, const int64_t *idx, void *gx, Py_ssize_t N,
                           Py_ssize_t C, Py_ssize_t sn, Py_ssize_t sc, Py_ssize_t P,
                           Py_ssize_t plane) MAXPOOL_BWD_BODY(double)

/* maxpool_bwd(g (N*C*P,) contiguous, idx (N*C*P,) contiguous, gx (N, C, plane) strided,
 * each plane contiguous) */
static PyObject *py_maxpool_bwd(PyObject *self, PyObject *args)
{
    const char *fn = "maxpool_bwd";
    PyObject *og, *oi, *ox;
    conv_buf b[3];
    memset(b, 0, sizeof(b));
    if (!PyArg_ParseTuple(args, "OOO:maxpool_bwd", &og, &oi, &ox)) return NULL;
    if (conv_get(fn, "g", og, &b[0], -1, 1, 0) < 0 || conv_get(fn, "idx", oi, &b[1], -1, 1, 0) < 0
        || conv_get(fn, "gx", ox, &b[2], 3, 0, 1) < 0)
        goto fail;
    int kind = conv_kind(fn, "g", &b[0].view, 0);
    if (kind < 0 || conv_kind(fn, "idx", &b[1].view, 'q') < 0 ||
        conv_kind(fn, "gx", &b[2].view, (char)kind) < 0)
        goto fail;
    const Py_ssize_t *sh = b[2].view.shape, *st = b[2].view.strides, isz = b[2].view.itemsize;
    Py_ssize_t N = sh[0], C = sh[1], plane = sh[2], n = conv_count(&b[0].view);
    if (N * C == 0 || n % (N * C) || conv_count(&b[1].view) != n ||
        (plane > 1 && st[2] != isz) || st[0] % isz || st[1] % isz) {
        PyErr_Format(PyExc_ValueError, "%s(): g (%zd items) and idx (%zd) do not make the %zd "
                     "planes of gx, or gx's planes are not contiguous", fn, n,
                     conv_count(&b[1].view), N * C);
        goto fail;
    }
    int bad;
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f')
        bad = maxpool_bwd_f32(b[0].view.buf, b[1].view.buf, b[2].view.buf, N, C, st[0] / isz,
                              st[1] / isz, n / (N * C), plane);
    else
        bad = maxpool_bwd_f64(b[0].view.buf, b[1].view.buf, b[2].view.buf, N, C, st[0] / isz,
                              st[1] / isz, n / (N * C), plane);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_Format(PyExc_ValueError, "%s(): an index lies outside its input plane of %zd",
                     fn, plane);
        goto fail;
    }
    conv_release(b, 3);
    Py_RETURN_NONE;
fail:
    conv_release(b, 3);
    return NULL;
}

/* ------------------------------------------------------------------ Adadelta */

/* numpy's Adadelta sequence (deepseek/optim/_simple.py), one element at a time; the
 * hyper-parameters are rounded to T first, as numpy does with Python scalars */
#define ADADELTA_BODY(T, SQRT)                                                              \
    {                                                                                       \
        T *p = (T *)pv, *sq = (T *)sqv, *acc = (T *)accv;                                   \
        const T *g = (const T *)gv;                                                         \
        const T lr = (T)lr_, rho = (T)rho_, om = (T)(1.0 - rho_), eps = (T)eps_,            \
                wd = (T)wd_;                                                                \
        for (Py_ssize_t i = 0; i < n; i++) {                                                \
            T gi = g[i];                                                                    \
            if (use_wd) gi = gi + wd * p[i];                                                \
            T s = sq[i] * rho;                                                              \
            s = s + (om * gi) * gi;                                                         \
            sq[i] = s;                                                                      \
            T delta = SQRT(acc[i] + eps) / SQRT(s + eps) * gi;                              \
            acc[i] = acc[i] * rho + (om * delta) * delta;                                   \
            p[i] = p[i] - lr * delta;                                                       \
        }                                                                                   \
    }

static void adadelta_f32(void *pv, const void *gv, void *sqv, void *accv, Py_ssize_t n,
                         double lr_, double rho_, double eps_, double wd_, int use_wd)
    ADADELTA_BODY(float, sqrtf)

static void adadelta_f64(void *pv, const void *gv, void *sqv, void *accv, Py_ssize_t n,
                         double lr_, double rho_, double eps_, double wd_, int use_wd)
    ADADELTA_BODY(double, sqrt)

/* adadelta(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay) */
static PyObject *py_adadelta(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"param", "grad", "square_avg", "acc_delta"};
    static const int writable[] = {1, 0, 1, 1};
    const char *fn = "adadelta";
    PyObject *objs[4];
    double lr, rho, eps, wd;
    conv_buf b[4];
    memset(b, 0, sizeof(b));
    if (!PyArg_ParseTuple(args, "OOOOdddd:adadelta", &objs[0], &objs[1], &objs[2], &objs[3],
                          &lr, &rho, &eps, &wd))
        return NULL;
    int kind = 0;
    for (int i = 0; i < 4; i++) {
        if (conv_get(fn, names[i], objs[i], &b[i], -1, 1, writable[i]) < 0) goto fail;
        int k = conv_kind(fn, names[i], &b[i].view, (char)kind);
        if (k < 0) goto fail;
        kind = k;
        if (b[i].view.len != b[0].view.len) {
            PyErr_Format(PyExc_ValueError, "%s(): %s has %zd bytes, param %zd", fn, names[i],
                         b[i].view.len, b[0].view.len);
            goto fail;
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++) {
            const char *a0 = b[i].view.buf, *b0 = b[j].view.buf;
            if (b[0].view.len && a0 < b0 + b[j].view.len && b0 < a0 + b[i].view.len) {
                PyErr_Format(PyExc_ValueError, "%s(): %s and %s overlap", fn, names[i], names[j]);
                goto fail;
            }
        }
    Py_ssize_t n = conv_count(&b[0].view);
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f')
        adadelta_f32(b[0].view.buf, b[1].view.buf, b[2].view.buf, b[3].view.buf, n, lr, rho, eps,
                     wd, wd != 0.0);
    else
        adadelta_f64(b[0].view.buf, b[1].view.buf, b[2].view.buf, b[3].view.buf, n, lr, rho, eps,
                     wd, wd != 0.0);
    Py_END_ALLOW_THREADS
    conv_release(b, 4);
    Py_RETURN_NONE;
fail:
    conv_release(b, 4);
    return NULL;
}

PyMethodDef dsn_conv_methods[] = {
    {"conv_im2col", py_conv_im2col, METH_VARARGS,
     "conv_im2col(x5d, cols, n0, k, s, p, d, out) (private: dsn_conv.c)"},
    {"conv_col2im", py_conv_col2im, METH_VARARGS,
     "conv_col2im(gcols, gx5d, k, s, p, d, out) (private: dsn_conv.c)"},
    {"maxpool_fwd", py_maxpool_fwd, METH_VARARGS,
     "maxpool_fwd(x5d, y, idx, k, s, p, d, out) (private: dsn_conv.c)"},
    {"maxpool_bwd", py_maxpool_bwd, METH_VARARGS,
     "maxpool_bwd(g, idx, gx3d) (private: dsn_conv.c)"},
    {"adadelta", py_adadelta, METH_VARARGS,
     "adadelta(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay) "
     "(private: dsn_conv.c)"},
    {NULL, NULL, 0, NULL},
};
