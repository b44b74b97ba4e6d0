/* The bf16 Linear (vx_linear_bf16) of the bf16 mode's stacks and of the output heads: bf16 weights
packed so that one 64-byte load holds 2 consecutive k of 16 output rows, and AVX-512 BF16's
vdpbf16ps adds x[k] w[n, k] + x[k+1] w[n, k+1] into 16 per-row float sums at once, x's pair
broadcast: no horizontal sums. The loops are the int8 Linear's (common.h), with vdpbf16ps.

Why not oneDNN: its bf16 GEMV read the weights of one decode row at ~18.5 GB/s here (16.3 ms a step
for 302 MB, against ~25-29 GB/s of read bandwidth), and with it the step stays a chain of 60 op
calls from Python. Why not torch's layout ([N, K]): every dot product then ends in a 16-lane
horizontal sum, and the prefill's GEMM would need a second copy of the weights in a blocked
layout; one packed copy serves both here.

Every output (m, n) is one float lane summed over k pairs in order, whether it came through the
few-row GEMV or the tiled GEMM, with one or twenty rows beside it: a batch gives exactly the floats
of one row at a time (what makes the bf16 AR's batches token-equal to one-by-one decoding). */
#include "common.h"

#if defined(VX_AVX512) && defined(__AVX512BF16__)
#define VX_BF16_DOT 1
#define BF_KC 1024 /* k per GEMM pass (512 pairs): 12 rows x 2 KB of activations stay in L1 */

/* acc + bias, ReLU, rounded to bf16 (what torch's bf16 Linear returns), stored as bf16 or as the
   float32 of that bf16 */
static inline void finish16(__m512 v, int n, int cols, const float *bias, int relu, void *y, int64_t at,
                            int bf16) {
    __mmask16 k = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + n));
    if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (bf16) {
        store_bf16((uint16_t *)y + at, k, v);
    } else {
        uint16_t t[16];
        store_bf16(t, 0xffff, v);
        _mm512_mask_storeu_ps((float *)y + at, k, load_bf16(t, 0xffff));
    }
}

/* Up to a few rows (the decode step): each 16-row weight block is read once for all of them
   (rows_block16, common.h). An orphaned work-share, as the GEMM below. */
static void rows_bf16(const uint16_t *xb, int64_t lda, int M, int pairs, const uint16_t *wp, const float *bias,
                      void *y, int N, int relu, int bf16) {
    int nblk = (N + 15) / 16;
#pragma omp for schedule(static)
    for (int nb = 0; nb < nblk; nb++) {
        const uint8_t *wb = (const uint8_t *)(wp + (int64_t)nb * 32 * pairs);
        int n0 = nb * 16, cols = N - n0 < 16 ? N - n0 : 16;
        for (int m0 = 0; m0 < M; m0 += VX_ROWS_MAX) {
            const uint8_t *xm = (const uint8_t *)(xb + (int64_t)m0 * lda);
            __m512 out[VX_ROWS_MAX];
            int mb = M - m0 < VX_ROWS_MAX ? M - m0 : VX_ROWS_MAX;
#define VX_ROWS(r) rows_block16(wb, pairs, xm, 2 * lda, r, out, DOT_BF16)
            VX_CONST_ROWS16(mb, VX_ROWS)
#undef VX_ROWS
            for (int j = 0; j < mb; j++) finish16(out[j], n0, cols, bias, relu, y, (int64_t)(m0 + j) * N + n0, bf16);
        }
    }
}

/* Many rows (the prefill, the NAR): 32 output channels (a panel, 64-256 KB, kept in L2) at a time,
   split between the threads, each meeting all rows in tiles of 12 (tile_block, common.h), k in
   passes of BF_KC through a float32 buffer. */
static void gemm_bf16(const uint16_t *xb, int64_t lda, int M, int pairs, const uint16_t *wp, const float *bias,
                      void *y, int N, int relu, int bf16) {
    int npan = (N + 31) / 32, kcp = BF_KC / 2;
    float *cb = pairs > kcp ? malloc(sizeof(float) * (size_t)M * 32) : NULL;
#pragma omp for schedule(static)
    for (int p = 0; p < npan; p++) {
        const uint16_t *b0 = wp + (int64_t)(2 * p) * 32 * pairs, *b1 = b0 + (int64_t)32 * pairs;
        int n0 = 32 * p, cols = N - n0 < 32 ? N - n0 : 32;
        for (int g0 = 0; g0 < pairs; g0 += kcp) {
            int gc = pairs - g0 < kcp ? pairs - g0 : kcp, in = g0 > 0, last = g0 + gc == pairs;
            const uint8_t *w0 = (const uint8_t *)(b0 + (int64_t)g0 * 32), *w1 = (const uint8_t *)(b1 + (int64_t)g0 * 32);
            for (int m = 0; m < M; m += VX_TILE_MR) {
                int mr = M - m < VX_TILE_MR ? M - m : VX_TILE_MR;
                const uint8_t *a = (const uint8_t *)(xb + (int64_t)m * lda + 2 * g0);
                float *c = cb ? cb + (int64_t)m * 32 : NULL, t[VX_TILE_MR][32];
                float *dst = last ? &t[0][0] : c;
#define VX_TILE(r) tile_block(a, 2 * lda, w0, w1, gc, r, in ? c : NULL, dst, DOT_BF16)
                VX_CONST_ROWS12(mr, VX_TILE)
#undef VX_TILE
                for (int i = 0; last && i < mr; i++) {
                    int64_t at = (int64_t)(m + i) * N + n0;
                    finish16(_mm512_loadu_ps(t[i]), n0, cols, bias, relu, y, at, bf16);
                    if (cols > 16) finish16(_mm512_loadu_ps(t[i] + 16), n0 + 16, cols - 16, bias, relu, y, at + 16, bf16);
                }
            }
        }
    }
    free(cb);
}
#endif

int vx_has_linear_bf16(void) {
#ifdef VX_BF16_DOT
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
#ifdef VX_BF16_DOT
    int K2 = (K + 1) & ~1, pairs = K2 / 2;
    /* rows padded to whole cache lines and one more (the int8 GEMM's lesson: rows 4 KB apart
       share one L1 set) */
    int64_t lda = ((K2 + 31) & ~31) + 32;
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
        if (M > VX_ROWS_MAX)
            gemm_bf16(xb, lda, M, pairs, wp, bias, y, N, relu, out_bf16);
        else
            rows_bf16(xb, lda, M, pairs, wp, bias, y, N, relu, out_bf16);
    }
    free(xb);
#else
    (void)x, (void)xs, (void)x_bf16, (void)M, (void)K, (void)wp, (void)bias, (void)y, (void)N, (void)relu;
    (void)out_bf16, (void)n_threads;
#endif
}
