"""The Linear layers of the CPU modes over the native kernels (core/kernels/). The AR's fused
decode step that chains them is core/decode_step.py.

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


class QLinear(ctypes.Structure):
    """A native Linear as the fused decode step's C code reads it (core/kernels/common.h)."""
    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("rowsum", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n", ctypes.c_int), ("k", ctypes.c_int), ("kind", ctypes.c_int)]


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

    def c_struct(self) -> "QLinear":
        scale, rowsum = getattr(self, "scale", None), getattr(self, "rowsum", None)
        return QLinear(self.w.data_ptr(), _ptr(scale) or 0, _ptr(rowsum) or 0, _ptr(self.b) or 0,
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
        """Per-channel symmetric int8 weights quantized and packed in one native pass
        (vx_pack_i8): the int8 values, scales and row sums `Int8Linear(quantize_dynamic(...))`
        holds, bit for bit, with no fbgemm module made first. For Linears that only run in the
        native kernels: the int8 mode's where the VNNI GEMM runs (core/quantize.py) and the fp32
        AR's draft (core/speculate.py). Needs the native library."""
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
