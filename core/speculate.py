"""Greedy AR decoding, drafted in int8 and verified by the exact step: the same tokens, sooner.

A decode step of the fp32 AR streams all its weights (604 MB) for one token, and a step of 2-9
rows costs little more than one (the GEMVs read the weights once for all rows). So an int8 copy of
the AR's layers (the draft: a quarter of the bytes a step) proposes the next few codes one by one,
and one step of the exact model over [the last picked code, the drafts] gives the logits after
each: the picker takes the exact model's choice at every position, and a run stops at the first
draft it disagrees with. That choice is the one plain decoding makes, bit for bit: each row of the
fused step (core/kernels/decode_step.c) gives the floats it gives alone, sees the keys up to its
own slot, and rows past a rejected draft are overwritten before anything reads them. Greedy only:
a sampled token depends on the generator's draws, which a verified run would spend differently.

The draft's KV cache starts as the exact prefill's keys and values in int8 (no prefill of its
own); each later position gets the draft's own keys and values when it is fed. How many codes to
draft is chosen every round from the acceptance seen so far and the measured cost of a draft step
and of a verify step (none, when drafting does not pay).
"""
from __future__ import annotations

import time

import torch

from core import native
from core.decode_step import DecodeStep
from core.errors import raise_if_stopped
from core.native_linear import Int8Linear
from core.sampling import EOS

MAX_DRAFT = 8  # drafted codes a round, at most (a 9-row verify step: ~1.8x one row in fp32)


class Draft:
    """An int8 copy of an AR stack's decoder layers (its LayerNorms shared) and their fused decode
    step over an int8 KV cache. Its Linears (Int8Linear.from_float) are made while the float
    weights are at hand (core/quantize.py)."""

    def __init__(self, stack, linears: list[dict[str, Int8Linear]]):
        self.d, self.h = stack.d, stack.h
        self.layers = []
        for layer, lin in zip(stack.layers, linears):
            row = torch.nn.Module()
            row.norm1, row.norm2 = layer.norm1, layer.norm2
            for name, q in lin.items():
                setattr(row, name, q)
            self.layers.append(row)
        self.step = DecodeStep(self)
        self.stats = {"rounds": 0, "drafted": 0, "accepted": 0}  # of the last decode: the bench reports them

    def prefix_cache(self, cache: torch.Tensor, P: int) -> torch.Tensor:
        """The draft's int8 cache [L, 2, 1, H, Smax, hd + 4] with slots [0, P) holding the exact
        prefill's keys and values (cache: the exact model's [L, 2, 1, H, Smax, hd])."""
        L, _, _, H, S, hd = cache.shape
        out = torch.zeros(L, 2, 1, H, S, hd + 4, dtype=torch.int8)
        for i in range(L):
            for kv in range(2):
                native.kv_quantize_into(cache[i, kv, 0, :, :P], out[i, kv, 0, :, :P])
        return out


def available(stack) -> bool:
    """Whether greedy decoding of this stack can be drafted: a draft and a fused exact step."""
    return getattr(stack, "draft", None) is not None and stack.decode_step is not None \
        and not native.env_off("VALLEX_SPECULATE")


class _Costs:
    """Running estimates behind the draft length: acceptance per drafted code, and the seconds of a
    draft step and of a verify step (one row, and per extra row)."""

    def __init__(self):
        self.accept = 0.9  # prior: int8 picks fp32's code ~98% of the time on the bench's weights
        self.t_draft = None
        self.t_verify = None  # one row
        self.t_row = None     # each extra row of a verify step
        self.rounds = 0

    @staticmethod
    def _ema(old, new, w=0.2):
        return new if old is None else old + w * (new - old)

    def best_length(self, room: int) -> int:
        """The draft length with the most codes per second expected (0: a plain step)."""
        self.rounds += 1
        if room <= 0:
            return 0
        if self.t_draft is None or self.t_verify is None:
            return min(2, room)  # measure both first
        a = min(self.accept, 0.995)
        t_row = self.t_row if self.t_row is not None else 0.1 * self.t_verify
        best, best_rate = 0, 1.0 / self.t_verify
        for m in range(1, min(MAX_DRAFT, room) + 1):
            expect = (1 - a ** (m + 1)) / (1 - a)  # codes a round: accepted drafts + the verify's own
            rate = expect / (m * self.t_draft + self.t_verify + m * t_row)
            if rate > best_rate:
                best, best_rate = m, rate
        if best == 0 and self.rounds % 16 == 0:
            best = 1  # look again now and then: acceptance changes along a sentence
        return best

    def saw(self, drafted: int, accepted: int, t_draft: float, t_verify: float, rows: int) -> None:
        if drafted:
            # per drafted code up to the first miss (codes after it were never put to the test)
            tested = min(drafted, accepted + 1)
            self.accept = self._ema(self.accept, accepted / tested, 0.3)
            self.t_draft = self._ema(self.t_draft, t_draft / drafted)
        if rows == 1:
            self.t_verify = self._ema(self.t_verify, t_verify)
        elif self.t_verify is not None:
            self.t_row = self._ema(self.t_row, max(0.0, t_verify - self.t_verify) / (rows - 1))
        else:
            self.t_verify = t_verify / (1 + 0.1 * (rows - 1))


def decode(model, req, picker, cap: tuple[int, str], cache: torch.Tensor, logits: torch.Tensor, P: int,
           io, stop=None) -> str:
    """Greedy decoding of one request after its prefill (core/ar.py: decode_ar), drafted by the
    stack's Draft. cache: the exact model's [L, 2, 1, H, Smax, row] with the prefix in slots
    [0, P); logits: [1, V], the prefill's next-code logits; cap: the most codes and the stop
    reason at that count; io: the step's TokenIO (positions up to T + cap). Codes go to
    picker.history; returns the stop reason. stop() is asked every round (core/errors.py)."""
    cap, why = cap
    stack = model.core.ar
    draft: Draft = stack.draft
    exact = stack.decode_step
    dcache = draft.prefix_cache(cache, P)
    one = torch.zeros(1, dtype=torch.int32)  # both steps: every row reads cache row 0
    costs = _Costs()
    stats = {"rounds": 0, "drafted": 0, "accepted": 0}
    draft.stats = stats
    hist = picker.history
    # Code i of the history sits at cache slot P + i and position T + 1 + i (BOS is position 0,
    # the prompt's frames 1..T); the draft's cache holds codes [0, fed) of it.
    fed = 0
    tok = picker.pick(logits[0])
    while True:
        raise_if_stopped(stop)
        if tok == EOS:
            return "eos"
        if len(hist) >= cap:
            return why
        h = len(hist)  # tok is code h - 1, not yet in either cache
        m = costs.best_length(cap - 1 - h)
        drafts: list[int] = []
        t0 = time.perf_counter()
        if m:
            # feed the draft what it has not seen (tok, and the last round's final draft when the
            # whole run was accepted), then its own picks
            pend = list(range(fed, h))
            while len(drafts) < m:
                idx = pend if not drafts else [h - 1 + len(drafts)]
                codes = [hist[i] for i in pend] if not drafts else [drafts[-1]]
                out = draft.step.logits(io, codes, [req.T + 1 + i for i in idx], dcache, P + idx[0], None,
                                        one.expand(len(idx)), [P + i for i in idx])
                fed = idx[-1] + 1
                nxt = int(out[-1].argmax())
                if nxt == EOS:
                    break
                drafts.append(nxt)
        t1 = time.perf_counter()
        rows = [tok] + drafts  # codes h - 1 .. h - 1 + len(drafts)
        idx = list(range(h - 1, h + len(drafts)))
        out = exact.logits(io, rows, [req.T + 1 + i for i in idx], cache, P + h - 1, None,
                           one.expand(len(idx)), [P + i for i in idx])
        t2 = time.perf_counter()
        accepted = 0
        for j in range(len(rows)):
            tok = picker.pick(out[j])
            if tok == EOS or len(hist) >= cap or j == len(drafts) or tok != drafts[j]:
                break
            accepted += 1
        # the draft's cache is right up to the last code both it and the picker agree on
        fed = min(fed, len(hist) - 1 if tok != EOS else len(hist))
        costs.saw(len(drafts), accepted, t1 - t0, t2 - t1, len(rows))
        stats["rounds"] += 1
        stats["drafted"] += len(drafts)
        stats["accepted"] += accepted
