/*
 * dsn_int8.c - int8 x int8 -> int32 GEMM / GEMV for deepseek.quantization.
 *
 * Own run-time dispatch (the fp kernels' table of dsn_module.c is left alone):
 *   "avx512vnni"  vpdpbusd on 256-bit registers (AVX512-VNNI + VL): u8 x s8 summed four
 *                 at a time straight into int32, so no saturation is possible; the
 *                 activations are offset to unsigned (a ^ 0x80 = a + 128) and the
 *                 compensation 128 * rowsum(w) (computed once at packing) is subtracted.
 *   "avx2"        vpmaddubsw / vpmaddwd(ones) / vpaddd as fbgemm does, made exact for
 *                 8-bit activations: vpmaddubsw(|a|, w ^ (a < 0 ? 0xFF : 0)) sums
 *                 a * w - |a| over the a < 0 (~w = -w - 1), the row's sum of negative
 *                 |a| is added back in the epilogue; |a| <= 127, |w ^ s| <= 128 keep
 *                 every int16 pair sum <= 2 * 127 * 128 = 32512 < 32767, so vpmaddubsw
 *                 never saturates, whatever the weights. Activations holding -128 (never
 *                 produced by the quantizers) run "avx2-sign" instead: the signed trick
 *                 maddubs(|a|, sign(w, a)) = a * w, exact for |a| <= 128 and |w| <= 127
 *                 (weights holding -128 are flagged at packing and run the scalar loop).
 *                 When every activation is 7-bit ([-64, 63]: reduce_range quantization)
 *                 a + 64 is unsigned and vpmaddubsw(a + 64, w) cannot saturate: the sign
 *                 step is skipped and 64 * rowsum(w) subtracted (checked per call).
 *   "scalar"      plain int32 loops; the reference every path equals bit for bit.
 *
 * Layout (dsn_int8 packing, done once by deepseek.native.int8_pack): W is [Np, Kp] int8
 * row-major (one row per output channel), Np a multiple of 4 and Kp of 32, zero padded;
 * A is [M, Kp] int8, zero padded. Results: int32 [M, N] or, fused, fp32
 * out[m, n] = float(acc) * (a_scale[m] * w_scale[n]) + bias[n] in that order.
 *
 * Why row-major and not fbgemm's panels (8 or 16 channels x K in groups of 4, the
 * activations broadcast 4 bytes at a time): the modules' ``weight`` buffer is a view of
 * this very array, so the int8 weight is held once (a second, panel copy would halve the
 * 4x memory saving). Measured on an AVX2 Zen 3 with a 64 x 768 x 768 problem in L2 (min
 * of 200): the exact 8-bit loop below runs 68 int8 MACs/ns, a 4 x 16 panel kernel with
 * the same four vector ops per 32 products 66, and an int16 vpmaddwd kernel (weights
 * widened) 69: the exact 8-bit loop is bound by its four ops per 32 products whatever
 * the layout. Panels only pay where the op count drops (7-bit activations: 89 vs 74).
 * What did pay, on the same layout: the loops "avx2" and "avx2-u7" as 1 row x 8
 * channels in inline asm (i8_gemm_x8), whose instruction count is the products' (GCC
 * spills the C loop's accumulators): 1.2-1.4x the C 2 x 4 loop at batch 64.
 *
 * Blocking: rows of A in chunks whose bytes and unsigned copy U stay in L2 (256 KiB),
 * blocks of 8 (C loops: 4) channels outer (their weights stay in L1 while every row of
 * the chunk passes), so the weight streams from memory once per chunk; the next block's
 * weights are prefetched while the first rows run. U (|a|, a + 64 or a ^ 0x80: the
 * unsigned operand of vpmaddubsw / vpdpbusd) is made once per chunk instead of once per
 * block of channels, and rows that are not 32-byte aligned are copied to aligned
 * scratch (numpy gives 16-byte alignment; a 32-byte load across two lines costs two).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "dsn_common.h"
#if defined(DSN_X86)
#include <immintrin.h>
#endif

/* Bytes of A per row chunk: the two planes the loops read (|a| and the sign mask, or
 * the one offset copy) then take 256 KiB of the 512 KiB L2 (64 and 192 KiB measured no
 * better at K = 768 and 3072) */
#define I8_CHUNK 131072
enum { I8_SCALAR = 0, I8_AVX2 = 1, I8_VNNI = 2 };
static const char *const I8_NAMES[] = {"scalar", "avx2", "avx512vnni"};
static int i8_isa = -1;
/* The loop the last int8_gemm ran ("scalar", "avx2", "avx2-sign", "avx2-u7",
 * "avx512vnni"): the tests check that each one is reached (dsn_py_int8_last_kernel). */
static const char *i8_last = "none";

static int i8_supported(int isa)
{
    if (isa == I8_SCALAR) return 1;
#ifdef DSN_X86
    __builtin_cpu_init();
    if (isa == I8_AVX2) return __builtin_cpu_supports("avx2");
    if (isa == I8_VNNI)
        return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2");
#endif
    return 0;
}

static int i8_current(void)
{
    if (i8_isa < 0) {
        i8_isa = I8_SCALAR;
        for (int i = I8_VNNI; i >= I8_SCALAR; i--)
            if (i8_supported(i)) { i8_isa = i; break; }
    }
    return i8_isa;
}

/* Epilogue: one [mr x 4] block of sums (s[r][j]) into C (int32) or Y (fp32). */
typedef struct {
    int32_t *C;          /* int32 output or NULL */
    float *Y;            /* fp32 output or NULL */
    const float *as, *ws, *bias;
    size_t N;            /* real output columns from this view's column 0 */
    size_t ld;           /* row stride of C / Y */
} i8_out;

/* The view of o from row m0 and column n0 on (the sub-problems of the blocked loops) */
static inline i8_out i8_out_at(const i8_out *o, size_t m0, size_t n0)
{
    i8_out r = *o;
    if (r.C) r.C += m0 * o->ld + n0;
    if (r.Y) {
        r.Y += m0 * o->ld + n0;
        r.as += m0;
        r.ws += n0;
        if (r.bias) r.bias += n0;
    }
    r.N = o->N > n0 ? o->N - n0 : 0;
    return r;
}

static inline void i8_store(const i8_out *o, size_t m, size_t n0, const int32_t *s)
{
    size_t nn = o->N - n0 < 4 ? o->N - n0 : 4;
    if (o->C) {
        for (size_t j = 0; j < nn; j++) o->C[m * o->ld + n0 + j] = s[j];
    } else {
        float a = o->as[m];
        for (size_t j = 0; j < nn; j++) {
            float v = (float)s[j] * (a * o->ws[n0 + j]);
            if (o->bias) v = v + o->bias[n0 + j];
            o->Y[m * o->ld + n0 + j] = v;
        }
    }
}

/* ------------------------------------------------------------------ scalar */

static void i8_gemm_scalar(const int8_t *A, size_t M, const int8_t *W, size_t Np, size_t Kp,
                           const i8_out *o)
{
    for (size_t n0 = 0; n0 < Np && n0 < o->N; n0 += 4) {
        for (size_t m = 0; m < M; m++) {
            int32_t s[4];
            const int8_t *a = A + m * Kp;
            for (int j = 0; j < 4; j++) {
                const int8_t *w = W + (n0 + j) * Kp;
                int32_t acc = 0;
                for (size_t k = 0; k < Kp; k++) acc += (int32_t)a[k] * (int32_t)w[k];
                s[j] = acc;
            }
            i8_store(o, m, n0, s);
        }
    }
}

#ifdef DSN_X86
/* ------------------------------------------------------------------ AVX2 */

#define I8_T2 __attribute__((target("avx2")))

I8_T2 static inline __m128i i8_hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* i8_store for the vector loops: the four sums of a full block go out with SSE (the same
 * fp32 operations in the same order as i8_store, so the results are bit-identical). */
I8_T2 static inline void i8_store4(const i8_out *o, size_t m, size_t n0, __m128i v)
{
    if (o->N - n0 < 4) {
        int32_t s[4];
        _mm_storeu_si128((__m128i *)s, v);
        i8_store(o, m, n0, s);
    } else if (o->C) {
        _mm_storeu_si128((__m128i *)(o->C + m * o->ld + n0), v);
    } else {
        __m128 sc = _mm_mul_ps(_mm_set1_ps(o->as[m]), _mm_loadu_ps(o->ws + n0));
        __m128 y = _mm_mul_ps(_mm_cvtepi32_ps(v), sc);
        if (o->bias) y = _mm_add_ps(y, _mm_loadu_ps(o->bias + n0));
        _mm_storeu_ps(o->Y + m * o->ld + n0, y);
    }
}

#define I8_DOT(acc, ua, a, wv)                                                           \
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(                                       \
              _mm256_maddubs_epi16(ua, _mm256_sign_epi8(wv, a)), ones))
#define I8_LD(p) _mm256_loadu_si256((const __m256i *)(p))
/* While the first rows of a chunk run against one block of 4 channels, the next block's
 * weights (4 rows of Kp bytes from nx) are prefetched, one cache line of each row per 64
 * bytes of K: the weights come cold from memory at every call (a model's layers run one
 * after the other), and at small batch the hardware prefetcher alone leaves the loop
 * waiting on them (13-17% of batch 8 at 768 x 3072, measured with the cache flushed). */
#define I8_PREFETCH_NEXT(nx, Kp, k)                                                      \
    do {                                                                                 \
        if ((nx) && !((k) & 63)) {                                                       \
            _mm_prefetch((const char *)(nx) + (k), _MM_HINT_T0);                         \
            _mm_prefetch((const char *)(nx) + (Kp) + (k), _MM_HINT_T0);                  \
            _mm_prefetch((const char *)(nx) + 2 * (Kp) + (k), _MM_HINT_T0);              \
            _mm_prefetch((const char *)(nx) + 3 * (Kp) + (k), _MM_HINT_T0);              \
        }                                                                                \
    } while (0)

/* The unsigned operand of the offset loops, made once per chunk of A (n a multiple of
 * 32): a + 64 (7-bit activations) or a ^ 0x80 = a + 128 (VNNI); |a| and the sign mask
 * of the 8-bit loops come from i8_prep_xor. One pass over the chunk's bytes, against
 * M x Kp x N / 32 vector steps of the GEMM that no longer redo it per block of 4
 * channels. */
enum { I8_U_ADD64 = 1, I8_U_XOR80 = 2 };

I8_T2 static void i8_prep_u(const int8_t *A, size_t n, int how, uint8_t *U)
{
    const __m256i c64 = _mm256_set1_epi8(64), c80 = _mm256_set1_epi8((char)0x80);
    for (size_t k = 0; k < n; k += 32) {
        __m256i a = I8_LD(A + k);
        a = how == I8_U_ADD64 ? _mm256_add_epi8(a, c64) : _mm256_xor_si256(a, c80);
        _mm256_storeu_si256((__m256i *)(U + k), a);
    }
}

/* The exact 8-bit loop without vpsignb: with S = (a < 0 ? 0xFF : 0) per byte,
 * w ^ S is w where a >= 0 and ~w = -w - 1 where a < 0, so (|a| (-w - 1) = a w - |a|)
 *     vpmaddubsw(|a|, w ^ S) summed over k = sum(a * w) - sum(|a| over the a < 0),
 * and that last sum depends on the row only (neg[m], made with U and S once per chunk):
 * the epilogue adds it back. vpxor in place of vpsignb: 0-10% faster (median ~4%,
 * 768 x 3072 and 3072 x 768 at batch 8 and 64), and any weight is fine. Exact while no
 * activation is -128: |a| <= 127 and |w ^ S| <= 128 keep every int16 pair sum within
 * 2 * 127 * 128 = 32512. A chunk holding -128 runs the vpsignb loop (i8_gemm_avx2,
 * below; i8_prep_xor reports it). */
#define I8_DOTX(acc, u, s, wv)                                                           \
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(                                       \
              _mm256_maddubs_epi16(u, _mm256_xor_si256(wv, s)), ones))

/* Every SIMD loop, one blocking: 2 rows x 4 output channels per block, K inner, the
 * sums of each (row, channel) pair in one register (8 lanes, added up once at the end).
 * U holds the unsigned operand (|a|, a + 64 or a ^ 0x80) and X the rows' second one
 * (S for vpxor, A for vpsignb; unused by the offset loops, whose DOT ignores it), made
 * once per chunk (i8_prep_xor / i8_prep_u), not once per block of channels: the loop
 * spends its vector ops on the products only. Blocks of 4 channels are outer: their
 * 4 x Kp weights stay in L1 while every row of the A chunk (sized by the caller to stay
 * in L2) passes. The epilogue adds neg[m] (NULL: 0) and subtracts rowsum[n] << SHIFT
 * (NULL: 0), the offset times the weights of the offset loops. */
#define I8_KERNEL(NAME, TARGET, DOT, SHIFT)                                                 \
TARGET static void NAME(const uint8_t *U, const int8_t *X, const int32_t *neg,              \
                        const int32_t *rowsum, size_t M, const int8_t *W, size_t Np,        \
                        size_t Kp, const i8_out *o)                                         \
{                                                                                           \
    const __m256i ones = _mm256_set1_epi16(1);                                              \
    (void)ones;                                                                             \
    for (size_t n0 = 0; n0 < Np && n0 < o->N; n0 += 4) {                                    \
        const int8_t *w0 = W + n0 * Kp, *w1 = w0 + Kp, *w2 = w1 + Kp, *w3 = w2 + Kp;        \
        __m128i comp = rowsum ? _mm_slli_epi32(_mm_loadu_si128((const __m128i *)(rowsum     \
                                               + n0)), SHIFT) : _mm_setzero_si128();        \
        size_t m = 0;                                                                       \
        for (; m + 2 <= M; m += 2) {                                                        \
            const uint8_t *up = U + m * Kp, *uq = up + Kp;                                  \
            const int8_t *xp = X + m * Kp, *xq = xp + Kp;                                   \
            const int8_t *nx = m == 0 && n0 + 4 < Np ? w0 + 4 * Kp : NULL;                  \
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;          \
            __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;                             \
            for (size_t k = 0; k < Kp; k += 32) {                                           \
                I8_PREFETCH_NEXT(nx, Kp, k);                                                \
                __m256i ua = I8_LD(up + k), ub = I8_LD(uq + k);                             \
                __m256i xa = I8_LD(xp + k), xb = I8_LD(xq + k);                             \
                __m256i v = I8_LD(w0 + k);                                                  \
                DOT(c00, ua, xa, v); DOT(c10, ub, xb, v);                                   \
                v = I8_LD(w1 + k);                                                          \
                DOT(c01, ua, xa, v); DOT(c11, ub, xb, v);                                   \
                v = I8_LD(w2 + k);                                                          \
                DOT(c02, ua, xa, v); DOT(c12, ub, xb, v);                                   \
                v = I8_LD(w3 + k);                                                          \
                DOT(c03, ua, xa, v); DOT(c13, ub, xb, v);                                   \
            }                                                                               \
            i8_store4(o, m, n0, _mm_sub_epi32(_mm_add_epi32(i8_hsum4(c00, c01, c02, c03),   \
                      _mm_set1_epi32(neg ? neg[m] : 0)), comp));                            \
            i8_store4(o, m + 1, n0, _mm_sub_epi32(_mm_add_epi32(                            \
                      i8_hsum4(c10, c11, c12, c13), _mm_set1_epi32(neg ? neg[m + 1] : 0)),  \
                      comp));                                                               \
        }                                                                                   \
        for (; m < M; m++) {                                                                \
            const uint8_t *up = U + m * Kp;                                                 \
            const int8_t *xp = X + m * Kp;                                                  \
            const int8_t *nx = m == 0 && n0 + 4 < Np ? w0 + 4 * Kp : NULL;                  \
            __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;                 \
            for (size_t k = 0; k < Kp; k += 32) {                                           \
                I8_PREFETCH_NEXT(nx, Kp, k);                                                \
                __m256i ua = I8_LD(up + k), xa = I8_LD(xp + k);                             \
                DOT(c0, ua, xa, I8_LD(w0 + k));                                             \
                DOT(c1, ua, xa, I8_LD(w1 + k));                                             \
                DOT(c2, ua, xa, I8_LD(w2 + k));                                             \
                DOT(c3, ua, xa, I8_LD(w3 + k));                                             \
            }                                                                               \
            i8_store4(o, m, n0, _mm_sub_epi32(_mm_add_epi32(i8_hsum4(c0, c1, c2, c3),       \
                      _mm_set1_epi32(neg ? neg[m] : 0)), comp));                            \
        }                                                                                   \
    }                                                                                       \
}

I8_KERNEL(i8_gemm_avx2x, I8_T2, I8_DOTX, 0)
/* vpsignb: maddubs(|a|, sign(w, a)) = a * w ("avx2-sign"; |a| <= 128, |w| <= 127) */
I8_KERNEL(i8_gemm_avx2, I8_T2, I8_DOT, 0)

/* U = |a|, S = (a < 0 ? 0xFF : 0) and neg[m] = sum of |a| over the a < 0 of row m, for
 * M rows of Kp bytes; returns 0 when some a is -128 (the xor loop would not be exact). */
I8_T2 static int i8_prep_xor(const int8_t *A, size_t M, size_t Kp, uint8_t *U, uint8_t *S,
                             int32_t *neg)
{
    const __m256i zero = _mm256_setzero_si256(), m128 = _mm256_set1_epi8((char)0x80);
    __m256i bad = zero;
    for (size_t m = 0; m < M; m++) {
        __m256i tot = zero;
        for (size_t k = m * Kp; k < (m + 1) * Kp; k += 32) {
            __m256i a = I8_LD(A + k);
            __m256i sg = _mm256_cmpgt_epi8(zero, a), u = _mm256_abs_epi8(a);
            bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(a, m128));
            _mm256_storeu_si256((__m256i *)(U + k), u);
            _mm256_storeu_si256((__m256i *)(S + k), sg);
            /* vpsadbw: four 64-bit sums of 8 bytes each (|a| <= 128, Kp < 2^24: no wrap) */
            tot = _mm256_add_epi64(tot, _mm256_sad_epu8(_mm256_and_si256(u, sg), zero));
        }
        int64_t t[4];
        _mm256_storeu_si256((__m256i *)t, tot);
        neg[m] = (int32_t)(t[0] + t[1] + t[2] + t[3]);
    }
    return _mm256_testz_si256(bad, bad);
}

/* 7-bit activations (every a in [-64, 63], what reduce_range quantization produces):
 * u = a + 64 is in [0, 127], so vpmaddubsw(u, w) pairs stay within 2 * 127 * 128 = 32512
 * whatever the weights, and the sign step of the 8-bit loop is not needed (one
 * instruction of four per 32 products, fbgemm's reduce_range loop); the offset comes
 * back out as 64 * rowsum(w). Chosen per call after checking A's range, so it is exact. */
#define I8_DOT7(acc, u, x, wv) \
    ((void)(x), acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, wv), ones)))

I8_KERNEL(i8_gemm_avx2_u7, I8_T2, I8_DOT7, 6)

/* ------------------------------------------- 1 row x 8 channels, inline asm */
/* The exact 8-bit loop and the 7-bit one again, as 1 row x 8 channels per block: the
 * row's operands (|a| and S, or a + 64) sit in registers, each of the 8 channels' 32
 * weight bytes is a memory operand of the first op (vpxor, or vpmaddubsw for 7 bits),
 * so a step of 32 bytes of K is 2 (1) loads and 8 x 4 (8 x 3) vector ops, with the
 * 8 sums in ymm0-7, the unsigned operand in ymm8, S in ymm9 and the ones in ymm15.
 * Written in asm because GCC's allocation of the same intrinsics spills accumulators
 * to the stack and adds a register copy per product (60 instructions a step for the
 * 2 x 4 C loop against 39 here); measured 15-30% more MACs per ns than the 2 x 4 loop
 * at 64 x 768 x 3072 and 64 x 3072 x 768 (standalone, data in cache). The variants
 * PF1 / PF8 also prefetch (i8_gemm_x8 says what). x86-64 only (15 general registers);
 * elsewhere the C loops run. */
#if defined(__x86_64__) && !defined(I8_NO_ASM)   /* -DI8_NO_ASM: the C loops only */
#define I8_ASM 1
/* Prefetch distance in blocks of 8 channels (-D to measure: 2 measured 7% faster at
 * batch 1 and 3-8% slower at batch 8 and 64, weights cold) */
#ifndef I8_PF_BLOCKS
#define I8_PF_BLOCKS 1
#endif
#define I8_A_DOTX(mem, t, acc)                                                          \
    "vpxor " mem ", %%ymm9, " t "\n\t"                                                  \
    "vpmaddubsw " t ", %%ymm8, " t "\n\t"                                               \
    "vpmaddwd %%ymm15, " t ", " t "\n\t"                                                \
    "vpaddd " t ", " acc ", " acc "\n\t"
#define I8_A_DOT7(mem, t, acc)                                                          \
    "vpmaddubsw " mem ", %%ymm8, " t "\n\t"                                             \
    "vpmaddwd %%ymm15, " t ", " t "\n\t"                                                \
    "vpaddd " t ", " acc ", " acc "\n\t"
#define I8_A_LOADX "vmovdqa (%[up],%[k]), %%ymm8\n\t vmovdqa (%[xp],%[k]), %%ymm9\n\t"
#define I8_A_LOAD7 "vmovdqa (%[up],%[k]), %%ymm8\n\t"
/* On even steps (once per cache line of each row), prefetch at p0 + off: PF8 the 8
 * rows of a block of channels, PF1 one row */
#define I8_A_PF1                                                                        \
    "test $32, %[k]\n\t jnz 2f\n\t"                                                     \
    "prefetcht0 (%[p0],%[K8],1)\n\t"                                                    \
    "2:\n\t"
#define I8_A_PF8                                                                        \
    "test $32, %[k]\n\t jnz 2f\n\t"                                                     \
    "prefetcht0 (%[p0],%[K8],1)\n\t prefetcht0 (%[p4],%[K8],1)\n\t"                     \
    "lea (%[p0],%[K8],1), %[t]\n\t"                                                     \
    "prefetcht0 (%[t],%[K],1)\n\t prefetcht0 (%[t],%[K],2)\n\t"                         \
    "prefetcht0 (%[t],%[K3],1)\n\t"                                                     \
    "lea (%[p4],%[K8],1), %[t]\n\t"                                                     \
    "prefetcht0 (%[t],%[K],1)\n\t prefetcht0 (%[t],%[K],2)\n\t"                         \
    "prefetcht0 (%[t],%[K3],1)\n\t"                                                     \
    "2:\n\t"
/* The sums of a0 .. a3 in the low 4 lanes of x0 (i8_hsum4 in registers; x0, x1: the
 * low halves of a0, a1): the 8 sums leave the asm as 8 int32, not 64 */
#define I8_A_HSUM4(a0, a1, a2, a3, x0, x1)                                               \
    "vphaddd " a1 ", " a0 ", " a0 "\n\t vphaddd " a3 ", " a2 ", " a2 "\n\t"              \
    "vphaddd " a2 ", " a0 ", " a0 "\n\t vextracti128 $1, " a0 ", " x1 "\n\t"             \
    "vpaddd " x1 ", " x0 ", " x0 "\n\t"
/* One row (up, xp: 32-byte aligned, Kp bytes) against channels w .. w + 7 Kp: the 8
 * int32 sums to out[8]; PF: also prefetch from w + off on */
#define I8_UKR(NAME, LOAD, DOT, PF)                                                     \
static void NAME(const uint8_t *up, const int8_t *xp, const int8_t *w, size_t Kp,        \
                 size_t off, int32_t *out)                                              \
{                                                                                       \
    const int8_t *p0 = w, *p4 = w + 4 * Kp;                                             \
    size_t K3 = 3 * Kp, K8 = off, k = 0;                                                \
    const int8_t *t = NULL;                                                             \
    (void)xp;                                                                           \
    __asm__ volatile(                                                                   \
        "vpcmpeqw %%ymm15, %%ymm15, %%ymm15\n\t vpsrlw $15, %%ymm15, %%ymm15\n\t"       \
        "vpxor %%xmm0, %%xmm0, %%xmm0\n\t vpxor %%xmm1, %%xmm1, %%xmm1\n\t"             \
        "vpxor %%xmm2, %%xmm2, %%xmm2\n\t vpxor %%xmm3, %%xmm3, %%xmm3\n\t"             \
        "vpxor %%xmm4, %%xmm4, %%xmm4\n\t vpxor %%xmm5, %%xmm5, %%xmm5\n\t"             \
        "vpxor %%xmm6, %%xmm6, %%xmm6\n\t vpxor %%xmm7, %%xmm7, %%xmm7\n\t"             \
        "1:\n\t"                                                                        \
        PF                                                                              \
        LOAD                                                                            \
        DOT("(%[p0])", "%%ymm10", "%%ymm0")                                             \
        DOT("(%[p0],%[K],1)", "%%ymm11", "%%ymm1")                                      \
        DOT("(%[p0],%[K],2)", "%%ymm12", "%%ymm2")                                      \
        DOT("(%[p0],%[K3],1)", "%%ymm13", "%%ymm3")                                     \
        DOT("(%[p4])", "%%ymm10", "%%ymm4")                                             \
        DOT("(%[p4],%[K],1)", "%%ymm11", "%%ymm5")                                      \
        DOT("(%[p4],%[K],2)", "%%ymm12", "%%ymm6")                                      \
        DOT("(%[p4],%[K3],1)", "%%ymm13", "%%ymm7")                                     \
        "add $32, %[k]\n\t add $32, %[p0]\n\t add $32, %[p4]\n\t"                       \
        "cmp %[K], %[k]\n\t jb 1b\n\t"                                                  \
        I8_A_HSUM4("%%ymm0", "%%ymm1", "%%ymm2", "%%ymm3", "%%xmm0", "%%xmm1")           \
        I8_A_HSUM4("%%ymm4", "%%ymm5", "%%ymm6", "%%ymm7", "%%xmm4", "%%xmm5")           \
        "vmovdqu %%xmm0, (%[o])\n\t vmovdqu %%xmm4, 16(%[o])\n\t"                       \
        "vzeroupper\n\t"  /* GCC does not know the asm dirtied the upper halves */      \
        : [k] "+r"(k), [p0] "+r"(p0), [p4] "+r"(p4), [t] "+r"(t)                        \
        : [up] "r"(up), [xp] "r"(xp), [K] "r"(Kp), [K3] "r"(K3), [K8] "r"(K8),          \
          [o] "r"(out)                                                                  \
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",       \
          "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm15");         \
}

I8_UKR(i8_ukr_xor, I8_A_LOADX, I8_A_DOTX, "")
I8_UKR(i8_ukr_xor_pf1, I8_A_LOADX, I8_A_DOTX, I8_A_PF1)
I8_UKR(i8_ukr_xor_pf8, I8_A_LOADX, I8_A_DOTX, I8_A_PF8)
I8_UKR(i8_ukr_u7, I8_A_LOAD7, I8_A_DOT7, "")
I8_UKR(i8_ukr_u7_pf1, I8_A_LOAD7, I8_A_DOT7, I8_A_PF1)
I8_UKR(i8_ukr_u7_pf8, I8_A_LOAD7, I8_A_DOT7, I8_A_PF8)
#endif

typedef void (*i8_ukr_fn)(const uint8_t *, const int8_t *, const int8_t *, size_t, size_t,
                          int32_t *);
/* one asm loop without prefetch, with one row's and with a block's */
typedef struct { i8_ukr_fn plain, pf1, pf8; } i8_ukrs;
typedef void (*i8_kernel_fn)(const uint8_t *, const int8_t *, const int32_t *,
                             const int32_t *, size_t, const int8_t *, size_t, size_t,
                             const i8_out *);

/* The blocks of 8 channels of an I8_KERNEL problem through the asm row kernels, the
 * epilogue of I8_KERNEL (+ neg[m], - rowsum << shift); a last block of 4 channels
 * (Np % 8 == 4) and builds without the asm run the C kernel `tail`. While a block runs,
 * the block I8_PF_BLOCKS on is prefetched: with 8 rows or more, rows 0-7 prefetch one
 * of its rows each (a burst of the 8 rows x Kp bytes in the first row alone waits on
 * the memory system's queue: batch 8, weights cold, 1.2-1.5x slower at 768 x 3072 and
 * 3072 x 768); with fewer, the first row prefetches the whole block. */
I8_T2 static void i8_gemm_x8(const i8_ukrs *ukr, i8_kernel_fn tail, int shift,
                             const uint8_t *U, const int8_t *X, const int32_t *neg,
                             const int32_t *rowsum, size_t M, const int8_t *W, size_t Np,
                             size_t Kp, const i8_out *o)
{
    size_t n0 = 0;
#ifdef I8_ASM
    int32_t acc[8];
    const __m128i sh = _mm_cvtsi32_si128(shift);
    for (; Kp && n0 + 8 <= Np && n0 < o->N; n0 += 8) {   /* (the asm loop runs once at least) */
        const int8_t *w = W + n0 * Kp;
        __m128i c0 = _mm_setzero_si128(), c1 = c0;
        if (rowsum) {
            c0 = _mm_sll_epi32(_mm_loadu_si128((const __m128i *)(rowsum + n0)), sh);
            c1 = _mm_sll_epi32(_mm_loadu_si128((const __m128i *)(rowsum + n0 + 4)), sh);
        }
        for (size_t m = 0; m < M; m++) {
            size_t off = 8 * I8_PF_BLOCKS * Kp;
            i8_ukr_fn f = ukr->plain;
            if (n0 + 8 * (I8_PF_BLOCKS + 1) <= Np && m < 8) {
                if (M >= 8) { f = ukr->pf1; off += m * Kp; }
                else if (m == 0) f = ukr->pf8;
            }
            f(U + m * Kp, X + m * Kp, w, Kp, off, acc);
            __m128i ng = _mm_set1_epi32(neg ? neg[m] : 0);
            i8_store4(o, m, n0, _mm_sub_epi32(_mm_add_epi32(
                          _mm_loadu_si128((const __m128i *)acc), ng), c0));
            i8_store4(o, m, n0 + 4, _mm_sub_epi32(_mm_add_epi32(
                          _mm_loadu_si128((const __m128i *)(acc + 4)), ng), c1));
        }
    }
#else
    (void)ukr; (void)shift;
#endif
    if (n0 < Np && n0 < o->N) {
        i8_out ot = i8_out_at(o, 0, n0);
        tail(U, X, neg, rowsum ? rowsum + n0 : NULL, M, W + n0 * Kp, Np - n0, Kp, &ot);
    }
}

#ifdef I8_ASM
static const i8_ukrs i8_ukrs_xor = {i8_ukr_xor, i8_ukr_xor_pf1, i8_ukr_xor_pf8};
static const i8_ukrs i8_ukrs_u7 = {i8_ukr_u7, i8_ukr_u7_pf1, i8_ukr_u7_pf8};
#else
static const i8_ukrs i8_ukrs_xor = {NULL, NULL, NULL}, i8_ukrs_u7 = {NULL, NULL, NULL};
#endif
/* "avx2" (8-bit, vpxor) and "avx2-u7" (7-bit) through the 1 x 8 asm kernels */
I8_T2 static void i8_gemm_xor_x8(const uint8_t *U, const int8_t *X, const int32_t *neg,
                                 const int32_t *rowsum, size_t M, const int8_t *W, size_t Np,
                                 size_t Kp, const i8_out *o)
{
    i8_gemm_x8(&i8_ukrs_xor, i8_gemm_avx2x, 0, U, X, neg, rowsum, M, W, Np, Kp, o);
}

I8_T2 static void i8_gemm_u7_x8(const uint8_t *U, const int8_t *X, const int32_t *neg,
                                const int32_t *rowsum, size_t M, const int8_t *W, size_t Np,
                                size_t Kp, const i8_out *o)
{
    i8_gemm_x8(&i8_ukrs_u7, i8_gemm_avx2_u7, 6, U, X, neg, rowsum, M, W, Np, Kp, o);
}

/* Does every byte of A [n bytes] lie in [-64, 63]? (one pass, ~1/N of the GEMM's work) */
I8_T2 static int i8_fits7(const int8_t *A, size_t n)
{
    __m256i lo = _mm256_setzero_si256(), hi = lo;
    size_t k = 0;
    for (; k + 32 <= n; k += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(A + k));
        lo = _mm256_min_epi8(lo, v);
        hi = _mm256_max_epi8(hi, v);
    }
    int8_t l[32], h[32];
    _mm256_storeu_si256((__m256i *)l, lo);
    _mm256_storeu_si256((__m256i *)h, hi);
    int ok = 1;
    for (int j = 0; j < 32; j++) ok &= l[j] >= -64 && h[j] <= 63;
    for (; k < n; k++) ok &= A[k] >= -64 && A[k] <= 63;
    return ok;
}

/* ------------------------------------------------------- AVX512-VNNI (256-bit) */

#define I8_TV __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")))

/* a ^ 0x80 = a + 128: unsigned for vpdpbusd, which sums four u8 x s8 products straight
 * into int32 (no saturation) */
#define I8_DOTV(acc, u, x, wv) ((void)(x), acc = _mm256_dpbusd_epi32(acc, u, wv))

I8_KERNEL(i8_gemm_vnni, I8_TV, I8_DOTV, 7)
#endif

/* ------------------------------------------------------------ Python layer */

static int i8_buf(PyObject *obj, Py_buffer *v, const char *name, char fmt, Py_ssize_t isz,
                  Py_ssize_t n, int writable)
{
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                                       (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int ok = v->itemsize == isz && (f[0] == fmt || (fmt == 'i' && f[0] == 'l' && isz == sizeof(long)))
             && f[1] == '\0';
    if (!ok || v->len / isz != n) {
        PyErr_Format(PyExc_ValueError, "int8 kernel: argument '%s' must hold %zd items of "
                     "format '%c', got %zd of format '%s'", name, n, fmt, v->len / v->itemsize,
                     v->format ? v->format : "B");
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* int8_gemm(A, M, W, rowsum, Np, Kp, N, full_range, out_i32 | None,
 *           a_scale, w_scale, bias | None, out_f32 | None) */
PyObject *dsn_py_int8_gemm(PyObject *self, PyObject *args)
{
    PyObject *oA, *oW, *oR, *oC, *oas, *ows, *ob, *oY;
    Py_ssize_t M, Np, Kp, N;
    int full;
    if (!PyArg_ParseTuple(args, "OnOOnnnpOOOOO:int8_gemm", &oA, &M, &oW, &oR, &Np, &Kp, &N,
                          &full, &oC, &oas, &ows, &ob, &oY))
        return NULL;
    if (M < 0 || Np < 0 || Kp < 0 || N < 0 || Np % 4 || Kp % 32 || N > Np) {
        PyErr_Format(PyExc_ValueError, "int8_gemm(): bad sizes M=%zd Np=%zd Kp=%zd N=%zd "
                     "(Np %% 4 == 0, Kp %% 32 == 0, N <= Np)", M, Np, Kp, N);
        return NULL;
    }
    if ((oC == Py_None) == (oY == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "int8_gemm(): pass exactly one of out_i32 / out_f32");
        return NULL;
    }
    Py_buffer bA, bW, bR, bC = {0}, bas = {0}, bws = {0}, bb = {0}, bY = {0};
    int hA = 0, hW = 0, hR = 0, hC = 0, has = 0, hws = 0, hb = 0, hY = 0;
    PyObject *ret = NULL;
    if (i8_buf(oA, &bA, "A", 'b', 1, M * Kp, 0) < 0) goto done;
    hA = 1;
    if (i8_buf(oW, &bW, "W", 'b', 1, Np * Kp, 0) < 0) goto done;
    hW = 1;
    if (i8_buf(oR, &bR, "rowsum", 'i', 4, Np, 0) < 0) goto done;
    hR = 1;
    if (oC != Py_None) {
        if (i8_buf(oC, &bC, "out_i32", 'i', 4, M * N, 1) < 0) goto done;
        hC = 1;
    } else {
        if (i8_buf(oas, &bas, "a_scale", 'f', 4, M, 0) < 0) goto done;
        has = 1;
        if (i8_buf(ows, &bws, "w_scale", 'f', 4, N, 0) < 0) goto done;
        hws = 1;
        if (ob != Py_None) { if (i8_buf(ob, &bb, "bias", 'f', 4, N, 0) < 0) goto done;
            hb = 1;
        }
        if (i8_buf(oY, &bY, "out_f32", 'f', 4, M * N, 1) < 0) goto done;
        hY = 1;
    }
    i8_out o = {hC ? (int32_t *)bC.buf : NULL, hY ? (float *)bY.buf : NULL,
                has ? (const float *)bas.buf : NULL, hws ? (const float *)bws.buf : NULL,
                hb ? (const float *)bb.buf : NULL, (size_t)N, (size_t)N};
    int isa = i8_current();
    /* Rows of A in chunks whose planes (2 x mc x Kp bytes) stay in L2 while the weights
     * of one block of 8 (or 4) channels sit in L1 and every row of the chunk passes: the
     * weight streams from memory once per chunk (once in all for M x Kp <= 128 KiB:
     * batch 64 at K = 2048). */
    size_t mc = Kp ? (size_t)(I8_CHUNK / Kp) : 2;
    mc = mc < 2 ? 2 : mc & ~(size_t)1;
    if (mc > (size_t)M) mc = (size_t)M;
    enum { L_SCALAR, L_AVX2, L_U7, L_VNNI } loop = L_SCALAR;
    uint8_t *U = NULL;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
#ifdef DSN_X86
    if (isa == I8_VNNI) loop = L_VNNI;
    else if (isa == I8_AVX2 && i8_fits7((const int8_t *)bA.buf, (size_t)(M * Kp))) loop = L_U7;
    else if (isa == I8_AVX2) loop = L_AVX2;
    /* scratch, 64-byte aligned (a 32-byte load across two cache lines costs two): U, then
     * S (the xor loop) or an aligned copy of the rows (the vpsignb loop: numpy only
     * promises 16-byte alignment), then neg (int32 per row) */
    size_t plane = mc * (size_t)Kp;
    if (loop != L_SCALAR && M > 0 && Kp > 0) {
        size_t bytes = 2 * plane + mc * sizeof(int32_t);
        U = (uint8_t *)aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        nomem = U == NULL;
    }
#endif
    for (size_t m0 = 0; m0 < (size_t)M && !nomem; m0 += mc) {
        size_t mm = (size_t)M - m0 < mc ? (size_t)M - m0 : mc;
        const int8_t *Am = (const int8_t *)bA.buf + m0 * (size_t)Kp;
        i8_out oc = i8_out_at(&o, m0, 0);
        int done_chunk = 0;
#ifdef DSN_X86
        if (loop == L_VNNI || loop == L_U7) {
            /* both take unsigned activations, made once per chunk: a ^ 0x80 for VNNI's
             * u8 x s8 dot (the row sums compensate), a + 64 for the 7-bit AVX2 loop */
            int vnni = loop == L_VNNI;
            i8_prep_u(Am, mm * (size_t)Kp, vnni ? I8_U_XOR80 : I8_U_ADD64, U);
            (vnni ? i8_gemm_vnni : i8_gemm_u7_x8)(U, (const int8_t *)U, NULL, bR.buf, mm,
                                                  bW.buf, (size_t)Np, (size_t)Kp, &oc);
            i8_last = vnni ? "avx512vnni" : "avx2-u7";
            done_chunk = 1;
        } else if (loop == L_AVX2) {
            int32_t *neg = (int32_t *)(U + 2 * plane);
            if (i8_prep_xor(Am, mm, (size_t)Kp, U, U + plane, neg)) {
                i8_gemm_xor_x8(U, (const int8_t *)(U + plane), neg, NULL, mm, bW.buf,
                               (size_t)Np, (size_t)Kp, &oc);
                i8_last = "avx2";
                done_chunk = 1;
            } else if (!full) {          /* a -128 activation: the vpsignb loop (U = |A|) */
                if ((uintptr_t)Am & 31) {
                    memcpy(U + plane, Am, mm * (size_t)Kp);
                    Am = (const int8_t *)(U + plane);
                }
                i8_gemm_avx2(U, Am, NULL, NULL, mm, bW.buf, (size_t)Np, (size_t)Kp, &oc);
                i8_last = "avx2-sign";
                done_chunk = 1;
            }
        }
#endif
        if (!done_chunk) {
            i8_gemm_scalar(Am, mm, bW.buf, (size_t)Np, (size_t)Kp, &oc);
            i8_last = "scalar";
        }
    }
    free(U);
    Py_END_ALLOW_THREADS
    (void)isa;
    (void)full;
    (void)loop;
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    ret = Py_None; Py_INCREF(ret);
done:
    if (hA) PyBuffer_Release(&bA);
    if (hW) PyBuffer_Release(&bW);
    if (hR) PyBuffer_Release(&bR);
    if (hC) PyBuffer_Release(&bC);
    if (has) PyBuffer_Release(&bas);
    if (hws) PyBuffer_Release(&bws);
    if (hb) PyBuffer_Release(&bb);
    if (hY) PyBuffer_Release(&bY);
    return ret;
}

/* ---------------------------------------------- dynamic activation quantization */
/* Per row: amax = max |x| (NaN ignored), then q = clamp(rint(x * inv), -qmax, qmax) with NaN
 * -> 0. The AVX2 versions do the very same fp32 operations (multiply, round to nearest
 * even: the default MXCSR mode nearbyintf uses too, clamp), so every path is bit-identical. */

static float i8_amax_scalar(const float *r, size_t K)
{
    float amax = 0.0f;
    for (size_t k = 0; k < K; k++) { float a = fabsf(r[k]); amax = a > amax ? a : amax; }
    return amax;
}

static inline int8_t i8_q1(float x, float inv, float qmax)
{
    float v = nearbyintf(x * inv);
    if (v != v) return 0;
    v = v > qmax ? qmax : (v < -qmax ? -qmax : v);
    return (int8_t)v;
}

static void i8_quant_scalar(const float *r, size_t K, float inv, float qmax, int8_t *d)
{
    for (size_t k = 0; k < K; k++) d[k] = i8_q1(r[k], inv, qmax);
}

#ifdef DSN_X86
I8_T2 static float i8_amax_avx2(const float *r, size_t K)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m0 = _mm256_setzero_ps(), m1 = m0;
    size_t k = 0;
    /* max_ps(x, acc) returns acc when x is NaN: NaN ignored, as in the scalar loop */
    for (; k + 16 <= K; k += 16) {
        m0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(r + k), absmask), m0);
        m1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(r + k + 8), absmask), m1);
    }
    m0 = _mm256_max_ps(m0, m1);
    float t[8];
    _mm256_storeu_ps(t, m0);
    float amax = i8_amax_scalar(r + k, K - k);
    for (int j = 0; j < 8; j++) amax = t[j] > amax ? t[j] : amax;
    return amax;
}

I8_T2 static inline __m256i i8_q8(const float *x, __m256 inv, __m256 lo, __m256 hi)
{
    __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), inv),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 ordered = _mm256_cmp_ps(v, v, _CMP_ORD_Q);           /* NaN -> 0 */
    v = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(v, lo), hi), ordered);
    return _mm256_cvtps_epi32(v);
}

I8_T2 static void i8_quant_avx2(const float *r, size_t K, float inv, float qmax, int8_t *d)
{
    const __m256 vi = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-qmax), hi = _mm256_set1_ps(qmax);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i a = _mm256_packs_epi32(i8_q8(r + k, vi, lo, hi), i8_q8(r + k + 8, vi, lo, hi));
        __m256i b = _mm256_packs_epi32(i8_q8(r + k + 16, vi, lo, hi),
                                       i8_q8(r + k + 24, vi, lo, hi));
        __m256i q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), order);
        _mm256_storeu_si256((__m256i *)(d + k), q);
    }
    i8_quant_scalar(r + k, K - k, inv, qmax, d + k);
}
#endif

/* max |x| of a row of K floats (NaN ignored), with AVX2 when vec */
static float i8_amax(int vec, const float *r, size_t K)
{
#ifdef DSN_X86
    if (vec) return i8_amax_avx2(r, K);
#endif
    (void)vec;
    return i8_amax_scalar(r, K);
}

/* int8_quantize_rows(x f32 [M*K], M, K, Kp, per_tensor, out i8 [M*Kp], scales f32 [M]
 *                    [, qmax = 127]):
 * symmetric, scale = amax / qmax (1 when amax is 0), q = clamp(rint(x * (1 / scale)),
 * -qmax, qmax), zero padding to Kp; exactly the numpy fallback's fp32 operations.
 * qmax 63 (reduce_range) gives 7-bit values, which int8_gemm runs on its faster loop. */
PyObject *dsn_py_int8_quantize_rows(PyObject *self, PyObject *args)
{
    PyObject *ox, *oq, *os;
    Py_ssize_t M, K, Kp;
    int per_tensor, iqmax = 127;
    if (!PyArg_ParseTuple(args, "OnnnpOO|i:int8_quantize_rows", &ox, &M, &K, &Kp, &per_tensor,
                          &oq, &os, &iqmax))
        return NULL;
    if (iqmax < 1 || iqmax > 127) {
        PyErr_Format(PyExc_ValueError, "int8_quantize_rows(): qmax must be in [1, 127], got %d",
                     iqmax);
        return NULL;
    }
    const float qmax = (float)iqmax;
    if (M < 0 || K < 0 || Kp < K) {
        PyErr_SetString(PyExc_ValueError, "int8_quantize_rows(): bad sizes");
        return NULL;
    }
    Py_buffer bx, bq, bs;
    if (i8_buf(ox, &bx, "x", 'f', 4, M * K, 0) < 0) return NULL;
    if (i8_buf(oq, &bq, "out", 'b', 1, M * Kp, 1) < 0) { PyBuffer_Release(&bx); return NULL; }
    if (i8_buf(os, &bs, "scales", 'f', 4, M, 1) < 0) {
        PyBuffer_Release(&bx); PyBuffer_Release(&bq); return NULL;
    }
    const float *x = bx.buf;
    int8_t *q = bq.buf;
    float *sc = bs.buf;
    int vec = i8_current() != I8_SCALAR;
    (void)vec;
    Py_BEGIN_ALLOW_THREADS
    /* per tensor: every row's max first; per row: each row's max right before its
     * quantization, while the row is still in L1 (one pass over the input, not two) */
    float tmax = 0.0f;
    for (Py_ssize_t m = 0; m < M && per_tensor; m++) {
        float amax = i8_amax(vec, x + m * K, (size_t)K);
        tmax = amax > tmax ? amax : tmax;
    }
    for (Py_ssize_t m = 0; m < M; m++) {
        float amax = per_tensor ? tmax : i8_amax(vec, x + m * K, (size_t)K);
        float s = amax > 0.0f ? amax / qmax : 1.0f;
        float inv = 1.0f / s;
        const float *r = x + m * K;
        int8_t *d = q + m * Kp;
#ifdef DSN_X86
        if (vec) i8_quant_avx2(r, (size_t)K, inv, qmax, d);
        else
#endif
            i8_quant_scalar(r, (size_t)K, inv, qmax, d);
        memset(d + K, 0, (size_t)(Kp - K));
        sc[m] = s;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bx); PyBuffer_Release(&bq); PyBuffer_Release(&bs);
    Py_RETURN_NONE;
}

PyObject *dsn_py_int8_isa(PyObject *self, PyObject *args)
{
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z:int8_isa", &name)) return NULL;
    if (name) {
        for (int i = 0; i <= I8_VNNI; i++) {
            if (strcmp(I8_NAMES[i], name) == 0) {
                if (!i8_supported(i)) {
                    PyErr_Format(PyExc_ValueError, "int8 instruction set '%s' is not supported "
                                 "by this CPU", name);
                    return NULL;
                }
                i8_isa = i;
                return PyUnicode_FromString(name);
            }
        }
        PyErr_Format(PyExc_ValueError, "unknown int8 instruction set '%s', expected "
                     "'avx512vnni', 'avx2' or 'scalar'", name);
        return NULL;
    }
    return PyUnicode_FromString(I8_NAMES[i8_current()]);
}

PyObject *dsn_py_int8_last_kernel(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(i8_last);
}

PyObject *dsn_py_int8_isa_list(PyObject *self, PyObject *noargs)
{
    PyObject *lst = PyList_New(0);
    if (!lst) return NULL;
    for (int i = I8_VNNI; i >= I8_SCALAR; i--) {
        if (!i8_supported(i)) continue;
        PyObject *s = PyUnicode_FromString(I8_NAMES[i]);
        if (!s || PyList_Append(lst, s) < 0) { Py_XDECREF(s); Py_DECREF(lst); return NULL; }
        Py_DECREF(s);
    }
    return lst;
}

/* ------------------------------------------------ weight-only int8 / int4 GEMV */
/* y[m, n] = sum_g scale[n, g] * sum_{k in g} x[m, k] * q[n, k] + bias[n]; x fp32 [M, Kg],
 * q int8 [N, Kg] or int4 packed [N, Kg / 2] (element 2i low nibble, 2i + 1 high). */

static inline int8_t i4_at(const uint8_t *p, size_t k)
{
    int v = (k & 1) ? (p[k >> 1] >> 4) : (p[k >> 1] & 0xF);
    return (int8_t)(v > 7 ? v - 16 : v);
}

static void wq_scalar(const float *x, size_t M, const void *q, const float *sc, size_t N,
                      size_t Kg, size_t gs, int bits, const float *bias, float *y)
{
    size_t G = Kg / gs;
    for (size_t n = 0; n < N; n++) {
        for (size_t m = 0; m < M; m++) {
            const float *xr = x + m * Kg;
            float tot = 0.0f;
            for (size_t g = 0; g < G; g++) {
                float acc = 0.0f;
                for (size_t k = g * gs; k < (g + 1) * gs; k++) {
                    float w = bits == 4 ? (float)i4_at((const uint8_t *)q + n * (Kg / 2), k)
                                        : (float)((const int8_t *)q)[n * Kg + k];
                    acc += xr[k] * w;
                }
                tot += acc * sc[n * G + g];
            }
            y[m * N + n] = bias ? tot + bias[n] : tot;
        }
    }
}

#ifdef DSN_X86
#define WQ_T __attribute__((target("avx2,fma")))

WQ_T static inline float wq_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* 32 weights of row n at k as fp32 (4 vectors) */
WQ_T static inline void wq_load32(const void *q, size_t n, size_t Kg, size_t k, int bits,
                                  __m256 *w)
{
    const __m128i m4 = _mm_set1_epi8(0x0F), e8 = _mm_set1_epi8(8);
    __m128i b0, b1;
    if (bits == 4) {
        __m128i p = _mm_loadu_si128((const __m128i *)((const uint8_t *)q + n * (Kg / 2) + k / 2));
        __m128i lo = _mm_and_si128(p, m4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(p, 4), m4);
        lo = _mm_sub_epi8(_mm_xor_si128(lo, e8), e8);   /* sign-extend the nibbles */
        hi = _mm_sub_epi8(_mm_xor_si128(hi, e8), e8);
        b0 = _mm_unpacklo_epi8(lo, hi);
        b1 = _mm_unpackhi_epi8(lo, hi);
    } else {
        const int8_t *r = (const int8_t *)q + n * Kg + k;
        b0 = _mm_loadu_si128((const __m128i *)r);
        b1 = _mm_loadu_si128((const __m128i *)(r + 16));
    }
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b0));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b0, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b1));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b1, 8)));
}

/* gs % 32 == 0; rows of x in blocks of up to 4 share every dequantized weight chunk */
WQ_T static void wq_avx2(const float *x, size_t M, const void *q, const float *sc, size_t N,
                         size_t Kg, size_t gs, int bits, const float *bias, float *y)
{
    size_t G = Kg / gs;
    for (size_t n = 0; n < N; n++) {
        for (size_t m0 = 0; m0 < M; m0 += 4) {
            size_t mr = M - m0 < 4 ? M - m0 : 4;
            __m256 tot[4];
            for (size_t r = 0; r < 4; r++) tot[r] = _mm256_setzero_ps();
            for (size_t g = 0; g < G; g++) {
                __m256 acc[4];
                for (size_t r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
                for (size_t k = g * gs; k < (g + 1) * gs; k += 32) {
                    __m256 w[4];
                    wq_load32(q, n, Kg, k, bits, w);
                    for (size_t r = 0; r < mr; r++) {
                        const float *xr = x + (m0 + r) * Kg + k;
                        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(xr), w[0]);
                        a = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w[1], a);
                        a = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 16), w[2], a);
                        a = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 24), w[3], a);
                        acc[r] = _mm256_add_ps(acc[r], a);
                    }
                }
                __m256 s = _mm256_set1_ps(sc[n * G + g]);
                for (size_t r = 0; r < mr; r++) tot[r] = _mm256_fmadd_ps(acc[r], s, tot[r]);
            }
            for (size_t r = 0; r < mr; r++) {
                float t = wq_hsum(tot[r]);
                y[(m0 + r) * N + n] = bias ? t + bias[n] : t;
            }
        }
    }
}
#endif

/* wq_linear(x f32 [M*Kg], M, q, bits, scales f32 [N*G], N, Kg, gs, bias | None, out f32) */
PyObject *dsn_py_wq_linear(PyObject *self, PyObject *args)
{
    PyObject *ox, *oq, *os, *ob, *oy;
    Py_ssize_t M, N, Kg, gs;
    int bits;
    if (!PyArg_ParseTuple(args, "OnOiOnnnOO:wq_linear", &ox, &M, &oq, &bits, &os, &N, &Kg,
                          &gs, &ob, &oy))
        return NULL;
    if (M < 0 || N < 0 || gs <= 0 || Kg % gs || (bits != 4 && bits != 8) || (bits == 4 && gs % 2)) {
        PyErr_SetString(PyExc_ValueError, "wq_linear(): bad sizes or bits");
        return NULL;
    }
    Py_buffer bx, bq, bs, bb = {0}, by;
    int hb = 0;
    if (i8_buf(ox, &bx, "x", 'f', 4, M * Kg, 0) < 0) return NULL;
    if (i8_buf(oq, &bq, "q", bits == 4 ? 'B' : 'b', 1, bits == 4 ? N * Kg / 2 : N * Kg, 0) < 0) {
        PyBuffer_Release(&bx); return NULL;
    }
    if (i8_buf(os, &bs, "scales", 'f', 4, N * (Kg / gs), 0) < 0) {
        PyBuffer_Release(&bx); PyBuffer_Release(&bq); return NULL;
    }
    if (ob != Py_None) {
        if (i8_buf(ob, &bb, "bias", 'f', 4, N, 0) < 0) {
            PyBuffer_Release(&bx); PyBuffer_Release(&bq); PyBuffer_Release(&bs); return NULL;
        }
        hb = 1;
    }
    if (i8_buf(oy, &by, "out", 'f', 4, M * N, 1) < 0) {
        PyBuffer_Release(&bx); PyBuffer_Release(&bq); PyBuffer_Release(&bs);
        if (hb) PyBuffer_Release(&bb);
        return NULL;
    }
    int isa = i8_current();
    Py_BEGIN_ALLOW_THREADS
#ifdef DSN_X86
    if (isa != I8_SCALAR && gs % 32 == 0)
        wq_avx2(bx.buf, (size_t)M, bq.buf, bs.buf, (size_t)N, (size_t)Kg, (size_t)gs, bits,
                hb ? bb.buf : NULL, by.buf);
    else
#endif
        wq_scalar(bx.buf, (size_t)M, bq.buf, bs.buf, (size_t)N, (size_t)Kg, (size_t)gs, bits,
                  hb ? bb.buf : NULL, by.buf);
    Py_END_ALLOW_THREADS
    (void)isa;
    PyBuffer_Release(&bx); PyBuffer_Release(&bq); PyBuffer_Release(&bs);
    if (hb) PyBuffer_Release(&bb);
    PyBuffer_Release(&by);
    Py_RETURN_NONE;
}
