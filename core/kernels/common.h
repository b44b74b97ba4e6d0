/* What the CPU kernels (the .c files beside this one) share: bf16 conversions, a vector exp, the int8 KV cache
row layout and the entry points one file calls in another. core/native.py compiles the .c files
into one shared object with -O3 -march=native -fopenmp (`omp simd reduction` vectorises the float
sums without -ffast-math); their OpenMP regions run on PyTorch's own libgomp. */
#ifndef VX_COMMON_H
#define VX_COMMON_H
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

/* max |x[i]| over n floats (0 for n = 0): the int8 quantizers' scale (activation rows, KV rows);
   max is exact, so the vector and scalar orders give the same value */
static inline float abs_max(const float *x, int n) {
    float amax = 0.f;
    int i = 0;
#ifdef VX_AVX512
    __m512 vmax = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    amax = _mm512_reduce_max_ps(vmax);
#endif
    for (; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

/* One activation row -> int8 with one scale (amax / 127, returned), each value stored + off as a
   byte and padded to kp with off (= 0): off 128 gives linear_i8.c's unsigned operand, off 0
   linear_i4.c's signed one (two's complement bytes). Rounds to nearest even (lrintf's default
   mode, and the vector conversion's): both branches give the same bytes. The scalar branch
   called lrintf once an element, ~15% of a 10-row decode step. */
static inline float quantize_row8(const float *xr, int K, int kp, uint8_t *q, int off) {
    float amax = abs_max(xr, K);
    float s = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / s;
    int i = 0;
#ifdef VX_AVX512
    __m512 vinv = _mm512_set1_ps(inv);
    __m512i voff = _mm512_set1_epi32(off);
    for (; i + 16 <= K; i += 16) {
        __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + i), vinv)), voff);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(v));
    }
#endif
    for (; i < K; i++) q[i] = (uint8_t)(lrintf(xr[i] * inv) + off);
    for (i = K; i < kp; i++) q[i] = (uint8_t)off;
    return s;
}

/* ---- the packed Linear kernels' inner loops (linear_i8.c, linear_float.c) ---------------------
All pack their weights so that one 64-byte vector holds one k step of 16 output rows (4 int8 k,
2 bf16 k or 1 float32 k per row) and give each activation row one 32-bit word per step, broadcast:
the loops are the same, only the multiply-add differs. Sums live in __m512 registers either way (int32 bits
for int8: with __m512i ones gcc 12 spilled the bf16 GEMM tile's 24 sums to the stack, 2.3x slower). */
#define DOT_I8 0   /* vpdpbusd: u8 activations x s8 weights, int32 sums (AVX-512 VNNI) */
#define DOT_BF16 1 /* vdpbf16ps: bf16 pairs, float32 sums (AVX-512 BF16) */
#define DOT_F32 2  /* vfmadd: one float32 a step (AVX-512F) */
#define DOT_I16 4 /* vpdpwssd: int16 pairs, int32 sums (AVX-512 VNNI): attn_full.c's int16 mode */
#define DOT_BF16_FMA 3 /* vdpbf16ps's exact floats from two float32 FMAs a step (linear_float.c says
                          why); the activation rows are then float32, 8 bytes a step */
#define VX_ROWS_MAX 16 /* rows per pass over a weight block: 16 sums + 1 weight register */
#define VX_TILE_MR 12  /* rows per GEMM tile: 24 sums + 2 weight registers + 1 broadcast */

#ifdef VX_AVX512

/* The two float32 halves of 16 bf16 pairs (the weights' 2 k of 16 rows): the odd k's (the high
   16 bits of each lane, as they lie) and the even k's (the low 16, shifted up): exact. */
static inline __m512 bf16_hi(__m512i w) {
    return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
}
static inline __m512 bf16_lo(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }

static inline __attribute__((always_inline)) __m512 dot_step(__m512 acc, __m512i x, __m512i w, int kind) {
#if defined(__AVX512BF16__)
    if (kind == DOT_BF16) return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
#endif
#if defined(__AVX512VNNI__)
    if (kind == DOT_I8) return _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc), x, w));
    if (kind == DOT_I16) return _mm512_castsi512_ps(_mm512_dpwssd_epi32(_mm512_castps_si512(acc), x, w));
#endif
    if (kind == DOT_F32) return _mm512_fmadd_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(w), acc);
    (void)x, (void)w, (void)kind;
    return acc; /* not built for this kind: never called (the callers check) */
}

/* MB activation rows (one 32-bit word per step, rows lda bytes apart) against one block of 16
   weight rows ([steps][64 bytes]): each weight load serves all MB rows, MB independent sums hide
   the latency. Every line is prefetched 4 KB ahead into L1 and 32 KB ahead into L2: with several
   rows the stream otherwise stalls (int8, 10 rows: 11.8 -> 9.0 ms a step, A/B in one process). */
static inline __attribute__((always_inline)) void rows_block16(const uint8_t *wb, int steps, const uint8_t *x,
                                                               int64_t lda, int MB, __m512 *out, int kind) {
    __m512 a[VX_ROWS_MAX];
    const int32_t *xr[VX_ROWS_MAX];
    for (int j = 0; j < MB; j++) {
        a[j] = _mm512_setzero_ps();
        xr[j] = (const int32_t *)(x + (int64_t)j * lda);
    }
    for (int g = 0; g < steps; g++) {
        _mm_prefetch((const char *)(wb + (int64_t)(g + 64) * 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(wb + (int64_t)(g + 512) * 64), _MM_HINT_T1);
        __m512i w = _mm512_loadu_si512(wb + (int64_t)g * 64);
        if (kind == DOT_BF16_FMA) {
            __m512 wo = bf16_hi(w), we = bf16_lo(w);
            for (int j = 0; j < MB; j++) {
                const float *xf = (const float *)xr[j] + 2 * g;
                a[j] = _mm512_fmadd_ps(_mm512_set1_ps(xf[1]), wo, a[j]);
                a[j] = _mm512_fmadd_ps(_mm512_set1_ps(xf[0]), we, a[j]);
            }
            continue;
        }
        for (int j = 0; j < MB; j++) a[j] = dot_step(a[j], _mm512_set1_epi32(xr[j][g]), w, kind);
    }
    for (int j = 0; j < MB; j++) out[j] = a[j];
}

/* mr (<= VX_TILE_MR) rows x 32 outputs (the weight blocks b0, b1) over `steps` steps: the sums
   start from cin ([mr][32] 32-bit lanes; NULL: zero) and go to cout (the same layout, may be
   cin). The callers finish from cout, through L1: indexing the sums there would spill them here.
   The two GEMMs' panel loops around it (gemm_i8, gemm_bf16) look alike but stay apart: folded
   into one inline function with a finishing callback, gcc 12 kept the int8 tile's 24 sums on the
   stack (126-140 instructions a step instead of 53) and the int8 GEMM ran 2.2x slower. */
static inline __attribute__((always_inline)) void tile_block(const uint8_t *a, int64_t lda, const uint8_t *b0,
                                                             const uint8_t *b1, int steps, int mr, const void *cin,
                                                             void *cout, int kind) {
    __m512 c0[VX_TILE_MR], c1[VX_TILE_MR];
    for (int i = 0; i < mr; i++) {
        c0[i] = cin ? _mm512_loadu_ps((const float *)cin + i * 32) : _mm512_setzero_ps();
        c1[i] = cin ? _mm512_loadu_ps((const float *)cin + i * 32 + 16) : _mm512_setzero_ps();
    }
    for (int g = 0; g < steps; g++) {
        __m512i w0 = _mm512_loadu_si512(b0 + (int64_t)g * 64), w1 = _mm512_loadu_si512(b1 + (int64_t)g * 64);
        if (kind == DOT_BF16_FMA) {
            __m512 w0o = bf16_hi(w0), w0e = bf16_lo(w0), w1o = bf16_hi(w1), w1e = bf16_lo(w1);
            for (int i = 0; i < mr; i++) {
                const float *xf = (const float *)(a + i * lda + 8 * g);
                __m512 xo = _mm512_set1_ps(xf[1]), xe = _mm512_set1_ps(xf[0]);
                c0[i] = _mm512_fmadd_ps(xe, w0e, _mm512_fmadd_ps(xo, w0o, c0[i]));
                c1[i] = _mm512_fmadd_ps(xe, w1e, _mm512_fmadd_ps(xo, w1o, c1[i]));
            }
            continue;
        }
        for (int i = 0; i < mr; i++) {
            __m512i xv = _mm512_set1_epi32(*(const int32_t *)(a + i * lda + 4 * g));
            c0[i] = dot_step(c0[i], xv, w0, kind);
            c1[i] = dot_step(c1[i], xv, w1, kind);
        }
    }
    for (int i = 0; i < mr; i++) {
        _mm512_storeu_ps((float *)cout + i * 32, c0[i]);
        _mm512_storeu_ps((float *)cout + i * 32 + 16, c1[i]);
    }
}

/* the first n (clamped to 0..16) of 16 lanes */
static inline __mmask16 first_n(int n) { return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* acc + bias, ReLU, then: bf16 kinds round to bf16 (what torch's bf16 Linear returns), stored as
   bf16 (bf16 = 1) or as the float32 of that bf16; the float32 kind stores the sum as it is. Forced
   inline: called from linear_f16.c's GEMM as a plain inline, it ran that GEMM ~8% slower. */
static inline __attribute__((always_inline)) void finish16(__m512 v, int n, int cols, const float *bias, int relu,
                                                          void *y, int64_t at, int kind, int bf16) {
    __mmask16 k = first_n(cols);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + n));
    if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (bf16) {
        store_bf16((uint16_t *)y + at, k, v);
    } else if (kind != DOT_F32) {
        uint16_t t[16];
        store_bf16(t, 0xffff, v);
        _mm512_mask_storeu_ps((float *)y + at, k, load_bf16(t, 0xffff));
    } else {
        _mm512_mask_storeu_ps((float *)y + at, k, v);
    }
}

/* CALL(r) with r the constant min(n, 16) (or 12): constant row counts keep the sums in registers */
#define VX_CONST_ROWS12(n, CALL)                                                                       \
    switch (n) {                                                                                       \
        case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; case 4: CALL(4); break; \
        case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; case 8: CALL(8); break; \
        case 9: CALL(9); break; case 10: CALL(10); break; case 11: CALL(11); break;                   \
        default: CALL(12); break;                                                                      \
    }
#define VX_CONST_ROWS16(n, CALL)                                                                       \
    switch (n) {                                                                                       \
        case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; case 4: CALL(4); break; \
        case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; case 8: CALL(8); break; \
        case 9: CALL(9); break; case 10: CALL(10); break; case 11: CALL(11); break;                   \
        case 12: CALL(12); break; case 13: CALL(13); break; case 14: CALL(14); break;                 \
        case 15: CALL(15); break; default: CALL(16); break;                                            \
    }
#endif

/* rows padded to whole cache lines and one more (the int8 GEMM's lesson: rows 4 KB apart share
   one L1 set): the stride in elements of `elem` bytes for n of them */
static inline int64_t padded_row(int n, int elem) {
    int line = 64 / elem;
    return ((n + line - 1) / line) * line + line;
}

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

#ifdef VX_AVX512
/* shared by the decode attention's float (attn_decode.c) and int8 (kv_i8.c) kernels */
/* p[s0..n) = exp(p - max) (vmax: the lanes' maxima of the scores); returns 1 / their sum (0 if
   the sum is 0). The normalisation is left to the weighted sum of the values. */
static inline float exp_scores(float *p, int s0, int n, __m512 vmax) {
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

/* lane j = the sum of the 16 lanes of a[j]: float32 lanes, or int32 lanes (i32: exact) */
static inline __attribute__((always_inline)) __m512 hsum16x(const __m512 *a, int i32) {
#define VX_ADD(x, y) (i32 ? _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(x), _mm512_castps_si512(y))) \
                         : _mm512_add_ps(x, y))
    __m512 s[8], u[4];
    for (int i = 0; i < 8; i++)
        s[i] = VX_ADD(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(s[2 * i]), y = _mm512_castps_pd(s[2 * i + 1]);
        u[i] = VX_ADD(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    __m512 v0 = VX_ADD(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    __m512 v1 = VX_ADD(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return VX_ADD(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xdd));
#undef VX_ADD
}
#endif

#if defined(VX_AVX512) && defined(__AVX512VNNI__)
#define VX_DECODE_I8 1
void vx_decode_i8(const float *qv, const int8_t *k, const int8_t *v, int D, int s0, int n, float scale,
                  float *p, float *o, const int8_t *nk, const int8_t *nv, int16_t *wq);
#endif

/* entry points used across files (attn_decode.c, kv_i8.c, decode_step.c, linear_*.c) */
void vx_kv_put_i8(const float *x, int D, int8_t *row);
void vx_attn_decode(const float *q, int64_t qsb, const void *k, const void *v, int64_t sb, int64_t sh,
                    float *out, int B, int H, int D, int n, const int32_t *starts, const int32_t *rows,
                    const int32_t *ends, float scale, int kv, int n_threads);
void vx_linear_i8(const float *x, int64_t xs, int M, int K, const int8_t *wp, const float *scale,
                  const int32_t *rowsum, const float *bias, void *y, int N, int relu, int out_bf16,
                  int n_threads);
void vx_linear_i4(const float *x, int64_t xs, int M, int K, const uint8_t *wp, const uint16_t *sc,
                  const float *bias, void *y, int N, int relu, int out_bf16, int n_threads);
void vx_linear_bf16(const void *x, int64_t xs, int x_bf16, int M, int K, const uint16_t *wp, const float *bias,
                    void *y, int N, int relu, int out_bf16, int n_threads);
int vx_bf16_dot(int use_dpbf16);
void vx_linear_f32(const float *x, int64_t xs, int M, int K, const float *wp, const float *bias, float *y, int N,
                   int relu, int n_threads);

#endif
