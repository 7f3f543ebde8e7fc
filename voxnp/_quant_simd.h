/* One SIMD variant of the quantized products (included by _quant.h once per variant,
 * inside VOXNP_TARGET_BEGIN/END). The includer defines:
 *   QV            the variant's name suffix (avx2, avxvnni, avx512, avx512vnni)
 *   QI            the integer vector type; Q_W16 its int16 lanes (16 or 32)
 *   Q_ROWS        activation rows whose accumulators share the registers (<= 8)
 *   Q_ZERO(), Q_LOAD(p) (a whole vector: Q_W16 int16 or 2 Q_W16 int8),
 *   Q_S8(p) (Q_W16 int8 -> int16),
 *   Q_DOT(acc, a, b) (acc + pairs of int16 products, int32), Q_ADD32(a, b) (int32 lanes),
 *   q4k: Q4_CHUNKS (32-byte chunks of packed nibbles per vector: 1 or 2),
 *        Q4_NIBBLES(p, lo, hi) (the chunks' low and high nibbles as bytes),
 *        Q4_SCALES(sc, p, lo, hi) (their sub-blocks' scales in the int16 lanes madd pairs
 *        them with), Q4_MADDUBS(w, x) (u8 x s8 -> pairs summed in int16),
 *   Q_TO8(v) (the int32 lanes folded to 8: lane l + lane l+8 + ...; exact)
 * Defines q8_row_<QV> and q4k_row_<QV>: one weight row times T <= 8 activation rows.
 * The integer sums folded to 8 lanes are those of the 8-lane AVX2 variant, and the float
 * operations after them are the same, so every variant gives the same bits.
 */
/* A few rows' integer sums go down two chains of dot products (added at the end, exactly):
 * one chain per row would wait on each dot product's latency. */
#define Q_TWO_CHAINS(nr) ((nr) <= 4)

#define Q_CAT2(a, b) a##_##b
#define Q_CAT(a, b) Q_CAT2(a, b)
#define Q_NAME(x) Q_CAT(x, QV)

static inline __attribute__((always_inline)) void
Q_NAME(q8_rows)(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq, const float *xs,
                int64_t kp, const int nr, float *y, int64_t ystride)
{
    __m256 acc[8];
    for (int t = 0; t < nr; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        QI isum[8], isum2[8], *odd = Q_TWO_CHAINS(nr) ? isum2 : isum;
        for (int t = 0; t < nr; t++) isum[t] = isum2[t] = Q_ZERO();
        _mm_prefetch((const char *)(w + g * Q8_BLOCK) + QUANT_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + g * Q8_BLOCK) + QUANT_PREFETCH + 64, _MM_HINT_T0);
        for (int c = 0; c < Q8_BLOCK; c += 2 * Q_W16) {
            QI w16 = Q_S8(w + g * Q8_BLOCK + c), v16 = Q_S8(w + g * Q8_BLOCK + c + Q_W16);
            for (int t = 0; t < nr; t++) {
                isum[t] = Q_DOT(isum[t], w16, Q_LOAD(xq + t * kp + g * Q8_BLOCK + c));
                odd[t] = Q_DOT(odd[t], v16, Q_LOAD(xq + t * kp + g * Q8_BLOCK + c + Q_W16));
            }
        }
        if (Q_TWO_CHAINS(nr))
            for (int t = 0; t < nr; t++) isum[t] = Q_ADD32(isum[t], isum2[t]);
        __m256 scale = _mm256_set1_ps(ws[g]);                      /* ws[g] * xs: one rounding, as in C */
        for (int t = 0; t < nr; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(Q_TO8(isum[t])),
                                     _mm256_mul_ps(scale, _mm256_broadcast_ss(xs + t * ng + g)), acc[t]);
    }
    for (int t = 0; t < nr; t++) y[t * ystride] = quant_hsum8(acc[t]);
}

static inline __attribute__((always_inline)) void
Q_NAME(q4k_rows)(const uint8_t *qs, const q4k_meta *meta, int64_t nsb, const int8_t *xq, const float *xs,
                 const float *bsum, int64_t kp, const int nr, float *y, int64_t ystride)
{
    __m256 acc[8];
    for (int t = 0; t < nr; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const q4k_meta *m = meta + s;
        QI qsum[8], qsum2[8], *high = Q_TWO_CHAINS(nr) ? qsum2 : qsum;
        for (int t = 0; t < nr; t++) qsum[t] = qsum2[t] = Q_ZERO();
        _mm_prefetch((const char *)(qs + s * (Q4K_BLOCK / 2)) + QUANT_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(qs + s * (Q4K_BLOCK / 2)) + QUANT_PREFETCH + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)m + QUANT_PREFETCH / 4, _MM_HINT_T0);
        for (int p = 0; p < 4; p += Q4_CHUNKS) {     /* 32-byte chunks p.. (sub-blocks 2p, 2p+1 each) */
            QI lo, hi, slo, shi;
            Q4_NIBBLES(qs + s * (Q4K_BLOCK / 2) + p * 32, lo, hi);
            Q4_SCALES(m->sc, p, slo, shi);
            int64_t at_lo = s * Q4K_BLOCK + q4k_slot[2 * p] * Q4K_SUB;     /* sub-block 2p (and 2p+2) */
            int64_t at_hi = s * Q4K_BLOCK + q4k_slot[2 * p + 1] * Q4K_SUB; /* 2p+1 (and 2p+3) */
            for (int t = 0; t < nr; t++) {
                qsum[t] = Q_DOT(qsum[t], Q4_MADDUBS(lo, Q_LOAD(xq + t * kp + at_lo)), slo);
                high[t] = Q_DOT(high[t], Q4_MADDUBS(hi, Q_LOAD(xq + t * kp + at_hi)), shi);
            }
        }
        if (Q_TWO_CHAINS(nr))
            for (int t = 0; t < nr; t++) qsum[t] = Q_ADD32(qsum[t], qsum2[t]);
        /* shared by the rows: the mins, d and dmin in every lane */
        __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)m->mn)));
        __m256 d = _mm256_set1_ps(m->d), dmin = _mm256_set1_ps(m->dmin);
        for (int t = 0; t < nr; t++) {
            __m256 x_s = _mm256_broadcast_ss(xs + t * nsb + s);
            __m256 msum = _mm256_mul_ps(mn, _mm256_loadu_ps(bsum + t * nsb * 8 + s * 8));    /* exact product, rounded */
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(Q_TO8(qsum[t])), _mm256_mul_ps(d, x_s), acc[t]);
            acc[t] = _mm256_fnmadd_ps(msum, _mm256_mul_ps(dmin, x_s), acc[t]);
        }
    }
    for (int t = 0; t < nr; t++) y[t * ystride] = quant_hsum8(acc[t]);
}

/* One weight row times all T <= 8 activation rows, Q_ROWS at a time (constant nr). */
static void Q_NAME(q8_row)(const int8_t *w, const float *ws, int64_t ng, const int16_t *xq,
                           const float *xs, int64_t kp, int64_t T, float *y, int64_t n)
{
#define Q8_CALL(NR) Q_NAME(q8_rows)(w, ws, ng, xq + t * kp, xs + t * ng, kp, NR, y + t * n, n)
    int64_t t = 0;
    for (; t + Q_ROWS <= T; t += Q_ROWS) Q8_CALL(Q_ROWS);
    switch (T - t) {
    case 7: Q8_CALL(7); break;
    case 6: Q8_CALL(6); break;
    case 5: Q8_CALL(5); break;
    case 4: Q8_CALL(4); break;
    case 3: Q8_CALL(3); break;
    case 2: Q8_CALL(2); break;
    case 1: Q8_CALL(1); break;
    }
#undef Q8_CALL
}

static void Q_NAME(q4k_row)(const uint8_t *qs, const q4k_meta *meta, int64_t nsb, const int8_t *xq,
                            const float *xs, const float *bsum, int64_t kp, int64_t T, float *y, int64_t n)
{
    int64_t t = 0, nb = kp / Q4K_SUB;
#define Q4K_CALL(NR) Q_NAME(q4k_rows)(qs, meta, nsb, xq + t * kp, xs + t * nsb, bsum + t * nb, kp, NR, y + t * n, n)
    for (; t + Q_ROWS <= T; t += Q_ROWS) Q4K_CALL(Q_ROWS);
    switch (T - t) {
    case 7: Q4K_CALL(7); break;
    case 6: Q4K_CALL(6); break;
    case 5: Q4K_CALL(5); break;
    case 4: Q4K_CALL(4); break;
    case 3: Q4K_CALL(3); break;
    case 2: Q4K_CALL(2); break;
    case 1: Q4K_CALL(1); break;
    }
#undef Q4K_CALL
}

#undef Q_TWO_CHAINS
#undef Q_NAME
#undef Q_CAT
#undef Q_CAT2
