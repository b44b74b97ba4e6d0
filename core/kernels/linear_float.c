/* The float Linears, over one packed copy of the weights each:
- vx_linear_bf16 (the bf16 mode's stacks and output heads): bf16 weights packed so that one
  64-byte load holds 2 consecutive k of 16 output rows; AVX-512 BF16's vdpbf16ps adds
  x[k] w[n, k] + x[k+1] w[n, k+1] into 16 per-row float sums at once, x's pair broadcast.
- vx_linear_f32 (the fp32 mode's AR): float32 weights, one k of 16 output rows per 64-byte load,
  one FMA per row and step, x[k] broadcast.
No horizontal sums either way. The loops are the int8 Linear's (common.h), with another multiply-add.

Why not oneDNN: its bf16 GEMV read the weights of one decode row at ~18.5 GB/s here (16.3 ms a step
for 302 MB, against ~25-29 GB/s of read bandwidth), and with it the step stays a chain of 60 op
calls from Python; its float32 Linear ran a 10-row decode step at ~50 G MAC/s with the weights in
cache (the 10-row fp32 step took ~40 ms of Linears, against the ~20 ms it takes to read 604 MB).
Why not torch's layout ([N, K]): every dot product then ends in a 16-lane horizontal sum, and the
prefill's GEMM would need a second copy of the weights in a blocked layout; one packed copy serves
both here.

Every output (m, n) is one float lane summed over k steps in order, whether it came through the
few-row GEMV or the tiled GEMM, with one or twenty rows beside it: a batch gives exactly the floats
of one row at a time (what makes the AR's batches token-equal to one-by-one decoding). */
#include "common.h"
#include <omp.h>

#ifdef VX_AVX512
#define KC_STEPS 512 /* k steps per GEMM pass (1024 bf16 k, 512 float k): 12 rows x 2 KB stay in L1 */

/* vdpbf16ps adds x[k+1] w[k+1] and then x[k] w[k] to each float sum, each a fused multiply-add
   (a product of two bf16 is exact in float32) rounded to nearest even, with denormal inputs read
   as zero and denormal results flushed to zero (DAZ, FTZ), whatever MXCSR says. DOT_BF16_FMA does
   the same with two vfmadd231ps under MXCSR's DAZ and FTZ, for exactly the same floats (checked
   against vdpbf16ps on millions of random pairs, denormals and cancellations included: the even-
   first order or one rounding for both products differ in ~6% / ~16% of sums). Why: on some CPUs
   with AVX-512 BF16 vdpbf16ps issues at a quarter of the FMA rate (Intel Xeon model 207,
   measured: 43 G MAC/s a core against 88 through float32 FMAs, 16 MAC each), on others (Zen 4) at
   about the FMA rate. core/native.py times both at load and picks the faster; the tokens cannot change
   with the choice. Without AVX-512 BF16 the FMA loops are the only bf16 path. The finishing steps
   (bias, ReLU, rounding) run outside, under the caller's MXCSR, as they do after vdpbf16ps. */
static inline unsigned daz_on(int kind) {
    unsigned csr = _mm_getcsr();
    if (kind == DOT_BF16_FMA) _mm_setcsr(csr | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return csr;
}
static inline void daz_off(int kind, unsigned csr) {
    if (kind == DOT_BF16_FMA) _mm_setcsr(csr);
}

/* Up to a few rows (the decode step): each 16-row weight block (64 bytes a step) is read once for
   all of them (rows_block16, common.h). xb: rows lda bytes apart, 4 bytes a step. An orphaned
   work-share, as the GEMM below. */
static inline __attribute__((always_inline)) void rows_float(const uint8_t *xb, int64_t lda, int M, int steps,
                                                             const uint8_t *wp, const float *bias, void *y, int N,
                                                             int relu, int kind, int bf16) {
    int nblk = (N + 15) / 16;
#pragma omp for schedule(static)
    for (int nb = 0; nb < nblk; nb++) {
        const uint8_t *wb = wp + (int64_t)nb * 64 * steps;
        int n0 = nb * 16, cols = N - n0 < 16 ? N - n0 : 16;
        for (int m0 = 0; m0 < M; m0 += VX_ROWS_MAX) {
            const uint8_t *xm = xb + (int64_t)m0 * lda;
            __m512 out[VX_ROWS_MAX];
            int mb = M - m0 < VX_ROWS_MAX ? M - m0 : VX_ROWS_MAX;
            unsigned csr = daz_on(kind);
#define VX_ROWS(r) rows_block16(wb, steps, xm, lda, r, out, kind)
            VX_CONST_ROWS16(mb, VX_ROWS)
#undef VX_ROWS
            daz_off(kind, csr);
            for (int j = 0; j < mb; j++)
                finish16(out[j], n0, cols, bias, relu, y, (int64_t)(m0 + j) * N + n0, kind, bf16);
        }
    }
}

/* Many rows (the prefill, the NAR): 32 output channels (a panel, 64-512 KB, kept in L2) at a time,
   split between the threads, each meeting all rows in tiles of 12 (tile_block, common.h), k in
   passes of KC_STEPS through a float32 buffer. */
static inline __attribute__((always_inline)) void gemm_float(const uint8_t *xb, int64_t lda, int M, int steps,
                                                             const uint8_t *wp, const float *bias, void *y, int N,
                                                             int relu, int kind, int bf16) {
    int npan = (N + 31) / 32;
    float *cb = steps > KC_STEPS ? malloc(sizeof(float) * (size_t)M * 32) : NULL;
#pragma omp for schedule(static)
    for (int p = 0; p < npan; p++) {
        const uint8_t *b0 = wp + (int64_t)(2 * p) * 64 * steps, *b1 = b0 + (int64_t)64 * steps;
        int n0 = 32 * p, cols = N - n0 < 32 ? N - n0 : 32;
        for (int g0 = 0; g0 < steps; g0 += KC_STEPS) {
            int gc = steps - g0 < KC_STEPS ? steps - g0 : KC_STEPS, in = g0 > 0, last = g0 + gc == steps;
            const uint8_t *w0 = b0 + (int64_t)g0 * 64, *w1 = b1 + (int64_t)g0 * 64;
            for (int m = 0; m < M; m += VX_TILE_MR) {
                int mr = M - m < VX_TILE_MR ? M - m : VX_TILE_MR;
                const uint8_t *a = xb + (int64_t)m * lda + (kind == DOT_BF16_FMA ? 8 : 4) * g0;
                float *c = cb ? cb + (int64_t)m * 32 : NULL, t[VX_TILE_MR][32];
                float *dst = last ? &t[0][0] : c;
                unsigned csr = daz_on(kind);
#define VX_TILE(r) tile_block(a, lda, w0, w1, gc, r, in ? c : NULL, dst, kind)
                VX_CONST_ROWS12(mr, VX_TILE)
#undef VX_TILE
                daz_off(kind, csr);
                for (int i = 0; last && i < mr; i++) {
                    int64_t at = (int64_t)(m + i) * N + n0;
                    finish16(_mm512_loadu_ps(t[i]), n0, cols, bias, relu, y, at, kind, bf16);
                    if (cols > 16)
                        finish16(_mm512_loadu_ps(t[i] + 16), n0 + 16, cols - 16, bias, relu, y, at + 16, kind, bf16);
                }
            }
        }
    }
    free(cb);
}

/* Both entry points: the rows (already in xb, 4 bytes a step) through the GEMV or the GEMM. The
   kind is a constant in each call, so each gets its own inner loops. */
static inline __attribute__((always_inline)) void linear_float(const uint8_t *xb, int64_t lda, int M, int steps, const uint8_t *wp, const float *bias,
                         void *y, int N, int relu, int kind, int bf16) {
    if (M > VX_ROWS_MAX)
        gemm_float(xb, lda, M, steps, wp, bias, y, N, relu, kind, bf16);
    else
        rows_float(xb, lda, M, steps, wp, bias, y, N, relu, kind, bf16);
}
#endif

#ifdef VX_AVX512
/* Row m of x (float32 or bf16, rows xs elements apart) rounded to bf16 as torch's .to(bfloat16),
   into K2 (even) bf16 values, the last zero where K is odd */
static void row_as_bf16(const void *x, int64_t xs, int x_bf16, int m, int K, int K2, uint16_t *d) {
    if (x_bf16) {
        memcpy(d, (const uint16_t *)x + (int64_t)m * xs, sizeof(uint16_t) * (size_t)K);
    } else {
        const float *s = (const float *)x + (int64_t)m * xs;
        int i = 0;
        for (; i + 16 <= K; i += 16) store_bf16(d + i, 0xffff, _mm512_loadu_ps(s + i));
        for (; i < K; i++) d[i] = f32_bf16(s[i]);
    }
    for (int i = K; i < K2; i++) d[i] = 0;
}

/* The same bf16 values, each as its float32 (exact), rounded the same way (the vector rounding for
   whole 16s, f32_bf16 for the rest) */
static void row_as_bf16_floats(const void *x, int64_t xs, int x_bf16, int m, int K, int K2, float *d) {
    uint16_t t[16];
    for (int i = 0; i < K2; i += 16) {
        int n = K2 - i < 16 ? K2 - i : 16, nk = K - i < n ? K - i : n;
        if (x_bf16) {
            memcpy(t, (const uint16_t *)x + (int64_t)m * xs + i, sizeof(uint16_t) * (size_t)nk);
        } else {
            const float *s = (const float *)x + (int64_t)m * xs + i;
            if (nk == 16)
                store_bf16(t, 0xffff, _mm512_loadu_ps(s));
            else
                for (int j = 0; j < nk; j++) t[j] = f32_bf16(s[j]);
        }
        for (int j = nk; j < n; j++) t[j] = 0;
        _mm512_mask_storeu_ps(d + i, (__mmask16)((1u << n) - 1), load_bf16(t, (__mmask16)((1u << n) - 1)));
    }
}
#endif

int vx_has_linear_bf16(void) {
#ifdef VX_AVX512
    return 1;
#else
    return 0;
#endif
}

int vx_has_linear_f32(void) {
#ifdef VX_AVX512
    return 1;
#else
    return 0;
#endif
}

#if defined(VX_AVX512) && defined(__AVX512BF16__)
static int bf16_dot = DOT_BF16;
#else
static int bf16_dot = DOT_BF16_FMA;
#endif

/* The inner loop of vx_linear_bf16 from now on: 1 vdpbf16ps (where the CPU has it), 0 the float32
   FMAs (the same floats; see daz_on), -1 leaves it; returns the one in use. Set once, at load. */
int vx_bf16_dot(int use_dpbf16) {
#if defined(VX_AVX512) && defined(__AVX512BF16__)
    if (use_dpbf16 >= 0) bf16_dot = use_dpbf16 ? DOT_BF16 : DOT_BF16_FMA;
#else
    (void)use_dpbf16;
#endif
    return bf16_dot == DOT_BF16;
}

/* How many times faster, on this core, a GEMM's bf16 multiply-adds run through the float32 FMAs
   than through vdpbf16ps (0 where there is no AVX-512 BF16): the best of 5 runs of
   each instruction over 16 independent sums (~1 ms in all), the way a GEMM tile issues them, counting the FMA
   path's 2 instructions a pair. */
double vx_bf16_fma_speedup(void) {
#if defined(VX_AVX512) && defined(__AVX512BF16__)
    enum { S = 16, ITERS = 16384 };
    double best_dp = 1e9, best_fma = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        __m512 a[S];
        __m512i xi = _mm512_set1_epi32(0x3f803f80);
        for (int i = 0; i < S; i++) a[i] = _mm512_set1_ps((float)i); /* equal sums would be merged */
        double t = omp_get_wtime();
        for (int n = 0; n < ITERS; n++) {
            for (int i = 0; i < S; i++) a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)xi, (__m512bh)xi);
            __asm__ volatile("" : "+v"(xi));
        }
        double d = omp_get_wtime() - t;
        for (int i = 1; i < S; i++) a[0] = _mm512_add_ps(a[0], a[i]);
        __asm__ volatile("" ::"v"(a[0]));
        best_dp = d < best_dp ? d : best_dp;
        __m512 xf = _mm512_set1_ps(1.f);
        for (int i = 0; i < S; i++) a[i] = _mm512_set1_ps((float)i); /* equal sums would be merged */
        t = omp_get_wtime();
        for (int n = 0; n < ITERS; n++) {
            for (int i = 0; i < S; i++) a[i] = _mm512_fmadd_ps(xf, xf, a[i]);
            __asm__ volatile("" : "+v"(xf));
        }
        d = omp_get_wtime() - t;
        for (int i = 1; i < S; i++) a[0] = _mm512_add_ps(a[0], a[i]);
        __asm__ volatile("" ::"v"(a[0]));
        best_fma = d < best_fma ? d : best_fma;
    }
    return best_dp / (2.0 * best_fma);  /* the FMA path: 2 instructions per vdpbf16ps */
#else
    return 0.0;
#endif
}

/* y[m, n] = act(sum_k x[m, k] w[n, k] + bias[n]) rounded to bf16. x: float32 or bf16 (x_bf16) rows
   xs elements apart, rounded to bf16 first (to nearest even, as torch's .to(bfloat16)); wp: the
   weights packed by core/native_linear.py as [ceil(N/32)*2][K2/2][16][2] (K2 = K rounded up to 2,
   zero padding); bias: float32 (the bf16 values), padded to a multiple of 32, or NULL. y: [M, N]
   contiguous, bf16 or float32 (out_bf16). Up to VX_ROWS_MAX rows stream the weights once (the decode
   step), more go through the tiled GEMM: both sum each output's k pairs in the same order, through
   vdpbf16ps or the float32 FMAs (vx_bf16_dot), with the same floats. Without AVX-512 it does
   nothing (core/native_linear.py does not use it then). */
void vx_linear_bf16(const void *x, int64_t xs, int x_bf16, int M, int K, const uint16_t *wp, const float *bias,
                    void *y, int N, int relu, int out_bf16, int n_threads) {
#ifdef VX_AVX512
    int K2 = (K + 1) & ~1, kind = bf16_dot;
    /* the rows as bf16 (vdpbf16ps) or as the float32 values of those bf16 (the FMA loops) */
    int es = kind == DOT_BF16_FMA ? 4 : 2;
    int64_t lda = padded_row(K2, es);
    uint8_t *xb = malloc((size_t)es * ((size_t)M * lda + 32));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            uint8_t *d = xb + (int64_t)m * lda * es;
            if (kind == DOT_BF16_FMA)
                row_as_bf16_floats(x, xs, x_bf16, m, K, K2, (float *)d);
            else
                row_as_bf16(x, xs, x_bf16, m, K, K2, (uint16_t *)d);
        }
        if (kind == DOT_BF16_FMA)
            linear_float(xb, es * lda, M, K2 / 2, (const uint8_t *)wp, bias, y, N, relu, DOT_BF16_FMA, out_bf16);
        else
            linear_float(xb, es * lda, M, K2 / 2, (const uint8_t *)wp, bias, y, N, relu, DOT_BF16, out_bf16);
    }
    free(xb);
#else
    (void)x, (void)xs, (void)x_bf16, (void)M, (void)K, (void)wp, (void)bias, (void)y, (void)N, (void)relu;
    (void)out_bf16, (void)n_threads;
#endif
}

/* y[m, n] = act(sum_k x[m, k] w[n, k] + bias[n]), float32 throughout: one FMA a step, k in order.
   x: float32 rows xs elements apart; wp: packed by core/native_linear.py as [ceil(N/32)*2][K][16];
   bias: float32 padded to a multiple of 32, or NULL; y: float32 [M, N] contiguous. Without AVX-512
   it does nothing (core/native_linear.py does not use it then). */
void vx_linear_f32(const float *x, int64_t xs, int M, int K, const float *wp, const float *bias, float *y, int N,
                   int relu, int n_threads) {
#ifdef VX_AVX512
    int64_t lda = padded_row(K, 4);
    float *xb = malloc(sizeof(float) * ((size_t)M * lda + 16));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) memcpy(xb + (int64_t)m * lda, x + (int64_t)m * xs, sizeof(float) * (size_t)K);
        linear_float((const uint8_t *)xb, 4 * lda, M, K, (const uint8_t *)wp, bias, y, N, relu, DOT_F32, 0);
    }
    free(xb);
#else
    (void)x, (void)xs, (void)M, (void)K, (void)wp, (void)bias, (void)y, (void)N, (void)relu, (void)n_threads;
#endif
}
