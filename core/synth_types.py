"""Options and results of the synthesis pipeline (`core.synth`): typed, documented, JSON-friendly.

`SynthOptions` is what a caller chooses (language, accent, sampling preset + raw knobs, seed,
speed, instruction, long-text mode); `SynthResult` / `SentenceResult` are what comes back.
Sampling presets live in presets/sampling.json.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from core.audio import encode_audio
from core.convert import EditPlan, check_instruction
from core.errors import StudioError
from core.longform import Prompt, Request
from core.presets import PRESETS_FILE, RESTORE_HINT, read_presets
from core.sampling import check_seed

log = logging.getLogger(__name__)

__all__ = ["SynthOptions", "SynthResult", "SentenceResult", "PRESETS", "load_presets", "LANGUAGES", "ACCENTS"]

LANGUAGES = ("auto-mix", "auto", "en", "zh", "ja", "mix")
ACCENTS = ("keep", "en", "zh", "ja")
KNOBS = ("top_k", "top_p", "temperature", "best_of", "repetition_window", "repetition_threshold")


def load_presets(path: Path | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """(preset name -> Sampling field values, preset name -> why it is unusable). A broken file is
    one problem for every name ("*"); a preset with an unknown or out-of-range setting is left out
    and its problem kept, so choosing it says what is wrong instead of failing at import."""
    from core.sampling import Sampling

    try:
        raw = read_presets(path)
    except StudioError as e:
        log.error("%s", e.user_message())
        return {}, {"*": e.message}
    known = {f.name for f in fields(Sampling)} - {"seed", "max_frames"}
    good, bad = {}, {}
    for name, values in raw.items():
        unknown = sorted(set(values) - known)
        try:
            if unknown:
                raise StudioError(f"unknown setting{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}")
            Sampling(**values)
            good[name] = values
        except (StudioError, TypeError, ValueError) as e:
            bad[name] = f"Preset {name!r} in {path or PRESETS_FILE} is unusable: {getattr(e, 'message', e)}."
            log.error("%s %s", bad[name], RESTORE_HINT)
    return good, bad


PRESETS, PRESET_PROBLEMS = load_presets()


def _number(value) -> float:
    """float(value) for a real number, NaN (which fails every range check) for anything else: None,
    True, text ("1.5" passed here, then failed every sentence as a TypeError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return float("nan")
    return float(value)


@dataclass(frozen=True)
class SynthOptions:
    """Per-request choices. Override with `dataclasses.replace(options, seed=3)`."""

    language: str = "auto-mix"  # auto-mix | auto | en | zh | ja | mix ([EN]..[EN] tags written by the user)
    accent: str = "keep"  # keep each segment's language id, or force en | zh | ja on all target ids
    preset: str = "balanced"  # a name from presets/sampling.json
    top_k: int | None = None  # raw knobs: None = the preset's value
    top_p: float | None = None
    temperature: float | None = None
    best_of: int | None = None
    repetition_window: int | None = None
    repetition_threshold: float | None = None
    seed: int | None = None  # sentence i uses seed + i; None = a fresh random seed per sentence
    speed: float = 1.0  # 0.5-2, time-stretch of the output with pitch kept
    instruction: str = ""  # e.g. "slower and deeper", "加点混响"
    instruction_mode: str = "dsp"  # dsp: on the output | prompt: on the voice prompt before encoding
    prompt_mode: str = "fixed"  # fixed: one prompt for all sentences | sliding: continue from the last one
    batch: bool = True  # generate fixed-mode sentences in batches
    max_chars: int | None = None  # sentence length limit for splitting (None: the splitter's default)
    max_sentence_s: float | None = None  # cap on each sentence's generated audio (None: prompt + output <= 22 s)

    def __post_init__(self):
        checks = [
            (self.language in LANGUAGES, f"language {self.language!r}", f"one of {', '.join(LANGUAGES)}"),
            (self.accent in ACCENTS, f"accent {self.accent!r}", f"one of {', '.join(ACCENTS)}"),
            (0.5 <= _number(self.speed) <= 2.0, f"speed {self.speed!r}", "a value from 0.5 to 2"),
            (self.instruction_mode in ("dsp", "prompt"), f"instruction_mode {self.instruction_mode!r}",
             '"dsp" or "prompt"'),
            (self.prompt_mode in ("fixed", "sliding"), f"prompt_mode {self.prompt_mode!r}", '"fixed" or "sliding"'),
            (self.max_sentence_s is None or 0 < _number(self.max_sentence_s) <= 60,
             f"max_sentence_s {self.max_sentence_s!r}",
             "None or 0-60 seconds"),
            (self.max_chars is None or 1 <= _number(self.max_chars) <= 5000, f"max_chars {self.max_chars!r}",
             "None (the default budget) or 1-5000 characters"),
            (self.instruction is None or isinstance(self.instruction, str), f"instruction {self.instruction!r}",
             'text such as "slower, deeper", or "" for none'),
            (isinstance(self.batch, (bool, np.bool_)), f"batch {self.batch!r}", "True or False"),  # "no" is truthy
        ] + [(not isinstance(getattr(self, k), (bool, np.bool_)), f"{k} {getattr(self, k)!r}", "a number, or None")
             for k in KNOBS]  # True would be taken as 1 (top_k=True: greedy)
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            problem = (isinstance(self.preset, str) and PRESET_PROBLEMS.get(self.preset)) or PRESET_PROBLEMS.get("*")
            if problem:
                raise StudioError(problem, RESTORE_HINT)
            raise StudioError(f"Unknown preset {self.preset!r}.", f"Use one of {', '.join(PRESETS)}.")
        for ok, what, allowed in checks:
            if not ok:
                raise StudioError(f"Unknown or out-of-range {what}.", f"Use {allowed}.")
        check_instruction(self.instruction)  # too long: said now, not when the first sentence is made
        check_seed(self.seed)
        # plain Python values from here on (numpy's int64 seed, float32 speed, a None instruction)
        object.__setattr__(self, "speed", float(self.speed))
        object.__setattr__(self, "instruction", self.instruction or "")
        object.__setattr__(self, "batch", bool(self.batch))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))
        # the sampling knobs are checked now, not when the first sentence is sampled (where a bad
        # top_p would fail every sentence one by one)
        try:
            self.sampling(0)
        except (TypeError, ValueError) as e:
            if isinstance(e, StudioError):
                raise
            raise StudioError(f"Unreadable sampling setting ({e}).",
                              "Give top_k, best_of and repetition_window as whole numbers, "
                              "top_p and temperature as numbers.") from e

    def sampling(self, seed: int, max_frames: int | None = None):
        """The `core.sampling.Sampling` for one sentence: preset values, then raw knob overrides."""
        from core.sampling import Sampling

        values = dict(PRESETS[self.preset])
        values.update({k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None})
        if values.get("top_k") is not None and values["top_k"] <= 0:
            values["top_k"] = None
        known = {f.name for f in fields(Sampling)}
        return Sampling(**{k: v for k, v in values.items() if k in known}, seed=int(seed), max_frames=max_frames)


@dataclass
class SentenceResult:
    """One sentence. audio float32 [M] at 24 kHz (speed and a DSP instruction applied);
    codes int64 [N, 8] as generated; seed: the seed used (pass it back to get the same take)."""

    index: int
    text: str
    audio: np.ndarray
    codes: np.ndarray
    seed: int
    stop_reason: str
    warnings: list[str] = field(default_factory=list)
    phonemes: str = ""
    ok: bool = True  # False: generation failed, audio is empty and warnings say why
    timings: dict[str, float] = field(default_factory=dict)  # engine_s (LM, batch share), post_s (speed/DSP)
    context: object | None = field(default=None, repr=False, compare=False)  # the request it came from


@dataclass
class SynthResult:
    """A whole take. audio float32 [M] at `sample_rate`; plan: the parsed instruction (or None);
    instruction_mode: "none" | "dsp" | "prompt" | "prompt+dsp" (what was actually used)."""

    audio: np.ndarray
    sample_rate: int
    sentences: list[SentenceResult]
    plan: EditPlan | None = None
    instruction_mode: str = "none"
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    options: SynthOptions | None = None
    voice: object | None = None  # the Voice used (kept so that reroll can use the same prompt)
    prompt_audio: np.ndarray | None = None  # prompt mode: the transformed prompt that was encoded

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def seeds(self) -> list[int]:
        return [s.seed for s in self.sentences]

    def export(self, fmt: str = "wav") -> bytes:
        """The audio as wav / flac / mp3 / ogg / opus / pcm bytes (core.audio.encode_audio)."""
        return encode_audio(self.audio, self.sample_rate, fmt)


@dataclass
class Job:
    """Everything one synthesize/stream call needs, prepared before any generation."""

    requests: list[Request]
    options: SynthOptions
    first_prompt: Prompt
    plan: EditPlan | None
    mode: str
    output_plan: EditPlan | None
    warnings: list[str]
    voice: object | None
    prompt_audio: np.ndarray | None = None


def take_sentences(sentences) -> list[SentenceResult]:
    """`sentences` (what `Studio.stream` yielded: any iterable) as a list, each a SentenceResult that
    a Studio made (it keeps the request it came from). StudioError for anything else."""
    hint = "Pass the SentenceResults that studio.stream() yielded (a list of them)."
    if isinstance(sentences, SynthResult):
        raise StudioError("This is already a whole take (a SynthResult), not a list of sentences.",
                          "Use it as it is, or pass its .sentences.")
    if sentences is not None and (isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable)):
        raise StudioError(f"The sentences must be a list of SentenceResults, not {type(sentences).__name__}.", hint)
    items = list(sentences or [])
    if not items:
        raise StudioError("There are no sentences to put together.", "Run stream() first.")
    for i, s in enumerate(items):
        if not isinstance(s, SentenceResult):
            raise StudioError(f"Item {i} of the sentences is a {type(s).__name__}, not a SentenceResult.", hint)
        if not isinstance(s.context, Job):
            raise StudioError(f"Sentence {i} ({str(s.text)[:30]!r}) was not made by a Studio: there is no record of "
                              "how it was made.", "Synthesize or stream the text again.")
    return items


def check_index(index, count: int) -> int:
    """A sentence number of a take of `count` sentences, as an int; StudioError otherwise."""
    if count == 0:
        raise StudioError("The take has no sentences.", "Synthesize the text again.")
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise StudioError(f"A sentence number must be a whole number, not {str(index)[:24]!r} "
                          f"({type(index).__name__}).", f"Pick a whole number from 0 to {count - 1}.")
    if not 0 <= index < count:
        raise StudioError(f"There is no sentence {index} (the take has {count}).",
                          f"Pick a whole number from 0 to {count - 1}.")
    return int(index)


def check_progress(progress) -> None:
    """Said before the first sentence is made, not after it (when the work would be lost)."""
    if progress is not None and not callable(progress):
        raise StudioError(f"progress must be a callable (fraction, message) or None, not {type(progress).__name__}.",
                          "Pass a function, e.g. lambda fraction, message: print(message).")
