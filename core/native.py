"""The CPU kernels of `core/kernels/` (C): built once with the system C compiler, loaded
with ctypes, used when present.

Plain C + ctypes rather than a PyTorch C++ extension: it compiles in about a second (no torch
headers, no ninja) and needs nothing but `cc`. It is compiled with -march=native for the machine
it runs on, so the shared object is cached under a key made of the source, the flags and the CPU's
feature flags. The kernels' OpenMP regions run on PyTorch's own libgomp (torch/lib/libgomp.so.1 has
the same soname, so the loader reuses it): one thread pool, no oversubscription.

Everything here is optional. Without a compiler, on another OS or CPU architecture, or with
VALLEX_NATIVE=0, `available()` is False and the LM keeps to plain PyTorch ops. The float32
(reference-exact) mode uses only the float32 ones (its AR's Linears and decode attention: float32
sums, the golden tokens unchanged).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).with_name("kernels")  # *.c (one shared object) + common.h
FLAGS = ["-O3", "-fopenmp", "-std=c11", "-shared", "-fPIC"]  # + -march=$VALLEX_KERNEL_MARCH (native)

_lock = threading.Lock()
_lib = None
_tried = False
_why = ""


def cache_dir() -> Path:
    """VALLEX_KERNEL_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/vallex-studio/kernels."""
    if os.environ.get("VALLEX_KERNEL_CACHE"):
        return Path(os.environ["VALLEX_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vallex-studio" / "kernels"


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return flags


def _build() -> Path:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc / gcc) on PATH")
    sources = sorted(SOURCE_DIR.glob("*.c"))
    src = b"".join(f.name.encode() + f.read_bytes() for f in sorted(SOURCE_DIR.glob("*.[ch]")))
    flags = FLAGS + [f"-march={os.environ.get('VALLEX_KERNEL_MARCH', 'native')}"]
    key = hashlib.sha256(src + " ".join(flags).encode() + _cpu_key().encode()).hexdigest()[:16]
    out_dir = cache_dir()
    out = out_dir / f"vallex-kernels-{key}.so"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        p = subprocess.run([cc, *flags, "-o", tmp, *map(str, sources), "-lm"], capture_output=True, text=True,
                           timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{cc} failed: {p.stderr.strip()[-400:]}")
        os.replace(tmp, out)  # atomic: several processes may build at once
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _declare(lib) -> None:
    P, I, L, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.vx_attn_decode.argtypes = [P, L, P, P, L, L, P, I, I, I, I, P, P, P, F, I, I]
    lib.vx_attn_decode.restype = None
    lib.vx_linear_i8.argtypes = [P, L, I, I, P, P, P, P, P, I, I, I, I]
    lib.vx_linear_i8.restype = None
    lib.vx_pack_i8.argtypes = [P, L, I, I, P, P, P, I]
    lib.vx_pack_i8.restype = None
    lib.vx_linear_bf16.argtypes = [P, L, I, I, I, P, P, P, I, I, I, I]
    lib.vx_linear_bf16.restype = None
    lib.vx_linear_f32.argtypes = [P, L, I, I, P, P, P, I, I, I]
    lib.vx_linear_f32.restype = None
    lib.vx_has_linear_f32.argtypes = []
    lib.vx_has_linear_f32.restype = I
    lib.vx_linear_i4.argtypes = [P, L, I, I, P, P, P, P, I, I, I, I]
    lib.vx_linear_i4.restype = None
    lib.vx_has_linear_i4.argtypes = []
    lib.vx_has_linear_i4.restype = I
    lib.vx_linear_f16.argtypes = [P, L, I, I, I, P, P, P, P, I, I, I, I]
    lib.vx_linear_f16.restype = None
    lib.vx_has_linear_f16.argtypes = []
    lib.vx_has_linear_f16.restype = I
    lib.vx_has_linear_bf16.argtypes = []
    lib.vx_has_linear_bf16.restype = I
    lib.vx_bf16_dot.argtypes = [I]
    lib.vx_bf16_dot.restype = I
    lib.vx_bf16_fma_speedup.argtypes = []
    lib.vx_bf16_fma_speedup.restype = ctypes.c_double
    lib.vx_decode.argtypes = [P, I, P, I, I, I, I, P, I, L, L, I, P, P, P, I]
    lib.vx_decode.restype = None
    lib.vx_decode_logits.argtypes = [P, I, P, P, P, P, I, I, I, I, P, I, L, L, I, P, P, P, I]
    lib.vx_decode_logits.restype = None
    lib.vx_kv_quantize.argtypes = [P, I, P, P, I, P, P, I]
    lib.vx_kv_quantize.restype = None
    lib.vx_softmax_bf16.argtypes = [P, L, I, I]
    lib.vx_softmax_bf16.restype = None
    lib.vx_has_gemm_i8.argtypes = []
    lib.vx_has_gemm_i8.restype = I
    lib.vx_has_attn_full.argtypes = []
    lib.vx_has_attn_full.restype = I
    lib.vx_attn_full.argtypes = [P, P, P, P, P, P, I, I, I, I, I, F, I, I, I, I]
    lib.vx_attn_full.restype = None
    lib.vx_has_attn_i16.argtypes = []
    lib.vx_has_attn_i16.restype = I


def env_off(name: str) -> bool:
    """Whether the switch `name` (VALLEX_NATIVE, VALLEX_NAR_F16) is set to 0, false, no or off."""
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def load():
    """The loaded library, or None (the reason is in `why_unavailable()`)."""
    global _lib, _tried, _why
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if env_off("VALLEX_NATIVE"):
                raise RuntimeError("disabled by VALLEX_NATIVE=0")
            if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
                raise RuntimeError(f"built for Linux x86-64 only (this is {sys.platform}/{platform.machine()})")
            torch.get_num_threads()  # make sure torch (and its libgomp) is loaded first
            lib = ctypes.CDLL(str(_build()))
            _declare(lib)
            _choose_bf16_dot(lib)
            _lib = lib
        except Exception as e:  # any failure: stay on the PyTorch path
            _why = str(e)
            log.info("native decode kernels not used: %s", _why)
            _lib = None
        _tried = True
    return _lib


def _choose_bf16_dot(lib) -> None:
    """Which inner loop the bf16 Linears run (core/kernels/linear_float.c, daz_on): vdpbf16ps, or
    float32 FMAs where those are faster on this CPU (timed here, ~1 ms) or where it has no AVX-512
    BF16. Both give the same floats, so this choice changes speed only, never a token.
    VALLEX_BF16_DOT=vdpbf16ps / fma / auto (default) overrides it."""
    want = os.environ.get("VALLEX_BF16_DOT", "auto").strip().lower()
    if want in BF16_DOTS:
        if lib.vx_bf16_dot(int(want == "vdpbf16ps")) != (want == "vdpbf16ps"):
            log.warning("VALLEX_BF16_DOT=%s: this CPU has no AVX-512 BF16; using the FMAs", want)
        return
    if want not in ("", "auto"):
        log.warning("VALLEX_BF16_DOT=%r: use vdpbf16ps, fma or auto; timing both instead", want)
    speedup = lib.vx_bf16_fma_speedup()  # 0 without AVX-512 BF16: the FMA loops are all there is
    if speedup > 0:
        # the FMA loops also widen the weights and read float32 activations: x2.05 here gave x1.7
        # in the GEMM, so below ~x1.25 vdpbf16ps stays
        lib.vx_bf16_dot(int(speedup <= 1.25))
        log.info("bf16 Linears: float32 FMAs x%.2f vdpbf16ps here; using %s", speedup,
                 "vdpbf16ps" if speedup <= 1.25 else "the FMAs")


BF16_DOTS = ("vdpbf16ps", "fma")


def bf16_dot() -> str:
    """The bf16 Linears' inner loop in use: "vdpbf16ps" or "fma" ("" without the kernels)."""
    lib = load()
    return "" if lib is None else BF16_DOTS[0 if lib.vx_bf16_dot(-1) else 1]


def use_bf16_dot(name: str) -> bool:
    """From now on in this process, the bf16 Linears' inner loop `name` (one of BF16_DOTS); False
    where it cannot run here (vdpbf16ps without AVX-512 BF16, or no kernels)."""
    lib = load()
    if lib is None or name not in BF16_DOTS:
        return False
    lib.vx_bf16_dot(int(name == "vdpbf16ps"))
    return bf16_dot() == name


def available() -> bool:
    return load() is not None


def why_unavailable() -> str:
    load()
    return _why


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


KV_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # the kv codes of vx_attn_decode


def kv_quantize(x: torch.Tensor) -> torch.Tensor:
    """[..., D] float32 / bf16 -> the int8 KV cache's rows, int8 [..., D + 4]: D values and their
    float32 scale (max|x| / 127; value = scale * int8, rounded to nearest even). The same code
    (vx_kv_put_i8) as the fused decode step's, so every path writes the same bytes."""
    _check_kv_values(x)
    D = x.shape[-1]
    out = torch.empty(x.numel() // D, D + 4, dtype=torch.int8)
    kv_quantize_into(x.reshape(-1, D), out)
    return out.view(*x.shape[:-1], D + 4)


def _check_kv_values(x: torch.Tensor) -> None:
    # the kernel reads D values a row from a CPU pointer
    if _lib is None:
        raise RuntimeError(f"the native kernels are not loaded: {why_unavailable() or 'call native.load()'}")
    if x.dim() == 0 or x.shape[-1] == 0 or x.device.type != "cpu":
        raise ValueError(f"KV values {tuple(x.shape)} on {x.device.type}: expected a CPU tensor [..., D], D >= 1")


def kv_quantize_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """kv_quantize(x) written straight into `out` (a slice of an int8 cache, [..., D + 4]): no
    float32 copy of x and no second copy into the cache (the prefill's were ~8% of it)."""
    _check_kv_values(x)
    D = x.shape[-1]
    if (out.dtype != torch.int8 or out.shape != (*x.shape[:-1], D + 4) or x.dim() > 4
            or out.device.type != "cpu"):
        raise ValueError(f"int8 cache rows {tuple(out.shape)} {out.dtype} for values {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16) or x.stride(-1) != 1:
        x = x.float().contiguous()
    if out.stride(-1) != 1:
        raise ValueError("the cache rows must be contiguous in their last dimension")
    lead = x.dim() - 1  # up to 3 leading dims, padded to 3 with size-1 dims
    n = [1] * (3 - lead) + list(x.shape[:-1])
    xst = [0] * (3 - lead) + list(x.stride()[:-1])
    ost = [0] * (3 - lead) + list(out.stride()[:-1])
    arr = ctypes.c_int64 * 3
    _lib.vx_kv_quantize(x.data_ptr(), int(x.dtype == torch.bfloat16), arr(*xst), arr(*n), D, out.data_ptr(),
                        arr(*ost), torch.get_num_threads())


def kv_dequantize(rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 KV cache rows [..., D + 4] -> [..., D] values in dtype."""
    scale = rows[..., -4:].contiguous().view(torch.float32)
    return (rows[..., :-4].float() * scale).to(dtype)


def attn_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int,
                starts: torch.Tensor | None, scale: float) -> torch.Tensor:
    """One query row per (batch row, head) against keys [starts[b], n) of a static cache.

    q: float32 [B, H, D] with contiguous heads (any batch stride); k, v: [B, H, Smax, D] float32
    or bfloat16, or int8 rows [B, H, Smax, D + 4] (kv_quantize), contiguous in the last two dims,
    same strides; starts: int32 [B] or None. Returns float32 [B, H, D]."""
    # the kernel reads n keys of every (row, head) through raw pointers: refuse what does not fit
    if _lib is None:
        raise RuntimeError(f"the native kernels are not loaded: {why_unavailable() or 'call native.load()'}")
    if q.dim() != 3 or k.dim() != 4 or any(t.device.type != "cpu" for t in (q, k, v)):
        raise ValueError(f"attn_decode: q [B, H, D] and k, v [B, H, Smax, row] on the CPU, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, D = q.shape
    row = D + 4 if k.dtype == torch.int8 else D
    if (q.dtype != torch.float32 or q.stride(2) != 1 or q.stride(1) != D or k.dtype != v.dtype
            or k.dtype not in KV_KINDS or k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[-1] != row
            or k.stride() != v.stride() or k.stride(3) != 1 or k.stride(2) != row):
        raise ValueError(f"attn_decode: q {tuple(q.shape)} {q.dtype} and k, v {tuple(k.shape)} {k.dtype}: expected "
                         f"float32 q with contiguous heads and caches of rows of {row} with the same strides")
    if not 0 <= int(n) <= k.shape[2]:
        raise ValueError(f"attn_decode: {n} keys in a cache of {k.shape[2]} positions")
    if starts is not None:
        starts = starts.to(torch.int32).contiguous()
        if starts.shape != (B,) or (B and (int(starts.min()) < 0 or int(starts.max()) > int(n))):
            raise ValueError(f"attn_decode: starts {starts.tolist()} for {B} rows and {n} keys")
    out = torch.empty(B, H, D)
    _lib.vx_attn_decode(q.data_ptr(), q.stride(0), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1),
                        out.data_ptr(), B, H, D, int(n), _ptr(starts), None, None, float(scale),
                        KV_KINDS[k.dtype], torch.get_num_threads())
    return out


def softmax_(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of bf16 scores, in place (float32 sums, bf16 result); a row
    with every score -inf becomes zeros. Other dtypes or layouts: torch.softmax."""
    if _lib is None or s.dtype != torch.bfloat16 or not s.is_contiguous() or s.device.type != "cpu":
        return torch.softmax(s, -1)
    n = s.shape[-1]
    _lib.vx_softmax_bf16(s.data_ptr(), s.numel() // max(n, 1), n, torch.get_num_threads())
    return s


ATTN_INTS = {0: 0, 16: 1, 8: 2}  # attn_full's arithmetic -> vx_attn_full's mode (bf16, int16, int8)


def attn_full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              out_dtype: torch.dtype, prefix: int | None = None, ints: int = 0) -> torch.Tensor | None:
    """Attention of bf16 q [B, H, Sq, hd] over bf16 k, v [B, H, Sk, hd], any strides with the last
    dim contiguous (k and v: the same strides): e.g. views into the projection [B, S, 3, H, hd], or
    q the last Sq rows of a longer sequence. prefix None: unmasked (the NAR); an int: the AR's
    prefill mask (core.ar.prefix_mask of one unpadded row), the query at position i (of Sk) sees
    keys below max(prefix, i + 1). Returns [B, Sq, H * hd] in
    out_dtype (float32 or bfloat16), or None when the kernel does not cover the case (no AVX-512
    BF16, head size not a multiple of 16 up to 64): the caller then uses its matmul path.
    ints 16 or 8: integer arithmetic (core/kernels/attn_full.c): q, k, v and the probabilities as
    int16 (twice the float32 rate) or int8 (four times) with exact integer sums; where
    `attn_i16_available()`, else bf16."""
    if ints not in ATTN_INTS:
        raise ValueError(f"attn_full: ints must be one of {', '.join(map(str, ATTN_INTS))} (0: bf16), not {ints!r}")
    B, H, Sq, hd = q.shape
    Sk = k.shape[2]
    if (_lib is None or not _lib.vx_has_attn_full() or hd % 16 or hd > 64 or Sk == 0
            or (prefix is not None and Sq > Sk)
            or q.dtype != torch.bfloat16 or k.dtype != torch.bfloat16 or v.dtype != torch.bfloat16
            or k.stride() != v.stride() or k.stride(3) != 1 or q.stride(3) != 1
            or out_dtype not in (torch.float32, torch.bfloat16)):
        return None
    qst = (ctypes.c_int64 * 3)(*q.stride()[:3])
    kvst = (ctypes.c_int64 * 3)(*k.stride()[:3])
    out = torch.empty(B, Sq, H * hd, dtype=out_dtype)
    _lib.vx_attn_full(q.data_ptr(), qst, k.data_ptr(), v.data_ptr(), kvst, out.data_ptr(), B, H, Sq, Sk, hd,
                      float(scale), -1 if prefix is None else max(int(prefix), 0), int(out_dtype == torch.bfloat16),
                      ATTN_INTS[ints] if _lib.vx_has_attn_i16() else 0, torch.get_num_threads())
    return out


def attn_i16_available() -> bool:
    """Whether attn_full has its int16 mode here (AVX-512 BF16 and VNNI)."""
    lib = load()
    return lib is not None and bool(lib.vx_has_attn_full()) and bool(lib.vx_has_attn_i16())


def gemm_available() -> bool:
    """Whether vx_linear_i8 takes any number of rows (its tiled AVX-512 VNNI path)."""
    lib = load()  # not `_lib`: an Int8Linear built before anything loaded the kernels kept fbgemm
    return lib is not None and bool(lib.vx_has_gemm_i8())
