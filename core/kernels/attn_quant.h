/* attn_full.c's integer modes: what turns its bf16 q, k, v into integers (the quantizers, and
the value packing of the int8 mode) and the softmax's cheaper exp. Included by attn_full.c only,
within its AVX-512 BF16 part. */
#ifndef VX_ATTN_QUANT_H
#define VX_ATTN_QUANT_H
#include "common.h"

/* exp(x) for x <= 0 to ~3e-6 (relative): 2^t as 2^round(t) times a degree-4 polynomial of the rest
   (coefficients fitted here for the least maximum relative error on [-1/2, 1/2]). The integer
   modes round the probabilities to 8 or 13 bits anyway; exp_ps's degree 6 and two-part ln 2 cost
   a fifth of an int8 attention call. */
static inline __m512 exp_ps_q(__m512 x) {
    __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.009582853876054287f), f, _mm512_set1_ps(0.05590642988681793f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24024099111557007f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931241750717163f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

/* ---- the int16 mode (the int8 mode's prefill, the bf16 mode's NAR) ------------------------------
The same blocks through vpdpwssd (int16 pairs, int32 sums): twice the float32 FMAs' rate on the
CPUs measured. q and k rows get one scale each (max |x| / I16_QK, per position and head), v one per
column over the keys; the probabilities exp(s - max) <= 1 become round(p * I16_P / m), m the
largest of their chunk of 2 * I16_CHUNK keys (13 bits relative to it: against one scale for the
row, the hundreds of small probabilities of a peaked row lost most of theirs), and the rounded
values, times m / I16_P, are the normaliser too. The sizes keep every int32 sum exact: q.k is
64 terms of at most I16_QK^2 (< 2^30), and the weighted values are summed I16_CHUNK key pairs at
a time (2 * 32 * I16_P * I16_QK < 2^31), then scaled and summed in float32. Against the bf16 path:
q, k, v keep ~12 bits of their row's (column's) largest instead of 8 of their own. */
#define I16_QK 4095
#define I16_P 8192.f
#define I16_CHUNK 32

/* n (a multiple of 16, <= 64) bf16 -> int16 round(x / s), s = max |x| / I16_QK (returned; 1 for zeros) */
static inline float quant_i16_row(const uint16_t *x, int n, int16_t *dst) {
    __m512 vmax = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load_bf16(x + i, 0xffff)));
    float amax = _mm512_reduce_max_ps(vmax), sc = amax > 0.f ? amax / I16_QK : 1.f;
    __m512 inv = _mm512_set1_ps(1.f / sc);
    for (int i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(load_bf16(x + i, 0xffff), inv))));
    return sc;
}

/* one scale per column of n rows of hd bf16 (rows rs apart): sc[c] = max |x| / top (1 for zeros),
   and their inverses (inv[hd / 16]) */
static void col_scales(const uint16_t *x, int64_t rs, int n, int hd, float top, float *sc, __m512 *inv) {
    __m512 vmax[4];
    for (int c = 0; c < hd / 16; c++) vmax[c] = _mm512_setzero_ps();
    for (int j = 0; j < n; j++)
        for (int c = 0; c < hd / 16; c++)
            vmax[c] = _mm512_max_ps(vmax[c], _mm512_abs_ps(load_bf16(x + (int64_t)j * rs + c * 16, 0xffff)));
    for (int c = 0; c < hd / 16; c++) {
        __mmask16 z = _mm512_cmp_ps_mask(vmax[c], _mm512_setzero_ps(), _CMP_EQ_OQ);
        __m512 s = _mm512_mask_mov_ps(_mm512_div_ps(vmax[c], _mm512_set1_ps(top)), z, _mm512_set1_ps(1.f));
        _mm512_storeu_ps(sc + c * 16, s);
        inv[c] = _mm512_div_ps(_mm512_set1_ps(1.f), s);
    }
}

/* n rows of hd bf16 (rows rs apart) -> int16 rows [n][hd] with one scale per column (sc[hd]) */
static void quant_i16_cols(const uint16_t *x, int64_t rs, int n, int hd, int16_t *dst, float *sc) {
    __m512 inv[4];
    col_scales(x, rs, n, hd, I16_QK, sc, inv);
    for (int j = 0; j < n; j++)
        for (int c = 0; c < hd / 16; c++)
            _mm256_storeu_si256((__m256i *)(dst + (int64_t)j * hd + c * 16),
                                _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(
                                    _mm512_mul_ps(load_bf16(x + (int64_t)j * rs + c * 16, 0xffff), inv[c]))));
}

/* ---- the int8 mode (the int8 mode's NAR) ----------------------------------------------------------
The same blocks through vpdpbusd (4 byte products a lane, twice vpdpwssd's): q, k one scale per row
(max |x| / 127), q stored + 128 as the unsigned operand (the scores take back 128 * the key's sum);
v one scale per column; the probabilities round(p * I8_P / m) per chunk of 64 keys as in the int16
mode. Every int32 sum is exact (64 terms of 255 * 127 for q.k, I8_CHUNK * 4 for the weighted
values). Against the int16 mode: ~7 bits of each row's (column's, chunk's) largest instead of 12. */
#define I8_P 255.f
#define I8_CHUNK 16 /* key quads per exact sum of the weighted values: 64 keys, the int16 mode's chunk */

/* n (a multiple of 16, <= 64) bf16, minus mu[] if given -> bytes round(x / s) + off, s = max |x| /
   127 (returned; 1 for zeros); *sum (if given) = the sum of the rounded values */
static inline float quant_i8_row(const uint16_t *x, const float *mu, int n, uint8_t *dst, int off, int32_t *sum) {
    __m512 vmax = _mm512_setzero_ps(), xs[4];
    for (int i = 0; i < n; i += 16) {
        xs[i / 16] = load_bf16(x + i, 0xffff);
        if (mu) xs[i / 16] = _mm512_sub_ps(xs[i / 16], _mm512_loadu_ps(mu + i));
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(xs[i / 16]));
    }
    float amax = _mm512_reduce_max_ps(vmax), sc = amax > 0.f ? amax / 127.f : 1.f;
    __m512 inv = _mm512_set1_ps(1.f / sc);
    __m512i tot = _mm512_setzero_si512();
    for (int i = 0; i < n; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(xs[i / 16], inv));
        tot = _mm512_add_epi32(tot, v);
        _mm_storeu_si128((__m128i *)(dst + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(v, _mm512_set1_epi32(off))));
    }
    if (sum) *sum = _mm512_reduce_add_epi32(tot);
    return sc;
}

/* n rows of hd bf16 (rows rs apart) -> s8 with one scale per column (sc[hd]), packed for the
   weighted values: [key quad][d] dwords, byte t of dword (j, d) = key 4j + t, zeros past n */
static void quant_i8_cols_quads(const uint16_t *x, int64_t rs, int n, int hd, uint32_t *dst, float *sc) {
    __m512 inv[4];
    col_scales(x, rs, n, hd, 127.f, sc, inv);
    const __m512i lo = _mm512_set1_epi32(0xff);
    for (int j = 0; j < (n + 3) / 4; j++)
        for (int c = 0; c < hd / 16; c++) {
            __m512i w = _mm512_setzero_si512();
            for (int t = 0; t < 4 && 4 * j + t < n; t++) {
                __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16(x + (int64_t)(4 * j + t) * rs + c * 16, 0xffff), inv[c]));
                w = _mm512_or_si512(w, _mm512_slli_epi32(_mm512_and_si512(v, lo), 8 * t));
            }
            _mm512_storeu_si512(dst + (int64_t)j * hd + c * 16, w);
        }
}

#endif
