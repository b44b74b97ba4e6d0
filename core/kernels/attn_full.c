/* The full passes' attention (NAR, prefill): a fused unmasked attention over bf16 q, k, v (the
in-place bf16 softmax of the matmul path is softmax.c). */
#include "common.h"

/* ---- full (unmasked) attention over bf16 q, k, v: the NAR's -----------------------------------

Why hand-written: with PyTorch ops the NAR's attention is a batched bf16 matmul to a [H, S, S]
score tensor, a softmax over it, a second matmul and two layout copies, each a pass over memory.
Here each (row, head) pair keeps its keys and values packed for vdpbf16ps in L2 (or its float32-FMA
form, dp_block_fma, where the CPU runs that faster: core/native.py picks), and a block of
QB queries goes scores -> softmax -> weighted values through an L1-sized buffer. Same arithmetic as
that path: bf16 products summed in float32, probabilities rounded to bf16 (here before the 1/sum,
which is applied in float32 at the end). The row maxima are taken as the scores are made and the
probabilities are written as bf16 in one pass: the softmax was ~20% of the kernel with three. */
#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define VX_ATTN_FULL 1
#define QB 6 /* queries per block: QB x 4 float32 accumulators + 4 operand registers */
#if defined(__AVX512VNNI__)
#define VX_ATTN_I16 1
#endif

/* acc[r][c] = sum_i a[r][i] . b(i, c) over n steps: QB rows of bf16 pairs (row r at a + r*as, one
   dword per step) against nc <= 4 packed bf16 vectors per step, vector (i, c) at b + (i*bi + c*bc)*16.
   Both halves of the attention are this: scores (a = queries, b = key blocks) and weighted values
   (a = probabilities of key pairs, b = value pairs). */
static inline __attribute__((always_inline)) void dp_block(const uint32_t *a, int64_t as, int n, const uint32_t *b,
                                                           int64_t bi, int64_t bc, int nc, __m512 acc[QB][4],
                                                           int kind) {
    for (int r = 0; r < QB; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    for (int i = 0; i < n; i++) {
        __m512i w[4];
        for (int c = 0; c < nc; c++) w[c] = _mm512_loadu_si512(b + ((int64_t)i * bi + c * bc) * 16);
        for (int r = 0; r < QB; r++) {
            __m512i x = _mm512_set1_epi32((int)a[r * as + i]);
            for (int c = 0; c < nc; c++) acc[r][c] = dot_step(acc[r][c], x, w[c], kind);
        }
    }
}

/* The same sums through float32 FMAs (linear_float.c's DOT_BF16_FMA: odd element then even, each
   a fused multiply-add under DAZ / FTZ, the floats vdpbf16ps gives), for CPUs where vdpbf16ps is
   the slower: af holds the a rows as the float32 values of their bf16 (row r at af + r * 2 * as,
   2 floats a step); the weight vectors are widened one at a time (26 live registers). */
static inline __attribute__((always_inline)) void dp_block_fma(const float *af, int64_t as, int n, const uint32_t *b,
                                                               int64_t bi, int64_t bc, int nc, __m512 acc[QB][4]) {
    for (int r = 0; r < QB; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ, as vdpbf16ps */
    for (int i = 0; i < n; i++)
        for (int c = 0; c < nc; c++) {
            __m512i w = _mm512_loadu_si512(b + ((int64_t)i * bi + c * bc) * 16);
            __m512 wo = bf16_hi(w), we = bf16_lo(w);
            for (int r = 0; r < QB; r++) {
                const float *x = af + r * 2 * as + 2 * i;
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(x[0]), we, _mm512_fmadd_ps(_mm512_set1_ps(x[1]), wo, acc[r][c]));
            }
        }
    _mm_setcsr(csr);
}

/* n bf16 (as dwords of pairs: 2n values) -> their float32 values */
static inline void widen_bf16(const uint32_t *src, int n, float *dst) {
    for (int i = 0; i < 2 * n; i += 16) {
        __mmask16 m = first_n(2 * n - i);
        _mm512_mask_storeu_ps(dst + i, m, load_bf16((const uint16_t *)src + i, m));
    }
}

#include "attn_quant.h"

/* scaled scores of QB queries (hp dwords each: bf16 or int16 pairs, or int8 quads with ksum)
   against nkb <= 4 packed key blocks ([hp][16] each) starting at key k0, with each row's running
   maximum over its keys below lim[r] (the rest is padding or masked) */
static inline __attribute__((always_inline)) void qk_blocks(const uint32_t *q, const float *qf, int hp,
                                                            const uint32_t *kp, int nkb, int k0, const int *lim,
                                                            float *s, int64_t ss, float scale, __m512 vmax[QB],
                                                            const float *sq, const float *ks, const int32_t *ksum) {
    __m512 acc[QB][4];
    if (qf)
        dp_block_fma(qf, hp, hp, kp, 1, hp, nkb, acc);
    else
        dp_block(q, hp, hp, kp, 1, hp, nkb, acc, ksum ? DOT_I8 : ks ? DOT_I16 : DOT_BF16);
    for (int r = 0; r < QB; r++)
        for (int c = 0; c < nkb; c++) {
            __m512 x;
            if (ks) {  /* integer modes: int32 sums times the query's and each key's scale */
                __m512i a = _mm512_castps_si512(acc[r][c]);
                if (ksum)  /* the queries were stored + 128 */
                    a = _mm512_sub_epi32(a, _mm512_slli_epi32(_mm512_loadu_si512(ksum + k0 + c * 16), 7));
                x = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(scale * sq[r])),
                                  _mm512_loadu_ps(ks + k0 + c * 16));
            } else {
                x = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(scale));
            }
            _mm512_storeu_ps(s + r * ss + c * 16, x);
            vmax[r] = _mm512_mask_max_ps(vmax[r], first_n(lim[r] - k0 - c * 16), vmax[r], x);
        }
}

/* The integer weighted values of one chunk for hd = 64 (4 value vectors, the model's heads): QB = 6
   rows over n <= I16_CHUNK key pairs (int16) or I8_CHUNK quads (int8), into the float32 sums f,
   times row r's chunk scale cm[r * ncs]. gcc 12 stored all 24 int32 sums to the stack at every
   step (~2.4x slower: the weighted values took 3.1 of the 6.2 ms of a NAR attention call) whenever
   this loop was inlined into vx_attn_full, kept its sums in an array, or went through gcc's
   inter-procedural passes or its partial-redundancy elimination: hence named sums in a function of its own, noipa and
   no-tree-pre (checked on the assembly: 2 stack accesses in the function, none in the loop).
   Same integer sums and float operations as the generic loop below: bit-identical outputs. */
#define PV4_SUMS(r) __m512 s##r##0 = z, s##r##1 = z, s##r##2 = z, s##r##3 = z;
#define PV4_DP(a, x, w, DP) a = _mm512_castsi512_ps(DP(_mm512_castps_si512(a), x, w))
#define PV4_STEP(r, DP)                                                                                \
    {                                                                                                  \
        __m512i x = _mm512_set1_epi32((int)p[r * ps + i]);                                             \
        PV4_DP(s##r##0, x, w0, DP), PV4_DP(s##r##1, x, w1, DP);                                        \
        PV4_DP(s##r##2, x, w2, DP), PV4_DP(s##r##3, x, w3, DP);                                        \
    }
#define PV4_ADD1(r, c) \
    _mm512_store_ps(f[r][c], _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(s##r##c)), m, _mm512_load_ps(f[r][c])));
#define PV4_ADD(r)                                                                                     \
    {                                                                                                  \
        __m512 m = _mm512_set1_ps(cm[r * ncs]);                                                        \
        PV4_ADD1(r, 0) PV4_ADD1(r, 1) PV4_ADD1(r, 2) PV4_ADD1(r, 3)                                    \
    }
#if defined(__GNUC__) && !defined(__clang__)
#define PV4_ATTRS __attribute__((noipa, optimize("no-tree-pre")))
#else
#define PV4_ATTRS __attribute__((noinline))
#endif
#define PV4_CHUNK(NAME, DP)                                                                                   \
static PV4_ATTRS void NAME(const uint32_t *p, int64_t ps, int n, const uint32_t *vp, float f[QB][4][16],      \
                           const float *cm, int ncs) {                                                        \
    const __m512 z = _mm512_setzero_ps();  /* int32 sums in __m512 registers: common.h says why */            \
    PV4_SUMS(0) PV4_SUMS(1) PV4_SUMS(2) PV4_SUMS(3) PV4_SUMS(4) PV4_SUMS(5)                                   \
    for (int i = 0; i < n; i++) {                                                                             \
        const uint32_t *b = vp + (int64_t)i * 64;                                                             \
        __m512i w0 = _mm512_loadu_si512(b), w1 = _mm512_loadu_si512(b + 16), w2 = _mm512_loadu_si512(b + 32), \
                w3 = _mm512_loadu_si512(b + 48);                                                              \
        PV4_STEP(0, DP) PV4_STEP(1, DP) PV4_STEP(2, DP) PV4_STEP(3, DP) PV4_STEP(4, DP) PV4_STEP(5, DP)       \
    }                                                                                                         \
    PV4_ADD(0) PV4_ADD(1) PV4_ADD(2) PV4_ADD(3) PV4_ADD(4) PV4_ADD(5)                                         \
}
PV4_CHUNK(pv4_chunk_i16, _mm512_dpwssd_epi32)  /* int16 pairs: 2 keys a step */
PV4_CHUNK(pv4_chunk_i8, _mm512_dpbusd_epi32)   /* u8 probabilities x s8 values: 4 keys a step */
#undef PV4_CHUNK
#undef PV4_ATTRS
#undef PV4_SUMS
#undef PV4_DP
#undef PV4_STEP
#undef PV4_ADD1
#undef PV4_ADD

/* QB rows of bf16 probabilities (np key pairs, rows ps apart) times the packed value pairs ([np][nv]);
   with cm, the integer modes: int16 pairs, or (q4) u8 probabilities and s8 values 4 keys a step,
   np then counting quads */
static inline __attribute__((always_inline)) void pv_block(const uint32_t *p, const float *pf, int64_t ps, int np,
                                                           const uint32_t *vp, int nv, __m512 acc[QB][4],
                                                           const float *cm, int ncs, int q4) {
    if (pf) {
        dp_block_fma(pf, ps, np, vp, nv, 1, nv, acc);
    } else if (!cm) {
        dp_block(p, ps, np, vp, nv, 1, nv, acc, DOT_BF16);
    } else {  /* one chunk (64 keys: I16_CHUNK pairs or I8_CHUNK quads) per exact int32 sum, times
                 its scale (cm: row r's at cm + r * ncs), then float32 sums in memory (L1): the int32
                 and the float32 sums together would not fit in the registers */
        float f[QB][4][16] __attribute__((aligned(64)));
        memset(f, 0, sizeof f);
        int ch = q4 ? I8_CHUNK : I16_CHUNK;
        for (int j = 0; j < np; j += ch) {
            int n = np - j < ch ? np - j : ch;
            if (nv == 4) {  /* the model's 64-wide heads */
                if (q4)
                    pv4_chunk_i8(p + j, ps, n, vp + (int64_t)j * 64, f, cm + j / ch, ncs);
                else
                    pv4_chunk_i16(p + j, ps, n, vp + (int64_t)j * 64, f, cm + j / ch, ncs);
                continue;
            }
            dp_block(p + j, ps, n, vp + (int64_t)j * nv * 16, nv, 1, nv, acc, q4 ? DOT_I8 : DOT_I16);
            for (int r = 0; r < QB; r++) {
                __m512 m = _mm512_set1_ps(cm[r * ncs + j / ch]);
                for (int c = 0; c < nv; c++)
                    _mm512_store_ps(f[r][c], _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(acc[r][c])), m,
                                                             _mm512_load_ps(f[r][c])));
            }
        }
        for (int r = 0; r < QB; r++)
            for (int c = 0; c < nv; c++) acc[r][c] = _mm512_load_ps(f[r][c]);
    }
}

/* 16 keys (rows krs bf16 apart, the first n of them valid; hp <= 32 dwords each) -> [hp][16]
   dwords at dst, the key block layout of qk_blocks, invalid keys as zeros: a 16 x 16 dword
   transpose per 16 dwords. The next block's rows are prefetched: they are strided (the
   projection's [S, 3, H, hd] layout). The scalar copy this replaced waited on them: ~10% of the
   NAR's attention. */
static inline void pack_keys16(const uint16_t *k, int64_t krs, int n, int hp, uint32_t *dst) {
    for (int j = 16; j < 32 && j < n; j++) {
        const char *nx = (const char *)(k + (int64_t)j * krs);
        _mm_prefetch(nx, _MM_HINT_T0);
        _mm_prefetch(nx + 64, _MM_HINT_T0);
    }
    for (int c = 0; c < hp; c += 16) {
        __mmask16 m = first_n(hp - c);
        __m512i r[16], t[16], u[16];
        for (int j = 0; j < 16; j++)
            r[j] = j < n ? _mm512_maskz_loadu_epi32(m, (const uint32_t *)(k + (int64_t)j * krs) + c) : _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) {  /* 128-bit lane L of t[2i], t[2i+1]: rows 2i, 2i+1 interleaved */
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for (int i = 0; i < 4; i++) {  /* lane L of u[4i + e]: dword 4L + e of rows 4i..4i+3 */
            u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        for (int e = 0; e < 4; e++) {  /* a 4 x 4 transpose of 128-bit lanes: dword 4L + e of all 16 rows */
            __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44), v1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xee);
            __m512i v2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xee);
            __m512i o[4] = {_mm512_shuffle_i32x4(v0, v2, 0x88), _mm512_shuffle_i32x4(v0, v2, 0xdd),
                            _mm512_shuffle_i32x4(v1, v3, 0x88), _mm512_shuffle_i32x4(v1, v3, 0xdd)};
            for (int l = 0; l < 4; l++)
                if (c + 4 * l + e < hp) _mm512_storeu_si512(dst + (int64_t)(c + 4 * l + e) * 16, o[l]);
        }
    }
}

#endif

/* 1 when vx_attn_full is compiled in (AVX-512 BF16); 0: the caller keeps the matmul path. */
int vx_has_attn_full(void) {
#ifdef VX_ATTN_FULL
    return 1;
#else
    return 0;
#endif
}

/* 1 when vx_attn_full also has its int16 mode (AVX-512 VNNI) */
int vx_has_attn_i16(void) {
#if defined(VX_ATTN_FULL) && defined(VX_ATTN_I16)
    return 1;
#else
    return 0;
#endif
}

/* q: bf16 [B, H, Sq, hd], element (b, h, s, d) at q[b*qst[0] + h*qst[1] + s*qst[2] + d]; k, v: bf16
   [B, H, Sk, hd] with the strides kvst (the same for both). So q, k, v may be views into the
   packed projection [B, S, 3, H, hd] as it comes out of the GEMM: no layout copies. The queries
   are the last Sq of the Sk positions. prefix < 0: every query sees every key (the NAR); else the
   AR's prefill mask: the query at position i sees keys below max(prefix, i + 1) (the text, of
   length prefix, sees itself; the audio sees the text and itself causally), and the key blocks
   past a query block's last visible key are skipped (half the causal work).
   out: [B, Sq, H, hd] (the layout the output projection reads), float32 or bf16 (out_bf16).
   hd must be a multiple of 16 and at most 64. i16 (where vx_has_attn_i16): 1 the int16 mode above,
   2 the int8 mode. */
void vx_attn_full(const uint16_t *q, const int64_t *qst, const uint16_t *k, const uint16_t *v, const int64_t *kvst,
                  void *out, int B, int H,
                  int Sq, int Sk, int hd, float scale, int prefix, int out_bf16, int i16, int n_threads) {
#ifdef VX_ATTN_FULL
#ifndef VX_ATTN_I16
    i16 = 0;
#endif
    int i8 = i16 == 2;  /* the int8 mode */
    int hp = hd / 2, nv = hd / 16, nkb = (Sk + 15) / 16, np = (Sk + 1) / 2;
    int kw = i8 ? hd / 4 : hp;  /* dwords per query and key row */
    int64_t ss = (int64_t)nkb * 16 + 16;  /* score row stride (floats), >= Sk rounded up to 32 */
    int64_t pst = (np + 31) / 16 * 16;  /* pair row stride: >= that / 2, a multiple of 64 B (aligned_alloc) */
#pragma omp parallel num_threads(n_threads)
    {
        uint32_t *kp = aligned_alloc(64, sizeof(uint32_t) * (size_t)nkb * hp * 16);
        uint32_t *vp = aligned_alloc(64, sizeof(uint32_t) * (size_t)np * hd);
        float *s = aligned_alloc(64, sizeof(float) * (size_t)QB * ss);
        uint32_t *p = aligned_alloc(64, sizeof(uint32_t) * (size_t)QB * pst);
        uint32_t *qpad = aligned_alloc(64, sizeof(uint32_t) * (size_t)QB * hp);
        /* the FMA loops (vx_bf16_dot: 0) read the query and probability rows widened to float32 */
        int fma = !i16 && !vx_bf16_dot(-1);
        /* int16 mode: the quantized k, then v, rows [Sk][hd]; the keys' scales (zero past Sk), the
           value columns', the block's queries' */
        int16_t *tq = i16 ? aligned_alloc(64, sizeof(int16_t) * (((size_t)Sk * hd + 31) / 32 * 32)) : NULL;
        float *ks = i16 ? aligned_alloc(64, sizeof(float) * (size_t)nkb * 16) : NULL;
        int32_t *ksum = i8 ? aligned_alloc(64, sizeof(int32_t) * (size_t)nkb * 16) : NULL;  /* int8: each key's sum */
        float vsc[64], sq[QB];
        int ncs = (np + I16_CHUNK - 1) / I16_CHUNK + 1;  /* chunks of the weighted values per row */
        float *cmul = i16 ? malloc(sizeof(float) * (size_t)QB * ncs) : NULL;
        float *qf = fma ? aligned_alloc(64, sizeof(float) * (size_t)QB * 2 * hp) : NULL;
        float *pf = fma ? aligned_alloc(64, sizeof(float) * (size_t)QB * 2 * pst) : NULL;
        /* word d of a packed value pair = (row 0, d) | (row 1, d) << 16; rows sit at 0..15, 16..31 */
        const __m512i ileave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            int64_t kvo = b * kvst[0] + h * kvst[1], krs = kvst[2];
            const uint16_t *qh = q + b * qst[0] + h * qst[1], *kh = k + kvo, *vh = v + kvo;
            int64_t xrs = krs;  /* the row stride of what is packed: the input, or tq's */
            if (i8) {
                /* the keys less their mean over the positions: a query's scores all move by the
                   same q . mean, which the softmax ignores, and 7 bits of what is left of the
                   keys are finer than 7 bits of keys that share a large common part */
                float kmu[64];
                __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
                for (int j = 0; j < Sk; j++)
                    for (int c = 0; c < nv; c++) acc[c] = _mm512_add_ps(acc[c], load_bf16(kh + (int64_t)j * krs + c * 16, 0xffff));
                for (int c = 0; c < nv; c++) _mm512_storeu_ps(kmu + c * 16, _mm512_div_ps(acc[c], _mm512_set1_ps((float)Sk)));
                for (int j = 0; j < Sk; j++)
                    ks[j] = quant_i8_row(kh + (int64_t)j * krs, kmu, hd, (uint8_t *)tq + (int64_t)j * hd, 0, ksum + j);
                for (int j = Sk; j < nkb * 16; j++) ks[j] = 0.f, ksum[j] = 0;
                kh = (const uint16_t *)tq;
                xrs = hd / 2;  /* in uint16 units */
            } else if (tq) {
                for (int j = 0; j < Sk; j++) ks[j] = quant_i16_row(kh + (int64_t)j * krs, hd, tq + (int64_t)j * hd);
                for (int j = Sk; j < nkb * 16; j++) ks[j] = 0.f;
                kh = (const uint16_t *)tq;
                xrs = hd;
            }
            /* keys: [key block][dword][16 keys] (a dword = 2 consecutive d of one key, 4 in the int8
               mode), zero-padded */
            for (int kb = 0; kb < nkb; kb++)
                pack_keys16(kh + (int64_t)kb * 16 * xrs, xrs, Sk - kb * 16, kw, kp + (int64_t)kb * kw * 16);
            if (i8) {  /* values: [key quad][d] (4 keys a dword) */
                quant_i8_cols_quads(vh, krs, Sk, hd, vp, vsc);
            } else if (tq) {  /* the keys are packed: tq takes the values */
                quant_i16_cols(vh, krs, Sk, hd, tq, vsc);
                vh = (const uint16_t *)tq;
            }
            /* values: [key pair][d][2 keys], zero-padded */
            for (int jp = 0; !i8 && jp < np; jp++) {
                const uint16_t *v0 = vh + (int64_t)(2 * jp) * xrs, *v1 = 2 * jp + 1 < Sk ? v0 + xrs : NULL;
                uint32_t *dst = vp + (int64_t)jp * hd;
                if (v1) {  /* interleave 16 d of both rows per store */
                    for (int d = 0; d < hd; d += 16) {
                        __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(v0 + d)));
                        a = _mm512_inserti64x4(a, _mm256_loadu_si256((const __m256i *)(v1 + d)), 1);
                        _mm512_storeu_si512(dst + d, _mm512_permutexvar_epi16(ileave, a));
                    }
                } else {
                    for (int d = 0; d < hd; d++) dst[d] = (uint32_t)v0[d];
                }
            }
            for (int q0 = 0; q0 < Sq; q0 += QB) {
                int nq = Sq - q0 < QB ? Sq - q0 : QB;
                /* the block's rows side by side (the last block padded with copies of its first) */
                for (int r = 0; r < QB; r++) {
                    const uint16_t *qr = qh + (int64_t)(q0 + (r < nq ? r : 0)) * qst[2];
                    if (i8)
                        sq[r] = quant_i8_row(qr, NULL, hd, (uint8_t *)(qpad + r * kw), 128, NULL);
                    else if (tq)
                        sq[r] = quant_i16_row(qr, hd, (int16_t *)(qpad + r * hp));
                    else
                        memcpy(qpad + r * hp, qr, sizeof(uint32_t) * hp);
                }
                const uint32_t *qb = qpad;
                if (qf) widen_bf16(qpad, QB * hp, qf);
                /* keys visible to each row (padding rows: those of the block's first), and to the block */
                int lim[QB], blim = 0;
                for (int r = 0; r < QB; r++) {
                    int i = Sk - Sq + q0 + (r < nq ? r : 0);
                    lim[r] = prefix < 0 ? Sk : i + 1 > prefix ? i + 1 : prefix < Sk ? prefix : Sk;
                    blim = lim[r] > blim ? lim[r] : blim;
                }
                int bkb = (blim + 15) / 16, bk32 = (blim + 31) / 32 * 32, bnp = i8 ? (blim + 3) / 4 : (blim + 1) / 2;
                __m512 vmax[QB];
                for (int r = 0; r < QB; r++) vmax[r] = _mm512_set1_ps(-INFINITY);
                for (int kb = 0; kb < bkb; kb += 4) {
                    int c = bkb - kb < 4 ? bkb - kb : 4;
                    const uint32_t *kpb = kp + (int64_t)kb * kw * 16;
                    switch (c) {  /* constant block count: the accumulators stay in registers */
                        case 1: qk_blocks(qb, qf, kw, kpb, 1, kb * 16, lim, s + kb * 16, ss, scale, vmax, sq, ks, ksum); break;
                        case 2: qk_blocks(qb, qf, kw, kpb, 2, kb * 16, lim, s + kb * 16, ss, scale, vmax, sq, ks, ksum); break;
                        case 3: qk_blocks(qb, qf, kw, kpb, 3, kb * 16, lim, s + kb * 16, ss, scale, vmax, sq, ks, ksum); break;
                        default: qk_blocks(qb, qf, kw, kpb, 4, kb * 16, lim, s + kb * 16, ss, scale, vmax, sq, ks, ksum); break;
                    }
                }
                /* softmax: exp(s - max) rounded to bf16 straight into the probability rows (a bf16
                   row in key order is the pairs layout), zeros past the row's keys up to the block's
                   last pair */
                float inv[QB];
                for (int r = 0; r < QB; r++) {
                    const float *sr = s + r * ss;
                    uint16_t *pr = (uint16_t *)(p + r * pst);
                    __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r])), vsum = _mm512_setzero_ps();
                    if (cmul) {  /* integer modes: per chunk of 2 * I16_CHUNK keys, round(e * top / the
                                    chunk's max) (top: I16_P, I8_P), and the chunk's scale; the sum as
                                    rounded */
                        float total = 0.f, top = i8 ? I8_P : I16_P;
                        for (int i0 = 0; i0 < bk32; i0 += 2 * I16_CHUNK) {
                            __m512 e[4], cmx = _mm512_setzero_ps(), isum = _mm512_setzero_ps();
                            for (int u = 0; u < 4; u++) {
                                int i = i0 + 16 * u;
                                __mmask16 m = i < bk32 ? first_n(lim[r] - i) : 0;
                                e[u] = _mm512_maskz_mov_ps(m, exp_ps_q(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sr + i), vm)));
                                cmx = _mm512_max_ps(cmx, e[u]);
                            }
                            float c = _mm512_reduce_max_ps(cmx);
                            __m512 up = _mm512_set1_ps(c > 0.f ? top / c : 0.f);
                            for (int u = 0; u < 4 && i0 + 16 * u < bk32; u++) {
                                __m512i pi = _mm512_cvtps_epi32(_mm512_mul_ps(e[u], up));
                                if (i8)  /* bytes in key order: the quads */
                                    _mm_storeu_si128((__m128i *)((uint8_t *)(p + r * pst) + i0 + 16 * u), _mm512_cvtepi32_epi8(pi));
                                else
                                    _mm256_storeu_si256((__m256i *)(pr + i0 + 16 * u), _mm512_cvtepi32_epi16(pi));
                                isum = _mm512_add_ps(isum, _mm512_cvtepi32_ps(pi));
                            }
                            cmul[r * ncs + i0 / (2 * I16_CHUNK)] = c / top;
                            total += _mm512_reduce_add_ps(isum) * (c / top);
                        }
                        inv[r] = 1.f / total;
                        continue;
                    }
                    for (int i = 0; i < bk32; i += 16) {
                        __mmask16 m = first_n(lim[r] - i);
                        __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sr + i), vm)));
                        _mm256_storeu_si256((__m256i *)(pr + i), (__m256i)_mm512_cvtneps_pbh(e));
                        vsum = _mm512_add_ps(vsum, e);
                    }
                    inv[r] = 1.f / _mm512_reduce_add_ps(vsum);
                }
                if (pf)
                    for (int r = 0; r < QB; r++) widen_bf16(p + r * pst, bnp, pf + r * 2 * pst);
                __m512 acc[QB][4];
                switch (nv) {
                    case 1: pv_block(p, pf, pst, bnp, vp, 1, acc, cmul, ncs, i8); break;
                    case 2: pv_block(p, pf, pst, bnp, vp, 2, acc, cmul, ncs, i8); break;
                    case 3: pv_block(p, pf, pst, bnp, vp, 3, acc, cmul, ncs, i8); break;
                    default: pv_block(p, pf, pst, bnp, vp, 4, acc, cmul, ncs, i8); break;
                }
                for (int r = 0; r < nq; r++) {
                    int64_t o = (((int64_t)b * Sq + q0 + r) * H + h) * hd;
                    __m512 vi = _mm512_set1_ps(inv[r]);
                    for (int c = 0; c < nv; c++) {
                        __m512 y = _mm512_mul_ps(acc[r][c], vi);
                        if (tq) y = _mm512_mul_ps(y, _mm512_loadu_ps(vsc + c * 16));
                        if (out_bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)out + o + c * 16), (__m256i)_mm512_cvtneps_pbh(y));
                        else _mm512_storeu_ps((float *)out + o + c * 16, y);
                    }
                }
            }
        }
        free(kp);
        free(vp);
        free(s);
        free(p);
        free(qpad);
        free(qf);
        free(pf);
        free(tq);
        free(ks);
        free(ksum);
        free(cmul);
    }
#else
    (void)q; (void)qst; (void)k; (void)v; (void)kvst; (void)out; (void)B; (void)H; (void)Sq; (void)Sk; (void)hd; (void)scale;
    (void)prefix; (void)out_bf16; (void)i16; (void)n_threads;
#endif
}
