/* The int4 Linear of the int4 mode's AR (vx_linear_i4): 4-bit weights with one bf16 scale per
64 inputs of each output (group-wise, symmetric, stored +8 as unsigned nibbles), each activation
row quantized on the fly to signed int8 with one scale. Why: the one-row decode step is bound by
the memory bandwidth (the int8 step reads its 151 MB of weights at whatever the machine's
neighbours leave, 25-45 GB/s here); 4-bit weights + scales are 80 MB, so a token costs about half.
The unpacking (and, shift) is cheap next to the memory time at one row, and at the prefill's
hundreds of rows each 16-output block is unpacked once per 6 rows from L1.

Arithmetic per output row (the same whatever rows come with it, so batches decode exactly like one
request at a time): for each group g of 64 inputs an exact int32 sum S_g = sum_k u[n,k] x[k] over
the +8 nibbles u, then f = fma(float(S_g - 8 * sum_k x[k]), scale[n,g], f) in group order; the
result is xscale * f + bias. */
#include "common.h"

#define I4_GROUP 64
#define I4_ROWS 6 /* activation rows per pass over a weight block: 2 int32 + 1 float sum each in zmm */

/* x row -> signed int8 (quantize_row8, common.h) and the sum of each group of 64 (the +8
   offset's correction) */
static void quantize_row_s8(const float *xr, int K, int kp, int8_t *q, int32_t *gsum, float *xscale) {
    *xscale = quantize_row8(xr, K, kp, (uint8_t *)q, 0);
    for (int g = 0; g < kp / I4_GROUP; g++) {
        int32_t t = 0;
        for (int j = 0; j < I4_GROUP; j++) t += q[g * I4_GROUP + j];
        gsum[g] = t;
    }
}

/* y[m, n0 .. n0 + cols) from the float sums f (one row) */
static inline void finish_i4(const float *f, int n0, int cols, float xsc, const float *bias, int relu, void *y,
                             int64_t at, int bf16) {
    for (int r = 0; r < cols; r++) {
        float v = f[r] * xsc + (bias ? bias[n0 + r] : 0.f);
        v = relu && v < 0.f ? 0.f : v;
        if (bf16)
            ((uint16_t *)y)[at + r] = f32_bf16(v);
        else
            ((float *)y)[at + r] = v;
    }
}

#if defined(VX_AVX512) && defined(__AVX512VNNI__)
#define VX_GEMV_I4 1
/* mr (<= I4_ROWS) rows against one block of 16 outputs. Block layout (core/native_linear.py,
   pack_int4): per group 8 x 64 bytes; byte 4r + t of load l holds output r's input 4l + t in its
   low nibble and input 32 + 4l + t in its high one, so vpdpbusd (unsigned weights x the broadcast
   4 signed bytes of x) adds 4 products into each of the 16 outputs' lanes. */
static inline __attribute__((always_inline)) void block16_i4(const uint8_t *wb, const uint16_t *sb, int groups,
                                                             const int8_t *xq, int64_t lda, const int32_t *gsum,
                                                             int gst, int mr, __m512 *f) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int r = 0; r < mr; r++) f[r] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint8_t *p = wb + (int64_t)g * 512;
        __m512i lo_acc[I4_ROWS], hi_acc[I4_ROWS];
        for (int r = 0; r < mr; r++) lo_acc[r] = hi_acc[r] = _mm512_setzero_si512();
        for (int l = 0; l < 8; l++) {
            _mm_prefetch((const char *)(p + 4096 + 64 * l), _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512(p + 64 * l);
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            for (int r = 0; r < mr; r++) {
                const int32_t *xr = (const int32_t *)(xq + r * lda + g * I4_GROUP);
                lo_acc[r] = _mm512_dpbusd_epi32(lo_acc[r], lo, _mm512_set1_epi32(xr[l]));
                hi_acc[r] = _mm512_dpbusd_epi32(hi_acc[r], hi, _mm512_set1_epi32(xr[l + 8]));
            }
        }
        __m512 sc = load_bf16(sb + g * 16, 0xffff);
        for (int r = 0; r < mr; r++) {
            __m512i s = _mm512_sub_epi32(_mm512_add_epi32(lo_acc[r], hi_acc[r]),
                                         _mm512_set1_epi32(8 * gsum[r * gst + g]));
            f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, f[r]);
        }
    }
}
#endif

int vx_has_linear_i4(void) {
#ifdef VX_GEMV_I4
    return 1;
#else
    return 0;
#endif
}

/* y[m, n] = act(xscale[m] * sum_g scale[n, g] * sum_{k in g} q[n, k] xq[m, k] + bias[n]).
   wp: [ceil(N/16)][kp/64][8][64] nibbles, sc: [ceil(N/16)][kp/64][16] bf16 (kp = K rounded up to
   64, padding weights 0 (stored 8), padding scales 0); bias padded to a multiple of 16. x rows are
   xs floats apart; y [M, N] float32 or bf16 (out_bf16). Any number of rows: each 16-output block
   is read from memory once and meets the rows I4_ROWS at a time. */
void vx_linear_i4(const float *x, int64_t xs, int M, int K, const uint8_t *wp, const uint16_t *sc,
                  const float *bias, void *y, int N, int relu, int out_bf16, int n_threads) {
    int kp = (K + I4_GROUP - 1) / I4_GROUP * I4_GROUP, groups = kp / I4_GROUP, nblk = (N + 15) / 16;
    int64_t lda = kp + 64;  /* one more cache line per row (the int8 GEMM's L1-set lesson) */
    int8_t *xq = malloc((size_t)M * lda + 64);
    int32_t *gsum = malloc(sizeof(int32_t) * (size_t)(M > 0 ? M : 1) * groups);
    float *xscale = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++)
            quantize_row_s8(x + m * xs, K, kp, xq + (int64_t)m * lda, gsum + (int64_t)m * groups, xscale + m);
#pragma omp for schedule(static)
        for (int nb = 0; nb < nblk; nb++) {
            const uint8_t *wb = wp + (int64_t)nb * groups * 512;
            const uint16_t *sb = sc + (int64_t)nb * groups * 16;
            int n0 = nb * 16, cols = N - n0 < 16 ? N - n0 : 16;
            for (int m0 = 0; m0 < M; m0 += I4_ROWS) {
                int mr = M - m0 < I4_ROWS ? M - m0 : I4_ROWS;
                const int8_t *xm = xq + (int64_t)m0 * lda;
                const int32_t *gm = gsum + (int64_t)m0 * groups;
                float f[I4_ROWS][16];
#ifdef VX_GEMV_I4
                __m512 acc[I4_ROWS];
                switch (mr) {  /* constant row counts: the sums stay in registers */
                case 1: block16_i4(wb, sb, groups, xm, lda, gm, groups, 1, acc); break;
                case 2: block16_i4(wb, sb, groups, xm, lda, gm, groups, 2, acc); break;
                case 3: block16_i4(wb, sb, groups, xm, lda, gm, groups, 3, acc); break;
                case 4: block16_i4(wb, sb, groups, xm, lda, gm, groups, 4, acc); break;
                case 5: block16_i4(wb, sb, groups, xm, lda, gm, groups, 5, acc); break;
                default: block16_i4(wb, sb, groups, xm, lda, gm, groups, 6, acc); break;
                }
                for (int j = 0; j < mr; j++) _mm512_storeu_ps(f[j], acc[j]);
#else
                for (int j = 0; j < mr; j++)
                    for (int r = 0; r < 16; r++) {
                        float a = 0.f;
                        for (int g = 0; g < groups; g++) {
                            const uint8_t *p = wb + (int64_t)g * 512;
                            int32_t s = 0;
                            for (int k = 0; k < I4_GROUP; k++) {
                                int l = (k & 31) >> 2, t = k & 3;
                                uint8_t b = p[64 * l + 4 * r + t];
                                s += (int32_t)(k < 32 ? b & 15 : b >> 4) * xm[(int64_t)j * lda + g * I4_GROUP + k];
                            }
                            a = fmaf((float)(s - 8 * gm[(int64_t)j * groups + g]), bf16f(sb[g * 16 + r]), a);
                        }
                        f[j][r] = a;
                    }
#endif
                for (int j = 0; j < mr; j++)
                    finish_i4(f[j], n0, cols, xscale[m0 + j], bias, relu, y, (int64_t)(m0 + j) * N + n0, out_bf16);
            }
        }
    }
    free(xq);
    free(gsum);
    free(xscale);
}
