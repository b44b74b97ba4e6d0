"""Sentence splitter for long text: chunks the model can say in one go.

Why a limit: VALL-E X was trained on clips of at most ~22 s, prompt included, and degrades past
that. With a prompt of 3-10 s, the target should stay under ~12 s of speech. Measured speaking
rates of the reference voices are about 14 characters/s for English (spaces included), 4.5 Han
characters/s for Mandarin and 8 characters/s for Japanese (kana and kanji), so the default budget
is 170 English-equivalent characters, i.e.

    English 170 characters, Mandarin ~55 Han characters, Japanese ~80 characters,

with every character weighted by `170 / (its language's limit)`; digits weigh 2.5 (they expand into
words). `max_chars` changes the budget in those English-equivalent units.

Rules: split after sentence-final punctuation (`. ! ? 。！？…` and line breaks; not after `Dr.`,
`U.S.` or inside `3.14`), then pack whole sentences greedily up to the budget. A sentence longer
than the budget is cut at clause punctuation (`, ; : 、，；：` not between digits), then between
words (spaces; jieba words for Chinese, OpenJTalk words for Japanese). A cut never falls inside
a word or a number, except in a run without spaces that is longer than both the budget and any
real word (`_LONGEST_WORD`): "9" * 5000 or "x" * 2000 would otherwise reach the model whole, as
tens of thousands of phoneme ids, so such a run is cut into pieces that fit.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from core.text import tags

DEFAULT_BUDGET = 170.0  # English-equivalent characters (~12 s of speech)
_LIMITS = {"en": 170.0, "zh": 55.0, "ja": 80.0}
_DIGIT_WEIGHT = 2.5
_LONGEST_WORD = 50.0  # English-equivalent characters; a longer run without spaces is no word
_ABBREV = re.compile(r"(?:\b(?:mr|mrs|ms|dr|st|jr|sr|prof|capt|col|gen|lt|sgt|rev|hon|maj|co|ltd|inc|"
                     r"vs|etc|esq|ft|no|vol|fig|e\.g|i\.e|a\.m|p\.m)|\b[a-z])\.$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？!?…]+[」』”’）\"')\]]*|\n+")
_CLAUSE_END = re.compile(r"(?<!\d)[,;:](?=\s|$)|[,;:](?!\d)|[、，；：—]")
_KANA = re.compile("[\u3040-\u30ff\uff66-\uff9f]")


def _weights(language: str, has_kana: bool) -> dict[str, float]:
    han_lang = "ja" if language == "ja" or (language in ("auto", "auto-mix") and has_kana) else "zh"
    return {"han": DEFAULT_BUDGET / _LIMITS[han_lang], "kana": DEFAULT_BUDGET / _LIMITS["ja"]}


def _cost(text: str, w: dict[str, float]) -> float:
    total = 0.0
    for ch in text:
        o = ord(ch)
        if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
            total += w["han"]
        elif 0x3040 <= o <= 0x30FF or 0xFF66 <= o <= 0xFF9F:
            total += w["kana"]
        elif ch.isdigit():
            total += _DIGIT_WEIGHT
        else:
            total += 1.0
    return total


def _cut_after(text: str, pattern: re.Pattern, skip_abbrev: bool = False) -> list[str]:
    """Split `text` right after each match of `pattern` (the match stays on the left)."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        if skip_abbrev and m.group(0).startswith(".") and _ABBREV.search(text[start:m.start() + 1]):
            continue
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _word_pieces(text: str, language: str) -> list[str]:
    """Text -> consecutive pieces (concatenating to `text`) that may be cut between."""
    if re.search(r"\s", text):
        return re.findall(r"\S+\s*|\s+", text)
    if _KANA.search(text) or language == "ja":
        try:
            from core.text.ja import _OJT_LOCK, _openjtalk

            with _OJT_LOCK:  # one shared OpenJTalk engine
                words = [w["string"] for w in _openjtalk().run_frontend(text)]
            if "".join(words) == text:
                return words
        except Exception:  # fall through to jieba
            pass
    from core.text.zh import _jieba

    return _jieba().lcut(text)


def _pack(pieces: Iterable[str], budget: float, w: dict[str, float]) -> list[str]:
    chunks: list[str] = []
    cost = 0.0
    for piece in pieces:
        c = _cost(piece, w)
        if chunks and cost + c <= budget:
            chunks[-1] += piece
            cost += c
        else:
            chunks.append(piece)
            cost = c
    return chunks


def _fit(sentence: str, budget: float, w: dict[str, float], language: str) -> list[str]:
    """One sentence -> pieces within the budget where the text allows it."""
    if _cost(sentence, w) <= budget:
        return [sentence]
    out: list[str] = []
    for clause in _pack(_cut_after(sentence, _CLAUSE_END), budget, w):
        if _cost(clause, w) <= budget:
            out.append(clause)
        else:
            words = _glue_numbers(_word_pieces(clause, language))
            limit = max(budget, _LONGEST_WORD)  # a small budget must not cut real words
            out.extend(_pack([p for word in words for p in _cut_run(word, limit, w)], budget, w))
    return out


def _cut_run(word: str, limit: float, w: dict[str, float]) -> list[str]:
    """A word costing more than `limit` -> consecutive pieces of at most `limit` each."""
    if _cost(word, w) <= limit:
        return [word]
    pieces, cost = [""], 0.0
    for ch in word:
        c = _cost(ch, w)
        if pieces[-1] and cost + c > limit:
            pieces.append("")
            cost = 0.0
        pieces[-1] += ch
        cost += c
    return pieces


def _glue_numbers(pieces: list[str]) -> list[str]:
    """Join pieces so that no cut falls between two letters/digits of one alphanumeric run."""
    out: list[str] = []
    for p in pieces:
        if out and out[-1] and p and _joined(out[-1][-1], p[0]):
            out[-1] += p
        else:
            out.append(p)
    return out


def _joined(a: str, b: str) -> bool:
    def alnum(c: str) -> bool:
        return c.isascii() and c.isalnum() or c.isdigit()

    return (alnum(a) and alnum(b)) or (a.isdigit() and b in ".,:") or (a in ".,:" and b.isdigit())


_BREAK = "\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]"
_LINE_BREAKS = re.compile(rf"[ \t]*(?:{_BREAK})\s*")
_TAG_LITERAL = re.compile(r"\[[A-Za-z]{2}\]")
_CLOSING = set("\"'”’)]}」』）》〉】")
_OPENING = set("\"'“‘([{「『（《〈【")
_WINDOW = 64  # characters looked at on each side of a line break


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF66 <= o <= 0xFF9F


def _neighbour(text: str, backwards: bool) -> str:
    """The first character said next to a line break (within `text`, a short window): tags,
    blanks and quotes skipped."""
    text = _TAG_LITERAL.sub("", text)
    skip = _CLOSING if backwards else _OPENING
    for ch in reversed(text) if backwards else text:
        if not ch.isspace() and ch not in skip:
            return ch
    return ""


def mark_line_breaks(text: str) -> str:
    """Line breaks -> what a reader hears there. The reference deletes them, so "Hello there\\nHow
    are you" ran on without a pause: between two lines where the first ends in a word, digit or
    symbol, a break becomes a full stop (`.` or `。` after Chinese/Japanese), or a comma when the
    next line goes on in lower case (a wrapped sentence); a blank line is always a full stop.
    After punctuation a break is a space (nothing between Chinese/Japanese characters)."""
    def mark(m: re.Match) -> str:
        before = _neighbour(text[max(0, m.start() - _WINDOW):m.start()], backwards=True)
        after = _neighbour(text[m.end():m.end() + _WINDOW], backwards=False)
        if not before or not after:
            return ""
        cjk = _is_cjk(before)
        space = "" if cjk or _is_cjk(after) else " "
        if unicodedata.category(before)[0] not in "LNS" and before not in "%％‰":
            return space
        paragraph = len(re.findall(_BREAK, m.group(0))) > 1
        if not paragraph and after.islower() and after.isascii():
            return ("，" if cjk else ",") + space
        return ("。" if cjk else ".") + space
    return _LINE_BREAKS.sub(mark, text)


def split_sentences(text: str, language: str = "auto-mix", max_chars: float | None = None) -> list[str]:
    """Split long text into chunks the model can say in one generation.

    Args:
        text: any text. `[EN]..[EN]`-style tags (under "auto-mix" only paired ones) are read as
            core.text.tags describes, and every chunk carries its own: a span cut into pieces
            is closed and reopened around each, so that every piece keeps its language.
        language: the language choice that will be passed to `phonemize`; it picks the weight of
            Han characters (Mandarin or Japanese speaking rate).
        max_chars: budget per chunk in English-equivalent characters (default 170, ~12 s).
    Returns:
        list[str] of non-empty chunks, whitespace-trimmed, in order; empty for blank text. Line
        breaks are replaced as `mark_line_breaks` says (a pause where the line ended unpunctuated).
    """
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    budget = float(max_chars) if max_chars else DEFAULT_BUDGET
    marks = None
    if _reads_tags(text, language):  # split the text without its tags, then close them per chunk
        text, marks = tags.labels(text)
    w = _weights(language, bool(_KANA.search(text)))
    sentences = _cut_after(text, _SENTENCE_END, skip_abbrev=True)
    pieces = [p for s in sentences for p in _fit(s, budget, w, language)]
    merged: list[str] = []
    pos = 0
    for plain in _pack(pieces, budget, w):
        if marks is None:
            chunk = plain
        else:  # blanks at the chunk's edges stay outside its tags
            start = pos + len(plain) - len(plain.lstrip())
            end = pos + len(plain.rstrip())
            chunk = tags.retag(text[start:end], marks[start:end]) if end > start else ""
        pos += len(plain)
        chunk = mark_line_breaks(chunk).strip()
        if merged and not any(ch.isalnum() for ch in plain):
            merged[-1] += chunk  # punctuation-only leftovers join the chunk before
        elif chunk:
            merged.append(chunk)
    return merged


def _reads_tags(text: str, language: str) -> bool:
    """Whether phonemize reads `text`'s tags (as user tags) under `language`."""
    if language == "auto-mix":
        return tags.has_paired_tags(text)
    return tags.has_known_tags(text)  # "mix", "auto" and a language picked
