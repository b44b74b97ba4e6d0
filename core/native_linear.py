"""The Linear layers of the CPU modes over the native kernels (core/kernels/), and
the AR's fused decode step that chains them.

- Int8Linear (int8 mode): per-channel int8 weights, each activation row quantized on the fly
  (vx_linear_i8, AVX-512 VNNI).
- Int4Linear (int4 mode, the AR): 4-bit weights with a bf16 scale per 64 inputs, each activation
  row quantized on the fly to int8 (vx_linear_i4, AVX-512 VNNI): half the int8 weights' bytes for
  the memory-bound decode step.
- Bf16Linear (bf16 mode): bf16 weights, bf16 activations, float32 sums (vx_linear_bf16, AVX-512
  BF16). On this CPU class its one-row GEMV reads the weights at ~30 GB/s against ~16-18 for
  oneDNN's, and its GEMM runs at oneDNN's speed (~200 G MAC/s on 2 cores).
- F16Linear (bf16 mode, the NAR, where the CPU has AVX-512 FP16): the bf16 weights scaled per
  channel into float16, products in half precision, sums in float32 every 64 pair steps
  (vx_linear_f16): ~270-290 G MAC/s on 2 cores here against ~140-150 for Bf16Linear's GEMM, and a
  little closer to the exact sums.
- F32Linear (fp32 mode, the AR): float32 weights and sums (vx_linear_f32, AVX-512): a 10-row
  decode step's Linears in ~19 ms against ~43 for oneDNN's, one row in ~14 against ~19.
- DecodeStep: one decode position of a whole int8, int4, bf16 or fp32 AR stack in one C call.

Every Linear kind holds one packed copy of the weights that serves one row and hundreds, and each
gives each output row the same floats whatever rows come with it (a batch decodes exactly like
one request at a time). `forward(x, relu=False, out_dtype=None)`: ReLU and the output's rounding
happen in the kernel.
"""
from __future__ import annotations

import ctypes

import torch

from core import native

DECODE_ROWS = 8  # without the tiled GEMM (no VNNI), vx_linear_i8 takes up to this many rows; more: fbgemm
FUSED_ROWS = 16  # the fused decode step (no per-op overhead) still wins up to this many rows


def _lib():
    return native.load()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pad32(t: torch.Tensor) -> torch.Tensor:
    n = t.shape[0]
    out = torch.zeros(-(-n // 32) * 32, dtype=t.dtype)
    out[:n] = t
    return out


def pack_int8(w: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> the layout of vx_linear_i8: [ceil(N/32) * 2, ceil(K/4), 16, 4], zero-padded
    (4 consecutive k of 16 output rows per 64 bytes; N padded to whole 32-row panels)."""
    n, k = w.shape
    n32, k4 = -(-n // 32) * 32, -(-k // 4) * 4
    wp = torch.zeros(n32, k4, dtype=torch.int8)
    wp[:n, :k] = w
    return wp.view(n32 // 16, 16, k4 // 4, 4).permute(0, 2, 1, 3).contiguous()


def pack_float(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] -> the layout of vx_linear_bf16 / vx_linear_f16 (bfloat16 / float16: [ceil(N/32) * 2,
    ceil(K/2), 16, 2], 2 consecutive k of 16 output rows per 64 bytes) or of vx_linear_f32
    (float32: [ceil(N/32) * 2, K, 16, 1], one k of 16 output rows), zero-padded."""
    per = 2 if dtype in (torch.bfloat16, torch.float16) else 1  # k per 32-bit lane
    n, k = w.shape
    n32, kp = -(-n // 32) * 32, -(-k // per) * per
    wp = torch.zeros(n32, kp, dtype=dtype)
    wp[:n, :k] = w
    return wp.view(n32 // 16, 16, kp // per, per).permute(0, 2, 1, 3).contiguous()


I4_GROUP = 64  # inputs per int4 scale (vx_linear_i4's I4_GROUP)


CLIP_RATIOS = (1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76)  # of max |w| / 7, tried per group


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (q int8 [N, kp] in -8..7, bf16 scales [N, kp / 64]), w ~ q * scale: one
    scale per group of 64 inputs, the one of `clip ratio * max |w| / 7` (rounded to bf16: the
    kernel multiplies by the bf16 value) with the least squared error. Clipping the few largest
    values buys a finer grid for the rest: ~9.5% relative error on Gaussian weights against
    ~10.8% for plain max-abs scaling. K is zero-padded to kp (a multiple of 64)."""
    n, k = w.shape
    kp = -(-k // I4_GROUP) * I4_GROUP
    wf = torch.zeros(n, kp, dtype=torch.float32)
    wf[:, :k] = w.detach().float()
    g = wf.view(n, kp // I4_GROUP, I4_GROUP)
    amax = g.abs().amax(-1)

    def fit(scale):
        safe = torch.where(scale > 0, scale, torch.ones(()))
        return torch.round(g / safe[..., None]).clamp_(-8, 7)

    best = best_err = None
    for c in CLIP_RATIOS:
        scale = (amax * (c / 7.0)).to(torch.bfloat16).float()
        err = (fit(scale) * scale[..., None] - g).square_().sum(-1)
        if best is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return fit(best).to(torch.int8).view(n, kp), best.to(torch.bfloat16)


def pack_int4(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantize_int4's q, scale) -> vx_linear_i4's layout: nibbles uint8 [ceil(N/16), kp/64, 8, 64]
    (byte 4r + t of load l: output r's input 4l + t, +8, in the low nibble, input 32 + 4l + t in
    the high one) and bf16 scales [ceil(N/16), kp/64, 16]; N padded with zero weights and scales."""
    n, kp = q.shape
    n16, groups = -(-n // 16) * 16, kp // I4_GROUP
    u = torch.full((n16, kp), 8, dtype=torch.uint8)
    u[:n] = (q.to(torch.int16) + 8).to(torch.uint8)
    u = u.view(n16 // 16, 16, groups, 2, 8, 4).permute(0, 2, 4, 1, 5, 3)  # block, g, l, r, t, half
    packed = (u[..., 0] | (u[..., 1] << 4)).contiguous().view(n16 // 16, groups, 8, 64)
    sc = torch.zeros(n16, groups, dtype=torch.bfloat16)
    sc[:n] = scale
    return packed, sc.view(n16 // 16, 16, groups).permute(0, 2, 1).contiguous()


def int4_available() -> bool:
    """Whether vx_linear_i4 runs here at speed (AVX-512 VNNI); elsewhere the int4 mode is refused."""
    lib = _lib()
    return lib is not None and bool(lib.vx_has_linear_i4())


def bf16_available() -> bool:
    """Whether vx_linear_bf16 runs here (AVX-512: vdpbf16ps or float32 FMAs, the same floats)."""
    lib = _lib()
    return lib is not None and bool(lib.vx_has_linear_bf16())


def f16_available() -> bool:
    """Whether vx_linear_f16 runs here (AVX-512 FP16: the bf16 mode's NAR GEMMs at twice the rate)."""
    lib = _lib()
    return lib is not None and bool(lib.vx_has_linear_f16())


def f32_available() -> bool:
    """Whether vx_linear_f32 runs here (AVX-512)."""
    lib = _lib()
    return lib is not None and bool(lib.vx_has_linear_f32())


class NativeLinear(torch.nn.Module):
    """What the native Linears share: sizes, the packed weights `w`, a float32 bias `b` padded
    to 32, the kernel's call. The stacks (core/transformer.py) pass relu / out_dtype."""

    kind = -1  # LIN_I8 / LIN_BF16 / LIN_I4 / LIN_F32 of core/kernels/decode_step.c
    out_default = torch.float32

    def _rows(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        # the kernel reads in_features values a row from a CPU pointer: anything else would read
        # past the tensor
        if x.device.type != "cpu" or x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected a CPU tensor [..., {self.in_features}], "
                             f"got {x.device.type} {tuple(x.shape)}")
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        return (x2 if x2.stride(1) == 1 else x2.contiguous()), shape

    def _out(self, rows: int, out_dtype) -> torch.Tensor:
        out_dtype = out_dtype or self.out_default
        if out_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"out_dtype {out_dtype}: float32 or bfloat16")
        return torch.empty(rows, self.out_features, dtype=out_dtype)

    def c_struct(self) -> "_QLinear":
        scale, rowsum = getattr(self, "scale", None), getattr(self, "rowsum", None)
        return _QLinear(self.w.data_ptr(), _ptr(scale) or 0, _ptr(rowsum) or 0, _ptr(self.b) or 0,
                        self.out_features, self.in_features, self.kind)


class Int8Linear(NativeLinear):
    """An int8 Linear over vx_linear_i8, made from a dynamically quantized fbgemm Linear (same
    int8 weights). With the tiled GEMM (AVX-512 VNNI) it takes any number of rows and the fbgemm
    module is dropped; without it, more than DECODE_ROWS rows go to the fbgemm module."""

    kind = 0

    def __init__(self, dyn: torch.nn.Module):
        super().__init__()
        qw, bias = dyn._packed_params._weight_bias()
        if qw.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales = qw.q_per_channel_scales().float()
            zps = qw.q_per_channel_zero_points()
        else:
            scales = torch.full((qw.shape[0],), qw.q_scale(), dtype=torch.float32)
            zps = torch.full((qw.shape[0],), qw.q_zero_point())
        if bool((zps != 0).any()):
            raise ValueError("vx_linear_i8 needs symmetric int8 weights")
        self._set(qw.int_repr(), scales, bias)
        self.dyn = None if native.gemm_available() else dyn

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "Int8Linear":
        """Per-channel symmetric int8 weights quantized and packed in one native pass (scale
        max|w| / 127.5, as torch.ao's per-channel observer gives; vx_pack_i8): for a Linear that
        only runs in the native kernels (the fp32 AR's draft, core/speculate.py), with no fbgemm
        module made first. Needs the native library."""
        self = cls.__new__(cls)
        torch.nn.Module.__init__(self)
        w = weight.detach().to("cpu", torch.float32)
        w = w if w.stride(1) == 1 else w.contiguous()
        n, k = w.shape
        self.in_features, self.out_features = int(k), int(n)
        n32, k4 = -(-n // 32) * 32, -(-k // 4) * 4
        self.register_buffer("w", torch.zeros(n32 // 16, k4 // 4, 16, 4, dtype=torch.int8))
        self.register_buffer("scale", torch.zeros(n32))
        self.register_buffer("rowsum", torch.zeros(n32, dtype=torch.int32))
        self.register_buffer("b", None if bias is None else _pad32(bias.detach().float()))
        _lib().vx_pack_i8(w.data_ptr(), w.stride(0), n, k, self.w.data_ptr(), self.scale.data_ptr(),
                          self.rowsum.data_ptr(), torch.get_num_threads())
        self.dyn = None
        return self

    def _set(self, w: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        n, k = w.shape
        self.in_features, self.out_features = int(k), int(n)
        self.register_buffer("w", pack_int8(w))
        self.register_buffer("scale", _pad32(scales.float()))
        self.register_buffer("rowsum", _pad32(w.sum(1, dtype=torch.int32)))
        self.register_buffer("b", None if bias is None else _pad32(bias.detach().float()))

    def forward(self, x: torch.Tensor, relu: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """out_dtype: float32 (default), or bfloat16 (rounded in the kernel: the NAR's attention input)."""
        x2, shape = self._rows(x)
        y = self._out(x2.shape[0], out_dtype)
        if self.dyn is not None and (x2.shape[0] > DECODE_ROWS or x.dtype != torch.float32):
            r = self.dyn(x2)
            y.copy_(torch.relu_(r) if relu else r)
        else:
            x2 = x2 if x2.dtype == torch.float32 else x2.float()
            _lib().vx_linear_i8(x2.data_ptr(), x2.stride(0), x2.shape[0], self.in_features, self.w.data_ptr(),
                                self.scale.data_ptr(), self.rowsum.data_ptr(), _ptr(self.b), y.data_ptr(),
                                self.out_features, int(relu), int(y.dtype == torch.bfloat16),
                                torch.get_num_threads())
        return y.view(*shape[:-1], self.out_features)


class Int4Linear(NativeLinear):
    """A Linear with 4-bit group-wise weights over vx_linear_i4 (made from float weights). Any
    number of rows; each row's result is the same whatever rows come with it."""

    kind = 2

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = int(k), int(n)
        w, sc = pack_int4(*quantize_int4(weight))
        self.register_buffer("w", w)
        self.register_buffer("scale", sc)
        self.register_buffer("b", None if bias is None else _pad32(bias.detach().float()))

    def dequantized(self) -> torch.Tensor:
        """The float32 weights [N, K] the kernel multiplies by (q * scale): for tests and checks."""
        nb, groups = self.w.shape[:2]
        b = self.w.view(nb, groups, 8, 16, 4)
        u = torch.stack([b & 15, b >> 4], dim=-1)  # nb, g, l, r, t, half
        q = u.permute(0, 3, 1, 5, 2, 4).reshape(nb * 16, groups, 64).float() - 8
        s = self.scale.permute(0, 2, 1).reshape(nb * 16, groups, 1).float()
        return (q * s).reshape(nb * 16, -1)[:self.out_features, :self.in_features]

    def forward(self, x: torch.Tensor, relu: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        x2, shape = self._rows(x)
        x2 = x2 if x2.dtype == torch.float32 else x2.float()
        y = self._out(x2.shape[0], out_dtype)
        _lib().vx_linear_i4(x2.data_ptr(), x2.stride(0), x2.shape[0], self.in_features, self.w.data_ptr(),
                            self.scale.data_ptr(), _ptr(self.b), y.data_ptr(), self.out_features, int(relu),
                            int(y.dtype == torch.bfloat16), torch.get_num_threads())
        return y.view(*shape[:-1], self.out_features)


class Bf16Linear(NativeLinear):
    """A bf16 Linear over vx_linear_bf16: what torch's bf16 Linear computes (bf16 inputs and
    weights, float32 sums, + bias, rounded to bf16), with the sums in a fixed order per output.
    Needs `bf16_available()`."""

    kind = 1
    out_default = torch.bfloat16

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = int(k), int(n)
        self.register_buffer("w", pack_float(weight.detach().to(torch.bfloat16), torch.bfloat16))
        # the bias as the bf16 Linear holds it (bf16), kept as its float32 values
        self.register_buffer("b", None if bias is None else _pad32(bias.detach().to(torch.bfloat16).float()))

    def forward(self, x: torch.Tensor, relu: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x: float32 or bf16 (float32 is rounded to bf16 first); out_dtype: bfloat16 (default) or
        float32 (the bf16 values)."""
        x2, shape = self._rows(x)
        if x2.dtype not in (torch.float32, torch.bfloat16):
            x2 = x2.float()
        y = self._out(x2.shape[0], out_dtype)
        _lib().vx_linear_bf16(x2.data_ptr(), x2.stride(0), int(x2.dtype == torch.bfloat16), x2.shape[0],
                              self.in_features, self.w.data_ptr(), _ptr(self.b), y.data_ptr(), self.out_features,
                              int(relu), int(y.dtype == torch.bfloat16), torch.get_num_threads())
        return y.view(*shape[:-1], self.out_features)


class F16Linear(NativeLinear):
    """The bf16 mode's NAR Linear on CPUs with AVX-512 FP16 (vx_linear_f16): the bf16 weights,
    each output channel scaled by a power of two to max |w| in [0.5, 1) and stored as float16
    (exact); activation rows scaled likewise and rounded to float16; each lane sums 64 products in
    float16, then in float32; rounded to bf16 as Bf16Linear's. Twice Bf16Linear's GEMM rate here,
    and a little closer to the exact sums (core/kernels/linear_f16.c). Many rows (the NAR): it has
    no few-row GEMV. Needs `f16_available()`."""

    out_default = torch.bfloat16

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = int(k), int(n)
        w = weight.detach().to(torch.bfloat16).float()
        # times 2^-e with max |w| < 2^e: the channel's largest weight lands in [0.5, 1)
        amax = w.abs().amax(1)
        e = torch.where(amax > 0, torch.frexp(amax)[1], 0)
        self.register_buffer("w", pack_float(torch.ldexp(w, -e[:, None]).to(torch.float16), torch.float16))
        self.register_buffer("scale", _pad32(torch.ldexp(torch.ones(n), e)))
        self.register_buffer("b", None if bias is None else _pad32(bias.detach().to(torch.bfloat16).float()))

    def forward(self, x: torch.Tensor, relu: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x: float32 or bf16; out_dtype: bfloat16 (default) or float32 (the bf16 values)."""
        x2, shape = self._rows(x)
        if x2.dtype not in (torch.float32, torch.bfloat16):
            x2 = x2.float()
        y = self._out(x2.shape[0], out_dtype)
        _lib().vx_linear_f16(x2.data_ptr(), x2.stride(0), int(x2.dtype == torch.bfloat16), x2.shape[0],
                             self.in_features, self.w.data_ptr(), self.scale.data_ptr(), _ptr(self.b), y.data_ptr(),
                             self.out_features, int(relu), int(y.dtype == torch.bfloat16), torch.get_num_threads())
        return y.view(*shape[:-1], self.out_features)


class F32Linear(NativeLinear):
    """A float32 Linear over vx_linear_f32 (the fp32 mode's AR): float32 weights, inputs and sums,
    each output summed over k in order with one FMA a step, whatever rows come with it. One packed
    copy serves the decode step's rows (read once for all of them) and the prefill's GEMM. Needs
    `f32_available()`."""

    kind = 3

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = int(k), int(n)
        self.register_buffer("w", pack_float(weight.detach().float(), torch.float32))
        self.register_buffer("b", None if bias is None else _pad32(bias.detach().float()))

    def forward(self, x: torch.Tensor, relu: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        x2, shape = self._rows(x)
        x2 = x2 if x2.dtype == torch.float32 else x2.float()
        if out_dtype not in (None, torch.float32):
            raise ValueError(f"out_dtype {out_dtype}: F32Linear gives float32")
        y = self._out(x2.shape[0], torch.float32)
        _lib().vx_linear_f32(x2.data_ptr(), x2.stride(0), x2.shape[0], self.in_features, self.w.data_ptr(),
                             _ptr(self.b), y.data_ptr(), self.out_features, int(relu), torch.get_num_threads())
        return y.view(*shape[:-1], self.out_features)


class _QLinear(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("rowsum", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n", ctypes.c_int), ("k", ctypes.c_int), ("kind", ctypes.c_int)]


class _QLayer(ctypes.Structure):
    _fields_ = [("ln1_w", ctypes.c_void_p), ("ln1_b", ctypes.c_void_p), ("ln2_w", ctypes.c_void_p),
                ("ln2_b", ctypes.c_void_p), ("qkv", _QLinear), ("out", _QLinear), ("ff1", _QLinear),
                ("ff2", _QLinear)]


class _TokenIO(ctypes.Structure):
    _fields_ = [("emb", ctypes.c_void_p), ("emb_bf16", ctypes.c_int), ("ape", ctypes.c_void_p),
                ("norm_w", ctypes.c_void_p), ("norm_b", ctypes.c_void_p), ("head", _QLinear)]


class TokenIO:
    """What DecodeStep.logits adds around the step: the input rows `emb[code] + ape[position]`
    (ape = alpha * the positional table, computed by the caller with its own ops, so the sums are
    the floats they give), the final LayerNorm, the bf16 head. Holds the tensors it points into."""

    def __init__(self, emb: torch.Tensor, ape: torch.Tensor, norm, head: "Bf16Linear"):
        if (emb.dim() != 2 or emb.dtype not in (torch.bfloat16, torch.float32) or ape.dtype != torch.float32
                or emb.shape[1:] != ape.shape[1:] or tuple(norm.weight.shape) != (emb.shape[1],)
                or tuple(norm.bias.shape) != (emb.shape[1],) or not isinstance(head, (Bf16Linear, F32Linear))
                or head.in_features != emb.shape[1] or emb.device.type != "cpu" or ape.device.type != "cpu"):
            raise ValueError("TokenIO: CPU bf16 / float32 embedding rows [V, D], float32 positions [N, D], a "
                             "LayerNorm of width D and a Bf16Linear or F32Linear head from D")
        self.emb, self.ape = emb.detach().contiguous(), ape.detach().contiguous()
        self.norm_w, self.norm_b = norm.weight.detach().float().contiguous(), norm.bias.detach().float().contiguous()
        self.head = head
        self.n_codes, self.n_pos = self.emb.shape[0], self.ape.shape[0]
        self.c = _TokenIO(self.emb.data_ptr(), int(self.emb.dtype == torch.bfloat16), self.ape.data_ptr(),
                          self.norm_w.data_ptr(), self.norm_b.data_ptr(), head.c_struct())


class DecodeStep:
    """An AR stack's whole decode step (all layers, one new position per row) as one call of
    vx_decode: the per-op path spends ~3 ms a step in Python and op dispatch, as long as the
    attention itself. int8 and int4 Linear layers run over an int8 KV cache, bf16 ones over a bf16 cache,
    float32 ones over a float32 cache (`kv_dtype`). Holds pointers into the stack's tensors, so it
    lives as long as they do."""

    def __init__(self, stack):
        kinds = {type(getattr(layer, n)) for layer in stack.layers for n in ("qkv", "out", "ff1", "ff2")}
        if kinds not in ({Int8Linear}, {Int4Linear}, {Bf16Linear}, {F32Linear}):
            raise ValueError(f"a fused decode step needs one native Linear kind, not {kinds}")
        kind = kinds.pop()
        self.kv_dtype = {Bf16Linear: torch.bfloat16, F32Linear: torch.float32}.get(kind, torch.int8)
        # Rows it takes: up to FUSED_ROWS where it is the faster; fp32 any number, since its C
        # LayerNorm rounds differently from the per-op path's (torch's), and a batch must decode
        # exactly as its requests one by one
        self.max_rows = None if kind is F32Linear else FUSED_ROWS
        layers = []
        for layer in stack.layers:
            n1, n2 = layer.norm1, layer.norm2
            layers.append(_QLayer(n1.weight.data_ptr(), n1.bias.data_ptr(), n2.weight.data_ptr(),
                                  n2.bias.data_ptr(), *(getattr(layer, n).c_struct()
                                                        for n in ("qkv", "out", "ff1", "ff2"))))
        self.layers = (_QLayer * len(layers))(*layers)
        self.n_layers, self.d, self.h = len(layers), stack.d, stack.h
        self.d_ff = stack.layers[0].ff1.out_features
        self._keep = stack  # the pointers above are into its tensors

    def __call__(self, x: torch.Tensor, cache: torch.Tensor, slot: int, starts: torch.Tensor | None,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """x: float32 [B, D] (the new position's input); cache: [L, 2, R, H, Smax, row] of kv_dtype
        (int8 rows: row = hd + 4), contiguous; rows: None (R == B), or int32 [B], the cache row of
        each row of x (a batch whose finished rows were dropped: nothing is copied). Returns the
        residual stream after the last layer, [B, D] (not normed)."""
        self._check_cache(cache)
        if x.dim() != 2 or x.shape[1] != self.d or x.device.type != "cpu":
            raise ValueError(f"x {tuple(x.shape)}: expected float32 [rows, {self.d}] on the CPU")
        x = x.float().contiguous().clone()
        starts, rows, _ = self._check(cache, x.shape[0], slot, starts, rows, None)
        _lib().vx_decode(ctypes.byref(self.layers), self.n_layers, x.data_ptr(), x.shape[0], self.d, self.h, self.d_ff,
                         cache.data_ptr(), native.KV_KINDS[cache.dtype], cache.shape[2], cache.shape[4], int(slot),
                         None, _ptr(starts), _ptr(rows), torch.get_num_threads())
        return x

    def logits(self, io: TokenIO, codes: list[int], positions: list[int], cache: torch.Tensor, slot: int,
               starts: torch.Tensor | None, rows: torch.Tensor | None = None,
               slots: list[int] | None = None) -> torch.Tensor:
        """The step from the new positions' codes to the head's logits, in one call: the AR's
        decode loop has no other PyTorch op per step. codes, positions: one int per row (into
        io's tables); slots: None (every row at `slot`) or one cache slot per row, for rows of one
        sequence at consecutive positions (core/speculate.py: each row sees the keys up to its own
        slot and gives the floats it gives alone); the rest as in __call__. Returns float32 [B, V]."""
        codes, positions = [int(c) for c in codes], [int(p) for p in positions]
        B = len(codes)
        if B == 0 or len(positions) != B:
            raise ValueError(f"{B} codes and {len(positions)} positions: expected one of each per row")
        if min(codes) < 0 or max(codes) >= io.n_codes:
            raise ValueError(f"codes {list(codes)} outside the embedding's {io.n_codes} rows")
        if min(positions) < 0 or max(positions) >= io.n_pos:
            raise ValueError(f"positions {list(positions)} outside the table's {io.n_pos} rows")
        if io.emb.shape[1] != self.d:
            raise ValueError(f"embedding width {io.emb.shape[1]} for a step of width {self.d}")
        self._check_cache(cache)
        starts, rows, slots = self._check(cache, B, slot, starts, rows, slots)
        out = torch.empty(B, io.head.out_features)
        _lib().vx_decode_logits(ctypes.byref(self.layers), self.n_layers, ctypes.byref(io.c),
                                (ctypes.c_int64 * B)(*codes), (ctypes.c_int64 * B)(*positions), out.data_ptr(),
                                B, self.d, self.h, self.d_ff,
                                cache.data_ptr(), native.KV_KINDS[cache.dtype], cache.shape[2], cache.shape[4],
                                int(slot), None if slots is None else slots, _ptr(starts), _ptr(rows),
                                torch.get_num_threads())
        return out

    def _check_cache(self, cache: torch.Tensor) -> None:
        # the kernel reads and writes the cache through a raw pointer with these sizes
        if cache.dtype != self.kv_dtype:
            raise ValueError(f"a {cache.dtype} cache for a step over a {self.kv_dtype} one")
        hd = self.d // self.h
        row = hd + 4 if self.kv_dtype == torch.int8 else hd
        if (cache.dim() != 6 or cache.shape[:2] != (self.n_layers, 2) or cache.shape[3] != self.h
                or cache.shape[5] != row or not cache.is_contiguous() or cache.device.type != "cpu"):
            raise ValueError(f"cache {tuple(cache.shape)}: expected a contiguous CPU tensor "
                             f"[{self.n_layers}, 2, rows, {self.h}, positions, {row}]")

    def _check(self, cache, B, slot, starts, rows, slots):
        """starts, rows and slots as the kernel reads them (int32), after checking they fit the cache."""
        low = int(slot)
        if slots is not None:
            slots = [int(v) for v in slots]
            if len(slots) != B or low != min(slots) or max(slots) >= cache.shape[4]:
                raise ValueError(f"slots {slots} for {B} rows (slot {slot}, their least) and a cache of "
                                 f"{cache.shape[4]} positions")
            slots = (ctypes.c_int32 * B)(*slots)
        if not 0 <= low < cache.shape[4]:
            raise ValueError(f"slot {slot} is outside the cache's {cache.shape[4]} positions")
        if starts is not None:
            starts = starts.to(torch.int32).contiguous()
            if starts.shape != (B,) or int(starts.min()) < 0 or int(starts.max()) > low:
                raise ValueError(f"key starts {starts.tolist()} do not fit {B} rows at slot {slot}")
        if rows is None and cache.shape[2] != B:
            raise ValueError(f"{B} rows against a cache of {cache.shape[2]} and no row map")
        if rows is not None:
            rows = rows.to(torch.int32).contiguous()
            if rows.shape != (B,) or int(rows.min()) < 0 or int(rows.max()) >= cache.shape[2]:
                raise ValueError(f"row map {rows.tolist()} does not fit {B} rows and a cache of {cache.shape[2]}")
        return starts, rows, slots
