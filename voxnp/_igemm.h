/* The encoder's many-row int8 product (format "i8rows" of voxnp/quant.py).
 *
 *   y[m, n] = float(sum_j xq[m, j] * wq[n, j]) * (xs[m] * ws[n])
 *
 * Weights: int8, one float32 scale per output row (ws), converted once. They are stored
 * packed for the dot-product instructions: blocks of 16 output rows, and inside a block
 * the inputs in quads, [n/16][kp/4][16][4], so one 64-byte load is 16 outputs x 4 inputs.
 * Activations: quantized per row at each call (xs = max|x| / 127, xq = rint(x / xs)),
 * stored as xq + 128 in unsigned bytes: vpdpbusd multiplies unsigned by signed bytes, so
 * the kernels compute sum (xq + 128) w and subtract 128 * sum w (wsum, stored with the
 * weights). Every integer sum is exact (|sum| < 255 * 127 * k < 2^31 for k < 66000), so
 * every kernel set gives the same integers and, through the same float epilogue, the
 * same bits as the NumPy definition (quant.Int8Rows.product).
 *
 Variants per kernel set (_cpu.h; the set chosen at run time, voxnp/cpu.py):
 *   amx                 AMX tiles: 32 rows x 32 outputs in four 16x16 int32 tiles, tdpbusd
 *                       (the packed block of 16 outputs is a B tile as it lies; kp % 64 == 0,
 *                       else the avx512vnni variant)
 *   avx512vnni and up   tiles of 6 rows x 64 outputs, 24 zmm accumulators, vpdpbusd
 *   avxvnni             tiles of 6 rows x 16 outputs, 12 ymm accumulators, vpdpbusd (VEX)
 *   avx2, avx512        tiles of 2 rows x 16 outputs, bytes widened to int16, vpmaddwd
 *   portable            plain C loops (same integers)
 * OpenMP splits the output rows in panels of 64 across threads; a panel's weights
 * (64 kp bytes) stay in L2 while every row tile of the activations passes over them.
 */
#ifndef VOXNP_IGEMM_H
#define VOXNP_IGEMM_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_cpu.h"

#define IG_BLOCK 16          /* output rows per packed block */
#define IG_QUAD 4            /* inputs per packed group */
#define IG_PANEL 4           /* blocks per panel (one thread's unit of work) */
#define IG_MR 6              /* activation rows per tile */
#define IG_LEVELS 127        /* activations: int8, symmetric */
#define IG_FLOOR 1e-30f      /* a row of activations smaller than this is zero (quant.ACT_FLOOR) */
#define IG_AMX_ROWS 32       /* activation rows per AMX step (two tiles of 16) */
#define IG_AMX_K 64          /* inputs per AMX tile row */

#define IG_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------ */
/* activations: one row x [k] -> u [kp] (xq + 128) and its scale                          */

/* max |x[j0:k]| on the bit patterns, from `top` on: for non-NaN floats the order of |x| is
   the order of the integers; NaN and inf patterns are above 0x7f7fffff */
IG_INLINE uint32_t ig_top_bits(const float *x, int64_t j0, int64_t k, uint32_t top)
{
    for (int64_t j = j0; j < k; j++) {
        uint32_t b;
        memcpy(&b, x + j, 4);
        b &= 0x7fffffffu;
        top = b > top ? b : top;
    }
    return top;
}

/* The row's scale from its top bits; 1 when the row is settled already (NaN/inf: NaN
   results; tiny: zeros), else *inv is the multiplier for the conversion. */
IG_INLINE int ig_row_scale(uint32_t top, int64_t kp, uint8_t *u, float *xs, float *inv)
{
    float amax;
    memcpy(&amax, &top, 4);
    if (top > 0x7f7fffffu || amax < IG_FLOOR) {
        *xs = top > 0x7f7fffffu ? NAN : 0.0f;
        memset(u, 128, (size_t)kp);
        return 1;
    }
    *inv = (float)IG_LEVELS / amax;
    *xs = amax / (float)IG_LEVELS;
    return 0;
}

/* u[j0:k] = rint(x * inv) + 128, and the padding to kp (zeros: 128). */
IG_INLINE void ig_convert(const float *x, int64_t j0, int64_t k, int64_t kp, float inv, uint8_t *u)
{
    for (int64_t j = j0; j < k; j++)
        u[j] = (uint8_t)(lrintf(x[j] * inv) + 128);
    for (int64_t j = k > j0 ? k : j0; j < kp; j++)
        u[j] = 128;
}

IG_INLINE void ig_quantize_row_body(const float *x, int64_t k, int64_t kp, uint8_t *u, float *xs)
{
    float inv;
    if (ig_row_scale(ig_top_bits(x, 0, k, 0), kp, u, xs, &inv)) return;
    ig_convert(x, 0, k, kp, inv, u);
}

static void ig_quantize_row_portable(const float *x, int64_t k, int64_t kp, uint8_t *u, float *xs)
{
    ig_quantize_row_body(x, k, kp, u, xs);
}

#ifdef VOXNP_X86
VOXNP_TARGET_BEGIN(VOXNP_T_AVX2)
static void ig_quantize_row_avx2(const float *x, int64_t k, int64_t kp, uint8_t *u, float *xs)
{
    ig_quantize_row_body(x, k, kp, u, xs);
}
VOXNP_TARGET_END

VOXNP_TARGET_BEGIN(VOXNP_T_AVX512)
/* The same integers on 16 lanes: max of the bit patterns, then rint(x * inv) + 128
 * (vcvtps2dq rounds to nearest even, as lrintf does in the default rounding mode). */
static void ig_quantize_row_avx512(const float *x, int64_t k, int64_t kp, uint8_t *u, float *xs)
{
    const __m512i abs_bits = _mm512_set1_epi32(0x7fffffff);
    __m512i top16 = _mm512_setzero_si512();
    int64_t j = 0;
    for (; j + 16 <= k; j += 16)
        top16 = _mm512_max_epu32(top16, _mm512_and_si512(_mm512_loadu_si512((const void *)(x + j)), abs_bits));
    float inv;
    if (ig_row_scale(ig_top_bits(x, j, k, _mm512_reduce_max_epu32(top16)), kp, u, xs, &inv)) return;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i offset = _mm512_set1_epi32(128);
    for (j = 0; j + 16 <= k; j += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + j), vinv));
        _mm_storeu_si128((__m128i *)(u + j), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, offset)));
    }
    ig_convert(x, j, k, kp, inv, u);
}
VOXNP_TARGET_END
#endif

/* ------------------------------------------------------------------------------------ */
/* the float epilogue, the same for every set: y = float(acc - 128 wsum) * (xs * ws)      */

IG_INLINE float ig_finish(int32_t acc, int32_t wsum, float xs, float ws)
{
    float s = xs * ws;
    return (float)(acc - 128 * wsum) * s;
}

/* ------------------------------------------------------------------------------------ */
/* portable                                                                              */

static void ig_panel_portable(const int8_t *wp, int64_t kp, int nb, const uint8_t *u, int64_t M,
                              const float *xs, const float *ws, const int32_t *wsum, float *y,
                              int64_t n, int64_t n0)
{
    for (int64_t m = 0; m < M; m++)
        for (int b = 0; b < nb; b++) {
            const int8_t *blk = wp + (int64_t)b * IG_BLOCK * kp;
            for (int o = 0; o < IG_BLOCK; o++) {
                int64_t col = n0 + b * IG_BLOCK + o;
                if (col >= n) continue;
                int32_t acc = 0;
                for (int64_t q = 0; q < kp / IG_QUAD; q++)
                    for (int i = 0; i < IG_QUAD; i++)
                        acc += (int32_t)u[m * kp + q * IG_QUAD + i] * blk[(q * IG_BLOCK + o) * IG_QUAD + i];
                y[m * n + col] = ig_finish(acc, wsum[col], xs[m], ws[col]);
            }
        }
}

/* ------------------------------------------------------------------------------------ */
/* AVX2: 2 rows x one block of 16 outputs; bytes widened to int16, pairs summed by madd.  */
/* A block's 64 bytes become 4 vectors of 4 outputs x 4 inputs; the int32 lanes hold    */
/* (inputs 0+1, inputs 2+3) per output, added at the end.                               */

#ifdef VOXNP_X86
VOXNP_TARGET_BEGIN(VOXNP_T_AVX2)
static void ig_panel_avx2(const int8_t *wp, int64_t kp, int nb, const uint8_t *u, int64_t M,
                          const float *xs, const float *ws, const int32_t *wsum, float *y, int64_t n, int64_t n0)
{
    int64_t kq = kp / IG_QUAD;
    for (int b = 0; b < nb; b++) {
        const int8_t *blk = wp + (int64_t)b * IG_BLOCK * kp;
        int64_t c0 = n0 + b * IG_BLOCK;
        for (int64_t m0 = 0; m0 < M; m0 += 2) {
            int rows = M - m0 < 2 ? (int)(M - m0) : 2;
            const uint8_t *u0 = u + m0 * kp, *u1 = u + (m0 + rows - 1) * kp;
            __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
            __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (int64_t q = 0; q < kq; q++) {
                const int8_t *w = blk + q * IG_BLOCK * IG_QUAD;
                __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w)));
                __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
                __m256i w2 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 32)));
                __m256i w3 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 48)));
                int32_t p0, p1;
                memcpy(&p0, u0 + q * IG_QUAD, 4);
                memcpy(&p1, u1 + q * IG_QUAD, 4);
                __m256i x0 = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(p0)));
                __m256i x1 = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(p1)));
                a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w0, x0));
                a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w1, x0));
                a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w2, x0));
                a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(w3, x0));
                a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w0, x1));
                a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w1, x1));
                a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w2, x1));
                a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(w3, x1));
            }
            int32_t lanes[2][32];
            _mm256_storeu_si256((__m256i *)lanes[0], a00);
            _mm256_storeu_si256((__m256i *)(lanes[0] + 8), a01);
            _mm256_storeu_si256((__m256i *)(lanes[0] + 16), a02);
            _mm256_storeu_si256((__m256i *)(lanes[0] + 24), a03);
            _mm256_storeu_si256((__m256i *)lanes[1], a10);
            _mm256_storeu_si256((__m256i *)(lanes[1] + 8), a11);
            _mm256_storeu_si256((__m256i *)(lanes[1] + 16), a12);
            _mm256_storeu_si256((__m256i *)(lanes[1] + 24), a13);
            for (int r = 0; r < rows; r++)
                for (int o = 0; o < IG_BLOCK; o++) {
                    int64_t col = c0 + o;
                    if (col < n)
                        y[(m0 + r) * n + col] = ig_finish(lanes[r][2 * o] + lanes[r][2 * o + 1], wsum[col],
                                                          xs[m0 + r], ws[col]);
                }
        }
    }
}

VOXNP_TARGET_END

/* ------------------------------------------------------------------------------------ */
/* AVX-VNNI: 6 rows x one block of 16 outputs (two ymm per row)                           */

VOXNP_TARGET_BEGIN(VOXNP_T_AVXVNNI)
static void ig_finish_ymm(__m256i acc, const int32_t *wsum, float xs, const float *ws, float *out, int64_t cols)
{
    __m256i dot = _mm256_sub_epi32(acc, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)wsum), 7));
    __m256 s = _mm256_mul_ps(_mm256_set1_ps(xs), _mm256_loadu_ps(ws));
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), s);
    if (cols >= 8) {
        _mm256_storeu_ps(out, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        for (int64_t i = 0; i < cols; i++) out[i] = tmp[i];
    }
}

static void ig_panel_avxvnni(const int8_t *wp, int64_t kp, int nb, const uint8_t *u, int64_t M,
                             const float *xs, const float *ws, const int32_t *wsum, float *y, int64_t n, int64_t n0)
{
    int64_t kq = kp / IG_QUAD;
    for (int b = 0; b < nb; b++) {
        const int8_t *blk = wp + (int64_t)b * IG_BLOCK * kp;
        int64_t c0 = n0 + b * IG_BLOCK;
        for (int64_t m0 = 0; m0 < M; m0 += IG_MR) {
            int rows = M - m0 < IG_MR ? (int)(M - m0) : IG_MR;
            const uint8_t *ur[IG_MR];
            for (int r = 0; r < IG_MR; r++) ur[r] = u + (m0 + (r < rows ? r : rows - 1)) * kp;
            __m256i acc[IG_MR][2];
            for (int r = 0; r < IG_MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
            for (int64_t q = 0; q < kq; q++) {
                const int8_t *w = blk + q * IG_BLOCK * IG_QUAD;
                __m256i w0 = _mm256_loadu_si256((const __m256i *)w);
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 32));
#pragma GCC unroll 6
                for (int r = 0; r < IG_MR; r++) {
                    int32_t p;
                    memcpy(&p, ur[r] + q * IG_QUAD, 4);
                    __m256i a = _mm256_set1_epi32(p);
                    acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], a, w0);
                    acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], a, w1);
                }
            }
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < 2; h++) {
                    int64_t col = c0 + 8 * h;
                    if (col < n)
                        ig_finish_ymm(acc[r][h], wsum + col, xs[m0 + r], ws + col, y + (m0 + r) * n + col, n - col);
                }
        }
    }
}

VOXNP_TARGET_END

/* ------------------------------------------------------------------------------------ */
/* AVX-512 VNNI: 6 rows x NB blocks (NB <= 4: 64 outputs)                                */

VOXNP_TARGET_BEGIN(VOXNP_T_AVX512VNNI)
/* One row's 16 outputs from col on (cols of them exist): the float epilogue on 16 lanes. */
IG_INLINE void ig_finish_zmm(__m512i acc, const int32_t *wsum, float xs, const float *ws, float *out, int64_t cols)
{
    __mmask16 mask = (__mmask16)(cols >= IG_BLOCK ? 0xFFFFu : (1u << cols) - 1);
    __m512i dot = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, wsum), 7));
    __m512 s = _mm512_mul_ps(_mm512_set1_ps(xs), _mm512_maskz_loadu_ps(mask, ws));
    _mm512_mask_storeu_ps(out, mask, _mm512_mul_ps(_mm512_cvtepi32_ps(dot), s));
}

IG_INLINE void ig_tile_avx512(const int8_t *wp, int64_t kp, const int NB, const uint8_t *u, int64_t m0, int rows,
                              const float *xs, const float *ws, const int32_t *wsum, float *y, int64_t n, int64_t c0)
{
    int64_t kq = kp / IG_QUAD;
    const uint8_t *ur[IG_MR];
    for (int r = 0; r < IG_MR; r++) ur[r] = u + (m0 + (r < rows ? r : rows - 1)) * kp;
    __m512i acc[IG_MR][IG_PANEL];
#pragma GCC unroll 6
    for (int r = 0; r < IG_MR; r++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_si512();
    for (int64_t q = 0; q < kq; q++) {
        __m512i w[IG_PANEL];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            w[b] = _mm512_loadu_si512((const void *)(wp + (int64_t)b * IG_BLOCK * kp + q * IG_BLOCK * IG_QUAD));
#pragma GCC unroll 6
        for (int r = 0; r < IG_MR; r++) {
            int32_t p;
            memcpy(&p, ur[r] + q * IG_QUAD, 4);
            __m512i a = _mm512_set1_epi32(p);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], a, w[b]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < NB; b++) {
            int64_t col = c0 + (int64_t)b * IG_BLOCK;
            if (col >= n) break;
            ig_finish_zmm(acc[r][b], wsum + col, xs[m0 + r], ws + col, y + (m0 + r) * n + col, n - col);
        }
}

static void ig_panel_avx512(const int8_t *wp, int64_t kp, int nb, const uint8_t *u, int64_t M,
                            const float *xs, const float *ws, const int32_t *wsum, float *y, int64_t n, int64_t n0)
{
    for (int64_t m0 = 0; m0 < M; m0 += IG_MR) {
        int rows = M - m0 < IG_MR ? (int)(M - m0) : IG_MR;
        switch (nb) {
        case 4: ig_tile_avx512(wp, kp, 4, u, m0, rows, xs, ws, wsum, y, n, n0); break;
        case 3: ig_tile_avx512(wp, kp, 3, u, m0, rows, xs, ws, wsum, y, n, n0); break;
        case 2: ig_tile_avx512(wp, kp, 2, u, m0, rows, xs, ws, wsum, y, n, n0); break;
        default: ig_tile_avx512(wp, kp, 1, u, m0, rows, xs, ws, wsum, y, n, n0); break;
        }
    }
}

VOXNP_TARGET_END

/* ------------------------------------------------------------------------------------ */
/* AMX: tiles of 16 rows x 64 bytes. A = 16 activation rows x 64 inputs (stride kp);     */
/* B = 16 quads of a packed block (64 bytes each: 16 outputs x 4 inputs, stride 64), the  */
/* layout tdpbusd takes; C = 16 rows x 16 int32 outputs. Tiles 0-3: C for (row tile h,   */
/* block bb) = 2 bb + h; 4-5: A; 6-7: B. The activations have IG_AMX_ROWS-aligned rows    */
/* (the padding rows are 128: zero), so every tile is full; padded rows are not stored.  */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} ig_tilecfg;

VOXNP_TARGET_BEGIN(VOXNP_T_AMX)
static void ig_panel_amx(const int8_t *wp, int64_t kp, int nb, const uint8_t *u, int64_t M,
                         const float *xs, const float *ws, const int32_t *wsum, float *y, int64_t n, int64_t n0)
{
    ig_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    int32_t c[4][16][16] __attribute__((aligned(64)));
    for (int64_t m0 = 0; m0 < M; m0 += IG_AMX_ROWS) {
        const uint8_t *a0 = u + m0 * kp, *a1 = a0 + 16 * kp;
        for (int b = 0; b < nb; b += 2) {
            const int8_t *b0 = wp + (int64_t)b * IG_BLOCK * kp, *b1 = b0 + IG_BLOCK * kp;
            int pair = b + 1 < nb;
            _tile_zero(0);
            _tile_zero(1);
            if (pair) {
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t k0 = 0; k0 < kp; k0 += IG_AMX_K) {
                    _tile_loadd(4, a0 + k0, kp);
                    _tile_loadd(5, a1 + k0, kp);
                    _tile_loadd(6, b0 + k0 * IG_BLOCK, 64);       /* quad k0/4 is at byte 64 k0/4 */
                    _tile_loadd(7, b1 + k0 * IG_BLOCK, 64);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 5, 6);
                    _tile_dpbusd(2, 4, 7);
                    _tile_dpbusd(3, 5, 7);
                }
            } else {
                for (int64_t k0 = 0; k0 < kp; k0 += IG_AMX_K) {
                    _tile_loadd(4, a0 + k0, kp);
                    _tile_loadd(5, a1 + k0, kp);
                    _tile_loadd(6, b0 + k0 * IG_BLOCK, 64);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 5, 6);
                }
            }
            _tile_stored(0, c[0], 64);
            _tile_stored(1, c[1], 64);
            if (pair) {
                _tile_stored(2, c[2], 64);
                _tile_stored(3, c[3], 64);
            }
            for (int bb = 0; bb <= pair; bb++) {
                int64_t col = n0 + (int64_t)(b + bb) * IG_BLOCK;
                if (col >= n) break;
                for (int h = 0; h < 2; h++)
                    for (int r = 0; r < 16 && m0 + 16 * h + r < M; r++) {
                        int64_t m = m0 + 16 * h + r;
                        ig_finish_zmm(_mm512_load_si512((const void *)c[2 * bb + h][r]), wsum + col, xs[m],
                                      ws + col, y + m * n + col, n - col);
                    }
            }
        }
    }
    _tile_release();
}
VOXNP_TARGET_END
#endif

/* ------------------------------------------------------------------------------------ */
/* y [M, n] = x [M, k] times the packed matrix (wp [np/16][kp/4][16][4], np = n rounded   */
/* up to 16; ws, wsum [np]). Returns 0, or -1 when out of memory.                        */

static int ig_matmul(const int8_t *wp, const float *ws, const int32_t *wsum, int64_t n, int64_t kp,
                     const float *x, int64_t M, int64_t k, float *y, int threads, int kset)
{
    int amx = kset >= KSET_AMX && kp % IG_AMX_K == 0;
    int64_t rows = amx ? (M + IG_AMX_ROWS - 1) / IG_AMX_ROWS * IG_AMX_ROWS : M;   /* the tiles' padding */
    uint8_t *u = (uint8_t *)aligned_alloc(64, (size_t)((rows * kp + 63) / 64 * 64 + 64));
    float *xs = (float *)malloc((size_t)(M > 0 ? M : 1) * sizeof(float));
    if (!u || !xs) {
        free(u);
        free(xs);
        return -1;
    }
    memset(u + M * kp, 128, (size_t)((rows - M) * kp));
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t m = 0; m < M; m++) {
#ifdef VOXNP_X86
        if (kset >= KSET_AVX512) { ig_quantize_row_avx512(x + m * k, k, kp, u + m * kp, xs + m); continue; }
        if (kset >= KSET_AVX2) { ig_quantize_row_avx2(x + m * k, k, kp, u + m * kp, xs + m); continue; }
#endif
        ig_quantize_row_portable(x + m * k, k, kp, u + m * kp, xs + m);
    }
    int64_t blocks = (n + IG_BLOCK - 1) / IG_BLOCK;
    int64_t panels = (blocks + IG_PANEL - 1) / IG_PANEL;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < panels; p++) {
        int64_t b0 = p * IG_PANEL;
        int nb = (int)(blocks - b0 < IG_PANEL ? blocks - b0 : IG_PANEL);
        const int8_t *panel = wp + b0 * IG_BLOCK * kp;
        int64_t n0 = b0 * IG_BLOCK;
#ifdef VOXNP_X86
        if (amx) { ig_panel_amx(panel, kp, nb, u, M, xs, ws, wsum, y, n, n0); continue; }
        if (kset >= KSET_AVX512VNNI) { ig_panel_avx512(panel, kp, nb, u, M, xs, ws, wsum, y, n, n0); continue; }
        if (kset == KSET_AVXVNNI) { ig_panel_avxvnni(panel, kp, nb, u, M, xs, ws, wsum, y, n, n0); continue; }
        if (kset >= KSET_AVX2) { ig_panel_avx2(panel, kp, nb, u, M, xs, ws, wsum, y, n, n0); continue; }
#endif
        ig_panel_portable(panel, kp, nb, u, M, xs, ws, wsum, y, n, n0);
    }
    free(u);
    free(xs);
    return 0;
}

#endif
