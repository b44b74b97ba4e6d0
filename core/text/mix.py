"""Language tags: the reference's `[EN]..[EN]` segment cleaner, langid detection, and auto-mix.

Reference behaviour (golden README, "text" / pipeline): every `[EN](.*?)[EN]`, `[ZH](.*?)[ZH]`
and `[JA](.*?)[JA]` match (three separate scans, sorted by start) is cleaned on its own and the
results are concatenated; text outside the matches is dropped. A match's label is `en` if its
text holds `[EN]`, else `zh` if it holds `[ZH]`, else `ja`; spans nested inside it are converted
first (ZH, then JA, then EN), as the reference does.

Auto-mix (ours) splits untagged text into same-language runs by script: Latin and other
alphabets -> English; a clause with hiragana -> Japanese, its Han characters included; a clause
with katakana but no hiragana -> Japanese if its Han characters are (東京タワー), else Chinese with
the katakana words Japanese (我喜欢ラーメン); Han-only clauses -> Chinese if a character is one
Japanese does not write (们 爱, not in cp932), Japanese if one is a Japanese-only form (駅 気) or
the text has hiragana elsewhere, else langid restricted to zh/ja (almost always zh). Digits,
punctuation and symbols join the run before them. If only one language results, the caller
tags the whole text with it when the letters decide (alphabetic -> English, kana -> Japanese);
Han-only text and text without letters use plain "auto" (langid on the whole text), as the
reference does.

The Studio's own reading of user tags (nothing dropped) is core.text.tags.
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


def _hiragana(text: str) -> bool:
    return any(0x3040 <= ord(ch) <= 0x309F for ch in text)


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
        return True
    except UnicodeEncodeError:
        return False


def _not_japanese(han: str) -> bool:
    """A character Japanese does not write (outside cp932: simplified forms such as 们 爱 欢 说)."""
    return not _encodes(han, "cp932")


def _not_simplified(han: str) -> bool:
    """A character simplified Chinese does not write (outside GB 2312: 東 駅 気 愛)."""
    return not _encodes(han, "gb2312")


def _japanese_only(han: str) -> bool:
    """A Japanese form that Chinese writes neither simplified nor traditional (駅 気 図, not 東)."""
    return any(_encodes(ch, "cp932") and not _encodes(ch, "gb2312") and not _encodes(ch, "big5") for ch in han)


def _han_language(clause: str, japanese_context: bool) -> str:
    """A clause's Han characters without kana beside them: a character Japanese lacks (们 爱)
    says Chinese, a Japanese-only form (駅 気) Japanese; in a text with hiragana elsewhere they
    are Japanese; otherwise langid decides (restricted to zh/ja, it nearly always says zh)."""
    han = "".join(ch for ch in clause if _script(ch) == "han")
    if _not_japanese(han):
        return "zh"
    if japanese_context or _japanese_only(han):
        return "ja"
    return "ja" if langid_detect(clause) == "ja" else "zh"


def _katakana_clause(clause: str, japanese_context: bool) -> list[tuple[str, str]]:
    """A clause with katakana but no hiragana: Japanese as a whole when its Han characters are
    Japanese (東京タワー), else Chinese with its katakana words as Japanese (我喜欢ラーメン)."""
    han = "".join(ch for ch in clause if _script(ch) == "han")
    if not han or _han_language(han, japanese_context or _not_simplified(han)) == "ja":
        return [("ja", clause)]
    pieces: list[tuple[str, str]] = []
    for ch in clause:
        script = _script(ch)
        lang = "ja" if script == "kana" else "zh" if script == "han" else ""
        if pieces and (not lang or pieces[-1][0] == lang):
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + ch)
        else:
            pieces.append((lang or "zh", ch))
    return pieces


def _cjk_language(run: str, japanese_context: bool = False) -> list[tuple[str, str]]:
    """A CJK run -> (language, text) pieces, clause by clause. Hiragana makes a clause Japanese,
    Han characters included; see `_katakana_clause` and `_han_language` for the others."""
    pieces: list[tuple[str, str]] = []
    start = 0
    for i, ch in enumerate(run):
        if ch in _CLAUSE_END or i == len(run) - 1:
            clause = run[start:i + 1]
            start = i + 1
            if _hiragana(clause):
                pieces.append(("ja", clause))
            elif _KANA.search(clause):
                pieces.extend(_katakana_clause(clause, japanese_context))
            elif any(_script(c) == "han" for c in clause):
                pieces.append((_han_language(clause, japanese_context), clause))
            else:  # punctuation only: stays with the clause before
                pieces.append((pieces[-1][0] if pieces else "", clause))
    first = next((lang for lang, _ in pieces if lang), "zh")
    return [(lang or first, clause) for lang, clause in pieces]


def split_languages(text: str) -> list[tuple[str, str]]:
    """Untagged text -> [(language, text)] runs, neighbours of one language merged.

    Returns an empty list when the text holds no letters at all (the caller falls back to "auto").
    """
    out: list[tuple[str, str]] = []
    japanese_context = _hiragana(text)
    for group, run in _script_runs(text):
        if group == "alpha":
            pieces = [("en", run)]
        elif group == "cjk":
            pieces = _cjk_language(run, japanese_context)
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
