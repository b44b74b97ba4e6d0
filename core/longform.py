"""Long text for `core.synth`: prompts, per-sentence requests, the two prompt modes, batching.

The reference generates each sentence on its own and concatenates the codes before one decode.
Fixed mode gives every sentence the same voice prompt (sentences are independent, so they are
batched); sliding mode makes the previous sentence's output codes and phonemes the next prompt
(sequential). Prompt + output stay under ~22 s, the longest clips the model was trained on.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.audio import FRAME_RATE, N_CODEBOOKS
from core.sampling import SEED_MAX

if TYPE_CHECKING:
    from core.text import Phonemes

MAX_CONTEXT_S = 22.0  # prompt + generated audio, seconds (training clips were at most 22 s)
MIN_OUTPUT_S = 4.0  # never cap a sentence below this, however long its prompt
SLIDING_MAX_PROMPT_S = 10.0  # a longer previous sentence is not used as the next prompt
# Phoneme ids per English-equivalent character of the splitter's budget that one sentence may
# reach: ordinary chunks stay under ~2 (Mandarin ~2, numbers read out ~2-4 over short spans), while
# a run the splitter had to cut blindly ("9" * 68 in Chinese: 567 ids) is split again.
MAX_IDS_PER_CHAR = 3.0
MIN_SPLIT_CHARS = 8.0  # below this budget a chunk that still has too many ids is left out
FIRST_GROUP = 1  # stream: the first sentence alone so that audio starts early
GROUP_SIZE = 8  # then up to this many sentences per batch

LANG_IDS = {"en": 0, "zh": 1, "ja": 2}  # model language ids (not the .npz lang_code order)


@dataclass(frozen=True)
class Prompt:
    """What the LM continues from. codes int64 [T, 8]; text_ids/text_langs of equal length."""

    codes: np.ndarray
    text_ids: tuple[int, ...] = ()
    text_langs: tuple[int, ...] = ()

    @staticmethod
    def empty() -> "Prompt":
        return Prompt(np.zeros((0, N_CODEBOOKS), dtype=np.int64))

    @staticmethod
    def from_voice(voice) -> "Prompt":
        codes = np.asarray(voice.audio_tokens, dtype=np.int64).reshape(-1, N_CODEBOOKS)
        ids = tuple(int(i) for i in voice.text_ids)
        return Prompt(codes, ids, (LANG_IDS[voice.language],) * len(ids))

    @property
    def seconds(self) -> float:
        return self.codes.shape[0] / FRAME_RATE


@dataclass
class Request:
    """One sentence to generate: engine inputs plus bookkeeping."""

    index: int
    text: str
    ids: list[int]
    langs: list[int]
    phonemes: str
    prompt: Prompt
    seed: int
    warnings: list[str] = field(default_factory=list)
    cap_s: float | None = None  # the user's cap on this sentence's audio
    seed_given: bool = False  # the user chose the seed (else the studio drew it and may draw again)

    def engine_args(self) -> dict:
        """Keyword arguments of `VallEX.generate` (tensors on CPU)."""
        p = self.prompt
        return {
            "text_ids": torch.tensor(list(p.text_ids) + self.ids, dtype=torch.long),
            "text_langs": torch.tensor(list(p.text_langs) + self.langs, dtype=torch.long),
            "prompt_text_len": len(p.text_ids),
            "prompt_codes": torch.from_numpy(np.ascontiguousarray(p.codes, dtype=np.int64)),
        }

    def max_frames(self) -> int:
        """Frames this sentence may generate so that prompt + output stay under MAX_CONTEXT_S."""
        room = max(MAX_CONTEXT_S - self.prompt.seconds, MIN_OUTPUT_S)
        if self.cap_s is not None:
            room = min(room, self.cap_s)
        return max(1, int(round(room * FRAME_RATE)))


def sliding_prompt(first: Prompt, prev: Request, prev_codes: np.ndarray) -> tuple[Prompt, str | None]:
    """The prompt after sentence `prev` in sliding mode, and a note when it falls back to `first`.

    prev_codes: int64 [N, 8] generated for `prev`. A sentence that came out empty or longer than
    SLIDING_MAX_PROMPT_S would leave too little room (or nothing) to continue from, so the original
    prompt is used again for the next sentence.
    """
    n = int(prev_codes.shape[0])
    if n < FRAME_RATE // 2:
        return first, f"sentence {prev.index + 1} was too short to continue from; used the voice prompt"
    if n / FRAME_RATE > SLIDING_MAX_PROMPT_S:
        return first, (f"sentence {prev.index + 1} is {n / FRAME_RATE:.1f} s long; "
                       "used the voice prompt for the next one")
    return Prompt(np.asarray(prev_codes, dtype=np.int64), tuple(prev.ids), tuple(prev.langs)), None


def groups(n: int, batch: bool) -> list[list[int]]:
    """Sentence indices in the order they are generated: one group = one engine batch."""
    if not batch:
        return [[i] for i in range(n)]
    out, start = [], 0
    size = FIRST_GROUP
    while start < n:
        out.append(list(range(start, min(n, start + size))))
        start += size
        size = GROUP_SIZE
    return out


def concat_codes(codes: list[np.ndarray]) -> np.ndarray:
    """[N_i, 8] int64 pieces -> [sum N_i, 8] (empty pieces allowed)."""
    parts = [np.asarray(c, dtype=np.int64).reshape(-1, N_CODEBOOKS) for c in codes]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, N_CODEBOOKS), dtype=np.int64)


_RNG = random.Random()


def new_seed() -> int:
    return _RNG.randrange(2**31 - 1)


def sentence_requests(text: str, options, prompt: Prompt, warnings: list[str]) -> list[Request]:
    """`text` (options: a core.synth.SynthOptions) -> one Request per sentence, all on `prompt`. A
    sentence the front-end cannot read is skipped with a note in `warnings`."""
    from core.text import split_sentences
    from core.text.split import DEFAULT_BUDGET

    budget = float(options.max_chars or DEFAULT_BUDGET)
    # a small budget the user picked makes chunks shorter, not the id cap stricter
    max_ids = int(MAX_IDS_PER_CHAR * max(budget, DEFAULT_BUDGET))
    accent = None if options.accent == "keep" else options.accent
    base_seed = new_seed()
    requests: list[Request] = []
    for chunk in split_sentences(text, language=options.language, max_chars=budget):
        for sentence, ph, notes in _phonemized(chunk, options.language, accent, budget, max_ids, warnings):
            n = len(requests)
            requests.append(Request(n, sentence, list(ph.ids), list(ph.langs), ph.phonemes, prompt,
                                    sentence_seed(options.seed, n, base_seed), warnings=notes,
                                    cap_s=options.max_sentence_s, seed_given=options.seed is not None))
    return requests


def _phonemized(sentence: str, language: str, accent, budget: float, max_ids: int,
                warnings: list[str]) -> list[tuple[str, Phonemes, list[str]]]:
    """One splitter chunk -> [(text, Phonemes, notes)] of at most `max_ids` ids each. A chunk over
    the cap (a long run without spaces or punctuation, read out in many phonemes) is split again
    with half the budget (or less); one that cannot be split is left out with a note."""
    from core.errors import TextError
    from core.text import phonemize, split_sentences
    from core.text.scripts import screen

    screened = screen(sentence)  # letters the model cannot say are left out, not read as noise
    notes = [screened.note()] if screened.dropped else []
    if not screened.has_words():
        warnings.append(f"skipped {sentence[:40]!r}: " + (screened.reason() if notes else "nothing to say"))
        return []
    try:
        ph = phonemize(screened.text, language=language, accent=accent, normalize=True)
    except TextError as e:
        warnings.append(f"skipped {sentence[:40]!r}: {e.message}")
        return []
    notes += list(ph.warnings)  # symbols its G2P has no reading for, left out
    if len(ph.ids) <= max_ids:
        return [(sentence, ph, notes)]
    pieces, half = [sentence], budget
    while len(pieces) < 2 and half / 2 >= MIN_SPLIT_CHARS:  # a short chunk may need a much smaller budget
        half /= 2
        pieces = split_sentences(sentence, language=language, max_chars=half)
    if len(pieces) < 2:
        warnings.append(f"skipped {sentence[:40]!r}: {len(ph.ids)} phonemes, more than the {max_ids} one "
                        "sentence may have; add spaces or punctuation")
        return []
    return [out for piece in pieces for out in _phonemized(piece, language, accent, half, max_ids, warnings)]


def sentence_seed(seed: int | None, index: int, base: int) -> int:
    """Sentence i samples with seed + i (consecutive seeds let a batch match one-by-one runs),
    wrapped to stay a 64-bit seed at the top of the range."""
    value = (int(seed) if seed is not None else base) + index
    return value - 2**64 if value > SEED_MAX else value
