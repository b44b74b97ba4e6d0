"""Text front-end: text -> the checkpoint's phoneme ids, one model language id per id.

    from core.text import phonemize
    p = phonemize("我今天去了 Starbucks and bought コーヒー", language="auto-mix")
    p.ids, p.langs, p.phonemes, p.language

With the defaults (`normalize=False`, `espeak_fallback=False`) the ids and langs are exactly those
of the reference front-end (Plachtaa/VALL-E-X `utils/g2p` + `generate_audio`), see
`../shared/golden/README.md` ("text"). Where the reference raised, we raise `TextError` for text
with nothing to say, and otherwise return a well-formed result (stray tabs and similar
whitespace are dropped from ids and langs alike instead of failing an assert).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from core.errors import TextError
from core.text import mix, tags
from core.text.en import EnglishG2P
from core.text.ja import JapaneseG2P
from core.text.split import mark_line_breaks, split_sentences
from core.text.symbols import LANG_IDS, N_SYMBOLS, SYMBOLS, encode
from core.text.unsaid import warning as leave_out_warning
from core.text.zh import MandarinG2P

__all__ = ["Phonemes", "phonemize", "detect_language", "split_sentences", "get_frontend", "warmup",
           "LANGUAGES", "LANG_IDS", "N_SYMBOLS", "SYMBOLS"]

log = logging.getLogger(__name__)

LANGUAGES = ("auto-mix", "auto", "en", "zh", "ja", "mix")
_ACCENT_OFF = (None, "", "keep", "none", "auto")


@dataclass(frozen=True)
class Phonemes:
    """Phoneme tokens of one text.

    ids: list[int] of length L, values 0..69 (no BOS/EOS).
    langs: list[int] of length L, model language ids (en=0, zh=1, ja=2).
    phonemes: the symbol string the ids encode (word boundaries as `_`; unknown symbols kept).
    language: "en" | "zh" | "ja" for one-language text, "mix" when segments differ.
    segments: ((language, text), ...) as tagged before G2P, for display and debugging.
    warnings: what the caller should tell the user (with `normalize=True`: characters left out
        because no reading exists, e.g. "left out '★' (no reading in English)"); empty otherwise.
    """

    ids: list[int]
    langs: list[int]
    phonemes: str
    language: str
    segments: tuple[tuple[str, str], ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.ids)


def get_frontend(language: str, espeak_fallback: bool = False) -> Callable[[str], str]:
    """One language's G2P: a callable text -> IPA string in the checkpoint's symbols."""
    if language == "en":
        return EnglishG2P(espeak_fallback=espeak_fallback)
    if language == "zh":
        return MandarinG2P()
    if language == "ja":
        return JapaneseG2P()
    raise TextError(f"No G2P for language {language!r}.", hint="Use 'en', 'zh' or 'ja'.")


_WARM: set[str] = set()  # languages whose resources are loaded (warmup runs each once per process)


def warmup(languages: tuple[str, ...] = ("en", "zh", "ja")) -> None:
    """Load the heavy resources now (langid model, CMU dictionary, inflect, jieba, cn2an,
    OpenJTalk), once per process, so that the first synthesis does not pay for them (3-5 s in
    all; importing inflect alone takes ~2.5 s, its typeguard decorators parse their source).
    Safe in a background thread: every front-end guards its lazy state with a lock."""
    samples = {"en": "Hello, 1st 2 $3.", "zh": "你好，1.5。", "ja": "こんにちは、1。"}
    unknown = [lang for lang in languages if lang not in samples]
    if unknown:
        raise TextError(f"No front-end to warm up for {', '.join(map(repr, unknown))}.", hint="Use 'en', 'zh' or 'ja'.")
    if not _WARM:
        mix.langid_detect("warm up")
    for lang in languages:
        if lang not in _WARM:
            phonemize(samples[lang], language=lang, normalize=True)
            _WARM.add(lang)


def detect_language(text: str) -> str:
    """The reference's "auto" detection: langid over en/zh/ja for the whole text."""
    return mix.langid_detect(_prepare(text))


# Control characters that are not whitespace (NUL, ESC, DEL, C1...) carry nothing to say; the
# reference would turn each into an [UNK] id. Whitespace controls stay: they change word splits.
# Lone surrogates (e.g. "\ud800" from a JSON escape) cannot be encoded to UTF-8: langid and
# pyopenjtalk would raise UnicodeEncodeError, so they are dropped with the control characters.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff]")


def _prepare(text: str) -> str:
    """Reference step 1: drop `\\n`, strip ASCII spaces (only those); plus drop control characters."""
    return _CONTROL.sub("", text).replace("\n", "").strip(" ")


def _check_args(text, language, accent) -> None:
    if not isinstance(text, str):
        raise TextError(f"Text must be a string, not {type(text).__name__}.", hint="Pass str.")
    if language not in LANGUAGES:
        raise TextError(f"Unknown language {language!r}.", hint=f"Use one of {', '.join(LANGUAGES)}.")
    if accent not in _ACCENT_OFF and accent not in LANG_IDS:
        raise TextError(f"Unknown accent {accent!r}.", hint="Use None, 'en', 'zh' or 'ja'.")


def _tagged_text(text: str, language: str, read_tags: bool = False) -> tuple[str, str]:
    """-> (tagged text, language reported). Implements language choice and auto-mix.
    `read_tags`: user tags as core.text.tags reads them (nothing dropped), not the reference's way."""
    if read_tags and language in ("en", "zh", "ja", "auto") and tags.has_known_tags(text):
        # tags the user wrote say what they mean here too (not spelled out as letters, and
        # "[ZH]你好[ZH]" not said twice); untagged text is in the language picked
        if language == "auto":
            return _user_tagged(text), "mix"
        runs = [(lang or language, piece) for lang, piece in tags.parse(text, strict=False)]
        return mix.tag(runs), ("mix" if {lang for lang, _ in runs} - {language} else language)
    if language in ("en", "zh", "ja"):
        return mix.tag([(language, text)]), language
    if language == "mix":
        # text without a single tag is said to be a mistake (TextError, hint: how to tag), as
        # the reference does; with tags, nothing outside them is dropped
        return (_user_tagged(text) if read_tags and tags.has_known_tags(text, check=True) else text), "mix"
    if language == "auto-mix":
        if read_tags and tags.has_paired_tags(text):
            return _user_tagged(text), "mix"
        if mix.has_tags(text) and not read_tags:
            return text, "mix"
        text = tags.strip(text) if read_tags else mix.strip_stray_tags(text)
        runs = mix.split_languages(text)
        found = {lang for lang, _ in runs}
        if len(found) > 1:
            return mix.tag(runs), "mix"
        if found in ({"en"}, {"ja"}):
            # The letters already say which language: langid guesses zh or ja for short Latin text
            # with symbols ("Love you ❤️", "ok 👍"), which would then be spelled letter by letter.
            lang = found.pop()
            return mix.tag([(lang, text)]), lang
    detected = mix.langid_detect(text)
    return mix.tag([(detected, text)]), detected


def _user_tagged(text: str) -> str:
    """User-tagged text -> reference-style tagged text with every character in some span. Text
    outside the user's spans is split by script as in auto-mix and joins a neighbouring span of
    its language (so that no pause is added there); digits and punctuation alone join the span
    before (or after). The user's own spans stay apart, as the reference keeps them."""
    runs: list[list] = []  # [language, text, is a user span]
    loose = ""  # letterless text before the first span
    for lang, piece in tags.parse(text):
        found = [(lang, piece)] if lang else mix.split_languages(piece)
        if not found:
            if runs:
                runs[-1][1] += piece
            else:
                loose += piece
            continue
        for found_lang, found_text in found:
            if runs and runs[-1][0] == found_lang and not (lang and runs[-1][2]):
                runs[-1][1] += found_text
                runs[-1][2] = runs[-1][2] or bool(lang)
            else:
                runs.append([found_lang, found_text, bool(lang)])
    if loose and runs:
        runs[0][1] = loose + runs[0][1]
    elif loose.strip():
        runs.append([mix.langid_detect(loose), loose, False])
    return mix.tag([(lang, piece) for lang, piece, _ in runs])


def phonemize(
    text: str,
    language: str = "auto",
    accent: str | None = None,
    normalize: bool = False,
    espeak_fallback: bool = False,
) -> Phonemes:
    """Text -> phoneme ids and per-id model language ids.

    Args:
        text: the text to say.
        language: "en" | "zh" | "ja" | "mix" (user-written `[EN]..[EN]` tags) | "auto" (one
            language for the whole text, langid) | "auto-mix" (same-language runs, tagged
            automatically; text whose letters are all alphabetic is English, with kana Japanese,
            Han-only or letterless text as "auto").
        accent: None/"keep" keeps each segment's language id; "en" | "zh" | "ja" forces one.
        normalize: the Studio's reading instead of the reference's, so off by default: expand
            numbers, dates, times, money, percentages, units and symbols first; read user tags
            as core.text.tags describes (nothing outside them dropped, unclosed tags run to the
            end, unknown tags are a TextError); a line break between two lines without
            punctuation is a pause (core.text.split.mark_line_breaks); characters still unsaid
            are left out and named in `Phonemes.warnings`.
        espeak_fallback: sound out English words missing from the CMU dictionary with espeak-ng
            (the reference spells them, marked `*`).
    Returns:
        Phonemes with ids/langs as lists of int of equal length.
    Raises:
        TextError (a ValueError): bad arguments, or nothing pronounceable in the text.
    """
    _check_args(text, language, accent)
    if normalize:
        text = mark_line_breaks(text)
    tagged, reported = _tagged_text(_prepare(text), language, read_tags=normalize)
    unsaid: dict[str, list[str]] = {}  # language -> characters left out (normalize=True)
    convert = _converter(normalize, espeak_fallback, unsaid)
    chars: list[str] = []
    langs: list[int] = []
    segments = []
    for seg in mix.find_segments(tagged):
        phon = mix.clean_segment(seg.raw, convert)
        chars.append(phon)
        langs.extend([LANG_IDS[seg.language]] * len(phon))
        segments.append((seg.language, seg.raw[4:-4]))
    ids, id_langs, kept = encode("".join(chars).replace(" ", "_"), langs)
    warnings = tuple(leave_out_warning(named, lang) for lang, named in unsaid.items() if named)
    if not ids:  # the reference's ValueError("Empty text is given")
        raise TextError(
            f"Nothing pronounceable in the text {text[:40]!r}" + (f" ({'; '.join(warnings)})." if warnings else "."),
            hint="Write words in English, Chinese or Japanese"
            + (" inside [EN]..[EN], [ZH]..[ZH] or [JA]..[JA] tags." if language == "mix" else "."),
        )
    if accent in LANG_IDS:
        id_langs = [LANG_IDS[accent]] * len(ids)
    if reported == "mix" and len({s[0] for s in segments}) == 1:
        reported = segments[0][0]
    return Phonemes(ids, id_langs, kept, reported, tuple(segments), warnings)


def _converter(normalize: bool, espeak_fallback: bool, unsaid: dict[str, list[str]]) -> mix.Converter:
    g2p = {"en": EnglishG2P(espeak_fallback), "zh": MandarinG2P(), "ja": JapaneseG2P()}
    if not normalize:
        return lambda lang, text: g2p[lang](text)
    from core.text.normalize import normalize_text
    from core.text.unsaid import leave_out

    def convert(lang: str, text: str) -> str:
        said, named = leave_out(normalize_text(text, lang), lang)
        unsaid.setdefault(lang, []).extend(named)
        return g2p[lang](said)

    return convert
