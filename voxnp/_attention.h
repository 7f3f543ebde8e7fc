/* Fused sliding-window attention for blocks of positions (the encoder; the decoder's prompt).
 *
 *   out[t, h] = sum_j softmax_j(q[h, t] . k[g, j]) v[g, j]   over the keys j with
 *               pos(t) - window < key_pos[j] <= pos(t),  g = h / (H / Hkv)
 *
 * One task per query head, split across OpenMP threads; it transposes its keys once, then
 * each tile of `chunk` queries is scored against the run of keys any of its queries sees
 * (register tiles of 6 queries x 2 vectors of keys, the keys transposed so a vector holds
 * consecutive keys; each block of keys stays in L1 while all the tile's rows use it, and
 * a group of rows skips the keys none of them sees), softmaxes each row over its own
 * window in place (vector max, exponential, sum over the window's vectors; hidden keys
 * get 0) and weighs the values (register tiles of rows x the head's dims, blocks of 128
 * values in L1, each group of rows only over its windows' keys). The scores ([chunk, n]
 * floats) stay in the core's cache: nothing of size T x S is written. The exponential is
 * the Cephes single-precision polynomial of kernels.py (EXP_POLY). Each task runs with
 * subnormal floats flushed to zero (cpu_denormals_flush, _cpu.h), both here and in att_ring.
 *
 * Variants: GCC vector extensions compiled per kernel set (_attention_simd.h: 16 lanes on
 * avx512 and up, 8 on avx2/avxvnni, 4 on portable x86-64); a head size that is not a
 * multiple of the lanes (the tiny test models) takes the plain C tile.
 */
#ifndef VOXNP_ATTENTION_H
#define VOXNP_ATTENTION_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "_cpu.h"

#define ATT_QR 6                        /* query rows per scoring tile */
#ifndef ATT_KB
#define ATT_KB 128                      /* keys per block of values weighed by every row */
#endif
#define ATT_PAD 32                      /* zero columns after the keys of kT (the widest tile) */
#define ATT_AHEAD 8                     /* keys or values fetched ahead by the decoder's step (att_ring) */
#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2_HI 0.693359375f
#define ATT_LN2_LO -2.12194440e-4f
#define ATT_P0 1.9875691500e-4f
#define ATT_P1 1.3981999507e-3f
#define ATT_P2 8.3334519073e-3f
#define ATT_P3 4.1665795894e-2f
#define ATT_P4 1.6666665459e-1f
#define ATT_P5 5.0000001201e-1f

/* ------------------------------------------------------------------------------------ */
/* plain C: any head size                                                                */

static float att_exp_scalar(float y)
{
    if (y < -87.0f) y = -87.0f;
    float k = floorf(y * ATT_LOG2E + 0.5f);
    float f = y - k * ATT_LN2_HI - k * ATT_LN2_LO;
    float p = ((((ATT_P0 * f + ATT_P1) * f + ATT_P2) * f + ATT_P3) * f + ATT_P4) * f + ATT_P5;
    return ldexpf(p * f * f + f + 1.0f, (int)k);
}

static void att_tile_plain(const float *q, int64_t C, int hd, const float *kT, int64_t ldk,
                           const float *v, int64_t n, const int64_t *a, const int64_t *b,
                           float *S, float *out, int64_t ldo)
{
    for (int64_t i = 0; i < C; i++) {
        float *row = S + i * n, best = -INFINITY, total = 0.0f;
        for (int64_t j = a[i]; j < b[i]; j++) {
            float s = 0.0f;
            for (int d = 0; d < hd; d++) s += q[i * hd + d] * kT[d * ldk + j];
            row[j] = s;
            best = s > best ? s : best;
        }
        for (int64_t j = a[i]; j < b[i]; j++) {
            row[j] = att_exp_scalar(row[j] - best);
            total += row[j];
        }
        for (int d = 0; d < hd; d++) out[i * ldo + d] = 0.0f;
        for (int64_t j = a[i]; j < b[i]; j++) {
            float p = row[j] / total;
            for (int d = 0; d < hd; d++) out[i * ldo + d] += p * v[j * hd + d];
        }
    }
}

/* The decoder's step for one KV head (att_ring), any head size: the vector variants'
 * loops with one lane. */
static inline float att_kv_at(const void *ring, int64_t i, int bf16)   /* element i, float32 or BF16 */
{
    if (!bf16) return ((const float *)ring)[i];
    union { uint32_t u; float f; } wide = {(uint32_t)((const uint16_t *)ring)[i] << 16};
    return wide.f;
}

static void att_ring_head_plain(const float *q, int64_t T, int64_t group, int hd, const void *rk,
                                const void *rv, int bf16, int64_t cap, int64_t length, int64_t window,
                                float *S, int64_t ld, float *acc)
{
    for (int64_t t = 0; t < T; t++) {
        int64_t p = length - T + t, first = p - window + 1 > 0 ? p - window + 1 : 0, n = p + 1 - first;
        for (int64_t h = 0; h < group; h++) {
            const float *qr = q + (t * group + h) * hd;
            float *row = S + (t * group + h) * ld, best = -INFINITY, total = 0.0f;
            for (int64_t j = 0; j < n; j++) {
                int64_t key = ((first + j) % cap) * hd;
                float s = 0.0f;
                for (int d = 0; d < hd; d++) s += qr[d] * att_kv_at(rk, key + d, bf16);
                row[j] = s;
                best = s > best ? s : best;
            }
            for (int64_t j = 0; j < n; j++) {
                row[j] = att_exp_scalar(row[j] - best);
                total += row[j];
            }
            float inv = 1.0f / total, *a = acc + (t * group + h) * hd;
            for (int d = 0; d < hd; d++) a[d] = 0.0f;
            for (int64_t j = 0; j < n; j++) {
                int64_t value = ((first + j) % cap) * hd;
                float w = row[j] * inv;
                for (int d = 0; d < hd; d++) a[d] += w * att_kv_at(rv, value + d, bf16);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* vector variants (fused multiply-adds allowed inside them)                              */

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#define ATT_V sse
#define ATT_W 4
#include "_attention_simd.h"
#undef ATT_V
#undef ATT_W
#pragma GCC pop_options

#ifdef VOXNP_X86
VOXNP_TARGET_BEGIN(VOXNP_T_AVX2)
#pragma GCC optimize("fp-contract=fast")
#define ATT_V avx2
#define ATT_W 8
#include "_attention_simd.h"
#undef ATT_V
#undef ATT_W
VOXNP_TARGET_END

VOXNP_TARGET_BEGIN(VOXNP_T_AVX512)
#pragma GCC optimize("fp-contract=fast")
#define ATT_V avx512
#define ATT_W 16
#include "_attention_simd.h"
#undef ATT_V
#undef ATT_W
VOXNP_TARGET_END
#endif

/* First index of the ascending key_pos [lo, hi) with key_pos > p. */
static int64_t att_after(const int64_t *key_pos, int64_t lo, int64_t hi, int64_t p)
{
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (key_pos[mid] > p) hi = mid; else lo = mid + 1;
    }
    return lo;
}

/* q [H, T, hd] (scaled by 1/sqrt(hd)); k, v [Hkv, S, hd]; key_pos [S] ascending; query t is
 * at first_pos + t. out [T, H, hd]. One task per query head: its KV head's keys are
 * transposed once ([hd, S + ATT_PAD], zeros after S) into the task's scratch, then each
 * tile of `chunk` queries runs. Returns 0, or -1 when out of memory. */
static int att_window(const float *q, int64_t H, int64_t T, int hd, const float *k, const float *v,
                      int64_t Hkv, int64_t S, const int64_t *key_pos, int64_t first_pos,
                      int64_t window, int64_t chunk, float *out, int threads, int kset)
{
    int64_t group = H / Hkv, ldk = S + ATT_PAD;
    int failed = 0;
    int lanes = 4;
#ifdef VOXNP_X86
    lanes = kset >= KSET_AVX512 ? 16 : kset >= KSET_AVX2 ? 8 : 4;
#endif
    int vector = hd % lanes == 0 && hd <= 8 * lanes;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / group, most = (chunk < T ? chunk : T) * (S + ATT_PAD);
        float *kT = (float *)malloc((size_t)(hd * ldk + most) * sizeof(float));
        int64_t *ab = (int64_t *)malloc((size_t)(2 * chunk) * sizeof(int64_t));
        if (!kT || !ab) {
            free(kT);
            free(ab);
#pragma omp atomic write
            failed = 1;
            continue;
        }
        float *scores = kT + hd * ldk;
        unsigned fp_state = cpu_denormals_flush();
        const float *kg = k + g * S * hd;
        for (int64_t j0 = 0; j0 < S; j0 += 16)                /* transpose in 16-key strips */
            for (int d = 0; d < hd; d++)
                for (int64_t j = j0; j < j0 + 16 && j < S; j++) kT[d * ldk + j] = kg[j * hd + d];
        for (int d = 0; d < hd; d++)
            for (int64_t j = S; j < ldk; j++) kT[d * ldk + j] = 0.0f;
        for (int64_t c0 = 0; c0 < T; c0 += chunk) {
            int64_t c1 = c0 + chunk < T ? c0 + chunk : T, C = c1 - c0;
            int64_t lo = att_after(key_pos, 0, S, first_pos + c0 - window);
            int64_t hi = att_after(key_pos, lo, S, first_pos + c1 - 1);
            int64_t n = hi - lo;
            for (int64_t i = 0; i < C; i++) {
                int64_t p = first_pos + c0 + i;
                ab[i] = att_after(key_pos, lo, hi, p - window) - lo;
                ab[C + i] = att_after(key_pos, lo, hi, p) - lo;
            }
            const float *qt = q + (h * T + c0) * hd, *kt = kT + lo, *vt = v + (g * S + lo) * hd;
            float *o = out + (c0 * H + h) * hd;
            if (!vector) att_tile_plain(qt, C, hd, kt, ldk, vt, n, ab, ab + C, scores, o, H * hd);
#ifdef VOXNP_X86
            else if (kset >= KSET_AVX512) att_tile_avx512(qt, C, hd, kt, ldk, vt, n, ab, ab + C, scores, o, H * hd);
            else if (kset >= KSET_AVX2) att_tile_avx2(qt, C, hd, kt, ldk, vt, n, ab, ab + C, scores, o, H * hd);
#endif
            else att_tile_sse(qt, C, hd, kt, ldk, vt, n, ab, ab + C, scores, o, H * hd);
        }
        cpu_denormals_restore(fp_state);
        free(kT);
        free(ab);
    }
    return failed ? -1 : 0;
}

/* The decoder's step: the last T (<= 8) positions, already appended to the ring, attend over
 * it in place. q [T, H, hd] (unscaled); ring_k, ring_v [Hkv, cap, hd] float32 (bf16 = 0) or
 * BF16 bits (bf16 = 1), position p in slot p % cap; query t is at p = length - T + t and sees
 * max(0, p - window + 1) .. p. out [T, H, hd].
 * One task per KV head: each key and value is read from memory once for the T positions and
 * the query heads that share it (a BF16 ring's widened as it is loaded: the arithmetic is
 * that of a float32 ring holding the same values). Every row's arithmetic is
 * independent of T and of the other rows (its own keys, softmax and sums, in a fixed
 * order), so T rows give bit for bit what T one-row calls give. Returns 0, or -1 when out
 * of memory. */
static int att_ring(const float *q, int64_t T, int64_t H, int hd, const void *ring_k, const void *ring_v,
                    int bf16, int64_t Hkv, int64_t cap, int64_t length, int64_t window, float *out,
                    int threads, int kset)
{
    int64_t group = H / Hkv, R = T * group;
    int64_t seen = window < length ? window : length;          /* most keys a row sees */
    int64_t ld = (seen + 16 + 15) / 16 * 16;                    /* room for a vector past the last */
    float scale = 1.0f / sqrtf((float)hd);
    int failed = 0;
    int lanes = 4;
#ifdef VOXNP_X86
    lanes = kset >= KSET_AVX512 ? 16 : kset >= KSET_AVX2 ? 8 : 4;
#endif
    int vector = hd % lanes == 0;
    if (threads < 1) threads = 1;
    if (threads > Hkv) threads = (int)Hkv;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < Hkv; g++) {
        float *qs = (float *)malloc((size_t)(R * hd * 2 + R * ld) * sizeof(float));
        if (!qs) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        float *acc = qs + R * hd, *S = acc + R * hd;
        unsigned fp_state = cpu_denormals_flush();
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < group; h++)
                for (int d = 0; d < hd; d++)
                    qs[(t * group + h) * hd + d] = q[(t * H + g * group + h) * hd + d] * scale;
        int64_t at = g * cap * hd;                               /* the head's first element */
        const float *fk = (const float *)ring_k + at, *fv = (const float *)ring_v + at;
        const uint16_t *hk = (const uint16_t *)ring_k + at, *hv = (const uint16_t *)ring_v + at;
        if (!vector) att_ring_head_plain(qs, T, group, hd, bf16 ? (const void *)hk : fk, bf16 ? (const void *)hv : fv,
                                         bf16, cap, length, window, S, ld, acc);
#ifdef VOXNP_X86
        else if (kset >= KSET_AVX512 && bf16) att_ring_head_bf16_avx512(qs, T, group, hd, hk, hv, cap, length, window, S, ld, acc);
        else if (kset >= KSET_AVX512) att_ring_head_avx512(qs, T, group, hd, fk, fv, cap, length, window, S, ld, acc);
        else if (kset >= KSET_AVX2 && bf16) att_ring_head_bf16_avx2(qs, T, group, hd, hk, hv, cap, length, window, S, ld, acc);
        else if (kset >= KSET_AVX2) att_ring_head_avx2(qs, T, group, hd, fk, fv, cap, length, window, S, ld, acc);
#endif
        else if (bf16) att_ring_head_bf16_sse(qs, T, group, hd, hk, hv, cap, length, window, S, ld, acc);
        else att_ring_head_sse(qs, T, group, hd, fk, fv, cap, length, window, S, ld, acc);
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < group; h++)
                for (int d = 0; d < hd; d++)
                    out[(t * H + g * group + h) * hd + d] = acc[(t * group + h) * hd + d];
        cpu_denormals_restore(fp_state);
        free(qs);
    }
    return failed ? -1 : 0;
}

#endif
