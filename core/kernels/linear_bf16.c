/* The bf16 Linear of the bf16 mode's AR (vx_linear_bf16): bf16 weights packed so that one 64-byte
load holds 2 consecutive k of 16 output rows, and AVX-512 BF16's vdpbf16ps adds x[k] w[n, k] +
x[k+1] w[n, k+1] into 16 per-row float sums at once, x's pair broadcast: no horizontal sums.

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
#define BF_MB 16  /* rows per pass over a weight block in the GEMV: 16 sums + 1 weight register */
#define BF_MR 12  /* rows per GEMM tile: 24 sums + 2 weight registers + 1 broadcast */
#define BF_KC 1024 /* k per GEMM pass (512 pairs): 12 rows x 2 KB of activations stay in L1 */

static inline __m512 dot2(__m512 acc, __m512i x, __m512i w) {
    return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
}

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

/* MB rows against one block of 16 weight rows ([pairs][16][2]), every line prefetched 4 KB
   ahead into L1 and 32 KB ahead into L2 (the int8 GEMV's lesson: with several rows the stream
   otherwise stalls) */
static inline __attribute__((always_inline)) void block16_bf16(const uint16_t *wb, int pairs, const uint16_t *xb,
                                                               int64_t lda, int MB, __m512 *out) {
    __m512 a[BF_MB];
    const int32_t *xr[BF_MB];
    for (int j = 0; j < MB; j++) {
        a[j] = _mm512_setzero_ps();
        xr[j] = (const int32_t *)(xb + (int64_t)j * lda);
    }
    for (int g = 0; g < pairs; g++) {
        _mm_prefetch((const char *)(wb + (int64_t)(g + 64) * 32), _MM_HINT_T0);
        _mm_prefetch((const char *)(wb + (int64_t)(g + 512) * 32), _MM_HINT_T1);
        __m512i w = _mm512_loadu_si512(wb + (int64_t)g * 32);
        for (int j = 0; j < MB; j++) a[j] = dot2(a[j], _mm512_set1_epi32(xr[j][g]), w);
    }
    for (int j = 0; j < MB; j++) out[j] = a[j];
}

static void rows_bf16(const uint16_t *xb, int64_t lda, int M, int pairs, const uint16_t *wp, const float *bias,
                      void *y, int N, int relu, int bf16) {
    int nblk = (N + 15) / 16;
#pragma omp for schedule(static)
    for (int nb = 0; nb < nblk; nb++) {
        const uint16_t *wb = wp + (int64_t)nb * 32 * pairs;
        int n0 = nb * 16, cols = N - n0 < 16 ? N - n0 : 16;
        for (int m0 = 0; m0 < M; m0 += BF_MB) {
            const uint16_t *xm = xb + (int64_t)m0 * lda;
            __m512 out[BF_MB];
            int mb = M - m0 < BF_MB ? M - m0 : BF_MB;
            switch (mb) {  /* constant MB: the sums stay in registers */
#define VX_ROWS(r) case r: block16_bf16(wb, pairs, xm, lda, r, out); break;
                VX_ROWS(1) VX_ROWS(2) VX_ROWS(3) VX_ROWS(4) VX_ROWS(5) VX_ROWS(6) VX_ROWS(7) VX_ROWS(8)
                VX_ROWS(9) VX_ROWS(10) VX_ROWS(11) VX_ROWS(12) VX_ROWS(13) VX_ROWS(14) VX_ROWS(15)
                default: block16_bf16(wb, pairs, xm, lda, 16, out); break;
#undef VX_ROWS
            }
            for (int j = 0; j < mb; j++) finish16(out[j], n0, cols, bias, relu, y, (int64_t)(m0 + j) * N + n0, bf16);
        }
    }
}

/* mr (<= BF_MR) rows x 32 output channels (weight blocks b0, b1) over `pairs` k pairs, continuing
   the sums in c (acc_in) and leaving them there, or finishing them into y (last pass) */
static inline __attribute__((always_inline)) void tile_bf16(const uint16_t *a, int64_t lda, const uint16_t *b0,
                                                            const uint16_t *b1, int pairs, int mr, float *c,
                                                            int acc_in, int last, int n0, int cols,
                                                            const float *bias, int relu, void *y, int64_t at,
                                                            int N, int bf16) {
    __m512 c0[BF_MR], c1[BF_MR];
    for (int i = 0; i < mr; i++) {
        c0[i] = acc_in ? _mm512_loadu_ps(c + i * 32) : _mm512_setzero_ps();
        c1[i] = acc_in ? _mm512_loadu_ps(c + i * 32 + 16) : _mm512_setzero_ps();
    }
    for (int g = 0; g < pairs; g++) {
        __m512i w0 = _mm512_loadu_si512(b0 + (int64_t)g * 32), w1 = _mm512_loadu_si512(b1 + (int64_t)g * 32);
        for (int i = 0; i < mr; i++) {
            __m512i x = _mm512_set1_epi32(*(const int32_t *)(a + i * lda + 2 * g));
            c0[i] = dot2(c0[i], x, w0);
            c1[i] = dot2(c1[i], x, w1);
        }
    }
    float t[BF_MR][32];  /* through L1, as in tile_i8: indexing the sums below would spill them above */
    float *dst = last ? &t[0][0] : c;
    for (int i = 0; i < mr; i++) {
        _mm512_storeu_ps(dst + i * 32, c0[i]);
        _mm512_storeu_ps(dst + i * 32 + 16, c1[i]);
    }
    if (last)
        for (int i = 0; i < mr; i++) {
            int64_t r = at + (int64_t)i * N;
            finish16(_mm512_loadu_ps(t[i]), n0, cols, bias, relu, y, r, bf16);
            if (cols > 16) finish16(_mm512_loadu_ps(t[i] + 16), n0 + 16, cols - 16, bias, relu, y, r + 16, bf16);
        }
}

/* Many rows (the prefill): 32 output channels (a panel, 64-256 KB, kept in L2) at a time, split
   between the threads, each meeting all rows in tiles of 12, k in passes of BF_KC. */
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
            const uint16_t *w0 = b0 + (int64_t)g0 * 32, *w1 = b1 + (int64_t)g0 * 32;
            for (int m = 0; m < M; m += BF_MR) {
                const uint16_t *a = xb + (int64_t)m * lda + 2 * g0;
                float *c = cb ? cb + (int64_t)m * 32 : NULL;
                int64_t at = (int64_t)m * N + n0;
                switch (M - m < BF_MR ? M - m : BF_MR) {
#define VX_TILE(r) case r: tile_bf16(a, lda, w0, w1, gc, r, c, in, last, n0, cols, bias, relu, y, at, N, bf16); break;
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
   contiguous, bf16 or float32 (out_bf16). Up to BF_MB rows stream the weights once (the decode
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
        if (M > BF_MB)
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
