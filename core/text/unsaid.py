"""Characters a language's G2P cannot say, found by asking it, for `phonemize(normalize=True)`.

After normalisation has written out what it knows (money, %, ‰, °, ©, ™, ®...), a character can
still reach a G2P that has no reading for it: it then becomes the unknown id (which the model
speaks as noise) or vanishes without a trace (unidecode drops emoji). Each such character is
left out; punctuation, marks and invisible characters quietly (they were never to be spoken:
brackets, 「」, 《》), symbols and letters of other scripts with a warning naming them, so that
the user learns what was not said.

Whether a G2P says a character is asked once per (language, character): the character between
two plain words of the language, compared with the two words alone.
"""
from __future__ import annotations

import functools
import unicodedata

from core.text.symbols import SYMBOL_TO_ID, WHITESPACE

# between punctuation, so that splitting the carrier in two changes nothing else (OpenJTalk's
# accent marks would differ for "ああ" and "あ あ")
_CARRIER = {"en": ("a, ", " ,a"), "zh": ("好，", "，好"), "ja": ("あ。", "。あ")}
_LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "ja": "Japanese"}


@functools.cache
def _g2p(language: str):
    from core.text import get_frontend

    return get_frontend(language)


def _said_by_script(ch: str, language: str) -> bool:
    """Characters the G2P surely says (or that normalisation has dealt with): no need to ask."""
    if (ch.isascii() and ch.isalnum()) or ch in WHITESPACE:
        return True
    o = ord(ch)
    # ー, 々 and the iteration marks are said with the character before them: alone they vanish
    han = 0x4E00 <= o <= 0x9FFF or ch in "々〆"
    kana = 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F
    return han or (kana and language != "zh")  # Mandarin has no reading for kana


@functools.lru_cache(maxsize=8192)
def unsaid(language: str, ch: str) -> bool:
    """Whether `language`'s G2P turns `ch` into an unknown id or drops it without a trace."""
    if _said_by_script(ch, language) or (language == "en" and ch == "'"):  # "don't": normalize_en keeps only those
        return False
    before, after = _CARRIER[language]
    g2p = _g2p(language)  # thread-safe: each G2P guards its own state
    with_ch, without = g2p(before + ch + after), g2p(before + after)
    unknown = any(c not in SYMBOL_TO_ID and c not in WHITESPACE for c in with_ch)
    return unknown or with_ch.replace(" ", "") == without.replace(" ", "")


def _quiet(ch: str) -> bool:
    """Punctuation, combining marks and invisible characters: left out without a warning."""
    return unicodedata.category(ch)[0] in "PMCZ"


def leave_out(text: str, language: str) -> tuple[str, list[str]]:
    """-> (`text` without the characters its G2P cannot say, the ones worth a warning).

    The second value lists the symbols and letters left out, each once; punctuation and
    invisible characters go without a mention.
    """
    kept: list[str] = []
    named: list[str] = []
    gap = " " if language == "en" else ""  # "and/or" must not become one English word
    for ch in text:
        if not unsaid(language, ch):
            kept.append(ch)
            continue
        kept.append(gap)
        if not _quiet(ch) and ch not in named:
            named.append(ch)
    return "".join(kept), named


def warning(named: list[str], language: str) -> str:
    """"left out '★ ♪' (no reading in English)": for `Phonemes.warnings`."""
    named = list(dict.fromkeys(named))
    more = f" and {len(named) - 12} more" if len(named) > 12 else ""  # a warning stays one readable line
    return f"left out {' '.join(named[:12])!r}{more} (no reading in {_LANGUAGE_NAMES[language]})"
