/*
 * dsn_wire.c - the fused passes of the DDP compression hooks
 * (deepseek.distributed.comm_hooks), one pass over the bucket each way.
 *
 *   wire_pack    dst = half(src * scale) (or dst = half(src) / a plain fp32 copy) and
 *                returns max |src| in the same pass; replaces the hook's absmax
 *                (two passes), in-place scale (one) and cast (one).
 *   wire_unpack  dst = float32(src) * scale: the reduced wire buffer decoded and
 *                averaged straight into the bucket; replaces cast + in-place scale.
 *
 * Bit-identical to the numpy sequence they replace: the product is one IEEE fp32
 * multiply (built with -ffp-contract=off), the conversions are those of dsn_body.h
 * (F16C with the NaN-payload fix-up of numpy's software conversion, ml_dtypes'
 * bfloat16 rounding), and the absolute maximum is the maximum of the sign-cleared
 * bit patterns: as unsigned integers every NaN is above inf, inf above every finite
 * value, so NaN anywhere gives NaN and inf gives inf, as max(a.max(), -a.min()) does.
 *
 * Own dispatch (the kernel table of dsn_module.c is left alone): AVX2+F16C when the
 * caller asks for SIMD and the CPU has it, portable scalar otherwise. The Python
 * wrapper (deepseek.native.wire_pack / wire_unpack) checks dtypes, sizes and overlap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "dsn_common.h"
#if defined(DSN_X86)
#include <immintrin.h>
#define WIRE_AVX2 __attribute__((target("avx2,f16c")))
#endif

static inline uint16_t wire_f32_to_bf16(float x)
{
    uint32_t b = dsn_f32_bits(x);
    uint32_t r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    uint32_t nan = ((b >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)(((b & 0x7fffffffu) > 0x7f800000u) ? nan : r);
}

/* ---------------------------------------------------------------- scalar */

static uint32_t pack_scalar(const float *src, void *dst, int dcode, int do_scale, float s,
                            size_t n)
{
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        float x = src[i];
        uint32_t a = dsn_f32_bits(x) & 0x7fffffffu;
        m = a > m ? a : m;
        float v = do_scale ? x * s : x;
        if (dcode == DSN_F16) ((uint16_t *)dst)[i] = dsn_f32_to_f16_scalar(v);
        else if (dcode == DSN_BF16) ((uint16_t *)dst)[i] = wire_f32_to_bf16(v);
        else ((float *)dst)[i] = v;
    }
    return m;
}

static void unpack_scalar(const void *src, int scode, float *dst, float s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x;
        if (scode == DSN_F16) x = dsn_f16_to_f32_scalar(((const uint16_t *)src)[i]);
        else if (scode == DSN_BF16) x = dsn_bits_f32((uint32_t)((const uint16_t *)src)[i] << 16);
        else x = ((const float *)src)[i];
        dst[i] = x * s;
    }
}

/* ------------------------------------------------------------------ AVX2 */
#if defined(DSN_X86)
static WIRE_AVX2 uint32_t pack_avx2(const float *src, void *dst, int dcode, int do_scale,
                                    float s, size_t n)
{
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    const __m256 vs = _mm256_set1_ps(s);
    __m256i vm = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        /* sign-cleared bits are <= 0x7fffffff: the signed max orders them as unsigned */
        vm = _mm256_max_epi32(vm, _mm256_and_si256(_mm256_castps_si256(x), absmask));
        __m256 v = do_scale ? _mm256_mul_ps(x, vs) : x;
        if (dcode == DSN_F16) {
            uint16_t *d = (uint16_t *)dst + i;
            _mm_storeu_si128((__m128i *)d,
                             _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            unsigned nan = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            if (nan) {  /* hardware quiets NaNs; numpy keeps the payload */
                float t[8];
                _mm256_storeu_ps(t, v);
                for (; nan; nan &= nan - 1) {
                    unsigned k = (unsigned)__builtin_ctz(nan);
                    d[k] = dsn_f32_to_f16_scalar(t[k]);
                }
            }
        } else if (dcode == DSN_BF16) {
            __m256i b = _mm256_castps_si256(v);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
            __m256i r = _mm256_srli_epi32(
                _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb), 16);
            __m256i isnan = _mm256_cmpgt_epi32(_mm256_and_si256(b, absmask),
                                               _mm256_set1_epi32(0x7f800000));
            __m256i qnan = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x8000)),
                _mm256_set1_epi32(0x7fc0));
            r = _mm256_blendv_epi8(r, qnan, isnan);
            /* 8 x u32 (each < 0x10000) -> 8 x u16 */
            __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
            _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), _mm_packus_epi32(lo, hi));
        } else {
            _mm256_storeu_ps((float *)dst + i, v);
        }
    }
    uint32_t t[8], m = 0;
    _mm256_storeu_si256((__m256i *)t, vm);
    for (int k = 0; k < 8; k++) m = t[k] > m ? t[k] : m;
    if (i < n) {
        const float *s2 = src + i;
        void *d2 = dcode == DSN_F32 ? (void *)((float *)dst + i) : (void *)((uint16_t *)dst + i);
        uint32_t m2 = pack_scalar(s2, d2, dcode, do_scale, s, n - i);
        m = m2 > m ? m2 : m;
    }
    return m;
}

static WIRE_AVX2 void unpack_avx2(const void *src, int scode, float *dst, float s, size_t n)
{
    const __m256 vs = _mm256_set1_ps(s);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x;
        if (scode == DSN_F16) {
            const uint16_t *h = (const uint16_t *)src + i;
            x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
            unsigned nan = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            if (nan) {
                float t[8];
                _mm256_storeu_ps(t, x);
                for (; nan; nan &= nan - 1) {
                    unsigned k = (unsigned)__builtin_ctz(nan);
                    t[k] = dsn_f16_to_f32_scalar(h[k]);
                }
                x = _mm256_loadu_ps(t);
            }
        } else if (scode == DSN_BF16) {
            __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
            x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        } else {
            x = _mm256_loadu_ps((const float *)src + i);
        }
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(x, vs));
    }
    if (i < n) {
        const void *s2 = scode == DSN_F32 ? (const void *)((const float *)src + i)
                                          : (const void *)((const uint16_t *)src + i);
        unpack_scalar(s2, scode, dst + i, s, n - i);
    }
}
#endif

static int wire_simd(int want)
{
#if defined(DSN_X86)
    if (!want) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    (void)want;
    return 0;
#endif
}

/* ---------------------------------------------------------------- Python */

static int wire_buf(PyObject *o, Py_buffer *v, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, v, flags) < 0) return -1;
    (void)name;
    return 0;
}

static size_t code_size(int code) { return code == DSN_F32 ? 4 : 2; }

/* The buffers of a wire_pack / wire_unpack call (`fn`): `code` must name a wire format,
   the float32 side (src when `f32_is_src`, else out) must hold 4-byte items, the other
   side items of `code`'s size, as many as the float32 side. Returns that count, or -1
   with a ValueError set and no buffer held. */
static Py_ssize_t wire_args(const char *fn, PyObject *osrc, PyObject *odst, int code,
                            int f32_is_src, Py_buffer *s, Py_buffer *d)
{
    if (code != DSN_F32 && code != DSN_F16 && code != DSN_BF16) {
        PyErr_Format(PyExc_ValueError, "%s(): bad %s code %d", fn, f32_is_src ? "dst" : "src",
                     code);
        return -1;
    }
    if (wire_buf(osrc, s, 0, "src") < 0) return -1;
    if (wire_buf(odst, d, 1, "out") < 0) { PyBuffer_Release(s); return -1; }
    const Py_buffer *f = f32_is_src ? s : d, *w = f32_is_src ? d : s;
    size_t n = (size_t)f->len / 4;
    if (f->itemsize != 4 || (size_t)w->itemsize != code_size(code) ||
        (size_t)w->len / (size_t)w->itemsize != n) {
        PyBuffer_Release(s); PyBuffer_Release(d);
        PyErr_Format(PyExc_ValueError, "%s(): src/out item size or length mismatch", fn);
        return -1;
    }
    return (Py_ssize_t)n;
}

/* wire_pack(src f32, dst, dst_code, do_scale, scale, simd) -> max |src| (float) */
PyObject *dsn_py_wire_pack(PyObject *self, PyObject *args)
{
    PyObject *osrc, *odst;
    int dcode, do_scale, simd;
    double scale;
    Py_buffer s, d;
    if (!PyArg_ParseTuple(args, "OOiidi:wire_pack", &osrc, &odst, &dcode, &do_scale, &scale,
                          &simd))
        return NULL;
    Py_ssize_t got = wire_args("wire_pack", osrc, odst, dcode, 1, &s, &d);
    if (got < 0) return NULL;
    size_t n = (size_t)got;
    uint32_t m;
    float fs = (float)scale;
    int use = wire_simd(simd);
    Py_BEGIN_ALLOW_THREADS
#if defined(DSN_X86)
    if (use) m = pack_avx2((const float *)s.buf, d.buf, dcode, do_scale, fs, n);
    else
#endif
        m = pack_scalar((const float *)s.buf, d.buf, dcode, do_scale, fs, n);
    Py_END_ALLOW_THREADS
    (void)use;
    PyBuffer_Release(&s); PyBuffer_Release(&d);
    return PyFloat_FromDouble((double)dsn_bits_f32(m));
}

/* wire_unpack(src, src_code, dst f32, scale, simd): dst = float32(src) * scale */
PyObject *dsn_py_wire_unpack(PyObject *self, PyObject *args)
{
    PyObject *osrc, *odst;
    int scode, simd;
    double scale;
    Py_buffer s, d;
    if (!PyArg_ParseTuple(args, "OiOdi:wire_unpack", &osrc, &scode, &odst, &scale, &simd))
        return NULL;
    Py_ssize_t got = wire_args("wire_unpack", osrc, odst, scode, 0, &s, &d);
    if (got < 0) return NULL;
    size_t n = (size_t)got;
    float fs = (float)scale;
    int use = wire_simd(simd);
    Py_BEGIN_ALLOW_THREADS
#if defined(DSN_X86)
    if (use) unpack_avx2(s.buf, scode, (float *)d.buf, fs, n);
    else
#endif
        unpack_scalar(s.buf, scode, (float *)d.buf, fs, n);
    Py_END_ALLOW_THREADS
    (void)use;
    PyBuffer_Release(&s); PyBuffer_Release(&d);
    Py_RETURN_NONE;
}

/* ------------------------------------------- fused reduction over shared memory */
/*
 * wire_sym_reduce: the fp16 hook's whole round trip for this rank's 1/n segment of a
 * bucket that every rank keeps in symmetric memory (every rank's fp32 copy is mapped
 * here), in one pass: per element
 *     cast:  out = float32(half(sum_r float32(half(x_r * scale)))) * inv
 *     plain: out = (sum_r x_r) * inv
 * summed in rank order in fp32, which is bit for bit wire_pack, the fp16 allreduce
 * (dsn_body.h reduce_half) and wire_unpack, without the wire buffer. Each block of the
 * segment is computed into an L1 buffer and then written into every rank's copy, so
 * no input is overwritten before it was read. A block in which a cast or the rounded
 * sum is not finite (overflow, inf or NaN in a gradient) is instead the exact fp32
 * average (sum_r x_r) / n, as the fp32 resend computes it; the call reports that.
 * It also returns max_i sum_r |x_r[i]| over the segment: a bound on every element of
 * the sum (NaN above inf above finite values, as wire_pack's maximum).
 */
#define WIRE_BLK 2048

static void sym_exact(char *const *x, int n, size_t s0, size_t m, float *out)
{
    for (size_t i = 0; i < m; i++) {
        float acc = ((const float *)x[0])[s0 + i];
        for (int r = 1; r < n; r++) acc += ((const float *)x[r])[s0 + i];
        out[i] = acc / (float)n;
    }
}

/* one block, portable; returns nonzero when the cast path met a non-finite value */
static int sym_block_scalar(char *const *x, int n, size_t s0, size_t m, int cast, float s,
                            float inv, float *out, uint32_t *bmax)
{
    int bad = 0;
    uint32_t bm = *bmax;
    for (size_t i = 0; i < m; i++) {
        float acc = 0.0f, mag = 0.0f;
        for (int r = 0; r < n; r++) {
            float v = ((const float *)x[r])[s0 + i];
            mag += v < 0 ? -v : v;
            if (cast) {
                uint16_t h = dsn_f32_to_f16_scalar(v * s);
                float q = dsn_f16_to_f32_scalar(h);
                acc = r ? acc + q : q;
            } else {
                acc = r ? acc + v : v;
            }
        }
        if (cast) {
            uint16_t h = dsn_f32_to_f16_scalar(acc);
            bad |= (h & 0x7c00u) == 0x7c00u;
            acc = dsn_f16_to_f32_scalar(h);
        }
        out[i] = acc * inv;
        uint32_t a = dsn_f32_bits(mag) & 0x7fffffffu;
        bm = a > bm ? a : bm;
    }
    *bmax = bm;
    return bad;
}

#if defined(DSN_X86)
/* A non-finite cast makes the fp32 sum inf or NaN (|sum| <= 256 * 65504 cannot
 * overflow fp32), so checking the rounded sum alone catches every overflow. */
static WIRE_AVX2 int sym_block_avx2(char *const *x, int n, size_t s0, size_t m, int cast,
                                    float s, float inv, float *out, uint32_t *bmax)
{
    const __m256 vs = _mm256_set1_ps(s), vinv = _mm256_set1_ps(inv);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m128i expo = _mm_set1_epi16(0x7c00);
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m128i bad = _mm_setzero_si128();
    __m256i vm = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m256 v = _mm256_loadu_ps((const float *)x[0] + s0 + i);
        __m256 mag = _mm256_and_ps(v, absmask);
        __m256 acc = cast ? _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(v, vs), rnd)) : v;
        for (int r = 1; r < n; r++) {
            v = _mm256_loadu_ps((const float *)x[r] + s0 + i);
            mag = _mm256_add_ps(mag, _mm256_and_ps(v, absmask));
            acc = _mm256_add_ps(acc, cast ? _mm256_cvtph_ps(_mm256_cvtps_ph(
                                               _mm256_mul_ps(v, vs), rnd)) : v);
        }
        if (cast) {
            __m128i h = _mm256_cvtps_ph(acc, rnd);
            bad = _mm_or_si128(bad, _mm_cmpeq_epi16(_mm_and_si128(h, expo), expo));
            acc = _mm256_cvtph_ps(h);
        }
        _mm256_storeu_ps(out + i, _mm256_mul_ps(acc, vinv));
        vm = _mm256_max_epi32(vm, _mm256_castps_si256(mag));  /* sign clear: as unsigned */
    }
    uint32_t t[8], bm = *bmax;
    _mm256_storeu_si256((__m256i *)t, vm);
    for (int k = 0; k < 8; k++) bm = t[k] > bm ? t[k] : bm;
    *bmax = bm;
    int flag = !_mm_testz_si128(bad, bad);
    if (i < m) flag |= sym_block_scalar(x, n, s0 + i, m - i, cast, s, inv, out + i, bmax);
    return flag;
}
#endif

/* wire_sym_reduce(views, rank, cast, scale, inv, simd) -> (bound, fell_back)
 * views: every rank's float32 copy of the bucket (same length), in rank order. */
PyObject *dsn_py_wire_sym_reduce(PyObject *self, PyObject *args)
{
    PyObject *seq;
    int me, cast, simd;
    double scale, inv;
    if (!PyArg_ParseTuple(args, "Oiiddi:wire_sym_reduce", &seq, &me, &cast, &scale, &inv,
                          &simd))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "wire_sym_reduce(): views must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > 256 || me < 0 || me >= n) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "wire_sym_reduce(): %zd views (1..256) and rank %d",
                     n, me);
        return NULL;
    }
    Py_buffer v[256];
    char *x[256];
    Py_ssize_t got = 0, len = -1;
    for (; got < n; got++) {
        if (wire_buf(PySequence_Fast_GET_ITEM(fast, got), &v[got], 1, "view") < 0) break;
        x[got] = (char *)v[got].buf;
        if (v[got].itemsize != 4 || (len >= 0 && v[got].len != len)) {
            PyErr_SetString(PyExc_ValueError,
                            "wire_sym_reduce(): views must be float32 of the same length");
            got++;
            break;
        }
        len = v[got].len;
    }
    if (PyErr_Occurred()) {
        for (Py_ssize_t r = 0; r < got; r++) PyBuffer_Release(&v[r]);
        Py_DECREF(fast);
        return NULL;
    }
    size_t count = (size_t)len / 4;
    size_t a = count * (size_t)me / (size_t)n, b = count * (size_t)(me + 1) / (size_t)n;
    float fs = (float)scale, finv = (float)inv;
    int use = wire_simd(simd), fell = 0;
    uint32_t bm = 0;
    Py_BEGIN_ALLOW_THREADS
    float out[WIRE_BLK];
    for (size_t s0 = a; s0 < b; s0 += WIRE_BLK) {
        size_t m = b - s0 < WIRE_BLK ? b - s0 : WIRE_BLK;
        int bad;
#if defined(DSN_X86)
        if (use) bad = sym_block_avx2(x, (int)n, s0, m, cast, fs, finv, out, &bm);
        else
#endif
            bad = sym_block_scalar(x, (int)n, s0, m, cast, fs, finv, out, &bm);
        if (bad) {
            sym_exact(x, (int)n, s0, m, out);
            fell = 1;
        }
        for (Py_ssize_t r = 0; r < n; r++) memcpy(x[r] + s0 * 4, out, m * 4);
    }
    Py_END_ALLOW_THREADS
    (void)use;
    for (Py_ssize_t r = 0; r < n; r++) PyBuffer_Release(&v[r]);
    Py_DECREF(fast);
    return Py_BuildValue("(dO)", (double)dsn_bits_f32(bm), fell ? Py_True : Py_False);
}
