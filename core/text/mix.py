"""Language tags: the reference's `[EN]..[EN]` segment cleaner, langid detection, and auto-mix.

Reference behaviour (golden README, "text" / pipeline): every `[EN](.*?)[EN]`, `[ZH](.*?)[ZH]`
and `[JA](.*?)[JA]` match (three separate scans, sorted by start) is cleaned on its own and the
results are concatenated; text outside the matches is dropped. A match's label is `en` if its
text holds `[EN]`, else `zh` if it holds `[ZH]`, else `ja`; spans nested inside it are converted
first (ZH, then JA, then EN), as the reference does.

Auto-mix (ours) splits untagged text into same-language runs by script: Latin and other
alphabets -> English; kana -> Japanese; Han next to kana (same clause) -> Japanese; Han-only
clauses -> langid restricted to zh/ja (almost always zh). Digits, punctuation and symbols join
the run before them. If only one language results, the caller tags the whole text with it when
the letters decide (alphabetic -> English, kana -> Japanese); Han-only text and text without
letters use plain "auto" (langid on the whole text), as the reference does.
"""
from __future__ import annotations

import functools
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Callable

TAGS = {"en": "[EN]", "zh": "[ZH]", "ja": "[JA]"}
_SPAN = {lang: re.compile(rf"\[{tag[1:3]}\](.*?)\[{tag[1:3]}\]") for lang, tag in TAGS.items()}
_ANY_TAG = re.compile(r"\[(EN|ZH|JA)\](.*?)\[\1\]")
_TRAILING_SPACE = re.compile(r"\s+$")
_NEEDS_STOP = re.compile(r"([^\.,!\?\-…~])$")
_LANGID_LOCK = threading.Lock()

Converter = Callable[[str, str], str]  # (language, text) -> IPA string


@dataclass(frozen=True)
class Segment:
    """One tagged span: its language label and the raw span text, tags included."""

    language: str
    raw: str


def find_segments(tagged: str) -> list[Segment]:
    """All tag matches of `tagged`, ordered by start (overlaps kept, as in the reference)."""
    matches = [m for pattern in _SPAN.values() for m in pattern.finditer(tagged)]
    matches.sort(key=lambda m: m.start())  # stable: equal starts keep EN, ZH, JA order
    segments = []
    for m in matches:
        raw = m.group(0)
        lang = "en" if "[EN]" in raw else "zh" if "[ZH]" in raw else "ja"
        segments.append(Segment(lang, raw))
    return segments


def clean_segment(raw: str, convert: Converter) -> str:
    """Reference `clean_one`: convert spans (ZH, then JA, then EN), strip, add a final `.`."""
    for lang in ("zh", "ja", "en"):
        if TAGS[lang] in raw:
            raw = _SPAN[lang].sub(lambda m, lang=lang: convert(lang, m.group(1)) + " ", raw)
    raw = _TRAILING_SPACE.sub("", raw)
    return _NEEDS_STOP.sub(r"\1.", raw)


def has_tags(text: str) -> bool:
    return _ANY_TAG.search(text) is not None


def strip_stray_tags(text: str) -> str:
    """Remove unpaired tag literals, so that auto-mix's own tags cannot pair with them."""
    return re.sub(r"\[(EN|ZH|JA)\]", "", text)


@functools.cache
def _identifier():
    """A private langid identifier restricted to en/zh/ja (the global one is left alone)."""
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=False)
    ident.set_languages(["en", "zh", "ja"])
    return ident


def langid_detect(text: str) -> str:
    """The reference's "auto": `langid.classify(text)` over en/zh/ja -> "en" | "zh" | "ja"."""
    with _LANGID_LOCK:  # also around the first build (1.6 s): a take during warmup waits, not builds twice
        return _identifier().classify(text)[0]


# ---- auto-mix -------------------------------------------------------------------------------

# half-width katakana with its voiced marks ﾞﾟ (U+FF9E/F, letters to unicodedata, not kana)
_KANA = re.compile("[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_CLAUSE_END = set("。！？!?；;\n")


def _script(ch: str) -> str:
    """'kana' | 'han' | 'alpha' | '' (neutral: digits, punctuation, symbols, spaces)."""
    o = ord(ch)
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F:
        # ー (long vowel), ・ and the iteration marks belong with the kana around them
        return "kana"
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or ch in "々〆":
        return "han"
    if 0x20000 <= o <= 0x3FFFF:
        return "han"
    if ch.isalpha() and unicodedata.category(ch).startswith("L"):
        return "alpha"
    return ""


def _script_runs(text: str) -> list[tuple[str, str]]:
    """Split into ('cjk' | 'alpha', text) runs; neutral characters join the run before them."""
    runs: list[list[str]] = []
    for ch in text:
        s = _script(ch)
        group = "cjk" if s in ("kana", "han") else s
        if group and (not runs or runs[-1][0] != group):
            if runs and runs[-1][0] == "":
                runs[-1][0] = group  # leading neutral characters go with the first run
                runs[-1][1] += ch
            else:
                runs.append([group, ch])
        elif not runs:
            runs.append([group, ch])
        else:
            runs[-1][1] += ch
    return [(g, t) for g, t in runs]


def _cjk_language(run: str) -> list[tuple[str, str]]:
    """A CJK run -> (language, text) pieces, clause by clause."""
    pieces: list[tuple[str, str]] = []
    start = 0
    for i, ch in enumerate(run):
        if ch in _CLAUSE_END or i == len(run) - 1:
            clause = run[start:i + 1]
            start = i + 1
            if _KANA.search(clause):
                lang = "ja"
            elif any(_script(c) == "han" for c in clause):
                lang = "ja" if langid_detect(clause) == "ja" else "zh"
            else:  # punctuation only: stays with the clause before
                lang = pieces[-1][0] if pieces else ""
            pieces.append((lang, clause))
    first = next((lang for lang, _ in pieces if lang), "zh")
    return [(lang or first, clause) for lang, clause in pieces]


def split_languages(text: str) -> list[tuple[str, str]]:
    """Untagged text -> [(language, text)] runs, neighbours of one language merged.

    Returns an empty list when the text holds no letters at all (the caller falls back to "auto").
    """
    out: list[tuple[str, str]] = []
    for group, run in _script_runs(text):
        if group == "alpha":
            pieces = [("en", run)]
        elif group == "cjk":
            pieces = _cjk_language(run)
        else:
            continue
        for lang, piece in pieces:
            if out and out[-1][0] == lang:
                out[-1] = (lang, out[-1][1] + piece)
            else:
                out.append((lang, piece))
    return out


def tag(runs: list[tuple[str, str]]) -> str:
    """[(language, text)] -> reference-style tagged text."""
    return "".join(f"{TAGS[lang]}{piece}{TAGS[lang]}" for lang, piece in runs)
