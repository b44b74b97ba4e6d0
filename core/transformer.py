"""The decoder stacks of VALL-E X, written for inference: fused QKV, SDPA, a static KV cache.

Arithmetic follows the reference (`modules/transformer.py`, `modules/activation.py` of
Plachtaa/VALL-E-X): pre-LN layers `x += SA(LN1(x)); x += W2 relu(W1 LN2(x))`, LayerNorm eps 1e-5,
packed q,k,v projection, scores scaled by 1/sqrt(head_dim), a final norm. The NAR stack uses
AdaptiveLayerNorm `w * LN(x) + b` with `(w, b) = split(project_layer(stage_embedding))`; the
stage embeddings are constants, so `(w, b)` is computed once per stage at load time (with the
same F.linear call as the reference) and the 2 x d x 2d projection weights are dropped.

The residual stream is always float32; the Linear layers run in the model's compute dtype
(float32, bfloat16, or int8 after `core.quantize`), LayerNorm always in float32. SDPA computes
softmax in float32 for reduced-precision inputs.

Internal parameter names differ from the checkpoint's; `core.lm` maps them (`checkpoint_to_internal`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from core import native
from core.native_linear import NativeLinear

LN_EPS = 1e-5


def sinusoid_table(n_pos: int, d_model: int, device=None) -> torch.Tensor:
    """The reference's SinePositionalEmbedding table [n_pos, d] (float32, interleaved sin/cos).

    Computed with the same ops and at least the same size (4000 rows) as the reference, so the
    values are the same bit for bit."""
    n = max(4000, int(n_pos))
    pe = torch.zeros(n, d_model, device=device)
    position = torch.arange(0, n, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
                         * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


# _matmul_attention works through at most this many scores (rows x heads x queries x keys) at a
# time, so its score matrix stays a few tens of MB however long or wide the batch.
_SCORES_CHUNK = 8 * 1024 * 1024


def embed(table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """Embedding rows as float32 (the residual stream's dtype), whatever the table's dtype."""
    out = F.embedding(idx, table.weight)
    return out if out.dtype == torch.float32 else out.float()


def head_logits(lin: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Float32 logits of an output head (a plain nn.Linear in the head's dtype, or a native one)."""
    if isinstance(lin, nn.Linear):
        return F.linear(h.to(lin.weight.dtype), lin.weight).float()
    return lin(h).float()


def _matmul_attention(q, k, v, mask, scale: float) -> torch.Tensor:
    """Attention as two bf16 matmuls and a softmax that reads bf16 and sums in float32 (in place,
    core/kernels/): on this CPU class ~1.4x faster than SDPA's flash kernel, which gains nothing
    from bf16 inputs here.
    (The probabilities are rounded to bf16 either way: the second matmul takes bf16.)
    q: bf16 [B, H, Sq, hd] contiguous; k, v: bf16 [B, H, Sk, hd]; mask: None or bool, True = attend."""
    B, H, Sq, _ = q.shape
    per_row = H * Sq * k.shape[2]
    step = max(1, _SCORES_CHUNK // max(per_row, 1))
    q = q * scale  # scaling q, not the scores: Sk / hd times less work (exact for hd = 64)
    outs = []
    for b0 in range(0, B, step):
        qb, kb, vb = q[b0:b0 + step], k[b0:b0 + step], v[b0:b0 + step]
        s = torch.matmul(qb, kb.transpose(-1, -2))
        if mask is not None:
            s.masked_fill_(~(mask[b0:b0 + step] if mask.shape[0] > 1 else mask), float("-inf"))
        outs.append(torch.matmul(native.softmax_(s), vb))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# cuDNN's attention, PyTorch's first pick for bf16 on Hopper GPUs, builds a new execution plan for
# each new key length: ~3.6 ms of CPU a call in the AR's decode, whose keys grow by one a step (an
# H100 ran the bf16 AR at 13 tokens/s with it). The flash and memory-efficient kernels take any
# length; the order is PyTorch's own, cuDNN left out. float32 never used cuDNN's.
_GPU_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _sdpa(q, k, v, mask) -> torch.Tensor:
    if q.is_cuda:
        with sdpa_kernel(_GPU_SDPA):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _cache_put(dst: torch.Tensor, x: torch.Tensor) -> None:
    """k or v [..., hd] into the cache slice dst as the cache stores them: int8 rows quantized
    straight into it (native.kv_quantize_into), else a cast copy."""
    if dst.dtype == torch.int8:
        native.kv_quantize_into(x, dst)
    else:
        dst.copy_(x)


class Norm(nn.Module):
    """LayerNorm parameters (weight, bias) of the reference's `LayerNorm` / `nn.LayerNorm`."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(d), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, LN_EPS)


class AdaNorm(nn.Module):
    """AdaptiveLayerNorm: holds the projection until `precompute` turns it into per-stage (w, b)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = Norm(d)
        self.project = nn.Linear(d, 2 * d)
        self.register_buffer("stage_w", torch.empty(0), persistent=False)
        self.register_buffer("stage_b", torch.empty(0), persistent=False)
        self.folded: tuple[torch.Tensor, torch.Tensor] | None = None  # see fold()

    @torch.no_grad()
    def precompute(self, stage_embeddings: list[torch.Tensor]) -> None:
        d = self.norm.weight.shape[0]
        ws, bs = [], []
        for emb in stage_embeddings:  # emb: [1, d], as the reference passes `.weight`
            w, b = torch.split(F.linear(emb, self.project.weight, self.project.bias), d, dim=-1)
            ws.append(w[0])
            bs.append(b[0])
        self.stage_w = torch.stack(ws).float()
        self.stage_b = torch.stack(bs).float()
        del self.project

    @torch.no_grad()
    def fold(self) -> None:
        """Reduced-precision modes: w * (LN(x) g + beta) + b = LN(x) (w g) + (w beta + b), one
        layer_norm instead of three passes over [S, D] (float32 rounding differs: not for fp32)."""
        g, beta = self.norm.weight.float(), self.norm.bias.float()
        self.folded = (self.stage_w * g, self.stage_w * beta + self.stage_b)

    def forward(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        if self.folded is not None:
            return F.layer_norm(x, (x.shape[-1],), self.folded[0][stage], self.folded[1][stage], LN_EPS)
        return self.stage_w[stage] * self.norm(x) + self.stage_b[stage]


class Layer(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, adaptive: bool):
        super().__init__()
        self.d, self.h, self.hd = d, n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1 = nn.Linear(d, d_ff)
        self.ff2 = nn.Linear(d_ff, d)
        self.norm1 = AdaNorm(d) if adaptive else Norm(d)
        self.norm2 = AdaNorm(d) if adaptive else Norm(d)
        self.act_dtype = torch.float32  # dtype fed to the Linear layers (set by core.quantize)


class Stack(nn.Module):
    """A stack of pre-LN layers + final norm. `adaptive`: the NAR's AdaLN variant."""

    def __init__(self, d: int, n_heads: int, n_layers: int, d_ff: int, adaptive: bool):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"width {d} is not divisible by {n_heads} heads")
        self.d, self.h, self.hd = d, n_heads, d // n_heads
        self.adaptive = adaptive
        self.layers = nn.ModuleList(Layer(d, n_heads, d_ff, adaptive) for _ in range(n_layers))
        self.norm = AdaNorm(d) if adaptive else Norm(d)
        self.act_dtype = torch.float32
        # True when every Linear takes float32 rows and rounds them to act_dtype itself (the native
        # bf16 Linear, set by core.quantize): the norms then skip their own conversion pass
        self.linears_round_input = False
        self.kv_dtype = torch.float32
        # bf16 / int8 modes on the CPU (set by core.quantize): the decode step and the full
        # passes' attention (NAR, prefill) use the kernels of core/native.py, float32 softmax;
        # what they do not cover runs as bf16 matmuls.
        self.fast_cpu = False
        # the decode step's attention (one query row) in native.attn_decode, over the cache's
        # dtype: the fast_cpu modes, and fp32 where vx_linear_f32 runs (set by core.quantize)
        self.native_decode_attn = False
        self.decode_step = None  # int8 / bf16 modes: core.decode_step.DecodeStep, the whole step in one call
        self.draft = None  # fp32 AR: core.speculate.Draft, an int8 copy that drafts greedy decoding
        # the fused full attention in integers (set by core.quantize; core/kernels/attn_full.c):
        # 16 = int16 (twice the float32 rate; q, k, v keep more bits than bf16's): the int8 mode's
        # prefill and the bf16 mode's NAR with AVX-512 FP16; 8 = int8 (four times): the int8 NAR
        self.attn_ints = 0

    # -- helpers ----------------------------------------------------------------------------------
    def _norm(self, norm, x, stage):
        y = norm(x, stage) if self.adaptive else norm(x)
        return y if y.dtype == self.act_dtype or self.linears_round_input else y.to(self.act_dtype)

    @property
    def attn_dtype(self) -> torch.dtype:
        """The dtype attention computes in: the cache's, bf16 over an int8 cache."""
        return torch.bfloat16 if self.kv_dtype == torch.int8 else self.kv_dtype

    @property
    def cache_row(self) -> int:
        """The last dim of a KV cache: hd, or hd + 4 bytes for int8 rows (native.kv_quantize)."""
        return self.hd + 4 if self.kv_dtype == torch.int8 else self.hd

    def _attn(self, layer: Layer, h, mask, cache_k=None, cache_v=None, start=0, q_from=0, key_start=None,
              prefix=None):
        """h: [B, S, D] (act dtype). With a cache, the new k/v go to [start, start+S) and the
        queries see cache[:start+S]. q_from: only queries from that row on are computed.
        key_start: int32 [B], the first valid key per row (left padding) for the native decode
        step, which gets it instead of `mask`. prefix: `mask` is the AR prefill's unpadded prefix
        mask with that text length (the fused attention takes the length instead of the mask)."""
        B, S, _ = h.shape
        at = self.attn_dtype
        if self.fast_cpu and S > 1 and at == torch.bfloat16 and isinstance(layer.qkv, NativeLinear):
            qkv = layer.qkv(h, out_dtype=torch.bfloat16)  # rounded in the GEMM: no conversion pass
        else:
            qkv = layer.qkv(h)
        if self.native_decode_attn and S == 1 and cache_k is not None:
            qkv = qkv.view(B, 3, self.h, self.hd)
            qkv = qkv if qkv.dtype == torch.float32 else qkv.float()
            _cache_put(cache_k[:, :, start], qkv[:, 1])
            _cache_put(cache_v[:, :, start], qkv[:, 2])
            o = native.attn_decode(qkv[:, 0], cache_k, cache_v, start + 1, key_start, self.hd ** -0.5)
            return layer.out(o.view(B, 1, self.d))
        if qkv.dtype != at:  # CPU fp32 / int8 activations with a bf16 cache, or the reverse
            qkv = qkv.to(at)
        if self.fast_cpu and (mask is None or prefix is not None) and qkv.dtype == torch.bfloat16:
            # The NAR and the AR prefill: the fused kernel reads q, k, v as views of the projection
            # [B, S, 3, H, hd] (or of the cache) and takes the prefix mask as a length.
            o = self._attn_fused(qkv.view(B, S, 3, self.h, self.hd), cache_k, cache_v, start, q_from,
                                 None if mask is None else prefix)
            if o is not None:
                return layer.out(o)
        if self.fast_cpu:  # contiguous [3, B, H, S, hd]: strided bf16 matmuls are several times slower
            qkv = qkv.view(B, S, 3, self.h, self.hd).permute(2, 0, 3, 1, 4).contiguous()
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            qkv = qkv.view(B, S, 3, self.h, self.hd).transpose(1, 3)  # [B, H, 3, S, hd]
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cache_k is not None:
            _cache_put(cache_k[:, :, start:start + S], k)
            _cache_put(cache_v[:, :, start:start + S], v)
            if cache_k.dtype != torch.int8:
                k = cache_k[:, :, :start + S]
                v = cache_v[:, :, :start + S]
            elif start:  # int8 rows: the earlier keys dequantized, this call's own as computed
                k = torch.cat([native.kv_dequantize(cache_k[:, :, :start], at), k], dim=2)
                v = torch.cat([native.kv_dequantize(cache_v[:, :, :start], at), v], dim=2)
        if q_from:
            q = q[:, :, q_from:]
        if self.fast_cpu and q.dtype == torch.bfloat16:
            o = _matmul_attention(q, k, v, mask, self.hd ** -0.5)
        else:
            o = _sdpa(q, k, v, mask)
        o = o.transpose(1, 2).reshape(B, S - q_from, self.d)
        return layer.out(o if o.dtype == self.act_dtype else o.to(self.act_dtype))

    def _attn_fused(self, qkv5, cache_k, cache_v, start, q_from, prefix):
        """native.attn_full over views of qkv5 [B, S, 3, H, hd] (bf16), after the cache write;
        None where the kernel does not cover the case (the caller's path redoes the write)."""
        S = qkv5.shape[1]
        q, k, v = (qkv5[:, :, i].transpose(1, 2) for i in range(3))
        if cache_k is not None:
            _cache_put(cache_k[:, :, start:start + S], k)
            _cache_put(cache_v[:, :, start:start + S], v)
            if cache_k.dtype != torch.int8:
                k, v = cache_k[:, :, :start + S], cache_v[:, :, :start + S]
            elif start:
                k = torch.cat([native.kv_dequantize(cache_k[:, :, :start], k.dtype), k], dim=2)
                v = torch.cat([native.kv_dequantize(cache_v[:, :, :start], v.dtype), v], dim=2)
        return native.attn_full(q[:, :, q_from:], k, v, self.hd ** -0.5, self.act_dtype, prefix, self.attn_ints)

    def _ffn(self, layer: Layer, h):
        if isinstance(layer.ff1, NativeLinear):  # ReLU in the kernel
            return layer.ff2(layer.ff1(h, relu=True))
        return layer.ff2(torch.relu_(layer.ff1(h)))

    # -- AR: prefill / decode with a static cache ------------------------------------------------
    def fused_decode(self, cache: torch.Tensor, rows: int) -> bool:
        """Whether a one-position step of `rows` rows over `cache` runs as one native call (which
        can also take a row map into the cache: see forward_cached)."""
        step = self.decode_step
        return (step is not None and (step.max_rows is None or rows <= step.max_rows)
                and cache.dtype == step.kv_dtype and cache.is_contiguous())

    def forward_cached(self, x: torch.Tensor, cache: torch.Tensor, start: int, mask,
                       key_start: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                       prefix: int | None = None) -> torch.Tensor:
        """x: [B, S, D] float32 inputs for cache slots [start, start+S). cache: [L, 2, B, H, Smax,
        cache_row] of kv_dtype.
        mask: None, or bool [B or 1, 1, S, start+S] (True = attend); key_start: the same left
        padding as int32 [B] first valid keys (used by the native decode step). Returns the
        final-normed float32 hidden state of the last row [B, 1, D] (the last layer computes only
        that row). rows: int32 [B], the cache row of each row of x, only where `fused_decode`.
        prefix: the text length, where `mask` is the prefill's prefix mask with no left padding."""
        n, S = len(self.layers), x.shape[1]
        if S == 1 and self.fused_decode(cache, x.shape[0]):
            return self.norm(self.decode_step(x[:, 0], cache, start, key_start, rows)[:, None])
        if rows is not None:
            raise ValueError("a row map needs the fused decode step (Stack.fused_decode)")
        for i, layer in enumerate(self.layers):
            qf = S - 1 if i == n - 1 else 0
            h = self._norm(layer.norm1, x, None)
            m = mask[..., qf:, :] if (mask is not None and qf) else mask
            a = self._attn(layer, h, m, cache[i, 0], cache[i, 1], start, q_from=qf, key_start=key_start,
                           prefix=prefix)
            if i == 0 or qf:  # a new tensor: the caller's x, or only the last row is kept
                x = (x[:, qf:] if qf else x) + a
            else:  # x is this call's own: in place, the same floats, one pass over [S, D] less
                x.add_(a)
            h = self._norm(layer.norm2, x, None)
            x.add_(self._ffn(layer, h))
        return self.norm(x)

    # -- NAR: one full bidirectional pass ---------------------------------------------------------
    def forward_full(self, x: torch.Tensor, stage: int, mask=None, keep_from: int = 0) -> torch.Tensor:
        """x: [B, S, D] float32. Returns final-normed [B, S - keep_from, D]; the last layer computes
        queries / FFN only for rows >= keep_from (the rows whose logits are wanted)."""
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            last = i == n - 1 and keep_from > 0
            h = self._norm(layer.norm1, x, stage)
            a = self._attn(layer, h, mask, q_from=keep_from if last else 0)
            if i == 0 or last:  # as in forward_cached
                x = (x[:, keep_from:] if last else x) + a
            else:
                x.add_(a)
            h = self._norm(layer.norm2, x, stage)
            x.add_(self._ffn(layer, h))
        return self.norm(x, stage)
