/* Quantized matrix products for a few activation rows (the formats: voxnp/quant.py).
 *
 *   y[t, r] = sum over blocks b of (weight scale * xs[t, b]) * (exact integer dot of block b)
 *
 * The activation rows (T <= 8: a decoder step, speculative positions, batched streams)
 * are first quantized per block, exactly as quant.quantize_activations does (same
 * float32 operations, so the same integers): int16 for int8 matrices, int8 for q4k.
 * Each weight row is then read from memory once and multiplied into every activation
 * row while it is in registers/L1:
 *
 *   int8 (groups of 128): 16 weights at a time sign-extended to int16 and multiplied by
 *        `madd` (int16 x int16 -> pairs summed in int32); a lane sums 16 products of a
 *        group, |sum| < 127 * 32767 * 16 < 2^31.
 *   q4k (super-blocks of 256): 64 nibbles per 32-byte load (128 per 64-byte load), split
 *        with a mask and a shift into bytes and multiplied by the int8 activations with
 *        `maddubs` (u8 x s8 -> pairs summed in int16: <= 2 * 15 * 127, no saturation),
 *        then by their sub-block's 6-bit scale with `madd` (-> int32); lane l sums the
 *        inputs 4l..4l+3 of every sub-block, < 8 * 4 * 15 * 63 * 127 < 2^31. The mins
 *        term is mn_j times the activation sub-block sums (computed once per row).
 * Integer sums are exact; each block's int32 lanes are converted to float and added
 * into 8 float lanes (one FMA by the block's scale product), then the lanes are summed
 * pairwise ((0+4)+(2+6))+((1+5)+(3+7)). That order is the same whatever T, however rows
 * are grouped and whatever the thread count, so each row's result is bit-identical to
 * a call with that row alone (exact speculative and batched decoding).
 *
 * AVX2 + FMA is chosen at run time (__builtin_cpu_supports), compiled with target
 * attributes so the file builds for any x86-64; a portable scalar twin (same integers,
 * float sums in another order) serves other CPUs and is tested against the same
 * reference.
 */
#ifndef VOXNP_QUANT_H
#define VOXNP_QUANT_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_cpu.h"

#define Q8_BLOCK 128             /* inputs per int8 group */
#define Q4K_BLOCK 256            /* inputs per q4k super-block */
#define Q4K_SUB 32               /* inputs per q4k sub-block */
#define QUANT_ACT_LEVELS 32767   /* activations of int8 matrices: int16, symmetric */
#define Q4K_ACT_LEVELS 127       /* activations of q4k matrices: int8, symmetric */
#define QUANT_ACT_FLOOR 1e-30f   /* a smaller block of activations is zero */
#ifndef QUANT_PREFETCH
#define QUANT_PREFETCH 2048      /* bytes ahead of the weights being read (software prefetch) */
#endif
#define QUANT_PARALLEL_MIN 262144  /* fewer weights: one thread (waking threads costs more) */

typedef struct { float d, dmin; uint8_t sc[8], mn[8]; } q4k_meta;   /* 24 bytes, = quant.Q4K_META */

/* One activation row x [k] -> xq [kp] (|xq| <= levels) and xs [kp / block]
 * (quant.quantize_activations). */
static void quant_activations(const float *x, int64_t k, int64_t block, int64_t kp, int levels,
                              int16_t *xq, float *xs)
{
    for (int64_t b0 = 0; b0 < kp; b0 += block) {
        int64_t n = k - b0 < block ? k - b0 : block;
        float amax = 0.0f;
        int finite = 1;
        for (int64_t i = 0; i < n; i++) {
            float a = fabsf(x[b0 + i]);
            if (!(a <= FLT_MAX)) finite = 0;
            else if (a > amax) amax = a;
        }
        memset(xq + b0, 0, block * sizeof(int16_t));
        if (!finite || amax < QUANT_ACT_FLOOR) {
            xs[b0 / block] = finite ? 0.0f : NAN;
            continue;
        }
        float inv = (float)levels / amax;
        xs[b0 / block] = amax / (float)levels;
        for (int64_t i = 0; i < n; i++)
            xq[b0 + i] = (int16_t)lrintf(x[b0 + i] * inv);
    }
}

/* Where q4k's kernels read the activations of sub-block j: slot q4k_slot[j] of its
 * super-block (32 bytes each), so that one 64-byte load holds those of the low (or high)
 * nibbles of 64 packed bytes: sub-blocks 0 and 2, then 1 and 3, 4 and 6, 5 and 7. */
static const int q4k_slot[8] = {0, 2, 1, 3, 4, 6, 5, 7};

/* One activation row of a q4k product: x [k] -> xq [kp] int8 in slot order, xs [kp / 256]
 * and the sum of each sub-block's xq, bsum [kp / 32] in sub-block order, as floats (exact:
 * |sum| <= 32 * 127; mn * bsum in float32 is then the exact integer product rounded once).
 * wide [kp]: scratch. */
static void q4k_activations(const float *x, int64_t k, int64_t kp, int16_t *wide, int8_t *xq,
                            float *xs, float *bsum)
{
    quant_activations(x, k, Q4K_BLOCK, kp, Q4K_ACT_LEVELS, wide, xs);
    for (int64_t j = 0; j < kp / Q4K_SUB; j++) {
        int8_t *slot = xq + (j / 8) * Q4K_BLOCK + q4k_slot[j % 8] * Q4K_SUB;
        int32_t acc = 0;
        for (int i = 0; i < Q4K_SUB; i++) {
            slot[i] = (int8_t)wide[j * Q4K_SUB + i];
            acc += wide[j * Q4K_SUB + i];
        }
        bsum[j] = (float)acc;
    }
}

/* ------------------------------------------------------------------------------------ */
/* portable twins: one weight row times one activation row, the 8 lanes of AVX2 emulated  */

static float quant_hsum8_portable(const float *l)
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

static float q8_dot_portable(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq, const float *xs)
{
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t g = 0; g < ng; g++) {
        int32_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < Q8_BLOCK; i++)          /* lane l: inputs 2l, 2l+1 of each 16 */
            s[(i % 16) / 2] += (int32_t)w[g * Q8_BLOCK + i] * xq[g * Q8_BLOCK + i];
        float scale = ws[g] * xs[g];
        for (int l = 0; l < 8; l++) lane[l] = fmaf((float)s[l], scale, lane[l]);
    }
    return quant_hsum8_portable(lane);
}

static float q4k_dot_portable(const uint8_t *qs, const q4k_meta *meta, int64_t nsb,
                              const int8_t *xq, const float *xs, const float *bsum)
{
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t s = 0; s < nsb; s++) {
        const q4k_meta *m = meta + s;
        int32_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int p = 0; p < 4; p++) {             /* byte i of 32: sub-block 2p (low), 2p+1 (high) */
            const uint8_t *b = qs + s * (Q4K_BLOCK / 2) + p * 32;
            const int8_t *lo = xq + s * Q4K_BLOCK + q4k_slot[2 * p] * Q4K_SUB;
            const int8_t *hi = xq + s * Q4K_BLOCK + q4k_slot[2 * p + 1] * Q4K_SUB;
            for (int i = 0; i < 32; i++)          /* lane l: inputs 4l..4l+3 */
                q[i / 4] += (b[i] & 15) * m->sc[2 * p] * lo[i] + (b[i] >> 4) * m->sc[2 * p + 1] * hi[i];
        }
        float d_x = m->d * xs[s], dmin_x = m->dmin * xs[s];
        for (int l = 0; l < 8; l++) {
            lane[l] = fmaf((float)q[l], d_x, lane[l]);
            lane[l] = fmaf(-((float)m->mn[l] * bsum[s * 8 + l]), dmin_x, lane[l]);
        }
    }
    return quant_hsum8_portable(lane);
}

static void q8_row_portable(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq,
                            const float *xs, int64_t kp, int64_t T, float *y, int64_t n)
{
    for (int64_t t = 0; t < T; t++) y[t * n] = q8_dot_portable(w, ws, ng, xq + t * kp, xs + t * ng);
}

static void q4k_row_portable(const uint8_t *qs, const q4k_meta *meta, int64_t nsb, const int8_t *xq,
                             const float *xs, const float *bsum, int64_t kp, int64_t T, float *y, int64_t n)
{
    for (int64_t t = 0; t < T; t++)
        y[t * n] = q4k_dot_portable(qs, meta, nsb, xq + t * kp, xs + t * nsb, bsum + t * (kp / Q4K_SUB));
}

typedef void (*q8_row_fn)(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq,
                          const float *xs, int64_t kp, int64_t T, float *y, int64_t n);
typedef void (*q4k_row_fn)(const uint8_t *qs, const q4k_meta *meta, int64_t nsb, const int8_t *xq,
                           const float *xs, const float *bsum, int64_t kp, int64_t T, float *y, int64_t n);

#ifdef VOXNP_X86
/* ------------------------------------------------------------------------------------ */
/* 256 bits: avx2 (madd + add), avxvnni (vpdpwssd)                                        */

VOXNP_TARGET_BEGIN(VOXNP_T_AVX2)
static inline float quant_hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l + (l+4) */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));                                 /* (0+4)+(2+6), (1+5)+(3+7) */
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}
VOXNP_TARGET_END

#define QI __m256i
#define Q_W16 16
#define Q_ROWS 4
#define Q_ZERO _mm256_setzero_si256
#define Q_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define Q_S8(p) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p)))
#define Q_ADD32 _mm256_add_epi32
#define Q4_CHUNKS 1
#define Q4_NIBBLES(p, lo, hi) do {                                                       \
        __m256i v_ = _mm256_loadu_si256((const __m256i *)(p));                            \
        (lo) = _mm256_and_si256(v_, _mm256_set1_epi8(0x0F));                              \
        (hi) = _mm256_and_si256(_mm256_srli_epi16(v_, 4), _mm256_set1_epi8(0x0F));        \
    } while (0)
#define Q4_SCALES(sc, p, lo, hi) do {                                                    \
        (lo) = _mm256_set1_epi16((sc)[2 * (p)]);                                          \
        (hi) = _mm256_set1_epi16((sc)[2 * (p) + 1]);                                      \
    } while (0)
#define Q4_MADDUBS _mm256_maddubs_epi16
#define Q_TO8(v) (v)

VOXNP_TARGET_BEGIN(VOXNP_T_AVX2)
#define QV avx2
#define Q_DOT(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#include "_quant_simd.h"
#undef QV
#undef Q_DOT
VOXNP_TARGET_END

VOXNP_TARGET_BEGIN(VOXNP_T_AVXVNNI)
#define QV avxvnni
#define Q_DOT(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#include "_quant_simd.h"
#undef QV
#undef Q_DOT
VOXNP_TARGET_END

#undef QI
#undef Q_W16
#undef Q_ROWS
#undef Q_ZERO
#undef Q_LOAD
#undef Q_S8
#undef Q_ADD32
#undef Q4_CHUNKS
#undef Q4_NIBBLES
#undef Q4_SCALES
#undef Q4_MADDUBS
#undef Q_TO8

/* ------------------------------------------------------------------------------------ */
/* 512 bits: avx512 (madd + add), avx512vnni (vpdpwssd); 16 int32 lanes folded to 8      */

#define QI __m512i
#define Q_W16 32
#define Q_ROWS 8
#define Q_ZERO _mm512_setzero_si512
#define Q_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define Q_S8(p) _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(p)))
#define Q_ADD32 _mm512_add_epi32
#define Q4_CHUNKS 2                 /* a 64-byte load: 32-byte chunks p, p+1 (p even) */
#define Q4_NIBBLES(p, lo, hi) do {                                                       \
        __m512i v_ = _mm512_loadu_si512((const void *)(p));                               \
        (lo) = _mm512_and_si512(v_, _mm512_set1_epi8(0x0F));                              \
        (hi) = _mm512_and_si512(_mm512_srli_epi16(v_, 4), _mm512_set1_epi8(0x0F));        \
    } while (0)
/* the low nibbles of chunks p, p+1 are sub-blocks 2p, 2p+2; the high ones 2p+1, 2p+3 */
#define Q4_SCALES(sc, p, lo, hi) do {                                                    \
        __m512i s_ = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sc)))); \
        (lo) = _mm512_permutexvar_epi16(_mm512_inserti64x4(                               \
            _mm512_set1_epi16(2 * (p)), _mm256_set1_epi16(2 * (p) + 2), 1), s_);          \
        (hi) = _mm512_permutexvar_epi16(_mm512_inserti64x4(                               \
            _mm512_set1_epi16(2 * (p) + 1), _mm256_set1_epi16(2 * (p) + 3), 1), s_);      \
    } while (0)
#define Q4_MADDUBS _mm512_maddubs_epi16
#define Q_TO8(v) _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1))

VOXNP_TARGET_BEGIN(VOXNP_T_AVX512)
#define QV avx512
#define Q_DOT(acc, a, b) _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
#include "_quant_simd.h"
#undef QV
#undef Q_DOT
VOXNP_TARGET_END

VOXNP_TARGET_BEGIN(VOXNP_T_AVX512VNNI)
#define QV avx512vnni
#define Q_DOT(acc, a, b) _mm512_dpwssd_epi32(acc, a, b)
#include "_quant_simd.h"
#undef QV
#undef Q_DOT
VOXNP_TARGET_END

#undef QI
#undef Q_W16
#undef Q_ROWS
#undef Q_ZERO
#undef Q_LOAD
#undef Q_S8
#undef Q_ADD32
#undef Q4_CHUNKS
#undef Q4_NIBBLES
#undef Q4_SCALES
#undef Q4_MADDUBS
#undef Q_TO8
#endif

/* The row kernels of kernel set `kset` (_cpu.h). */
static q8_row_fn q8_row_for(int kset)
{
#ifdef VOXNP_X86
    switch (kset) {
    case KSET_AVX2: return q8_row_avx2;
    case KSET_AVXVNNI: return q8_row_avxvnni;
    case KSET_AVX512: return q8_row_avx512;
    case KSET_AVX512VNNI: case KSET_AVX512BF16: case KSET_AMX: return q8_row_avx512vnni;
    }
#endif
    return q8_row_portable;
}

static q4k_row_fn q4k_row_for(int kset)
{
#ifdef VOXNP_X86
    switch (kset) {
    case KSET_AVX2: return q4k_row_avx2;
    case KSET_AVXVNNI: return q4k_row_avxvnni;
    case KSET_AVX512: return q4k_row_avx512;
    case KSET_AVX512VNNI: case KSET_AVX512BF16: case KSET_AMX: return q4k_row_avx512vnni;
    }
#endif
    return q4k_row_portable;
}

/* ------------------------------------------------------------------------------------ */
/* the products: y [T, n] = x [T, k] times W [n, k] (rows padded to kp); 0, or -1 (memory) */

static int q8_matmul(const int8_t *q, const float *scale, int64_t n, int64_t kp, const float *x,
                     int64_t T, int64_t k, float *y, int threads, int kset)
{
    int64_t ng = kp / Q8_BLOCK;
    int16_t *xq = malloc(T * kp * sizeof(int16_t));
    float *xs = malloc(T * ng * sizeof(float));
    if (!xq || !xs) { free(xq); free(xs); return -1; }
    for (int64_t t = 0; t < T; t++)
        quant_activations(x + t * k, k, Q8_BLOCK, kp, QUANT_ACT_LEVELS, xq + t * kp, xs + t * ng);
    q8_row_fn row = q8_row_for(kset);
    if (threads < 1 || n * kp < QUANT_PARALLEL_MIN) threads = 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) row(q + r * kp, scale + r * ng, ng, xq, xs, kp, T, y + r, n);
    free(xq);
    free(xs);
    return 0;
}

static int q4k_matmul(const uint8_t *qs, const uint8_t *meta, int64_t n, int64_t kp, const float *x,
                      int64_t T, int64_t k, float *y, int threads, int kset)
{
    int64_t nsb = kp / Q4K_BLOCK, nb = kp / Q4K_SUB;
    int8_t *xq = malloc(T * kp);
    int16_t *wide = malloc(kp * sizeof(int16_t));
    float *xs = malloc(T * nsb * sizeof(float));
    float *bsum = malloc(T * nb * sizeof(float));
    if (!xq || !wide || !xs || !bsum) { free(xq); free(wide); free(xs); free(bsum); return -1; }
    for (int64_t t = 0; t < T; t++)
        q4k_activations(x + t * k, k, kp, wide, xq + t * kp, xs + t * nsb, bsum + t * nb);
    free(wide);
    const q4k_meta *m = (const q4k_meta *)meta;
    q4k_row_fn row = q4k_row_for(kset);
    if (threads < 1 || n * kp < QUANT_PARALLEL_MIN) threads = 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) row(qs + r * (kp / 2), m + r * nsb, nsb, xq, xs, bsum, kp, T, y + r, n);
    free(xq);
    free(xs);
    free(bsum);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* dequantization of rows r0..r1 into out [r1 - r0, k] (float32, for BLAS with many rows) */

static void q8_dequantize(const int8_t *q, const float *scale, int64_t kp, int64_t k,
                          int64_t r0, int64_t r1, float *out)
{
    int64_t ng = kp / Q8_BLOCK;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < k; j++)
            out[(r - r0) * k + j] = (float)q[r * kp + j] * scale[r * ng + j / Q8_BLOCK];
}

static void q4k_dequantize(const uint8_t *qs, const uint8_t *meta, int64_t kp, int64_t k,
                           int64_t r0, int64_t r1, float *out)
{
    int64_t nsb = kp / Q4K_BLOCK;
    const q4k_meta *m = (const q4k_meta *)meta;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = qs + r * (kp / 2);
        for (int64_t j = 0; j < k; j++) {
            int64_t s = j / Q4K_BLOCK, i = j % Q4K_BLOCK, sub = i / Q4K_SUB;
            uint8_t b = row[s * (Q4K_BLOCK / 2) + (i / 64) * 32 + i % 32];
            int q = (sub & 1) ? b >> 4 : b & 15;
            const q4k_meta *mm = m + r * nsb + s;
            float step = mm->d * (float)mm->sc[sub], offset = mm->dmin * (float)mm->mn[sub];
            out[(r - r0) * k + j] = (float)q * step - offset;
        }
    }
}

#endif
