/* The AR's whole decode step in one call, for the int8 and int4 modes (int8 / int4 Linear layers,
int8 KV cache), the bf16 mode (bf16 Linear layers, bf16 KV cache) and the fp32 mode (float32 Linear
layers and cache): the per-op path spends ~3 ms a step in Python and op dispatch, as long as the
attention itself (in fp32, ~10% of a step whose weights take ~21 ms to stream). */
#include "common.h"

#define LIN_I8 0   /* vx_linear_i8: packed int8 weights, per-channel scales, row sums */
#define LIN_BF16 1 /* vx_linear_bf16: packed bf16 weights; outputs rounded to bf16 */
#define LIN_I4 2   /* vx_linear_i4: packed int4 weights, bf16 group scales (in `scale`) */
#define LIN_F32 3  /* vx_linear_f32: packed float32 weights */

typedef struct {
    const void *w;
    const float *scale;    /* int8: per-channel scales; int4: bf16 group scales */
    const int32_t *rowsum; /* int8 only */
    const float *bias;
    int n, k, kind;
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
    if (l->kind == LIN_BF16)
        vx_linear_bf16(x, l->k, 0, M, l->k, l->w, l->bias, y, l->n, relu, 0, nt);
    else if (l->kind == LIN_F32)
        vx_linear_f32(x, l->k, M, l->k, l->w, l->bias, y, l->n, relu, nt);
    else if (l->kind == LIN_I4)
        vx_linear_i4(x, l->k, M, l->k, l->w, (const uint16_t *)l->scale, l->bias, y, l->n, relu, 0, nt);
    else
        vx_linear_i8(x, l->k, M, l->k, l->w, l->scale, l->rowsum, l->bias, y, l->n, relu, 0, nt);
}

/* x: the residual stream [B, D] of the new position, updated in place through all layers (the
   final norm is left to the caller). cache: [L, 2, cache_rows, H, smax, row] of int8 rows (kv
   KV_I8, row D/H + 4 bytes), bf16 (KV_BF16, row D/H) or float32 (KV_F32, row D/H); row b's new
   k, v go to cache row rows[b] (rows NULL: b), at slots[b] (slots NULL: `slot`), and its query
   attends to keys [starts[b], its slot]. Several rows may share a cache row at consecutive slots
   (a drafted run of one sequence, verified at once): every row's k, v are written before any
   query attends, and each row's floats are those it gives alone. Same arithmetic as
   the per-op path (pre-LN, eps 1e-5, the mode's Linear layers and cache, float32 softmax). */
void vx_decode(const vx_qlayer *layers, int n_layers, float *x, int B, int D, int H, int d_ff, void *cache,
               int kv, int64_t cache_rows, int64_t smax, int slot, const int32_t *slots, const int32_t *starts,
               const int32_t *rows, int n_threads) {
    int hd = D / H, es = kv == KV_I8 ? 1 : kv == KV_BF16 ? 2 : 4;  /* bytes per cache element */
    float *h = malloc(sizeof(float) * (size_t)B * D);
    float *qkv = malloc(sizeof(float) * (size_t)B * 3 * D);
    float *att = malloc(sizeof(float) * (size_t)B * D);
    float *tmp = malloc(sizeof(float) * (size_t)B * (d_ff > D ? d_ff : D));
    float *o = malloc(sizeof(float) * (size_t)B * D);
    int64_t row = kv == KV_I8 ? hd + 4 : hd, sh = smax * row, sb = (int64_t)H * sh, skv = cache_rows * sb;
    int32_t *ends = NULL;  /* per-row key ends, where rows have slots of their own */
    int top = slot;
    if (slots) {
        ends = malloc(sizeof(int32_t) * (size_t)B);
        for (int b = 0; b < B; b++) {
            ends[b] = slots[b] + 1;
            top = slots[b] > top ? slots[b] : top;
        }
    }
    for (int i = 0; i < n_layers; i++) {
        const vx_qlayer *L = layers + i;
        char *kc = (char *)cache + (int64_t)(2 * i) * skv * es, *vc = kc + skv * es;
        for (int b = 0; b < B; b++) layer_norm(x + (int64_t)b * D, L->ln1_w, L->ln1_b, h + (int64_t)b * D, D);
        qlin(&L->qkv, h, B, qkv, 0, n_threads);
        for (int b = 0; b < B; b++)
            for (int hh = 0; hh < H; hh++) {
                const float *kr = qkv + (int64_t)b * 3 * D + D + hh * hd, *vr = kr + D;
                int64_t at = ((rows ? rows[b] : b) * sb + hh * sh + (int64_t)(slots ? slots[b] : slot) * row) * es;
                if (kv == KV_I8) {
                    vx_kv_put_i8(kr, hd, (int8_t *)(kc + at));
                    vx_kv_put_i8(vr, hd, (int8_t *)(vc + at));
                } else if (kv == KV_F32) {
                    memcpy(kc + at, kr, sizeof(float) * (size_t)hd);
                    memcpy(vc + at, vr, sizeof(float) * (size_t)hd);
                } else {  /* bf16 values already (the Linear rounds): exact */
                    for (int d = 0; d < hd; d++) {
                        ((uint16_t *)(kc + at))[d] = f32_bf16(kr[d]);
                        ((uint16_t *)(vc + at))[d] = f32_bf16(vr[d]);
                    }
                }
            }
        vx_attn_decode(qkv, 3 * D, kc, vc, sb, sh, att, B, H, hd, top + 1, starts, rows, ends,
                       1.f / sqrtf((float)hd), kv, n_threads);
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
    free(ends);
}

/* What the AR's decode loop does around the step, for vx_decode_logits: the input of a new
   position is its code's audio embedding row plus the scaled positional row (the caller computes
   alpha * table once, so the sum is the same float as its own ops give), the output is the final
   LayerNorm and the bf16 head. */
typedef struct {
    const void *emb;           /* [V_in, D] audio embedding rows: bf16 (emb_bf16) or float32 */
    int emb_bf16;
    const float *ape;          /* [n_pos, D] alpha * sinusoid table */
    const float *norm_w, *norm_b;
    vx_qlinear head;           /* LIN_BF16 or LIN_F32, head.n logits */
} vx_token_io;

/* One decode step from codes to logits: x[b] = emb[tok[b]] + ape[pos[b]], vx_decode, the final
   norm, the head (float32 logits, of the bf16 values for a bf16 head, [B, head.n]). Why in C:
   after a step has streamed the weights through the caches, the ~12 small PyTorch ops around it
   ran cold and took ~0.5 ms, 10% of an int8 step. The caller checks indices and sizes. */
void vx_decode_logits(const vx_qlayer *layers, int n_layers, const vx_token_io *io, const int64_t *tok,
                      const int64_t *pos, float *logits, int B, int D, int H, int d_ff, void *cache, int kv,
                      int64_t cache_rows, int64_t smax, int slot, const int32_t *slots, const int32_t *starts,
                      const int32_t *rows, int n_threads) {
    float *x = malloc(sizeof(float) * (size_t)B * D);
    for (int b = 0; b < B; b++) {
        const float *p = io->ape + pos[b] * D;
        float *xr = x + (int64_t)b * D;
        if (io->emb_bf16) {
            const uint16_t *e = (const uint16_t *)io->emb + tok[b] * D;
            for (int i = 0; i < D; i++) xr[i] = bf16f(e[i]) + p[i];
        } else {
            const float *e = (const float *)io->emb + tok[b] * D;
            for (int i = 0; i < D; i++) xr[i] = e[i] + p[i];
        }
    }
    vx_decode(layers, n_layers, x, B, D, H, d_ff, cache, kv, cache_rows, smax, slot, slots, starts, rows,
              n_threads);
    float *h = malloc(sizeof(float) * (size_t)B * D);
    for (int b = 0; b < B; b++) layer_norm(x + (int64_t)b * D, io->norm_w, io->norm_b, h + (int64_t)b * D, D);
    qlin(&io->head, h, B, logits, 0, n_threads);
    free(h);
    free(x);
}
