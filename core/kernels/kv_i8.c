/* The AR's int8 KV cache (layout: common.h): writing rows into it, and the decode step's attention
over it in integer arithmetic (vx_decode_i8, called by attn_decode.c's vx_attn_decode for each row
and head). */
#include "common.h"

/* D floats -> one int8 cache row: scale = max|x| / 127, x / scale rounded to nearest even. */
void vx_kv_put_i8(const float *x, int D, int8_t *row) {
    float sc = abs_max(x, D) / 127.f;
    int d = 0;
    if (sc > 0.f) {
#ifdef VX_AVX512
        __m512 vs = _mm512_set1_ps(sc);
        for (; d + 16 <= D; d += 16)
            _mm_storeu_si128((__m128i *)(row + d),
                             _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + d), vs))));
#endif
        for (; d < D; d++) {
            float r = nearbyintf(x[d] / sc);
            row[d] = (int8_t)(r > 127.f ? 127 : r < -127.f ? -127 : r);
        }
    } else {
        memset(row, 0, (size_t)D);
    }
    memcpy(row + D, &sc, sizeof sc);
}

/* Rows of D float32 or bf16 (x_bf16) values -> int8 cache rows of D + 4 bytes, written in place
   (core/native.py's kv_quantize_into: the prefill's keys and values straight from the projection
   into the cache, and the per-op decode path's). Row (i, j, l) of the [n0, n1, n2] rows is at
   x + i*xst[0] + j*xst[1] + l*xst[2] (elements) and goes to out + the same with ost (bytes). */
void vx_kv_quantize(const void *x, int x_bf16, const int64_t *xst, const int64_t *n, int D, int8_t *out,
                    const int64_t *ost, int n_threads) {
    int64_t rows = n[0] * n[1] * n[2];
#pragma omp parallel num_threads(n_threads)
    {
        float *buf = malloc(sizeof(float) * (size_t)(D > 0 ? D : 1));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = r / (n[1] * n[2]), j = r / n[2] % n[1], l = r % n[2];
            int64_t at = i * xst[0] + j * xst[1] + l * xst[2];
            const float *src = (const float *)x + at;
            if (x_bf16) {
                const uint16_t *b = (const uint16_t *)x + at;
                for (int d = 0; d < D; d++) buf[d] = bf16f(b[d]);
                src = buf;
            }
            vx_kv_put_i8(src, D, out + i * ost[0] + j * ost[1] + l * ost[2]);
        }
        free(buf);
    }
}

#ifdef VX_DECODE_I8
/* n floats -> int16 with one scale (round to nearest even; |x| / scale <= 32767) */
static inline void to_i16(const float *x, int n, float inv, int16_t *out) {
    __m512 vi = _mm512_set1_ps(inv);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vi))));
    for (; i < n; i++) out[i] = (int16_t)lrintf(x[i] * inv);
}

/* int32 scores of q (int16, nz chunks of 32) against keys kr[0..cnt) (int8 rows rs bytes apart,
   cnt <= 16; lanes >= cnt are 0) */
static inline __attribute__((always_inline)) __m512i qk16_i8(const __m512i *qw, int nz, const int8_t *kr, int rs,
                                                            int cnt) {
    __m512 a[16];
    for (int j = 0; j < 16; j++) {
        __m512i acc = _mm512_setzero_si512();
        if (j < cnt)
            for (int z = 0; z < nz; z++)
                acc = _mm512_dpwssd_epi32(acc, qw[z], _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(kr + (int64_t)j * rs + 32 * z))));
        a[j] = _mm512_castsi512_ps(acc);
    }
    return _mm512_castps_si512(hsum16x(a, 1));
}

/* acc[z][0..1] += the int16 weight pair w (rows r0, r1) x those two int8 value rows, interleaved into
   int16 pairs: lanes of acc[z][0] are d 0-7 and 16-23 of chunk z, of acc[z][1] d 8-15 and 24-31 */
static inline __attribute__((always_inline)) void pv2_i8(__m512i (*acc)[2], int nz, const int8_t *r0, const int8_t *r1,
                                                        __m512i w) {
    for (int z = 0; z < nz; z++) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(r0 + 32 * z)), x1 = _mm256_loadu_si256((const __m256i *)(r1 + 32 * z));
        acc[z][0] = _mm512_dpwssd_epi32(acc[z][0], _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(x0, x1)), w);
        acc[z][1] = _mm512_dpwssd_epi32(acc[z][1], _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(x0, x1)), w);
    }
}

/* One query against keys [s0, n) of one head of an int8 cache (rows D + 4 bytes apart, D = 32 nz,
   nz <= 4), in integer arithmetic (AVX-512 VNNI's vpdpwssd: pairs of int16 products into int32):
   - scores: q rounded to int16 with one scale (max|q| / 32767: ~1e-5 of the largest, against the
     keys' own int8 step of 1 / 254), the int8 keys sign-extended, exact int32 sums, then float
     (x the q scale, the key's scale and 1 / sqrt(hd)).
   - values: the softmax weights times each value row's scale, rounded to int16 with one scale
     (coarser past 488 keys, so that no int32 sum can overflow), against two value rows at a time.
   Integer sums are exact, so the order does not matter. Why: the float form (widen, convert,
   multiply-add per 16 elements) bound the batched step's attention by its vector ops, not by
   memory; this one takes ~0.6-0.7x its time (10 rows x 16 heads x 450 keys x 12 layers: 4.7 ->
   2.7 ms with the cache in L3, 0.58 -> 0.38 ms for one row), A/B in one process. */
static inline __attribute__((always_inline)) void decode_i8_nz(const float *qv, const int8_t *k, const int8_t *v, int s0,
                                                              int n, float scale, float *p, float *o,
                                                              const int8_t *nk, const int8_t *nv, int16_t *wq, int nz) {
    int D = 32 * nz, rs = D + 4;
    float qmax = abs_max(qv, D), sq = qmax > 0.f ? qmax / 32767.f : 1.f;
    int16_t q16[128];
    to_i16(qv, D, 1.f / sq, q16);
    __m512i qw[4];
    for (int z = 0; z < nz; z++) qw[z] = _mm512_loadu_si512(q16 + 32 * z);
    const __m512i sidx = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                             _mm512_set1_epi32(rs)), _mm512_set1_epi32(D));
    __m512 vmax = _mm512_set1_ps(-INFINITY), qs = _mm512_set1_ps(sq * scale);
    for (int s = s0; s < n; s += 16) {
        const int8_t *kr = k + (int64_t)s * rs;
        PREFETCH_L2(nk ? nk + (int64_t)s * rs : NULL, 16 * rs);
        __mmask16 m = n - s >= 16 ? 0xffff : (__mmask16)((1u << (n - s)) - 1);
        __m512i d = m == 0xffff ? qk16_i8(qw, nz, kr, rs, 16) : qk16_i8(qw, nz, kr, rs, n - s);
        __m512 sk = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, sidx, kr, 1);
        __m512 r = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), qs), sk);
        _mm512_mask_storeu_ps(p + s, m, r);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, r);
    }
    float inv = exp_scores(p, s0, n, vmax);
    /* the weights: p x the value row's scale; sum w <= (n - s0) max w bounds the int32 sums */
    int cnt = n - s0;
    __m512 wm = _mm512_setzero_ps();
    for (int s = 0; s < cnt; s += 16) {
        __mmask16 m = cnt - s >= 16 ? 0xffff : (__mmask16)((1u << (cnt - s)) - 1);
        __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + s0 + s),
                                 _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, sidx, v + (int64_t)(s0 + s) * rs, 1));
        _mm512_mask_storeu_ps(p + s0 + s, m, w);
        wm = _mm512_max_ps(wm, w);
    }
    float sw = _mm512_reduce_max_ps(wm) / 32767.f * (cnt > 488 ? (float)cnt / 488.f : 1.f);
    __m512i acc[4][2];
    for (int z = 0; z < nz; z++) acc[z][0] = acc[z][1] = _mm512_setzero_si512();
    if (sw > 0.f) {
        to_i16(p + s0, cnt, 1.f / sw, wq);
        const int8_t *vr = v + (int64_t)s0 * rs;
        int s = 0;
        for (; s + 2 <= cnt; s += 2, vr += 2 * rs) {
            PREFETCH_L2(nv ? nv + (int64_t)(s0 + s) * rs : NULL, 2 * rs);
            int32_t pair;
            memcpy(&pair, wq + s, sizeof pair);
            pv2_i8(acc, nz, vr, vr + rs, _mm512_set1_epi32(pair));
        }
        if (s < cnt)  /* the last row alone: paired with itself at weight 0 */
            pv2_i8(acc, nz, vr, vr, _mm512_set1_epi32((int32_t)(uint16_t)wq[s]));
    }
    __m512 f = _mm512_set1_ps(sw * inv);
    for (int z = 0; z < nz; z++) {
        __m512i lo = _mm512_shuffle_i32x4(acc[z][0], acc[z][1], 0x44), hi = _mm512_shuffle_i32x4(acc[z][0], acc[z][1], 0xee);
        _mm512_storeu_ps(o + 32 * z, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), f));
        _mm512_storeu_ps(o + 32 * z + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), f));
    }
}

/* decode_i8_nz for a head size D = 32, 64, 96 or 128 */
void vx_decode_i8(const float *qv, const int8_t *k, const int8_t *v, int D, int s0, int n, float scale,
                  float *p, float *o, const int8_t *nk, const int8_t *nv, int16_t *wq) {
    switch (D / 32) {  /* a constant chunk count keeps the sums in registers */
        case 1: decode_i8_nz(qv, k, v, s0, n, scale, p, o, nk, nv, wq, 1); break;
        case 2: decode_i8_nz(qv, k, v, s0, n, scale, p, o, nk, nv, wq, 2); break;
        case 3: decode_i8_nz(qv, k, v, s0, n, scale, p, o, nk, nv, wq, 3); break;
        default: decode_i8_nz(qv, k, v, s0, n, scale, p, o, nk, nv, wq, 4); break;
    }
}
#endif
