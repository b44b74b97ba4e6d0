"""User language tags (`[EN]..[EN]`, `[ZH]..[ZH]`, `[JA]..[JA]`) read the way a writer means them.

The reference (core.text.mix.find_segments) speaks only what lies between two equal tags and
drops the rest without a word: "[EN]hello" (never closed), "hello[ZH]", text outside the tags,
lower-case tags. That stays the reference-compatible reading (`phonemize(..., normalize=False)`).
With `normalize=True` the Studio reads tags with `parse` instead, where every character of the
text is either spoken or named in an error:

- A tag opens a span of its language; the same tag again closes it. Tags are case-insensitive
  (`[zh]` is `[ZH]`).
- An unclosed tag runs to the end of the text: "[EN]hello" is English. A tag with nothing to
  say after it ("hello[ZH]") is a lone closing tag: it is ignored and "hello" is kept, detected
  like untagged text. (An unclosed tag in the middle, "你好[ZH] world", still opens a span:
  " world" is read as Chinese. Close your tags to be sure.)
- Nesting: the most recently opened span that is still open decides, so "[EN]a [ZH]b[ZH] c[EN]"
  is English, Chinese, English, and crossing spans read the same way.
- Text outside every span is not dropped: the caller detects its language by script, as in
  "auto-mix". Text without any tag is another matter: in "mix" mode that is taken for a mistake
  and is a TextError whose hint says how to tag (pick an "auto" language for untagged text).
- With a language picked ("en", "zh", "ja") or "auto", tags are read too; text outside them is in
  the language picked (under "auto", detected by script as above).
- A two-letter upper-case tag of another language ("[FR]", "[KO]") is a TextError naming it: the
  model speaks only English, Chinese and Japanese.
"""
from __future__ import annotations

import re

from core.errors import TextError

TAGS = {"en": "[EN]", "zh": "[ZH]", "ja": "[JA]"}
_TAG = re.compile(r"\[(?:([Ee][Nn]|[Zz][Hh]|[Jj][Aa])|([A-Z]{2}))\]")
_PAIRED = re.compile(r"\[(EN|ZH|JA)\].*?\[\1\]", re.IGNORECASE | re.DOTALL)
_KNOWN = re.compile(r"\[(?:EN|ZH|JA)\]", re.IGNORECASE)


def has_known_tags(text: str, check: bool = False) -> bool:
    """Whether `text` holds any `[EN]`, `[ZH]` or `[JA]` (any case, paired or not).
    `check`: first raise TextError for a tag of another language, as `parse` does."""
    if check:
        parse(text)
    return _KNOWN.search(text) is not None


def has_paired_tags(text: str) -> bool:
    """Whether `text` holds a tag and later the same tag again (any case): the sign that a user
    tagged the text ("auto-mix" then reads it as "mix"; a lone tag there is left out)."""
    return _PAIRED.search(text) is not None


def strip(text: str) -> str:
    """`text` without its `[EN]`, `[ZH]` and `[JA]` tags (any case)."""
    return _KNOWN.sub("", text)


def parse(text: str, strict: bool = True) -> list[tuple[str | None, str]]:
    """Tagged text -> [(language or None, text)] runs with the tags removed, in order.

    One run per stretch between two tags (a span the user closed and reopened stays two runs);
    None marks text outside every span. Empty runs are left out.
    Raises TextError for a tag of another language ("[FR]") when `strict`; otherwise such a tag
    stays in the text as written.
    """
    events = []  # (start, end, language) of each known tag
    for m in _TAG.finditer(text):
        if m.group(1):
            events.append((m.start(), m.end(), m.group(1).lower()))
        elif strict:
            raise TextError(f"{m.group(0)} is not a language tag the voice can speak.",
                            hint="Use [EN]..[EN] for English, [ZH]..[ZH] for Chinese or [JA]..[JA] "
                                 "for Japanese around each part, or delete the tag.")
    runs: list[tuple[str | None, str]] = []
    open_spans: list[str] = []  # the languages open now, the last opened last
    pos = 0
    for start, end, lang in events:
        if start > pos:
            runs.append((open_spans[-1] if open_spans else None, text[pos:start]))
        if lang in open_spans:
            open_spans.remove(lang)
        else:
            open_spans.append(lang)
        pos = end
    if pos < len(text):
        runs.append((open_spans[-1] if open_spans else None, text[pos:]))
    return [(lang, piece) for lang, piece in runs if piece]


def labels(text: str) -> tuple[str, list[tuple[int, str | None]]]:
    """`text` -> (text without tags, one (run number, language or None) per character of it).
    Lenient: an unknown tag stays text (phonemize names it later)."""
    plain, marks = [], []
    for n, (lang, piece) in enumerate(parse(text, strict=False)):
        plain.append(piece)
        marks.extend([(n, lang)] * len(piece))
    return "".join(plain), marks


def retag(plain: str, marks: list[tuple[int, str | None]]) -> str:
    """Inverse of `labels` for a slice of it: each run closed within the slice, so that a piece
    cut out of a long span keeps the span's language."""
    out, i = [], 0
    while i < len(plain):
        j = i
        while j < len(plain) and marks[j] == marks[i]:
            j += 1
        lang = marks[i][1]
        out.append(f"{TAGS[lang]}{plain[i:j]}{TAGS[lang]}" if lang else plain[i:j])
        i = j
    return "".join(out)
