/* Softmax over rows of bf16 attention scores, in place (core/native.py's softmax_: the matmul
attention path, where the fused one of attn_full.c does not run).

Why hand-written: the NAR's 7 passes x 12 layers each take a softmax over 16 x 633 x 633 bf16
scores, and PyTorch's (Sleef exp, a float32 copy, a fresh output) spent ~20% of the int8 NAR in it.
This one reads each row once into an L1-resident float32 buffer, sums in float32 and writes the
probabilities back over the scores, rounded to bf16 (nearest even, as torch's .to(bfloat16)).
exp is a degree-6 polynomial after range reduction (relative error ~2e-7, far below bf16's 4e-3).
Masked scores (-inf) give exactly 0; a row with every score masked gives zeros, not NaN. */
#include "common.h"

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
