/*
 * dsn_body.h - the kernels, written once and compiled once per instruction set.
 *
 * kernels_*.c include this file after defining
 *   DSN_SFX     name suffix (scalar / avx2 / avx512)
 *   DSN_TARGET  the per-function attribute, e.g. __attribute__((target("avx2,fma,f16c")))
 *   DSN_ISA     0 scalar, 1 AVX2+F16C+FMA, 2 AVX-512F
 * Plain loops are vectorised by the compiler for the function's target; the
 * fp16 conversions use F16C / AVX-512 intrinsics with a NaN fix-up so results
 * match numpy's software conversion bit for bit. Build flags forbid FMA
 * contraction (-ffp-contract=off), so every instruction set and the numpy
 * fallback perform the same IEEE operations in the same order.
 */
#include "dsn_common.h"
#include <math.h>
#if DSN_ISA > 0
#include <immintrin.h>
#endif

#define DSN_CAT_(a, b) a##_##b
#define DSN_CAT(a, b) DSN_CAT_(a, b)
#define F(name) DSN_CAT(name, DSN_SFX)
#define KFN static DSN_TARGET

/* ------------------------------------------------------------ conversions */

KFN void F(cvt_f32_f16)(const float *src, uint16_t *dst, size_t n)
{
    size_t i = 0;
#if DSN_ISA == 2
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(src + i);
        __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)(dst + i), h);
        unsigned nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        /* hardware quiets NaNs; numpy keeps the payload: redo those lanes */
        for (; nan; nan &= nan - 1) {
            unsigned k = (unsigned)__builtin_ctz(nan);
            dst[i + k] = dsn_f32_to_f16_scalar(src[i + k]);
        }
    }
#elif DSN_ISA == 1
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(dst + i), h);
        unsigned nan = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        for (; nan; nan &= nan - 1) {
            unsigned k = (unsigned)__builtin_ctz(nan);
            dst[i + k] = dsn_f32_to_f16_scalar(src[i + k]);
        }
    }
#endif
    for (; i < n; i++) dst[i] = dsn_f32_to_f16_scalar(src[i]);
}

KFN void F(cvt_f16_f32)(const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;
#if DSN_ISA == 2
    for (; i + 16 <= n; i += 16) {
        __m512 y = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, y);
        unsigned nan = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
        for (; nan; nan &= nan - 1) {
            unsigned k = (unsigned)__builtin_ctz(nan);
            dst[i + k] = dsn_f16_to_f32_scalar(src[i + k]);
        }
    }
#elif DSN_ISA == 1
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, y);
        unsigned nan = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(y, y, _CMP_UNORD_Q));
        for (; nan; nan &= nan - 1) {
            unsigned k = (unsigned)__builtin_ctz(nan);
            dst[i + k] = dsn_f16_to_f32_scalar(src[i + k]);
        }
    }
#endif
    for (; i < n; i++) dst[i] = dsn_f16_to_f32_scalar(src[i]);
}

/* bf16 is integer arithmetic on the bits: the compiler vectorises it as is. */
KFN void F(cvt_f32_bf16)(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t b = dsn_f32_bits(src[i]);
        uint32_t r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        uint32_t nan = ((b >> 16) & 0x8000u) | 0x7fc0u;
        dst[i] = (uint16_t)(((b & 0x7fffffffu) > 0x7f800000u) ? nan : r);
    }
}

KFN void F(cvt_bf16_f32)(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = dsn_bits_f32((uint32_t)src[i] << 16);
}

KFN void F(convert)(int kind, const void *src, void *dst, size_t n)
{
    switch (kind) {
    case DSN_CVT_F32_F16: F(cvt_f32_f16)((const float *)src, (uint16_t *)dst, n); break;
    case DSN_CVT_F16_F32: F(cvt_f16_f32)((const uint16_t *)src, (float *)dst, n); break;
    case DSN_CVT_F32_BF16: F(cvt_f32_bf16)((const float *)src, (uint16_t *)dst, n); break;
    case DSN_CVT_BF16_F32: F(cvt_bf16_f32)((const uint16_t *)src, (float *)dst, n); break;
    }
}

/* half <-> fp32 for the blocked kernels (dtype is DSN_F16 or DSN_BF16) */
KFN void F(half_to_f32)(int dtype, const uint16_t *src, float *dst, size_t n)
{
    if (dtype == DSN_F16) F(cvt_f16_f32)(src, dst, n);
    else F(cvt_bf16_f32)(src, dst, n);
}

KFN void F(f32_to_half)(int dtype, const float *src, uint16_t *dst, size_t n)
{
    if (dtype == DSN_F16) F(cvt_f32_f16)(src, dst, n);
    else F(cvt_f32_bf16)(src, dst, n);
}

/* ------------------------------------------------------------- reductions */

/*
 * acc[i] = acc[i] op x[i] over one block. Floating max/min propagate NaN like
 * np.maximum / np.minimum; integer sum/prod wrap around (done unsigned).
 * avg accumulates like sum; the caller divides at the end.
 */
/*
 * Elementwise binary ops over one stretch: combine_T does acc[i] = acc[i] op x[i],
 * combine3_T does dst[i] = a[i] op b[i] (dst disjoint from a and b). Floating
 * max/min propagate NaN like np.maximum / np.minimum; integer sum/prod wrap around
 * (computed unsigned). avg accumulates like sum; the caller divides at the end.
 */
#define DSN_OPS_FLOAT(T, U, op, n, DST, X, Y)                                        \
    switch (op) {                                                                    \
    case DSN_SUM: case DSN_AVG:                                                      \
        for (size_t i = 0; i < n; i++) DST[i] = X[i] + Y[i];                         \
        break;                                                                       \
    case DSN_PROD:                                                                   \
        for (size_t i = 0; i < n; i++) DST[i] = X[i] * Y[i];                         \
        break;                                                                       \
    case DSN_MAX:                                                                    \
        for (size_t i = 0; i < n; i++) {                                             \
            T a_ = X[i], b_ = Y[i];                                                  \
            DST[i] = ((a_ >= b_) | (a_ != a_)) ? a_ : b_;                            \
        }                                                                            \
        break;                                                                       \
    case DSN_MIN:                                                                    \
        for (size_t i = 0; i < n; i++) {                                             \
            T a_ = X[i], b_ = Y[i];                                                  \
            DST[i] = ((a_ <= b_) | (a_ != a_)) ? a_ : b_;                            \
        }                                                                            \
        break;                                                                       \
    }

#define DSN_OPS_INT(T, U, op, n, DST, X, Y)                                          \
    switch (op) {                                                                    \
    case DSN_SUM:                                                                    \
        for (size_t i = 0; i < n; i++) DST[i] = (T)((U)X[i] + (U)Y[i]);              \
        break;                                                                       \
    case DSN_PROD:                                                                   \
        for (size_t i = 0; i < n; i++) DST[i] = (T)((U)X[i] * (U)Y[i]);              \
        break;                                                                       \
    case DSN_MAX:                                                                    \
        for (size_t i = 0; i < n; i++) DST[i] = X[i] >= Y[i] ? X[i] : Y[i];          \
        break;                                                                       \
    case DSN_MIN:                                                                    \
        for (size_t i = 0; i < n; i++) DST[i] = X[i] <= Y[i] ? X[i] : Y[i];          \
        break;                                                                       \
    }

#define DSN_DEFINE_COMBINE(T, U, TN, OPS)                                            \
    KFN void F(combine_##TN)(int op, T *restrict acc, const T *restrict x, size_t n) \
    {                                                                                \
        OPS(T, U, op, n, acc, acc, x)                                                \
    }                                                                                \
    KFN void F(combine3_##TN)(int op, T *restrict dst, const T *restrict a,          \
                              const T *restrict b, size_t n)                         \
    {                                                                                \
        OPS(T, U, op, n, dst, a, b)                                                  \
    }

DSN_DEFINE_COMBINE(float, float, f32, DSN_OPS_FLOAT)
DSN_DEFINE_COMBINE(double, double, f64, DSN_OPS_FLOAT)
DSN_DEFINE_COMBINE(int32_t, uint32_t, i32, DSN_OPS_INT)
DSN_DEFINE_COMBINE(int64_t, uint64_t, i64, DSN_OPS_INT)

/* acc[i] = acc[i] op widen(x[i]) for bfloat16 x: widening is a shift, fused in. */
KFN void F(combine_bf16)(int op, float *restrict acc, const uint16_t *restrict x, size_t n)
{
#define DSN_BF16_AT(i) dsn_bits_f32((uint32_t)x[i] << 16)
    switch (op) {
    case DSN_SUM: case DSN_AVG:
        for (size_t i = 0; i < n; i++) acc[i] = acc[i] + DSN_BF16_AT(i);
        break;
    case DSN_PROD:
        for (size_t i = 0; i < n; i++) acc[i] = acc[i] * DSN_BF16_AT(i);
        break;
    case DSN_MAX:
        for (size_t i = 0; i < n; i++) {
            float a_ = acc[i], b_ = DSN_BF16_AT(i);
            acc[i] = ((a_ >= b_) | (a_ != a_)) ? a_ : b_;
        }
        break;
    case DSN_MIN:
        for (size_t i = 0; i < n; i++) {
            float a_ = acc[i], b_ = DSN_BF16_AT(i);
            acc[i] = ((a_ <= b_) | (a_ != a_)) ? a_ : b_;
        }
        break;
    }
#undef DSN_BF16_AT
}

/*
 * Same-type reduction. Two inputs go straight through when out is a distinct
 * array or is inputs[0] (the `acc op= x` of a reduce step). Otherwise work block
 * by block with the accumulator block in L1, so each input is read once and out
 * written once whatever the number of inputs, and out may be any of the inputs.
 */
#define DSN_DEFINE_REDUCE_SAME(T, TN, IS_FLOAT)                                      \
    KFN void F(reduce_##TN)(int op, const void *const *in, size_t nin, T *out,      \
                            size_t n)                                                \
    {                                                                                \
        const T *a = (const T *)in[0], *b = nin > 1 ? (const T *)in[1] : NULL;      \
        if (nin == 2 && op != DSN_AVG) {                                             \
            if (out == a && b != a) { F(combine_##TN)(op, out, b, n); return; }      \
            if (out != a && out != b) { F(combine3_##TN)(op, out, a, b, n); return; } \
        }                                                                            \
        T acc[DSN_BLOCK];                                                            \
        for (size_t base = 0; base < n; base += DSN_BLOCK) {                         \
            size_t m = n - base < DSN_BLOCK ? n - base : DSN_BLOCK;                  \
            if (nin == 1) memcpy(acc, a + base, m * sizeof(T));                      \
            else F(combine3_##TN)(op, acc, a + base, b + base, m);                   \
            for (size_t k = 2; k < nin; k++)                                         \
                F(combine_##TN)(op, acc, (const T *)in[k] + base, m);                \
            if (IS_FLOAT && op == DSN_AVG) {                                         \
                const T d = (T)nin;                                                  \
                for (size_t i = 0; i < m; i++) acc[i] = acc[i] / d;                  \
            }                                                                        \
            memcpy(out + base, acc, m * sizeof(T));                                  \
        }                                                                            \
    }

DSN_DEFINE_REDUCE_SAME(float, f32, 1)
DSN_DEFINE_REDUCE_SAME(double, f64, 1)
DSN_DEFINE_REDUCE_SAME(int32_t, i32, 0)
DSN_DEFINE_REDUCE_SAME(int64_t, i64, 0)

/* fp16 / bf16: widen each block to fp32, accumulate in fp32, round once. */
KFN void F(reduce_half)(int op, int dtype, const void *const *in, size_t nin,
                        uint16_t *out, size_t n)
{
    float acc[DSN_BLOCK], tmp[DSN_BLOCK];
    for (size_t base = 0; base < n; base += DSN_BLOCK) {
        size_t m = n - base < DSN_BLOCK ? n - base : DSN_BLOCK;
        F(half_to_f32)(dtype, (const uint16_t *)in[0] + base, acc, m);
        for (size_t k = 1; k < nin; k++) {
            const uint16_t *x = (const uint16_t *)in[k] + base;
            if (dtype == DSN_BF16) {
                F(combine_bf16)(op, acc, x, m);
            } else {
                F(cvt_f16_f32)(x, tmp, m);
                F(combine_f32)(op, acc, tmp, m);
            }
        }
        if (op == DSN_AVG) {
            const float d = (float)nin;
            for (size_t i = 0; i < m; i++) acc[i] = acc[i] / d;
        }
        F(f32_to_half)(dtype, acc, out + base, m);
    }
}

KFN void F(reduce)(int op, int dtype, const void *const *in, size_t nin, void *out, size_t n)
{
    switch (dtype) {
    case DSN_F32: F(reduce_f32)(op, in, nin, (float *)out, n); break;
    case DSN_F64: F(reduce_f64)(op, in, nin, (double *)out, n); break;
    case DSN_I32: F(reduce_i32)(op, in, nin, (int32_t *)out, n); break;
    case DSN_I64: F(reduce_i64)(op, in, nin, (int64_t *)out, n); break;
    case DSN_F16: case DSN_BF16: F(reduce_half)(op, dtype, in, nin, (uint16_t *)out, n); break;
    }
}

/* ---------------------------------------------------- unscale + inf check */

KFN int F(unscale_f32)(float *g, size_t n, float s)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        bad |= (uint32_t)((dsn_f32_bits(x) & 0x7f800000u) == 0x7f800000u);
        g[i] = x * s;
    }
    return bad != 0;
}

KFN int F(unscale_bf16)(uint16_t *g, size_t n, float s)
{
    /* one fused loop: widen (shift), check, scale, round back (integer RNE) */
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t h = g[i];
        bad |= (uint32_t)((h & 0x7f80u) == 0x7f80u);
        uint32_t b = dsn_f32_bits(dsn_bits_f32(h << 16) * s);
        uint32_t r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        uint32_t nan = ((b >> 16) & 0x8000u) | 0x7fc0u;
        g[i] = (uint16_t)(((b & 0x7fffffffu) > 0x7f800000u) ? nan : r);
    }
    return bad != 0;
}

KFN int F(unscale_f16)(uint16_t *g, size_t n, float s)
{
    float tmp[DSN_BLOCK];
    uint32_t bad = 0;
    for (size_t base = 0; base < n; base += DSN_BLOCK) {
        size_t m = n - base < DSN_BLOCK ? n - base : DSN_BLOCK;
        uint16_t *h = g + base;
        for (size_t i = 0; i < m; i++) bad |= (uint32_t)((h[i] & 0x7c00u) == 0x7c00u);
        F(cvt_f16_f32)(h, tmp, m);
        for (size_t i = 0; i < m; i++) tmp[i] = tmp[i] * s;
        F(cvt_f32_f16)(tmp, h, m);
    }
    return bad != 0;
}

KFN int F(unscale)(int dtype, void *g, size_t n, float s)
{
    if (dtype == DSN_F32) return F(unscale_f32)((float *)g, n, s);
    if (dtype == DSN_BF16) return F(unscale_bf16)((uint16_t *)g, n, s);
    return F(unscale_f16)((uint16_t *)g, n, s);
}

/* ------------------------------------------------------ fused optimizers */

/* torch.optim.SGD, one element at a time, same operations in the same order. */
KFN void F(sgd_block)(const dsn_sgd_args *a, float *restrict p, const float *restrict g,
                      float *restrict buf, size_t n)
{
    const float wd = (float)a->weight_decay, mom = (float)a->momentum;
    const float damp1 = (float)(1.0 - a->dampening), nlr = (float)(-a->lr);
    const int has_wd = a->weight_decay != 0.0, has_mom = a->momentum != 0.0;
    const int first = a->first_step, nesterov = a->nesterov, maximize = a->maximize;
    for (size_t i = 0; i < n; i++) {
        float gi = maximize ? -g[i] : g[i];
        float pi = p[i];
        if (has_wd) gi = gi + wd * pi;
        if (has_mom) {
            float b = first ? gi : buf[i] * mom + damp1 * gi;
            buf[i] = b;
            gi = nesterov ? gi + mom * b : b;
        }
        p[i] = pi + nlr * gi;
    }
}

KFN void F(sgd)(const dsn_sgd_args *a, float *p, const float *g, float *buf,
                void *half, int half_dtype, size_t n)
{
    if (!half) { F(sgd_block)(a, p, g, buf, n); return; }
    /* write the low-precision copy while the block is still in cache */
    for (size_t base = 0; base < n; base += DSN_BLOCK) {
        size_t m = n - base < DSN_BLOCK ? n - base : DSN_BLOCK;
        F(sgd_block)(a, p + base, g + base, buf ? buf + base : NULL, m);
        F(f32_to_half)(half_dtype, p + base, (uint16_t *)half + base, m);
    }
}

/* torch.optim.Adam / AdamW (decoupled weight decay), single-tensor semantics. */
KFN void F(adam_block)(const dsn_adam_args *a, float *restrict p, const float *restrict g,
                       float *restrict m_, float *restrict v_, float *restrict vmax, size_t n)
{
    const double bc1 = 1.0 - pow(a->beta1, a->step);
    const double bc2 = 1.0 - pow(a->beta2, a->step);
    const float nstep = (float)(-(a->lr / bc1));
    const float bc2s = (float)pow(bc2, 0.5);
    const float c1 = (float)(1.0 - a->beta1), b2 = (float)a->beta2;
    const float c2 = (float)(1.0 - a->beta2), eps = (float)a->eps;
    const float wd = (float)a->weight_decay;
    const float decay = (float)(1.0 - a->lr * a->weight_decay);
    const int has_wd = a->weight_decay != 0.0, decoupled = a->decoupled;
    const int amsgrad = a->amsgrad, maximize = a->maximize;
    for (size_t i = 0; i < n; i++) {
        float gi = maximize ? -g[i] : g[i];
        float pi = p[i];
        if (has_wd) {
            if (decoupled) pi = pi * decay;
            else gi = gi + wd * pi;
        }
        float mi = m_[i];
        mi = mi + c1 * (gi - mi);                     /* exp_avg.lerp_(grad, 1-beta1) */
        m_[i] = mi;
        float vi = v_[i] * b2 + (c2 * gi) * gi;       /* mul_(beta2).addcmul_(g, g, 1-beta2) */
        v_[i] = vi;
        if (amsgrad) {
            float mx = vmax[i];
            mx = ((mx >= vi) | (mx != mx)) ? mx : vi; /* torch.maximum */
            vmax[i] = mx;
            vi = mx;
        }
        float denom = sqrtf(vi) / bc2s + eps;
        p[i] = pi + nstep * (mi / denom);             /* addcdiv_(m, denom, -step_size) */
    }
}

KFN void F(adam)(const dsn_adam_args *a, float *p, const float *g, float *m, float *v,
                 float *vmax, void *half, int half_dtype, size_t n)
{
    if (!half) { F(adam_block)(a, p, g, m, v, vmax, n); return; }
    for (size_t base = 0; base < n; base += DSN_BLOCK) {
        size_t k = n - base < DSN_BLOCK ? n - base : DSN_BLOCK;
        F(adam_block)(a, p + base, g + base, m + base, v + base, vmax ? vmax + base : NULL, k);
        F(f32_to_half)(half_dtype, p + base, (uint16_t *)half + base, k);
    }
}

/* ---- layer norm over the last axis (float32), in numpy's operation order ----------
 * Each operation is the float32 one numpy's LayerNorm sequence (deepseek/ops/
 * normalization.py) makes, in its order, so the results are that sequence's bits. */

/* numpy's pairwise float32 sum of a[0..n): 8 interleaved partial sums up to 128
 * elements, halves above (its pairwise_sum), after the reduction's identity 0. */
KFN float F(pw_sum_f32)(const float *a, size_t n)
{
    if (n < 8) {
        float s = 0.0f;
        for (size_t i = 0; i < n; i++) s += a[i];
        return s;
    }
    if (n <= 128) {
        float r[8];
        size_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        float s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) s += a[i];
        return s;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return F(pw_sum_f32)(a, n2) + F(pw_sum_f32)(a + n2, n - n2);
}

/* numpy's x.mean(axis=-1) of one row: (0 + pairwise sum) / n, correctly rounded */
KFN float F(row_mean_f32)(const float *a, size_t n)
{
    return (0.0f + F(pw_sum_f32)(a, n)) / (float)n;
}

/* xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps) per row of n; y = xhat * w + b
 * (w, b may be NULL); tmp holds n floats. */
KFN void F(layer_norm)(const float *restrict x, const float *restrict w,
                       const float *restrict b, float *restrict y, float *restrict xhat,
                       float *restrict rstd, size_t rows, size_t n, float eps,
                       float *restrict tmp)
{
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *hr = xhat + r * n, *yr = y + r * n;
        const float mu = F(row_mean_f32)(xr, n);
        for (size_t i = 0; i < n; i++) hr[i] = xr[i] - mu;
        for (size_t i = 0; i < n; i++) tmp[i] = hr[i] * hr[i];
        const float rs = 1.0f / sqrtf(F(row_mean_f32)(tmp, n) + eps);
        rstd[r] = rs;
        for (size_t i = 0; i < n; i++) hr[i] = hr[i] * rs;
        if (w) for (size_t i = 0; i < n; i++) yr[i] = hr[i] * w[i];
        else memcpy(yr, hr, n * sizeof(float));
        if (b) for (size_t i = 0; i < n; i++) yr[i] = yr[i] + b[i];
    }
}

/* Gradients of layer_norm from the saved xhat and rstd: gx (through gxhat = g * w),
 * gw = sum over rows of g * xhat, gb = sum over rows of g (rows added in order, as
 * numpy's outer-axis sum does); any output may be NULL; tmp holds 2n floats. */
KFN void F(layer_norm_bwd)(const float *restrict g, const float *restrict xhat,
                           const float *restrict rstd, const float *restrict w,
                           float *restrict gx, float *restrict gw, float *restrict gb,
                           size_t rows, size_t n, float *restrict tmp)
{
    if (gw) for (size_t i = 0; i < n; i++) gw[i] = 0.0f;
    if (gb) for (size_t i = 0; i < n; i++) gb[i] = 0.0f;
    float *gh = tmp, *prod = tmp + n;
    for (size_t r = 0; r < rows; r++) {
        const float *gr = g + r * n, *hr = xhat + r * n;
        if (gx) {
            const float *ghr = gr;
            if (w) {
                for (size_t i = 0; i < n; i++) gh[i] = gr[i] * w[i];
                ghr = gh;
            }
            const float m1 = F(row_mean_f32)(ghr, n);
            for (size_t i = 0; i < n; i++) prod[i] = ghr[i] * hr[i];
            const float m2 = F(row_mean_f32)(prod, n);
            const float rs = rstd[r];
            float *gxr = gx + r * n;
            for (size_t i = 0; i < n; i++) {
                float v = ghr[i] - m1;
                v = v - hr[i] * m2;
                gxr[i] = v * rs;
            }
        }
        if (gw) for (size_t i = 0; i < n; i++) gw[i] = gw[i] + gr[i] * hr[i];
        if (gb) for (size_t i = 0; i < n; i++) gb[i] = gb[i] + gr[i];
    }
}

/* ---- softmax over the last axis (float32), around numpy's exp -------------------
 * The exp stays numpy's (its SIMD exp is what the numpy sequence computes); the passes
 * before and after it are numpy's float32 operations in numpy's order. */

/* z = a - m per row of n, m the row max (NaN if the row has one), replaced by 0 when it
 * is not finite (rows of -inf: fully masked), as deepseek/ops/softmax.py does; z may
 * be a (each row is read whole before it is written). */
KFN void F(softmax_shift)(const float *a, float *z, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; r++) {
        const float *ar = a + r * n;
        float *zr = z + r * n;
        float m = ar[0];
        int nan = 0;
        for (size_t i = 0; i < n; i++) {
            nan |= ar[i] != ar[i];
            m = ar[i] > m ? ar[i] : m;
        }
        if (nan || m - m != 0.0f) m = 0.0f;        /* NaN or +-inf */
        for (size_t i = 0; i < n; i++) zr[i] = ar[i] - m;
    }
}

/* e /= e.sum(axis=-1) per row of n, in place (numpy's pairwise row sum); with
 * keep_zero a row summing to 0 (all its exps 0: fully masked) is left as it is
 * instead of becoming 0/0 */
KFN void F(softmax_norm)(float *restrict e, size_t rows, size_t n, int keep_zero)
{
    for (size_t r = 0; r < rows; r++) {
        float *er = e + r * n;
        const float s = 0.0f + F(pw_sum_f32)(er, n);
        if (keep_zero && s == 0.0f) continue;
        for (size_t i = 0; i < n; i++) er[i] = er[i] / s;
    }
}

/* gx = g * y - y * sum(g * y) per row of n (the softmax gradient); gx may be g */
KFN void F(softmax_bwd)(const float *g, const float *restrict y, float *gx, size_t rows,
                        size_t n)
{
    for (size_t r = 0; r < rows; r++) {
        const float *gr = g + r * n, *yr = y + r * n;
        float *xr = gx + r * n;
        for (size_t i = 0; i < n; i++) xr[i] = gr[i] * yr[i];
        const float s = 0.0f + F(pw_sum_f32)(xr, n);
        for (size_t i = 0; i < n; i++) xr[i] = xr[i] - yr[i] * s;
    }
}

/* The GELU gradient's tail after numpy's t = exp((-0.5 * a) * a):
 * out = g * (cdf + (a * c) * t), numpy's float32 operations in its order; out may be t */
KFN void F(gelu_bwd_tail)(const float *restrict g, const float *restrict a,
                          const float *restrict cdf, const float *t, float *out, float c,
                          size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = g[i] * (cdf[i] + (a[i] * c) * t[i]);
}

/* ---- erf and GELU (float32) ---------------------------------------------------------
 * erf by the rational approximation p(x) / q(x^2) on [-4, 4] that Eigen and XLA use (erf
 * is +-1 in float32 beyond; absolute error below 5e-7). No libm call, so the loops
 * vectorise to the instruction set's full width: libm's erff costs several exp's per
 * element. The clamps keep NaN (it compares false). The same IEEE operations on every
 * instruction set, so the same bits. */
KFN DSN_NO_TRAP inline float F(erf1)(float a)
{
    float x = a < -4.0f ? -4.0f : a;
    x = x > 4.0f ? 4.0f : x;
    float x2 = x * x;
    float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
    p = x2 * p + -2.10102402082508e-06f;
    p = x2 * p + -5.69250639462346e-05f;
    p = x2 * p + -7.34990630326855e-04f;
    p = x2 * p + -2.95459980854025e-03f;
    p = x2 * p + -1.60960333262415e-02f;
    p = x * p;
    float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
    q = x2 * q + -1.68282697438203e-03f;
    q = x2 * q + -7.37332916720468e-03f;
    q = x2 * q + -1.42647390514189e-02f;
    return p / q;
}

/* y may be x itself: elementwise, nothing carried between elements */
KFN DSN_NO_TRAP void F(erf_f32)(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = F(erf1)(x[i]);
}

/* GELU in one pass, each operation the float32 one of numpy's sequence
 * x * (0.5 * (1 + erf(x * 1/sqrt 2))) in its order (so its bits); cdf when not NULL.
 * y may be x (in place), cdf overlaps neither. */
KFN DSN_NO_TRAP void F(gelu)(const float *x, float *y, float *restrict cdf, size_t n)
{
    const float r = 0.70710678118654752440f;
    if (cdf) {
        for (size_t i = 0; i < n; i++) {
            float c = 0.5f * (1.0f + F(erf1)(x[i] * r));
            cdf[i] = c;
            y[i] = x[i] * c;
        }
    } else {
        for (size_t i = 0; i < n; i++) y[i] = x[i] * (0.5f * (1.0f + F(erf1)(x[i] * r)));
    }
}

const dsn_kernels DSN_CAT(dsn_kernels, DSN_SFX) = {
    DSN_ISA_NAME, F(convert), F(reduce), F(unscale), F(sgd), F(adam),
    F(layer_norm), F(layer_norm_bwd), F(softmax_shift), F(softmax_norm), F(softmax_bwd),
    F(gelu_bwd_tail), F(erf_f32), F(gelu),
};

#undef F
#undef KFN
