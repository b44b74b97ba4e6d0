"""VALL-E X codec language model (AR + NAR over EnCodec codes), token-exact with the reference.

Public API:
    from core.lm import VallEX, Sampling
    model = VallEX.from_checkpoint(path, n_heads=16, device="cpu", dtype=torch.float32, quantize=None)
    model.generate_ar(text_ids, text_langs, prompt_text_len, prompt_codes, sampling=Sampling(top_k=1)) -> [N]
    model.generate_nar(text_ids, text_langs, prompt_text_len, prompt_codes, ar_codes) -> [N, 8]
    model.generate(..., sampling) -> Generation(codes [N, 8], stop_reason, warnings, seed)
    model.generate_batch([LMRequest(...) or dict, ...], sampling) -> [Generation, ...]

`text_ids` / `text_langs` are 1-D (prompt transcript first, one model language id per id: en=0,
zh=1, ja=2); `prompt_codes` is [T, 8] (T may be 0). Codes come back on the CPU as int64.
Requests, their checks and the result type are in core/lm_io.py; the layers in core/transformer.py;
the AR decoding loop in core/ar.py, the NAR passes in core/nar.py.

Reference behaviour reproduced in float32 (see ../shared/golden/README.md): the 16 x len(text_ids)
length cap (exactly 16*L frames, the sample at the cap is discarded), immediate EOS -> no frames,
positions restarting at 0 for each of the four segments with the checkpoint's alpha, the AR text
rows seeing only text, NAR prompt frames carrying the sum of all 8 codebook embeddings, AdaLN,
the tied NAR heads. Greedy (`Sampling(top_k=1)`) is the parity mode.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from core import native_linear
from core.ar import decode_ar
from core.checkpoint import (N_CODES, _fill_tied_aliases, _reference_tying, check_state_dict, checkpoint_to_internal,
                             infer_config, read_state_dict, reference_schema)
from core.decode_step import TokenIO
from core.devices import resolve_device
from core.errors import StudioError, check_stop
from core.lm_io import MAX_CONTEXT_FRAMES, Generation, LMRequest, Req, codes_1d, prepare, unpack
from core.nar import decode_nar
from core.memory import release_pages, trim_heap, tune_allocator
from core.quantize import DEFAULT_INT8, QUANTIZE_MODES, apply_precision, convert_tensor
from core.sampling import Sampling
from core.transformer import Stack, embed, sinusoid_table

__all__ = ["VallEX", "Sampling", "Generation", "LMRequest", "reference_schema", "MAX_CONTEXT_FRAMES"]



# ------------------------------------------------------------------------------------ the model


def _table(n: int, d: int) -> nn.Embedding:
    """An embedding table for load_state_dict(assign=True) to fill: no random init. On the meta
    device nn.Embedding's own init (normal_) imports torch._dynamo, ~2 s of every load."""
    return nn.Embedding(n, d, _weight=torch.empty(n, d))


class _Core(nn.Module):
    def __init__(self, cfg: dict[str, int], n_heads: int):
        super().__init__()
        d, n_text, n_q = cfg["d_model"], cfg["n_text"], cfg["n_q"]
        self.d, self.n_q, self.n_text = d, n_q, n_text
        self.ar_text_emb = _table(n_text, d)
        self.ar_audio_emb = _table(N_CODES + 2, d)
        self.ar_lang_emb = _table(3, d)
        self.ar_text_alpha = nn.Parameter(torch.empty(1))
        self.ar_audio_alpha = nn.Parameter(torch.empty(1))
        self.ar = Stack(d, n_heads, cfg["n_ar"], cfg["d_ff"], adaptive=False)
        self.ar_head = nn.Linear(d, N_CODES + 1, bias=False)
        self.nar_text_emb = _table(n_text, d)
        self.nar_lang_emb = _table(3, d)
        self.nar_audio_embs = nn.ModuleList([_table(N_CODES + 1, d)]
                                            + [_table(N_CODES, d) for _ in range(n_q - 1)])
        self.nar_text_alpha = nn.Parameter(torch.empty(1))
        self.nar_audio_alpha = nn.Parameter(torch.empty(1))
        self.nar = Stack(d, n_heads, cfg["n_nar"], cfg["d_ff"], adaptive=True)
        self.nar_heads = nn.ModuleList(nn.Linear(d, N_CODES, bias=False) for _ in range(n_q - 1))
        self.nar_stage_embs = nn.ModuleList(_table(1, d) for _ in range(n_q - 1))
        self.head_dtype = torch.float32

    def embeddings(self):
        return [self.ar_text_emb, self.ar_audio_emb, self.ar_lang_emb, self.nar_text_emb, self.nar_lang_emb,
                *self.nar_audio_embs]

    def heads(self):
        return [self.ar_head, *self.nar_heads]


class VallEX:
    """The VALL-E X LM engine. Build it with `VallEX.from_checkpoint`."""

    def __init__(self, core: _Core, cfg: dict[str, int], n_heads: int, device: torch.device,
                 dtype: torch.dtype, quantize: str | None, source: str):
        self.core = core
        self.config = dict(cfg, n_heads=n_heads)
        self.device = device
        self.dtype = dtype
        self.quantize = quantize
        self.source = source
        self._pe = sinusoid_table(4000, cfg["d_model"], device=device) if device.type != "meta" else None

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, n_heads: int = 16, device="cpu", dtype=torch.float32,
                        quantize: str | None = None, warmup: bool = True) -> "VallEX":
        """Load the reference checkpoint (`.pt` {"model": state_dict}, or `.safetensors`), strictly.

        Sizes come from the weights; `n_heads` from the argument. `dtype`: torch.float32 (the
        reference-exact mode), torch.bfloat16 (or "fp32"/"bf16"); `quantize`: None or "int8"
        (or an explicit backend: "int8-dynamic", "int8-weight", "int8-torchao"), or "int4" (the
        AR in 4 bits, the NAR in int8: the fastest CPU mode, see core/quantize.py). `warmup` runs
        one tiny AR + NAR pass so that kernel set-up (oneDNN, thread pools) happens at load time."""
        sd, mmapped = read_state_dict(path)
        model = cls.from_state_dict(sd, n_heads=n_heads, device=device, dtype=dtype, quantize=quantize,
                                    source=str(path), mmapped=mmapped)
        if warmup:
            model.warmup()
        return model

    @torch.inference_mode()
    def warmup(self) -> None:
        req = self._prepare([5, 6, 7], [0, 0, 0], 1, torch.zeros(2, 8, dtype=torch.long))
        ar = self._ar([req], Sampling(top_k=1, max_frames=2, guards=False), seeds=[0])[0]["codes"]
        self._nar([req], [torch.tensor(ar or [0], dtype=torch.long, device=self.device)])

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], n_heads: int = 16, device="cpu",
                        dtype=torch.float32, quantize: str | None = None, source: str = "<state dict>",
                        mmapped: bool = False) -> "VallEX":
        dtype = _parse_dtype(dtype)
        device = resolve_device(device, allow_meta=True)  # meta: the schema check, no data
        if device.type == "cpu":
            tune_allocator()
        if quantize is not None:
            quantize = str(quantize).lower()
            if quantize == "int8":
                quantize = DEFAULT_INT8 if device.type == "cpu" else "int8-weight"
            if quantize not in QUANTIZE_MODES:
                raise StudioError(f"unknown quantize mode {quantize!r}; use None, 'int8' or one of "
                                  f"{', '.join(QUANTIZE_MODES)}")
        sd = dict(sd)
        if source.endswith(".safetensors"):
            _fill_tied_aliases(sd)
        cfg = infer_config(sd, source)
        if not isinstance(n_heads, int) or n_heads < 1 or cfg["d_model"] % n_heads:
            raise StudioError(f"n_heads={n_heads!r} does not divide the model width {cfg['d_model']} "
                              f"({source})", hint="The public checkpoint uses 16 heads.")
        check_state_dict(sd, cfg, source)
        _reference_tying(sd)
        with torch.device("meta"):
            core = _Core(cfg, n_heads)
        core.load_state_dict({checkpoint_to_internal(k): v for k, v in sd.items()}, strict=True, assign=True)
        del sd
        for p in core.parameters():
            p.requires_grad_(False)
        core.eval()
        # AdaLN: (w, b) per stage from the (constant) stage embeddings, as the reference computes them;
        # folded into the LayerNorm's affine in the reduced-precision modes (fp32 keeps the order).
        reduced = dtype != torch.float32 or quantize is not None
        on_gpu = device.type not in ("cpu", "meta")
        if on_gpu and not reduced:
            _move(core, device)
            mmapped = False
        with torch.no_grad():
            stage_embs = [e.weight.detach() for e in core.nar_stage_embs]
            for mod in list(core.nar.modules()):
                if hasattr(mod, "precompute"):
                    w = mod.project.weight
                    mod.precompute(stage_embs)
                    if mmapped:
                        release_pages(w)
            if device.type != "meta":
                # reduced modes on a GPU: each table moves as it is converted, so the GPU never
                # holds the float32 copy (peak memory: the bf16 / int8 size, not the fp32 one)
                apply_precision(core, dtype, quantize, device, mmapped)
                if on_gpu:
                    _move(core, device)  # what the conversion left on the CPU (norms, AdaLN tables)
                trim_heap()
            if reduced:  # after the move: the folded tables are plain tensors, where the norms are
                for mod in core.nar.modules():
                    if hasattr(mod, "fold"):
                        mod.fold()
        return cls(core, cfg, n_heads, device, dtype, quantize, source)

    # -- public generation API --------------------------------------------------------------------
    @torch.inference_mode()
    def generate_ar(self, text_ids, text_langs, prompt_text_len, prompt_codes,
                    sampling: Sampling | None = None) -> torch.Tensor:
        """Codebook-0 codes [N] (prompt excluded, EOS stripped)."""
        sampling = sampling or Sampling()
        req = self._prepare(text_ids, text_langs, prompt_text_len, prompt_codes)
        out = self._ar([req], sampling)[0]
        return torch.tensor(out["codes"], dtype=torch.long)

    @torch.inference_mode()
    def generate_nar(self, text_ids, text_langs, prompt_text_len, prompt_codes, ar_codes) -> torch.Tensor:
        """All 8 codebooks [N, 8] for the given codebook-0 codes (column 0 = ar_codes)."""
        req = self._prepare(text_ids, text_langs, prompt_text_len, prompt_codes)
        ar = codes_1d(ar_codes, "ar_codes")
        return self._nar([req], [ar.to(self.device)])[0].cpu()

    @torch.inference_mode()
    def generate(self, text_ids, text_langs, prompt_text_len=0, prompt_codes=None,
                 sampling: Sampling | None = None, stop: Callable[[], bool] | None = None) -> Generation:
        return self.generate_batch([LMRequest(text_ids, text_langs, prompt_text_len, prompt_codes)],
                                   sampling, stop=stop)[0]

    @torch.inference_mode()
    def generate_batch(self, requests: Sequence[Any], sampling: Sampling | None = None,
                       max_batch: int = 16, stop: Callable[[], bool] | None = None) -> list[Generation]:
        """Many sentences at once (left-padded AR with masks, right-padded NAR). Request i samples
        with seed `sampling.seed + i` (or a drawn seed + i), so it gives the same tokens as
        `generate` with that seed; greedy gives the same tokens as one-by-one greedy.
        stop() is asked between decoding steps: True raises core.errors.Stopped at once."""
        sampling = sampling or Sampling()
        check_stop(stop)
        reqs = [self._prepare(*unpack(r)) for r in requests]
        if not reqs:
            return []
        base = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        results: list[Generation] = []
        for lo in range(0, len(reqs), max_batch):
            chunk = reqs[lo:lo + max_batch]
            t0 = time.perf_counter()
            ars = self._ar(chunk, sampling, seeds=[base + lo + i for i in range(len(chunk))], stop=stop)
            t1 = time.perf_counter()
            nars = self._nar(chunk, [torch.tensor(a["codes"], dtype=torch.long, device=self.device) for a in ars],
                             stop=stop)
            nars = [c.cpu() for c in nars]  # inside the timing: on a GPU this waits for the NAR's kernels
            t2 = time.perf_counter()
            for r, a, codes in zip(chunk, ars, nars):
                warns = r.warnings + a["warnings"]
                if a["stop_reason"] == "eos" and not a["codes"]:
                    warns.append("the model stopped at once (EOS on the first step): no audio generated")
                results.append(Generation(codes=codes, stop_reason=a["stop_reason"], warnings=warns,
                                          seed=a["seed"], timings={"ar_s": t1 - t0, "nar_s": t2 - t1}))
        return results

    # -- input checks -------------------------------------------------------------------------------
    def _prepare(self, text_ids, text_langs, prompt_text_len, prompt_codes) -> Req:
        return prepare(text_ids, text_langs, prompt_text_len, prompt_codes, self.config["n_text"], self.device)

    # -- positions / embeddings -------------------------------------------------------------------
    def positions(self, n: int) -> torch.Tensor:
        if self._pe.shape[0] < n:
            self._pe = sinusoid_table(n, self.config["d_model"], device=self.device)
        return self._pe[:n]

    def token_io(self, n_pos: int) -> TokenIO | None:
        """The AR decode step's input (audio embedding + alpha * positions, as core.ar adds them)
        and output (final norm, head) for DecodeStep.logits; None without a native bf16 / fp32 head."""
        c = self.core
        if not isinstance(c.ar_head, (native_linear.Bf16Linear, native_linear.F32Linear)):
            return None
        return TokenIO(c.ar_audio_emb.weight, c.ar_audio_alpha * self.positions(n_pos), c.ar.norm, c.ar_head)

    def text_input(self, r: Req, nar: bool) -> torch.Tensor:
        c = self.core
        te, le, alpha = (c.nar_text_emb, c.nar_lang_emb, c.nar_text_alpha) if nar else \
            (c.ar_text_emb, c.ar_lang_emb, c.ar_text_alpha)
        x = embed(te, r.ids) + embed(le, r.langs)
        return x * 1.0 + alpha * self.positions(r.L)

    # -- the two halves (core/ar.py, core/nar.py) ---------------------------------------------------
    def _ar(self, reqs: list[Req], s: Sampling, seeds: list[int] | None = None, stop=None) -> list[dict]:
        return decode_ar(self, reqs, s, seeds, stop)

    def _nar(self, reqs: list[Req], ars: list[torch.Tensor], stop=None) -> list[torch.Tensor]:
        return decode_nar(self, reqs, ars, stop)


# ------------------------------------------------------------------------------------ helpers


def _move(core: nn.Module, device: torch.device) -> None:
    """Every CPU parameter and buffer of `core` onto `device` (frozen parameters). Tensors that
    share storage (the NAR heads tied to their embedding tables) stay shared: one copy moves."""
    done: dict = {}
    for mod in core.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.device.type == "cpu":
                setattr(mod, name, nn.Parameter(convert_tensor(p, p.dtype, device, False, done), requires_grad=False))
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.device.type == "cpu":
                setattr(mod, name, convert_tensor(b, b.dtype, device, False, done))


def _parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif isinstance(dtype, str):
        m = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if dtype.lower() in m:
            return m[dtype.lower()]
    raise StudioError(f"unsupported dtype {dtype!r}; use torch.float32 or torch.bfloat16")
