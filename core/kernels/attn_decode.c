/* The attention of the AR decode step: one query row per (batch row, head) against a static KV
cache of float32, bf16 or int8 rows (built by core/native.py with the other kernels).

Why hand-written: for a single query row, PyTorch's SDPA and batched matmul spend most of their
time in per-head set-up (16 heads x 12 layers of tiny GEMVs). The decode step is bound by how fast
the weights and the KV cache stream from memory, so these loops stream each head's keys and values
once, in order, with the next head's prefetched. */
#include "common.h"

/* q . k for c <= 4 consecutive key rows of length D (four independent sums per pass). */
static inline void dot4_f32(const float *restrict q, const float *restrict k, int D, int c, float *out) {
    const float *k0 = k, *k1 = c > 1 ? k + D : k, *k2 = c > 2 ? k + 2 * D : k, *k3 = c > 3 ? k + 3 * D : k;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int i = 0; i < D; i++) {
        a0 += q[i] * k0[i];
        a1 += q[i] * k1[i];
        a2 += q[i] * k2[i];
        a3 += q[i] * k3[i];
    }
    float a[4] = {a0, a1, a2, a3};
    for (int j = 0; j < c; j++) out[j] = a[j];
}

static inline void dot4_bf16(const float *restrict q, const uint16_t *restrict k, int D, int c, float *out) {
    const uint16_t *k0 = k, *k1 = c > 1 ? k + D : k, *k2 = c > 2 ? k + 2 * D : k, *k3 = c > 3 ? k + 3 * D : k;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int i = 0; i < D; i++) {
        a0 += q[i] * bf16f(k0[i]);
        a1 += q[i] * bf16f(k1[i]);
        a2 += q[i] * bf16f(k2[i]);
        a3 += q[i] * bf16f(k3[i]);
    }
    float a[4] = {a0, a1, a2, a3};
    for (int j = 0; j < c; j++) out[j] = a[j];
}

#ifdef VX_AVX512
/* p[s0..n) = exp(p - max) (vmax: the lanes' maxima of the scores); returns 1 / their sum (0 if
   the sum is 0). The normalisation is left to the weighted sum of the values. */
static float exp_scores(float *p, int s0, int n, __m512 vmax) {
    __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), vsum = _mm512_setzero_ps();
    for (int s = s0; s < n; s += 16) {
        __mmask16 m = n - s >= 16 ? 0xffff : (__mmask16)((1u << (n - s)) - 1);
        __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + s), vm)));
        _mm512_mask_storeu_ps(p + s, m, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    float sum = _mm512_reduce_add_ps(vsum);
    return sum > 0.f ? 1.f / sum : 0.f;
}

/* One query against keys [s0, n) of one head of a bf16 cache (rows D apart), D % 32 == 0, D <= 128
   (hd = 64 in the public model). p: scratch for n scores; o: D float32 outputs.
   - A 64-byte load holds 32 bf16 = 16 pairs (d even, d odd) in 32-bit lanes: lane << 16 is the
     even element as a float, lane & 0xffff0000 the odd one. With q split the same way, every
     product is the exact float32 one, without a widening load per 16 elements.
   - Scores of 16 keys at once, reduced together by one transpose-and-add tree (hsum16) instead of
     a horizontal sum per key.
   - The weighted values go into two sets of sums (even and odd keys) so consecutive FMAs do not
     wait on each other; they are added and put back in d order once at the end. */
static inline __m512 hsum16(const __m512 *a) {  /* lane j = the sum of the 16 lanes of a[j] */
    __m512 s[8], u[4];
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(s[2 * i]), y = _mm512_castps_pd(s[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xdd));
}

#define ODD_MASK _mm512_set1_epi32((int)0xffff0000u)
static inline __m512 bf16_even(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
static inline __m512 bf16_odd(__m512i w) { return _mm512_castsi512_ps(_mm512_and_si512(w, ODD_MASK)); }

/* Scores of keys k[0..cnt) (rows D apart, cnt <= 16; lanes >= cnt are 0) against q split into
   nz even / odd halves. */
static inline __attribute__((always_inline)) __m512 qk16(const __m512 *qe, const __m512 *qo, int nz,
                                                         const uint16_t *k, int D, int cnt) {
    __m512 a[16];
    for (int j = 0; j < 16; j++) {
        a[j] = _mm512_setzero_ps();
        if (j < cnt)
            for (int z = 0; z < nz; z++) {
                __m512i w = _mm512_loadu_si512(k + (int64_t)j * D + 32 * z);
                a[j] = _mm512_fmadd_ps(qe[z], bf16_even(w), a[j]);
                a[j] = _mm512_fmadd_ps(qo[z], bf16_odd(w), a[j]);
            }
    }
    return hsum16(a);
}

static void decode_bf16(const float *qv, const uint16_t *k, const uint16_t *v, int D, int s0, int n,
                              float scale, float *p, float *o, const uint16_t *nk, const uint16_t *nv) {
    int nz = D / 32;
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    __m512 qe[4], qo[4], sc = _mm512_set1_ps(scale);
    for (int z = 0; z < nz; z++) {
        __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(qv + 32 * z), sc), hi = _mm512_mul_ps(_mm512_loadu_ps(qv + 32 * z + 16), sc);
        qe[z] = _mm512_permutex2var_ps(lo, ev, hi);
        qo[z] = _mm512_permutex2var_ps(lo, od, hi);
    }
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int s = s0;
    for (; s + 16 <= n; s += 16) {
        PREFETCH_L2(nk ? nk + (int64_t)s * D : NULL, 32 * D);
        __m512 r = qk16(qe, qo, nz, k + (int64_t)s * D, D, 16);
        _mm512_storeu_ps(p + s, r);
        vmax = _mm512_max_ps(vmax, r);
    }
    if (s < n) {
        __mmask16 m = (__mmask16)((1u << (n - s)) - 1);
        __m512 r = qk16(qe, qo, nz, k + (int64_t)s * D, D, n - s);
        _mm512_mask_storeu_ps(p + s, m, r);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, r);
    }
    float inv = exp_scores(p, s0, n, vmax);
    __m512 ae[2][4], ao[2][4];
    for (int t = 0; t < 2; t++)
        for (int z = 0; z < nz; z++) ae[t][z] = ao[t][z] = _mm512_setzero_ps();
    for (s = s0; s + 2 <= n; s += 2) {
        PREFETCH_L2(nv ? nv + (int64_t)s * D : NULL, 4 * D);
        for (int t = 0; t < 2; t++) {
            __m512 w = _mm512_set1_ps(p[s + t]);
            for (int z = 0; z < nz; z++) {
                __m512i x = _mm512_loadu_si512(v + (int64_t)(s + t) * D + 32 * z);
                ae[t][z] = _mm512_fmadd_ps(w, bf16_even(x), ae[t][z]);
                ao[t][z] = _mm512_fmadd_ps(w, bf16_odd(x), ao[t][z]);
            }
        }
    }
    if (s < n) {
        __m512 w = _mm512_set1_ps(p[s]);
        for (int z = 0; z < nz; z++) {
            __m512i x = _mm512_loadu_si512(v + (int64_t)s * D + 32 * z);
            ae[0][z] = _mm512_fmadd_ps(w, bf16_even(x), ae[0][z]);
            ao[0][z] = _mm512_fmadd_ps(w, bf16_odd(x), ao[0][z]);
        }
    }
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    __m512 iv = _mm512_set1_ps(inv);
    for (int z = 0; z < nz; z++) {
        __m512 e = _mm512_mul_ps(_mm512_add_ps(ae[0][z], ae[1][z]), iv);
        __m512 d = _mm512_mul_ps(_mm512_add_ps(ao[0][z], ao[1][z]), iv);
        _mm512_storeu_ps(o + 32 * z, _mm512_permutex2var_ps(e, lo, d));
        _mm512_storeu_ps(o + 32 * z + 16, _mm512_permutex2var_ps(e, hi, d));
    }
}
#endif

/* ---- the int8 KV cache (layout: common.h) ---------------------------------------------------- */

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

#ifdef VX_AVX512
static inline __m512 i8_ps(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* One query against keys [s0, n) of one head of an int8 cache (rows D + 4 bytes apart), D % 16 == 0,
   D <= 128: the layout of decode_bf16, with the integer sums scaled once per key. */
static void decode_i8(const float *qv, const int8_t *k, const int8_t *v, int D, int s0, int n, float scale,
                      float *p, float *o, const int8_t *nk, const int8_t *nv) {
    int nc = D / 16, rs = D + 4;
    __m512 q[8], vmax = _mm512_set1_ps(-INFINITY);
    for (int c = 0; c < nc; c++) q[c] = _mm512_mul_ps(_mm512_loadu_ps(qv + 16 * c), _mm512_set1_ps(scale));
    for (int s = s0; s < n; s += 16) {
        int cnt = n - s < 16 ? n - s : 16;
        const int8_t *kr = k + (int64_t)s * rs;
        PREFETCH_L2(nk ? nk + (int64_t)s * rs : NULL, 16 * rs);
        __m512 a[16];
        float sc[16];
        for (int j = 0; j < 16; j++) {
            a[j] = _mm512_setzero_ps();
            sc[j] = 0.f;
            if (j < cnt) {
                for (int c = 0; c < nc; c++) a[j] = _mm512_fmadd_ps(q[c], i8_ps(kr + (int64_t)j * rs + 16 * c), a[j]);
                sc[j] = kv_scale(kr + (int64_t)j * rs, D);
            }
        }
        __mmask16 m = cnt == 16 ? 0xffff : (__mmask16)((1u << cnt) - 1);
        __m512 r = _mm512_mul_ps(hsum16(a), _mm512_loadu_ps(sc));
        _mm512_mask_storeu_ps(p + s, m, r);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, r);
    }
    float inv = exp_scores(p, s0, n, vmax);
    __m512 acc[2][8];
    for (int t = 0; t < 2; t++)
        for (int c = 0; c < nc; c++) acc[t][c] = _mm512_setzero_ps();
    int s = s0;
    for (; s + 2 <= n; s += 2) {
        PREFETCH_L2(nv ? nv + (int64_t)s * rs : NULL, 2 * rs);
        for (int t = 0; t < 2; t++) {
            const int8_t *vr = v + (int64_t)(s + t) * rs;
            __m512 w = _mm512_set1_ps(p[s + t] * kv_scale(vr, D));
            for (int c = 0; c < nc; c++) acc[t][c] = _mm512_fmadd_ps(w, i8_ps(vr + 16 * c), acc[t][c]);
        }
    }
    if (s < n) {
        const int8_t *vr = v + (int64_t)s * rs;
        __m512 w = _mm512_set1_ps(p[s] * kv_scale(vr, D));
        for (int c = 0; c < nc; c++) acc[0][c] = _mm512_fmadd_ps(w, i8_ps(vr + 16 * c), acc[0][c]);
    }
    for (int c = 0; c < nc; c++)
        _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(_mm512_add_ps(acc[0][c], acc[1][c]), _mm512_set1_ps(inv)));
}
#endif

/* The scalar path, for any cache kind (no AVX-512, or a head size the vector kernels do not take):
   the same sums as theirs in another order. Rows are rs elements apart (D, or D + 4 int8 bytes). */
static void decode_scalar(const float *qv, const void *k, const void *v, int kv, int D, int s0, int n,
                          float scale, float *p, float *o) {
    int rs = kv == KV_I8 ? D + 4 : D;
    float mx = -INFINITY, sum = 0.f;
    for (int s = s0; s < n; s += 4) {
        int c = n - s < 4 ? n - s : 4;
        if (kv == KV_I8)
            for (int j = 0; j < c; j++) {
                const int8_t *kr = (const int8_t *)k + (int64_t)(s + j) * rs;
                float acc = 0.f;
                for (int d = 0; d < D; d++) acc += qv[d] * (float)kr[d];
                p[s + j] = acc * kv_scale(kr, D);
            }
        else if (kv == KV_BF16)
            dot4_bf16(qv, (const uint16_t *)k + (int64_t)s * D, D, c, p + s);
        else
            dot4_f32(qv, (const float *)k + (int64_t)s * D, D, c, p + s);
        for (int j = 0; j < c; j++) {
            p[s + j] *= scale;
            if (p[s + j] > mx) mx = p[s + j];
        }
    }
    for (int s = s0; s < n; s++) {
        p[s] = expf(p[s] - mx);
        sum += p[s];
    }
    float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int d = 0; d < D; d++) o[d] = 0.f;
    for (int s = s0; s < n; s++) {
        float w = p[s] * inv;
        if (kv == KV_I8) {
            const int8_t *vr = (const int8_t *)v + (int64_t)s * rs;
            w *= kv_scale(vr, D);
#pragma omp simd
            for (int d = 0; d < D; d++) o[d] += w * (float)vr[d];
        } else if (kv == KV_BF16) {
            const uint16_t *vr = (const uint16_t *)v + (int64_t)s * D;
#pragma omp simd
            for (int d = 0; d < D; d++) o[d] += w * bf16f(vr[d]);
        } else {
            const float *vr = (const float *)v + (int64_t)s * D;
#pragma omp simd
            for (int d = 0; d < D; d++) o[d] += w * vr[d];
        }
    }
}

/* Attention of one query per (row b, head h) over keys [starts[b], n) of a static KV cache.
   q: float32, element (b, h, d) at q[b*qsb + h*D + d].
   k, v: float32, bf16 or int8 rows (kv: KV_F32, KV_BF16, KV_I8), element (b, h, s, d) at
   [b*sb + h*sh + s*rs + d] with rs = D (D + 4 bytes for int8 rows, the scale after the values).
   out: float32 [B, H, D] contiguous. starts: NULL (all rows start at 0) or int32 [B]. rows: NULL,
   or int32 [B]: query row b reads cache row rows[b] (the live rows of a batch, none copied). */
void vx_attn_decode(const float *q, int64_t qsb, const void *k, const void *v, int64_t sb, int64_t sh,
                    float *out, int B, int H, int D, int n, const int32_t *starts, const int32_t *rows,
                    float scale, int kv, int n_threads) {
#pragma omp parallel num_threads(n_threads)
    {
        float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            const float *qv = q + b * qsb + (int64_t)h * D;
            int64_t base = (rows ? rows[b] : b) * sb + h * sh;
            int s0 = starts ? starts[b] : 0;
            float *o = out + (int64_t)bh * D;
            int es = kv == KV_F32 ? 4 : kv == KV_BF16 ? 2 : 1;  /* bytes per element */
            const char *kb = (const char *)k + base * es, *vb = (const char *)v + base * es;
#ifdef VX_AVX512
            const char *nk = NULL, *nv = NULL;  /* the next (row, head)'s keys and values: prefetched */
            if (bh + 1 < B * H) {
                int b1 = (bh + 1) / H, h1 = (bh + 1) % H;
                int64_t base1 = ((rows ? rows[b1] : b1) * sb + h1 * sh) * es;
                nk = (const char *)k + base1;
                nv = (const char *)v + base1;
            }
            if (kv == KV_I8 && D % 16 == 0 && D <= 128) {
                decode_i8(qv, (const int8_t *)kb, (const int8_t *)vb, D, s0, n, scale, p, o,
                          (const int8_t *)nk, (const int8_t *)nv);
                continue;
            }
            if (kv == KV_BF16 && D % 32 == 0 && D <= 128) {
                decode_bf16(qv, (const uint16_t *)kb, (const uint16_t *)vb, D, s0, n, scale, p, o,
                            (const uint16_t *)nk, (const uint16_t *)nv);
                continue;
            }
#endif
            decode_scalar(qv, kb, vb, kv, D, s0, n, scale, p, o);
        }
        free(p);
    }
}
