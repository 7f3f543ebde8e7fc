/* One SIMD variant of the fused attention tile (included by _attention.h once per kernel
 * set, inside its target region). The includer defines ATT_V (the name suffix) and
 * ATT_W (float lanes per vector: 16, 8 or 4). GCC vector extensions: the same source
 * becomes zmm, ymm or xmm code. Needs hd % ATT_W == 0 and hd <= 128.
 */
#define ATT_CAT2(a, b) a##_##b
#define ATT_CAT(a, b) ATT_CAT2(a, b)
#define ATT_NAME(x) ATT_CAT(x, ATT_V)

typedef float ATT_NAME(vf) __attribute__((vector_size(ATT_W * 4), aligned(4)));
typedef int32_t ATT_NAME(vi) __attribute__((vector_size(ATT_W * 4), aligned(4)));
#define VF ATT_NAME(vf)
#define VI ATT_NAME(vi)

static inline __attribute__((always_inline)) VF ATT_NAME(att_load)(const float *p) { return *(const VF *)p; }
typedef uint16_t ATT_NAME(vh) __attribute__((vector_size(ATT_W * 2), aligned(2)));
/* ATT_W BF16 numbers widened to float32 (exact: the bits become the upper half) */
static inline __attribute__((always_inline)) VF ATT_NAME(att_load_bf16)(const uint16_t *p)
{
    return (VF)(__builtin_convertvector(*(const ATT_NAME(vh) *)p, VI) << 16);
}
/* a vector of a KV ring's row: float32 (bf16 = 0) or BF16 bits (bf16 = 1) from element i */
static inline __attribute__((always_inline)) VF ATT_NAME(att_load_kv)(const void *row, int64_t i, const int bf16)
{
    return bf16 ? ATT_NAME(att_load_bf16)((const uint16_t *)row + i) : ATT_NAME(att_load)((const float *)row + i);
}
static inline __attribute__((always_inline)) void ATT_NAME(att_store)(float *p, VF v) { *(VF *)p = v; }
/* s in every lane: s - (+0) is s exactly (-0 included), so GCC folds it to a broadcast
 * from memory; (VF){0} + s is not s for s = -0 and cost an add before each broadcast */
static inline __attribute__((always_inline)) VF ATT_NAME(att_splat)(float s) { return s - (VF){0}; }
static inline __attribute__((always_inline)) VF ATT_NAME(att_select)(VI mask, VF yes, VF no)
{
    return (VF)(((VI)yes & mask) | ((VI)no & ~mask));
}

/* e^y for y <= 0 (below -87: 0 after the mask of the caller, or ~1e-38): ATT_EXP_POLY. */
static inline __attribute__((always_inline)) VF ATT_NAME(att_exp)(VF y)
{
    VF lo = ATT_NAME(att_splat)(-87.0f);
    y = ATT_NAME(att_select)(y < lo, lo, y);
    VF z = y * ATT_LOG2E + 0.5f;
    VI t = __builtin_convertvector(z, VI);                /* truncation ... */
    VF tf = __builtin_convertvector(t, VF);
    t = t + (tf > z);                                      /* ... to floor (true is -1) */
    VF k = __builtin_convertvector(t, VF);
    VF f = y - k * ATT_LN2_HI - k * ATT_LN2_LO;
    VF p = ((((ATT_P0 * f + ATT_P1) * f + ATT_P2) * f + ATT_P3) * f + ATT_P4) * f + ATT_P5;
    VF e = p * f * f + f + 1.0f;
    return (VF)((VI)e + (t << 23));
}

/* S [C, npad] = q [C, hd] . kT[:, lo:lo+npad] (kT [hd, ldk], zero-padded past the keys),
 * where row i sees keys [a[i], b[i]) (both non-decreasing in i); blocks of keys no row of a
 * group of ATT_QR sees are skipped (their scores are never read). Keys outside, rows inside:
 * a block of 2 vectors of keys (hd x 2W floats of kT) stays in L1 while the rows use it. */
static inline __attribute__((always_inline)) void
ATT_NAME(att_scores)(const float *q, int64_t C, int hd, const float *kT, int64_t ldk, int64_t npad,
                     const int64_t *a, const int64_t *b, float *S)
{
    for (int64_t j0 = 0; j0 < npad; j0 += 2 * ATT_W) {
        for (int64_t i0 = 0; i0 < C; i0 += ATT_QR) {
            int rows = C - i0 < ATT_QR ? (int)(C - i0) : ATT_QR;
            if (j0 + 2 * ATT_W <= a[i0] || j0 >= b[i0 + rows - 1]) continue;
            const float *qr[ATT_QR];
            for (int r = 0; r < ATT_QR; r++) qr[r] = q + (i0 + (r < rows ? r : rows - 1)) * hd;
            VF acc[ATT_QR][2];
            for (int r = 0; r < ATT_QR; r++) acc[r][0] = acc[r][1] = ATT_NAME(att_splat)(0.0f);
            for (int d = 0; d < hd; d++) {
                VF k0 = ATT_NAME(att_load)(kT + d * ldk + j0), k1 = ATT_NAME(att_load)(kT + d * ldk + j0 + ATT_W);
#pragma GCC unroll 6
                for (int r = 0; r < ATT_QR; r++) {
                    VF s = ATT_NAME(att_splat)(qr[r][d]);
                    acc[r][0] += s * k0;
                    acc[r][1] += s * k1;
                }
            }
            for (int r = 0; r < rows; r++) {
                ATT_NAME(att_store)(S + (i0 + r) * npad + j0, acc[r][0]);
                ATT_NAME(att_store)(S + (i0 + r) * npad + j0 + ATT_W, acc[r][1]);
            }
        }
    }
}

/* row[j] = e^(row[j] - m) for a <= j < b, 0 for the other j of [j0, j1) (whole vectors);
 * returns the sum of the row's terms, lane by lane in key order, then over the lanes. */
static inline __attribute__((always_inline)) float
ATT_NAME(att_exp_row)(float *row, int64_t j0, int64_t j1, float m, int64_t a, int64_t b)
{
    VI iota;
    for (int l = 0; l < ATT_W; l++) iota[l] = l;
    VF mv = ATT_NAME(att_splat)(m), total = ATT_NAME(att_splat)(0.0f);
    for (int64_t j = j0; j < j1; j += ATT_W) {
        VI jv = iota + (int32_t)j;
        VI in = (jv >= (int32_t)a) & (jv < (int32_t)b);
        VF e = ATT_NAME(att_exp)(ATT_NAME(att_load)(row + j) - mv);
        e = (VF)((VI)e & in);
        total += e;
        ATT_NAME(att_store)(row + j, e);
    }
    float sum = 0.0f;
    for (int l = 0; l < ATT_W; l++) sum += total[l];
    return sum;
}

/* The largest row[j] for a <= j < b, looking at the whole vectors of [j0, j1) (the other
 * lanes are not compared). */
static inline __attribute__((always_inline)) float
ATT_NAME(att_max)(const float *row, int64_t j0, int64_t j1, int64_t a, int64_t b)
{
    VI iota;
    for (int l = 0; l < ATT_W; l++) iota[l] = l;
    VF neg = ATT_NAME(att_splat)(-INFINITY), best = neg;
    for (int64_t j = j0; j < j1; j += ATT_W) {
        VI jv = iota + (int32_t)j;
        VI in = (jv >= (int32_t)a) & (jv < (int32_t)b);
        VF x = ATT_NAME(att_select)(in, ATT_NAME(att_load)(row + j), neg);
        best = ATT_NAME(att_select)(x > best, x, best);
    }
    float m = -INFINITY;
    for (int l = 0; l < ATT_W; l++) m = best[l] > m ? best[l] : m;
    return m;
}

/* Row [npad] -> softmax over [a, b), 0 elsewhere (only the vectors that hold [a, b) are read). */
static inline __attribute__((always_inline)) void
ATT_NAME(att_softmax)(float *row, int64_t npad, int64_t a, int64_t b)
{
    int64_t first = a / ATT_W * ATT_W, end = (b + ATT_W - 1) / ATT_W * ATT_W;
    VF zero = ATT_NAME(att_splat)(0.0f);
    for (int64_t j = 0; j < first; j += ATT_W) ATT_NAME(att_store)(row + j, zero);
    for (int64_t j = end; j < npad; j += ATT_W) ATT_NAME(att_store)(row + j, zero);
    float m = ATT_NAME(att_max)(row, first, end, a, b);
    VF inv = ATT_NAME(att_splat)(1.0f / ATT_NAME(att_exp_row)(row, first, end, m, a, b));
    for (int64_t j = first; j < end; j += ATT_W) ATT_NAME(att_store)(row + j, ATT_NAME(att_load)(row + j) * inv);
}

/* out rows [C] (stride ldo) = P [C, npad] . v[lo:lo+n] (v [.., hd], row stride hd); DV = hd / W;
 * a group of R rows weighs the keys any of them sees, [a[i0], b[last]) (P is 0 elsewhere).
 * Keys in blocks of ATT_KB outside, rows inside: a block of values stays in L1 while every
 * row of the tile weighs it; a row's sums are kept in `out` between blocks (zeros first),
 * so each is still its keys' terms added in key order. */
static inline __attribute__((always_inline)) void
ATT_NAME(att_weigh)(const float *P, int64_t C, int64_t npad, int64_t n, const float *v, int hd,
                    const int64_t *a, const int64_t *b, float *out, int64_t ldo, const int DV, const int R)
{
    for (int64_t i = 0; i < C; i++)
        for (int dv = 0; dv < DV; dv++) ATT_NAME(att_store)(out + i * ldo + dv * ATT_W, ATT_NAME(att_splat)(0.0f));
    for (int64_t k0 = 0; k0 < n; k0 += ATT_KB) {
        for (int64_t i0 = 0; i0 < C; i0 += R) {
            int rows = C - i0 < R ? (int)(C - i0) : R;
            int64_t j0 = k0 > a[i0] ? k0 : a[i0];
            int64_t j1 = k0 + ATT_KB < b[i0 + rows - 1] ? k0 + ATT_KB : b[i0 + rows - 1];
            if (j0 >= j1) continue;
            const float *pr[8];
            for (int r = 0; r < R; r++) pr[r] = P + (i0 + (r < rows ? r : rows - 1)) * npad;
            VF acc[8][8];
            for (int r = 0; r < 8; r++)                   /* all of it: rows <= R is not visible to GCC */
                for (int dv = 0; dv < 8; dv++) acc[r][dv] = ATT_NAME(att_splat)(0.0f);
            for (int r = 0; r < rows; r++)
                for (int dv = 0; dv < DV; dv++) acc[r][dv] = ATT_NAME(att_load)(out + (i0 + r) * ldo + dv * ATT_W);
            for (int64_t j = j0; j < j1; j++) {
                VF vv[8];
                for (int dv = 0; dv < DV; dv++) vv[dv] = ATT_NAME(att_load)(v + j * hd + dv * ATT_W);
                for (int r = 0; r < R; r++) {
                    VF p = ATT_NAME(att_splat)(pr[r][j]);
                    for (int dv = 0; dv < DV; dv++) acc[r][dv] += p * vv[dv];
                }
            }
            for (int r = 0; r < rows; r++)
                for (int dv = 0; dv < DV; dv++) ATT_NAME(att_store)(out + (i0 + r) * ldo + dv * ATT_W, acc[r][dv]);
        }
    }
}

/* One tile: queries q [C, hd] (scaled), keys kT [hd, ldk] from the tile's first visible key,
 * values v [n, hd]; row i sees keys [a[i], b[i]) of the n; S: scratch [C, npad]. */
static void ATT_NAME(att_tile)(const float *q, int64_t C, int hd, const float *kT, int64_t ldk,
                               const float *v, int64_t n, const int64_t *a, const int64_t *b,
                               float *S, float *out, int64_t ldo)
{
    int64_t npad = (n + 2 * ATT_W - 1) / (2 * ATT_W) * (2 * ATT_W);
    ATT_NAME(att_scores)(q, C, hd, kT, ldk, npad, a, b, S);
    for (int64_t i = 0; i < C; i++) ATT_NAME(att_softmax)(S + i * npad, npad, a[i], b[i]);
    switch (hd / ATT_W) {
    case 1: ATT_NAME(att_weigh)(S, C, npad, n, v, hd, a, b, out, ldo, 1, 8); break;
    case 2: ATT_NAME(att_weigh)(S, C, npad, n, v, hd, a, b, out, ldo, 2, ATT_W == 16 ? 8 : 4); break;
    case 4: ATT_NAME(att_weigh)(S, C, npad, n, v, hd, a, b, out, ldo, 4, ATT_W == 16 ? 6 : 2); break;
    case 8: ATT_NAME(att_weigh)(S, C, npad, n, v, hd, a, b, out, ldo, 8, ATT_W == 16 ? 3 : 1); break;
    default:                                              /* 3, 5, 6, 7 vectors: one row at a time */
        for (int64_t i = 0; i < C; i++)
            for (int dv = 0; dv < hd / ATT_W; dv++) {
                VF acc = ATT_NAME(att_splat)(0.0f);
                for (int64_t j = 0; j < n; j++) acc += S[i * npad + j] * ATT_NAME(att_load)(v + j * hd + dv * ATT_W);
                ATT_NAME(att_store)(out + i * ldo + dv * ATT_W, acc);
            }
    }
}

/* Four query rows q0..q3 [hd] against one key (hd a multiple of ATT_W; float32 or BF16 as
 * att_load_kv): per row, two vector sums (even and odd vectors) added, then the four rows'
 * lanes reduced together by halves (each row's lanes only with its own); s[0..3]. The
 * order depends on nothing but hd. */
static inline __attribute__((always_inline)) void
ATT_NAME(att_dot4)(const float *q0, const float *q1, const float *q2, const float *q3, const void *k,
                   const int bf16, int hd, float *s)
{
    VF a[4][2];
    const float *qr[4] = {q0, q1, q2, q3};
    for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = ATT_NAME(att_splat)(0.0f);
    int c = 0;
    for (; c + 2 * ATT_W <= hd; c += 2 * ATT_W) {
        VF k0 = ATT_NAME(att_load_kv)(k, c, bf16), k1 = ATT_NAME(att_load_kv)(k, c + ATT_W, bf16);
        for (int r = 0; r < 4; r++) {
            a[r][0] += ATT_NAME(att_load)(qr[r] + c) * k0;
            a[r][1] += ATT_NAME(att_load)(qr[r] + c + ATT_W) * k1;
        }
    }
    if (c < hd) {
        VF k0 = ATT_NAME(att_load_kv)(k, c, bf16);
        for (int r = 0; r < 4; r++) a[r][0] += ATT_NAME(att_load)(qr[r] + c) * k0;
    }
    VF v0 = a[0][0] + a[0][1], v1 = a[1][0] + a[1][1], v2 = a[2][0] + a[2][1], v3 = a[3][0] + a[3][1];
#if ATT_W == 16
    VF x01 = __builtin_shuffle(v0, v1, (VI){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
           + __builtin_shuffle(v0, v1, (VI){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    VF x23 = __builtin_shuffle(v2, v3, (VI){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
           + __builtin_shuffle(v2, v3, (VI){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    VF y = __builtin_shuffle(x01, x23, (VI){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27})
         + __builtin_shuffle(x01, x23, (VI){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31});
    y += __builtin_shuffle(y, (VI){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    y += __builtin_shuffle(y, (VI){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    s[0] = y[0]; s[1] = y[4]; s[2] = y[8]; s[3] = y[12];
#elif ATT_W == 8
    VF x01 = __builtin_shuffle(v0, v1, (VI){0, 1, 2, 3, 8, 9, 10, 11})
           + __builtin_shuffle(v0, v1, (VI){4, 5, 6, 7, 12, 13, 14, 15});
    VF x23 = __builtin_shuffle(v2, v3, (VI){0, 1, 2, 3, 8, 9, 10, 11})
           + __builtin_shuffle(v2, v3, (VI){4, 5, 6, 7, 12, 13, 14, 15});
    VF y = __builtin_shuffle(x01, x23, (VI){0, 1, 4, 5, 8, 9, 12, 13})
         + __builtin_shuffle(x01, x23, (VI){2, 3, 6, 7, 10, 11, 14, 15});
    y += __builtin_shuffle(y, (VI){1, 0, 3, 2, 5, 4, 7, 6});
    s[0] = y[0]; s[1] = y[2]; s[2] = y[4]; s[3] = y[6];
#else
    VF x01 = __builtin_shuffle(v0, v1, (VI){0, 1, 4, 5}) + __builtin_shuffle(v0, v1, (VI){2, 3, 6, 7});
    VF x23 = __builtin_shuffle(v2, v3, (VI){0, 1, 4, 5}) + __builtin_shuffle(v2, v3, (VI){2, 3, 6, 7});
    VF y = __builtin_shuffle(x01, x23, (VI){0, 2, 4, 6}) + __builtin_shuffle(x01, x23, (VI){1, 3, 5, 7});
    s[0] = y[0]; s[1] = y[1]; s[2] = y[2]; s[3] = y[3];
#endif
}

/* One KV head of the decoder's step (see att_ring in _attention.h): rows r = t * group + h
 * of q [R, hd] (scaled) attend over the keys their position sees, the ring's rows float32
 * (bf16 = 0) or BF16 bits (bf16 = 1, widened as they are loaded); S [R, ld] holds row r's
 * scores from its own first key on, acc [R, hd] its weighted values. Each row's arithmetic
 * (dot, softmax over its own keys, values weighed in key order) is the same whatever T,
 * and the same for a BF16 ring as for a float32 ring holding the same values. */
static inline __attribute__((always_inline)) void
ATT_NAME(att_ring_head_kv)(const float *q, int64_t T, int64_t group, int hd, const void *rk, const void *rv,
                           const int bf16, int64_t cap, int64_t length, int64_t window, float *S, int64_t ld,
                           float *acc)
{
    const int64_t row_bytes = (int64_t)hd * (bf16 ? 2 : 4);
    const char *keys = (const char *)rk, *values = (const char *)rv;
    int64_t lo = length - T - window + 1 > 0 ? length - T - window + 1 : 0;
    for (int64_t i = lo, slot = lo % cap; i < length; i++, slot = slot + 1 == cap ? 0 : slot + 1) {
        const char *key = keys + slot * row_bytes, *ahead = keys + ((slot + ATT_AHEAD) % cap) * row_bytes;
        for (int64_t l = 0; l < row_bytes; l += 64) __builtin_prefetch(ahead + l);
        for (int64_t t = 0; t < T; t++) {
            int64_t p = length - T + t, first = p - window + 1 > 0 ? p - window + 1 : 0;
            if (i < first || i > p) continue;
            for (int64_t h0 = 0; h0 < group; h0 += 4) {     /* the position's heads, 4 at a time */
                const float *qr[4];
                float s4[4];
                for (int r = 0; r < 4; r++) qr[r] = q + (t * group + (h0 + r < group ? h0 + r : h0)) * hd;
                ATT_NAME(att_dot4)(qr[0], qr[1], qr[2], qr[3], key, bf16, hd, s4);
                for (int r = 0; r < 4 && h0 + r < group; r++) S[(t * group + h0 + r) * ld + i - first] = s4[r];
            }
        }
    }
    for (int64_t t = 0; t < T; t++) {
        int64_t p = length - T + t, first = p - window + 1 > 0 ? p - window + 1 : 0, n = p + 1 - first;
        for (int64_t h = 0; h < group; h++) {
            float *row = S + (t * group + h) * ld;
            int64_t end = (n + ATT_W - 1) / ATT_W * ATT_W;     /* lanes past n: 0 (S has room) */
            float best = ATT_NAME(att_max)(row, 0, end, 0, n);
            float inv = 1.0f / ATT_NAME(att_exp_row)(row, 0, end, best, 0, n);
            for (int64_t j = 0; j < n; j++) row[j] *= inv;
        }
    }
    /* values: per position, 4 heads x CV vectors of dims in registers, the keys in order */
    enum { CV = ATT_W == 16 ? 4 : 2 };
    for (int64_t t = 0; t < T; t++) {
        int64_t p = length - T + t, first = p - window + 1 > 0 ? p - window + 1 : 0, n = p + 1 - first;
        for (int64_t h0 = 0; h0 < group; h0 += 4) {
            const float *P[4];
            for (int r = 0; r < 4; r++) P[r] = S + (t * group + (h0 + r < group ? h0 + r : h0)) * ld;
            for (int c0 = 0; c0 < hd; c0 += CV * ATT_W) {
                int nv = (hd - c0) / ATT_W < CV ? (hd - c0) / ATT_W : CV;
                VF a[4][CV];
                for (int r = 0; r < 4; r++)
                    for (int cv = 0; cv < CV; cv++) a[r][cv] = ATT_NAME(att_splat)(0.0f);
                for (int64_t j = 0, slot = first % cap; j < n; j++, slot = slot + 1 == cap ? 0 : slot + 1) {
                    const char *value = values + slot * row_bytes;
                    if (c0 == 0) {                               /* the first pass over the values reads memory */
                        const char *ahead = values + ((slot + ATT_AHEAD) % cap) * row_bytes;
                        for (int64_t l = 0; l < row_bytes; l += 64) __builtin_prefetch(ahead + l);
                    }
                    VF vv[CV];
                    for (int cv = 0; cv < CV; cv++)
                        vv[cv] = cv < nv ? ATT_NAME(att_load_kv)(value, c0 + cv * ATT_W, bf16) : ATT_NAME(att_splat)(0.0f);
                    for (int r = 0; r < 4; r++) {
                        VF w = ATT_NAME(att_splat)(P[r][j]);
                        for (int cv = 0; cv < CV; cv++) a[r][cv] += w * vv[cv];
                    }
                }
                for (int r = 0; r < 4 && h0 + r < group; r++)
                    for (int cv = 0; cv < nv; cv++)
                        ATT_NAME(att_store)(acc + (t * group + h0 + r) * hd + c0 + cv * ATT_W, a[r][cv]);
            }
        }
    }
}

/* att_ring_head_kv for a float32 ring and for a BF16 ring (the flag folded away) */
static void ATT_NAME(att_ring_head)(const float *q, int64_t T, int64_t group, int hd, const float *rk,
                                    const float *rv, int64_t cap, int64_t length, int64_t window, float *S,
                                    int64_t ld, float *acc)
{
    ATT_NAME(att_ring_head_kv)(q, T, group, hd, rk, rv, 0, cap, length, window, S, ld, acc);
}

static void ATT_NAME(att_ring_head_bf16)(const float *q, int64_t T, int64_t group, int hd, const uint16_t *rk,
                                         const uint16_t *rv, int64_t cap, int64_t length, int64_t window,
                                         float *S, int64_t ld, float *acc)
{
    ATT_NAME(att_ring_head_kv)(q, T, group, hd, rk, rv, 1, cap, length, window, S, ld, acc);
}

#undef VF
#undef VI
