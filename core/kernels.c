/* CPU kernels for the one-row-at-a-time AR decode step of core/lm.py (built by core/native.py),
and the softmax of the bf16 full attention (NAR, prefill).

Why hand-written: for a single query row, PyTorch's SDPA and batched matmul spend most of their
time in per-head set-up (16 heads x 12 layers of tiny GEMVs), and fbgemm / oneDNN int8 GEMV read
the weights at ~18 GB/s here, well below the memory bandwidth. The decode step is bound by how
fast the weights and the KV cache stream from memory, so these loops just stream them once, in
order, on the threads of PyTorch's own OpenMP pool (the same libgomp, so no oversubscription).

Compiled with -O3 -march=native -fopenmp: `omp simd reduction` lets the compiler vectorise the
float sums without -ffast-math. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline float bf16f(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_bf16(float f) {  /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define VX_AVX512 1
static inline __m512 exp_ps(__m512 x) {  /* x <= 0 */
    x = _mm512_max_ps(x, _mm512_set1_ps(-88.f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  /* ln 2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606820309417e-06f), r);     /* |r| <= ln2 / 2 */
    __m512 p = _mm512_set1_ps(1.f / 720.f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);  /* p * 2^n */
}

/* 16 floats -> bf16, round to nearest even as f32_bf16 (NaN aside), masked store */
static inline void store_bf16(uint16_t *dst, __mmask16 m, __m512 v) {
    __m512i u = _mm512_castps_si512(v);
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                             _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    _mm256_mask_storeu_epi16(dst, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}

static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* Into L2: the cache lines of [p, p + bytes), p NULL: nothing (a macro: as an inline function, gcc 12
   dropped the prefetches). The decode kernels fetch the next
   (row, head)'s keys and values while they work on this one: each is only ~30-60 KB, too short a
   stream for the hardware prefetcher to reach full speed, and without it the batched step read
   the int8 cache at ~15 GB/s instead of ~27. */
#define PREFETCH_L2(p, bytes)                                                                         \
    do {                                                                                              \
        if (p)                                                                                        \
            for (int l_ = 0; l_ < (bytes); l_ += 64) _mm_prefetch((const char *)(p) + l_, _MM_HINT_T1); \
    } while (0)
#endif

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

/* ---- the int8 KV cache (the int8 mode's AR) -------------------------------------------------
A cache row of one head is D int8 values and then their float32 scale (value = scale * int8), D + 4
bytes: one tensor, so the cache is sliced, copied and row-mapped as before. Against bf16 it halves
the bytes the batched decode step streams (~200 MB a step at 10 rows and 441 keys, bound by memory
bandwidth), at a rounding step of max|x| / 127 per 64 values: finer than the int8 activations that
every Linear of the mode already quantizes per 1024. */
#define KV_F32 0
#define KV_BF16 1
#define KV_I8 2

static inline float kv_scale(const int8_t *row, int D) {
    float sc;
    memcpy(&sc, row + D, sizeof sc);
    return sc;
}

/* D floats -> one int8 cache row: scale = max|x| / 127, x / scale rounded to nearest even. */
static void kv_put_i8(const float *x, int D, int8_t *row) {
    float amax = 0.f;
    for (int d = 0; d < D; d++) amax = fmaxf(amax, fabsf(x[d]));
    float sc = amax / 127.f;
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

/* rows x D floats (contiguous) -> rows int8 cache rows of D + 4 bytes (core/native.py's kv_quantize:
   the prefill's keys and values, and the per-op decode path's). */
void vx_kv_quantize(const float *x, int64_t rows, int D, int8_t *out, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) kv_put_i8(x + r * D, D, out + r * (D + 4));
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

/* The scalar form of decode_i8 (no AVX-512): the same sums in another order. */
static void decode_i8_scalar(const float *qv, const int8_t *k, const int8_t *v, int D, int s0, int n,
                             float scale, float *p, float *o) {
    int rs = D + 4;
    float mx = -INFINITY, sum = 0.f;
    for (int s = s0; s < n; s++) {
        const int8_t *kr = k + (int64_t)s * rs;
        float acc = 0.f;
        for (int d = 0; d < D; d++) acc += qv[d] * (float)kr[d];
        p[s] = acc * scale * kv_scale(kr, D);
        mx = p[s] > mx ? p[s] : mx;
    }
    for (int s = s0; s < n; s++) {
        p[s] = expf(p[s] - mx);
        sum += p[s];
    }
    float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int d = 0; d < D; d++) o[d] = 0.f;
    for (int s = s0; s < n; s++) {
        const int8_t *vr = v + (int64_t)s * rs;
        float w = p[s] * kv_scale(vr, D);
        for (int d = 0; d < D; d++) o[d] += w * (float)vr[d];
    }
    for (int d = 0; d < D; d++) o[d] *= inv;
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
    int kv_bf16 = kv == KV_BF16;
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
            float mx = -INFINITY, sum = 0.f;
            int es = kv == KV_F32 ? 4 : kv == KV_BF16 ? 2 : 1;  /* bytes per element */
            const char *nk = NULL, *nv = NULL;  /* the next (row, head)'s keys and values */
            if (bh + 1 < B * H) {
                int b1 = (bh + 1) / H, h1 = (bh + 1) % H;
                int64_t base1 = ((rows ? rows[b1] : b1) * sb + h1 * sh) * es;
                nk = (const char *)k + base1;
                nv = (const char *)v + base1;
            }
            (void)nk, (void)nv;  /* only the AVX-512 kernels prefetch */
            if (kv == KV_I8) {
#ifdef VX_AVX512
                if (D % 16 == 0 && D <= 128) {
                    decode_i8(qv, (const int8_t *)k + base, (const int8_t *)v + base, D, s0, n, scale, p, o,
                              (const int8_t *)nk, (const int8_t *)nv);
                    continue;
                }
#endif
                decode_i8_scalar(qv, (const int8_t *)k + base, (const int8_t *)v + base, D, s0, n, scale, p, o);
                continue;
            }
#ifdef VX_AVX512
            if (kv_bf16 && D % 32 == 0 && D <= 128) {
                decode_bf16(qv, (const uint16_t *)k + base, (const uint16_t *)v + base, D, s0, n, scale, p, o,
                                  (const uint16_t *)nk, (const uint16_t *)nv);
                continue;
            }
#endif
            for (int s = s0; s < n; s += 4) {
                int c = n - s < 4 ? n - s : 4;
                if (kv_bf16)
                    dot4_bf16(qv, (const uint16_t *)k + base + (int64_t)s * D, D, c, p + s);
                else
                    dot4_f32(qv, (const float *)k + base + (int64_t)s * D, D, c, p + s);
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
                if (kv_bf16) {
                    const uint16_t *vr = (const uint16_t *)v + base + (int64_t)s * D;
#pragma omp simd
                    for (int d = 0; d < D; d++) o[d] += w * bf16f(vr[d]);
                } else {
                    const float *vr = (const float *)v + base + (int64_t)s * D;
#pragma omp simd
                    for (int d = 0; d < D; d++) o[d] += w * vr[d];
                }
            }
        }
        free(p);
    }
}

/* One activation row -> int8 with one scale, stored +128 (unsigned) and padded to k4 with 128
   (= 0): the u8 operand of vpdpbusd. Rounds to nearest even (lrintf's default mode, and the
   vector conversion's): both branches give the same bytes. The scalar branch called lrintf once
   an element, ~15% of a 10-row decode step. */
static void quantize_row(const float *xr, int K, int k4, uint8_t *q, float *xscale) {
    float amax = 0.f;
    int i = 0;
#ifdef VX_AVX512
    __m512 vmax = _mm512_setzero_ps();
    for (; i + 16 <= K; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xr + i)));
    amax = _mm512_reduce_max_ps(vmax);
#endif
    for (; i < K; i++) amax = fmaxf(amax, fabsf(xr[i]));
    float s = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / s;
    i = 0;
#ifdef VX_AVX512
    __m512 vinv = _mm512_set1_ps(inv);
    __m512i off = _mm512_set1_epi32(128);
    for (; i + 16 <= K; i += 16) {
        __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + i), vinv)), off);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(v));
    }
#endif
    for (; i < K; i++) q[i] = (uint8_t)(lrintf(xr[i] * inv) + 128);
    for (i = K; i < k4; i++) q[i] = 128;
    *xscale = s;
}

#define MAX_MB 16 /* activation rows per pass over a weight block: 16 accumulators + 1 weight register */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
/* MB activation rows against one block of 16 weight rows. The block is packed [k4/4][16][4]:
   each 64-byte load holds 4 consecutive k of all 16 rows, so vpdpbusd with the broadcast 4 bytes
   of x adds into 16 per-row sums at once: no horizontal reductions, one weight stream, and each
   weight load serves all MB rows (MB independent sums hide the latency; one row uses four sums
   over interleaved k groups instead, in block16_one). Every cache line is prefetched 4 KB ahead;
   with several rows also 32 KB ahead into L2: their MB vpdpbusd per line otherwise stall the
   stream (10 rows: 11.8 -> 9.0 ms a step at 20 keys, A/B in one process). */
static inline void block16_one(const int8_t *wb, int groups, const uint8_t *xq, __m512i *out) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const int32_t *xr = (const int32_t *)xq;
    int g = 0;
    for (; g + 4 <= groups; g += 4) {
        const int8_t *p = wb + (int64_t)g * 64;
        for (int l = 0; l < 4; l++) _mm_prefetch((const char *)(p + 4096 + 64 * l), _MM_HINT_T0);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(xr[g]), _mm512_loadu_si512(p));
        a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(xr[g + 1]), _mm512_loadu_si512(p + 64));
        a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(xr[g + 2]), _mm512_loadu_si512(p + 128));
        a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(xr[g + 3]), _mm512_loadu_si512(p + 192));
    }
    for (; g < groups; g++) a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(xr[g]), _mm512_loadu_si512(wb + (int64_t)g * 64));
    out[0] = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
}

static inline __attribute__((always_inline)) void block16(const int8_t *wb, int groups, const uint8_t *xq, int k4,
                                                          int MB, __m512i *out) {
    __m512i a[MAX_MB];
    const int32_t *xr[MAX_MB];
    for (int j = 0; j < MB; j++) {
        a[j] = _mm512_setzero_si512();
        xr[j] = (const int32_t *)(xq + (int64_t)j * k4);
    }
    for (int g = 0; g < groups; g++) {
        _mm_prefetch((const char *)(wb + (int64_t)(g + 64) * 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(wb + (int64_t)(g + 512) * 64), _MM_HINT_T1);
        __m512i w = _mm512_loadu_si512(wb + (int64_t)g * 64);
        for (int j = 0; j < MB; j++) a[j] = _mm512_dpbusd_epi32(a[j], _mm512_set1_epi32(xr[j][g]), w);
    }
    for (int j = 0; j < MB; j++) out[j] = a[j];
}
#endif

/* The float results of int32 sums of one activation row against output channels n0.. (x was
   quantized +128, hence the rowsum term). The few-row and the many-row paths both end here, with
   the same IEEE operations in the same order, so a row's result does not depend on how many rows
   came with it. */
#ifdef VX_AVX512
static inline __attribute__((always_inline)) void dequant16(__m512i acc, int n, int cols, float xsc,
                                                            const float *scale, const int32_t *rowsum,
                                                            const float *bias, int relu, void *y, int64_t at,
                                                            int bf16) {
    __mmask16 k = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __m512i a = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(k, rowsum + n), 7));
    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(xsc)), _mm512_maskz_loadu_ps(k, scale + n));
    v = _mm512_add_ps(v, bias ? _mm512_maskz_loadu_ps(k, bias + n) : _mm512_setzero_ps());
    if (relu) v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps());
    if (bf16)
        store_bf16((uint16_t *)y + at, k, v);
    else
        _mm512_mask_storeu_ps((float *)y + at, k, v);
}
#endif

static void dequant_row(const int32_t *acc, int n0, int cols, float xsc, const float *scale,
                        const int32_t *rowsum, const float *bias, int relu, void *y, int64_t at, int bf16) {
#ifdef VX_AVX512
    for (int r = 0; r < cols; r += 16)
        dequant16(_mm512_loadu_si512(acc + r), n0 + r, cols - r, xsc, scale, rowsum, bias, relu, y, at + r, bf16);
#else
    for (int r = 0; r < cols; r++) {
        int n = n0 + r;
        float val = (float)(acc[r] - 128 * rowsum[n]) * xsc * scale[n] + (bias ? bias[n] : 0.f);
        val = relu && val < 0.f ? 0.f : val;
        if (bf16)
            ((uint16_t *)y)[at + r] = f32_bf16(val);
        else
            ((float *)y)[at + r] = val;
    }
#endif
}

#if defined(VX_AVX512) && defined(__AVX512VNNI__)
#define VX_GEMM_I8 1
#define GEMM_MR 12   /* rows per tile: 24 accumulators + 2 weight registers + 1 broadcast */
#define GEMM_KC 2048 /* k per pass: 12 rows x 2 KB of activations stay in L1 between the panels' reloads */

/* mr (<= GEMM_MR) activation rows x 32 output channels (two packed 16-row weight blocks b0, b1)
   over `groups` groups of 4 k, added to (acc_in) or stored over c (int32, rows ldc apart). */
typedef struct {  /* where a tile's last pass puts its results: dequant16 into y */
    const float *xscale, *scale, *bias;
    const int32_t *rowsum;
    void *y;  /* float32, or bf16 (bf16) */
    int64_t at;  /* the tile's first row, first column in y */
    int n0, cols, ldy, relu, bf16;
} vx_tile_out;

static inline __attribute__((always_inline)) void tile_i8(const uint8_t *a, int64_t lda, const int8_t *b0,
                                                          const int8_t *b1, int groups, int mr, int32_t *c,
                                                          int ldc, int acc_in, const vx_tile_out *o) {
    __m512i c0[GEMM_MR], c1[GEMM_MR];
    for (int i = 0; i < mr; i++) {
        c0[i] = acc_in ? _mm512_loadu_si512(c + i * ldc) : _mm512_setzero_si512();
        c1[i] = acc_in ? _mm512_loadu_si512(c + i * ldc + 16) : _mm512_setzero_si512();
    }
    for (int g = 0; g < groups; g++) {
        __m512i w0 = _mm512_loadu_si512(b0 + (int64_t)g * 64), w1 = _mm512_loadu_si512(b1 + (int64_t)g * 64);
        for (int i = 0; i < mr; i++) {
            __m512i x = _mm512_set1_epi32(*(const int32_t *)(a + i * lda + 4 * g));
            c0[i] = _mm512_dpbusd_epi32(c0[i], x, w0);
            c1[i] = _mm512_dpbusd_epi32(c1[i], x, w1);
        }
    }
    int32_t t[GEMM_MR][32];  /* the last pass over k: through L1 to dequant16 (indexing the
                                accumulators there would spill them in the loop above) */
    if (o) {
        c = &t[0][0];
        ldc = 32;
    }
    for (int i = 0; i < mr; i++) {
        _mm512_storeu_si512(c + i * ldc, c0[i]);
        _mm512_storeu_si512(c + i * ldc + 16, c1[i]);
    }
    if (o)
        for (int i = 0; i < mr; i++) {
            int64_t at = o->at + (int64_t)i * o->ldy;
            dequant16(_mm512_loadu_si512(t[i]), o->n0, o->cols, o->xscale[i], o->scale, o->rowsum, o->bias, o->relu,
                      o->y, at, o->bf16);
            if (o->cols > 16)
                dequant16(_mm512_loadu_si512(t[i] + 16), o->n0 + 16, o->cols - 16, o->xscale[i], o->scale, o->rowsum,
                          o->bias, o->relu, o->y, at + 16, o->bf16);
        }
}

/* Many rows (the NAR, the AR prefill): the weights go 32 output channels (a panel, 32-128 KB,
   kept in L2) at a time, split between the threads; each panel meets all rows in tiles of 12,
   k in passes of GEMM_KC, into an int32 buffer, then dequant_row. On this CPU ~830 GOP/s on 2
   cores (~90% of vpdpbusd's peak), against ~580 for fbgemm's dynamic int8 Linear with its
   activation quantization. Needs the weights padded to a multiple of 32 rows. */
static void gemm_i8(const uint8_t *xq, float *xscale, int M, int k4, const int8_t *wp, const float *scale,
                    const int32_t *rowsum, const float *bias, void *y, int N, int relu, int bf16) {
    int npan = (N + 31) / 32;
    int32_t *cb = k4 > GEMM_KC ? malloc(sizeof(int32_t) * (size_t)M * 32) : NULL;
#pragma omp for schedule(static)
    for (int p = 0; p < npan; p++) {
        const int8_t *b0 = wp + (int64_t)(2 * p) * 16 * k4, *b1 = b0 + (int64_t)16 * k4;
        int n0 = 32 * p, cols = N - n0 < 32 ? N - n0 : 32;
        for (int k0 = 0; k0 < k4; k0 += GEMM_KC) {
            int kc = k4 - k0 < GEMM_KC ? k4 - k0 : GEMM_KC, groups = kc / 4, in = k0 > 0;
            int last = k0 + kc == k4;
            const int8_t *w0 = b0 + (int64_t)k0 * 16, *w1 = b1 + (int64_t)k0 * 16;
            for (int m = 0; m < M; m += GEMM_MR) {
                vx_tile_out o = {xscale + m, scale, bias, rowsum, y, (int64_t)m * N + n0, n0, cols, N, relu, bf16};
                const vx_tile_out *op = last ? &o : NULL;
                const uint8_t *a = xq + (int64_t)m * k4 + k0;
                int32_t *c = cb ? cb + (int64_t)m * 32 : NULL;
                switch (M - m < GEMM_MR ? M - m : GEMM_MR) {  /* constant mr: the accumulators stay in registers */
#define VX_TILE(r) case r: tile_i8(a, k4, w0, w1, groups, r, c, 32, in, op); break;
                    VX_TILE(1) VX_TILE(2) VX_TILE(3) VX_TILE(4) VX_TILE(5) VX_TILE(6)
                    VX_TILE(7) VX_TILE(8) VX_TILE(9) VX_TILE(10) VX_TILE(11) VX_TILE(12)
#undef VX_TILE
                    default: break;
                }
            }
        }
    }
    free(cb);
}
#endif

int vx_has_gemm_i8(void) {
#ifdef VX_GEMM_I8
    return 1;
#else
    return 0;
#endif
}

/* Up to a few rows (the decode step): each 16-row weight block is read once for all of them. An
   orphaned work-share: called by every thread of vx_linear_i8's parallel region. */
static void rows_i8(const uint8_t *xq, const float *xscale, int M, int k4, const int8_t *wp,
                    const float *scale, const int32_t *rowsum, const float *bias, void *y, int N, int relu,
                    int bf16) {
    int groups = k4 / 4, nblk = (N + 15) / 16;
#pragma omp for schedule(static)
    for (int nb = 0; nb < nblk; nb++) {
        const int8_t *wb = wp + (int64_t)nb * 16 * k4;
        int n0 = nb * 16, rows = N - n0 < 16 ? N - n0 : 16;
        for (int m0 = 0; m0 < M; m0 += MAX_MB) {
            int mb = M - m0 < MAX_MB ? M - m0 : MAX_MB;
            const uint8_t *xm = xq + (int64_t)m0 * k4;
            int32_t acc[MAX_MB][16];
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
            __m512i out[MAX_MB];
            switch (mb) {  /* constant MB: the accumulators stay in registers */
                case 1: block16_one(wb, groups, xm, out); break;
                case 2: block16(wb, groups, xm, k4, 2, out); break;
                case 3: block16(wb, groups, xm, k4, 3, out); break;
                case 4: block16(wb, groups, xm, k4, 4, out); break;
                case 5: block16(wb, groups, xm, k4, 5, out); break;
                case 6: block16(wb, groups, xm, k4, 6, out); break;
                case 7: block16(wb, groups, xm, k4, 7, out); break;
                case 8: block16(wb, groups, xm, k4, 8, out); break;
                case 9: block16(wb, groups, xm, k4, 9, out); break;
                case 10: block16(wb, groups, xm, k4, 10, out); break;
                case 11: block16(wb, groups, xm, k4, 11, out); break;
                case 12: block16(wb, groups, xm, k4, 12, out); break;
                case 13: block16(wb, groups, xm, k4, 13, out); break;
                case 14: block16(wb, groups, xm, k4, 14, out); break;
                case 15: block16(wb, groups, xm, k4, 15, out); break;
                default: block16(wb, groups, xm, k4, 16, out); break;
            }
            for (int j = 0; j < mb; j++) _mm512_storeu_si512(acc[j], out[j]);
#else
            for (int j = 0; j < mb; j++)
                for (int r = 0; r < 16; r++) {
                    int32_t sacc = 0;
                    for (int g = 0; g < groups; g++)
                        for (int t = 0; t < 4; t++)
                            sacc += (int32_t)xm[(int64_t)j * k4 + 4 * g + t] * (int32_t)wb[((int64_t)g * 16 + r) * 4 + t];
                    acc[j][r] = sacc;
                }
#endif
            for (int j = 0; j < mb; j++)
                dequant_row(acc[j], n0, rows, xscale[m0 + j], scale, rowsum, bias, relu, y,
                            (int64_t)(m0 + j) * N + n0, bf16);
        }
    }
}

/* y[m, n] = act(scale[n] * sum_k w[n, k] x[m, k] + bias[n]): int8 weights with per-output-channel
   scales, each activation row quantized on the fly to int8 with one scale (symmetric, per row:
   finer than fbgemm's dynamic mode, one scale per tensor and 7 bits). wp: the weights packed by
   core/native.py as [ceil(N/32)*2][k4/4][16][4] (k4 = K rounded up to 4, zero padding); scale,
   rowsum (sum_k w[n, k]) and bias are padded to a multiple of 32. x rows are xs floats apart; y
   is [M, N] contiguous, float32 or bf16 (out_bf16, rounded to nearest even). Up to MAX_MB rows
   (the decode step) stream the weights once through block16; more rows go through gemm_i8.
   Integer sums are exact, so both give the same floats. */
void vx_linear_i8(const float *x, int64_t xs, int M, int K, const int8_t *wp, const float *scale,
                  const int32_t *rowsum, const float *bias, void *y, int N, int relu, int out_bf16,
                  int n_threads) {
    int k4 = (K + 3) & ~3;
    uint8_t *xq = malloc((size_t)M * k4 + 64);
    float *xscale = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) quantize_row(x + m * xs, K, k4, xq + (int64_t)m * k4, xscale + m);
#ifdef VX_GEMM_I8
        if (M > MAX_MB)
            gemm_i8(xq, xscale, M, k4, wp, scale, rowsum, bias, y, N, relu, out_bf16);
        else
#endif
            rows_i8(xq, xscale, M, k4, wp, scale, rowsum, bias, y, N, relu, out_bf16);
    }
    free(xq);
    free(xscale);
}

/* ---- the whole AR decode step of the int8 mode in one call ---------------------------------- */

typedef struct {
    const int8_t *w;
    const float *scale;
    const int32_t *rowsum;
    const float *bias;
    int n, k;
} vx_qlinear;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    vx_qlinear qkv, out, ff1, ff2;
} vx_qlayer;

static void layer_norm(const float *x, const float *w, const float *b, float *y, int D) {
    float mean = 0.f, var = 0.f;
    for (int i = 0; i < D; i++) mean += x[i];
    mean /= (float)D;
    for (int i = 0; i < D; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.f / sqrtf(var / (float)D + 1e-5f);
    for (int i = 0; i < D; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

static void qlin(const vx_qlinear *l, const float *x, int M, float *y, int relu, int nt) {
    vx_linear_i8(x, l->k, M, l->k, l->w, l->scale, l->rowsum, l->bias, y, l->n, relu, 0, nt);
}

/* x: the residual stream [B, D] of the new position, updated in place through all layers (the
   final norm is left to the caller). cache: int8 rows [L, 2, cache_rows, H, smax, D/H + 4]; row b's new
   k, v go to cache row rows[b] (rows NULL: b), at `slot`, and its query attends to keys
   [starts[b], slot]. Same arithmetic as the per-op path (pre-LN, eps 1e-5, int8 Linear layers,
   int8 KV cache, float32 softmax). */
void vx_decode_i8(const vx_qlayer *layers, int n_layers, float *x, int B, int D, int H, int d_ff,
                  int8_t *cache, int64_t cache_rows, int64_t smax, int slot, const int32_t *starts,
                  const int32_t *rows, int n_threads) {
    int hd = D / H;
    float *h = malloc(sizeof(float) * (size_t)B * D);
    float *qkv = malloc(sizeof(float) * (size_t)B * 3 * D);
    float *att = malloc(sizeof(float) * (size_t)B * D);
    float *tmp = malloc(sizeof(float) * (size_t)B * (d_ff > D ? d_ff : D));
    float *o = malloc(sizeof(float) * (size_t)B * D);
    int64_t sh = smax * (hd + 4), sb = (int64_t)H * sh, skv = cache_rows * sb;
    for (int i = 0; i < n_layers; i++) {
        const vx_qlayer *L = layers + i;
        int8_t *kc = cache + (int64_t)(2 * i) * skv, *vc = kc + skv;
        for (int b = 0; b < B; b++) layer_norm(x + (int64_t)b * D, L->ln1_w, L->ln1_b, h + (int64_t)b * D, D);
        qlin(&L->qkv, h, B, qkv, 0, n_threads);
        for (int b = 0; b < B; b++)
            for (int hh = 0; hh < H; hh++) {
                const float *kr = qkv + (int64_t)b * 3 * D + D + hh * hd, *vr = kr + D;
                int64_t at = (rows ? rows[b] : b) * sb + hh * sh + (int64_t)slot * (hd + 4);
                kv_put_i8(kr, hd, kc + at);
                kv_put_i8(vr, hd, vc + at);
            }
        vx_attn_decode(qkv, 3 * D, kc, vc, sb, sh, att, B, H, hd, slot + 1, starts, rows, 1.f / sqrtf((float)hd),
                       KV_I8, n_threads);
        qlin(&L->out, att, B, o, 0, n_threads);
        for (int64_t j = 0; j < (int64_t)B * D; j++) x[j] += o[j];
        for (int b = 0; b < B; b++) layer_norm(x + (int64_t)b * D, L->ln2_w, L->ln2_b, h + (int64_t)b * D, D);
        qlin(&L->ff1, h, B, tmp, 1, n_threads);
        qlin(&L->ff2, tmp, B, o, 0, n_threads);
        for (int64_t j = 0; j < (int64_t)B * D; j++) x[j] += o[j];
    }
    free(h);
    free(qkv);
    free(att);
    free(tmp);
    free(o);
}

/* ---- softmax over rows of bf16 attention scores, in place ------------------------------------

Why hand-written: the NAR's 7 passes x 12 layers each take a softmax over 16 x 633 x 633 bf16
scores, and PyTorch's (Sleef exp, a float32 copy, a fresh output) spent ~20% of the int8 NAR in it.
This one reads each row once into an L1-resident float32 buffer, sums in float32 and writes the
probabilities back over the scores, rounded to bf16 (nearest even, as torch's .to(bfloat16)).
exp is a degree-6 polynomial after range reduction (relative error ~2e-7, far below bf16's 4e-3).
Masked scores (-inf) give exactly 0; a row with every score masked gives zeros, not NaN. */
#ifdef VX_AVX512
static void softmax_row(uint16_t *s, int n, float *buf) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, load_bf16(s + i, m));
    }
    float mx = _mm512_reduce_max_ps(vmax);
    if (mx == -INFINITY) {
        memset(s, 0, sizeof(uint16_t) * (size_t)n);
        return;
    }
    __m512 vm = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps(), ninf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = load_bf16(s + i, m);
        m &= _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ);
        __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(x, vm)));
        _mm512_storeu_ps(buf + i, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vsum));
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        store_bf16(s + i, m, _mm512_mul_ps(_mm512_loadu_ps(buf + i), inv));
    }
}
#else
static void softmax_row(uint16_t *s, int n, float *buf) {
    float mx = -INFINITY, sum = 0.f;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, bf16f(s[i]));
    if (mx == -INFINITY) {
        memset(s, 0, sizeof(uint16_t) * (size_t)n);
        return;
    }
    for (int i = 0; i < n; i++) {
        float x = bf16f(s[i]);
        buf[i] = x == -INFINITY ? 0.f : expf(x - mx);
        sum += buf[i];
    }
    for (int i = 0; i < n; i++) s[i] = f32_bf16(buf[i] / sum);
}
#endif

/* s: bf16 [rows, n] contiguous, replaced by softmax over each row. */
void vx_softmax_bf16(uint16_t *s, int64_t rows, int n, int n_threads) {
#pragma omp parallel num_threads(n_threads)
    {
        float *buf = aligned_alloc(64, sizeof(float) * (size_t)((n + 15) / 16 * 16));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) softmax_row(s + r * n, n, buf);
        free(buf);
    }
}

/* ---- full (unmasked) attention over bf16 q, k, v: the NAR's -----------------------------------

Why hand-written: with PyTorch ops the NAR's attention is a batched bf16 matmul to a [H, S, S]
score tensor, a softmax over it, a second matmul and two layout copies, each a pass over memory.
Here each (row, head) pair keeps its keys and values packed for vdpbf16ps in L2, and a block of
QB queries goes scores -> softmax -> weighted values through an L1-sized buffer. Same arithmetic as
that path: bf16 products summed in float32, probabilities rounded to bf16 (here before the 1/sum,
which is applied in float32 at the end). The row maxima are taken as the scores are made and the
probabilities are written as bf16 in one pass: the softmax was ~20% of the kernel with three. */
#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define VX_ATTN_FULL 1
#define QB 6 /* queries per block: QB x 4 float32 accumulators + 4 operand registers */

/* acc[r][c] = sum_i a[r][i] . b(i, c) over n steps: QB rows of bf16 pairs (row r at a + r*as, one
   dword per step) against nc <= 4 packed bf16 vectors per step, vector (i, c) at b + (i*bi + c*bc)*16.
   Both halves of the attention are this: scores (a = queries, b = key blocks) and weighted values
   (a = probabilities of key pairs, b = value pairs). */
static inline __attribute__((always_inline)) void dp_block(const uint32_t *a, int64_t as, int n, const uint32_t *b,
                                                           int64_t bi, int64_t bc, int nc, __m512 acc[QB][4]) {
    for (int r = 0; r < QB; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    for (int i = 0; i < n; i++) {
        __m512bh w[4];
        for (int c = 0; c < nc; c++) w[c] = (__m512bh)_mm512_loadu_si512(b + ((int64_t)i * bi + c * bc) * 16);
        for (int r = 0; r < QB; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r * as + i]);
            for (int c = 0; c < nc; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x, w[c]);
        }
    }
}

/* scaled scores of QB queries (hp pairs each) against nkb <= 4 packed key blocks ([hp][16] each),
   with each row's running maximum over the first `valid` keys of the group (the rest is padding) */
static inline __attribute__((always_inline)) void qk_blocks(const uint32_t *q, int hp, const uint32_t *kp, int nkb,
                                                            int valid, float *s, int64_t ss, float scale,
                                                            __m512 vmax[QB]) {
    __m512 acc[QB][4];
    dp_block(q, hp, hp, kp, 1, hp, nkb, acc);
    __m512 vs = _mm512_set1_ps(scale);
    __mmask16 m[4];
    for (int c = 0; c < nkb; c++) {
        int n = valid - c * 16;
        m[c] = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
    }
    for (int r = 0; r < QB; r++)
        for (int c = 0; c < nkb; c++) {
            __m512 x = _mm512_mul_ps(acc[r][c], vs);
            _mm512_storeu_ps(s + r * ss + c * 16, x);
            vmax[r] = _mm512_mask_max_ps(vmax[r], m[c], vmax[r], x);
        }
}

/* QB rows of bf16 probabilities (np key pairs, rows ps apart) times the packed value pairs ([np][nv]) */
static inline __attribute__((always_inline)) void pv_block(const uint32_t *p, int64_t ps, int np, const uint32_t *vp,
                                                           int nv, __m512 acc[QB][4]) {
    dp_block(p, ps, np, vp, nv, 1, nv, acc);
}

#endif

/* 1 when vx_attn_full is compiled in (AVX-512 BF16); 0: the caller keeps the matmul path. */
int vx_has_attn_full(void) {
#ifdef VX_ATTN_FULL
    return 1;
#else
    return 0;
#endif
}

/* q: bf16 [B, H, Sq, hd], element (b, h, s, d) at q[b*qst[0] + h*qst[1] + s*qst[2] + d]; k, v: bf16
   [B, H, Sk, hd] with the strides kvst (the same for both). So q, k, v may be views into the
   packed projection [B, S, 3, H, hd] as it comes out of the GEMM: no layout copies. Every query
   sees every key.
   out: [B, Sq, H, hd] (the layout the output projection reads), float32 or bf16 (out_bf16).
   hd must be a multiple of 16 and at most 64. */
void vx_attn_full(const uint16_t *q, const int64_t *qst, const uint16_t *k, const uint16_t *v, const int64_t *kvst,
                  void *out, int B, int H,
                  int Sq, int Sk, int hd, float scale, int out_bf16, int n_threads) {
#ifdef VX_ATTN_FULL
    int hp = hd / 2, nv = hd / 16, nkb = (Sk + 15) / 16, np = (Sk + 1) / 2, sk32 = (Sk + 31) / 32 * 32;
    int64_t ss = (int64_t)nkb * 16 + 16;  /* score row stride (floats), >= sk32 */
    int64_t pst = (np + 31) / 16 * 16;  /* pair row stride: >= sk32 / 2, a multiple of 64 B (aligned_alloc) */
#pragma omp parallel num_threads(n_threads)
    {
        uint32_t *kp = aligned_alloc(64, sizeof(uint32_t) * (size_t)nkb * hp * 16);
        uint32_t *vp = aligned_alloc(64, sizeof(uint32_t) * (size_t)np * hd);
        float *s = aligned_alloc(64, sizeof(float) * (size_t)QB * ss);
        uint32_t *p = aligned_alloc(64, sizeof(uint32_t) * (size_t)QB * pst);
        uint32_t *qpad = aligned_alloc(64, sizeof(uint32_t) * (size_t)QB * hp);
        /* word d of a packed value pair = (row 0, d) | (row 1, d) << 16; rows sit at 0..15, 16..31 */
        const __m512i ileave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            int64_t kvo = b * kvst[0] + h * kvst[1], krs = kvst[2];
            const uint16_t *qh = q + b * qst[0] + h * qst[1], *kh = k + kvo, *vh = v + kvo;
            /* keys: [key block][d pair][16 keys] (a dword = 2 consecutive d of one key), zero-padded */
            for (int kb = 0; kb < nkb; kb++)
                for (int j = 0; j < 16; j++) {
                    int key = kb * 16 + j;
                    const uint32_t *kr = (const uint32_t *)(kh + (int64_t)(key < Sk ? key : 0) * krs);
                    uint32_t *dst = kp + (int64_t)kb * hp * 16 + j;
                    for (int i = 0; i < hp; i++) dst[i * 16] = key < Sk ? kr[i] : 0u;
                }
            /* values: [key pair][d][2 keys], zero-padded */
            for (int jp = 0; jp < np; jp++) {
                const uint16_t *v0 = vh + (int64_t)(2 * jp) * krs, *v1 = 2 * jp + 1 < Sk ? v0 + krs : NULL;
                uint32_t *dst = vp + (int64_t)jp * hd;
                if (v1) {  /* interleave 16 d of both rows per store */
                    for (int d = 0; d < hd; d += 16) {
                        __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(v0 + d)));
                        a = _mm512_inserti64x4(a, _mm256_loadu_si256((const __m256i *)(v1 + d)), 1);
                        _mm512_storeu_si512(dst + d, _mm512_permutexvar_epi16(ileave, a));
                    }
                } else {
                    for (int d = 0; d < hd; d++) dst[d] = (uint32_t)v0[d];
                }
            }
            for (int q0 = 0; q0 < Sq; q0 += QB) {
                int nq = Sq - q0 < QB ? Sq - q0 : QB;
                /* the block's rows side by side (the last block padded with copies of its first) */
                for (int r = 0; r < QB; r++)
                    memcpy(qpad + r * hp, qh + (int64_t)(q0 + (r < nq ? r : 0)) * qst[2], sizeof(uint32_t) * hp);
                const uint32_t *qb = qpad;
                __m512 vmax[QB];
                for (int r = 0; r < QB; r++) vmax[r] = _mm512_set1_ps(-INFINITY);
                for (int kb = 0; kb < nkb; kb += 4) {
                    int c = nkb - kb < 4 ? nkb - kb : 4, valid = Sk - kb * 16;
                    const uint32_t *kpb = kp + (int64_t)kb * hp * 16;
                    switch (c) {  /* constant block count: the accumulators stay in registers */
                        case 1: qk_blocks(qb, hp, kpb, 1, valid, s + kb * 16, ss, scale, vmax); break;
                        case 2: qk_blocks(qb, hp, kpb, 2, valid, s + kb * 16, ss, scale, vmax); break;
                        case 3: qk_blocks(qb, hp, kpb, 3, valid, s + kb * 16, ss, scale, vmax); break;
                        default: qk_blocks(qb, hp, kpb, 4, valid, s + kb * 16, ss, scale, vmax); break;
                    }
                }
                /* softmax: exp(s - max) rounded to bf16 straight into the probability rows (a bf16
                   row in key order is the pairs layout), zeros past Sk for the last pair */
                float inv[QB];
                for (int r = 0; r < QB; r++) {
                    const float *sr = s + r * ss;
                    uint16_t *pr = (uint16_t *)(p + r * pst);
                    __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r])), vsum = _mm512_setzero_ps();
                    for (int i = 0; i < sk32; i += 16) {
                        __mmask16 m = Sk - i >= 16 ? 0xffff : Sk <= i ? 0 : (__mmask16)((1u << (Sk - i)) - 1);
                        __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sr + i), vm)));
                        _mm256_storeu_si256((__m256i *)(pr + i), (__m256i)_mm512_cvtneps_pbh(e));
                        vsum = _mm512_add_ps(vsum, e);
                    }
                    inv[r] = 1.f / _mm512_reduce_add_ps(vsum);
                }
                __m512 acc[QB][4];
                switch (nv) {
                    case 1: pv_block(p, pst, np, vp, 1, acc); break;
                    case 2: pv_block(p, pst, np, vp, 2, acc); break;
                    case 3: pv_block(p, pst, np, vp, 3, acc); break;
                    default: pv_block(p, pst, np, vp, 4, acc); break;
                }
                for (int r = 0; r < nq; r++) {
                    int64_t o = (((int64_t)b * Sq + q0 + r) * H + h) * hd;
                    __m512 vi = _mm512_set1_ps(inv[r]);
                    for (int c = 0; c < nv; c++) {
                        __m512 y = _mm512_mul_ps(acc[r][c], vi);
                        if (out_bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)out + o + c * 16), (__m256i)_mm512_cvtneps_pbh(y));
                        else _mm512_storeu_ps((float *)out + o + c * 16, y);
                    }
                }
            }
        }
        free(kp);
        free(vp);
        free(s);
        free(p);
        free(qpad);
    }
#else
    (void)q; (void)qst; (void)k; (void)v; (void)kvst; (void)out; (void)B; (void)H; (void)Sq; (void)Sk; (void)hd; (void)scale;
    (void)out_bf16; (void)n_threads;
#endif
}
