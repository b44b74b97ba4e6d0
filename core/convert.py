"""Text-instructed voice conversion: an instruction (English, Chinese or Japanese) -> an explicit
`EditPlan` -> a list of small effects (core/effects.py) applied in order.

    plan = parse_instruction("a bit slower, +3 semitones, add reverb")
    plan.describe()            # 'speed x0.89 (slower) · pitch +3.0 semitones · reverb 50%'
    out = apply_plan(wav, 24000, plan)

The parser is a lexicon (core/convert_lexicon.py, core/instruction_words.py) matched longest-first;
numbers with units ("2x", "+3 semitones", "-6 dB", "2倍速", "3个半音") set exact amounts; a
percentage or bare number goes with the word next to it ("20% louder", "reverb 50%", "80% speed",
"混响50%"); degree words ("a bit", "一点", "少し" / "much", "很", "とても") scale the nearest
instruction word; negations ("no", "don't", "不要", "しないで") cancel one and "less" ("less loud",
"不那么快") turns it round. Anything not understood is listed in `plan.unknown_words`, never dropped
silently or applied to something else; values brought into range are said in `plan.limits`.
"""
from __future__ import annotations

import bisect
import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from core import convert_lexicon as lex
from core import instruction_words as words
from core.effects import (SPEED_RANGE, Echo, Effect, Formant, Gain, PeakGuard, Pitch, Reverb, Robot,
                          Speed, Telephone, Whisper, apply_effects, change_speed)
from core.errors import AudioError, StudioError
from core.instruction_words import CLAUSE_SPLIT, MAX_INSTRUCTION_CHARS, Hit, closest, gap, join, scan_clause

log = logging.getLogger(__name__)

__all__ = ["EditPlan", "parse_instruction", "apply_plan", "transform_prompt", "change_speed",
           "EFFECT_KINDS", "PROMPT_EFFECT_KINDS", "MAX_INSTRUCTION_CHARS", "check_instruction"]

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
    instruction that were not understood; notes: remarks ("reverb: off"); limits: values brought
    into their range, one sentence each ("speed x3 is above the fastest, x2: using x2").
    """

    speed: float = 1.0
    semitones: float = 0.0
    gain_db: float = 0.0
    formant: float = 1.0
    effects: dict[str, float] = field(default_factory=dict)
    unknown_words: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""
    limits: list[str] = field(default_factory=list)

    @property
    def unknown(self) -> list[str]:
        return self.unknown_words

    @property
    def warnings(self) -> list[str]:
        """What the user should be warned of: values limited to their range, words not understood."""
        return self.limits + [f'not understood: "{w}"' for w in self.unknown_words]

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
        if self.notes or self.limits:
            text += " (" + "; ".join(self.notes + self.limits) + ")"
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

_FIELD = {"speed": "speed", "pitch": "semitones", "volume": "gain_db", "formant": "formant"}


def _turned_round(spec: dict) -> dict:
    """"less loud" = quieter, "less fast" = slower, "less deep" = a little higher and brighter."""
    return {k: (1.0 / v if k in ("speed", "formant") else -v if k in ("semitones", "gain_db", "sign") else v)
            for k, v in spec.items()}


@dataclass
class _Acc:
    speed: float = 1.0
    semitones: float = 0.0
    gain_db: float = 0.0
    formant: float = 1.0
    effects: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    limits: list = field(default_factory=list)


def _resolve_clause(clause: str, hits: list[Hit], acc: _Acc, unknown: list[str]) -> None:
    concepts = [h for h in hits if h.kind == "concept"]
    dims = [h for h in hits if h.kind == "dimension"]
    dim_starts = [d.start for d in dims]
    used: set[Hit] = set()  # dimension words folded into a concept
    if len({d.value for d in dims}) == 1 and dims[0].value != "pitch":
        # "lower the volume", "higher speed": pitch words re-read by the dimension named next to them
        for c in concepts:
            if c.value in ("higher", "lower"):
                d = closest(dims, dim_starts, c)
                c.value = lex.DIMENSION_DIRECTION[(d.value, 1 if c.value == "higher" else -1)]
                join(c, d, clause)
                used.add(d)
    concept_dims = {lex.CONCEPTS[c.value].get("dim") for c in concepts}
    has_unit = any(h.kind == "number" and h.value[0] in _FIELD for h in hits)
    directions = []  # their signs: the way a number with no instruction word goes
    for h in hits:  # direction + dimension ("pitch up", "提高音量", "音量を上げ") make a concept
        if h.kind != "direction":
            continue
        directions.append(h.value)
        d = closest(dims, dim_starts, h)
        if d is not None and d.value not in concept_dims:
            c = Hit(h.start, h.end, "concept", lex.DIMENSION_DIRECTION[(d.value, h.value)], h.text)
            join(c, d, clause)
            used.add(d)
            concepts.append(c)
            concept_dims.add(d.value)
        elif d is None and not concepts and not has_unit:
            unknown.append(h.text)
    concepts.sort(key=lambda c: c.start)
    starts = [c.start for c in concepts]
    for c in concepts:
        c.spec = dict(lex.CONCEPTS[c.value])
    for h in hits:
        if h.kind == "negated":  # "ささやかないで"
            acc.notes.append(f"{h.value}: off")
        elif h.kind in ("negation", "less"):
            i = bisect.bisect_left(starts, h.start if words.is_postfix(h.text) else h.end)
            before, after = (concepts[i - 1] if i else None), (concepts[i] if i < len(concepts) else None)
            target = (before or after) if words.is_postfix(h.text) else (after or before)
            if target is None:
                unknown.append(h.text)
            elif h.kind == "less" and "effect" not in target.spec:
                target.spec = _turned_round(target.spec)
            elif not target.off:
                target.off = True
                acc.notes.append(f"{target.text}: off")
        elif h.kind == "modifier":
            target = closest(concepts, starts, h)
            if target is None:
                if h.value != 1.0:
                    unknown.append(h.text)  # "a bit" of what?
            elif abs(np.log(h.value)) > abs(np.log(target.scale)):  # "a little bit": the strongest counts
                target.scale = h.value
    targets = sorted([c for c in concepts if not c.off] + [d for d in dims if d not in used],
                     key=lambda t: t.start)
    overridden = _apply_numbers(hits, concepts, targets, directions[0] if directions else 1, acc, unknown)
    for c in concepts:
        if c.off:
            continue
        spec, s = c.spec, c.scale
        keep = {f for dim, f in _FIELD.items() if dim not in overridden and f not in c.fixed}
        if "speed" in spec and "speed" in keep:
            acc.speed *= spec["speed"] ** s
        if "semitones" in spec and "semitones" in keep:
            acc.semitones += spec["semitones"] * s
        if "formant" in spec and "formant" in keep:
            acc.formant *= spec["formant"] ** s
        if "gain_db" in spec and "gain_db" in keep:
            acc.gain_db += spec["gain_db"] * s
        if "effect" in spec:
            kind = spec["effect"]
            amount = c.amount if c.amount is not None else min(1.0, 0.5 * s)
            acc.effects[kind] = max(acc.effects.get(kind, 0.0), amount)


def _pick(targets: list[Hit], starts: list[int], n: Hit, taken: set) -> Hit | None:
    """The word a percentage or bare number goes with: the nearest free instruction or dimension
    word just before or after it (a tie: an instruction word, then the one before)."""
    i = bisect.bisect_left(starts, n.start)
    near = [(t, side) for t, side in ((targets[i - 1] if i else None, 0),
                                     (targets[i] if i < len(targets) else None, 1)) if t is not None]
    near = [(t, side) for t, side in near if t not in taken]
    return min(near, key=lambda ts: (gap(ts[0], n), ts[0].kind == "dimension", ts[1]))[0] if near else None


def _apply_numbers(hits, concepts, targets, default_sign, acc: _Acc, unknown: list[str]) -> set[str]:
    """Exact amounts. A number with a unit ("2x", "3 semitones", "-6 dB") sets its dimension, the
    instruction word on that dimension gives the direction; a percentage or a bare number goes with
    the word next to it, or is not understood. Returns the dimensions set for the whole clause."""
    overridden: set[str] = set()
    by_dim: dict[str, list[Hit]] = {}
    for c in concepts:
        if not c.off and c.spec.get("dim"):
            by_dim.setdefault(c.spec["dim"], []).append(c)
    by_dim_starts = {dim: [c.start for c in cs] for dim, cs in by_dim.items()}
    starts, taken = [t.start for t in targets], set()
    for n in hits:
        if n.kind != "number":
            continue
        dim, value, signed = n.value
        if dim in _FIELD:
            c = closest(by_dim.get(dim, []), by_dim_starts.get(dim, []), n)
            if c is not None:
                taken.add(c)
            _set(acc, dim, value, signed, c.spec.get("sign", 1) if c else default_sign)
            overridden.add(dim)
            continue
        target = _pick(targets, starts, n, taken)
        percent = dim == "percent"
        if target is None or not _amount_for(target, n, value, percent, signed, by_dim, default_sign, acc):
            unknown.append(n.text)
            continue
        taken.add(target)
        if target.kind == "dimension":
            overridden.add(target.value)
    return overridden


def _set(acc: _Acc, dim: str, value: float, signed: bool, sign: int) -> None:
    """A number in a dimension's own unit: a speed factor ("2x slower" = x0.5), semitones or dB."""
    if dim == "speed":
        acc.speed *= (1.0 / value) if (sign < 0 and value > 1) else value
    elif dim == "formant":
        acc.formant *= (1.0 / value) if (sign < 0 and value > 1) else value
    elif dim == "pitch":
        acc.semitones += value if signed else sign * abs(value)
    else:
        acc.gain_db += value if signed else sign * abs(value)


def _amount_for(t: Hit, n: Hit, value: float, percent: bool, signed: bool, by_dim, default_sign,
                acc: _Acc) -> bool:
    """Apply a percentage or bare number to the word `t` it goes with; False if it makes no sense."""
    if t.kind == "concept" and "effect" in t.spec:  # "reverb 30%", "robot 0.3", "混响50%"
        amount = value / 100.0 if percent or value > 1 else value
        if amount < 0 or (not percent and value > 100):
            return False
        if amount > 1:
            label = _EFFECT_LABEL[t.spec["effect"]]
            acc.limits.append(f"{label} {n.text} is above the most, 100%: using 100%")
        t.amount = min(amount, 1.0)
        return True
    relative = t.kind == "concept"  # "20% faster" (x1.2) vs "80% speed" (x0.8)
    dim = t.spec["dim"] if relative else t.value
    if not percent and dim in ("speed", "formant") and not 0.1 <= value <= 10:
        return False
    if relative:
        sign = t.spec.get("sign", 1)
        t.fixed.add(_FIELD[dim])
    else:  # "speed 2" said with "slower" in the clause means x0.5
        same = by_dim.get(dim)
        sign = same[0].spec.get("sign", 1) if same else default_sign
    if not percent:
        _set(acc, dim, value, signed, sign)
        return True
    ratio = max(1.0 + sign * value / 100.0 if relative else value / 100.0, 0.0)  # "100% slower": x0
    if dim == "speed":
        acc.speed *= ratio
    elif dim == "formant":
        acc.formant *= ratio
    elif dim == "pitch":  # a frequency ratio
        acc.semitones += 12.0 * np.log2(max(ratio, 1e-3))
    else:  # an amplitude ratio
        acc.gain_db += 20.0 * np.log10(max(ratio, 1e-3))
    return True


def check_instruction(text: str | None) -> str:
    """An instruction stripped ("" for None); StudioError for a non-str or one longer than
    MAX_INSTRUCTION_CHARS (an instruction is a short phrase). SynthOptions checks it with this, so a
    long one is said before any work, not when the first sentence is made."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise StudioError(f"The instruction must be text, not {type(text).__name__}.",
                          'Type a short phrase, e.g. "slower, with a deeper tone".')
    text = text.strip()
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise StudioError(f"The instruction is {len(text)} characters long; "
                          f"the most is {MAX_INSTRUCTION_CHARS}.",
                          'Describe the change in a short phrase, e.g. "slower, with a deeper tone".')
    return text


def parse_instruction(text: str | None) -> EditPlan:
    """Parse an English / Chinese / Japanese instruction into an EditPlan.

    None or "" is no instruction. What is not understood lands in `plan.unknown_words` and values
    brought into range in `plan.limits`. Raises StudioError for a non-str or an instruction longer
    than MAX_INSTRUCTION_CHARS (an instruction is a short phrase).
    """
    text = check_instruction(text)
    acc, unknown = _Acc(), []
    for clause in CLAUSE_SPLIT.split(text):
        if clause and clause.strip():
            hits, found = scan_clause(clause)
            unknown.extend(found)
            _resolve_clause(clause, hits, acc, unknown)
    plan = EditPlan(text=text, effects={k: round(v, 3) for k, v in acc.effects.items() if round(v, 3) > 0},
                    notes=list(dict.fromkeys(acc.notes)), limits=acc.limits)
    plan.speed = _clamp(acc.speed, SPEED_RANGE, "speed", plan.limits)
    plan.semitones = round(_clamp(acc.semitones, SEMITONE_RANGE, "pitch", plan.limits), 3)
    plan.gain_db = round(_clamp(acc.gain_db, GAIN_RANGE, "volume", plan.limits), 3)
    plan.formant = _clamp(acc.formant, FORMANT_RANGE, "formants", plan.limits)
    plan.limits, plan.unknown_words = list(dict.fromkeys(plan.limits)), list(dict.fromkeys(unknown))
    if plan.unknown_words:
        log.info("instruction %r: not understood %s", text, plan.unknown_words)
    return plan


_SHOWN = {"speed": (lambda v: f"x{v:.3g}", "slowest", "fastest", 1.0),
          "pitch": (lambda v: f"{v:+.3g} semitones", "lowest", "highest", 0.0),
          "volume": (lambda v: f"{v:+.3g} dB", "quietest", "loudest", 0.0),
          "formants": (lambda v: f"x{v:.3g}", "deepest", "brightest", 1.0)}


def _clamp(value: float, rng: tuple[float, float], name: str, limits: list[str]) -> float:
    """`value` brought into `rng`; each change is said in `limits`, e.g. 'speed x0.2 is below the
    slowest, x0.5: using x0.5'."""
    show, low, high, neutral = _SHOWN[name]
    (lo, hi), asked = rng, f" {show(value)}" if math.isfinite(value) else ""
    if math.isnan(value):
        limits.append(f"{name} could not be worked out: left unchanged")
        return neutral
    if value < lo - 1e-9:
        limits.append(f"{name}{asked} is below the {low}, {show(lo)}: using {show(lo)}")
    elif value > hi + 1e-9:
        limits.append(f"{name}{asked} is above the {high}, {show(hi)}: using {show(hi)}")
    return float(min(max(value, lo), hi))


# ---------------------------------------------------------------- applying

def _check(plan, sr=1) -> None:
    """A clear error for a plan that is no EditPlan or a sample rate that is no positive int."""
    if not isinstance(plan, EditPlan):
        raise StudioError(f"plan must be an EditPlan, not {type(plan).__name__}.",
                          "Make one with parse_instruction(text).")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"sample rate must be a positive whole number of Hz, not {sr!r}.",
                         "Pass the rate the audio was read at, e.g. 24000.")


def apply_plan(wav: np.ndarray, sr: int, plan: EditPlan) -> np.ndarray:
    """Apply every part of `plan` to mono float32 `[N]` at `sr`; returns float32 `[M]` (M differs
    with speed or reverb/echo tails), peak-limited to stay below 0 dBFS."""
    _check(plan, sr)
    return apply_effects(wav, sr, plan.effect_chain() + [PeakGuard()])


def transform_prompt(wav: np.ndarray, sr: int, plan: EditPlan) -> np.ndarray:
    """The voice-prompt side of a plan: pace, pitch, formants, level, telephone band and whisper.

    Applied to the prompt recording BEFORE it is encoded, so the codec LM continues in the changed
    voice. Reverb, echo and robot are left out (see `output_plan` for what remains for the output).
    wav: float32 `[N]` -> float32 `[M]`.
    """
    _check(plan, sr)
    return apply_effects(wav, sr, plan.effect_chain(PROMPT_EFFECT_KINDS) + [PeakGuard()])


def output_plan(plan: EditPlan) -> EditPlan:
    """What `transform_prompt` cannot carry (reverb, echo, robot), to be applied to the output."""
    _check(plan)
    rest = {k: v for k, v in plan.effects.items() if k not in PROMPT_EFFECT_KINDS}
    return EditPlan(effects=rest, text=plan.text)
