"""Text-instructed voice conversion: an instruction (English, Chinese or Japanese) -> an explicit
`EditPlan` -> a list of small effects (core/effects.py) applied in order.

    plan = parse_instruction("a bit slower, +3 semitones, add reverb")
    plan.describe()            # 'speed x0.89 (slower) · pitch +3.0 semitones · reverb 50%'
    out = apply_plan(wav, 24000, plan)

The parser is a lexicon (core/convert_lexicon.py) matched longest-first; numbers with units ("2x",
"+3 semitones", "-6 dB", "80%", "2倍速", "3个半音") set exact amounts; degree words ("a bit", "一点",
"少し" / "much", "很", "とても") scale the nearest instruction word. Anything not understood is
listed in `plan.unknown_words`, never dropped silently.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from core import convert_lexicon as lex
from core.effects import (SPEED_RANGE, Echo, Effect, Formant, Gain, PeakGuard, Pitch, Reverb, Robot,
                          Speed, Telephone, Whisper, apply_effects, change_speed)

log = logging.getLogger(__name__)

__all__ = ["EditPlan", "parse_instruction", "apply_plan", "transform_prompt", "change_speed",
           "EFFECT_KINDS", "PROMPT_EFFECT_KINDS"]

SEMITONE_RANGE = (-12.0, 12.0)
GAIN_RANGE = (-30.0, 20.0)
FORMANT_RANGE = (0.7, 1.45)
EFFECT_KINDS = ("whisper", "robot", "telephone", "echo", "reverb")  # the order they are applied in
# What transform_prompt applies: pace, pitch, timbre, level and the "channel" colourings the codec LM
# copies from its prompt. Reverb, echo and robot stay output-side DSP (a prompt full of tails or
# buzz mostly makes the LM babble).
PROMPT_EFFECT_KINDS = ("whisper", "telephone")


@dataclass
class EditPlan:
    """What an instruction asks for. Neutral values mean "leave as is".

    speed: time factor (2 = twice as fast); semitones: pitch shift; gain_db: level change;
    formant: formant-frequency ratio (>1 brighter/smaller, <1 deeper/larger);
    effects: kind -> amount 0..1, kinds from EFFECT_KINDS; unknown_words: parts of the
    instruction that were not understood; notes: clamps and other remarks.
    """

    speed: float = 1.0
    semitones: float = 0.0
    gain_db: float = 0.0
    formant: float = 1.0
    effects: dict[str, float] = field(default_factory=dict)
    unknown_words: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def unknown(self) -> list[str]:
        return self.unknown_words

    def is_empty(self) -> bool:
        return (abs(self.speed - 1) < 1e-3 and abs(self.semitones) < 1e-3 and abs(self.gain_db) < 1e-3
                and abs(self.formant - 1) < 1e-3 and not any(v > 0 for v in self.effects.values()))

    def describe(self) -> str:
        """One line for the UI, e.g. 'speed x1.25 (faster) · volume +4.0 dB · Not understood: "foo"'."""
        parts = []
        if abs(self.speed - 1) >= 1e-3:
            parts.append(f"speed x{self.speed:.2f} ({'faster' if self.speed > 1 else 'slower'})")
        if abs(self.semitones) >= 1e-3:
            parts.append(f"pitch {self.semitones:+.1f} semitones")
        if abs(self.formant - 1) >= 1e-3:
            parts.append(f"formants x{self.formant:.2f} ({'brighter' if self.formant > 1 else 'deeper'} timbre)")
        if abs(self.gain_db) >= 1e-3:
            parts.append(f"volume {self.gain_db:+.1f} dB")
        for kind in EFFECT_KINDS:
            if self.effects.get(kind, 0) > 0:
                parts.append(f"{_EFFECT_LABEL[kind]} {round(100 * self.effects[kind])}%")
        text = " · ".join(parts) if parts else "no change"
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        if self.unknown_words:
            text += " · Not understood: " + ", ".join(f'"{w}"' for w in self.unknown_words)
        return text

    def to_dict(self) -> dict:
        return asdict(self) | {"description": self.describe()}

    def effect_chain(self, kinds: tuple[str, ...] | None = None, *, pace=True, pitch=True, timbre=True,
                     level=True) -> list[Effect]:
        """The plan as effect objects in application order (kinds: which of EFFECT_KINDS to include)."""
        chain: list[Effect] = []
        if timbre and abs(self.formant - 1) >= 1e-3:
            chain.append(Formant(self.formant))
        if pitch and abs(self.semitones) >= 1e-3:
            chain.append(Pitch(self.semitones))
        if pace and abs(self.speed - 1) >= 1e-3:
            chain.append(Speed(self.speed))
        makers = {"whisper": Whisper, "robot": Robot, "telephone": Telephone, "echo": Echo, "reverb": Reverb}
        for kind in EFFECT_KINDS:
            if (kinds is None or kind in kinds) and self.effects.get(kind, 0) > 0:
                chain.append(makers[kind](self.effects[kind]))
        if level and abs(self.gain_db) >= 1e-3:
            chain.append(Gain(self.gain_db))
        return chain


_EFFECT_LABEL = {"reverb": "reverb", "echo": "echo", "telephone": "telephone band",
                 "whisper": "whisper/breathy", "robot": "robot"}


# ---------------------------------------------------------------- parsing

@dataclass
class _Hit:
    start: int
    end: int
    kind: str  # concept | modifier | direction | dimension | number | negation | filler
    value: object = None  # concept name, scale, +-1, dimension name, or (dim, number, signed)
    text: str = ""


_CLAUSE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[,，、;；。!！?？\n]|\b(?:and|then|but|plus|also)\b", re.I)
_LATIN = re.compile(r"[A-Za-z]")
_TOKEN = re.compile(r"[A-Za-z0-9'+\-.%]+|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff66-\uff9f]+|[^\s\W]+")


def _phrase_regex(phrases: list[str]) -> re.Pattern:
    # Longest first so that the alternation prefers "a little bit" over "a", "大声" over "大".
    alts = []
    for p in sorted(set(phrases), key=len, reverse=True):
        body = r"\s+".join(re.escape(w) for w in p.split())
        if _LATIN.search(p):  # whole words only for Latin phrases
            body = rf"(?<![A-Za-z]){body}(?![A-Za-z])"
        alts.append(body)
    return re.compile("|".join(alts), re.I)


_PHRASES: dict[str, tuple[str, object]] = {}
for _kind, _table in (("filler", {w: None for w in lex.FILLERS}), ("negation", {w: None for w in lex.NEGATIONS}),
                      ("dimension", lex.DIMENSIONS),
                      ("direction", lex.DIRECTIONS), ("modifier", lex.MODIFIERS), ("concept", lex.CONCEPT_WORDS)):
    for _word, _val in _table.items():
        _PHRASES[_word.lower()] = (_kind, _val)  # later tables win on a clash: concepts last
_LEXICON_RE = _phrase_regex(list(_PHRASES))


def _number(s: str) -> float:
    return float(lex.NUMERALS[s.lower()]) if s.lower() in lex.NUMERALS else float(s)


def _find_numbers(clause: str) -> list[_Hit]:
    hits = []
    for pattern, dim, fixed in lex.NUMBER_PATTERNS:
        for m in pattern.finditer(clause):
            if any(h.start < m.end() and m.start() < h.end for h in hits):
                continue
            raw = m.group("n") if "n" in pattern.groupindex else None
            value = fixed if raw is None else _number(raw)
            signed = raw is not None and raw[:1] in "+-"
            if dim == "octave":
                dim, value = "pitch", value * 12.0
            hits.append(_Hit(m.start(), m.end(), "number", (dim, value, signed), m.group(0)))
    return hits


def _mask(text: str, hits: list[_Hit]) -> str:
    chars = list(text)
    for h in hits:
        chars[h.start:h.end] = " " * (h.end - h.start)
    return "".join(chars)


def _scan_clause(clause: str) -> tuple[list[_Hit], list[str]]:
    hits = _find_numbers(clause)
    rest = _mask(clause, hits)
    for m in _LEXICON_RE.finditer(rest):
        kind, val = _PHRASES[re.sub(r"\s+", " ", m.group(0).lower())]
        hits.append(_Hit(m.start(), m.end(), kind, val, m.group(0)))
    rest = _mask(clause, hits)
    for m in re.finditer(r"(?<![\w.])[+-]?\d+(?:\.\d+)?(?![\w.])", rest):  # bare numbers
        signed = m.group(0)[0] in "+-"
        hits.append(_Hit(m.start(), m.end(), "number", (None, float(m.group(0)), signed), m.group(0)))
    rest = _mask(clause, hits)
    unknown = [t for t in _TOKEN.findall(rest) if t.strip("'.-+")]
    return sorted(hits, key=lambda h: h.start), unknown


def _gap(a: _Hit, b: _Hit) -> int:
    return max(a.start - b.end, b.start - a.end, 0)


@dataclass
class _Acc:
    speed: float = 1.0
    semitones: float = 0.0
    gain_db: float = 0.0
    formant: float = 1.0
    effects: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _resolve_clause(hits: list[_Hit], acc: _Acc, unknown: list[str]) -> None:
    dims = {h.value for h in hits if h.kind == "dimension"}
    concepts = [h for h in hits if h.kind == "concept"]
    # "lower the volume", "higher speed": pitch words re-read by the dimension named next to them
    for h in concepts:
        if h.value in ("higher", "lower") and len(dims) == 1 and "pitch" not in dims:
            h.value = lex.DIMENSION_DIRECTION[(dims.copy().pop(), 1 if h.value == "higher" else -1)]
    # direction + dimension ("pitch up", "提高音量", "音量を上げ") make a concept
    for h in [h for h in hits if h.kind == "direction"]:
        dim_hits = [d for d in hits if d.kind == "dimension"]
        if dim_hits:
            dim = min(dim_hits, key=lambda d: _gap(d, h)).value
            if not any(lex.CONCEPTS[c.value].get("dim") == dim for c in concepts):
                concepts.append(_Hit(h.start, h.end, "concept", lex.DIMENSION_DIRECTION[(dim, h.value)], h.text))
        elif not concepts and not any(n.kind == "number" for n in hits):
            unknown.append(h.text)
    for neg in [h for h in hits if h.kind == "negation"]:
        if not concepts:
            unknown.append(neg.text)
            continue
        target = min(concepts, key=lambda c: (_gap(c, neg), -c.start))
        concepts.remove(target)
        acc.notes.append(f"{target.text}: off")
    scales: dict[int, float] = {}
    for m in [h for h in hits if h.kind == "modifier"]:
        if not concepts:
            if m.value != 1.0:
                unknown.append(m.text)  # "a bit" of what?
            continue
        target = min(concepts, key=lambda c: (_gap(c, m), -c.start))
        old = scales.get(id(target), 1.0)
        if abs(np.log(m.value)) > abs(np.log(old)):  # "a little bit": the strongest word counts once
            scales[id(target)] = m.value
    overridden = _apply_numbers(hits, concepts, dims, acc, unknown)
    for c in concepts:
        spec, s = lex.CONCEPTS[c.value], scales.get(id(c), 1.0)
        if "speed" in spec and "speed" not in overridden:
            acc.speed *= spec["speed"] ** s
        if "semitones" in spec and "pitch" not in overridden:
            acc.semitones += spec["semitones"] * s
        if "formant" in spec and "formant" not in overridden:
            acc.formant *= spec["formant"] ** s
        if "gain_db" in spec and "volume" not in overridden:
            acc.gain_db += spec["gain_db"] * s
        if "effect" in spec:
            kind = spec["effect"]
            acc.effects[kind] = max(acc.effects.get(kind, 0.0), min(1.0, 0.5 * s))


def _direction(hits: list[_Hit], concepts: list[_Hit], dim: str) -> int:
    """Which way an unsigned number goes: a concept on its dimension, else a direction word."""
    for c in concepts:
        spec = lex.CONCEPTS[c.value]
        if spec.get("dim") == dim:
            return spec.get("sign", 1)
    for h in hits:
        if h.kind == "direction":
            return h.value
    return 1


def _apply_numbers(hits, concepts, dims, acc: _Acc, unknown: list[str]) -> set[str]:
    """Exact amounts; the words next to them only give the direction. Returns the dims they set."""
    done: set[str] = set()
    concept_dims = {lex.CONCEPTS[c.value].get("dim") for c in concepts} - {None}
    for n in [h for h in hits if h.kind == "number"]:
        dim, value, signed = n.value
        if dim is None:  # a bare "1.5": needs exactly one dimension named in the clause
            named = dims | concept_dims
            dim = named.pop() if len(named) == 1 else None
            if dim is None or (dim in ("speed", "formant") and not 0.1 <= value <= 10):
                unknown.append(n.text)
                continue
        sign = 1 if signed else _direction(hits, concepts, "speed" if dim == "percent" else dim)
        if dim == "speed":
            acc.speed *= (1.0 / value) if (sign < 0 and value > 1) else value
        elif dim == "percent":
            # "20% faster" is relative, "80% speed" absolute
            acc.speed *= 1.0 + sign * value / 100.0 if "speed" in concept_dims else value / 100.0
            dim = "speed"
        elif dim == "formant":
            acc.formant *= value
        elif dim == "pitch":
            acc.semitones += value if signed else sign * abs(value)
        elif dim == "volume":
            acc.gain_db += value if signed else sign * abs(value)
        done.add(dim)
    return done


def parse_instruction(text: str) -> EditPlan:
    """Parse an English / Chinese / Japanese instruction into an EditPlan.

    Never raises for odd text: what is not understood lands in `plan.unknown_words`.
    """
    text = (text or "").strip()
    acc, unknown = _Acc(), []
    for clause in _CLAUSE_SPLIT.split(text):
        if clause and clause.strip():
            hits, words = _scan_clause(clause)
            unknown.extend(words)
            _resolve_clause(hits, acc, unknown)
    plan = EditPlan(text=text, effects={k: round(v, 3) for k, v in acc.effects.items()}, notes=acc.notes)
    plan.speed = _clamp(acc.speed, SPEED_RANGE, "speed", plan.notes)
    plan.semitones = round(_clamp(acc.semitones, SEMITONE_RANGE, "pitch", plan.notes), 3)
    plan.gain_db = round(_clamp(acc.gain_db, GAIN_RANGE, "volume", plan.notes), 3)
    plan.formant = _clamp(acc.formant, FORMANT_RANGE, "formant", plan.notes)
    plan.unknown_words = list(dict.fromkeys(unknown))
    if plan.unknown_words:
        log.info("instruction %r: not understood %s", text, plan.unknown_words)
    return plan


def _clamp(value: float, rng: tuple[float, float], name: str, notes: list[str]) -> float:
    lo, hi = rng
    if value < lo - 1e-9 or value > hi + 1e-9:
        notes.append(f"{name} limited to {lo:g}..{hi:g}")
    return float(min(max(value, lo), hi))


# ---------------------------------------------------------------- applying

def apply_plan(wav: np.ndarray, sr: int, plan: EditPlan) -> np.ndarray:
    """Apply every part of `plan` to mono float32 `[N]` at `sr`; returns float32 `[M]` (M differs
    with speed or reverb/echo tails), peak-limited to stay below 0 dBFS."""
    return apply_effects(wav, sr, plan.effect_chain() + [PeakGuard()])


def transform_prompt(wav: np.ndarray, sr: int, plan: EditPlan) -> np.ndarray:
    """The voice-prompt side of a plan: pace, pitch, formants, level, telephone band and whisper.

    Applied to the prompt recording BEFORE it is encoded, so the codec LM continues in the changed
    voice. Reverb, echo and robot are left out (see `output_plan` for what remains for the output).
    wav: float32 `[N]` -> float32 `[M]`.
    """
    return apply_effects(wav, sr, plan.effect_chain(PROMPT_EFFECT_KINDS) + [PeakGuard()])


def output_plan(plan: EditPlan) -> EditPlan:
    """What `transform_prompt` cannot carry (reverb, echo, robot), to be applied to the output."""
    rest = {k: v for k, v in plan.effects.items() if k not in PROMPT_EFFECT_KINDS}
    return EditPlan(effects=rest, text=plan.text)
