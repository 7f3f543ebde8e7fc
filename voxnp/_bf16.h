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
 * speculative and batched decoding exact. The AVX2 variant and the portable twin give
 * the same bits; the AVX-512 variant (16 lanes) rounds differently in the last bits, as
 * any two BLAS libraries do.
 *
 * Variants (_cpu.h): portable; avx2 (kernel sets avx2, avxvnni); avx512 (avx512 and up).
 * The AVX512_BF16 dot product (vdpbf16ps) would round the activations to BF16, so the
 * exact reference keeps float32 FMAs: a decoder step is bound by memory, not arithmetic.
 */
#ifndef VOXNP_BF16_H
#define VOXNP_BF16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_cpu.h"

/* Tiles (weight rows x activation rows) whose accumulators fit the 16 ymm registers
 * (32 zmm): one activation row uses 8 weight rows (8 memory streams in flight per core:
 * the step is bound by memory bandwidth); several use 4 x 3 (4 x 4 with AVX-512), where
 * the FMA rate bounds it (measured best of 2x4, 3x4, 4x2, 4x3, 8x1). */
#define BF16_BLOCK 8             /* weight rows per parallel block */
#define BF16_RB 4                /* weight rows per tile when M > 1 */

typedef void (*bf16_block_fn)(const uint16_t *w, int64_t k, int nr, const float *x, int nm,
                              float *y, int64_t ldy);

/* Rows [r0, r1) of y = x @ W.T for all M activation rows (one parallel block), in tiles
 * of `mb` activation rows. */
static inline __attribute__((always_inline)) void
bf16_rows_tiled(const uint16_t *w, int64_t k, int64_t r0, int64_t r1, const float *x, int64_t M,
                float *y, int64_t n, int mb, bf16_block_fn block) {
    int64_t r, m;
    int rb = M == 1 ? 8 : BF16_RB;
    for (r = r0; r < r1; r += rb) {
        int nr = (int)(r1 - r < rb ? r1 - r : rb);
        for (m = 0; m < M; m += mb) {
            int nm = (int)(M - m < mb ? M - m : mb);
            block(w + r * k, k, nr, x + m * k, nm, y + m * n + r, n);
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* portable twin: the AVX2 order, lanes emulated                                          */

static inline float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void bf16_block_portable(const uint16_t *w, int64_t k, int nr, const float *x, int nm,
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

static void bf16_rows_portable(const uint16_t *w, int64_t k, int64_t r0, int64_t r1,
                               const float *x, int64_t M, float *y, int64_t n) {
    bf16_rows_tiled(w, k, r0, r1, x, M, y, n, 8, bf16_block_portable);
}

#ifdef VOXNP_X86
/* ------------------------------------------------------------------------------------ */
/* AVX2 + FMA: 8 lanes                                                                    */
VOXNP_TARGET_BEGIN(VOXNP_T_AVX2)

static inline float bf16_hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l, l+4 */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));                                 /* (0+4)+(2+6), (1+5)+(3+7) */
    __m128 c = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(c);
}

static inline __m256 bf16_widen8(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#define BF16_V avx2
#define BF16_LANES 8
#define BF16_MB 3
#define BF16_VEC __m256
#define BF16_LOAD _mm256_loadu_ps
#define BF16_FMA _mm256_fmadd_ps
#define BF16_ZERO _mm256_setzero_ps
#define BF16_WIDEN bf16_widen8
#define BF16_HSUM bf16_hsum8
#include "_bf16_simd.h"
#undef BF16_V
#undef BF16_LANES
#undef BF16_MB
#undef BF16_LOAD
#undef BF16_FMA
#undef BF16_ZERO
#undef BF16_WIDEN
#undef BF16_HSUM
#undef BF16_VEC
VOXNP_TARGET_END

/* ------------------------------------------------------------------------------------ */
/* AVX-512: 16 lanes; lanes l and l+8 are added, then the 8-lane order                    */
VOXNP_TARGET_BEGIN(VOXNP_T_AVX512)

static inline float bf16_hsum16(__m512 v) {
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return bf16_hsum8(_mm256_add_ps(lo, hi));                                      /* l + (l+8) */
}

static inline __m512 bf16_widen16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#define BF16_V avx512
#define BF16_LANES 16
#define BF16_MB 4
#define BF16_VEC __m512
#define BF16_LOAD _mm512_loadu_ps
#define BF16_FMA _mm512_fmadd_ps
#define BF16_ZERO _mm512_setzero_ps
#define BF16_WIDEN bf16_widen16
#define BF16_HSUM bf16_hsum16
#include "_bf16_simd.h"
#undef BF16_V
#undef BF16_LANES
#undef BF16_MB
#undef BF16_LOAD
#undef BF16_FMA
#undef BF16_ZERO
#undef BF16_WIDEN
#undef BF16_HSUM
#undef BF16_VEC
VOXNP_TARGET_END
#endif

/* Rows [r0, r1) of y = x @ W.T for all M activation rows, by kernel set `kset`. */
static inline void bf16_rows(int kset, const uint16_t *w, int64_t k, int64_t r0, int64_t r1,
                             const float *x, int64_t M, float *y, int64_t n) {
#ifdef VOXNP_X86
    if (kset >= KSET_AVX512) { bf16_rows_avx512(w, k, r0, r1, x, M, y, n); return; }
    if (kset >= KSET_AVX2) { bf16_rows_avx2(w, k, r0, r1, x, M, y, n); return; }
#endif
    bf16_rows_portable(w, k, r0, r1, x, M, y, n);
}

#endif
