/* One SIMD variant of the few-row BF16 product (included by _bf16.h once per variant,
 * inside VOXNP_TARGET_BEGIN/END). The includer defines:
 *   BF16_V        the variant's name suffix (avx2, avx512)
 *   BF16_LANES    float lanes per vector (8 or 16), BF16_VEC its vector type, and
 *   BF16_LOAD, BF16_FMA, BF16_ZERO, BF16_WIDEN (8 or 16 BF16 -> floats), BF16_HSUM
 * Defines bf16_rows_<V>(w, k, r0, r1, x, M, y, n): rows [r0, r1) of y = x @ W.T.
 */
#define BF16_CAT2(a, b) a##_##b
#define BF16_CAT(a, b) BF16_CAT2(a, b)
#define BF16_NAME(x) BF16_CAT(x, BF16_V)

/* y[m*ldy + i] for the NR weight rows at w (row stride k) and the NM activation rows at
 * x (row stride k). NR and NM are compile-time constants at every call (see the block
 * function), so the loops unroll and the NR x NM accumulators live in registers. */
static inline __attribute__((always_inline)) void
BF16_NAME(bf16_tile)(const uint16_t *w, int64_t k, const float *x, float *y, int64_t ldy,
                     const int NR, const int NM) {
    BF16_VEC acc[8][8], v[8];                           /* NR, NM <= 8 */
    int i, m;
    int64_t j, k8 = k - k % BF16_LANES;
    for (i = 0; i < NR; i++)
        for (m = 0; m < NM; m++) acc[i][m] = BF16_ZERO();
    for (j = 0; j < k8; j += BF16_LANES) {
        for (i = 0; i < NR; i++) v[i] = BF16_WIDEN(w + i * k + j);
        for (m = 0; m < NM; m++) {
            BF16_VEC a = BF16_LOAD(x + m * k + j);
            for (i = 0; i < NR; i++) acc[i][m] = BF16_FMA(v[i], a, acc[i][m]);
        }
    }
    if (k8 < k) {                                     /* the last k % LANES columns, zero-padded */
        uint16_t wt[BF16_LANES];
        float xt[BF16_LANES];
        for (i = 0; i < NR; i++) {
            memset(wt, 0, sizeof wt);
            memcpy(wt, w + i * k + k8, (size_t)(k - k8) * sizeof(uint16_t));
            v[i] = BF16_WIDEN(wt);
        }
        for (m = 0; m < NM; m++) {
            memset(xt, 0, sizeof xt);
            memcpy(xt, x + m * k + k8, (size_t)(k - k8) * sizeof(float));
            BF16_VEC a = BF16_LOAD(xt);
            for (i = 0; i < NR; i++) acc[i][m] = BF16_FMA(v[i], a, acc[i][m]);
        }
    }
    for (i = 0; i < NR; i++)
        for (m = 0; m < NM; m++) y[m * ldy + i] = BF16_HSUM(acc[i][m]);
}

#define BF16_TILE_CASE(R, M) case (R) * 16 + (M): BF16_NAME(bf16_tile)(w, k, x, y, ldy, R, M); break;

static void BF16_NAME(bf16_block)(const uint16_t *w, int64_t k, int nr, const float *x, int nm,
                                  float *y, int64_t ldy) {
    switch (nr * 16 + nm) {
        BF16_TILE_CASE(8, 1)
        BF16_TILE_CASE(4, 1) BF16_TILE_CASE(4, 2) BF16_TILE_CASE(4, 3) BF16_TILE_CASE(4, 4)
        BF16_TILE_CASE(4, 5) BF16_TILE_CASE(4, 6)
        default: {                                    /* matrix edges: one row pair at a time */
            int i, m;
            for (i = 0; i < nr; i++)
                for (m = 0; m < nm; m++)
                    BF16_NAME(bf16_tile)(w + i * k, k, x + m * k, y + m * ldy + i, ldy, 1, 1);
        }
    }
}
#undef BF16_TILE_CASE

static void BF16_NAME(bf16_rows)(const uint16_t *w, int64_t k, int64_t r0, int64_t r1,
                                 const float *x, int64_t M, float *y, int64_t n) {
    bf16_rows_tiled(w, k, r0, r1, x, M, y, n, BF16_MB, BF16_NAME(bf16_block));
}

#undef BF16_NAME
#undef BF16_CAT
#undef BF16_CAT2
