/*
 * dsn_common.h - shared definitions of the deepseek native kernels.
 *
 * Codes shared with the Python wrapper (native/__init__.py), the kernel table
 * filled once per instruction set, and the scalar fp16/bf16 conversions whose
 * results are the reference every SIMD path must reproduce bit for bit.
 */
#ifndef DSN_COMMON_H
#define DSN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Element types (exported as _native.DTYPE_CODES; native/_fallback.py repeats them). */
enum { DSN_F32 = 0, DSN_F16 = 1, DSN_BF16 = 2, DSN_I32 = 3, DSN_I64 = 4, DSN_F64 = 5 };

/* Reduction ops (exported as _native.OP_CODES; native/_fallback.py repeats them). */
enum { DSN_SUM = 0, DSN_AVG = 1, DSN_MAX = 2, DSN_MIN = 3, DSN_PROD = 4 };

/* Conversion directions (exported as _native.CVT_CODES). */
enum { DSN_CVT_F32_F16 = 0, DSN_CVT_F16_F32 = 1, DSN_CVT_F32_BF16 = 2, DSN_CVT_BF16_F32 = 3 };

/* Elements per cache-resident block: the N-input reductions and the kernels
 * touching fp16/bf16 work block by block so every array is streamed once. */
#define DSN_BLOCK 1024

typedef struct {
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize, first_step;
} dsn_sgd_args;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, step;
    int amsgrad, decoupled, maximize;
} dsn_adam_args;

/* One set of kernels, compiled once per instruction set. */
typedef struct {
    const char *name;
    void (*convert)(int kind, const void *src, void *dst, size_t n);
    /* in[0..nin-1] (op) -> out; out may be identical to one of the inputs. */
    void (*reduce)(int op, int dtype, const void *const *in, size_t nin, void *out, size_t n);
    /* g *= inv_scale in place; returns 1 if any input element was inf/NaN. */
    int (*unscale)(int dtype, void *g, size_t n, float inv_scale);
    void (*sgd)(const dsn_sgd_args *a, float *p, const float *g, float *buf,
                void *half, int half_dtype, size_t n);
    void (*adam)(const dsn_adam_args *a, float *p, const float *g, float *m, float *v,
                 float *vmax, void *half, int half_dtype, size_t n);
    /* float32 layer norm over rows of n (tmp: n floats), and its gradients (tmp: 2n) */
    void (*layer_norm)(const float *x, const float *w, const float *b, float *y, float *xhat,
                       float *rstd, size_t rows, size_t n, float eps, float *tmp);
    void (*layer_norm_bwd)(const float *g, const float *xhat, const float *rstd,
                           const float *w, float *gx, float *gw, float *gb, size_t rows,
                           size_t n, float *tmp);
    /* float32 softmax over rows of n, around numpy's exp: z = a - rowmax(a) (z may be a);
     * e /= rowsum(e) in place (keep_zero: rows summing to 0 left alone);
     * gx = g*y - y*rowsum(g*y) (gx may be g) */
    void (*softmax_shift)(const float *a, float *z, size_t rows, size_t n);
    void (*softmax_norm)(float *e, size_t rows, size_t n, int keep_zero);
    void (*softmax_bwd)(const float *g, const float *y, float *gx, size_t rows, size_t n);
    /* out = g * (cdf + (a * c) * t), t = exp(-a*a/2) made by numpy (out may be t) */
    void (*gelu_bwd_tail)(const float *g, const float *a, const float *cdf, const float *t,
                          float *out, float c, size_t n);
    /* float32 erf elementwise (y may be x), and GELU y = x * cdf, cdf = 0.5 * (1 +
     * erf(x / sqrt 2)) (cdf written when not NULL) */
    void (*erf_f32)(const float *x, float *y, size_t n);
    void (*gelu)(const float *x, float *y, float *cdf, size_t n);
} dsn_kernels;

extern const dsn_kernels dsn_kernels_scalar;
/* x86 SIMD variants need GCC/Clang target attributes; -DDSN_FORCE_SCALAR builds the
 * portable kernels only (what every other architecture, e.g. aarch64, compiles). */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#if defined(__GNUC__) && !defined(DSN_FORCE_SCALAR)
#define DSN_X86 1
extern const dsn_kernels dsn_kernels_avx2;
extern const dsn_kernels dsn_kernels_avx512;
#endif
#endif

/* Comparisons may not trap in the erf kernels, or GCC will not vectorise their
 * selects; nothing else changes (-ffp-contract=off still holds). */
#if defined(__GNUC__) && !defined(__clang__)
#define DSN_NO_TRAP __attribute__((optimize("no-trapping-math")))
#else
#define DSN_NO_TRAP
#endif

static inline uint32_t dsn_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float dsn_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/*
 * fp32 -> fp16 exactly as numpy's astype(float16): round to nearest even,
 * overflow to inf, subnormals rounded correctly, NaN keeps its sign and the
 * top 10 payload bits (quiet bit not forced; an all-zero result becomes 1).
 */
static inline uint16_t dsn_f32_to_f16_scalar(float x)
{
    uint32_t f = dsn_f32_bits(x);
    uint32_t sgn = (f & 0x80000000u) >> 16;
    uint32_t exp = f & 0x7f800000u;
    uint32_t sig;
    if (exp >= 0x47800000u) {                      /* overflow, inf or NaN */
        if (exp == 0x7f800000u && (f & 0x007fffffu)) {
            uint32_t r = 0x7c00u + ((f & 0x007fffffu) >> 13);
            if (r == 0x7c00u) r++;
            return (uint16_t)(sgn + r);
        }
        return (uint16_t)(sgn + 0x7c00u);
    }
    if (exp <= 0x38000000u) {                      /* subnormal half or zero */
        if (exp < 0x33000000u) return (uint16_t)sgn;
        exp >>= 23;
        sig = 0x00800000u + (f & 0x007fffffu);
        sig >>= (113 - exp);
        /* ties-to-even: the shift may have dropped up to 11 sticky bits */
        if (((sig & 0x3fffu) != 0x1000u) || (f & 0x7ffu)) sig += 0x1000u;
        return (uint16_t)(sgn + (sig >> 13));
    }
    sig = f & 0x007fffffu;
    if ((sig & 0x3fffu) != 0x1000u) sig += 0x1000u;   /* ties-to-even */
    /* a carry out of the significand bumps the exponent (up to inf): correct */
    return (uint16_t)(sgn + (((exp - 0x38000000u) >> 13) + (sig >> 13)));
}

/* fp16 -> fp32 exactly as numpy: exact for numbers, NaN payload kept as is. */
static inline float dsn_f16_to_f32_scalar(uint16_t h)
{
    uint32_t sgn = ((uint32_t)h & 0x8000u) << 16;
    uint32_t exp = h & 0x7c00u;
    uint32_t sig = h & 0x03ffu;
    if (exp == 0) {
        if (sig == 0) return dsn_bits_f32(sgn);
        /* subnormal: sig * 2^-24 is exact in fp32 */
        float v = (float)sig * 5.9604644775390625e-08f;
        return dsn_bits_f32(sgn | dsn_f32_bits(v));
    }
    if (exp == 0x7c00u) return dsn_bits_f32(sgn | 0x7f800000u | (sig << 13));
    return dsn_bits_f32(sgn | ((((uint32_t)h & 0x7fffu) + 0x1c000u) << 13));
}

/* fp32 -> bf16 exactly as ml_dtypes: round to nearest even, NaN -> signed 0x7fc0. */
static inline uint16_t dsn_f32_to_bf16_scalar(float x)
{
    uint32_t b = dsn_f32_bits(x);
    uint32_t r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    uint32_t nan = ((b >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)(((b & 0x7fffffffu) > 0x7f800000u) ? nan : r);
}

static inline float dsn_bf16_to_f32_scalar(uint16_t h)
{
    return dsn_bits_f32((uint32_t)h << 16);
}

#endif /* DSN_COMMON_H */
