"""The AR's fused decode step: one decode position of a whole int8, int4, bf16 or fp32 AR stack
(all layers, and optionally the token's embedding and the head) in one C call (core/kernels/
decode_step.c), over the native Linear layers of core/native_linear.py.
"""
from __future__ import annotations

import ctypes

import torch

from core import native
from core.native_linear import Bf16Linear, F32Linear, Int4Linear, Int8Linear, QLinear, _lib, _ptr

FUSED_ROWS = 16  # the fused decode step (no per-op overhead) still wins up to this many rows


class _QLayer(ctypes.Structure):
    _fields_ = [("ln1_w", ctypes.c_void_p), ("ln1_b", ctypes.c_void_p), ("ln2_w", ctypes.c_void_p),
                ("ln2_b", ctypes.c_void_p), ("qkv", QLinear), ("out", QLinear), ("ff1", QLinear),
                ("ff2", QLinear)]


class _TokenIO(ctypes.Structure):
    _fields_ = [("emb", ctypes.c_void_p), ("emb_bf16", ctypes.c_int), ("ape", ctypes.c_void_p),
                ("norm_w", ctypes.c_void_p), ("norm_b", ctypes.c_void_p), ("head", QLinear)]


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
