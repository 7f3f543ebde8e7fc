/* The BF16 product for a few activation rows: y[m, r] = sum_j float32(W[r, j]) * x[m, j].
 *
 * A decoder step (or a verification pass of a few speculative positions, or one step of
 * several streams, or the prompt) multiplies T activation rows by every weight matrix.
 * The weights are streamed from memory once: a tile of weight rows is widened from BF16
 * into registers, one vector of columns at a time, and multiplied into a group of
 * activation rows (the tile's accumulators held in registers), so T rows cost little
 * more than one while memory bandwidth, not arithmetic, is the limit.
 *
 * Reduction order, the same whatever T, the grouping of rows or the thread count:
 * lane l of an accumulator of L lanes (8 with AVX2, 16 with AVX-512) sums the columns
 * j = l (mod L) in ascending j (one FMA each); the columns past the last multiple of L
 * are one more FMA on zero-padded vectors; then, for 16 lanes, lanes l and l+8 are
 * added, and the 8 lanes are added ((0+4)+(2+6))+((1+5)+(3+7)). So every row's result is
 * bit-identical to calling the product with that row alone, which is what makes
 * speculative and batched decoding exact. (Builds for different instruction sets round
 * differently in the last bits, as any two BLAS libraries do.)
 *
 * AVX-512 or AVX2 + FMA, as the compiler targets (setup.py builds for the machine it runs
 * on; -DVOXNP_NO_AVX512 forces AVX2); a portable twin with the 8-lane order otherwise.
 */
#ifndef VOXNP_BF16_H
#define VOXNP_BF16_H

#include <stdint.h>
#include <string.h>

/* Tiles (weight rows x activation rows) whose accumulators fit the 16 ymm registers
 * (32 with AVX-512VL): one activation row uses 8 weight rows (8 memory streams in flight
 * per core: the step is bound by memory bandwidth); several use 4 x 3 (4 x 4), where
 * the FMA rate bounds it (measured best of 2x4, 3x4, 4x2, 4x3, 8x1). */
#define BF16_BLOCK 8             /* weight rows per parallel block */
#define BF16_RB 4                /* weight rows per tile when M > 1 */
#ifndef BF16_MB
#if defined(__AVX512VL__) && !defined(VOXNP_NO_AVX512)
#define BF16_MB 4
#else
#define BF16_MB 3
#endif
#endif

#if defined(__AVX512F__) && defined(__AVX512VL__) && !defined(VOXNP_NO_AVX512)
#include <immintrin.h>
/* AVX-512 (when the build machine has it): 16 lanes, twice the FMA width. The order
 * becomes: lane l of 16 sums j = l (mod 16), lanes l and l+8 are added, then the 8-lane
 * order above. Still the same for every T and thread count. */
#define BF16_LANES 16
typedef __m512 bf16_vec;
#define BF16_LOAD _mm512_loadu_ps
#define BF16_FMA _mm512_fmadd_ps
#define BF16_ZERO _mm512_setzero_ps

static inline bf16_vec bf16_load_widened(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BF16_LANES 8
typedef __m256 bf16_vec;
#define BF16_LOAD _mm256_loadu_ps
#define BF16_FMA _mm256_fmadd_ps
#define BF16_ZERO _mm256_setzero_ps

static inline bf16_vec bf16_load_widened(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

#ifdef BF16_LANES
static inline float bf16_hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l, l+4 */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));                                 /* (0+4)+(2+6), (1+5)+(3+7) */
    __m128 c = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(c);
}

static inline float bf16_hsum(bf16_vec v) {
#if BF16_LANES == 16
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return bf16_hsum8(_mm256_add_ps(lo, hi));                                      /* l + (l+8) */
#else
    return bf16_hsum8(v);
#endif
}

/* y[m*ldy + i] for the NR weight rows at w (row stride k) and the NM activation rows at
 * x (row stride k). NR and NM are compile-time constants at every call (see bf16_block),
 * so the loops unroll and the NR x NM accumulators live in registers. */
static inline __attribute__((always_inline)) void
bf16_tile(const uint16_t *w, int64_t k, const float *x, float *y, int64_t ldy,
          const int NR, const int NM) {
    bf16_vec acc[8][8], v[8];                           /* NR, NM <= 8 */
    int i, m;
    int64_t j, k8 = k - k % BF16_LANES;
    for (i = 0; i < NR; i++)
        for (m = 0; m < NM; m++) acc[i][m] = BF16_ZERO();
    for (j = 0; j < k8; j += BF16_LANES) {
        for (i = 0; i < NR; i++) v[i] = bf16_load_widened(w + i * k + j);
        for (m = 0; m < NM; m++) {
            bf16_vec a = BF16_LOAD(x + m * k + j);
            for (i = 0; i < NR; i++) acc[i][m] = BF16_FMA(v[i], a, acc[i][m]);
        }
    }
    if (k8 < k) {                                     /* the last k % LANES columns, zero-padded */
        uint16_t wt[BF16_LANES];
        float xt[BF16_LANES];
        for (i = 0; i < NR; i++) {
            memset(wt, 0, sizeof wt);
            memcpy(wt, w + i * k + k8, (size_t)(k - k8) * sizeof(uint16_t));
            v[i] = bf16_load_widened(wt);
        }
        for (m = 0; m < NM; m++) {
            memset(xt, 0, sizeof xt);
            memcpy(xt, x + m * k + k8, (size_t)(k - k8) * sizeof(float));
            bf16_vec a = BF16_LOAD(xt);
            for (i = 0; i < NR; i++) acc[i][m] = BF16_FMA(v[i], a, acc[i][m]);
        }
    }
    for (i = 0; i < NR; i++)
        for (m = 0; m < NM; m++) y[m * ldy + i] = bf16_hsum(acc[i][m]);
}

#define BF16_TILE_CASE(R, M) case (R) * 16 + (M): bf16_tile(w, k, x, y, ldy, R, M); break;

static inline void bf16_block(const uint16_t *w, int64_t k, int nr, const float *x, int nm,
                              float *y, int64_t ldy) {
    switch (nr * 16 + nm) {
        BF16_TILE_CASE(8, 1)
        BF16_TILE_CASE(4, 1) BF16_TILE_CASE(4, 2) BF16_TILE_CASE(4, 3) BF16_TILE_CASE(4, 4)
        BF16_TILE_CASE(4, 5) BF16_TILE_CASE(4, 6)
        default: {                                    /* matrix edges: one row pair at a time */
            int i, m;
            for (i = 0; i < nr; i++)
                for (m = 0; m < nm; m++) bf16_tile(w + i * k, k, x + m * k, y + m * ldy + i, ldy, 1, 1);
        }
    }
}

#else  /* portable twin: the same order, lanes emulated */
#include <math.h>

static inline float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void bf16_block(const uint16_t *w, int64_t k, int nr, const float *x, int nm,
                              float *y, int64_t ldy) {
    int i, m, l;
    int64_t j;
    for (i = 0; i < nr; i++)
        for (m = 0; m < nm; m++) {
            float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (j = 0; j < k; j += 8)
                for (l = 0; l < 8; l++) {
                    float a = (j + l < k) ? bf16_value(w[i * k + j + l]) : 0.0f;
                    float b = (j + l < k) ? x[m * k + j + l] : 0.0f;
                    lane[l] = fmaf(a, b, lane[l]);
                }
            y[m * ldy + i] = ((lane[0] + lane[4]) + (lane[2] + lane[6])) +
                             ((lane[1] + lane[5]) + (lane[3] + lane[7]));
        }
}
#endif

/* Rows [r0, r1) of y = x @ W.T for all M activation rows (one parallel block). */
static inline void bf16_rows(const uint16_t *w, int64_t k, int64_t r0, int64_t r1,
                             const float *x, int64_t M, float *y, int64_t n) {
    int64_t r, m;
    int rb = M == 1 ? 8 : BF16_RB;
    for (r = r0; r < r1; r += rb) {
        int nr = (int)(r1 - r < rb ? r1 - r : rb);
        for (m = 0; m < M; m += BF16_MB) {
            int nm = (int)(M - m < BF16_MB ? M - m : BF16_MB);
            bf16_block(w + r * k, k, nr, x + m * k, nm, y + m * n + r, n);
        }
    }
}

#endif
