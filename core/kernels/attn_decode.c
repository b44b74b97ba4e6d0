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
static inline __m512 hsum16(const __m512 *a) { return hsum16x(a, 0); }

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

/* One query against keys [s0, n) of one head of a bf16 cache (rows D apart), D % 32 == 0, D <= 128
   (hd = 64 in the public model). p: scratch for n scores; o: D float32 outputs.
   - A 64-byte load holds 32 bf16 = 16 pairs (d even, d odd) in 32-bit lanes: lane << 16 is the
     even element as a float, lane & 0xffff0000 the odd one. With q split the same way, every
     product is the exact float32 one, without a widening load per 16 elements.
   - Scores of 16 keys at once, reduced together by one transpose-and-add tree (hsum16) instead of
     a horizontal sum per key.
   - The weighted values go into two sets of sums (even and odd keys) so consecutive FMAs do not
     wait on each other; they are added and put back in d order once at the end. */
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

/* One query against keys [s0, n) of one head of a float32 cache (the fp32 mode), D % 16 == 0,
   D <= 128: decode_bf16's loops over float32 rows (scores of 16 keys per transpose-and-add tree,
   two sets of value sums, the next head's keys and values prefetched). */
static inline __attribute__((always_inline)) __m512 qk16_f32(const __m512 *q, int nz, const float *k, int D,
                                                             int cnt) {
    __m512 a[16];
    for (int j = 0; j < 16; j++) {
        a[j] = _mm512_setzero_ps();
        if (j < cnt)
            for (int z = 0; z < nz; z++) a[j] = _mm512_fmadd_ps(q[z], _mm512_loadu_ps(k + (int64_t)j * D + 16 * z), a[j]);
    }
    return hsum16(a);
}

static void decode_f32(const float *qv, const float *k, const float *v, int D, int s0, int n, float scale,
                       float *p, float *o, const float *nk, const float *nv) {
    int nz = D / 16;
    __m512 q[8], sc = _mm512_set1_ps(scale);
    for (int z = 0; z < nz; z++) q[z] = _mm512_mul_ps(_mm512_loadu_ps(qv + 16 * z), sc);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int s = s0;
    for (; s + 16 <= n; s += 16) {
        PREFETCH_L2(nk ? nk + (int64_t)s * D : NULL, 64 * D);
        __m512 r = qk16_f32(q, nz, k + (int64_t)s * D, D, 16);
        _mm512_storeu_ps(p + s, r);
        vmax = _mm512_max_ps(vmax, r);
    }
    if (s < n) {
        __mmask16 m = (__mmask16)((1u << (n - s)) - 1);
        __m512 r = qk16_f32(q, nz, k + (int64_t)s * D, D, n - s);
        _mm512_mask_storeu_ps(p + s, m, r);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, r);
    }
    float inv = exp_scores(p, s0, n, vmax);
    __m512 acc[2][8];
    for (int t = 0; t < 2; t++)
        for (int z = 0; z < nz; z++) acc[t][z] = _mm512_setzero_ps();
    for (s = s0; s + 2 <= n; s += 2) {
        PREFETCH_L2(nv ? nv + (int64_t)s * D : NULL, 8 * D);
        for (int t = 0; t < 2; t++) {
            __m512 w = _mm512_set1_ps(p[s + t]);
            for (int z = 0; z < nz; z++)
                acc[t][z] = _mm512_fmadd_ps(w, _mm512_loadu_ps(v + (int64_t)(s + t) * D + 16 * z), acc[t][z]);
        }
    }
    if (s < n) {
        __m512 w = _mm512_set1_ps(p[s]);
        for (int z = 0; z < nz; z++) acc[0][z] = _mm512_fmadd_ps(w, _mm512_loadu_ps(v + (int64_t)s * D + 16 * z), acc[0][z]);
    }
    __m512 iv = _mm512_set1_ps(inv);
    for (int z = 0; z < nz; z++) _mm512_storeu_ps(o + 16 * z, _mm512_mul_ps(_mm512_add_ps(acc[0][z], acc[1][z]), iv));
}
#endif

/* The scalar path, for any cache kind (no AVX-512, or a head size the vector kernels do not take):
   float32 sums, in another order than the float / bf16 vector kernels' (the int8 one rounds q and
   the weights to int16 first). Rows are rs elements apart (D, or D + 4 int8 bytes). */
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

/* Attention of one query per (row b, head h) over keys [starts[b], ends[b]) of a static KV cache.
   q: float32, element (b, h, d) at q[b*qsb + h*D + d].
   k, v: float32, bf16 or int8 rows (kv: KV_F32, KV_BF16, KV_I8), element (b, h, s, d) at
   [b*sb + h*sh + s*rs + d] with rs = D (D + 4 bytes for int8 rows, the scale after the values).
   out: float32 [B, H, D] contiguous. starts: NULL (all rows start at 0) or int32 [B]. rows: NULL,
   or int32 [B]: query row b reads cache row rows[b] (the live rows of a batch, none copied). ends:
   NULL (every row's keys end at n), or int32 [B] <= n: row b's end (rows of one sequence at
   consecutive positions, each seeing the keys up to its own). A row's result depends on its own
   query and keys only, whatever rows come with it. */
void vx_attn_decode(const float *q, int64_t qsb, const void *k, const void *v, int64_t sb, int64_t sh,
                    float *out, int B, int H, int D, int n, const int32_t *starts, const int32_t *rows,
                    const int32_t *ends, float scale, int kv, int n_threads) {
#pragma omp parallel num_threads(n_threads)
    {
        float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
        int16_t *wq = malloc(sizeof(int16_t) * (size_t)(n + 2));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            const float *qv = q + b * qsb + (int64_t)h * D;
            int64_t base = (rows ? rows[b] : b) * sb + h * sh;
            int s0 = starts ? starts[b] : 0, nb = ends ? ends[b] : n;  /* keys [s0, nb) */
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
#ifdef VX_DECODE_I8
            if (kv == KV_I8 && D % 32 == 0 && D <= 128) {
                vx_decode_i8(qv, (const int8_t *)kb, (const int8_t *)vb, D, s0, nb, scale, p, o,
                             (const int8_t *)nk, (const int8_t *)nv, wq);
                continue;
            }
#endif
            if (kv == KV_F32 && D % 16 == 0 && D <= 128) {
                decode_f32(qv, (const float *)kb, (const float *)vb, D, s0, nb, scale, p, o, (const float *)nk,
                           (const float *)nv);
                continue;
            }
            if (kv == KV_BF16 && D % 32 == 0 && D <= 128) {
                decode_bf16(qv, (const uint16_t *)kb, (const uint16_t *)vb, D, s0, nb, scale, p, o,
                            (const uint16_t *)nk, (const uint16_t *)nv);
                continue;
            }
#endif
            decode_scalar(qv, kb, vb, kv, D, s0, nb, scale, p, o);
        }
        free(p);
        free(wq);
    }
}
