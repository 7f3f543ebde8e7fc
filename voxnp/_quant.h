/* Quantized matrix products for a few activation rows (the formats: voxnp/quant.py).
 *
 *   y[t, r] = sum over blocks b of (weight scale * xs[t, b]) * (exact integer dot of block b)
 *
 * The activation rows (T <= 8: a decoder step, speculative positions, batched streams)
 * are first quantized to int16 per block, exactly as quant.quantize_activations does
 * (same float32 operations, so the same integers). Each weight row is then read from
 * memory once and multiplied into every activation row while it is in registers/L1:
 *
 *   int8 (groups of 128): 16 weights at a time sign-extended to int16 and multiplied by
 *        `madd` (int16 x int16 -> pairs summed in int32); a lane sums 16 products of a
 *        group, |sum| < 127 * 32767 * 16 < 2^31.
 *   q4k (super-blocks of 256): 64 nibbles per 32-byte load, split with a mask and a
 *        shift, widened to int16 and multiplied by their sub-block's 6-bit scale (q * sc
 *        <= 945 fits int16) before `madd`; a lane sums 32 products of a super-block,
 *        < 945 * 32767 * 32 < 2^31. The mins term is mn_j times the activation sub-block
 *        sums (computed once per row).
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

#define Q8_BLOCK 128             /* inputs per int8 group */
#define Q4K_BLOCK 256            /* inputs per q4k super-block */
#define Q4K_SUB 32               /* inputs per q4k sub-block */
#define QUANT_ACT_LEVELS 32767   /* activations: int16, symmetric */
#define QUANT_ACT_FLOOR 1e-30f   /* a smaller block of activations is zero */
#define QUANT_ROWS 4             /* activation rows whose accumulators share the registers */
#define QUANT_PARALLEL_MIN 262144  /* fewer weights: one thread (waking threads costs more) */

typedef struct { float d, dmin; uint8_t sc[8], mn[8]; } q4k_meta;   /* 24 bytes, = quant.Q4K_META */

/* One activation row x [k] -> xq [kp] int16 and xs [kp / block] (quant.quantize_activations). */
static void quant_activations(const float *x, int64_t k, int64_t block, int64_t kp, int16_t *xq, float *xs)
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
        float inv = (float)QUANT_ACT_LEVELS / amax;
        xs[b0 / block] = amax / (float)QUANT_ACT_LEVELS;
        for (int64_t i = 0; i < n; i++)
            xq[b0 + i] = (int16_t)lrintf(x[b0 + i] * inv);
    }
}

/* Sums of each 32-input sub-block of quantized activations: xq [kp] -> bsum [kp / 32]. */
static void quant_sub_sums(const int16_t *xq, int64_t kp, int32_t *bsum)
{
    for (int64_t s = 0; s < kp / Q4K_SUB; s++) {
        int32_t acc = 0;
        for (int i = 0; i < Q4K_SUB; i++) acc += xq[s * Q4K_SUB + i];
        bsum[s] = acc;
    }
}

/* ------------------------------------------------------------------------------------ */
/* portable twins: one weight row times one activation row                               */

static float q8_dot_portable(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq, const float *xs)
{
    float acc = 0.0f;
    for (int64_t g = 0; g < ng; g++) {
        int32_t s = 0;
        for (int i = 0; i < Q8_BLOCK; i++) s += (int32_t)w[g * Q8_BLOCK + i] * xq[g * Q8_BLOCK + i];
        acc += (float)s * (ws[g] * xs[g]);
    }
    return acc;
}

static float q4k_dot_portable(const uint8_t *qs, const q4k_meta *meta, int64_t nsb,
                              const int16_t *xq, const float *xs, const int32_t *bsum)
{
    float acc = 0.0f;
    for (int64_t s = 0; s < nsb; s++) {
        const q4k_meta *m = meta + s;
        int64_t qsum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {          /* sub-block j: byte (j/2)*32 + i, low nibble if j even */
            const uint8_t *b = qs + s * (Q4K_BLOCK / 2) + (j / 2) * 32;
            const int16_t *xj = xq + s * Q4K_BLOCK + j * Q4K_SUB;
            int32_t dot = 0;
            for (int i = 0; i < Q4K_SUB; i++) dot += ((j & 1) ? b[i] >> 4 : b[i] & 15) * xj[i];
            qsum += (int64_t)m->sc[j] * dot;
            msum += (int64_t)m->mn[j] * bsum[s * 8 + j];
        }
        acc += (float)qsum * (m->d * xs[s]) - (float)msum * (m->dmin * xs[s]);
    }
    return acc;
}

/* ------------------------------------------------------------------------------------ */
/* AVX2: one weight row times nr <= QUANT_ROWS activation rows (stride kp / nb)           */

#if defined(__x86_64__) || defined(__i386__)
#define QUANT_X86 1
#include <immintrin.h>
#define QUANT_AVX2 __attribute__((target("avx2,fma")))

static inline QUANT_AVX2 float quant_hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l + (l+4) */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));                                 /* (0+4)+(2+6), (1+5)+(3+7) */
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

static inline __attribute__((always_inline)) QUANT_AVX2 void
q8_rows_avx2(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq, const float *xs,
             int64_t kp, int nr, float *y, int64_t ystride)
{
    __m256 acc[QUANT_ROWS];
    for (int t = 0; t < nr; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m256i isum[QUANT_ROWS];
        for (int t = 0; t < nr; t++) isum[t] = _mm256_setzero_si256();
        for (int c = 0; c < Q8_BLOCK; c += 16) {
            __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + g * Q8_BLOCK + c)));
            for (int t = 0; t < nr; t++) {
                __m256i x16 = _mm256_loadu_si256((const __m256i *)(xq + t * kp + g * Q8_BLOCK + c));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(w16, x16));
            }
        }
        for (int t = 0; t < nr; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(ws[g] * xs[t * ng + g]), acc[t]);
    }
    for (int t = 0; t < nr; t++) y[t * ystride] = quant_hsum8(acc[t]);
}

static inline __attribute__((always_inline)) QUANT_AVX2 void
q4k_rows_avx2(const uint8_t *qs, const q4k_meta *meta, int64_t nsb, const int16_t *xq, const float *xs,
              const int32_t *bsum, int64_t kp, int nr, float *y, int64_t ystride)
{
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[QUANT_ROWS];
    for (int t = 0; t < nr; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const q4k_meta *m = meta + s;
        __m256i qsum[QUANT_ROWS];
        for (int t = 0; t < nr; t++) qsum[t] = _mm256_setzero_si256();
        for (int p = 0; p < 4; p++) {        /* 64 inputs: sub-blocks 2p (low nibbles), 2p+1 (high) */
            __m256i v = _mm256_loadu_si256((const __m256i *)(qs + s * (Q4K_BLOCK / 2) + p * 32));
            __m256i lo = _mm256_and_si256(v, low4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            __m256i sa = _mm256_set1_epi16(m->sc[2 * p]), sb = _mm256_set1_epi16(m->sc[2 * p + 1]);
            __m256i w[4] = {
                _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)), sa),
                _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)), sa),
                _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)), sb),
                _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1)), sb),
            };
            for (int t = 0; t < nr; t++) {
                const int16_t *xt = xq + t * kp + s * Q4K_BLOCK + p * 64;
                for (int c = 0; c < 4; c++)
                    qsum[t] = _mm256_add_epi32(qsum[t], _mm256_madd_epi16(
                        w[c], _mm256_loadu_si256((const __m256i *)(xt + 16 * c))));
            }
        }
        __m256i mn = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)m->mn));
        for (int t = 0; t < nr; t++) {
            float x_s = xs[t * nsb + s];
            __m256i msum = _mm256_mullo_epi32(mn, _mm256_loadu_si256((const __m256i *)(bsum + t * nsb * 8 + s * 8)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qsum[t]), _mm256_set1_ps(m->d * x_s), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(m->dmin * x_s), acc[t]);
        }
    }
    for (int t = 0; t < nr; t++) y[t * ystride] = quant_hsum8(acc[t]);
}

/* One weight row times all T activation rows, QUANT_ROWS at a time (constant nr: registers). */
static QUANT_AVX2 void q8_row_avx2(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq,
                                   const float *xs, int64_t kp, int64_t T, float *y, int64_t n)
{
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) q8_rows_avx2(w, ws, ng, xq + t * kp, xs + t * ng, kp, 4, y + t * n, n);
    switch (T - t) {
    case 3: q8_rows_avx2(w, ws, ng, xq + t * kp, xs + t * ng, kp, 3, y + t * n, n); break;
    case 2: q8_rows_avx2(w, ws, ng, xq + t * kp, xs + t * ng, kp, 2, y + t * n, n); break;
    case 1: q8_rows_avx2(w, ws, ng, xq + t * kp, xs + t * ng, kp, 1, y + t * n, n); break;
    }
}

static QUANT_AVX2 void q4k_row_avx2(const uint8_t *qs, const q4k_meta *meta, int64_t nsb, const int16_t *xq,
                                    const float *xs, const int32_t *bsum, int64_t kp, int64_t T, float *y, int64_t n)
{
    int64_t t = 0, nb = kp / Q4K_SUB;
#define Q4K_CALL(NR) q4k_rows_avx2(qs, meta, nsb, xq + t * kp, xs + t * nsb, bsum + t * nb, kp, NR, y + t * n, n)
    for (; t + 4 <= T; t += 4) Q4K_CALL(4);
    switch (T - t) {
    case 3: Q4K_CALL(3); break;
    case 2: Q4K_CALL(2); break;
    case 1: Q4K_CALL(1); break;
    }
#undef Q4K_CALL
}
#endif

/* 1 if the AVX2 kernels run on this CPU. */
static int quant_have_avx2(void)
{
#ifdef QUANT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------------------------ */
/* the products: y [T, n] = x [T, k] times W [n, k] (rows padded to kp); 0, or -1 (memory) */

static int q8_matmul(const int8_t *q, const float *scale, int64_t n, int64_t kp, const float *x,
                     int64_t T, int64_t k, float *y, int threads, int portable)
{
    int64_t ng = kp / Q8_BLOCK;
    int16_t *xq = malloc(T * kp * sizeof(int16_t));
    float *xs = malloc(T * ng * sizeof(float));
    if (!xq || !xs) { free(xq); free(xs); return -1; }
    for (int64_t t = 0; t < T; t++) quant_activations(x + t * k, k, Q8_BLOCK, kp, xq + t * kp, xs + t * ng);
    int avx2 = !portable && quant_have_avx2();
    if (threads < 1 || n * kp < QUANT_PARALLEL_MIN) threads = 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
#ifdef QUANT_X86
        if (avx2) { q8_row_avx2(q + r * kp, scale + r * ng, ng, xq, xs, kp, T, y + r, n); continue; }
#endif
        for (int64_t t = 0; t < T; t++)
            y[t * n + r] = q8_dot_portable(q + r * kp, scale + r * ng, ng, xq + t * kp, xs + t * ng);
    }
    free(xq);
    free(xs);
    return 0;
}

static int q4k_matmul(const uint8_t *qs, const uint8_t *meta, int64_t n, int64_t kp, const float *x,
                      int64_t T, int64_t k, float *y, int threads, int portable)
{
    int64_t nsb = kp / Q4K_BLOCK, nb = kp / Q4K_SUB;
    int16_t *xq = malloc(T * kp * sizeof(int16_t));
    float *xs = malloc(T * nsb * sizeof(float));
    int32_t *bsum = malloc(T * nb * sizeof(int32_t));
    if (!xq || !xs || !bsum) { free(xq); free(xs); free(bsum); return -1; }
    for (int64_t t = 0; t < T; t++) {
        quant_activations(x + t * k, k, Q4K_BLOCK, kp, xq + t * kp, xs + t * nsb);
        quant_sub_sums(xq + t * kp, kp, bsum + t * nb);
    }
    const q4k_meta *m = (const q4k_meta *)meta;
    int avx2 = !portable && quant_have_avx2();
    if (threads < 1 || n * kp < QUANT_PARALLEL_MIN) threads = 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
#ifdef QUANT_X86
        if (avx2) { q4k_row_avx2(qs + r * (kp / 2), m + r * nsb, nsb, xq, xs, bsum, kp, T, y + r, n); continue; }
#endif
        for (int64_t t = 0; t < T; t++)
            y[t * n + r] = q4k_dot_portable(qs + r * (kp / 2), m + r * nsb, nsb, xq + t * kp, xs + t * nsb,
                                            bsum + t * nb);
    }
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
