/* The int8 AR's whole decode step in one call: the per-op path spends ~3 ms a step in Python and
op dispatch, as long as the attention itself. */
#include "common.h"

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
                vx_kv_put_i8(kr, hd, kc + at);
                vx_kv_put_i8(vr, hd, vc + at);
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
