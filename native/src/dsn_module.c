/*
 * dsn_module.c - the deepseek._native extension: argument checking, GIL release
 * and run-time instruction-set dispatch around the kernels of dsn_body.h.
 *
 * This is the private layer; callers use deepseek.native (native/__init__.py),
 * which maps dtypes/ops to the integer codes of dsn_common.h and gives every
 * kernel a numpy fallback. The checks here are the safety net that keeps a
 * direct call from crashing or silently misreading memory: buffer format and
 * item size per argument, C-contiguity, writability, lengths and overlap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "dsn_common.h"
#include <math.h>

static const dsn_kernels *K = &dsn_kernels_scalar;

/* the table in use, for the passes of dsn_lowp.c */
const dsn_kernels *dsn_active_kernels(void) { return K; }

/* ------------------------------------------------------------ dispatch */

static int isa_supported(const dsn_kernels *k)
{
    if (k == &dsn_kernels_scalar) return 1;
#ifdef DSN_X86
    __builtin_cpu_init();
    if (k == &dsn_kernels_avx2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (k == &dsn_kernels_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return 0;
}

/* best first */
static const dsn_kernels *const ALL_ISAS[] = {
#ifdef DSN_X86
    &dsn_kernels_avx512, &dsn_kernels_avx2,
#endif
    &dsn_kernels_scalar,
};
#define N_ISAS (sizeof(ALL_ISAS) / sizeof(ALL_ISAS[0]))

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(K->name);
}

static PyObject *py_isa_list(PyObject *self, PyObject *noargs)
{
    PyObject *lst = PyList_New(0);
    if (!lst) return NULL;
    for (size_t i = 0; i < N_ISAS; i++) {
        if (!isa_supported(ALL_ISAS[i])) continue;
        PyObject *s = PyUnicode_FromString(ALL_ISAS[i]->name);
        if (!s || PyList_Append(lst, s) < 0) { Py_XDECREF(s); Py_DECREF(lst); return NULL; }
        Py_DECREF(s);
    }
    return lst;
}

static PyObject *py_set_isa(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_isa", &name)) return NULL;
    for (size_t i = 0; i < N_ISAS; i++) {
        if (strcmp(ALL_ISAS[i]->name, name) == 0) {
            if (!isa_supported(ALL_ISAS[i])) {
                PyErr_Format(PyExc_ValueError,
                             "set_isa(): instruction set '%s' is not supported by this CPU", name);
                return NULL;
            }
            K = ALL_ISAS[i];
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError,
                 "set_isa(): unknown instruction set '%s', expected 'avx512', 'avx2' or 'scalar'",
                 name);
    return NULL;
}

/* ------------------------------------------------------- buffer checks */

static const char *DTYPE_NAMES[] = {"float32", "float16", "bfloat16", "int32", "int64", "float64"};
static const size_t DTYPE_SIZES[] = {4, 2, 2, 4, 8, 8};

static int format_matches(int dtype, const char *fmt)
{
    if (!fmt) fmt = "B";
    if (*fmt == '@' || *fmt == '=') fmt++;
#if PY_LITTLE_ENDIAN
    else if (*fmt == '<') fmt++;
#else
    else if (*fmt == '>' || *fmt == '!') fmt++;
#endif
    if (fmt[0] == '\0' || fmt[1] != '\0') return 0;
    char c = fmt[0];
    switch (dtype) {
    case DSN_F32: return c == 'f';
    case DSN_F64: return c == 'd';
    case DSN_F16: return c == 'e' || c == 'H';      /* numpy float16 or raw bits */
    case DSN_BF16: return c == 'H';                 /* raw bits (uint16 view) */
    case DSN_I32: return c == 'i' || (sizeof(long) == 4 && c == 'l');
    case DSN_I64: return c == 'q' || (sizeof(long) == 8 && c == 'l');
    }
    return 0;
}

typedef struct {
    Py_buffer view;
    int held;
    size_t n;          /* elements */
} dsn_arg;

/* Acquire obj as a C-contiguous buffer of `dtype`; name is used in messages. */
static int get_arg(const char *fn, const char *name, PyObject *obj, int dtype, int writable,
                   dsn_arg *a)
{
    a->held = 0;
    if (PyObject_GetBuffer(obj, &a->view, PyBUF_RECORDS_RO) < 0) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_Format(PyExc_TypeError,
                     "%s(): argument '%s' must be a contiguous %s array, got %.200s "
                     "(no usable buffer: %S)", fn, name, DTYPE_NAMES[dtype],
                     Py_TYPE(obj)->tp_name, v ? v : Py_None);
        Py_XDECREF(t); Py_XDECREF(v); Py_XDECREF(tb);
        return -1;
    }
    a->held = 1;
    if (!format_matches(dtype, a->view.format) || (size_t)a->view.itemsize != DTYPE_SIZES[dtype]) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): argument '%s' must have dtype %s, got buffer format '%s' "
                     "(item size %zd)", fn, name, DTYPE_NAMES[dtype],
                     a->view.format ? a->view.format : "B", a->view.itemsize);
        return -1;
    }
    if (!PyBuffer_IsContiguous(&a->view, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must be C-contiguous, got a "
                     "strided view", fn, name);
        return -1;
    }
    if (writable && a->view.readonly) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must be writeable, got a "
                     "read-only array", fn, name);
        return -1;
    }
    a->n = (size_t)(a->view.len / a->view.itemsize);
    return 0;
}

static void release_arg(dsn_arg *a)
{
    if (a->held) PyBuffer_Release(&a->view);
    a->held = 0;
}

/* The end of a kernel's wrapper: its argument buffers released (c may be NULL); None when
 * it ran (ok), NULL with the Python error already set when it did not. */
static PyObject *release_all(int ok, dsn_arg *a, dsn_arg *b, dsn_arg *c)
{
    release_arg(a);
    release_arg(b);
    if (c) release_arg(c);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static int check_len(const char *fn, const char *name, const dsn_arg *a, size_t n,
                     const char *ref)
{
    if (a->n != n) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' has %zu elements, expected %zu "
                     "(the length of '%s')", fn, name, a->n, n, ref);
        return -1;
    }
    return 0;
}

/* Two arguments may be the very same memory only if allow_same; never partly. */
static int check_overlap(const char *fn, const char *na, const dsn_arg *a, const char *nb,
                         const dsn_arg *b, int allow_same)
{
    const char *pa = (const char *)a->view.buf, *pb = (const char *)b->view.buf;
    Py_ssize_t la = a->view.len, lb = b->view.len;
    if (la == 0 || lb == 0 || pa + la <= pb || pb + lb <= pa) return 0;
    if (allow_same && pa == pb && la == lb) return 0;
    PyErr_Format(PyExc_ValueError, "%s(): arguments '%s' and '%s' overlap in memory%s", fn,
                 na, nb, allow_same ? " (only the very same array is allowed)" : "");
    return -1;
}

static int check_half_dtype(const char *fn, int half_dtype)
{
    if (half_dtype != DSN_F16 && half_dtype != DSN_BF16) {
        PyErr_Format(PyExc_ValueError, "%s(): half_dtype must be %d (float16) or %d (bfloat16), "
                     "got %d", fn, DSN_F16, DSN_BF16, half_dtype);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------- kernels */

static PyObject *py_convert(PyObject *self, PyObject *args)
{
    static const int SRC[] = {DSN_F32, DSN_F16, DSN_F32, DSN_BF16};
    static const int DST[] = {DSN_F16, DSN_F32, DSN_BF16, DSN_F32};
    const char *fn = "convert";
    int kind;
    PyObject *osrc, *odst;
    dsn_arg src = {0}, dst = {0};
    if (!PyArg_ParseTuple(args, "iOO:convert", &kind, &osrc, &odst)) return NULL;
    if (kind < 0 || kind > 3) {
        PyErr_Format(PyExc_ValueError, "convert(): kind must be 0..3, got %d", kind);
        return NULL;
    }
    if (get_arg(fn, "src", osrc, SRC[kind], 0, &src) < 0 ||
        get_arg(fn, "out", odst, DST[kind], 1, &dst) < 0 ||
        check_len(fn, "out", &dst, src.n, "src") < 0 ||
        check_overlap(fn, "src", &src, "out", &dst, 0) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    K->convert(kind, src.view.buf, dst.view.buf, src.n);
    Py_END_ALLOW_THREADS
    return release_all(1, &src, &dst, NULL);
fail:
    return release_all(0, &src, &dst, NULL);
}

/* erf(dtype, src, out): the error function elementwise, the kernels' erf_f32 (dsn_body.h)
 * for float32 and libm's erf for float64 (GELU's normal CDF; numpy has no erf and its polynomial substitutes
 * take ~20 array passes). */
static PyObject *py_erf(PyObject *self, PyObject *args)
{
    const char *fn = "erf";
    int dtype;
    PyObject *osrc, *oout;
    dsn_arg src = {0}, out = {0};
    if (!PyArg_ParseTuple(args, "iOO:erf", &dtype, &osrc, &oout)) return NULL;
    if (dtype != DSN_F32 && dtype != DSN_F64) {
        PyErr_Format(PyExc_ValueError, "erf(): dtype must be %d (float32) or %d (float64), "
                     "got %d", DSN_F32, DSN_F64, dtype);
        return NULL;
    }
    if (get_arg(fn, "src", osrc, dtype, 0, &src) < 0 ||
        get_arg(fn, "out", oout, dtype, 1, &out) < 0 ||
        check_len(fn, "out", &out, src.n, "src") < 0 ||
        check_overlap(fn, "src", &src, "out", &out, 1) < 0)
        goto fail;
    size_t n = src.n;
    Py_BEGIN_ALLOW_THREADS
    if (dtype == DSN_F32) {
        K->erf_f32((const float *)src.view.buf, (float *)out.view.buf, n);
    } else {
        const double *x = (const double *)src.view.buf;
        double *y = (double *)out.view.buf;
        for (size_t i = 0; i < n; i++) y[i] = erf(x[i]);
    }
    Py_END_ALLOW_THREADS
    return release_all(1, &src, &out, NULL);
fail:
    return release_all(0, &src, &out, NULL);
}

/* gelu(src, out, cdf_or_None): float32 GELU (exact form, erf_f32's accuracy;
 * the kernels' gelu, dsn_body.h) */
static PyObject *py_gelu(PyObject *self, PyObject *args)
{
    const char *fn = "gelu";
    PyObject *osrc, *oout, *ocdf;
    dsn_arg src = {0}, out = {0}, cdf = {0};
    if (!PyArg_ParseTuple(args, "OOO:gelu", &osrc, &oout, &ocdf)) return NULL;
    int with_cdf = ocdf != Py_None;
    if (get_arg(fn, "src", osrc, DSN_F32, 0, &src) < 0 ||
        get_arg(fn, "out", oout, DSN_F32, 1, &out) < 0 ||
        check_len(fn, "out", &out, src.n, "src") < 0 ||
        check_overlap(fn, "src", &src, "out", &out, 1) < 0)
        goto fail;
    if (with_cdf && (get_arg(fn, "cdf", ocdf, DSN_F32, 1, &cdf) < 0 ||
                     check_len(fn, "cdf", &cdf, src.n, "src") < 0 ||
                     check_overlap(fn, "src", &src, "cdf", &cdf, 0) < 0 ||
                     check_overlap(fn, "out", &out, "cdf", &cdf, 0) < 0))
        goto fail;
    size_t n = src.n;
    Py_BEGIN_ALLOW_THREADS
    K->gelu((const float *)src.view.buf, (float *)out.view.buf,
                  with_cdf ? (float *)cdf.view.buf : NULL, n);
    Py_END_ALLOW_THREADS
    return release_all(1, &src, &out, &cdf);
fail:
    return release_all(0, &src, &out, &cdf);
}

static PyObject *py_reduce(PyObject *self, PyObject *args)
{
    const char *fn = "reduce";
    int op, dtype;
    PyObject *oin, *oout, *seq = NULL;
    dsn_arg out = {0}, *ins = NULL;
    const void **ptrs = NULL;
    Py_ssize_t nin = 0, got = 0;
    char name[32];
    if (!PyArg_ParseTuple(args, "iiOO:reduce", &op, &dtype, &oin, &oout)) return NULL;
    if (op < DSN_SUM || op > DSN_PROD) {
        PyErr_Format(PyExc_ValueError, "reduce(): op code must be 0..4, got %d", op);
        return NULL;
    }
    if (dtype < DSN_F32 || dtype > DSN_F64) {
        PyErr_Format(PyExc_ValueError, "reduce(): dtype code must be 0..5, got %d", dtype);
        return NULL;
    }
    if (op == DSN_AVG && (dtype == DSN_I32 || dtype == DSN_I64)) {
        PyErr_Format(PyExc_TypeError, "reduce(): op 'avg' needs a floating dtype, got %s",
                     DTYPE_NAMES[dtype]);
        return NULL;
    }
    seq = PySequence_Fast(oin, "reduce(): argument 'inputs' must be a list of arrays");
    if (!seq) return NULL;
    nin = PySequence_Fast_GET_SIZE(seq);
    if (nin < 1) {
        PyErr_SetString(PyExc_ValueError, "reduce(): argument 'inputs' must hold at least one "
                        "array, got an empty sequence");
        goto done;
    }
    ins = PyMem_Calloc((size_t)nin, sizeof(dsn_arg));
    ptrs = PyMem_Calloc((size_t)nin, sizeof(void *));
    if (!ins || !ptrs) { PyErr_NoMemory(); goto done; }
    if (get_arg(fn, "out", oout, dtype, 1, &out) < 0) goto done;
    for (got = 0; got < nin; got++) {
        snprintf(name, sizeof(name), "inputs[%zd]", got);
        if (get_arg(fn, name, PySequence_Fast_GET_ITEM(seq, got), dtype, 0, &ins[got]) < 0) {
            got++;
            goto done;
        }
        if (check_len(fn, name, &ins[got], out.n, "out") < 0 ||
            check_overlap(fn, "out", &out, name, &ins[got], 1) < 0) {
            got++;
            goto done;
        }
        ptrs[got] = ins[got].view.buf;
    }
    Py_BEGIN_ALLOW_THREADS
    K->reduce(op, dtype, ptrs, (size_t)nin, out.view.buf, out.n);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < got; i++) release_arg(&ins[i]);
    release_arg(&out);
    PyMem_Free(ins); PyMem_Free(ptrs);
    Py_DECREF(seq);
    Py_RETURN_NONE;
done:
    for (Py_ssize_t i = 0; i < got; i++) release_arg(&ins[i]);
    release_arg(&out);
    PyMem_Free(ins); PyMem_Free(ptrs);
    Py_XDECREF(seq);
    return NULL;
}

static PyObject *py_unscale(PyObject *self, PyObject *args)
{
    int dtype, found;
    double inv_scale;
    PyObject *og;
    dsn_arg g = {0};
    if (!PyArg_ParseTuple(args, "iOd:unscale", &dtype, &og, &inv_scale)) return NULL;
    if (dtype != DSN_F32 && dtype != DSN_F16 && dtype != DSN_BF16) {
        PyErr_Format(PyExc_ValueError, "unscale(): dtype code must be 0, 1 or 2, got %d", dtype);
        return NULL;
    }
    if (get_arg("unscale", "grad", og, dtype, 1, &g) < 0) { release_arg(&g); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    found = K->unscale(dtype, g.view.buf, g.n, (float)inv_scale);
    Py_END_ALLOW_THREADS
    release_arg(&g);
    return PyBool_FromLong(found);
}

/* param, grad and the optimizer state: all fp32, same length, pairwise disjoint. */
#define MAX_OPT_ARGS 6
static int get_opt_args(const char *fn, const char *const *names, PyObject **objs,
                        const int *writable, int nargs, dsn_arg *a, int half_dtype)
{
    for (int i = 0; i < nargs; i++) {
        if (objs[i] == Py_None) continue;
        int dt = (i == nargs - 1) ? half_dtype : DSN_F32;   /* last: the low-precision copy */
        if (get_arg(fn, names[i], objs[i], dt, writable[i], &a[i]) < 0) return -1;
        if (i > 0 && check_len(fn, names[i], &a[i], a[0].n, names[0]) < 0) return -1;
        for (int j = 0; j < i; j++)
            if (a[j].held && check_overlap(fn, names[j], &a[j], names[i], &a[i], 0) < 0)
                return -1;
    }
    return 0;
}

static PyObject *py_sgd(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"param", "grad", "momentum_buffer", "param_half"};
    static const int writable[] = {1, 0, 1, 1};
    const char *fn = "sgd_step";
    PyObject *objs[4];
    dsn_arg a[4];
    int half_dtype;
    dsn_sgd_args s;
    memset(a, 0, sizeof(a));
    if (!PyArg_ParseTuple(args, "OOOOiddddppp:sgd", &objs[0], &objs[1], &objs[2], &objs[3],
                          &half_dtype, &s.lr, &s.momentum, &s.dampening, &s.weight_decay,
                          &s.nesterov, &s.maximize, &s.first_step))
        return NULL;
    if (objs[0] == Py_None || objs[1] == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s(): 'param' and 'grad' must be arrays, got None", fn);
        return NULL;
    }
    if (s.momentum != 0.0 && objs[2] == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s(): momentum=%g needs a 'momentum_buffer' array, "
                     "got None", fn, s.momentum);
        return NULL;
    }
    if (objs[3] != Py_None && check_half_dtype(fn, half_dtype) < 0) return NULL;
    if (get_opt_args(fn, names, objs, writable, 4, a, half_dtype) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
    K->sgd(&s, (float *)a[0].view.buf, (const float *)a[1].view.buf,
           s.momentum != 0.0 ? (float *)a[2].view.buf : NULL,
           a[3].held ? a[3].view.buf : NULL, half_dtype, a[0].n);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < 4; i++) release_arg(&a[i]);
    Py_RETURN_NONE;
fail:
    for (int i = 0; i < 4; i++) release_arg(&a[i]);
    return NULL;
}

static PyObject *py_adam(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"param", "grad", "exp_avg", "exp_avg_sq",
                                        "max_exp_avg_sq", "param_half"};
    static const int writable[] = {1, 0, 1, 1, 1, 1};
    const char *fn = "adam_step";
    PyObject *objs[6];
    dsn_arg a[6];
    int half_dtype;
    dsn_adam_args s;
    memset(a, 0, sizeof(a));
    if (!PyArg_ParseTuple(args, "OOOOOOiddddddppp:adam", &objs[0], &objs[1], &objs[2],
                          &objs[3], &objs[4], &objs[5], &half_dtype, &s.lr, &s.beta1, &s.beta2,
                          &s.eps, &s.weight_decay, &s.step, &s.amsgrad, &s.decoupled,
                          &s.maximize))
        return NULL;
    for (int i = 0; i < 4; i++) {
        if (objs[i] == Py_None) {
            PyErr_Format(PyExc_TypeError, "%s(): '%s' must be an array, got None", fn, names[i]);
            return NULL;
        }
    }
    if (s.amsgrad && objs[4] == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s(): amsgrad=True needs a 'max_exp_avg_sq' array, "
                     "got None", fn);
        return NULL;
    }
    if (!(s.step >= 1.0)) {
        PyErr_Format(PyExc_ValueError, "%s(): step must be >= 1 (bias correction), got %g",
                     fn, s.step);
        return NULL;
    }
    if (objs[5] != Py_None && check_half_dtype(fn, half_dtype) < 0) return NULL;
    if (get_opt_args(fn, names, objs, writable, 6, a, half_dtype) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
    K->adam(&s, (float *)a[0].view.buf, (const float *)a[1].view.buf, (float *)a[2].view.buf,
            (float *)a[3].view.buf, s.amsgrad ? (float *)a[4].view.buf : NULL,
            a[5].held ? a[5].view.buf : NULL, half_dtype, a[0].n);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < 6; i++) release_arg(&a[i]);
    Py_RETURN_NONE;
fail:
    for (int i = 0; i < 6; i++) release_arg(&a[i]);
    return NULL;
}

/* ------------------------------------------------------ layer norm rows */

/* The end of a row kernel's wrapper: the n argument buffers released (and the scratch
 * tmp, which may be NULL); None when it ran (ok), NULL with the Python error already
 * set when it did not. */
static PyObject *release_rows(int ok, dsn_arg *a, int n, float *tmp)
{
    PyMem_RawFree(tmp);
    for (int i = 0; i < n; i++) release_arg(&a[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* Acquire the float32 arrays objs[0..nargs) (None allowed where may_be_none[i]) of
 * want[i] elements each; an array that is written may not overlap any other. */
static int get_row_args(const char *fn, const char *const *names, PyObject **objs,
                        const int *writable, const int *may_be_none, const size_t *want,
                        int nargs, dsn_arg *a)
{
    for (int i = 0; i < nargs; i++) {
        if (objs[i] == Py_None) {
            if (may_be_none[i]) continue;
            PyErr_Format(PyExc_TypeError, "%s(): '%s' must be an array, got None", fn, names[i]);
            return -1;
        }
        if (get_arg(fn, names[i], objs[i], DSN_F32, writable[i], &a[i]) < 0) return -1;
        if (a[i].n != want[i]) {
            PyErr_Format(PyExc_ValueError, "%s(): argument '%s' has %zu elements, expected %zu",
                         fn, names[i], a[i].n, want[i]);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (a[j].held && (writable[i] || writable[j]) &&
                check_overlap(fn, names[j], &a[j], names[i], &a[i], 0) < 0)
                return -1;
    }
    return 0;
}

/* get_row_args, then a scratch of tmp_n floats into *tmp (NULL on failure) */
static int get_row_args_tmp(const char *fn, const char *const *names, PyObject **objs,
                            const int *writable, const int *may_be_none, const size_t *want,
                            int nargs, dsn_arg *a, size_t tmp_n, float **tmp)
{
    *tmp = NULL;
    if (get_row_args(fn, names, objs, writable, may_be_none, want, nargs, a) < 0) return -1;
    if (!(*tmp = (float *)PyMem_RawMalloc(tmp_n * sizeof(float)))) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* rows and n of a layer norm over `total` elements in rows of n (n >= 1) */
static int row_shape(const char *fn, PyObject *ox, Py_ssize_t n, size_t *rows)
{
    Py_buffer v;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "%s(): the row length must be >= 1, got %zd", fn, n);
        return -1;
    }
    if (PyObject_GetBuffer(ox, &v, PyBUF_RECORDS_RO) < 0) return -1;
    size_t total = v.itemsize ? (size_t)(v.len / v.itemsize) : 0;
    PyBuffer_Release(&v);
    if (total % (size_t)n) {
        PyErr_Format(PyExc_ValueError, "%s(): %zu elements are not rows of %zd", fn, total, n);
        return -1;
    }
    *rows = total / (size_t)n;
    return 0;
}

/* layer_norm(x, w_or_None, b_or_None, y, xhat, rstd, n, eps): float32 rows of n */
static PyObject *py_layer_norm(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"x", "weight", "bias", "y", "xhat", "rstd"};
    static const int writable[] = {0, 0, 0, 1, 1, 1}, none_ok[] = {0, 1, 1, 0, 0, 0};
    const char *fn = "layer_norm";
    PyObject *objs[6];
    dsn_arg a[6];
    Py_ssize_t n;
    double eps;
    size_t rows;
    memset(a, 0, sizeof(a));
    if (!PyArg_ParseTuple(args, "OOOOOOnd:layer_norm", &objs[0], &objs[1], &objs[2], &objs[3],
                          &objs[4], &objs[5], &n, &eps))
        return NULL;
    if (row_shape(fn, objs[0], n, &rows) < 0) return NULL;
    const size_t un = (size_t)n, want[] = {rows * un, un, un, rows * un, rows * un, rows};
    float *tmp;
    if (get_row_args_tmp(fn, names, objs, writable, none_ok, want, 6, a, un, &tmp) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    K->layer_norm((const float *)a[0].view.buf, a[1].held ? (const float *)a[1].view.buf : NULL,
                  a[2].held ? (const float *)a[2].view.buf : NULL, (float *)a[3].view.buf,
                  (float *)a[4].view.buf, (float *)a[5].view.buf, rows, un, (float)eps, tmp);
    Py_END_ALLOW_THREADS
    return release_rows(1, a, 6, tmp);
fail:
    return release_rows(0, a, 6, tmp);
}

/* layer_norm_backward(g, xhat, rstd, w_or_None, gx, gw, gb (each or None), n) */
static PyObject *py_layer_norm_backward(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"grad", "xhat", "rstd", "weight", "grad_input",
                                        "grad_weight", "grad_bias"};
    static const int writable[] = {0, 0, 0, 0, 1, 1, 1}, none_ok[] = {0, 0, 0, 1, 1, 1, 1};
    const char *fn = "layer_norm_backward";
    PyObject *objs[7];
    dsn_arg a[7];
    Py_ssize_t n;
    size_t rows;
    memset(a, 0, sizeof(a));
    if (!PyArg_ParseTuple(args, "OOOOOOOn:layer_norm_backward", &objs[0], &objs[1], &objs[2],
                          &objs[3], &objs[4], &objs[5], &objs[6], &n))
        return NULL;
    if (row_shape(fn, objs[0], n, &rows) < 0) return NULL;
    const size_t un = (size_t)n, want[] = {rows * un, rows * un, rows, un, rows * un, un, un};
    float *tmp;
    if (get_row_args_tmp(fn, names, objs, writable, none_ok, want, 7, a, 2 * un, &tmp) < 0)
        goto fail;
    float *out[3];
    for (int i = 0; i < 3; i++) out[i] = a[4 + i].held ? (float *)a[4 + i].view.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    K->layer_norm_bwd((const float *)a[0].view.buf, (const float *)a[1].view.buf,
                      (const float *)a[2].view.buf,
                      a[3].held ? (const float *)a[3].view.buf : NULL, out[0], out[1], out[2],
                      rows, un, tmp);
    Py_END_ALLOW_THREADS
    return release_rows(1, a, 7, tmp);
fail:
    return release_rows(0, a, 7, tmp);
}

/* softmax_rows(kind, a, b, c, n): kind 0: b = a - rowmax(a) (c None; b may be a);
 * 1: a /= rowsum(a) in place (b, c None); 3: the same, rows summing to 0 left alone;
 * 2: c = a*b - b*rowsum(a*b), a the gradient, b the output, c may be a itself.
 * float32 rows of n. */
static PyObject *py_softmax_rows(PyObject *self, PyObject *args)
{
    static const char *const names[4][3] = {{"x", "z", "-"}, {"e", "-", "-"},
                                            {"grad", "y", "grad_input"}, {"e", "-", "-"}};
    static const int writable[4][3] = {{0, 1, 0}, {1, 0, 0}, {0, 0, 1}, {1, 0, 0}};
    static const int none_ok[3] = {0, 0, 0};
    static const int nargs[4] = {2, 1, 3, 1};
    const char *fn = "softmax_rows";
    PyObject *objs[3];
    dsn_arg a[3];
    int kind;
    Py_ssize_t n;
    size_t rows;
    memset(a, 0, sizeof(a));
    if (!PyArg_ParseTuple(args, "iOOOn:softmax_rows", &kind, &objs[0], &objs[1], &objs[2], &n))
        return NULL;
    if (kind < 0 || kind > 3) {
        PyErr_Format(PyExc_ValueError, "%s(): kind must be 0 (shift), 1 or 3 (normalise) or "
                     "2 (backward), got %d", fn, kind);
        return NULL;
    }
    if (row_shape(fn, objs[0], n, &rows) < 0) return NULL;
    const size_t total = rows * (size_t)n, want[] = {total, total, total};
    int k = nargs[kind];
    if ((kind == 2 && objs[2] == objs[0]) || (kind == 0 && objs[1] == objs[0]))
        k = kind == 2 ? 2 : 1;                        /* in place */
    if (get_row_args(fn, names[kind], objs, writable[kind], none_ok, want, k, a) < 0)
        goto fail;
    float *p0 = (float *)a[0].view.buf, *p1 = a[1].held ? (float *)a[1].view.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == 0) K->softmax_shift(p0, p1 ? p1 : p0, rows, (size_t)n);
    else if (kind == 1 || kind == 3) K->softmax_norm(p0, rows, (size_t)n, kind == 3);
    else K->softmax_bwd(p0, p1, k == 3 ? (float *)a[2].view.buf : p0, rows, (size_t)n);
    Py_END_ALLOW_THREADS
    return release_rows(1, a, 3, NULL);
fail:
    return release_rows(0, a, 3, NULL);
}

/* gelu_backward_tail(g, a, cdf, t, out, c): out = g * (cdf + (a * c) * t), float32
 * arrays of one length; out may be t itself */
static PyObject *py_gelu_backward_tail(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"grad", "x", "cdf", "t", "out"};
    static const int writable[] = {0, 0, 0, 1, 1}, none_ok[] = {0, 0, 0, 0, 0};
    const char *fn = "gelu_backward_tail";
    PyObject *objs[5];
    dsn_arg a[5];
    double c;
    Py_buffer v;
    memset(a, 0, sizeof(a));
    if (!PyArg_ParseTuple(args, "OOOOOd:gelu_backward_tail", &objs[0], &objs[1], &objs[2],
                          &objs[3], &objs[4], &c))
        return NULL;
    if (PyObject_GetBuffer(objs[0], &v, PyBUF_RECORDS_RO) < 0) return NULL;
    const size_t n = v.itemsize ? (size_t)(v.len / v.itemsize) : 0;
    PyBuffer_Release(&v);
    const size_t want[] = {n, n, n, n, n};
    const int in_place = objs[4] == objs[3];          /* out over t: allowed */
    if (get_row_args(fn, names, objs, writable, none_ok, want, in_place ? 4 : 5, a) < 0)
        goto fail;
    float *t = (float *)a[3].view.buf;
    Py_BEGIN_ALLOW_THREADS
    K->gelu_bwd_tail((const float *)a[0].view.buf, (const float *)a[1].view.buf,
                     (const float *)a[2].view.buf, t, in_place ? t : (float *)a[4].view.buf,
                     (float)c, n);
    Py_END_ALLOW_THREADS
    return release_rows(1, a, 5, NULL);
fail:
    return release_rows(0, a, 5, NULL);
}

/* ------------------------------------------------- shared-memory allreduce */

#include "dsn_shm.h"

/* What both shm entries take: this rank's private words, the segment base, x's
 * buffer, the kernel's dtype/op and the wait budget. */
typedef struct {
    int32_t *pv;
    char *base;
    Py_buffer view;
    int dtype, op;
    size_t isz, count;
    long long budget;
} dsn_shm_call;

/* code = dtype * 8 + op: 1 when the kernels take it (dtype and op filled in), else 0. */
static int dsn_shm_code(long code, int *dtype, int *op)
{
    *dtype = (int)(code >> 3);
    *op = (int)(code & 7);
    return code >= 0 && *dtype <= DSN_F64 && *op <= DSN_PROD &&
           !(*op == DSN_AVG && (*dtype == DSN_I32 || *dtype == DSN_I64));
}

/* The private words at addr: 1 when they describe a rank of a group (pv and the
 * segment base filled in), else 0. */
static int dsn_shm_state(void *addr, int32_t **pv, char **base)
{
    int32_t *p = (int32_t *)addr;
    int n = p[DSN_P_N], me = p[DSN_P_RANK];
    if (n < 1 || n > DSN_SHM_MAX_RANKS || me < 0 || me >= n) return 0;
    *pv = p;
    *base = (char *)addr - (size_t)me * DSN_SHM_CTRL;
    return 1;
}

/* Parse (state_addr, x, code, budget_ns, ...). Returns 0 with c->view held, -1 with an
 * exception set (wrong argument types, null address), or 1 when x or code are not
 * eligible (nothing held, no exception): the caller returns DSN_SHM_NOT_ELIGIBLE. */
static int dsn_shm_parse(PyObject *const *args, const char *name, dsn_shm_call *c)
{
    void *addr = PyLong_AsVoidPtr(args[0]);
    long code = PyLong_AsLong(args[2]);
    c->budget = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) return -1;
    if (!addr) {
        PyErr_Format(PyExc_ValueError, "%s(): null state address", name);
        return -1;
    }
    if (!dsn_shm_code(code, &c->dtype, &c->op) || !dsn_shm_state(addr, &c->pv, &c->base))
        return 1;
    if (PyObject_GetBuffer(args[1], &c->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 1;
    }
    c->isz = DTYPE_SIZES[c->dtype];
    if ((size_t)c->view.itemsize != c->isz || c->view.len % (Py_ssize_t)c->isz) {
        PyBuffer_Release(&c->view);
        return 1;
    }
    c->count = (size_t)c->view.len / c->isz;
    return 0;
}

/*
 * shm_allreduce(state_addr, x, code, budget_ns) -> status
 *
 * Private entry of collectives/backends/shm.py: state_addr is the address of this
 * rank's ctrl block in the group's segment (its private words from word 32), code is
 * dtype * 8 + op, budget_ns bounds the time spent waiting for peers in this call.
 * Returns 0 done, 1 pending (call again with the same x to resume), 2 a peer aborted,
 * 5 the ranks called different collectives (signatures differ; see dsn_shm.h), -1 not
 * eligible (x not a writable C-contiguous buffer of that item size, bad code; nothing
 * was touched). METH_FASTCALL and no Python objects built: this is the small-message
 * latency path.
 */
static PyObject *py_shm_allreduce(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "shm_allreduce(state_addr, x, code, budget_ns)");
        return NULL;
    }
    dsn_shm_call c;
    int r = dsn_shm_parse(args, "shm_allreduce", &c);
    if (r) return r < 0 ? NULL : PyLong_FromLong(DSN_SHM_NOT_ELIGIBLE);
    if (c.pv[DSN_P_SLOT] <= 0 || (size_t)(uint32_t)c.pv[DSN_P_SLOT] < c.isz) {
        PyBuffer_Release(&c.view);
        return PyLong_FromLong(DSN_SHM_NOT_ELIGIBLE);
    }
    int st;
    int32_t sig[DSN_SIG_WORDS];
    dsn_shm_sig(sig, DSN_SIG_ALLREDUCE, c.op, 0, c.dtype + 1, (uint64_t)c.view.len);
    dsn_shm_op_begin(c.pv, sig);
    Py_BEGIN_ALLOW_THREADS
    st = dsn_shm_allreduce_run(K, c.base, c.pv, (char *)c.view.buf, c.count, c.dtype, c.op,
                               c.isz, sig, dsn_now_ns() + c.budget);
    Py_END_ALLOW_THREADS
    dsn_shm_op_end(c.pv, st);
    PyBuffer_Release(&c.view);
    return PyLong_FromLong(st);
}

/*
 * shm_allreduce_sym(state_addr, x, code, budget_ns, table_addr) -> status
 *
 * Like shm_allreduce, for an x in a symmetric buffer: table_addr is the address of
 * n + 2 int64 words: the addresses (in this process) of every rank's x (word `rank`
 * must be x's own address), then the allocation id and x's byte offset in its region,
 * which the ranks compare. Same statuses, plus 3: the ranks passed different pieces
 * (nothing was reduced); -1 also when x is not where the table says.
 */
static PyObject *py_shm_allreduce_sym(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "shm_allreduce_sym(state_addr, x, code, budget_ns, table_addr)");
        return NULL;
    }
    char *const *bufs = (char *const *)PyLong_AsVoidPtr(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (!bufs) {
        PyErr_SetString(PyExc_ValueError, "shm_allreduce_sym(): null table");
        return NULL;
    }
    dsn_shm_call c;
    int r = dsn_shm_parse(args, "shm_allreduce_sym", &c);
    if (r) return r < 0 ? NULL : PyLong_FromLong(DSN_SHM_NOT_ELIGIBLE);
    int n = c.pv[DSN_P_N];
    if (bufs[c.pv[DSN_P_RANK]] != c.view.buf) {
        PyBuffer_Release(&c.view);
        return PyLong_FromLong(DSN_SHM_NOT_ELIGIBLE);
    }
    const int64_t *extra = (const int64_t *)(bufs + n);
    uint64_t off = (uint64_t)extra[1];
    int32_t sig[DSN_W_SYM_LEN] = {(int32_t)extra[0], (int32_t)(uint32_t)off,
                                  (int32_t)(uint32_t)(off >> 32), (int32_t)(uint32_t)c.count,
                                  (int32_t)(c.dtype * 8 + c.op)};
    int st;
    int32_t opsig[DSN_SIG_WORDS];
    dsn_shm_sig(opsig, DSN_SIG_ALLREDUCE_SYM, c.op, 0, c.dtype + 1, (uint64_t)c.view.len);
    dsn_shm_op_begin(c.pv, opsig);
    Py_BEGIN_ALLOW_THREADS
    st = dsn_shm_sym_allreduce_run(K, c.base, c.pv, bufs, sig, c.count, c.dtype, c.op,
                                   c.isz, opsig, dsn_now_ns() + c.budget);
    Py_END_ALLOW_THREADS
    dsn_shm_op_end(c.pv, st);
    PyBuffer_Release(&c.view);
    return PyLong_FromLong(st);
}

/*
 * shm_collective(state_addr, kind, x, out, code, root, budget_ns) -> status
 *
 * The slot protocol's allgather (kind 1), gather (2), reduce_scatter (3) and
 * broadcast (4) in C (see dsn_shm_coll_run), the single-copy allgather (5, see
 * dsn_shm_allgather_cma_run; status 4: a read failed, errno in the private words) and
 * the barrier (6: x, out, code and root are ignored; pass any buffer and None).
 * code < 0: a plain copy, counted in bytes (kinds 1, 2, 4, 5), and -1 - code is the
 * dtype id the ranks compare (collectives/backends/shm.py picks it); else dtype * 8 + op
 * as for shm_allreduce (kind 3 needs one). x is
 * the input (broadcast: in and out, writable); out the output (None for broadcast and
 * on a gather's non-root ranks). Sizes: allgather / gather out = n * x; reduce_scatter
 * x = n * out. Same statuses as shm_allreduce; -1 (nothing touched) for any argument
 * the kernel does not take.
 */
static PyObject *py_shm_collective(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "shm_collective(state_addr, kind, x, out, code, root, budget_ns)");
        return NULL;
    }
    void *addr = PyLong_AsVoidPtr(args[0]);
    long kind = PyLong_AsLong(args[1]);
    long code = PyLong_AsLong(args[4]);
    long root = PyLong_AsLong(args[5]);
    long long budget = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (!addr) {
        PyErr_SetString(PyExc_ValueError, "shm_collective(): null state address");
        return NULL;
    }
#define DSN_NOT_ELIGIBLE() PyLong_FromLong(DSN_SHM_NOT_ELIGIBLE)
    int32_t *pv;
    char *base;
    if (!dsn_shm_state(addr, &pv, &base) || pv[DSN_P_SLOT] <= 0 ||
        kind < DSN_COLL_ALLGATHER || kind > DSN_COLL_BARRIER)
        return DSN_NOT_ELIGIBLE();
#ifndef DSN_HAVE_CMA
    /* refuse before the op is counted (dsn_shm_op_begin): Python then runs it */
    if (kind == DSN_COLL_ALLGATHER_CMA) return DSN_NOT_ELIGIBLE();
#endif
    if (kind == DSN_COLL_BARRIER) {
        int32_t sig[DSN_SIG_WORDS];
        int st;
        dsn_shm_sig(sig, DSN_SIG_BARRIER, 0, 0, 0, 0);
        dsn_shm_op_begin(pv, sig);
        Py_BEGIN_ALLOW_THREADS
        st = dsn_shm_barrier_run(base, pv, sig, dsn_now_ns() + budget);
        Py_END_ALLOW_THREADS
        return PyLong_FromLong(dsn_shm_op_end(pv, st));
    }
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK];
    int dtype = 0, op = 0;
    size_t isz = 1;
    if (code >= 0) {
        if (!dsn_shm_code(code, &dtype, &op)) return DSN_NOT_ELIGIBLE();
        isz = DTYPE_SIZES[dtype];
    } else if (kind == DSN_COLL_REDUCE_SCATTER) {
        return DSN_NOT_ELIGIBLE();
    }
    if ((kind == DSN_COLL_GATHER || kind == DSN_COLL_BROADCAST) && (root < 0 || root >= n))
        return DSN_NOT_ELIGIBLE();
    int need_out = kind == DSN_COLL_ALLGATHER || kind == DSN_COLL_REDUCE_SCATTER ||
                   kind == DSN_COLL_ALLGATHER_CMA || (kind == DSN_COLL_GATHER && me == root);
    Py_buffer xv, ov;
    int flags = PyBUF_C_CONTIGUOUS | (kind == DSN_COLL_BROADCAST ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(args[2], &xv, flags) < 0) {
        PyErr_Clear();
        return DSN_NOT_ELIGIBLE();
    }
    if (need_out && PyObject_GetBuffer(args[3], &ov, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&xv);
        return DSN_NOT_ELIGIBLE();
    }
#undef DSN_NOT_ELIGIBLE
    size_t m = 0;
    int ok = code < 0 || ((size_t)xv.itemsize == isz && (!need_out || (size_t)ov.itemsize == isz));
    if (kind == DSN_COLL_REDUCE_SCATTER) {
        m = (size_t)ov.len / isz;
        ok = ok && (size_t)xv.len == (size_t)n * m * isz;
    } else {
        m = (size_t)xv.len / isz;
        ok = ok && (!need_out || (size_t)ov.len == (size_t)n * m * isz);
    }
    size_t pieces = kind == DSN_COLL_REDUCE_SCATTER ? (size_t)n : 1;
    ok = ok && (size_t)(uint32_t)pv[DSN_P_SLOT] / (isz * pieces) >= 1;
    int st = DSN_SHM_NOT_ELIGIBLE;
    if (ok) {
        char *out = kind == DSN_COLL_BROADCAST ? (char *)xv.buf : need_out ? (char *)ov.buf : NULL;
        static const int sig_kinds[] = {0, DSN_SIG_ALLGATHER, DSN_SIG_GATHER,
                                        DSN_SIG_REDUCE_SCATTER, DSN_SIG_BROADCAST,
                                        DSN_SIG_ALLGATHER};
        int rooted = kind == DSN_COLL_GATHER || kind == DSN_COLL_BROADCAST;
        int32_t sig[DSN_SIG_WORDS];
        dsn_shm_sig(sig, sig_kinds[kind], kind == DSN_COLL_REDUCE_SCATTER ? op : 0,
                    rooted ? (int)root : 0,
                    code >= 0 ? dtype + 1 : (int)(-1 - code), (uint64_t)m * isz);
        dsn_shm_op_begin(pv, sig);
        Py_BEGIN_ALLOW_THREADS
        if (kind == DSN_COLL_ALLGATHER_CMA)
            st = dsn_shm_allgather_cma_run(base, pv, (const char *)xv.buf, out, m * isz, sig,
                                           dsn_now_ns() + budget);
        else
            st = dsn_shm_coll_run(K, base, pv, (int)kind, (const char *)xv.buf, out, m,
                                  (int)root, dtype, op, isz, sig, dsn_now_ns() + budget);
        Py_END_ALLOW_THREADS
        dsn_shm_op_end(pv, st);
    }
    if (need_out) PyBuffer_Release(&ov);
    PyBuffer_Release(&xv);
    return PyLong_FromLong(st);
}

/* ---------------------------------------------------------------- module */

/* int8 GEMM of deepseek.quantization (dsn_int8.c) */
PyObject *dsn_py_int8_gemm(PyObject *, PyObject *);
PyObject *dsn_py_int8_quantize_rows(PyObject *, PyObject *);
PyObject *dsn_py_int8_isa(PyObject *, PyObject *);
PyObject *dsn_py_int8_isa_list(PyObject *, PyObject *);
PyObject *dsn_py_int8_last_kernel(PyObject *, PyObject *);
PyObject *dsn_py_wq_linear(PyObject *, PyObject *);
/* fused casts of the DDP compression hooks (dsn_wire.c) */
PyObject *dsn_py_wire_pack(PyObject *, PyObject *);
PyObject *dsn_py_wire_unpack(PyObject *, PyObject *);
PyObject *dsn_py_wire_sym_reduce(PyObject *, PyObject *);
/* conversion passes of the low-precision GEMM (dsn_lowp.c) */
PyObject *dsn_py_lowp_widen(PyObject *, PyObject *);
PyObject *dsn_py_lowp_narrow(PyObject *, PyObject *);
PyObject *dsn_py_lowp_round(PyObject *, PyObject *);
PyObject *dsn_py_lowp_relu(PyObject *, PyObject *);
PyObject *dsn_py_lowp_relu_grad(PyObject *, PyObject *);
PyObject *dsn_py_lowp_colsum(PyObject *, PyObject *);
/* send/recv of the shm transport (dsn_p2p.c) */
#include "dsn_p2p.h"

static PyMethodDef methods[] = {
    {"int8_gemm", dsn_py_int8_gemm, METH_VARARGS, "int8 GEMM (private: dsn_int8.c)"},
    {"int8_quantize_rows", dsn_py_int8_quantize_rows, METH_VARARGS, "(private: dsn_int8.c)"},
    {"int8_isa", dsn_py_int8_isa, METH_VARARGS, "int8_isa([name]) (private: dsn_int8.c)"},
    {"int8_isa_list", dsn_py_int8_isa_list, METH_NOARGS, "(private: dsn_int8.c)"},
    {"int8_last_kernel", dsn_py_int8_last_kernel, METH_NOARGS,
     "the loop the last int8_gemm ran (private: tests)"},
    {"wq_linear", dsn_py_wq_linear, METH_VARARGS, "weight-only GEMV (private: dsn_int8.c)"},
    {"wire_pack", dsn_py_wire_pack, METH_VARARGS, "(private: dsn_wire.c)"},
    {"wire_unpack", dsn_py_wire_unpack, METH_VARARGS, "(private: dsn_wire.c)"},
    {"wire_sym_reduce", dsn_py_wire_sym_reduce, METH_VARARGS, "(private: dsn_wire.c)"},
    {"lowp_widen", dsn_py_lowp_widen, METH_VARARGS, "(private: dsn_lowp.c)"},
    {"lowp_narrow", dsn_py_lowp_narrow, METH_VARARGS, "(private: dsn_lowp.c)"},
    {"lowp_round", dsn_py_lowp_round, METH_VARARGS, "(private: dsn_lowp.c)"},
    {"lowp_relu", dsn_py_lowp_relu, METH_VARARGS, "(private: dsn_lowp.c)"},
    {"lowp_relu_grad", dsn_py_lowp_relu_grad, METH_VARARGS, "(private: dsn_lowp.c)"},
    {"lowp_colsum", dsn_py_lowp_colsum, METH_VARARGS, "(private: dsn_lowp.c)"},
    {"isa", py_isa, METH_NOARGS, "isa() -> str: instruction set in use."},
    {"isa_list", py_isa_list, METH_NOARGS, "isa_list() -> list[str]: supported here, best first."},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name): force an instruction set (tests)."},
    {"convert", py_convert, METH_VARARGS, "convert(kind, src, out)"},
    {"reduce", py_reduce, METH_VARARGS, "reduce(op, dtype, inputs, out)"},
    {"erf", py_erf, METH_VARARGS, "erf(dtype, src, out)"},
    {"gelu", py_gelu, METH_VARARGS, "gelu(src, out, cdf_or_None) (float32)"},
    {"unscale", py_unscale, METH_VARARGS, "unscale(dtype, grad, inv_scale) -> bool"},
    {"layer_norm", py_layer_norm, METH_VARARGS,
     "layer_norm(x, w, b, y, xhat, rstd, n, eps) (float32 rows of n; w, b may be None)"},
    {"layer_norm_backward", py_layer_norm_backward, METH_VARARGS,
     "layer_norm_backward(g, xhat, rstd, w, gx, gw, gb, n) (float32; None skips an output)"},
    {"gelu_backward_tail", py_gelu_backward_tail, METH_VARARGS,
     "gelu_backward_tail(g, a, cdf, t, out, c) (float32; out may be t)"},
    {"softmax_rows", py_softmax_rows, METH_VARARGS,
     "softmax_rows(kind, a, b, c, n) (float32 rows of n: 0 shift, 1 normalise, 2 backward)"},
    {"sgd", py_sgd, METH_VARARGS,
     "sgd(param, grad, buf, half, half_dtype, lr, momentum, dampening, weight_decay, "
     "nesterov, maximize, first_step)"},
    {"adam", py_adam, METH_VARARGS,
     "adam(param, grad, m, v, vmax, half, half_dtype, lr, beta1, beta2, eps, weight_decay, "
     "step, amsgrad, decoupled, maximize)"},
    {"shm_allreduce", (PyCFunction)(void (*)(void))py_shm_allreduce, METH_FASTCALL,
     "shm_allreduce(state_addr, x, code, budget_ns) -> status (private: collectives)"},
    {"shm_collective", (PyCFunction)(void (*)(void))py_shm_collective, METH_FASTCALL,
     "shm_collective(state_addr, kind, x, out, code, root, budget_ns) -> status "
     "(private: collectives)"},
    {"shm_allreduce_sym", (PyCFunction)(void (*)(void))py_shm_allreduce_sym, METH_FASTCALL,
     "shm_allreduce_sym(state_addr, x, code, budget_ns, table_addr) -> status "
     "(private: collectives)"},
    {"p2p_send", (PyCFunction)(void (*)(void))dsn_py_p2p_send, METH_FASTCALL,
     "p2p_send(state, x, dst, tag, budget_ns) -> status (private: dsn_p2p.c)"},
    {"p2p_recv", (PyCFunction)(void (*)(void))dsn_py_p2p_recv, METH_FASTCALL,
     "p2p_recv(state, x, src, tag, budget_ns) -> status (private: dsn_p2p.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "deepseek._native",
    "Private C kernels of deepseek.native; use deepseek.native instead.", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* the C fast path of Function.apply (dsn_fastpath.c) */
extern PyMethodDef dsn_fastpath_methods[];
/* im2col/col2im, max pooling and Adadelta passes (dsn_conv.c) */
extern PyMethodDef dsn_conv_methods[];

/* The enum codes of dsn_common.h as module constants, so Python reads them from here
 * instead of keeping a copy (native/__init__.py; _fallback.py holds the same values
 * for builds without the extension, and a test checks that they agree). */
static int add_codes(PyObject *m)
{
    static const struct { const char *name; int code; } DTYPES[] = {
        {"float32", DSN_F32}, {"float16", DSN_F16}, {"bfloat16", DSN_BF16},
        {"int32", DSN_I32}, {"int64", DSN_I64}, {"float64", DSN_F64}};
    static const struct { const char *name; int code; } OPS[] = {
        {"sum", DSN_SUM}, {"avg", DSN_AVG}, {"max", DSN_MAX}, {"min", DSN_MIN},
        {"prod", DSN_PROD}};
    static const struct { const char *name; int code; } CVTS[] = {
        {"f32_to_f16", DSN_CVT_F32_F16}, {"f16_to_f32", DSN_CVT_F16_F32},
        {"f32_to_bf16", DSN_CVT_F32_BF16}, {"bf16_to_f32", DSN_CVT_BF16_F32}};
    PyObject *d;
#define ADD_TABLE(attr, tab) \
    if (!(d = PyDict_New())) return -1; \
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) { \
        PyObject *v = PyLong_FromLong(tab[i].code); \
        if (!v || PyDict_SetItemString(d, tab[i].name, v) < 0) { \
            Py_XDECREF(v); Py_DECREF(d); return -1; } \
        Py_DECREF(v); \
    } \
    if (PyModule_AddObject(m, attr, d) < 0) { Py_DECREF(d); return -1; }
    ADD_TABLE("DTYPE_CODES", DTYPES)
    ADD_TABLE("OP_CODES", OPS)
    ADD_TABLE("CVT_CODES", CVTS)
#undef ADD_TABLE
    return 0;
}

PyMODINIT_FUNC PyInit__native(void)
{
    for (size_t i = 0; i < N_ISAS; i++) {
        if (isa_supported(ALL_ISAS[i])) { K = ALL_ISAS[i]; break; }
    }
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddFunctions(m, dsn_fastpath_methods) < 0 ||
        PyModule_AddFunctions(m, dsn_conv_methods) < 0 || add_codes(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
