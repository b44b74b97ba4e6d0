"""Which characters the model can say: letters of English (Latin), Chinese and Japanese.

The front-end (core.text.phonemize) keeps the reference's behaviour on any text: Hangul, Arabic,
Cyrillic... are read as Chinese and become the unknown symbol, which the model speaks as noise.
The Studio asks here first, so that such text is left out with a note instead of spoken badly.
Invisible format characters (zero-width spaces and joiners, a byte-order mark) are dropped.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# words in a Unicode character name that mark a letter the three front-ends read
_SPOKEN = ("LATIN", "CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "FULLWIDTH", "HALFWIDTH", "BOPOMOFO")


@dataclass(frozen=True)
class Screened:
    text: str  # the text without the characters left out
    dropped: str  # the words left out (each once, in order, space-separated)
    scripts: tuple[str, ...]  # their scripts as named in Unicode ("Hangul", "Arabic", ...)

    def has_words(self) -> bool:
        """Whether anything sayable is left (a letter or a digit)."""
        return any(unicodedata.category(c)[0] in "LN" for c in self.text)

    def reason(self) -> str:
        """"Hangul is not English, Chinese or Japanese"."""
        names = " and ".join(self.scripts) if len(self.scripts) <= 2 else ", ".join(self.scripts)
        return f"{names} {'is' if len(self.scripts) == 1 else 'are'} not English, Chinese or Japanese"

    def note(self) -> str:
        """"left out 'мир' (Cyrillic: not English, Chinese or Japanese)"."""
        words = self.dropped if len(self.dropped) <= 30 else self.dropped[:29] + "…"
        return f"left out {words!r} ({', '.join(self.scripts)}: not English, Chinese or Japanese)"


def _spoken(ch: str) -> bool:
    cat = unicodedata.category(ch)
    if cat[0] not in "LM":  # digits, punctuation, symbols, spaces: the front-end decides
        return True
    name = unicodedata.name(ch, "")
    return any(word in name for word in _SPOKEN) or (cat[0] == "M" and "COMBINING" in name)


def screen(text: str) -> Screened:
    """`text` without letters of other scripts and without invisible format characters."""
    kept: list[str] = []
    runs: list[str] = []  # the words left out, each once
    scripts: list[str] = []
    run = ""
    for ch in text + " ":
        if unicodedata.category(ch) == "Cf":
            continue
        if _spoken(ch):
            if run and run not in runs:
                runs.append(run)
            run = ""
            kept.append(ch)
            continue
        run += ch
        script = unicodedata.name(ch, "UNKNOWN").split()[0].title()
        if script not in scripts:
            scripts.append(script)
    return Screened("".join(kept[:-1]), " ".join(runs), tuple(scripts))
