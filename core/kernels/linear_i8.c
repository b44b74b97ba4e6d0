/* The int8 Linear of the int8 mode (vx_linear_i8): VNNI-packed per-channel int8 weights, each
activation row quantized to int8 on the fly. A GEMV that streams the weights once for up to 16 rows
(the decode step: fbgemm / oneDNN int8 GEMV read them at ~18 GB/s here, below the memory
bandwidth), and a tiled GEMM for more (the NAR, the prefill). */
#include "common.h"

#if defined(VX_AVX512) && defined(__AVX512VNNI__)
/* One activation row against one block of 16 weight rows (packed [k4/4][16][4]: each 64-byte load
   holds 4 consecutive k of all 16 rows, so vpdpbusd with the broadcast 4 bytes of x adds into 16
   per-row sums at once). Four sums over interleaved k groups hide the latency that several rows
   hide in rows_block16 (common.h); integer sums are exact, so the result is the same. */
static inline void block16_one(const int8_t *wb, int groups, const uint8_t *xq, __m512 *out) {
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
    out[0] = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
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
#define GEMM_KC 2048 /* k per pass: 12 rows x 2 KB of activations stay in L1 between the panels' reloads */

/* Many rows (the NAR, the AR prefill): the weights go 32 output channels (a panel, 32-128 KB,
   kept in L2) at a time, split between the threads; each panel meets all rows in tiles of 12,
   k in passes of GEMM_KC, into an int32 buffer, then dequant_row. On this CPU ~830 GOP/s on 2
   cores (~90% of vpdpbusd's peak), against ~580 for fbgemm's dynamic int8 Linear with its
   activation quantization. Needs the weights padded to a multiple of 32 rows. */
static void gemm_i8(const uint8_t *xq, int64_t lda, float *xscale, int M, int k4, const int8_t *wp, const float *scale,
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
            for (int m = 0; m < M; m += VX_TILE_MR) {
                int mr = M - m < VX_TILE_MR ? M - m : VX_TILE_MR;
                const uint8_t *a = xq + (int64_t)m * lda + k0;
                int32_t *c = cb ? cb + (int64_t)m * 32 : NULL, t[VX_TILE_MR][32];
                int32_t *dst = last ? &t[0][0] : c;
#define VX_TILE(r) tile_block(a, lda, (const uint8_t *)w0, (const uint8_t *)w1, groups, r, in ? c : NULL, dst, DOT_I8)
                VX_CONST_ROWS12(mr, VX_TILE)
#undef VX_TILE
                for (int i = 0; last && i < mr; i++) {
                    int64_t at = (int64_t)(m + i) * N + n0;
                    dequant16(_mm512_loadu_si512(t[i]), n0, cols, xscale[m + i], scale, rowsum, bias, relu, y, at, bf16);
                    if (cols > 16)
                        dequant16(_mm512_loadu_si512(t[i] + 16), n0 + 16, cols - 16, xscale[m + i], scale, rowsum,
                                  bias, relu, y, at + 16, bf16);
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
static void rows_i8(const uint8_t *xq, int64_t lda, const float *xscale, int M, int k4, const int8_t *wp,
                    const float *scale, const int32_t *rowsum, const float *bias, void *y, int N, int relu,
                    int bf16) {
    int groups = k4 / 4, nblk = (N + 15) / 16;
#pragma omp for schedule(static)
    for (int nb = 0; nb < nblk; nb++) {
        const int8_t *wb = wp + (int64_t)nb * 16 * k4;
        int n0 = nb * 16, rows = N - n0 < 16 ? N - n0 : 16;
        for (int m0 = 0; m0 < M; m0 += VX_ROWS_MAX) {
            int mb = M - m0 < VX_ROWS_MAX ? M - m0 : VX_ROWS_MAX;
            const uint8_t *xm = xq + (int64_t)m0 * lda;
            int32_t acc[VX_ROWS_MAX][16];
#if defined(VX_AVX512) && defined(__AVX512VNNI__)
            __m512 out[VX_ROWS_MAX];  /* int32 sums (common.h: dot_step) */
            if (mb == 1) {
                block16_one(wb, groups, xm, out);
            } else {
#define VX_ROWS(r) rows_block16((const uint8_t *)wb, groups, xm, lda, r, out, DOT_I8)
                VX_CONST_ROWS16(mb, VX_ROWS)
#undef VX_ROWS
            }
            for (int j = 0; j < mb; j++) _mm512_storeu_ps((float *)acc[j], out[j]);
#else
            for (int j = 0; j < mb; j++)
                for (int r = 0; r < 16; r++) {
                    int32_t sacc = 0;
                    for (int g = 0; g < groups; g++)
                        for (int t = 0; t < 4; t++)
                            sacc += (int32_t)xm[(int64_t)j * lda + 4 * g + t] * (int32_t)wb[((int64_t)g * 16 + r) * 4 + t];
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
   is [M, N] contiguous, float32 or bf16 (out_bf16, rounded to nearest even). Up to VX_ROWS_MAX rows
   (the decode step) stream the weights once through block16; more rows go through gemm_i8.
   Integer sums are exact, so both give the same floats. */
void vx_linear_i8(const float *x, int64_t xs, int M, int K, const int8_t *wp, const float *scale,
                  const int32_t *rowsum, const float *bias, void *y, int N, int relu, int out_bf16,
                  int n_threads) {
    int k4 = (K + 3) & ~3;
    /* one more cache line per row: with k4 a multiple of 4 KB (ff2's 4096), the 12 rows of a GEMM
       tile fell into one L1 set (8 ways) and evicted each other (~55% of peak -> ~75%) */
    int64_t lda = padded_row(k4, 1);
    uint8_t *xq = malloc((size_t)M * lda + 64);
    float *xscale = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) xscale[m] = quantize_row8(x + m * xs, K, k4, xq + (int64_t)m * lda, 128);
#ifdef VX_GEMM_I8
        if (M > VX_ROWS_MAX)
            gemm_i8(xq, lda, xscale, M, k4, wp, scale, rowsum, bias, y, N, relu, out_bf16);
        else
#endif
            rows_i8(xq, lda, xscale, M, k4, wp, scale, rowsum, bias, y, N, relu, out_bf16);
    }
    free(xq);
    free(xscale);
}

/* Per-channel symmetric int8 weights from float32 ones, straight into vx_linear_i8's layout: the
   int8 values torch.ao's quantize_dynamic gives (per_channel_dynamic_qconfig), bit for bit: scale
   max|w| / 127.5 (at least FLT_EPSILON), q = round half to even of w x (1 / scale) (times the
   float32 inverse, as fbgemm does: w / scale differs in ~1e-4 of the values) clamped to
   -128..127, rowsum = sum of q. One pass a row, where fbgemm's quantize, prepack and unpack took
   ~65 ms a 4096 x 1024 matrix (6 s of the int8 mode's load) and the same in PyTorch ops ~90 ms.
   w: [N, K], rows ws floats apart; wp: zeroed [ceil(N/32)*2][k4/4][16][4]; scale, rowsum: N
   values. */
void vx_pack_i8(const float *w, int64_t ws, int N, int K, int8_t *wp, float *scale, int32_t *rowsum,
                int n_threads) {
    int k4 = (K + 3) & ~3;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = w + (int64_t)n * ws;
        float amax = 0.f;
        for (int k = 0; k < K; k++) {
            float a = fabsf(row[k]);
            amax = a > amax ? a : amax;
        }
        float sc = amax / 127.5f > 1.1920929e-07f ? amax / 127.5f : 1.1920929e-07f, inv = 1.f / sc;
        int8_t *blk = wp + (int64_t)(n / 16) * 16 * k4 + (n % 16) * 4;
        int32_t sum = 0;
        for (int k = 0; k < K; k++) {
            float q = nearbyintf(row[k] * inv);
            int v = q < -128.f ? -128 : q > 127.f ? 127 : (int)q;
            blk[(int64_t)(k / 4) * 64 + k % 4] = (int8_t)v;
            sum += v;
        }
        scale[n] = sc;
        rowsum[n] = sum;
    }
}
