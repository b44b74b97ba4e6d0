"""Precision modes of the LM engine: float32 (reference-exact), bfloat16, int8, int4.

- fp32: float32 weights, sums and KV cache; on a CPU with AVX-512 the AR's Linears run in
  core/kernels/linear_float.c (vx_linear_f32) and its decode attention in attn_decode.c, the NAR on
  oneDNN's pre-packed Linear.
- bf16: every Linear and embedding table in bfloat16 (AVX-512 BF16 on this CPU class, tensor
  cores on CUDA); LayerNorm, positions, the residual stream and the softmax stay float32. The
  float32 weights are never kept: each table is converted once and its mmap pages are handed back
  to the OS, so peak RSS stays near the bf16 size.
- int8 (`quantize=`):
  * "int8-dynamic": `torch.ao.quantization.quantize_dynamic` (fbgemm, VNNI): int8 weights per
    output channel, activations quantized on the fly. Deprecated upstream but fast here.
  * "int8-weight": weight-only int8 (per-channel scales) through `aten._weight_int8pack_mm` with
    bfloat16 activations: more accurate (activations stay bf16). CPU and CUDA (int8's default on
    CUDA: no extra package).
  * "int8-torchao": torchao's `Int8DynamicActivationInt8WeightConfig` (the maintained path),
    when torchao is installed.
  * "int8": the default int8 backend (DEFAULT_INT8 on the CPU, "int8-weight" on CUDA).
- int4 (`quantize="int4"`, CPU with AVX-512 VNNI): the AR's Linear layers in 4 bits (a bf16 scale
  per 64 inputs, int8 activations: core/kernels/linear_i4.c), the NAR as "int8-dynamic". The AR's
  decode step streams all its weights once a token, so it runs at the memory bandwidth: 4 bits
  halve its time. The NAR is bound by arithmetic, where 4 bits would only add unpacking and error.
  The fastest mode, and the farthest from fp32 (the AR's weights carry ~10% relative error).
  The decoder-layer Linear layers are quantized; embeddings and the output heads stay in bf16.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from core import native, native_linear, speculate
from core.decode_step import DecodeStep
from core.memory import release_pages, trim_heap

INT8_BACKENDS = ("int8-dynamic", "int8-weight", "int8-torchao")
QUANTIZE_MODES = INT8_BACKENDS + ("int4",)
DEFAULT_INT8 = "int8-dynamic"


def packing_available(dtype: torch.dtype) -> bool:
    """oneDNN prepacked Linear on this CPU for this dtype."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return dtype == torch.float32
    except Exception:  # pragma: no cover
        return False


class PackedLinear(nn.Module):
    """A Linear whose weight is reordered once into oneDNN's blocked layout (CPU only).

    On this CPU class it reads the weights at 1.4-2x the bandwidth of `F.linear`'s GEMV for one
    row (the AR step), is 2-4x faster for a few rows (batched AR) and ~1.5x for hundreds (NAR, AR
    prefill). Same math as F.linear; float32 results differ only in rounding order."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        w = weight.detach().to(dtype).contiguous()
        self.in_features, self.out_features = int(w.shape[1]), int(w.shape[0])
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.act_dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.act_dtype:
            x = x.to(self.act_dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class Int8WeightLinear(nn.Module):
    """Weight-only int8 Linear (per-output-channel symmetric scales), activations in `act_dtype`."""

    def __init__(self, lin: nn.Linear, act_dtype=torch.bfloat16):
        super().__init__()
        w = lin.weight.detach().float()
        scale = (w.abs().amax(1) / 127.0).clamp(min=1e-12)
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(act_dtype))
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().to(act_dtype))
        self.act_dtype = act_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != self.act_dtype:
            x2 = x2.to(self.act_dtype)
        if x2.is_cuda and x2.shape[0] > 16:
            # CUDA's int8pack kernel is a GEMV at heart: the NAR's ~600 rows ran 20x slower than
            # bf16 through it (H100). Many rows: the bf16 weights for this call, then cuBLAS.
            y = torch.mm(x2, (self.qweight.to(self.act_dtype) * self.scale[:, None]).t())
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], y.shape[-1])


def _use_native(stack, device) -> bool:
    """Reduced-precision modes on the CPU: the native decode kernels, a bf16 KV cache (the int8
    AR then switches to int8 rows) and bf16 matmul attention (core.transformer), when
    core/native.py could build its kernels."""
    if device.type != "cpu" or not native.available():
        return False
    stack.fast_cpu = True
    stack.native_decode_attn = True
    stack.kv_dtype = torch.bfloat16
    return True


def _cast_linear(lin: nn.Linear, dtype, device) -> nn.Linear:
    new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
    new.weight = nn.Parameter(lin.weight.detach().to(device, dtype), requires_grad=False)
    if lin.bias is not None:
        new.bias = nn.Parameter(lin.bias.detach().to(device, dtype), requires_grad=False)
    return new


def _linears(stack) -> list[tuple[nn.Module, str]]:
    out = []
    for layer in stack.layers:
        for name in ("qkv", "out", "ff1", "ff2"):
            out.append((layer, name))
    return out


def convert_tensor(t: torch.Tensor, dtype, device, mmapped: bool, done: dict) -> torch.Tensor:
    """Convert once per storage (keeps tied weights tied) and release the source pages."""
    key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
    if key in done:
        return done[key]
    new = t.detach().to(device=device, dtype=dtype)
    if mmapped and new.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
        release_pages(t)
    done[key] = new
    return new


def _int8_dynamic(stack, device, mmapped: bool, is_ar: bool) -> None:
    """One stack to "int8-dynamic": torch.ao's per-channel int8 weights (fbgemm modules), or the
    same int8 values straight into vx_linear_i8's layout where its tiled GEMM runs."""
    if _use_native(stack, device) and native.gemm_available():
        # The fbgemm modules would only be unpacked into Int8Linear and dropped: vx_pack_i8 makes
        # the same int8 weights and scales (bit for bit, tests/test_native.py) in one pass,
        # ~0.3 s for both stacks against ~9 s through quantize_dynamic, its prepack and unpack.
        for layer, name in _linears(stack):
            lin = getattr(layer, name)
            setattr(layer, name, native_linear.Int8Linear.from_float(lin.weight, lin.bias))
            if mmapped:
                release_pages(lin.weight)
            if name == "ff2":
                trim_heap()
        _native_int8(stack, is_ar)
        return
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for layer, name in _linears(stack):
        lin = getattr(layer, name)
        lin.weight = nn.Parameter(lin.weight.detach().to(device, torch.float32), requires_grad=False)
        lin.bias = nn.Parameter(lin.bias.detach().to(device, torch.float32), requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer in stack.layers:
            old = [getattr(layer, n).weight for n in ("qkv", "out", "ff1", "ff2")]
            quantize_dynamic(layer, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
            if mmapped:
                for w in old:
                    release_pages(w)
            trim_heap()
    stack.act_dtype = torch.float32
    stack.kv_dtype = torch.float32
    if _use_native(stack, device) and is_ar:
        # Without the tiled GEMM (no VNNI): the same int8 weights through vx_linear_i8 for the
        # decode step's few rows (1.6x fbgemm's speed for one); the AR keeps the fbgemm modules
        # for its prefill (one more int8 copy) and the NAR stays on fbgemm.
        for layer, name in _linears(stack):
            setattr(layer, name, native_linear.Int8Linear(getattr(layer, name)))
        trim_heap()
        _native_int8(stack, is_ar)


def _native_int8(stack, is_ar: bool) -> None:
    """The rest of a stack on vx_linear_i8 (~1.4x fbgemm's speed for the NAR's and the prefill's
    hundreds of rows with the tiled VNNI GEMM): its attention and the AR's fused step, after
    _use_native (float32 rows into the Linears, bf16 attention)."""
    stack.act_dtype = torch.float32
    # the full passes' attention in integers: the NAR's in int8 (q, k, v, probabilities: 4
    # products a vpdpbusd lane, ~25% faster than int16; as close to fp32 on the NAR codes),
    # the AR's prefill in int16 (its first greedy steps follow the prompt's keys closely)
    stack.attn_ints = (16 if is_ar else 8) if native.attn_i16_available() else 0
    if is_ar:
        stack.decode_step = DecodeStep(stack)
        stack.kv_dtype = torch.int8  # int8 rows: half the bytes a decode step streams


def apply_precision(core, dtype: torch.dtype, quantize: str | None, device, mmapped: bool) -> None:
    """Move `core` (a core.lm._Core with float32 weights) to its run-time precision, in place."""
    done: dict = {}
    emb_dtype = dtype if quantize is None else (torch.bfloat16 if device.type == "cpu" else dtype)
    if quantize is not None and dtype == torch.float32:
        emb_dtype = torch.bfloat16

    def conv(module: nn.Module, name: str, to_dtype):
        p = getattr(module, name)
        if p is None:
            return
        new = convert_tensor(p, to_dtype, device, mmapped, done)
        setattr(module, name, nn.Parameter(new, requires_grad=False))

    pack = device.type == "cpu" and packing_available(emb_dtype)
    # fp32 on a CPU with AVX-512: the AR's Linears and head in vx_linear_f32, whose GEMV reads the
    # weights once for all the rows of a batched step (a 10-row step's Linears: ~19 ms against ~43
    # for oneDNN's) and whose sums are batch-invariant, chained in the fused decode step; the NAR
    # (hundreds of rows, oneDNN's GEMM as fast) stays on oneDNN
    own_f32 = (quantize is None and dtype == torch.float32 and device.type == "cpu" and native.available()
               and native_linear.f32_available())
    # Embeddings and heads (heads of the NAR are tied to its audio tables: converted once).
    for emb in core.embeddings():
        conv(emb, "weight", emb_dtype)
    for head in core.heads():
        conv(head, "weight", emb_dtype)
    if emb_dtype == torch.bfloat16 and device.type == "cpu" and native.available() and native_linear.bf16_available():
        # the AR head's one row a step: our GEMV reads its 2 MB at ~1.7x oneDNN's speed
        core.ar_head = native_linear.Bf16Linear(core.ar_head.weight, None)
        core.nar_heads = nn.ModuleList(native_linear.Bf16Linear(h.weight, None) for h in core.nar_heads)
    elif pack or own_f32:
        # fp32: the AR head in the fused decode step (codes to logits in one call, as in bf16)
        core.ar_head = (native_linear.F32Linear(core.ar_head.weight, None) if own_f32
                        else PackedLinear(core.ar_head.weight, None, emb_dtype))
        if pack:
            core.nar_heads = nn.ModuleList(PackedLinear(h.weight, None, emb_dtype) for h in core.nar_heads)
    core.head_dtype = emb_dtype
    # Everything small stays float32 (norms, alphas, AdaLN stage tables).
    for stack in (core.ar, core.nar):
        for mod in stack.modules():
            if mod.__class__.__name__ == "Norm":
                conv(mod, "weight", torch.float32)
                conv(mod, "bias", torch.float32)
    for name in ("ar_text_alpha", "ar_audio_alpha", "nar_text_alpha", "nar_audio_alpha"):
        setattr(core, name, nn.Parameter(getattr(core, name).detach().to(device, torch.float32),
                                         requires_grad=False))

    if quantize is None:
        pack = device.type == "cpu" and packing_available(dtype)
        # bf16 on a CPU with AVX-512 BF16: the native Linear (one packed copy for the decode step's
        # GEMV and the prefill's / NAR's GEMM, batch-invariant) and the AR's fused decode step
        own = (dtype == torch.bfloat16 and device.type == "cpu" and native.available()
               and native_linear.bf16_available())
        # and with AVX-512 FP16 the NAR's GEMMs in half precision (twice the rate of the float32
        # FMAs, as close to fp32: core/kernels/linear_f16.c); the AR keeps vx_linear_bf16, whose
        # few-row and many-row paths give the same floats (batches decode like one request)
        own_f16 = own and native_linear.f16_available() and not native.env_off("VALLEX_NAR_F16")
        # fp32: an int8 copy of the AR's layers drafts greedy decoding (core/speculate.py: the
        # same tokens, ~2x the rate; +151 MB)
        drafts = [] if own_f32 and native.gemm_available() and not native.env_off("VALLEX_SPECULATE") else None
        for stack in (core.ar, core.nar):
            for layer, name in _linears(stack):
                lin = getattr(layer, name)
                if own or pack:
                    src = lin.weight
                    if drafts is not None and stack is core.ar:
                        if name == "qkv":
                            drafts.append({})
                        drafts[-1][name] = native_linear.Int8Linear.from_float(src, lin.bias)
                    if own_f16 and stack is core.nar:
                        new = native_linear.F16Linear(src, lin.bias)
                    elif own:
                        new = native_linear.Bf16Linear(src, lin.bias)
                    elif own_f32 and stack is core.ar:
                        new = native_linear.F32Linear(src, lin.bias)
                    else:
                        new = PackedLinear(src, lin.bias, dtype)
                    setattr(layer, name, new)
                    if mmapped:
                        release_pages(src)
                    if name == "ff2":
                        trim_heap()
                else:
                    conv(lin, "weight", dtype)
                    conv(lin, "bias", dtype)
            stack.act_dtype = dtype
            stack.linears_round_input = own  # vx_linear_bf16 rounds float32 rows as .to(bf16) does
            stack.kv_dtype = torch.float32 if device.type == "cpu" else dtype
            for layer in stack.layers:
                layer.act_dtype = dtype
            if dtype != torch.float32:
                _use_native(stack, device)
            elif own_f32 and stack is core.ar:
                stack.native_decode_attn = True  # vx_attn_decode over the float32 cache
                stack.decode_step = DecodeStep(stack)  # over the float32 cache
                if drafts:
                    stack.draft = speculate.Draft(stack, drafts)
            if own and stack is core.ar:
                stack.decode_step = DecodeStep(stack)  # over the bf16 cache
            if own_f16 and stack is core.nar:
                # the int16 attention (as the int8 mode's prefill): as close to float32 attention
                # as the bf16 one (q, k one scale per row and head, exact integer sums), twice its rate
                stack.attn_ints = 16 if native.attn_i16_available() else 0
        return

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}")
    if quantize == "int4":
        if device.type != "cpu" or not native.available() or not native_linear.int4_available():
            raise ValueError("quantize='int4' runs on a CPU with AVX-512 VNNI and the native kernels "
                             f"({native.why_unavailable() or 'no VNNI here'}); use int8 instead "
                             "(quantize='int8', --dtype int8)")
        _int8_dynamic(core.nar, device, mmapped, is_ar=False)
        ar = core.ar
        for layer, name in _linears(ar):
            src = getattr(layer, name).weight
            setattr(layer, name, native_linear.Int4Linear(src, getattr(layer, name).bias))
            if mmapped:
                release_pages(src)
        trim_heap()
        ar.act_dtype = torch.float32
        _use_native(ar, device)
        ar.decode_step = DecodeStep(ar)
        ar.kv_dtype = torch.int8
    elif quantize == "int8-dynamic":
        if device.type != "cpu":
            raise ValueError("quantize='int8-dynamic' runs on the CPU only; use 'int8-torchao' or "
                             "dtype=torch.bfloat16 on CUDA")
        _int8_dynamic(core.ar, device, mmapped, is_ar=True)
        _int8_dynamic(core.nar, device, mmapped, is_ar=False)
    elif quantize == "int8-weight":
        act = torch.bfloat16 if dtype == torch.float32 else dtype
        for stack in (core.ar, core.nar):
            for layer, name in _linears(stack):
                lin = getattr(layer, name)
                src = lin.weight
                if src.shape[1] % 16 or src.shape[1] < 32:  # the int8pack kernel needs K % 16 == 0
                    q = PackedLinear(src, lin.bias, act) if device.type == "cpu" and packing_available(act) \
                        else _cast_linear(lin, act, device)
                else:
                    q = Int8WeightLinear(lin, act).to(device)
                setattr(layer, name, q)
                if mmapped:
                    release_pages(src)
                trim_heap()
            stack.act_dtype = act
            stack.kv_dtype = torch.float32 if device.type == "cpu" else act
    elif quantize == "int8-torchao":
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except Exception as e:  # pragma: no cover - depends on the optional package
            raise ValueError(f"quantize='int8-torchao' needs torchao (pip install torchao==0.18.0): {e}")
        for stack in (core.ar, core.nar):
            for layer, name in _linears(stack):
                lin = getattr(layer, name)
                src = lin.weight
                lin.weight = nn.Parameter(src.detach().to(device, torch.float32), requires_grad=False)
                lin.bias = nn.Parameter(lin.bias.detach().to(device, torch.float32), requires_grad=False)
                if mmapped:
                    release_pages(src)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_(stack, Int8DynamicActivationInt8WeightConfig())
            stack.act_dtype = torch.float32
            stack.kv_dtype = torch.float32
