"""Mandarin G2P, reference-exact (`chinese_to_ipa`).

Pipeline (golden README, "text" / Mandarin): numbers -> cn2an; `、；：` -> `，`; jieba words ->
pypinyin bopomofo (tone 1 marked `ˉ`); ASCII Latin letters spelled as bopomofo; bopomofo -> IPA
table; glide and apical-vowel rewrites. The tables below are the reference's data, applied in
the same order with the same (sometimes case-insensitive) regexes, because their order matters.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata

log = logging.getLogger(__name__)

# Letter -> bopomofo spelling, case-insensitive (so `K` U+212A and `ſ` U+017F match too, as in
# the reference).
_LATIN = [(re.compile(k, re.IGNORECASE), v) for k, v in (line.split() for line in """
a ㄟˉ
b ㄅㄧˋ
c ㄙㄧˉ
d ㄉㄧˋ
e ㄧˋ
f ㄝˊㄈㄨˋ
g ㄐㄧˋ
h ㄝˇㄑㄩˋ
i ㄞˋ
j ㄐㄟˋ
k ㄎㄟˋ
l ㄝˊㄛˋ
m ㄝˊㄇㄨˋ
n ㄣˉ
o ㄡˉ
p ㄆㄧˉ
q ㄎㄧㄡˉ
r ㄚˋ
s ㄝˊㄙˋ
t ㄊㄧˋ
u ㄧㄡˉ
v ㄨㄧˉ
w ㄉㄚˋㄅㄨˋㄌㄧㄡˋ
x ㄝˉㄎㄨˋㄙˋ
y ㄨㄞˋ
z ㄗㄟˋ""".strip().splitlines())]

# Bopomofo (and tone marks, punctuation) -> IPA, in order; `∅` as target means "delete".
_BOPOMOFO_IPA = [(re.compile(k), "" if v == "∅" else v) for k, v in (line.split() for line in """
ㄅㄛ p⁼wo
ㄆㄛ pʰwo
ㄇㄛ mwo
ㄈㄛ fwo
ㄅ p⁼
ㄆ pʰ
ㄇ m
ㄈ f
ㄉ t⁼
ㄊ tʰ
ㄋ n
ㄌ l
ㄍ k⁼
ㄎ kʰ
ㄏ x
ㄐ tʃ⁼
ㄑ tʃʰ
ㄒ ʃ
ㄓ ts`⁼
ㄔ ts`ʰ
ㄕ s`
ㄖ ɹ`
ㄗ ts⁼
ㄘ tsʰ
ㄙ s
ㄚ a
ㄛ o
ㄜ ə
ㄝ ɛ
ㄞ aɪ
ㄟ eɪ
ㄠ ɑʊ
ㄡ oʊ
ㄧㄢ jɛn
ㄩㄢ ɥæn
ㄢ an
ㄧㄣ in
ㄩㄣ ɥn
ㄣ ən
ㄤ ɑŋ
ㄧㄥ iŋ
ㄨㄥ ʊŋ
ㄩㄥ jʊŋ
ㄥ əŋ
ㄦ əɻ
ㄧ i
ㄨ u
ㄩ ɥ
ˉ →
ˊ ↑
ˇ ↓↑
ˋ ↓
˙ ∅
， ,
。 .
！ !
？ ?
— -""".strip().splitlines())]

_NUMBER = re.compile(r"\d+(?:\.?\d+)?")
_HAN = re.compile("[\u4e00-\u9fff]")
_TONE1 = re.compile(r"([\u3105-\u3129])$")
_APICAL_RETROFLEX = re.compile(r"([sɹ]`[⁼ʰ]?)([→↓↑ ]+|$)")
_APICAL_DENTAL = re.compile(r"([s][⁼ʰ]?)([→↓↑ ]+|$)")
_DIGITS_ZH = "零一二三四五六七八九"
_JIEBA_LOCK = threading.Lock()


def _an2cn(number: str) -> str:
    import cn2an

    whole, dot, frac = number.partition(".")
    # cn2an reads only the first 16 decimals (the reference's reading) and warns on each such
    # number; cutting them here gives the same reading without the console noise.
    try:
        return cn2an.an2cn(whole + dot + frac[:16])
    except Exception:  # > 16 digits or non-ASCII/full-width digits: the reference crashes here
        return "".join(_DIGITS_ZH[unicodedata.digit(c)] if c.isdigit() else "点" for c in number)


def numbers_to_chinese(text: str) -> str:
    """Every `\\d+(\\.\\d+)?` -> cn2an reading; each replaces its first occurrence, as the reference."""
    for number in _NUMBER.findall(text):
        text = text.replace(number, _an2cn(number), 1)
    return text


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _to_bopomofo(text: str) -> str:
    from pypinyin import Style, lazy_pinyin

    text = text.replace("、", "，").replace("；", "，").replace("：", "，")
    jieba = _jieba()
    with _JIEBA_LOCK:  # jieba's tokenizer keeps per-call state; not safe across threads
        words = jieba.lcut(text, cut_all=False)
    out = ""
    for word in words:
        if not _HAN.search(word):
            out += word
            continue
        syllables = [_TONE1.sub(r"\1ˉ", s) for s in lazy_pinyin(word, Style.BOPOMOFO)]
        if out:
            out += " "
        out += "".join(syllables)
    return out


def chinese_to_ipa(text: str) -> str:
    """Mandarin text -> IPA string in the checkpoint's symbols (reference `chinese_to_ipa`)."""
    text = _to_bopomofo(numbers_to_chinese(text))
    for regex, spelled in _LATIN:
        text = regex.sub(spelled, text)
    for regex, ipa in _BOPOMOFO_IPA:
        text = regex.sub(ipa, text)
    text = re.sub("i([aoe])", r"j\1", text)
    text = re.sub("u([aoəe])", r"w\1", text)
    text = _APICAL_RETROFLEX.sub(r"\1ɹ`\2", text).replace("ɻ", "ɹ`")
    return _APICAL_DENTAL.sub(r"\1ɹ\2", text)


class MandarinG2P:
    """Mandarin front-end; `__call__(text) -> IPA str`."""

    language = "zh"

    def __call__(self, text: str) -> str:
        return chinese_to_ipa(text)
