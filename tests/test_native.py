"""The native kernels (core/kernels/ via core/native.py): each against plain PyTorch, the
int8 engine's fused decode step against its per-op path, and the fallback when they can't be built."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from core import decode_step, native, native_linear
from core.lm import LMRequest, VallEX
from core.sampling import Sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.why_unavailable()}")
needs_bf16 = pytest.mark.skipif(not native_linear.bf16_available(), reason="no AVX-512 BF16 kernels")
needs_int4 = pytest.mark.skipif(not native_linear.int4_available(), reason="no AVX-512 VNNI int4 kernel")
needs_f32 = pytest.mark.skipif(not native_linear.f32_available(), reason="no AVX-512 float32 kernel")
# the modes with a fused decode step: int8 and int4 (int8 cache), bf16 (bf16 cache, where AVX-512 BF16 runs),
# fp32 (float32 cache, where AVX-512 runs)
FUSED_MODES = ["int8", pytest.param("int4", marks=needs_int4), pytest.param("bf16", marks=needs_bf16),
               pytest.param("fp32", marks=needs_f32)]


def _sdpa_reference(q, k, v, n, starts):
    """float32 SDPA of one query per (row, head) over keys [start_b, n)."""
    B = q.shape[0]
    keep = torch.arange(n)[None, :] >= torch.as_tensor(starts if starts is not None else [0] * B)[:, None]
    return F.scaled_dot_product_attention(q[:, :, None].float(), k[:, :, :n].float(), v[:, :, :n].float(),
                                          attn_mask=keep[:, None, None, :])[:, :, 0]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("D", [128, 64, 32, 48, 24, 4])
def test_attention_decode_matches_sdpa(dtype, D):
    g = torch.Generator().manual_seed(D)
    B, H, smax, n = 3, 5, 41, 33  # 33 keys: two blocks of 16 and a tail of one
    q = torch.randn(B, H, D, generator=g)
    k, v = (torch.randn(B, H, smax, D, generator=g) for _ in range(2))
    if dtype == torch.int8:  # rows of D values + a float32 scale; the truth is what they stand for
        k, v = native.kv_quantize(k), native.kv_quantize(v)
        kf, vf = native.kv_dequantize(k), native.kv_dequantize(v)
        nan = torch.tensor([float("nan")]).view(torch.int8)
        k[:, :, n:, -4:] = nan  # past the current length: must never be read
        v[:, :, n:, -4:] = nan
    else:
        k, v = k.to(dtype), v.to(dtype)
        k[:, :, n:] = float("nan")
        v[:, :, n:] = float("nan")
        kf, vf = k, v
    starts = torch.tensor([0, 5, 32], dtype=torch.int32)  # left padding; the last row sees one key
    # int8 rows with D % 32 == 0 go through the integer kernel: q and the softmax weights are
    # rounded to int16 (steps of 1/32767 of the largest), ~3e-5 here; the others sum floats.
    tol = dict(rtol=0, atol=2e-4) if dtype == torch.int8 and D % 32 == 0 else dict(rtol=1e-5, atol=1e-5)
    got = native.attn_decode(q, k, v, n, starts, D ** -0.5)
    want = _sdpa_reference(q, kf, vf, n, starts.tolist())
    torch.testing.assert_close(got, want, **tol)
    # A query with a batch stride (a view into a packed q|k|v row) gives the same.
    qkv = torch.randn(B, 3, H, D, generator=g)
    qkv[:, 0] = q
    torch.testing.assert_close(native.attn_decode(qkv[:, 0], k, v, n, None, D ** -0.5),
                               _sdpa_reference(q, kf, vf, n, None), **tol)


@needs_native
def test_attention_decode_refuses_what_does_not_fit():
    # raw pointers into the cache: a length past it, bad starts or mismatched shapes are refused
    q = torch.randn(2, 3, 64)
    k = native.kv_quantize(torch.randn(2, 3, 10, 64))
    for args in [(q, k, k, 11, None), (q, k, k, -1, None), (q, k, k, 5, torch.tensor([0, 6], dtype=torch.int32)),
                 (q, k, k, 5, torch.tensor([0], dtype=torch.int32)), (q[:1], k, k, 5, None),
                 (q, k, k[..., :-1], 5, None), (q.double(), k, k, 5, None), (q[0], k, k, 5, None)]:
        with pytest.raises(ValueError, match="attn_decode"):
            native.attn_decode(*args, 0.125)
    assert native.attn_decode(q, k, k, 10, torch.tensor([0, 10], dtype=torch.int32), 0.125).shape == (2, 3, 64)


@needs_native
@pytest.mark.parametrize("n", [1, 487, 489, 3001])
def test_int8_attention_decode_long_and_degenerate(n):
    # The integer kernel's int32 sums: the weight scale coarsens past 488 keys so that even equal
    # weights on values all at the int8 extreme (the largest possible sum) do not overflow.
    D, H = 64, 2
    q = torch.zeros(1, H, D)  # all scores equal: uniform weights
    k = native.kv_quantize(torch.randn(1, H, n, D))
    x = torch.full((1, H, n, D), 3.0)
    x[:, 1, :, ::2] = -3.0
    v = native.kv_quantize(x)  # every value row: +-127 x scale 3/127
    got = native.attn_decode(q, k, v, n, None, D ** -0.5)
    torch.testing.assert_close(got, x[:, :, 0], rtol=0, atol=1e-3)
    # a value cache of zeros (every row's scale 0) and a query of zeros give zeros, not NaN
    assert torch.equal(native.attn_decode(q, k, native.kv_quantize(torch.zeros(1, H, n, D)), n, None, 0.125),
                       torch.zeros(1, H, D))
    # one peaked key among many: its value row comes back
    q = torch.zeros(1, H, D)
    q[..., 0] = 400.0  # a score of 50 after the 1/8 scale, 0 for the others
    kk = torch.zeros(1, H, n, D)
    kk[:, :, n // 2, 0] = 1.0
    vv = torch.randn(1, H, n, D)
    got = native.attn_decode(q, native.kv_quantize(kk), native.kv_quantize(vv), n, None, D ** -0.5)
    want = _sdpa_reference(q, native.kv_dequantize(native.kv_quantize(kk)),
                           native.kv_dequantize(native.kv_quantize(vv)), n, None)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)


@needs_native
@pytest.mark.parametrize("D", [64, 20])
def test_int8_kv_rows(D):
    # Each row: D int8 values and a float32 scale = max|x| / 127 (the largest value maps to
    # +-127), rounded to nearest even; a row of zeros stays zeros (no 0 / 0).
    g = torch.Generator().manual_seed(D)
    x = torch.randn(3, 7, D, generator=g) * torch.logspace(-3, 3, 7)[:, None]
    x[1, 2] = 0.0
    rows = native.kv_quantize(x.bfloat16())  # the prefill's bf16 keys
    assert rows.dtype == torch.int8 and rows.shape == (3, 7, D + 4)
    xb = x.bfloat16().float()
    scale = rows[..., -4:].contiguous().view(torch.float32)[..., 0]
    torch.testing.assert_close(scale, xb.abs().amax(-1) / 127, rtol=0, atol=0)
    want = torch.where(scale[..., None] > 0, xb / scale[..., None], 0.0).round().to(torch.int8)
    assert torch.equal(rows[..., :D], want)
    assert int(rows[..., :D].abs().amax(-1)[scale > 0].min()) == 127
    assert not bool(rows[1, 2].any())
    err = (native.kv_dequantize(rows) - xb).abs()
    assert bool((err <= scale[..., None] / 2 * 1.0001).all())


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_kv_rows_written_into_a_cache_slice(dtype):
    # The prefill's path: keys as a strided view of the projection [B, S, 3, H, hd], quantized
    # straight into a slice of the cache [B, H, Smax, hd + 4]: the bytes kv_quantize gives, and
    # nothing outside the slice touched.
    g = torch.Generator().manual_seed(3)
    B, S, H, hd = 2, 9, 3, 64
    k = torch.randn(B, S, 3, H, hd, generator=g).to(dtype)[:, :, 1].transpose(1, 2)  # [B, H, S, hd]
    cache = torch.full((B, H, 20, hd + 4), 7, dtype=torch.int8)
    native.kv_quantize_into(k, cache[:, :, 4:4 + S])
    assert torch.equal(cache[:, :, 4:4 + S], native.kv_quantize(k.contiguous()))
    assert bool((cache[:, :, :4] == 7).all()) and bool((cache[:, :, 4 + S:] == 7).all())
    one = torch.zeros(B, H, hd + 4, dtype=torch.int8)  # one position (the per-op decode step)
    native.kv_quantize_into(k[:, :, 0], one)
    assert torch.equal(one, cache[:, :, 4])
    with pytest.raises(ValueError, match="int8 cache rows"):
        native.kv_quantize_into(k, cache[:, :, :S - 1])
    with pytest.raises(ValueError, match="int8 cache rows"):
        native.kv_quantize_into(k, cache[:, :, :S].float())
    for bad in (torch.tensor(1.0), torch.zeros(3, 0)):  # no value dimension, no values a row
        with pytest.raises(ValueError, match="KV values"):
            native.kv_quantize_into(bad, torch.zeros(4, dtype=torch.int8))
        with pytest.raises(ValueError, match="KV values"):
            native.kv_quantize(bad)


@needs_native
@pytest.mark.parametrize("n", [1, 15, 16, 33, 633])
def test_softmax_kernel_matches_torch(n):
    torch.manual_seed(n)
    s = (torch.randn(2, 3, 7, n) * 6).bfloat16()
    s[0, 0, 0, : n // 2] = float("-inf")  # masked keys: exactly zero
    s[1, 2, 3] = float("-inf")  # a row with every key masked: zeros, not NaN
    want = torch.softmax(s.float(), -1).nan_to_num(0.0)
    got = native.softmax_(s)
    assert got.data_ptr() == s.data_ptr() and got.dtype == torch.bfloat16  # in place
    got = got.float()
    # within one bf16 rounding of the exact probabilities
    torch.testing.assert_close(got, want, rtol=8e-3, atol=1e-6)
    assert bool((got[0, 0, 0, : n // 2] == 0).all()) and bool((got[1, 2, 3] == 0).all())
    assert torch.isfinite(got).all()
    # not contiguous / not bf16: falls back to torch.softmax
    f = torch.randn(3, n)
    torch.testing.assert_close(native.softmax_(f), torch.softmax(f, -1))


@needs_native
@pytest.mark.parametrize("B, H, S, hd, q_from", [(1, 16, 633, 64, 0), (2, 3, 37, 16, 0), (1, 4, 50, 48, 7),
                                                 (2, 2, 1, 32, 0), (1, 2, 17, 64, 16)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_full_attention_kernel_matches_sdpa(B, H, S, hd, q_from, out_dtype):
    torch.manual_seed(S)
    q, k, v = (torch.randn(B, H, S, hd) * a for a in (1.0, 2.0, 1.0))
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    qq = q[:, :, q_from:]  # the NAR's last layer: only the last rows' queries
    got = native.attn_full(qq, k, v, hd ** -0.5, out_dtype)
    if got is None:
        pytest.skip("no AVX-512 BF16: the matmul path is used")
    want = F.scaled_dot_product_attention(qq.float(), k.float(), v.float())
    want = want.transpose(1, 2).reshape(B, S - q_from, H * hd)
    assert got.dtype == out_dtype and got.shape == want.shape
    # bf16 probabilities, float32 sums: well inside the matmul path's own error (~3e-2)
    assert (got.float() - want).abs().max() < (1e-2 if out_dtype == torch.bfloat16 else 5e-3)


@needs_native
@pytest.mark.parametrize("B, S, H, hd, q_from", [(1, 45, 4, 64, 0), (2, 30, 3, 32, 11)])
def test_full_attention_kernel_reads_views_of_the_projection(B, S, H, hd, q_from):
    # q, k, v straight from the packed projection [B, S, 3, H, hd] (the NAR path): same result
    # as from contiguous copies.
    torch.manual_seed(B + S)
    qkv = torch.randn(B, S, 3, H, hd).bfloat16()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    got = native.attn_full(q[:, :, q_from:], k, v, hd ** -0.5, torch.float32)
    if got is None:
        pytest.skip("no AVX-512 BF16: the matmul path is used")
    want = native.attn_full(q[:, :, q_from:].contiguous(), k.contiguous(), v.contiguous(), hd ** -0.5, torch.float32)
    assert torch.equal(got, want)
    ref = F.scaled_dot_product_attention(q[:, :, q_from:].float(), k.float(), v.float())
    assert (got - ref.transpose(1, 2).reshape(B, S - q_from, H * hd)).abs().max() < 5e-3


@needs_native
@pytest.mark.parametrize("B, H, S, hd, L, q_from", [(1, 16, 250, 64, 24, 0), (1, 3, 37, 16, 5, 0), (2, 2, 70, 48, 1, 0),
                                                    (1, 4, 50, 64, 13, 49), (1, 2, 33, 32, 33, 0), (1, 2, 40, 64, 9, 30)])
def test_full_attention_kernel_prefix_mask_matches_the_masked_sdpa(B, H, S, hd, L, q_from):
    # The AR prefill: text rows (the first L) see all text, audio rows the text and themselves
    # causally: the mask core.ar builds, given to the kernel as its length L. The last layer
    # (q_from) takes only the last queries; skipped key blocks must not change any row.
    from core.ar import prefix_mask

    torch.manual_seed(S + L)
    q, k, v = (torch.randn(B, H, S, hd) * a for a in (1.0, 2.0, 1.0))
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    got = native.attn_full(q[:, :, q_from:], k, v, hd ** -0.5, torch.float32, prefix=L)
    if got is None:
        pytest.skip("no AVX-512 BF16: the matmul path is used")
    mask = prefix_mask([L], [S], S, "cpu")[..., q_from:, :]
    want = F.scaled_dot_product_attention(q[:, :, q_from:].float(), k.float(), v.float(), attn_mask=mask)
    want = want.transpose(1, 2).reshape(B, S - q_from, H * hd)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 5e-3
    # row independence: a query's result is the same with or without the earlier queries
    last = native.attn_full(q[:, :, S - 1:], k, v, hd ** -0.5, torch.float32, prefix=L)
    assert torch.equal(last, got[:, -1:])
    # more queries than keys has no prefix mask: not covered (the caller's matmul path)
    assert native.attn_full(q, k[:, :, :S // 2], v[:, :, :S // 2], 0.1, torch.float32, prefix=L) is None


@needs_native
@pytest.mark.parametrize("S", [37, 70])
def test_full_attention_kernel_all_scores_far_below_zero(S):
    # Every score in about -150..-100: exp underflows unless the softmax subtracts the true row maximum. The
    # kernel takes that maximum as it makes the scores, over the real keys only (S is not a
    # multiple of 16, so the last key block is padded with zero scores).
    torch.manual_seed(S)
    hd = 64
    q = torch.randn(1, 2, S, hd).abs() + 1.0
    k = -(torch.rand(1, 2, S, hd) + 1.0) * 6.0
    v = torch.randn(1, 2, S, hd)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    got = native.attn_full(q, k, v, hd ** -0.5, torch.float32)
    if got is None:
        pytest.skip("no AVX-512 BF16: the matmul path is used")
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2).reshape(1, S, 2 * hd)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() < 2e-2


needs_attn_i16 = pytest.mark.skipif(not native.attn_i16_available(), reason="no int16 attention (AVX-512 BF16 + VNNI)")


def _attn_i16_case(B, H, S, hd, seed, peaked=False):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, S, 3, H, hd, generator=g) * torch.tensor([1.0, 2.0, 1.0])[:, None, None]
    if peaked:  # one key far above the rest, which are hundreds of small probabilities
        qkv[:, :, 0] = qkv[:, :, 0].abs() + 1.0
        qkv[:, 3, 1] = qkv[:, 3, 1].abs() * 2.0 + 2.0
    qkv = qkv.bfloat16()
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


@needs_attn_i16
@pytest.mark.parametrize("ints", [16, 8])
@pytest.mark.parametrize("B, H, S, hd, q_from, prefix, peaked", [
    (1, 16, 633, 64, 0, None, False), (1, 16, 633, 64, 249, None, True), (2, 3, 37, 16, 0, None, False),
    (1, 4, 130, 48, 7, None, False), (2, 2, 1, 32, 0, None, False), (1, 16, 250, 64, 0, 24, False),
    (1, 4, 50, 64, 49, 13, True), (1, 2, 33, 32, 0, 33, False), (1, 2, 131, 16, 0, None, True)])
def test_full_attention_integer_modes_match_sdpa(B, H, S, hd, q_from, prefix, peaked, ints):
    """The integer attention (q, k, v and probabilities as int16 or int8, integer sums, views of the
    projection) over several 64-key chunks of the weighted values, with the prefix mask, the last
    layer's q_from and a peaked distribution: int16 as close to float32 attention as the bf16 path,
    int8 within ~2% (7 bits of each row's, column's, chunk's largest)."""
    from core.ar import prefix_mask

    q, k, v = _attn_i16_case(B, H, S, hd, S + hd + q_from, peaked)
    got = native.attn_full(q[:, :, q_from:], k, v, hd ** -0.5, torch.float32, prefix, ints=ints)
    bf16 = native.attn_full(q[:, :, q_from:], k, v, hd ** -0.5, torch.float32, prefix)
    mask = None if prefix is None else prefix_mask([prefix], [S], S, "cpu")[..., q_from:, :]
    want = F.scaled_dot_product_attention(q[:, :, q_from:].float(), k.float(), v.float(), attn_mask=mask)
    want = want.transpose(1, 2).reshape(B, S - q_from, H * hd)
    assert got.shape == want.shape and torch.isfinite(got).all()
    err, err_bf16 = (got - want).abs().max().item(), (bf16 - want).abs().max().item()
    if ints == 16:
        assert err < 5e-3 and err < 2 * err_bf16 + 1e-3, (err, err_bf16)
    else:
        rel = ((got - want).norm() / want.norm()).item()
        assert err < 0.1 and rel < 0.03, (err, rel)
    if S > 1:
        assert not torch.equal(got, bf16)  # the integer arithmetic ran, not the bf16 one
    # row independence, and the same result from contiguous copies
    last = native.attn_full(q[:, :, S - 1:], k, v, hd ** -0.5, torch.float32, prefix, ints=ints)
    assert torch.equal(last, got[:, -1:])
    copies = native.attn_full(q[:, :, q_from:].contiguous(), k.contiguous(), v.contiguous(), hd ** -0.5,
                              torch.float32, prefix, ints=ints)
    assert torch.equal(copies, got)


@needs_attn_i16
def test_full_attention_int8_and_int16_modes_differ_by_their_rounding():
    # the two integer modes run different arithmetic (not one silently falling back to the other),
    # and the int8 one is the coarser
    q, k, v = _attn_i16_case(1, 4, 200, 64, 11)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2).reshape(1, 200, 256)
    e16, e8 = ((native.attn_full(q, k, v, 0.125, torch.float32, ints=i) - want).norm() / want.norm() for i in (16, 8))
    assert 5 * e16 < e8 < 0.03


@pytest.mark.parametrize("ints", [True, 7, 32, "8", None])
def test_full_attention_refuses_an_unknown_arithmetic(ints):
    # not silently bf16: True == 1 and "8" look like modes but are not
    q = torch.zeros(1, 1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"ints must be one of 0, 16, 8"):
        native.attn_full(q, q, q, 0.25, torch.float32, ints=ints)


@needs_attn_i16
@pytest.mark.parametrize("ints", [16, 8])
def test_full_attention_integer_modes_degenerate_inputs(ints):
    # scores far below zero (the row maximum must be subtracted), all-zero keys and values (scale
    # 1, uniform weights), a bf16 output
    torch.manual_seed(5)
    S, hd = 70, 64
    q = (torch.randn(1, 2, S, hd).abs() + 1.0).bfloat16()
    k = (-(torch.rand(1, 2, S, hd) + 1.0) * 6.0).bfloat16()
    v = torch.randn(1, 2, S, hd).bfloat16()
    got = native.attn_full(q, k, v, hd ** -0.5, torch.float32, ints=ints)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2).reshape(1, S, 2 * hd)
    # (a peaked softmax: int8's ~0.03 in each score is ~3% of a probability)
    assert torch.isfinite(got).all() and (got - want).abs().max() < (2e-2 if ints == 16 else 0.1)
    z = torch.zeros_like(k)
    assert torch.equal(native.attn_full(q, z, z, hd ** -0.5, torch.float32, ints=ints), torch.zeros(1, S, 2 * hd))
    got = native.attn_full(q, z, v, hd ** -0.5, torch.bfloat16, ints=ints)
    mean = v.float().mean(2, keepdim=True).expand(-1, -1, S, -1).transpose(1, 2).reshape(1, S, 2 * hd)
    assert got.dtype == torch.bfloat16 and (got.float() - mean).abs().max() < 1e-2
    # a non-finite key (a corrupt checkpoint upstream) stays within its own head
    bad = k.clone()
    bad[0, 1, 5, 3] = float("nan")
    got = native.attn_full(q, bad, v, hd ** -0.5, torch.float32, ints=ints).view(1, S, 2, hd)
    clean = native.attn_full(q, k, v, hd ** -0.5, torch.float32, ints=ints).view(1, S, 2, hd)
    assert torch.equal(got[:, :, 0], clean[:, :, 0])


@needs_attn_i16
def test_int8_mode_runs_its_attention_in_integers(golden):
    ckpt = golden / "model" / "tiny-a" / "checkpoint.pt"
    m = VallEX.from_checkpoint(ckpt, n_heads=4, quantize="int8")
    assert m.core.nar.attn_ints == 8 and m.core.ar.attn_ints == 16
    bf16 = VallEX.from_checkpoint(ckpt, n_heads=4, dtype=torch.bfloat16).core
    assert not bf16.ar.attn_ints  # the bf16 mode's AR keeps the bf16 attention; its NAR takes the
    assert bool(bf16.nar.attn_ints) == native_linear.f16_available()  # int16 one with the float16 GEMM


@needs_attn_i16
def test_int8_mode_nar_on_int8_attention_stays_close(tmp_path):
    """A random d=128 model with 64-wide heads (the kernel's case; the golden models' heads are
    narrower and take the matmul path): the int8 mode's NAR on its int8 attention agrees with
    fp32's codes about as well as on the int16 one, and the two did run different arithmetic."""
    from tests.tiny_models import make_vallex_checkpoint

    path = make_vallex_checkpoint(tmp_path / "m.pt", d_model=128, n_heads=2, n_layers=3, seed=7)
    fp32, int8 = VallEX.from_checkpoint(path, n_heads=2), VallEX.from_checkpoint(path, n_heads=2, quantize="int8")
    assert int8.core.nar.attn_ints == 8
    agree, differ = {8: [], 16: []}, 0
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        n_text = int8.config["n_text"]
        ids, langs = torch.randint(1, n_text, (14,), generator=g), torch.zeros(14, dtype=torch.long)
        prompt, ar = torch.randint(0, 1024, (90, 8), generator=g), torch.randint(0, 1024, (120,), generator=g)
        want = fp32.generate_nar(ids, langs, 5, prompt, ar)
        got = {}
        for ints in (8, 16):
            int8.core.nar.attn_ints = ints
            got[ints] = int8.generate_nar(ids, langs, 5, prompt, ar)
            assert torch.equal(got[ints][:, 0], ar)
            agree[ints].append(float((got[ints][:, 1:] == want[:, 1:]).float().mean()))
        differ += int(not torch.equal(got[8], got[16]))
    a8, a16 = (sum(v) / len(v) for v in (agree[8], agree[16]))
    assert a8 > 0.8 and a8 >= a16 - 0.05, (a8, a16)
    assert differ  # int8 attention ran (its codes differ from the int16 ones somewhere)


def test_int8_linear_made_before_the_kernels_load_takes_the_native_gemm():
    # gemm_available() loads the kernels itself: an Int8Linear built first thing in a process
    # (nothing had loaded them) kept fbgemm for its many-row calls before
    code = (
        "import torch, warnings; warnings.simplefilter('ignore')\n"
        "from torch.ao.quantization import quantize_dynamic\n"
        "from core import native_linear, native\n"
        "dyn = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 32)), {torch.nn.Linear}, dtype=torch.qint8)[0]\n"
        "lin = native_linear.Int8Linear(dyn)\n"
        "print((lin.dyn is None) == native.gemm_available())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_adaln_fold_matches_the_reference_order():
    # The reduced-precision modes fold AdaLN's per-stage (w, b) into the LayerNorm's affine; the
    # fp32 mode keeps the reference's `w * LN(x) + b` (exact order).
    from core.transformer import AdaNorm

    torch.manual_seed(0)
    d = 48
    ada = AdaNorm(d)
    with torch.no_grad():
        ada.norm.weight.copy_(torch.randn(d))
        ada.norm.bias.copy_(torch.randn(d))
        ada.project.weight.copy_(torch.randn(2 * d, d) * 0.1)
        ada.project.bias.copy_(torch.randn(2 * d))
    ada.precompute([torch.randn(1, d) for _ in range(3)])
    x = torch.randn(2, 9, d) * 3
    want = [ada(x, s) for s in range(3)]
    assert ada.folded is None
    ada.fold()
    for s in range(3):
        assert torch.allclose(ada(x, s), want[s], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("native_on", [True, False])
def test_only_reduced_precision_modes_fold_adaln(golden, monkeypatch, native_on):
    # The fold belongs to the precision, not to the kernels: the same with VALLEX_NATIVE=0.
    if not native_on:
        monkeypatch.setattr(native, "available", lambda: False)
    cfg = golden / "model" / "tiny-a"
    fp32 = VallEX.from_checkpoint(cfg / "checkpoint.pt", n_heads=4)
    assert all(getattr(m, "folded", None) is None for m in fp32.core.nar.modules())
    for kw in (dict(dtype=torch.bfloat16), dict(quantize="int8")):
        m = VallEX.from_checkpoint(cfg / "checkpoint.pt", n_heads=4, **kw)
        norms = [x for x in m.core.nar.modules() if hasattr(x, "fold")]
        assert norms and all(x.folded is not None for x in norms)


@needs_native
def test_full_attention_kernel_declines_what_it_does_not_cover():
    q = torch.randn(1, 2, 5, 24).bfloat16()  # head size not a multiple of 16
    assert native.attn_full(q, q, q, 0.2, torch.float32) is None
    q = torch.randn(1, 2, 5, 32)  # float32 inputs
    assert native.attn_full(q, q, q, 0.2, torch.float32) is None


def _int8_linear(K, N, seed=0):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(seed)
    lin = torch.nn.Linear(K, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear: per_channel_dynamic_qconfig},
                               dtype=torch.qint8)[0]
    return lin, dyn


@needs_native
def test_int8_weights_from_float_are_torch_ao_quantize_dynamic_bit_for_bit():
    """The int8 mode (and the fp32 AR's draft) packs its weights with Int8Linear.from_float, one
    native pass, instead of quantize_dynamic + fbgemm's prepack + unpack (~9 s of a load): it
    must hold exactly the int8 values, scales, row sums and bias of Int8Linear(quantize_dynamic
    (...)). Weights whose w / scale and w x (1 / scale) round differently are included (fbgemm
    multiplies), a zero row, odd sizes; and it multiplies like the float Linear."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    g = torch.Generator().manual_seed(0)
    for n, k in ((40, 30), (64, 128), (3, 5), (33, 1024), (1024, 1024)):
        lin = torch.nn.Linear(k, n)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
            lin.weight[1 % n] = 0  # a zero row: the smallest scale, all-zero codes
            lin.bias.copy_(torch.randn(n, generator=g))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                   dtype=torch.qint8)[0]
        want = native_linear.Int8Linear(dyn)
        got = native_linear.Int8Linear.from_float(lin.weight, lin.bias)
        for name in ("w", "scale", "rowsum", "b"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (n, k, name)
        w = lin.weight.detach()
        scales = (w.abs().amax(1) / 127.5).clamp_min(torch.finfo(torch.float32).eps)
        divided = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
        if n == 1024:  # the case that tells the two roundings apart
            assert not torch.equal(native_linear.pack_int8(divided), got.w)
        x = torch.randn(5, k, generator=g)
        ref = lin(x).detach()
        assert torch.equal(got(x), want(x))
        assert float((got(x) - ref).abs().max()) < 0.03 * float(ref.abs().max()), (n, k)


@needs_native
def test_int8_mode_loads_without_fbgemm_where_the_gemm_runs(golden):
    m = VallEX.from_checkpoint(golden / "model" / "tiny-a" / "checkpoint.pt", n_heads=4, quantize="int8")
    lins = [getattr(layer, n) for st in (m.core.ar, m.core.nar) for layer in st.layers for n in ("qkv", "out", "ff1", "ff2")]
    assert all(isinstance(x, native_linear.Int8Linear) for x in lins)
    assert all(x.dyn is None for x in lins) == native.gemm_available()


@needs_native
@pytest.mark.parametrize("K, N", [(1024, 96), (100, 37), (24, 72), (320, 5)])
def test_int8_decode_linear_close_to_float(K, N):
    lin, dyn = _int8_linear(K, N)
    m = native_linear.Int8Linear(dyn)
    for rows in (1, 2, 3, native_linear.DECODE_ROWS):
        x = torch.randn(rows, 1, K)
        want = lin(x)
        got = m(x)
        assert got.shape == want.shape
        err = (got - want).abs().max() / want.abs().max()
        assert err < 0.03, f"rows={rows}: relative error {err:.4f}"
        torch.testing.assert_close(m(x, relu=True), torch.relu(got))
        assert torch.equal(m(x, out_dtype=torch.bfloat16), got.bfloat16())  # rounded in the kernel
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        m(x, out_dtype=torch.float16)
    x = torch.randn(native_linear.DECODE_ROWS + 3, K)
    if not native.gemm_available():  # more rows than the decode step has: fbgemm, exactly
        assert torch.equal(m(x), dyn(x))


def _int4_reference(x, w_deq, b):
    """What vx_linear_i4 computes, in float64: each row quantized to int8 (one scale, amax / 127,
    nearest even) times the dequantized 4-bit weights, + bias."""
    s = x.abs().amax(-1, keepdim=True).clamp(min=1e-30) / 127
    return (torch.round(x / s).double() @ w_deq.double().T) * s.double() + b.double()


@needs_native
@pytest.mark.parametrize("K, N", [(1024, 96), (4096, 40), (100, 37), (24, 72), (64, 5)])
def test_int4_linear_is_its_4_bit_weights_times_int8_rows(K, N):
    # The packing (two inputs per byte, 16 outputs per 64 bytes) and the kernel against a plain
    # float64 product of the same quantized values: any misplaced nibble, scale or group shows.
    g = torch.Generator().manual_seed(K + N)
    w, b = torch.randn(N, K, generator=g) * 0.05, torch.randn(N, generator=g)
    w[0, : min(K, 64)] = 0.0  # an all-zero group: scale 0, no division by it
    m = native_linear.Int4Linear(w, b)
    deq = m.dequantized()
    q, scale = native_linear.quantize_int4(w)
    assert -8 <= int(q.min()) and int(q.max()) <= 7 and deq.shape == w.shape
    assert torch.equal(deq, (q.float().view(N, -1, 64) * scale.float()[..., None]).view(N, -1)[:, :K])
    err = float((deq - w).norm() / w.norm())
    assert err < 0.12  # 4 bits, one scale per 64, clipped by least squares: ~9.5% on Gaussian weights
    plain = torch.round(w / (w.abs().amax(1, keepdim=True) / 7)).clamp(-7, 7) * (w.abs().amax(1, keepdim=True) / 7)
    if K >= 1024:  # many groups a row: far finer than one max-abs scale per output (~15%)
        assert err < 0.7 * float((plain - w).norm() / w.norm())
    for rows in (1, 2, 5, 6, 7, 13, 40):
        x = torch.randn(rows, K, generator=g)
        got = m(x)
        want = _int4_reference(x, deq, b)
        assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5, rows
        # each row alone gives the same floats (the decode step's batches = one by one)
        assert torch.equal(torch.cat([m(x[i:i + 1]) for i in range(rows)]), got)
        assert torch.equal(m(x, relu=True), torch.relu(got))
        assert torch.equal(m(x, out_dtype=torch.bfloat16), got.bfloat16())
    assert torch.equal(m(torch.zeros(2, K)), b.expand(2, N))  # a silent row: the bias, no NaN


@needs_native
@needs_int4
def test_int4_mode_puts_the_ar_in_4_bits_and_the_nar_in_int8(golden):
    model = _tiny(golden, "int4")
    ar, nar = model.core.ar, model.core.nar
    assert {type(getattr(layer, n)) for layer in ar.layers for n in ("qkv", "out", "ff1", "ff2")} == \
        {native_linear.Int4Linear}
    assert ar.decode_step is not None and ar.kv_dtype == torch.int8
    assert {type(getattr(layer, n)) for layer in nar.layers for n in ("qkv", "out", "ff1", "ff2")} <= \
        {native_linear.Int8Linear, torch.ao.nn.quantized.dynamic.Linear}
    args = (torch.tensor([5, 6, 7, 8, 9, 10]), torch.zeros(6, dtype=torch.long), 2,
            torch.randint(0, 1024, (12, 8), generator=torch.Generator().manual_seed(3)))
    s = Sampling(top_k=1, max_frames=24, guards=False)
    fused = model.generate_ar(*args, sampling=s)
    ar.decode_step = None  # the per-op path: the same Int4Linear modules one op at a time
    per_op = model.generate_ar(*args, sampling=s)
    n = min(fused.numel(), per_op.numel())
    assert n > 0 and (fused[:n] == per_op[:n]).float().mean() >= 0.5  # d=24: rounding-sensitive
    codes = model.generate_nar(*args, fused)
    assert codes.shape == (fused.numel(), 8) and torch.equal(codes[:, 0], fused)


@needs_native
@pytest.mark.skipif(not (native.available() and native.gemm_available()), reason="no AVX-512 VNNI GEMM")
@pytest.mark.parametrize("K, N", [(1024, 96), (100, 37), (70, 40), (4100, 48)])
def test_int8_gemm_many_rows(K, N):
    """The tiled path (more rows than a decode step: the NAR, the prefill): close to float, and
    each row's result bit-identical to that row alone (few-row path), whatever the row count,
    including the tile remainders, a partial last panel, K not a multiple of 4 and K split in passes."""
    lin, dyn = _int8_linear(K, N, seed=K + N)
    m = native_linear.Int8Linear(dyn)
    assert m.dyn is None  # the fbgemm copy is dropped
    for rows in (17, 24, 25, 100):
        x = torch.randn(rows, K)
        got, want = m(x), lin(x)
        err = (got - want).abs().max() / want.abs().max()
        assert err < 0.03, f"rows={rows}: relative error {err:.4f}"
        for i in (0, rows // 2, rows - 1):
            assert torch.equal(got[i:i + 1], m(x[i:i + 1])), f"row {i} of {rows}"
        torch.testing.assert_close(m(x, relu=True), torch.relu(got))
        # bf16 output (the NAR's q, k, v): rounded in the kernel as torch rounds
        assert torch.equal(m(x, out_dtype=torch.bfloat16), got.to(torch.bfloat16))
        assert torch.equal(m(x[:3], relu=True, out_dtype=torch.bfloat16), torch.relu(got[:3]).to(torch.bfloat16))
    # bf16 activations (an AR prefill from a bf16 stream) are taken as float32
    x = torch.randn(20, K, dtype=torch.bfloat16)
    assert torch.equal(m(x), m(x.float()))


def _tiny_int8(golden, name="tiny-b", heads=6):
    return VallEX.from_checkpoint(golden / "model" / name / "checkpoint.pt", n_heads=heads, quantize="int8")


def _tiny(golden, mode, name="tiny-b", heads=6):
    if mode == "int8":
        return _tiny_int8(golden, name, heads)
    if mode == "int4":
        return VallEX.from_checkpoint(golden / "model" / name / "checkpoint.pt", n_heads=heads, quantize="int4")
    if mode == "fp32":
        return VallEX.from_checkpoint(golden / "model" / name / "checkpoint.pt", n_heads=heads)
    return VallEX.from_checkpoint(golden / "model" / name / "checkpoint.pt", n_heads=heads, dtype=torch.bfloat16)


def _random_cache(stack, L, B, smax, g):
    """A KV cache of the stack's kind filled with random keys / values."""
    kv = torch.randn(L, 2, B, stack.h, smax, stack.hd, generator=g)
    return native.kv_quantize(kv) if stack.kv_dtype == torch.int8 else kv.to(stack.kv_dtype)


def _bf16_reference(x, w, b, relu=False):
    """What a bf16 Linear computes: bf16 inputs and weights, exact sums, + bias, rounded to bf16."""
    y = x.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T + b.to(torch.bfloat16).double()
    return (y.clamp(min=0) if relu else y).float().to(torch.bfloat16)


def _assert_rows_alone(m, x, got):
    """A native Linear `m` gives each row of x the result `got` has for it whatever rows come with
    it (1..16 rows: the GEMV; more: the tiled GEMM and its remainders), as a [B, 1, K] view too;
    ReLU is the kernel's; a wrong width or a non-CPU tensor is refused, never read past."""
    K, N = x.shape[1], got.shape[1]
    for rows in (1, 3, 16, 17, 29):
        part = m(x[:rows])
        assert torch.equal(part, got[:rows]), rows
        for i in {0, rows // 2, rows - 1}:
            assert torch.equal(m(x[i:i + 1]), got[i:i + 1]), (rows, i)
    assert torch.equal(m(x, relu=True), torch.relu(got))
    assert torch.equal(m(x[:5].view(5, 1, K)), got[:5].view(5, 1, N))
    with pytest.raises(ValueError, match=f"\\[..., {K}\\]"):
        m(torch.randn(3, K + 1))
    with pytest.raises(ValueError, match="CPU tensor"):
        m(torch.tensor(1.0))


@needs_bf16
@pytest.mark.parametrize("K, N", [(1024, 96), (100, 37), (71, 40), (2100, 48), (24, 72)])
def test_bf16_linear_is_a_bf16_linear_and_row_invariant(K, N):
    """Close to torch's bf16 Linear (float32 sums: within one bf16 rounding step of the exact
    sum), and each row's result bit-identical whatever rows come with it: 1..16 rows (GEMV), more
    (tiled GEMM, its tile remainders, a partial last panel, odd K, K split in passes)."""
    g = torch.Generator().manual_seed(K + N)
    w, b = torch.randn(N, K, generator=g) * K ** -0.5, torch.randn(N, generator=g)
    m = native_linear.Bf16Linear(w, b)
    x = torch.randn(40, K, generator=g)
    got = m(x)
    assert got.dtype == torch.bfloat16 and got.shape == (40, N)
    want = _bf16_reference(x, w, b)
    step = want.float().abs().clamp(min=1e-3) * 2 ** -7  # one bf16 rounding step
    assert bool(((got.float() - want.float()).abs() <= step).all())
    _assert_rows_alone(m, x, got)
    assert torch.equal(m(x, out_dtype=torch.float32), got.float())  # the same bf16 values
    assert torch.equal(m(x.to(torch.bfloat16)), got)  # float32 input is rounded to bf16 first
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        m(x, out_dtype=torch.float16)


needs_f16 = pytest.mark.skipif(not native_linear.f16_available(), reason="no AVX-512 FP16 kernel")


@needs_f16
@pytest.mark.parametrize("K, N", [(1024, 96), (4096, 40), (100, 37), (71, 40), (24, 72), (1, 5)])
def test_f16_linear_is_as_close_to_exact_as_the_bf16_linear_and_row_invariant(K, N):
    """The bf16 mode's NAR Linear (half-precision products, float32 sums every 64 pair steps):
    against the exact sums of the bf16 weights, its error is no larger than the bf16 Linear's
    (both end in one bf16 rounding), with a bound per output; each row's result is bit-identical
    whatever rows come with it (tiles of 12 and their remainders, a partial last panel, odd K)."""
    g = torch.Generator().manual_seed(K + N)
    w, b = torch.randn(N, K, generator=g) * K ** -0.5, torch.randn(N, generator=g)
    w[0] *= 1e-6  # a channel of tiny weights: its own scale
    if N > 3:
        w[3] = 0.0  # and one of zeros
    x = torch.randn(40, K, generator=g)
    x[:, ::17] *= 30  # outlier inputs: the row's scale follows its largest value
    m = native_linear.F16Linear(w, b)
    got = m(x)
    assert got.dtype == torch.bfloat16 and got.shape == (40, N)
    wb = w.to(torch.bfloat16).double()
    exact = x.double() @ wb.T + b.to(torch.bfloat16).double()
    err16 = (got.double() - exact).norm() / exact.norm()
    err_bf = (native_linear.Bf16Linear(w, b)(x).double() - exact).norm() / exact.norm()
    # (measured: 0.88x the bf16 Linear's at K = 1024 and 4096; summing 128 pair steps in float16
    # instead of 64 makes it ~1.0x, and fails here)
    assert err16 <= 0.95 * err_bf, (err16, err_bf)
    # per output: one bf16 rounding of the result + the half-precision sums' rounding, bounded by
    # 2^-9 of sum |x w| (far looser than what it does: a scaling or overflow bug breaks it at once)
    bound = exact.abs() * 2 ** -8 + (x.double().abs() @ wb.abs().T) * 2 ** -9 + 1e-30
    assert bool(((got.double() - exact).abs() <= bound).all())
    assert float(((got.double() - exact)[:, 0] / exact[:, 0].abs().clamp(min=1e-30)).abs().max()) < 0.05
    _assert_rows_alone(m, x, got)
    threads = torch.get_num_threads()
    try:  # one output, one thread, one order: the thread count changes nothing
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(m(x), got)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(m(x, out_dtype=torch.float32), got.float())
    xb = x.to(torch.bfloat16)
    assert torch.equal(m(xb), m(xb.float()))  # bf16 rows: their float32 values


@needs_f16
def test_f16_linear_scale_free_zero_rows_and_no_overflow():
    """Rows are scaled by powers of two before the half-precision products, so scaling a row by
    2^k scales its result exactly (from 2^-100 to 2^100: far outside float16's range) and a zero
    row gives the bias; sums of 4096 products at the largest scaled values do not overflow."""
    g = torch.Generator().manual_seed(7)
    K, N = 1030, 48
    w = torch.randn(N, K, generator=g) * 0.03
    m = native_linear.F16Linear(w, None)
    x = torch.randn(20, K, generator=g)
    base = m(x, out_dtype=torch.float32)
    for k in (-100, -30, 0, 17, 100):
        assert torch.equal(m(x * 2.0 ** k, out_dtype=torch.float32), base * 2.0 ** k), k
    b = torch.randn(N, generator=g)
    mb = native_linear.F16Linear(w, b)
    assert torch.equal(mb(torch.zeros(3, K), out_dtype=torch.float32), b.to(torch.bfloat16).float().expand(3, N))
    # every product at its largest and of one sign: sum_k 64 * 1 per lane, 4096 inputs
    big = native_linear.F16Linear(torch.ones(32, 4096), None)
    y = big(torch.ones(13, 4096), out_dtype=torch.float32)
    assert torch.equal(y, torch.full((13, 32), 4096.0))
    y = big(-torch.full((13, 4096), 3e38), out_dtype=torch.float32)
    assert bool(torch.isinf(y).all()) and bool((y < 0).all())  # past float32: -inf, as torch's Linear


@needs_f16
def test_bf16_mode_nar_takes_the_f16_linears_and_stays_close(golden, monkeypatch):
    """The bf16 mode's NAR on the half-precision GEMM and the int16 attention (the AR stays on
    vx_linear_bf16 and the bf16 attention); its codes
    agree with fp32's as well as those of the bf16 GEMM do (random tiny models have small logit
    gaps, so over 6 inputs and both models: a single case swings by +-0.15 either way); and
    VALLEX_NAR_F16=0 turns it off."""
    agree = {"f16": [], "bf16": []}
    for name, heads in (("tiny-b", 6), ("tiny-a", 1)):
        monkeypatch.delenv("VALLEX_NAR_F16", raising=False)
        model = _tiny(golden, "bf16", name, heads)
        assert isinstance(model.core.nar.layers[0].qkv, native_linear.F16Linear)
        assert isinstance(model.core.ar.layers[0].qkv, native_linear.Bf16Linear)
        # and the int8 mode's int16 attention (the AR's prefill keeps the bf16 one)
        assert model.core.nar.attn_ints == (16 if native.attn_i16_available() else 0) and not model.core.ar.attn_ints
        monkeypatch.setenv("VALLEX_NAR_F16", "0" if name == "tiny-b" else " Off")  # as VALLEX_NATIVE reads it
        off = _tiny(golden, "bf16", name, heads)
        assert isinstance(off.core.nar.layers[0].qkv, native_linear.Bf16Linear) and not off.core.nar.attn_ints
        fp32 = _tiny(golden, "fp32", name, heads)
        for seed in range(6):
            g = torch.Generator().manual_seed(seed)
            prompt = torch.randint(0, 1024, (40, 8), generator=g)
            ids = torch.randint(5, 70, (12,), generator=g)
            langs = torch.zeros(12, dtype=torch.long)
            ar = torch.randint(0, 1024, (60,), generator=g)
            codes = [m.generate_nar(ids, langs, 4, prompt, ar) for m in (model, off, fp32)]
            assert torch.equal(codes[0][:, 0], ar)
            agree["f16"].append(float((codes[0][:, 1:] == codes[2][:, 1:]).float().mean()))
            agree["bf16"].append(float((codes[1][:, 1:] == codes[2][:, 1:]).float().mean()))
    f16, bf16 = (sum(v) / len(v) for v in (agree["f16"], agree["bf16"]))
    assert f16 >= bf16 - 0.05 and f16 > 0.7, (f16, bf16)


def _cpu_has_dpbf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read()
    except OSError:
        return False


needs_dpbf16 = pytest.mark.skipif(not (native_linear.bf16_available() and _cpu_has_dpbf16()),
                                  reason="no AVX-512 BF16 here: only the FMA loops can run")


@pytest.fixture
def bf16_dot_restored():
    before = native.bf16_dot()
    yield
    native.use_bf16_dot(before)


@needs_dpbf16
@pytest.mark.parametrize("M, K, N", [(1, 1024, 96), (10, 71, 40), (16, 2100, 48), (17, 1024, 96), (40, 24, 72),
                                     (300, 1030, 64)])
def test_bf16_fma_loop_gives_the_floats_of_vdpbf16ps(M, K, N, bf16_dot_restored):
    """The bf16 Linears' two inner loops (vdpbf16ps; float32 FMAs under DAZ / FTZ, faster on some
    CPUs) give bit-identical results: the GEMV and the tiled GEMM, odd K, K in several passes,
    bias, ReLU, both output types, with denormal weights and inputs, tiny and huge magnitudes,
    and pairs that cancel."""
    g = torch.Generator().manual_seed(M * K + N)
    w = torch.randn(N, K, generator=g) * torch.logspace(-3, 1, K)[torch.randperm(K, generator=g)]
    w.view(-1)[::37] = 2e-39  # denormal as bf16 too
    b = torch.randn(N, generator=g)
    b[::5] = 5e-39
    x = torch.randn(M, K, generator=g) * torch.logspace(-30, 4, K)[torch.randperm(K, generator=g)]
    x.view(-1)[::41] = -3e-39
    if K % 2 == 0:  # pairs whose two products cancel
        x[:, 1::2][:, :4] = x[:, 0::2][:, :4]
        w[:, 1::2][:, :4] = -w[:, 0::2][:, :4]
    for bias in (None, b):
        m = native_linear.Bf16Linear(w, bias)
        for xin in (x, x.to(torch.bfloat16)):
            for relu in (False, True):
                for out in (torch.bfloat16, torch.float32):
                    got = {}
                    for name in native.BF16_DOTS:
                        assert native.use_bf16_dot(name)
                        got[name] = m(xin, relu=relu, out_dtype=out)
                    bits = torch.int16 if out == torch.bfloat16 else torch.int32
                    assert torch.equal(got["vdpbf16ps"].view(bits), got["fma"].view(bits)), (bias is None, relu, out)


@needs_dpbf16
@pytest.mark.parametrize("B, H, S, hd, q_from, prefix", [(1, 16, 150, 64, 0, None), (2, 3, 37, 32, 0, None),
                                                         (1, 4, 100, 64, 90, None), (1, 2, 53, 16, 0, 7)])
def test_full_attention_fma_loop_gives_the_floats_of_vdpbf16ps(B, H, S, hd, q_from, prefix, bf16_dot_restored):
    """The fused NAR / prefill attention takes the same inner-loop choice, with the same floats."""
    if not native.load().vx_has_attn_full():
        pytest.skip("no fused attention kernel here")
    g = torch.Generator().manual_seed(S + hd)
    qkv = (torch.randn(B, S, 3, H, hd, generator=g) * 2).to(torch.bfloat16)
    qkv.view(-1)[::29] = 3e-39
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    got = {}
    for name in native.BF16_DOTS:
        assert native.use_bf16_dot(name)
        got[name] = native.attn_full(q[:, :, q_from:], k, v, hd ** -0.5, torch.float32, prefix)
    assert got["fma"] is not None and torch.equal(got["vdpbf16ps"].view(torch.int32), got["fma"].view(torch.int32))


@needs_dpbf16
def test_bf16_mode_tokens_do_not_depend_on_the_inner_loop(golden, bf16_dot_restored):
    """Whichever loop the machine picks at load, the bf16 mode samples the same tokens, one by
    one and in a batch."""
    model = _tiny(golden, "bf16")
    prompt = torch.randint(0, 1024, (30, 8), generator=torch.Generator().manual_seed(3))
    reqs = [LMRequest([5, 6, 7, 8, 9, 10], [0] * 6, 2, prompt), LMRequest([11, 12, 13, 14], [0] * 4, 2, prompt[:20])]
    s = Sampling(top_k=5, temperature=0.8, seed=4, max_frames=24)
    runs = {}
    for name in native.BF16_DOTS:
        assert native.use_bf16_dot(name)
        one = [model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s).codes for r in reqs]
        runs[name] = one + [g.codes for g in model.generate_batch(reqs, s)]
    assert all(torch.equal(a, b) for a, b in zip(runs["vdpbf16ps"], runs["fma"]))


_FMA_ONLY_CHECK = """
import json, os, sys, torch
from core import native, native_linear
from core.lm import VallEX
from core.sampling import Sampling
assert native.bf16_dot() == "fma" and native_linear.bf16_available(), native.bf16_dot()
assert not native.use_bf16_dot("vdpbf16ps") and native.bf16_dot() == "fma"
model = VallEX.from_checkpoint(os.environ["VALLEX_TINY"], n_heads=6, dtype=torch.bfloat16)
assert isinstance(model.core.ar.layers[0].qkv, native_linear.Bf16Linear) and model.core.ar.decode_step is not None
prompt = torch.randint(0, 1024, (30, 8), generator=torch.Generator().manual_seed(3))
g = model.generate([5, 6, 7, 8, 9, 10], [0] * 6, 2, prompt, Sampling(top_k=5, temperature=0.8, seed=4, max_frames=24))
print(json.dumps(g.codes.tolist()))
"""


@needs_native
def test_bf16_mode_without_avx512_bf16_runs_the_fma_loop_with_the_same_tokens(golden, tmp_path, monkeypatch):
    # A CPU with AVX-512 but not its BF16 extension (Skylake-X, Ice Lake): the bf16 mode still runs
    # on the native Linears and the fused step, through the FMA loops, with this machine's tokens
    # (here without the NAR's half-precision GEMM, which such a CPU lacks too).
    env = dict(os.environ, VALLEX_KERNEL_CACHE=str(tmp_path / "k"), VALLEX_KERNEL_MARCH="skylake-avx512",
               VALLEX_TINY=str(golden / "model" / "tiny-b" / "checkpoint.pt"))
    env.pop("VALLEX_BF16_DOT", None)
    p = subprocess.run([sys.executable, "-c", _FMA_ONLY_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    there = torch.tensor(__import__("json").loads(p.stdout.strip().splitlines()[-1]))
    if native_linear.bf16_available():
        monkeypatch.setenv("VALLEX_NAR_F16", "0")
        model = _tiny(golden, "bf16")
        assert isinstance(model.core.nar.layers[0].ff1, native_linear.Bf16Linear)
        prompt = torch.randint(0, 1024, (30, 8), generator=torch.Generator().manual_seed(3))
        here = model.generate([5, 6, 7, 8, 9, 10], [0] * 6, 2, prompt,
                              Sampling(top_k=5, temperature=0.8, seed=4, max_frames=24)).codes
        assert torch.equal(here, there)


@needs_native
@pytest.mark.parametrize("choice, want", [("fma", "fma"), ("vdpbf16ps", "vdpbf16ps"), ("nonsense", None)])
def test_bf16_inner_loop_can_be_chosen(choice, want, tmp_path):
    if want == "vdpbf16ps" and not _cpu_has_dpbf16():
        want = "fma"  # asked for, but not on this CPU
    p = subprocess.run([sys.executable, "-c", "from core import native; print(native.bf16_dot())"], cwd=ROOT,
                       env=dict(os.environ, VALLEX_BF16_DOT=choice), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = p.stdout.strip().splitlines()[-1]
    assert got in native.BF16_DOTS and (want is None or got == want)
    if want is None:
        assert "VALLEX_BF16_DOT='nonsense'" in p.stderr


@needs_bf16
def test_bf16_mode_runs_on_the_native_linear_and_fused_step(golden):
    model = _tiny(golden, "bf16")
    # the NAR's GEMMs in half precision where the CPU has AVX-512 FP16
    nar_kind = native_linear.F16Linear if native_linear.f16_available() else native_linear.Bf16Linear
    for stack, kind in ((model.core.ar, native_linear.Bf16Linear), (model.core.nar, nar_kind)):
        assert all(type(getattr(layer, n)) is kind for layer in stack.layers for n in ("qkv", "out", "ff1", "ff2"))
    ar = model.core.ar
    assert ar.decode_step is not None and ar.decode_step.kv_dtype == torch.bfloat16 == ar.kv_dtype
    assert model.core.nar.decode_step is None
    for m in (model, _tiny(golden, "int8")):  # the bf16 output heads of both modes
        assert all(isinstance(h, native_linear.Bf16Linear) for h in [m.core.ar_head, *m.core.nar_heads])
    step, L = ar.decode_step, len(ar.layers)
    good = torch.zeros(L, 2, 1, ar.h, 4, ar.hd, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="cache"):
        step(torch.zeros(1, ar.d), torch.zeros(L, 2, 1, ar.h, 4, ar.hd + 4, dtype=torch.int8), 0, None)
    # shapes the C step would write or read past: each a clear error, nothing touched
    for bad in (good[:, :, :, :, :, :-1], good[:-1], good.transpose(4, 5), torch.zeros(2, ar.d, dtype=torch.bfloat16)):
        with pytest.raises(ValueError, match="cache"):
            step(torch.zeros(1, ar.d), bad, 0, None)
    with pytest.raises(ValueError, match="x "):
        step(torch.zeros(1, ar.d + 1), good, 0, None)
    with pytest.raises(ValueError, match="slot"):
        step(torch.zeros(1, ar.d), good, 4, None)
    with pytest.raises(ValueError, match="key starts"):
        step(torch.zeros(1, ar.d), good, 2, torch.tensor([3], dtype=torch.int32))
    assert step(torch.zeros(1, ar.d), good, 3, torch.tensor([0], dtype=torch.int32)).shape == (1, ar.d)


@needs_bf16
def test_bf16_norms_hand_float32_rows_to_the_native_linears(golden, monkeypatch):
    """The bf16 mode's norms skip their .to(bfloat16) pass (vx_linear_bf16 rounds float32 rows the
    same way): the NAR codes and the prefill + non-fused decode path are unchanged by it. (The
    NAR's half-precision Linears, off here, round float32 rows to float16 instead: finer.)"""
    monkeypatch.setenv("VALLEX_NAR_F16", "0")
    model = _tiny(golden, "bf16")
    stacks = (model.core.ar, model.core.nar)
    assert all(s.linears_round_input for s in stacks)
    assert not any(s.linears_round_input for s in (_tiny(golden, "int8").core.ar, _tiny(golden, "int8").core.nar))
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 1024, (20, 8), generator=g)
    ids = torch.randint(5, 70, (11,), generator=g)
    langs = torch.zeros(11, dtype=torch.long)
    ar = torch.randint(0, 1024, (33,), generator=g)
    model.core.ar.decode_step = None  # the per-op decode path, which calls the norms too
    outs = []
    for flag in (True, False):
        for s in stacks:
            s.linears_round_input = flag
        outs.append((model.generate_nar(ids, langs, 3, prompt, ar),
                     model.generate_ar(ids, langs, 3, prompt, sampling=Sampling(top_k=1, max_frames=24))))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@needs_native
@pytest.mark.parametrize("mode", FUSED_MODES)
@pytest.mark.parametrize("B", [1, 5, 11])
@pytest.mark.parametrize("name, heads", [("tiny-b", 6), ("tiny-a", 1)])  # hd 4, 32 (the int8 attention kernel)
def test_fused_decode_step_is_batch_invariant(golden, mode, B, name, heads):
    # Rows are quantized (int8), multiplied and attended one by one, so a batch (B=11: more rows
    # than one int8 kernel pass takes) gives each row exactly what it gets alone.
    stack = _tiny(golden, mode, name, heads).core.ar
    L, smax, slot = len(stack.layers), 20, 11
    g = torch.Generator().manual_seed(2)
    cache = _random_cache(stack, L, B, smax, g)
    x = torch.randn(B, 1, stack.d, generator=g)
    starts = torch.tensor([(3 * b) % 10 for b in range(B)], dtype=torch.int32)
    with torch.inference_mode():
        together = stack.forward_cached(x, cache.clone(), slot, None, starts)
        alone = [stack.forward_cached(x[b:b + 1], cache[:, :, b:b + 1].clone(), slot, None, starts[b:b + 1])
                 for b in range(B)]
    assert torch.equal(together, torch.cat(alone))


@needs_native
@pytest.mark.parametrize("mode", FUSED_MODES)
def test_fused_decode_step_row_map(golden, mode):
    # A batch whose finished rows were dropped: the live rows name their cache rows, and get
    # exactly what a compacted cache gives; the other cache rows are not touched.
    stack = _tiny(golden, mode).core.ar
    L, smax, slot, R = len(stack.layers), 20, 11, 6
    g = torch.Generator().manual_seed(3)
    cache = _random_cache(stack, L, R, smax, g)
    live = torch.tensor([1, 4, 5], dtype=torch.int32)
    x = torch.randn(3, 1, stack.d, generator=g)
    starts = torch.tensor([2, 0, 7], dtype=torch.int32)
    mapped, compact = cache.clone(), cache.index_select(2, live.long()).contiguous()
    with torch.inference_mode():
        a = stack.forward_cached(x, mapped, slot, None, starts, live)
        b = stack.forward_cached(x, compact, slot, None, starts)
    assert torch.equal(a, b)
    assert torch.equal(mapped.index_select(2, live.long()), compact)
    dead = torch.tensor([0, 2, 3])
    assert torch.equal(mapped.index_select(2, dead), cache.index_select(2, dead))
    with pytest.raises(ValueError, match="row map"):
        stack.decode_step(x[:, 0], cache, slot, starts, torch.tensor([0, 1, 6], dtype=torch.int32))


@needs_native
@pytest.mark.parametrize("mode", FUSED_MODES)
def test_batch_with_rows_ending_apart_matches_one_by_one(golden, mode):
    # Different text lengths give different frame caps: rows finish at different steps and are
    # dropped through the row map; every sentence still gets its one-by-one tokens.
    model = _tiny(golden, mode)
    s = Sampling(top_k=1, guards=False)
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 1024, (6, 8), generator=g)
    reqs = [LMRequest(torch.randint(5, 60, (n,), generator=g), torch.zeros(n, dtype=torch.long), 2, prompt)
            for n in (3, 5, 4, 7, 3)]
    one = [model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s) for r in reqs]
    batch = model.generate_batch(reqs, s)
    assert len({g.codes.shape[0] for g in one}) > 1
    for a, b in zip(one, batch):
        assert torch.equal(a.codes, b.codes)


def _fused_and_per_op(stack, B, slot=11):
    """One decode position through the fused step and through the per-op path, each on its own
    copy of one random cache: (fused output, per-op output, cache before, fused's, per-op's)."""
    g = torch.Generator().manual_seed(1)
    cache = _random_cache(stack, len(stack.layers), B, 20, g)
    x = torch.randn(B, 1, stack.d, generator=g)
    starts = torch.tensor([0, 4, 9] * (B // 3) + [0] * (B % 3), dtype=torch.int32)
    c1, c2 = cache.clone(), cache.clone()
    with torch.inference_mode():
        fused = stack.forward_cached(x, c1, slot, None, starts)
        step, stack.decode_step = stack.decode_step, None
        try:
            per_op = stack.forward_cached(x, c2, slot, None, starts)
        finally:
            stack.decode_step = step
    assert torch.equal(c1[:, :, :, :, :slot], cache[:, :, :, :, :slot])  # earlier slots untouched
    return fused, per_op, cache, c1, c2


@needs_native
@needs_bf16
@pytest.mark.parametrize("name, heads, B", [("tiny-a", 4, 3), ("tiny-b", 6, 3)])
def test_fused_bf16_decode_step_matches_per_op_path(golden, name, heads, B):
    stack = _tiny(golden, "bf16", name, heads).core.ar
    fused, per_op, _, c1, c2 = _fused_and_per_op(stack, B)
    torch.testing.assert_close(fused, per_op, rtol=2e-2, atol=2e-2)  # bf16 roundings of two layer norms
    torch.testing.assert_close(c1.float(), c2.float(), rtol=2e-2, atol=2e-2)


@needs_native
@needs_f32
@pytest.mark.parametrize("name, heads, B", [("tiny-a", 4, 3), ("tiny-b", 6, 5)])
def test_fused_fp32_decode_step_matches_per_op_path(golden, name, heads, B):
    # The fp32 step: float32 Linear layers and cache, the same sums as the per-op path's
    # vx_linear_f32 calls; only the layer norms' last float bits differ (C against torch).
    stack = _tiny(golden, "fp32", name, heads).core.ar
    assert not stack.fast_cpu and stack.kv_dtype == torch.float32 and stack.decode_step.kv_dtype == torch.float32
    fused, per_op, _, c1, c2 = _fused_and_per_op(stack, B)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, per_op, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("name, heads, B", [("tiny-a", 4, 3), ("tiny-b", 6, 3), ("tiny-a", 1, 3)])
def test_fused_int8_decode_step_matches_per_op_path(golden, name, heads, B):
    stack = _tiny_int8(golden, name, heads).core.ar
    assert stack.fast_cpu and stack.decode_step is not None and stack.kv_dtype == torch.int8
    slot = 11
    fused, per_op, _, c1, c2 = _fused_and_per_op(stack, B, slot)
    torch.testing.assert_close(fused, per_op, rtol=1e-4, atol=1e-4)
    # The new k/v: the same int8 rows up to a rounding step (the two paths' layer norms differ in
    # the last float bits).
    new1, new2 = (native.kv_dequantize(c[:, :, :, :, slot]) for c in (c1, c2))
    step = c1[:, :, :, :, slot, -4:].contiguous().view(torch.float32)
    assert bool(((new1 - new2).abs() <= step * 1.001 + 1e-6).all())


@needs_native
@pytest.mark.parametrize("mode", FUSED_MODES)
def test_decode_step_from_codes_to_logits(golden, mode):
    # The decode loop's one call: the input rows, the step, the final norm and the head in C. The
    # same as the step and those ops in PyTorch (up to the two layer norms' last float bits), the
    # same cache writes, each row as it would be alone, and bad codes / positions refused.
    from core.transformer import embed, head_logits

    model = _tiny(golden, mode)
    c, stack = model.core, model.core.ar
    L, B, slot = len(stack.layers), 3, 11
    io = model.token_io(40)
    assert io is not None
    g = torch.Generator().manual_seed(5)
    cache = _random_cache(stack, L, B, 20, g)
    codes, positions = [0, 1024, 517], [3, 39, 12]
    starts = torch.tensor([0, 4, 9], dtype=torch.int32)
    c1, c2 = cache.clone(), cache.clone()
    with torch.inference_mode():
        got = stack.decode_step.logits(io, codes, positions, c1, slot, starts)
        x = embed(c.ar_audio_emb, torch.tensor(codes)) * 1.0 + c.ar_audio_alpha * model.positions(40)[torch.tensor(positions)]
        want = head_logits(c.ar_head, stack.forward_cached(x[:, None], c2, slot, None, starts)[:, -1])
        alone = stack.decode_step.logits(io, codes[1:2], positions[1:2], cache[:, :, 1:2].clone(), slot, starts[1:2])
    assert got.shape == (B, c.ar_head.out_features) and got.dtype == torch.float32
    tol = 1e-5 if mode == "fp32" else 2e-2  # the two layer norms' last float bits, rounded to bf16 or not
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(c1, c2)  # the same k / v written (the inputs are the same floats)
    assert torch.equal(alone, got[1:2])
    for bad_codes, bad_pos, what in (([io.n_codes], [0], "codes"), ([-1], [0], "codes"), ([5], [40], "positions"),
                                     ([5, 6], [0], "positions"), ([], [], "codes")):
        with pytest.raises(ValueError, match=what):
            stack.decode_step.logits(io, bad_codes, bad_pos, cache[:, :, :1].clone(), slot, None)
    with pytest.raises(ValueError, match="slot"):
        stack.decode_step.logits(io, [5], [0], cache[:, :, :1].clone(), 20, None)
    with pytest.raises(ValueError, match="cache"):
        stack.decode_step.logits(io, [5], [0], cache[:, :, :1].transpose(-1, -2), slot, None)
    with pytest.raises(ValueError, match="LayerNorm"):
        decode_step.TokenIO(c.ar_audio_emb.weight, torch.zeros(4, stack.d + 1), stack.norm, c.ar_head)


@needs_native
def test_int8_engine_generates_with_and_without_fused_step(golden):
    model = _tiny_int8(golden)
    args = (torch.tensor([5, 6, 7, 8, 9, 10]), torch.zeros(6, dtype=torch.long), 2,
            torch.randint(0, 1024, (12, 8), generator=torch.Generator().manual_seed(3)))
    s = Sampling(top_k=1, max_frames=24, guards=False)
    fused = model.generate_ar(*args, sampling=s)
    model.core.ar.decode_step = None
    per_op = model.generate_ar(*args, sampling=s)
    assert 0 < fused.numel() <= 24 and 0 < per_op.numel() <= 24
    n = min(fused.numel(), per_op.numel())
    assert (fused[:n] == per_op[:n]).float().mean() >= 0.5  # d=24 random weights: rounding-sensitive


def test_engine_without_native_kernels(golden, monkeypatch):
    monkeypatch.setattr(native, "_tried", True)
    monkeypatch.setattr(native, "_lib", None)
    for kw in (dict(dtype=torch.bfloat16), dict(quantize="int8"), {}):
        model = VallEX.from_checkpoint(golden / "model" / "tiny-b" / "checkpoint.pt", n_heads=6, **kw)
        assert not model.core.ar.fast_cpu and model.core.ar.decode_step is None
        assert not model.core.ar.native_decode_attn
        assert not isinstance(model.core.ar.layers[0].qkv, native_linear.NativeLinear)
        assert model.core.ar.kv_dtype == torch.float32
        codes = model.generate_ar([5, 6, 7], [0, 0, 0], 1, torch.zeros(4, 8, dtype=torch.long),
                                  sampling=Sampling(top_k=1, max_frames=6))
        assert codes.dtype == torch.long


@needs_native
def test_float32_mode_runs_the_ar_on_the_float32_kernels(golden):
    """fp32 stays float32 everywhere (cache, sums, no reduced-precision kernel); where AVX-512
    runs, the AR's Linears are vx_linear_f32, its decode step (head included) one fused float32
    call, the NAR stays on oneDNN; the golden tokens stay exact (tests/test_lm.py checks every case)."""
    from core.quantize import PackedLinear

    model = VallEX.from_checkpoint(golden / "model" / "tiny-b" / "checkpoint.pt", n_heads=6)
    own = native_linear.f32_available()
    for stack in (model.core.ar, model.core.nar):
        assert not stack.fast_cpu and stack.kv_dtype == torch.float32
    assert model.core.nar.decode_step is None
    assert (model.core.ar.decode_step is not None) == own
    if own:
        assert model.core.ar.decode_step.kv_dtype == torch.float32
        assert isinstance(model.core.ar_head, native_linear.F32Linear) and model.token_io(10) is not None
    ar_kind = native_linear.F32Linear if own else PackedLinear
    for layer in model.core.ar.layers:
        assert all(isinstance(getattr(layer, n), ar_kind) for n in ("qkv", "out", "ff1", "ff2"))
    assert model.core.ar.native_decode_attn == native_linear.f32_available()
    assert not model.core.nar.native_decode_attn
    assert all(isinstance(layer.qkv, PackedLinear) for layer in model.core.nar.layers)


def _f64_reference(x, w, b, relu=False):
    y = x.double() @ w.double().T + b.double()
    return y.clamp(min=0) if relu else y


@pytest.mark.skipif(not native_linear.f32_available(), reason="no AVX-512 float32 kernel")
@pytest.mark.parametrize("K, N", [(1024, 96), (100, 37), (71, 40), (1100, 48), (24, 72)])
def test_f32_linear_is_a_float32_linear_and_row_invariant(K, N):
    """Within float32 rounding of the exact sum, and each row's result bit-identical whatever rows
    come with it: 1..16 rows (GEMV), more (tiled GEMM, tile remainders, a partial last panel, K
    split in passes), so a batch decodes exactly like one request at a time."""
    g = torch.Generator().manual_seed(K + N)
    w, b = torch.randn(N, K, generator=g) * K ** -0.5, torch.randn(N, generator=g)
    m = native_linear.F32Linear(w, b)
    x = torch.randn(40, K, generator=g)
    got = m(x)
    assert got.dtype == torch.float32 and got.shape == (40, N)
    want = _f64_reference(x, w, b)
    # one float32 sum per output, k in order: ~sqrt(K) roundings of ~6e-8 (torch's: the same size)
    assert float(((got.double() - want).abs() / (1 + want.abs())).max()) < 1e-5
    _assert_rows_alone(m, x, got)
    assert torch.equal(m(x.t().contiguous().t()), got)  # a strided input is read as its values
    with pytest.raises(ValueError, match="float32"):
        m(x, out_dtype=torch.bfloat16)


def _probe(env_extra, tmp_path):
    env = dict(os.environ, VALLEX_KERNEL_CACHE=str(tmp_path / "kernels"), **env_extra)
    code = "from core import native; print(native.available()); print(native.why_unavailable())"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_no_compiler_or_disabled_falls_back_with_a_reason(tmp_path):
    ok, why = _probe({"CC": "/nonexistent/cc", "PATH": "/nonexistent"}, tmp_path)
    assert ok == "False" and "compiler" in why
    ok, why = _probe({"VALLEX_NATIVE": "0"}, tmp_path)
    assert ok == "False" and "VALLEX_NATIVE=0" in why


@needs_native
def test_kernels_are_built_once_into_the_cache(tmp_path):
    assert _probe({}, tmp_path)[0] == "True"
    built = list((tmp_path / "kernels").glob("vallex-kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _probe({}, tmp_path)[0] == "True"
    assert built[0].stat().st_mtime_ns == stamp
    assert list((tmp_path / "kernels").iterdir()) == built  # no half-written temporary left behind


_PORTABLE_CHECK = """
import torch, warnings
from core import native, native_linear
assert native.available(), native.why_unavailable()
torch.manual_seed(0)
q = torch.randn(2, 3, 20); k = torch.randn(2, 3, 30, 20).bfloat16(); v = torch.randn(2, 3, 30, 20).bfloat16()
got = native.attn_decode(q, k, v, 25, torch.tensor([0, 7], dtype=torch.int32), 0.2)
keep = torch.arange(25)[None, :] >= torch.tensor([0, 7])[:, None]
want = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k[:, :, :25].float(), v[:, :, :25].float(),
                                                        attn_mask=keep[:, None, None, :], scale=0.2)[:, :, 0]
torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
lin = torch.nn.Linear(70, 40)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    dyn = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]
x = torch.randn(3, 70)
assert not native.gemm_available() and not native_linear.bf16_available() and not native_linear.f32_available()
m = native_linear.Int8Linear(dyn)
err = (m(x) - lin(x)).abs().max() / lin(x).abs().max()
assert err < 0.03, err
x = torch.randn(native_linear.DECODE_ROWS + 5, 70)
assert m.dyn is not None and torch.equal(m(x), dyn(x))  # many rows: fbgemm without the VNNI GEMM
w4 = torch.randn(40, 100) * 0.05
m4 = native_linear.Int4Linear(w4, torch.zeros(40))
x = torch.randn(7, 100)
xs = x.abs().amax(-1, keepdim=True) / 127
want = (torch.round(x / xs).double() @ m4.dequantized().double().T) * xs.double()
assert float((m4(x).double() - want).abs().max() / want.abs().max()) < 1e-5  # the plain-C int4 loop
assert torch.equal(torch.cat([m4(x[i:i + 1]) for i in range(7)]), m4(x))
s = (torch.randn(4, 21) * 4).bfloat16(); s[1, :9] = float("-inf"); s[2] = float("-inf")
want = torch.softmax(s.float(), -1).nan_to_num(0.0)
got = native.softmax_(s.clone()).float()
torch.testing.assert_close(got, want, rtol=8e-3, atol=1e-3)
assert bool((got[1, :9] == 0).all()) and bool((got[2] == 0).all())
k8, v8 = native.kv_quantize(torch.randn(2, 3, 30, 64)), native.kv_quantize(torch.randn(2, 3, 30, 64))
q = torch.randn(2, 3, 64)
got = native.attn_decode(q, k8, v8, 25, None, 0.125)
want = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], native.kv_dequantize(k8)[:, :, :25],
                                                        native.kv_dequantize(v8)[:, :, :25], scale=0.125)[:, :, 0]
torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
import os
from core.lm import VallEX
model = VallEX.from_checkpoint(os.environ["VALLEX_TINY"], n_heads=6, dtype=torch.bfloat16)  # oneDNN's bf16 Linear
assert model.core.ar.decode_step is None and model.core.ar.kv_dtype == torch.bfloat16
assert model.generate_ar([5, 6, 7], [0, 0, 0], 1, torch.zeros(4, 8, dtype=torch.long)).dtype == torch.long
model = VallEX.from_checkpoint(os.environ["VALLEX_TINY"], n_heads=6)  # fp32: oneDNN, and the scalar attention
assert not isinstance(model.core.ar.layers[0].qkv, native_linear.NativeLinear) and model.core.ar.native_decode_attn is False
model = VallEX.from_checkpoint(os.environ["VALLEX_TINY"], n_heads=6, quantize="int8")  # no VNNI GEMM: fbgemm's int8
assert model.core.ar.layers[0].qkv.dyn is not None  # the AR's few rows in vx_linear_i8, its prefill in fbgemm
assert not isinstance(model.core.nar.layers[0].qkv, native_linear.NativeLinear)  # the NAR in fbgemm
codes = model.generate_ar([5, 6, 7], [0, 0, 0], 1, torch.zeros(4, 8, dtype=torch.long))
assert model.generate_nar([5, 6, 7], [0, 0, 0], 1, torch.zeros(4, 8, dtype=torch.long), codes).shape == (len(codes), 8)
assert not native_linear.int4_available()
try:
    VallEX.from_checkpoint(os.environ["VALLEX_TINY"], n_heads=6, quantize="int4")
    raise SystemExit("int4 loaded without VNNI")
except Exception as e:
    assert "AVX-512 VNNI" in str(e) and "int8" in str(e), e
print("portable ok")
"""


@needs_native
def test_portable_build_without_avx512_is_correct(golden, tmp_path):
    # CPUs without AVX-512 VNNI get the plain-C loops of core/kernels/: build them for a baseline x86-64.
    env = dict(os.environ, VALLEX_KERNEL_CACHE=str(tmp_path / "k"), VALLEX_KERNEL_MARCH="x86-64-v2",
               VALLEX_TINY=str(golden / "model" / "tiny-b" / "checkpoint.pt"))
    p = subprocess.run([sys.executable, "-c", _PORTABLE_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "portable ok" in p.stdout, p.stderr[-2000:]


@needs_native
@pytest.mark.parametrize("mode", FUSED_MODES)
@pytest.mark.parametrize("sampling", [Sampling(top_k=1, max_frames=20), Sampling(top_k=8, temperature=0.9, seed=11,
                                                                                 max_frames=20)])
def test_batch_gives_the_one_by_one_tokens(golden, mode, sampling):
    # Per-request prefill + a batch-invariant decode step: each sentence of a batch gets exactly
    # the tokens it gets alone (request i samples with seed + i, as documented).
    import dataclasses

    from core.lm import LMRequest

    model = _tiny(golden, mode)
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 1024, (9, 8), generator=g)
    reqs = [LMRequest(torch.randint(5, 70, (n,), generator=g), torch.zeros(n, dtype=torch.long), 2, prompt)
            for n in (4, 7, 5, 9, 6)]
    batch = model.generate_batch(reqs, sampling)
    for i, (r, got) in enumerate(zip(reqs, batch)):
        s = sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + i)
        alone = model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s)
        assert torch.equal(got.codes, alone.codes), f"request {i}"


@needs_native
def test_int8_kv_cache_in_every_ar_path(golden):
    # The int8 mode keeps its AR cache as int8 rows: the fused step (<= FUSED_ROWS rows), the
    # per-op step (more rows: prefill, then attn_decode over the int8 cache), and best-of beams
    # (the prefix copied row to row) all generate from it.
    model = _tiny_int8(golden)
    assert model.core.ar.kv_dtype == torch.int8 and model.core.ar.cache_row == model.core.ar.hd + 4
    assert model.core.nar.kv_dtype == torch.bfloat16  # no cache in the NAR
    g = torch.Generator().manual_seed(6)
    prompt = torch.randint(0, 1024, (5, 8), generator=g)
    n_req = decode_step.FUSED_ROWS + 2
    reqs = [LMRequest(torch.randint(5, 60, (4,), generator=g), torch.zeros(4, dtype=torch.long), 1, prompt)
            for _ in range(n_req)]
    s = Sampling(top_k=1, guards=False, max_frames=12)
    batch = model.generate_batch(reqs, s)
    one = [model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s) for r in reqs]
    assert all(0 < b.codes.shape[0] <= 12 for b in batch)
    for a, b in zip(one, batch):  # each row quantized, stored and attended on its own
        assert torch.equal(a.codes, b.codes)
    beams = model.generate_ar(reqs[0].text_ids, reqs[0].text_langs, 1, prompt,
                              sampling=Sampling(seed=3, best_of=3, max_frames=10))
    assert 0 < beams.numel() <= 10


@pytest.mark.parametrize("mode", [pytest.param("bf16", marks=needs_bf16), pytest.param("fp32", marks=needs_f32)])
def test_batch_beyond_the_fused_rows_matches_one_by_one(golden, mode):
    # More rows than FUSED_ROWS. bf16: the per-op step with the same row-invariant Linear layers,
    # one by one fused; fp32: the fused step takes every row (its layer norm is not torch's).
    # Either way the same tokens.
    model = _tiny(golden, mode)
    stack, n = model.core.ar, decode_step.FUSED_ROWS + 2
    assert stack.fused_decode(torch.zeros(1, dtype=stack.kv_dtype), n) == (mode == "fp32")
    g = torch.Generator().manual_seed(6)
    prompt = torch.randint(0, 1024, (5, 8), generator=g)
    reqs = [LMRequest(torch.randint(5, 60, (4,), generator=g), torch.zeros(4, dtype=torch.long), 1, prompt)
            for _ in range(n)]
    s = Sampling(top_k=1, guards=False, max_frames=12)
    batch = model.generate_batch(reqs, s)
    for r, b in zip(reqs, batch):
        assert torch.equal(model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s).codes,
                           b.codes)


@needs_native
def test_int8_cache_prefill_in_two_chunks(golden):
    # A prefill that continues a filled int8 cache attends to the earlier keys dequantized: close
    # to one prefill of the whole prefix (which attends to its keys as computed).
    stack = _tiny_int8(golden).core.ar
    L, S, a = len(stack.layers), 14, 9
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, S, stack.d, generator=g)
    causal = torch.ones(S, S, dtype=torch.bool).tril()[None, None]
    c1, c2 = (torch.zeros(L, 2, 1, stack.h, 20, stack.cache_row, dtype=torch.int8) for _ in range(2))
    with torch.inference_mode():
        whole = stack.forward_cached(x, c1, 0, causal)
        stack.forward_cached(x[:, :a], c2, 0, causal[..., :a, :a])
        tail = stack.forward_cached(x[:, a:], c2, a, causal[..., a:, :])
    torch.testing.assert_close(tail, whole, rtol=0.05, atol=0.05)
    if native.gemm_available():  # row-count-independent int8 Linear (fbgemm's scale is per tensor)
        assert torch.equal(c1[..., :a, :], c2[..., :a, :])  # the first chunk's rows: the same bytes
