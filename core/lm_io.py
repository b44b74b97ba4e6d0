"""What goes into the LM and what comes out: requests, their checks, results.

Every check raises a `core.errors` error (a ValueError) that says what is wrong, so the UI, the
API and the CLI can show it as is; `prepare` also trims a prompt that would overflow the model's
~22 s context (with a warning), keeping the target text whole.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from core.checkpoint import N_CODES
from core.errors import StudioError, TextError, VoiceError
from core.sampling import FRAME_RATE

log = logging.getLogger(__name__)

MAX_CONTEXT_FRAMES = 22 * FRAME_RATE  # training clips were <= 22 s: prompt + output
MIN_PROMPT_FRAMES = 3 * FRAME_RATE  # a trimmed prompt keeps at least 3 s


# ------------------------------------------------------------------------------------ results


@dataclass
class Generation:
    """One sentence's codes. stop_reason: "eos" | "limit" (16 x text ids) | "max_frames" | "guard"."""

    codes: torch.Tensor  # int64 [N, 8]
    stop_reason: str
    warnings: list[str] = field(default_factory=list)
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class LMRequest:
    text_ids: Any
    text_langs: Any
    prompt_text_len: int = 0
    prompt_codes: Any = None


@dataclass
class Req:  # validated, on the model's device
    ids: torch.Tensor  # [L] long
    langs: torch.Tensor  # [L] long
    p_len: int
    prompt: torch.Tensor  # [T, 8] long
    warnings: list[str]

    @property
    def L(self) -> int:
        return int(self.ids.numel())

    @property
    def T(self) -> int:
        return int(self.prompt.shape[0])


# ------------------------------------------------------------------------------------ checks


def prepare(text_ids, text_langs, prompt_text_len, prompt_codes, n_text: int, device) -> Req:
    """Checks one request (ValueError subclasses naming what is wrong) and trims a prompt that
    would overflow the model's context, with a warning. Returns it on `device`."""
    ids = _ints_1d(text_ids, "text_ids", TextError)
    langs = _ints_1d(text_langs, "text_langs", TextError)
    if ids.numel() == 0:
        raise TextError("empty text: text_ids has no ids", hint="Give the text to speak.")
    if langs.numel() != ids.numel():
        raise TextError(f"length mismatch: {ids.numel()} text_ids but {langs.numel()} text_langs "
                        "(one language id per text id)")
    if int(ids.min()) < 0 or int(ids.max()) >= n_text:
        bad = ids[(ids < 0) | (ids >= n_text)][:5].tolist()
        raise TextError(f"text_ids out of range 0..{n_text - 1}: {bad}")
    if int(langs.min()) < 0 or int(langs.max()) > 2:
        bad = langs[(langs < 0) | (langs > 2)][:5].tolist()
        raise TextError(f"text_langs out of range (0=en, 1=zh, 2=ja): {bad}")
    try:
        p_len = int(prompt_text_len)
        if p_len != prompt_text_len:
            raise ValueError
    except (TypeError, ValueError):
        raise TextError(f"prompt_text_len must be an int, got {prompt_text_len!r}") from None
    if not 0 <= p_len < ids.numel():
        raise TextError(f"prompt_text_len {p_len} out of range: there are {ids.numel()} text ids and "
                        "at least one must be target text")
    prompt = _prompt_codes(prompt_codes)
    warns: list[str] = []
    T = prompt.shape[0]
    n_target = ids.numel() - p_len
    rate = min(8.0, max(3.0, T / p_len)) if p_len and T else 5.0
    budget = max(MIN_PROMPT_FRAMES, MAX_CONTEXT_FRAMES - int(math.ceil(rate * n_target)))
    if T > budget:
        drop = T - budget
        k = int(round(p_len * drop / T)) if p_len else 0
        k = min(k, p_len)
        msg = (f"prompt trimmed: {T / FRAME_RATE:.1f} s of prompt + about {rate * n_target / FRAME_RATE:.1f} s "
               f"of speech exceeds the model's ~{MAX_CONTEXT_FRAMES // FRAME_RATE} s context; kept the last "
               f"{budget / FRAME_RATE:.1f} s of the prompt" + (f" and dropped its first {k} text ids" if k else ""))
        log.warning(msg)
        warns.append(msg)
        prompt = prompt[drop:]
        ids, langs, p_len = ids[k:], langs[k:], p_len - k
    return Req(ids.to(device), langs.to(device), p_len, prompt.to(device), warns)


def unpack(r) -> tuple:
    """A request as an LMRequest, a dict or a 2-4 tuple -> (text_ids, text_langs, prompt_text_len,
    prompt_codes)."""
    if isinstance(r, LMRequest):
        return r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes
    if isinstance(r, dict):
        try:
            return r["text_ids"], r["text_langs"], r.get("prompt_text_len", 0), r.get("prompt_codes")
        except KeyError as e:
            raise StudioError(f"request is missing {e}") from None
    if isinstance(r, (tuple, list)) and 2 <= len(r) <= 4:
        r = tuple(r) + (0, None)[len(r) - 2:]
        return r[:4]
    raise StudioError(f"unsupported request {type(r).__name__}: use LMRequest or a dict")


def _to_tensor(x, name: str, err) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            t = torch.as_tensor(x if x is not None else [])
        except Exception:
            raise err(f"{name} must be a list or tensor of ints, got {type(x).__name__}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise err(f"{name} must hold integers, got {t.dtype}")
    if t.is_floating_point():
        if t.numel() and not bool(torch.all(torch.isfinite(t) & (t == torch.round(t)))):
            raise err(f"{name} must hold integers, got non-integral values")
    return t.long() if t.numel() else t.reshape(t.shape).long()


def _ints_1d(x, name: str, err=StudioError) -> torch.Tensor:
    t = _to_tensor(x, name, err)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise err(f"{name} must be 1-D, got shape {list(t.shape)}")
    return t


def codes_1d(x, name: str) -> torch.Tensor:
    t = _ints_1d(x, name, VoiceError)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= N_CODES):
        bad = t[(t < 0) | (t >= N_CODES)][:5].tolist()
        raise VoiceError(f"{name} outside 0..{N_CODES - 1}: {bad}")
    return t


def _prompt_codes(x) -> torch.Tensor:
    if x is None:
        return torch.zeros(0, 8, dtype=torch.long)
    t = _to_tensor(x, "prompt_codes", VoiceError)
    if t.numel() == 0:
        return torch.zeros(0, 8, dtype=torch.long)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2 or t.shape[1] != 8:
        raise VoiceError(f"prompt_codes must be [T, 8] (frames x codebooks), got shape {list(t.shape)}")
    if int(t.min()) < 0 or int(t.max()) >= N_CODES:
        bad = t[(t < 0) | (t >= N_CODES)][:5].tolist()
        raise VoiceError(f"prompt_codes outside 0..{N_CODES - 1}: {bad}")
    return t.contiguous()
