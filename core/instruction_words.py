"""More words for `core.convert.parse_instruction`, on top of core/convert_lexicon.py: negations
("don't", "しないで"), "less" words that turn a change round ("less loud" = quieter), Japanese
negated verbs, and percent forms ("百分之五十", "50パーセント").

Also the reading of one clause into `Hit`s (`scan_clause`); core/convert.py decides what they mean.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from core import convert_lexicon as lex

MAX_INSTRUCTION_CHARS = 500  # an instruction is a short phrase; longer input is refused

# Cancel an instruction word: the next one in English and Chinese, the one before in Japanese.
# The lexicon's own negations ("no", "without", "不要", "なし", ...) keep working; these add to them.
NEGATIONS: list[str] = [
    "don't", "don’t", "dont", "do not", "does not", "doesn't", "doesn’t", "never", "no more", "stop",
    "turn off", "switch off", "take off", "get rid of",
    "别再", "不用", "不需要", "取消", "关掉", "去除掉",
    "しないで", "しない", "しなくて", "ないで", "ない", "なく", "なしに",
    "かけないで", "つけないで", "付けないで", "入れないで", "使わないで", "やめて",
]

# Japanese negated verbs that contain the instruction word itself: word -> concept (switched off)
NEGATED_CONCEPTS: dict[str, str] = {
    "ささやかないで": "whisper", "ささやかない": "whisper",
    "囁かないで": "whisper", "囁かない": "whisper",
    "響かせないで": "reverb", "響かせない": "reverb",
    "急がないで": "faster", "急がない": "faster",
}

# Turn the next instruction word round ("less loud" = quieter, "less fast" = slower); an effect
# ("less reverb") is switched off, as nothing is there to lessen.
LESS: list[str] = ["less", "not so", "not as", "not that",
                   "不那么", "没那么", "不太", "不怎么", "别那么", "不要那么", "不要这么", "别这么",
                   "少点", "少一点"]


def is_postfix(phrase: str) -> bool:
    """Japanese negations follow what they negate ("リバーブなし"); the others precede it."""
    return re.search(r"[\u3040-\u30ff]", phrase) is not None


_CJK_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
               "七": 7, "八": 8, "九": 9}
CJK_NUMBER = "[零〇一二两三四五六七八九十百]+"


def cjk_number(s: str) -> float | None:
    """'五十' -> 50, '十五' -> 15, '一百' -> 100, '三' -> 3 (up to 999); None if it is not one."""
    total, digit = 0, None
    for ch in s:
        if ch in _CJK_DIGITS:
            if digit is not None:
                return None  # two digits in a row ("五五") is not a number here
            digit = _CJK_DIGITS[ch]
        elif ch in "十百":
            unit = 10 if ch == "十" else 100
            total += (1 if digit is None else digit) * unit
            digit = None
        else:
            return None
    return float(total + (digit or 0))


# (pattern, dimension, fixed value): read like convert_lexicon.NUMBER_PATTERNS, tried before them
NUMBER_PATTERNS: list[tuple[re.Pattern, str, float | None]] = [
    (re.compile(rf"百分之\s*(?P<n>\d+(?:\.\d+)?|{CJK_NUMBER})"), "percent", None),
    (re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*パーセント"), "percent", None),
]


@dataclass(eq=False)  # compared and hashed by identity
class Hit:
    start: int
    end: int
    kind: str  # concept | modifier | direction | dimension | number | negation | less | negated | filler
    value: object = None  # concept name, scale, +-1, dimension name, or (dim, number, signed)
    text: str = ""
    spec: dict | None = None  # a concept's changes (lex.CONCEPTS; turned round by "less")
    scale: float = 1.0  # a concept's degree word ("a bit" 0.5, "much" 2)
    off: bool = False  # a concept cancelled by a negation
    fixed: set = field(default_factory=set)  # a concept's fields that a number set instead
    amount: float | None = None  # an effect's amount set by a number


CLAUSE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[,，、;；。!！?？\n]|\b(?:and|then|but|plus|also)\b", re.I)
_LATIN = re.compile(r"[A-Za-z]")
_TOKEN = re.compile(r"[A-Za-z0-9'+\-.%]+|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff66-\uff9f]+|[^\s\W]+")
_BARE_NUMBER = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?(?![\w.])")
# A match may not start inside a run of digits: each run is tried once, from its start (the
# lexicon's "<number> x" patterns would otherwise back off along "111...1" at every digit).
_NUMBER_PATTERNS = [(re.compile(r"(?<!\d)(?:" + p.pattern + ")", p.flags), dim, fixed)
                    for p, dim, fixed in NUMBER_PATTERNS + lex.NUMBER_PATTERNS]


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
for _kind, _table in (("filler", dict.fromkeys(lex.FILLERS)), ("negation", dict.fromkeys(lex.NEGATIONS)),
                      ("negation", dict.fromkeys(NEGATIONS)), ("less", dict.fromkeys(LESS)),
                      ("dimension", lex.DIMENSIONS), ("direction", lex.DIRECTIONS),
                      ("modifier", lex.MODIFIERS),
                      ("negated", NEGATED_CONCEPTS), ("concept", lex.CONCEPT_WORDS)):
    for _word, _val in _table.items():
        _PHRASES[_word.lower()] = (_kind, _val)  # later tables win on a clash: concepts last
_LEXICON_RE = _phrase_regex(list(_PHRASES))


def _number(s: str) -> float | None:
    """'2', '1.5', 'two', '两', '五十' -> float; None for what is no usable number ('1' * 400)."""
    if s.lower() in lex.NUMERALS:
        return float(lex.NUMERALS[s.lower()])
    try:
        value = float(s)
    except ValueError:
        value = cjk_number(s)
    return value if value is not None and abs(value) <= 1e6 else None


def _find_numbers(clause: str) -> list[Hit]:
    hits, taken = [], bytearray(len(clause))  # taken: characters already read as a number
    for pattern, dim, fixed in _NUMBER_PATTERNS:
        for m in pattern.finditer(clause):
            if any(taken[m.start():m.end()]):
                continue
            raw = m.group("n") if "n" in pattern.groupindex else None
            value = fixed if raw is None else _number(raw)
            if value is None:
                continue  # left to the not-understood words
            taken[m.start():m.end()] = b"\1" * (m.end() - m.start())
            signed = raw is not None and raw[:1] in "+-"
            if dim == "octave":
                dim, value = "pitch", value * 12.0
            hits.append(Hit(m.start(), m.end(), "number", (dim, value, signed), m.group(0)))
    return hits


def _mask(text: str, hits: list[Hit]) -> str:
    chars = list(text)
    for h in hits:
        chars[h.start:h.end] = " " * (h.end - h.start)
    return "".join(chars)


def scan_clause(clause: str) -> tuple[list[Hit], list[str]]:
    hits = _find_numbers(clause)
    rest = _mask(clause, hits)
    for m in _LEXICON_RE.finditer(rest):
        kind, val = _PHRASES[re.sub(r"\s+", " ", m.group(0).lower())]
        hits.append(Hit(m.start(), m.end(), kind, val, m.group(0)))
    rest = _mask(clause, hits)
    for m in _BARE_NUMBER.finditer(rest):
        value = _number(m.group(0))
        if value is not None:
            hits.append(Hit(m.start(), m.end(), "number", (None, value, m.group(0)[0] in "+-"), m.group(0)))
    rest = _mask(clause, hits)
    unknown = [t for t in _TOKEN.findall(rest) if t.strip("'.-+")]
    return sorted(hits, key=lambda h: h.start), unknown


def gap(a: Hit, b: Hit) -> int:
    return max(a.start - b.end, b.start - a.end, 0)


def closest(items: list[Hit], starts: list[int], h: Hit) -> Hit | None:
    """The hit of `items` (sorted by start) nearest to h; a tie goes to the later one."""
    i = bisect.bisect_left(starts, h.start)
    near = items[max(0, i - 1):i + 1]
    return min(near, key=lambda c: (gap(c, h), -c.start)) if near else None


def join(concept: Hit, other: Hit, clause: str) -> None:
    """Widen a concept over the dimension word it was made with ("raise the pitch")."""
    concept.start, concept.end = min(concept.start, other.start), max(concept.end, other.end)
    concept.text = clause[concept.start:concept.end]
