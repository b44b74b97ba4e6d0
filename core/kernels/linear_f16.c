/* The bf16 mode's NAR Linears on CPUs with AVX-512 FP16 (vx_linear_f16): the multiply-adds in
half precision, the sums in float32.

Why: without AMX this CPU class runs a bf16 GEMM no faster than float32 FMAs (vdpbf16ps issues at
a quarter of their rate, linear_float.c), 16 multiply-adds an instruction; vfmadd231ph does 32 at
the same rate (measured here: 5.8 G instructions/s a core, as vfmadd231ps), so the NAR's GEMMs
(6.7e11 multiply-adds a sentence) can run twice as fast. The NAR only: the AR keeps
vx_linear_bf16, whose GEMV and GEMM give the same floats (its batches decode like one request).

What it computes, and why it stays as close to fp32 as the bf16 Linear:
- each activation row is scaled by a power of two so that max |x| lies in [32, 64), then rounded
  to fp16 (11 significant bits, against bf16's 8);
- the weights (the bf16 values) were scaled per output channel by a power of two to max |w| in
  [0.5, 1) and stored as fp16 (core/native_linear.py): exact, bar values below 2^-14 of a
  channel's largest;
- so every product is below 64 and F16_FLUSH pair steps of sums per lane stay below 4096: no
  overflow, whatever the input's scale;
- each lane sums F16_FLUSH products (one rounding to 11 bits each), then its sum goes into a
  float32 sum: the rounding adds ~sqrt(F16_FLUSH) x 2^-12 of a partial sum. Measured against exact
  sums: 0.88x the bf16 Linear's error (which comes from rounding the inputs to 8 bits); 128 steps
  ran ~5% faster and came out level with it, so 64 it is;
- the float32 sum is scaled back (powers of two: exact), + bias, ReLU, rounded to bf16 as the bf16
  Linear rounds.
Every output is summed in the same order whatever rows come with it. */
#include "common.h"

#if defined(VX_AVX512) && defined(__AVX512FP16__)
#define VX_F16 1
#define F16_FLUSH 64 /* pair steps summed in fp16 before the float32 sums */

/* one fp16 sum vector (16 channels, each lane pair = k even / odd) added into 32 float32 sums
   (each channel's pair side by side: summed at the end) */
static inline __attribute__((always_inline)) void flush16(__m512h acc, float *c) {
    __m512i u = _mm512_castph_si512(acc);
    __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(u));
    __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(u, 1));
    _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), lo));
    _mm512_storeu_ps(c + 16, _mm512_add_ps(_mm512_loadu_ps(c + 16), hi));
}

/* mr (<= VX_TILE_MR) rows x 32 channels (the weight blocks b0, b1: [steps][16 channels][2]) over
   `steps` pair steps, into c ([mr][64] float32: the pair sums of 32 channels). */
static inline __attribute__((always_inline)) void tile_f16(const uint16_t *a, int64_t lda, const uint16_t *b0,
                                                           const uint16_t *b1, int steps, int mr, float *c) {
    for (int g0 = 0; g0 < steps; g0 += F16_FLUSH) {
        int g1 = steps - g0 < F16_FLUSH ? steps : g0 + F16_FLUSH;
        __m512h c0[VX_TILE_MR], c1[VX_TILE_MR];
        for (int i = 0; i < mr; i++) c0[i] = c1[i] = _mm512_setzero_ph();
        for (int g = g0; g < g1; g++) {
            __m512h w0 = _mm512_castsi512_ph(_mm512_loadu_si512(b0 + (int64_t)g * 32));
            __m512h w1 = _mm512_castsi512_ph(_mm512_loadu_si512(b1 + (int64_t)g * 32));
            for (int i = 0; i < mr; i++) {
                __m512h xv = _mm512_castsi512_ph(_mm512_set1_epi32(*(const int32_t *)(a + i * lda + 2 * g)));
                c0[i] = _mm512_fmadd_ph(xv, w0, c0[i]);
                c1[i] = _mm512_fmadd_ph(xv, w1, c1[i]);
            }
        }
        for (int i = 0; i < mr; i++) {
            flush16(c0[i], c + i * 64);
            flush16(c1[i], c + i * 64 + 32);
        }
    }
}

/* 16 channels' pair sums (32 floats) -> y: summed, scaled back, then finish16 (common.h): + bias,
   ReLU, rounded to bf16 as the bf16 Linear's */
static inline void finish_f16(const float *c, int n, int cols, float xsc, const float *wsc, const float *bias,
                              int relu, void *y, int64_t at, int bf16) {
    __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    __m512 lo = _mm512_loadu_ps(c), hi = _mm512_loadu_ps(c + 16);
    __m512 v = _mm512_add_ps(_mm512_permutex2var_ps(lo, even, hi),
                             _mm512_permutex2var_ps(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi));
    v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(xsc)), _mm512_maskz_loadu_ps(first_n(cols), wsc + n));
    finish16(v, n, cols, bias, relu, y, at, DOT_BF16, bf16);
}

/* One row (float32 or bf16) -> K2 fp16 values scaled by a power of two so that max |x| lies in
   [32, 64) (unscaled: a zero or non-finite row); returns the factor that undoes it (exact) */
static float row_as_f16(const void *x, int64_t xs, int x_bf16, int m, int K, int K2, uint16_t *d) {
    const float *xf = (const float *)x + (int64_t)m * xs;
    const uint16_t *xh = (const uint16_t *)x + (int64_t)m * xs;
#define ROW16(i, k) (x_bf16 ? load_bf16(xh + (i), k) : _mm512_maskz_loadu_ps(k, xf + (i)))
    __m512 vmax = _mm512_setzero_ps();
    for (int i = 0; i < K; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(ROW16(i, first_n(K - i))));
    float amax = _mm512_reduce_max_ps(vmax), s = 1.f;
    if (amax > 0.f && isfinite(amax)) {
        int e;
        frexpf(amax, &e); /* amax < 2^e */
        s = ldexpf(1.f, 6 - e < 126 ? 6 - e : 126); /* a denormal row: as far as float32 goes */
    }
    __m512 vs = _mm512_set1_ps(s);
    for (int i = 0; i < K; i += 16) {
        __mmask16 k = first_n(K - i);
        __m512 v = _mm512_mul_ps(ROW16(i, k), vs);
        _mm256_mask_storeu_epi16(d + i, k, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#undef ROW16
    for (int i = K; i < K2; i++) d[i] = 0;
    return 1.f / s;
}

/* Every row, in tiles of 12, against 32 channels (a panel, 64-256 KB: in L2) at a time, split
   between the threads; a tile's float32 sums stay in L1 ([12][64]) and are finished at once. (k in
   passes that keep the panel's slice in L1, as gemm_i8 does, ran ~10% slower here.) */
static void gemm_f16(const uint16_t *xh, int64_t lda, const float *xsc, int M, int steps, const uint16_t *wp,
                     const float *wsc, const float *bias, void *y, int N, int relu, int bf16) {
    int npan = (N + 31) / 32;
#pragma omp for schedule(static)
    for (int p = 0; p < npan; p++) {
        const uint16_t *b0 = wp + (int64_t)(2 * p) * 32 * steps, *b1 = b0 + (int64_t)32 * steps;
        int n0 = 32 * p, cols = N - n0 < 32 ? N - n0 : 32;
        for (int m = 0; m < M; m += VX_TILE_MR) {
            int mr = M - m < VX_TILE_MR ? M - m : VX_TILE_MR;
            const uint16_t *a = xh + (int64_t)m * lda;
            float c[VX_TILE_MR * 64];
            memset(c, 0, sizeof(float) * 64 * (size_t)mr);
#define VX_TILE(r) tile_f16(a, lda, b0, b1, steps, r, c)
            VX_CONST_ROWS12(mr, VX_TILE)
#undef VX_TILE
            for (int i = 0; i < mr; i++) {
                int64_t at = (int64_t)(m + i) * N + n0;
                finish_f16(c + i * 64, n0, cols, xsc[m + i], wsc, bias, relu, y, at, bf16);
                if (cols > 16)
                    finish_f16(c + i * 64 + 32, n0 + 16, cols - 16, xsc[m + i], wsc, bias, relu, y, at + 16, bf16);
            }
        }
    }
}
#endif

int vx_has_linear_f16(void) {
#ifdef VX_F16
    return 1;
#else
    return 0;
#endif
}

/* y[m, n] = act(wsc[n] * sum_k x[m, k] w16[n, k] + bias[n]) rounded to bf16 (what the bf16 Linear
   returns; see the top of this file for the arithmetic). x: float32 or bf16 (x_bf16) rows xs
   elements apart; wp: the scaled fp16 weights packed by core/native_linear.py as
   [ceil(N/32)*2][K2/2][16][2] (K2 = K rounded up to 2, zero padding); wsc (the channels' powers of
   two) and bias (float32, or NULL) padded to a multiple of 32; y: [M, N] contiguous, bf16 or the
   float32 of the bf16 (out_bf16 = 0). Without AVX-512 FP16 it does nothing (core/native_linear.py
   does not use it then). */
void vx_linear_f16(const void *x, int64_t xs, int x_bf16, int M, int K, const uint16_t *wp, const float *wsc,
                   const float *bias, void *y, int N, int relu, int out_bf16, int n_threads) {
#ifdef VX_F16
    int K2 = (K + 1) & ~1;
    int64_t lda = padded_row(K2, 2);
    uint16_t *xh = malloc(sizeof(uint16_t) * ((size_t)M * lda + 32));
    float *xsc = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) xsc[m] = row_as_f16(x, xs, x_bf16, m, K, K2, xh + (int64_t)m * lda);
        gemm_f16(xh, lda, xsc, M, K2 / 2, wp, wsc, bias, y, N, relu, out_bf16);
    }
    free(xh);
    free(xsc);
#else
    (void)x, (void)xs, (void)x_bf16, (void)M, (void)K, (void)wp, (void)wsc, (void)bias, (void)y, (void)N;
    (void)relu, (void)out_bf16, (void)n_threads;
#endif
}
