"""Token choice for the AR stage: the reference's sampling, the extra strategies, and the guards.

`Sampling` is the per-request recipe. `Sampling()` is the reference program's default (plain
multinomial over the full softmax, temperature 1); `Sampling(top_k=1)` is greedy (the reference
still calls multinomial on a one-hot distribution, i.e. argmax).

`TokenPicker` turns one row of AR logits into the next code for one generated sequence. It owns
the row's random generator (seeded, so the same seed and inputs give the same tokens), the
VALL-E 2 repetition-aware re-sampling, the running log-prob used by best-of-N, and the guards
against the AR stage's known failure modes (one token repeated for seconds, endless silence /
a loop over a handful of codes). It works on plain tensors, so it is unit-tested on synthetic
logits without a model.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from core.errors import StudioError

FRAME_RATE = 75  # EnCodec 24 kHz frames per second
EOS = 1024  # class 1024 of the AR head


SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # what torch.Generator.manual_seed takes (64 bits)


def check_seed(seed) -> None:
    """A seed is None (random) or a whole number in 64 bits: anything else raises a StudioError that
    says so (a bigger one would fail deep in torch as "Overflow when unpacking long long")."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):  # numpy's ints are Integral
        raise StudioError(f"The seed must be a whole number, not {str(seed)[:24]!r}.",
                          "Give a whole number, or none for a random seed.")
    if not SEED_MIN <= int(seed) <= SEED_MAX:
        raise StudioError(f"The seed {str(seed)[:24]} is out of range.",
                          f"Use a whole number from {SEED_MIN} to {SEED_MAX}, or none for a random seed.")


@dataclass(frozen=True)
class Sampling:
    """How the AR stage picks codes. Every field is selectable per request.

    top_k: keep the k most likely classes (None or <= 0: no filter; 1: greedy).
    top_p: nucleus filter (1.0: off). temperature: logits / temperature (0: greedy).
    seed: same seed + same inputs -> same tokens (None: drawn from torch's global RNG and
        reported in `Generation.seed`).
    best_of: sample N candidates in one batch, keep the one with the best length-normalised
        log-prob (the reference's choice; `length_penalty` as there).
    repetition_window / repetition_threshold: VALL-E 2 repetition-aware sampling. When the sampled
        code makes up more than `threshold` of the last `window` codes, it is re-drawn from the
        full (unfiltered) distribution. window 0: off.
    max_frames: cap on generated frames (the reference's own cap, 16 x text ids, always applies).
    guards: detect a code repeated for `guard_repeat_s` seconds and a loop over at most
        `guard_loop_distinct` codes for `guard_loop_s` seconds (endless silence). When sampling,
        the repeat is re-sampled (then stopped if it keeps coming back) and a loop is stopped and
        trimmed; greedy decoding is deterministic and reference-exact, so there they are only
        reported. Either way the event is listed in `Generation.warnings`.
    """

    top_k: int | None = None
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int | None = None
    best_of: int = 1
    length_penalty: float = 1.0
    repetition_window: int = 0
    repetition_threshold: float = 0.1
    max_frames: int | None = None
    guards: bool = True
    guard_repeat_s: float = 2.0
    guard_loop_s: float = 3.0
    guard_loop_distinct: int = 3
    guard_max_resamples: int = 3

    def __post_init__(self):
        def bad(msg):
            raise StudioError(f"Sampling: {msg}", hint="Check the sampling settings.")

        if self.top_k is not None and not isinstance(self.top_k, int):
            bad(f"top_k must be an int or None, got {self.top_k!r}")
        if not (0.0 < float(self.top_p) <= 1.0):
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (float(self.temperature) >= 0.0) or math.isinf(float(self.temperature)):
            bad(f"temperature must be >= 0 and finite, got {self.temperature!r}")
        if not isinstance(self.best_of, int) or self.best_of < 1 or self.best_of > 64:
            bad(f"best_of must be an int in 1..64, got {self.best_of!r}")
        if not isinstance(self.repetition_window, int) or self.repetition_window < 0:
            bad(f"repetition_window must be an int >= 0, got {self.repetition_window!r}")
        if not (0.0 <= float(self.repetition_threshold) <= 1.0):
            bad(f"repetition_threshold must be in [0, 1], got {self.repetition_threshold!r}")
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            bad(f"max_frames must be a positive int or None, got {self.max_frames!r}")
        check_seed(self.seed)
        if self.guard_repeat_s <= 0 or self.guard_loop_s <= 0 or self.guard_loop_distinct < 1:
            bad("guard limits must be positive")

    @property
    def greedy(self) -> bool:
        return (self.top_k is not None and self.top_k == 1) or float(self.temperature) == 0.0


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """The reference's `top_k_top_p_filtering` (min_tokens_to_keep=1), on a copy (the input itself
    when nothing is filtered: the reference default, once a decode step). logits [R, V]."""
    if (top_k is None or top_k <= 0) and top_p >= 1.0:
        return logits
    logits = logits.clone()
    if top_k is not None and top_k > 0:
        k = min(max(top_k, 1), logits.size(-1))
        kth = torch.topk(logits, k)[0][..., -1, None]
        logits[logits < kth] = -float("inf")
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits[remove.scatter(1, sorted_idx, remove)] = -float("inf")
    return logits


class TokenPicker:
    """Per-sequence decision state: generator, history, log-prob sum, guard state."""

    def __init__(self, sampling: Sampling, seed: int, device: torch.device | str = "cpu",
                 max_frames: int = 0):
        self.s = sampling
        self.greedy = sampling.greedy
        self.seed = int(seed)
        self.gen = None
        if not self.greedy:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(self.seed)
        self.history: list[int] = []
        self.sum_logprob = 0.0
        self.warnings: list[str] = []
        self.stop_reason: str | None = None
        self.resamples = 0
        self.repeat_limit = max(2, int(round(sampling.guard_repeat_s * FRAME_RATE)))
        self.loop_window = max(4, int(round(sampling.guard_loop_s * FRAME_RATE)))
        self._run_tok = -1
        self._run_len = 0
        self._reported: set[str] = set()

    # -- sampling ---------------------------------------------------------------------------------
    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        t = float(self.s.temperature)
        return logits / t if t != 1.0 else logits

    def _draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.gen).item())

    def pick(self, logits: torch.Tensor, greedy_tok: int | None = None) -> int:
        """logits: [V] float32 (one row). Returns the next code (EOS = 1024) and updates state.
        greedy_tok: the row's argmax when the caller already has it (batched argmax)."""
        if self.greedy:
            tok = int(torch.argmax(logits).item()) if greedy_tok is None else int(greedy_tok)
            if self.s.best_of > 1:
                self.sum_logprob += float(torch.log_softmax(logits.float(), -1)[tok])
            self._guard_greedy(tok)
            return tok
        scaled = self._scaled(logits.float()).unsqueeze(0)
        filt = filter_logits(scaled, self.s.top_k, float(self.s.top_p))
        probs = torch.softmax(filt, dim=-1)[0]
        tok = self._draw(probs)
        src = filt  # the logits the token was drawn from: its log-prob is best-of's score
        # VALL-E 2 repetition-aware sampling: a code that dominates the recent window is re-drawn
        # from the full distribution.
        w = self.s.repetition_window
        if w > 0 and tok != EOS and self.history:
            recent = self.history[-w:]
            if recent.count(tok) / w > self.s.repetition_threshold:
                full = torch.softmax(scaled, dim=-1)[0]
                tok = self._draw(full)
                src = scaled
        # Guard: one code repeated for seconds -> re-sample without it.
        if self.s.guards and tok != EOS and tok == self._run_tok and self._run_len + 1 >= self.repeat_limit:
            self.resamples += 1
            self._warn("repeat", f"guard: code {tok} repeated for {self._run_len + 1} frames "
                                 f"({(self._run_len + 1) / FRAME_RATE:.1f} s); re-sampled")
            if self.resamples > self.s.guard_max_resamples:
                self.stop_reason = "guard"
                self._warn("repeat-stop", "guard: the repeat kept coming back; generation stopped "
                                          "and the repeated frames were trimmed")
                self._trim_run()
                return EOS
            alt = filt.clone()
            alt[0, tok] = -float("inf")
            if torch.isinf(alt).all():
                alt = scaled.clone()
                alt[0, tok] = -float("inf")
            tok = self._draw(torch.softmax(alt, dim=-1)[0])
            src = alt
        if self.s.best_of > 1:  # only best-of reads it: two ops a step less otherwise
            lp = float(torch.log_softmax(src, dim=-1)[0, tok])
            if math.isinf(lp):  # drawn outside the filter (repetition-aware / guard fallback)
                lp = float(torch.log_softmax(scaled, dim=-1)[0, tok])
            self.sum_logprob += lp
        if tok != EOS:
            self._track(tok)
            if self.s.guards and self._looping():
                self.stop_reason = "guard"
                self._warn("loop", f"guard: only {len(set(self.history[-self.loop_window:]))} distinct codes "
                                   f"in the last {self.s.guard_loop_s:.1f} s (endless silence or a loop); "
                                   "generation stopped and the loop trimmed")
                keep = max(0, len(self.history) - self.loop_window + int(0.25 * FRAME_RATE))
                del self.history[keep:]
                return EOS
        return tok

    # -- guards -----------------------------------------------------------------------------------
    def _track(self, tok: int) -> None:
        if tok == self._run_tok:
            self._run_len += 1
        else:
            self._run_tok, self._run_len = tok, 1
        self.history.append(tok)

    def _looping(self) -> bool:
        w = self.loop_window
        return len(self.history) >= w and len(set(self.history[-w:])) <= self.s.guard_loop_distinct

    def _guard_greedy(self, tok: int) -> None:
        if tok == EOS:
            return
        self._track(tok)
        if not self.s.guards:
            return
        if self._run_len == self.repeat_limit:
            self._warn("repeat", f"guard: code {tok} repeated for {self._run_len} frames "
                                 f"({self._run_len / FRAME_RATE:.1f} s); greedy decoding left unchanged")
        if self._looping():
            self._warn("loop", f"guard: only {len(set(self.history[-self.loop_window:]))} distinct codes in "
                               f"the last {self.s.guard_loop_s:.1f} s (endless silence or a loop); greedy "
                               "decoding left unchanged")

    def _trim_run(self) -> None:
        keep = max(0, len(self.history) - self._run_len + min(self._run_len, int(0.25 * FRAME_RATE)))
        del self.history[keep:]

    def _warn(self, kind: str, msg: str) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            self.warnings.append(msg)
