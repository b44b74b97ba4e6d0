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

#ifdef VX_AVX512
#define KC_STEPS 512 /* k steps per GEMM pass (1024 bf16 k, 512 float k): 12 rows x 2 KB stay in L1 */

/* acc + bias, ReLU, then: bf16 kinds round to bf16 (what torch's bf16 Linear returns), stored as
   bf16 (bf16 = 1) or as the float32 of that bf16; the float32 kind stores the sum as it is */
static inline void finish16(__m512 v, int n, int cols, const float *bias, int relu, void *y, int64_t at,
                            int kind, int bf16) {
    __mmask16 k = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + n));
    if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (bf16) {
        store_bf16((uint16_t *)y + at, k, v);
    } else if (kind == DOT_BF16) {
        uint16_t t[16];
        store_bf16(t, 0xffff, v);
        _mm512_mask_storeu_ps((float *)y + at, k, load_bf16(t, 0xffff));
    } else {
        _mm512_mask_storeu_ps((float *)y + at, k, v);
    }
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
#define VX_ROWS(r) rows_block16(wb, steps, xm, lda, r, out, kind)
            VX_CONST_ROWS16(mb, VX_ROWS)
#undef VX_ROWS
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
                const uint8_t *a = xb + (int64_t)m * lda + 4 * g0;
                float *c = cb ? cb + (int64_t)m * 32 : NULL, t[VX_TILE_MR][32];
                float *dst = last ? &t[0][0] : c;
#define VX_TILE(r) tile_block(a, lda, w0, w1, gc, r, in ? c : NULL, dst, kind)
                VX_CONST_ROWS12(mr, VX_TILE)
#undef VX_TILE
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
static void linear_float(const uint8_t *xb, int64_t lda, int M, int steps, const uint8_t *wp, const float *bias,
                         void *y, int N, int relu, int kind, int bf16) {
    if (M > VX_ROWS_MAX)
        gemm_float(xb, lda, M, steps, wp, bias, y, N, relu, kind, bf16);
    else
        rows_float(xb, lda, M, steps, wp, bias, y, N, relu, kind, bf16);
}
#endif

/* rows padded to whole cache lines and one more (the int8 GEMM's lesson: rows 4 KB apart share
   one L1 set): the stride in elements of `elem` bytes for n of them */
static inline int64_t padded_row(int n, int elem) {
    int line = 64 / elem;
    return ((n + line - 1) / line) * line + line;
}

int vx_has_linear_bf16(void) {
#if defined(VX_AVX512) && defined(__AVX512BF16__)
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

/* y[m, n] = act(sum_k x[m, k] w[n, k] + bias[n]) rounded to bf16. x: float32 or bf16 (x_bf16) rows
   xs elements apart, rounded to bf16 first (to nearest even, as torch's .to(bfloat16)); wp: the
   weights packed by core/native_linear.py as [ceil(N/32)*2][K2/2][16][2] (K2 = K rounded up to 2,
   zero padding); bias: float32 (the bf16 values), padded to a multiple of 32, or NULL. y: [M, N]
   contiguous, bf16 or float32 (out_bf16). Up to VX_ROWS_MAX rows stream the weights once (the decode
   step), more go through the tiled GEMM: both sum each output's k pairs in the same order. Without
   AVX-512 BF16 it does nothing (core/native_linear.py does not use it then). */
void vx_linear_bf16(const void *x, int64_t xs, int x_bf16, int M, int K, const uint16_t *wp, const float *bias,
                    void *y, int N, int relu, int out_bf16, int n_threads) {
#if defined(VX_AVX512) && defined(__AVX512BF16__)
    int K2 = (K + 1) & ~1;
    int64_t lda = padded_row(K2, 2);
    uint16_t *xb = malloc(sizeof(uint16_t) * ((size_t)M * lda + 32));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            uint16_t *d = xb + (int64_t)m * lda;
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
        linear_float((const uint8_t *)xb, 2 * lda, M, K2 / 2, (const uint8_t *)wp, bias, y, N, relu, DOT_BF16,
                     out_bf16);
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
