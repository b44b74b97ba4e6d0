"""English G2P, reference-exact (`english_to_ipa2`), plus an optional espeak-ng fallback.

Pipeline (golden README, "text" / English): unidecode -> lower -> abbreviations -> numbers
(inflect) -> eng_to_ipa word by word (CMU dictionary; unknown words come out as their spelling
plus `*`) -> collapse whitespace -> dark l -> `r ʤ ʧ` -> `ɹ dʒ tʃ` -> `...` -> `…`.

eng_to_ipa looks every call up in SQLite with a full table scan (about 11 ms per call, and the
reference's one-query-per-text form breaks on very long texts), so the dictionary is read into
memory once and eng_to_ipa's own per-word functions (stress placement, punctuation re-attachment)
are applied to it. eng_to_ipa's result for a text is the space-join of its per-word results, so
this is exact; the per-word results are memoised.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import threading
from collections import defaultdict

from unidecode import unidecode

log = logging.getLogger(__name__)

# (abbreviation, expansion), applied in this order, case-insensitive, only before a full stop.
_ABBREVIATIONS = [
    (re.compile(rf"\b{abbr}\.", re.IGNORECASE), full)
    for abbr, full in [
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"),
        ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"),
        ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"),
        ("ft", "fort"),
    ]
]
_COMMA_NUMBER = re.compile(r"([0-9][0-9\,]+[0-9])")
_DECIMAL = re.compile(r"([0-9]+\.[0-9]+)")
_POUNDS = re.compile(r"£([0-9\,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER = re.compile(r"[0-9]+")
_DARK_L = re.compile(r"l([^aeiouæɑɔəɛɪʊ ]*(?: |$))")
_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


@functools.cache
def _inflect():
    import inflect

    return inflect.engine()


def _digits_to_words(digits: str) -> str:
    """Fallback reading, digit by digit, for numbers inflect cannot say (reference: crash)."""
    return " ".join(_DIGIT_WORDS[int(d)] for d in digits if d.isdigit())


def _say_number(num_text: str) -> str:
    """Integer reading as the reference does it: years for 1000 < N < 3000, else cardinal."""
    if len(num_text) > 36:  # beyond inflect's range (and int() refuses > 4300 digits)
        return _digits_to_words(num_text)
    try:
        return _say_integer(int(num_text))
    except Exception:  # inflect.NumOutOfRangeError; the reference crashes here
        return _digits_to_words(num_text)


def _say_integer(num: int) -> str:
    eng = _inflect()
    if 1000 < num < 3000:
        if num == 2000:
            return "two thousand"
        if 2000 < num < 2010:
            return "two thousand " + eng.number_to_words(num % 100)
        if num % 100 == 0:
            return eng.number_to_words(num // 100) + " hundred"
        return eng.number_to_words(num, andword="", zero="oh", group=2).replace(", ", " ")
    return eng.number_to_words(num, andword="")


def _say_ordinal(m: re.Match) -> str:
    if len(m.group(0)) <= 38:
        try:
            return _inflect().number_to_words(m.group(0))
        except Exception:  # out of inflect's range; the reference crashes here
            pass
    return _digits_to_words(m.group(0)) + " " + m.group(1)


def _say_dollars(m: re.Match) -> str:
    amount = m.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " dollars"
    try:
        dollars = int(parts[0]) if parts[0] else 0
        cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError:  # "$,5" or > 4300 digits: the reference crashes; say the digits
        return amount.replace(".", " point ").replace(",", " ") + " dollars"
    units = []
    if dollars:
        units.append(f"{dollars} {'dollar' if dollars == 1 else 'dollars'}")
    if cents:
        units.append(f"{cents} {'cent' if cents == 1 else 'cents'}")
    return ", ".join(units) if units else "zero dollars"


def expand_numbers(text: str) -> str:
    """The reference's number expansion (commas, £, $, decimals, ordinals, integers)."""
    text = _COMMA_NUMBER.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS.sub(r"\1 pounds", text)
    if "$" in text:
        text = _DOLLARS.sub(_say_dollars, text)
    text = _DECIMAL.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL.sub(_say_ordinal, text)
    return _NUMBER.sub(lambda m: _say_number(m.group(0)), text)


@functools.cache
def _cmu() -> dict[str, list[str]]:
    """word -> its CMU pronunciations in the database's row order (as eng_to_ipa's query returns)."""
    import eng_to_ipa

    path = os.path.join(os.path.dirname(eng_to_ipa.__file__), "resources", "CMU_dict.db")
    table: dict[str, list[str]] = defaultdict(list)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        for word, phonemes in conn.execute("SELECT word, phonemes FROM dictionary ORDER BY id"):
            table[word].append(phonemes)
    return dict(table)


@functools.lru_cache(maxsize=200_000)
def _word_to_ipa(token: str) -> tuple[str, bool]:
    """One whitespace-free token -> (eng_to_ipa's transcription, found in the dictionary)."""
    from eng_to_ipa import transcribe

    triple = transcribe.preserve_punc(token.lower())[0]
    core = triple[1]
    entry = _cmu().get(core)
    cmu = [entry if entry else ["__IGNORE__" + core]]
    ipa = transcribe.cmu_to_ipa(cmu, stress_marking="both")
    ipa = transcribe._punct_replace_word([triple], ipa)
    return ipa[0][-1], bool(entry) or not re.sub(r"\d*", "", core)


class _Espeak:
    """espeak-ng through `phonemizer`, mapped onto the checkpoint's symbols; one shared backend."""

    # espeak-ng (en-us) IPA -> the CMU-style IPA eng_to_ipa produces (before the `ɹ`/dark-l pass).
    _MAP = [("ː", ""), ("ɚ", "ər"), ("ɝ", "ər"), ("ɜ", "ə"), ("ʌ", "ə"), ("ɐ", "ə"), ("ᵻ", "ɪ"),
            ("ɒ", "ɑ"), ("ɾ", "t"), ("ʔ", "t"), ("n̩", "ən"), ("l̩", "əl"), ("m̩", "əm"),
            ("ɡ", "g"), ("ɹ", "r"), ("ɬ", "l"), ("x", "k"), ("ʲ", ""), ("\u0303", ""), ("ɔɪ", "ɔɪ")]
    _ALLOWED = set("abdefghijklmnoprstuvwzæðŋɑɔəɛɪʃʊʒθˈˌ")

    def __init__(self):
        self._lock = threading.Lock()
        self._backend = None

    def _get(self):
        if self._backend is None:
            from phonemizer.backend import EspeakBackend

            self._backend = EspeakBackend("en-us", with_stress=True)
        return self._backend

    @functools.lru_cache(maxsize=50_000)
    def word(self, word: str) -> str | None:
        try:
            with self._lock:
                ipa = self._get().phonemize([word], strip=True)[0]
        except Exception as err:  # espeak missing or failing: keep the reference's spelling
            log.warning("espeak-ng fallback unavailable for %r: %s", word, err)
            return None
        for src, dst in self._MAP:
            ipa = ipa.replace(src, dst)
        ipa = "".join(c for c in ipa if c in self._ALLOWED)
        return ipa or None


_ESPEAK = _Espeak()


def _convert(text: str, espeak_fallback: bool) -> str:
    """eng_to_ipa.convert(text) with the in-memory dictionary (and optional espeak fallback)."""
    out = []
    for token in text.split():
        ipa, found = _word_to_ipa(token)
        if not found and espeak_fallback:
            ipa = _espeak_token(token) or ipa
        out.append(ipa)
    return " ".join(out)


def _espeak_token(token: str) -> str | None:
    from eng_to_ipa import transcribe

    before, core, after = transcribe.preserve_punc(token.lower())[0]
    spoken = _ESPEAK.word(core) if re.search(r"[a-z]", core) else None
    return before + spoken + after if spoken else None


def english_to_ipa(text: str, espeak_fallback: bool = False) -> str:
    """English text -> IPA string in the checkpoint's symbols (reference `english_to_ipa2`).

    `espeak_fallback=True` sounds out words missing from the CMU dictionary (which the reference
    leaves as spelling + `*`) with espeak-ng.
    """
    text = unidecode(text).lower()
    for regex, full in _ABBREVIATIONS:
        text = regex.sub(full, text)
    text = expand_numbers(text)
    phonemes = re.sub(r"\s+", " ", _convert(text, espeak_fallback))
    phonemes = _DARK_L.sub(lambda m: "ɫ" + m.group(1), phonemes)
    phonemes = phonemes.replace("r", "ɹ").replace("ʤ", "dʒ").replace("ʧ", "tʃ")
    return phonemes.replace("...", "…")


class EnglishG2P:
    """English front-end; `__call__(text) -> IPA str`."""

    language = "en"

    def __init__(self, espeak_fallback: bool = False):
        self.espeak_fallback = espeak_fallback

    def __call__(self, text: str) -> str:
        return english_to_ipa(text, self.espeak_fallback)
