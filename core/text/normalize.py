"""Text normalisation before G2P (ours; `phonemize(..., normalize=True)`).

Expands times, dates, money, percentages, units, ordinals, decimals and plain numbers into words
of the segment's language, so that the G2P sees words it can say:

- English: words without hyphens (eng_to_ipa does not know "twenty-one" and would spell it).
- Mandarin: Chinese numerals; years and long digit strings (phone numbers) digit by digit.
- Japanese: OpenJTalk reads numbers itself, so only the notations around them are rewritten
  (`3:30` -> `3時30分`, `$5` -> `5ドル`, `5km` -> `5キロメートル`, ...).

The reference front-end does none of this; it is off by default for parity.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

_NUM = r"\d+(?:\.\d+)?"
# (?!\d), not \b: a Han or kana character after "1,000" is a word character to re, so \b fails there
_SEP_COMMAS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIME = re.compile(r"(?<![\d:：])([01]?\d|2[0-3])[:：]([0-5]\d)(?:[:：]([0-5]\d))?(?!\d)(?:\s*([ap])\.?\s?m\.?(?=\W|$))?",
                   re.IGNORECASE)
_ISO_DATE = re.compile(r"(?<![\d.])(\d{4})[-/.](0?[1-9]|1[0-2])[-/.](0?[1-9]|[12]\d|3[01])(?![\d.])")
_US_DATE = re.compile(r"(?<![\d/])(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])/(\d{4})(?![\d/])")
_PERCENT = re.compile(rf"(-?{_NUM})\s*[%％]")
# a sign only where it is no range dash ("10-5%"); Mandarin says it before 百分之
_SIGNED_RATIO = re.compile(rf"(?:(?<![\dA-Za-z.])([-−]))?({_NUM})\s*([%％‰])")
_PER_MILLE = re.compile(rf"(-?{_NUM})\s*‰")
_DEGREES = re.compile(rf"({_NUM})\s*°(?!\s*[CF]\b)")  # after _TEMPERATURE: "90°" is an angle
_NEGATIVE = re.compile(r"(?<![\dA-Za-z.])[-−](?=\d)")
_TEMPERATURE = re.compile(rf"(-?{_NUM})\s*(?:°\s*([CF])|℃|℉)")

_MONTHS = ("January February March April May June July August September October November "
           "December").split()
_CURRENCY_EN = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
                "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "", ""),
                "￥": ("yen", "yen", "", ""), "₹": ("rupee", "rupees", "", "")}
_UNITS_EN = {"km": "kilometers", "m": "meters", "cm": "centimeters", "mm": "millimeters",
             "kg": "kilograms", "g": "grams", "mg": "milligrams", "lb": "pounds", "lbs": "pounds",
             "oz": "ounces", "mi": "miles", "ft": "feet", "mph": "miles per hour",
             "km/h": "kilometers per hour", "kph": "kilometers per hour", "ml": "milliliters",
             "l": "liters", "gb": "gigabytes", "mb": "megabytes", "kb": "kilobytes", "tb": "terabytes",
             "ghz": "giga hertz", "mhz": "mega hertz", "khz": "kilo hertz", "hz": "hertz",
             "h": "hours", "hr": "hours", "hrs": "hours", "min": "minutes", "s": "seconds",
             "sec": "seconds", "ms": "milliseconds"}
_UNIT_RE = re.compile(rf"({_NUM})\s?({'|'.join(sorted(map(re.escape, _UNITS_EN), key=len, reverse=True))})"
                      r"(?![\w/])", re.IGNORECASE)
_CURRENCY_RE = re.compile(rf"([$£€¥￥₹])\s?({_NUM})(?:\s?(k|m|bn|million|billion|thousand)\b)?",
                          re.IGNORECASE)
# "5€", "20 £" (the symbol after the amount, as in much of Europe) -> "€5", then read as above
_CURRENCY_AFTER = re.compile(rf"(?<![\d.$£€¥￥₹])({_NUM})\s?([$£€¥￥₹])(?!\s?\d)")
# curly and angle quotes are read as the ASCII ones, which no front-end says (they were [UNK])
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‟": '"', "«": '"', "»": '"',
                         "‘": "'", "’": "'", "‚": "'", "‛": "'"})
# "the 1990s", "747s", "her 30s", "'80s": a number made plural. A bare "s" after a number is
# otherwise read as seconds ("wait 30s"), so two-digit decades need one of these words or an '.
_PLURAL_NUMBER = re.compile(r"(?<![\d.,])(\d{3,})s\b")
_DECADE = re.compile(r"(?:\b(?:the|his|her|their|my|your|our|its|early|late|mid)[\s-]+'?|(?<!\w)')(\d0)s\b",
                     re.IGNORECASE)
_HOUR_AMPM = re.compile(r"(?<![\d:.])(1[0-2]|0?[1-9])\s?([ap])\.?m\.?(?=\W|$)", re.IGNORECASE)  # 3pm
_LETTER_HYPHEN_DIGIT = re.compile(r"(?<=[A-Za-z])-(?=\d)")  # mid-2000s, COVID-19, F-16
_ORDINAL_EN = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_INTEGER = re.compile(r"\d+")
_FRACTIONS_EN = {"1/2": "one half", "1/3": "one third", "2/3": "two thirds", "1/4": "one quarter",
                 "3/4": "three quarters"}
_SYMBOLS_EN = [("&", " and "), ("@", " at "), ("+", " plus "), ("=", " equals "), ("#", " number "),
               ("©", " copyright "), ("™", " trademark "), ("®", " registered ")]
_POWERS_EN = {"100": "hundred", "1000": "thousand", "1000000": "million"}  # "100s" -> "hundreds"
# a lone capital A next to a number is the letter ("A4", "4A"); alone, the G2P says the article ə
_LETTER_A = re.compile(r"(?<![A-Za-z])A(?=\d)|(?<=\d)A(?![A-Za-z])")
# "a" / "A" as a word of its own: the article unless what is around it says it is the letter
_WORD_A = re.compile(r"(?<![\w'’.-])([Aa])(?![\w'’-])")
_NEXT_WORD = re.compile(r"\s+([A-Za-z]+)")
_NEXT_MARK = re.compile(r"\s*(?:[,;:!?)]|\.(?!\.))")
_SENTENCE_OPENERS = ".!?:;\"“(\n"
# an article is never followed by these words: "A and B", "A is for apple", "from A to Z"
_NOT_AFTER_ARTICLE = {"and", "or", "is", "was", "are", "were", "to", "through", "vs", "versus", "plus",
                      "minus", "equals"}
_QUOTE_MARKS_EN = re.compile(r"\"|(?<![A-Za-z0-9])'|'(?![A-Za-z])")  # not the apostrophe of "don't"


# ---- English ---------------------------------------------------------------------------------

def _words_en(num: int, **kwargs) -> str:
    from core.text.en import _inflect

    if num >= 10**33:
        return " ".join("zero one two three four five six seven eight nine".split()[int(d)] for d in str(num))
    return _inflect().number_to_words(num, andword="", **kwargs).replace("-", " ").replace(",", "")


def _year_en(y: int) -> str:
    if y % 1000 == 0 or (2000 <= y < 2010):
        return _words_en(y)
    if y % 100 == 0:
        return _words_en(y // 100) + " hundred"
    hi, lo = divmod(y, 100)
    return f"{_words_en(hi)} {'oh ' if lo < 10 else ''}{_words_en(lo)}"


def _cardinal_en(text: str) -> str:
    n = int(text) if len(text) < 40 else None
    if n is None or (len(text) > 1 and text.startswith("0")):
        return " ".join(_words_en(int(d)) for d in text)
    if 1100 <= n <= 2099 and len(text) == 4:
        return _year_en(n)
    return _words_en(n)


def _decimal_en(m: re.Match) -> str:
    return f"{_cardinal_en(m.group(1))} point " + " ".join(_words_en(int(d)) for d in m.group(2))


def _time_en(m: re.Match) -> str:
    h, mins = int(m.group(1)), int(m.group(2))
    out = _words_en(h) + (" o'clock" if mins == 0 and not m.group(4) else
                          "" if mins == 0 else f" oh {_words_en(mins)}" if mins < 10 else f" {_words_en(mins)}")
    if m.group(3):
        out += f" and {_words_en(int(m.group(3)))} seconds"
    return out + (_meridiem(m, m.group(4)) if m.group(4) else "")


def _meridiem(m: re.Match, letter: str) -> str:
    """" ay em" / " pee em" for a matched "a.m." / "pm"; a final "p.m." also ended the sentence,
    so its full stop stays (it is a pause for the model)."""
    words = " ay em" if letter.lower() == "a" else " pee em"
    ends = m.group(0).endswith(".") and not m.string[m.end():].strip(" \t\"'”’)]")
    return words + ("." if ends else "")


def _money_en(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY_EN[m.group(1)]
    amount, scale = m.group(2), m.group(3)
    if scale:
        scale_word = {"k": "thousand", "m": "million", "bn": "billion"}.get(scale.lower(), scale.lower())
        return f"{_number_en(amount)} {scale_word} {many}"
    whole, _, frac = amount.partition(".")
    out = f"{_cardinal_en(whole)} {one if whole == '1' else many}"
    if frac and sub_one and int(frac[:2].ljust(2, '0')):
        cents = int(frac[:2].ljust(2, "0"))
        out += f" {_words_en(cents)} {sub_one if cents == 1 else sub_many}"
    return out


def _plural_en(words: str) -> str:
    """"nineteen ninety" -> "nineteen nineties"."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "es" if last.endswith(("s", "x")) else last + "s"
    return f"{head} {last}" if head else last


def _decade_en(m: re.Match) -> str:
    context = m.group(0)[:m.start(1) - m.start()].replace("-", " ").replace("'", "")
    return context + _plural_en(_cardinal_en(m.group(1)))


def _is_unit(unit: str) -> bool:
    """A lone capital is no unit ("5G", "3D"), except L for litres."""
    return len(unit) > 1 or unit.islower() or unit == "L"


def _unit_sub(table: dict[str, str], sep: str) -> Callable[[re.Match], str]:
    return lambda m: f"{m.group(1)}{sep}{table[m.group(2).lower()]}" if _is_unit(m.group(2)) else m.group(0)


def _spaced(m: re.Match, words: str) -> str:
    """`words` for the number `m`, set apart from letters it touches: "MP3" -> "MP three"."""
    before = m.start() > 0 and m.string[m.start() - 1].isalpha()
    after = m.end() < len(m.string) and m.string[m.end()].isalpha()
    return f"{' ' if before else ''}{words}{' ' if after else ''}"


def _number_en(text: str) -> str:
    return _DECIMAL.sub(_decimal_en, text) if "." in text else _cardinal_en(text)


def _date_en(year: str, month: str, day: str) -> str:
    from core.text.en import _inflect

    ordinal = _inflect().number_to_words(_inflect().ordinal(int(day))).replace("-", " ")
    return f"{_MONTHS[int(month) - 1]} {ordinal}, {_year_en(int(year))}"


def _article_or_letter(m: re.Match) -> str:
    """The letter ("ay") where an article cannot be: before punctuation ("an A.",
    "A, B"), before a word no article precedes ("A and B"), or a capital A inside a sentence
    before a lower-case word ("plan A now", "vitamin A is"). A capital A before a capitalised
    word stays the article: title case ("Once Upon A Time") and all-caps text."""
    text, i = m.string, m.start() - 1
    while i >= 0 and text[i].isspace():  # (no slices of the text: one "a" after another stays linear)
        i -= 1
    word = _NEXT_WORD.match(text, m.end())
    if not word:  # punctuation; an ellipsis or a dash is a hesitation ("a... a dream"), and the end
        # of the text may be the end of a language run ("This is a 猫": "This is a " is one)
        return "ay" if _NEXT_MARK.match(text, m.end()) else m.group(0)
    if word.group(1).lower() in _NOT_AFTER_ARTICLE:
        return "ay"
    opening = i < 0 or text[i] in _SENTENCE_OPENERS
    if m.group(1) == "A" and not opening and word.group(1)[0].islower():
        return "ay"
    return m.group(0)


def normalize_en(text: str) -> str:
    from core.text.en import _inflect

    text = _SEP_COMMAS.sub("", text.translate(_QUOTES))
    text = _ISO_DATE.sub(lambda m: _date_en(m.group(1), m.group(2), m.group(3)), text)
    text = _US_DATE.sub(lambda m: _date_en(m.group(3), m.group(1), m.group(2)), text)
    text = _TIME.sub(_time_en, text)
    text = _HOUR_AMPM.sub(lambda m: _words_en(int(m.group(1))) + _meridiem(m, m.group(2)), text)
    text = _LETTER_HYPHEN_DIGIT.sub(" ", text)
    text = _DECADE.sub(_decade_en, text)
    text = _PLURAL_NUMBER.sub(lambda m: _plural_en(_POWERS_EN.get(m.group(1)) or _cardinal_en(m.group(1))), text)
    text = _TEMPERATURE.sub(lambda m: f"{m.group(1)} degrees "
                            + ("fahrenheit" if m.group(2) == "F" or "℉" in m.group(0) else "celsius"), text)
    text = _DEGREES.sub(r"\1 degrees", text)
    text = _CURRENCY_AFTER.sub(r"\2\1", text)
    text = _CURRENCY_RE.sub(_money_en, text)
    text = _PERCENT.sub(lambda m: f"{m.group(1)} percent", text)
    text = _PER_MILLE.sub(r"\1 per mille", text)
    text = _LETTER_A.sub("ay", text)
    text = _WORD_A.sub(_article_or_letter, text)
    text = _UNIT_RE.sub(_unit_sub(_UNITS_EN, " "), text)
    for frac, words in _FRACTIONS_EN.items():
        text = re.sub(rf"(?<![\d/]){re.escape(frac)}(?![\d/])", words, text)
    text = _ORDINAL_EN.sub(
        lambda m: _inflect().number_to_words(_inflect().ordinal(int(m.group(1)))).replace("-", " ")
        if len(m.group(1)) < 30 else m.group(0), text)
    text = _NEGATIVE.sub("minus ", text)
    text = _DECIMAL.sub(lambda m: _spaced(m, _decimal_en(m)), text)
    text = _INTEGER.sub(lambda m: _spaced(m, _cardinal_en(m.group(0))), text)
    for sym, word in _SYMBOLS_EN:
        text = text.replace(sym, word)
    return _QUOTE_MARKS_EN.sub("", text)


# ---- Mandarin --------------------------------------------------------------------------------

_DIGITS_ZH = "零一二三四五六七八九"
_UNITS_ZH = {"km": "公里", "m": "米", "cm": "厘米", "mm": "毫米", "kg": "公斤", "g": "克", "mg": "毫克",
             "ml": "毫升", "l": "升", "h": "小时", "min": "分钟", "s": "秒", "gb": "GB", "mb": "MB",
             "km/h": "公里每小时", "m/s": "米每秒"}
_CURRENCY_ZH = {"$": "美元", "£": "英镑", "€": "欧元", "¥": "元", "￥": "元", "₹": "卢比"}
_UNIT_RE_ZH = re.compile(rf"({_NUM})\s?({'|'.join(sorted(_UNITS_ZH, key=len, reverse=True))})(?![A-Za-z/])",
                         re.IGNORECASE)
_SCALES_ZH = {"k": "千", "m": "百万", "bn": "十亿"}
_SYMBOLS_ZH = {"©": "版权", "™": "商标", "®": "注册商标"}
_QUOTE_MARKS_CJK = re.compile("[\"'“”‘’„‟«»‚‛]")
# phone-like digit groups: an area code (010-12345678), three groups (138-1234-5678, 400-820-8820)
# or a group of 7+ digits; two short groups are a range or a year span (1990-2000)
_PHONE = re.compile(r"(?<![\d.\-])\d{2,4}(?:-\d{2,8})+(?![\d.\-])")
_LEADING_ZERO = re.compile(r"(?<![\d.])0\d+(?![\d.])")  # 007: digit by digit, as said


def _digits_zh(text: str, yao: bool = False) -> str:
    return "".join(("幺" if yao and d == "1" else _DIGITS_ZH[int(d)]) for d in text)


def _num_zh(text: str) -> str:
    from core.text.zh import _an2cn

    return _an2cn(text)


def _phone_zh(m: re.Match) -> str:
    groups = m.group(0).split("-")
    if m.group(0).startswith("0") or len(groups) > 2 or max(map(len, groups)) >= 7:
        return " ".join(_digits_zh(g, yao=True) for g in groups)
    return m.group(0)


def _money(m: re.Match, words: dict[str, str], scales: dict[str, str], also_said: tuple[str, ...]) -> str:
    """"¥100" -> "100元": the amount, its scale, then the currency word unless the text says it
    next ("￥100元" is not 一百元元)."""
    word = words[m.group(1)]
    scale = scales.get((m.group(3) or "").lower(), m.group(3) or "")
    said = m.string[m.end():].lstrip().startswith((word,) + (also_said if word in ("元", "円") else ()))
    return m.group(2) + scale + ("" if said else word)


def _ratio_zh(m: re.Match) -> str:
    return ("负" if m.group(1) else "") + ("千分之" if m.group(3) == "‰" else "百分之") + m.group(2)


def normalize_zh(text: str) -> str:
    text = _QUOTE_MARKS_CJK.sub("", _SEP_COMMAS.sub("", text))
    text = _ISO_DATE.sub(lambda m: f"{_digits_zh(m.group(1))}年{_num_zh(str(int(m.group(2))))}月"
                         f"{_num_zh(str(int(m.group(3))))}日", text)
    text = re.sub(r"(\d{4})(?=年)", lambda m: _digits_zh(m.group(1)), text)
    text = _TIME.sub(lambda m: f"{_num_zh(str(int(m.group(1))))}点"
                     + (f"{_num_zh(m.group(2).lstrip('0') or '0')}分" if int(m.group(2)) else "")
                     + (f"{_num_zh(str(int(m.group(3))))}秒" if m.group(3) and int(m.group(3)) else ""), text)
    text = _TEMPERATURE.sub(lambda m: f"{m.group(1)}" + ("华氏度" if m.group(2) == "F" or "℉" in m.group(0)
                                                          else "摄氏度"), text)
    text = _DEGREES.sub(r"\1度", text)
    text = _CURRENCY_RE.sub(lambda m: _money(m, _CURRENCY_ZH, _SCALES_ZH, ("块", "圆")),
                            _CURRENCY_AFTER.sub(r"\2\1", text))
    text = _SIGNED_RATIO.sub(_ratio_zh, text)
    text = _UNIT_RE_ZH.sub(_unit_sub(_UNITS_ZH, ""), text)
    text = re.sub(r"(?<!\d)(\d+)\s*[~～]\s*(?=\d)", r"\1到", text)
    text = _PHONE.sub(_phone_zh, text)
    text = re.sub(r"(?<![\d.])\d{7,}(?![\d.])", lambda m: _digits_zh(m.group(0), yao=True), text)
    text = _LEADING_ZERO.sub(lambda m: str(int(m.group(0))) if m.string[m.end():m.end() + 1] in
                             tuple("月日号点时分秒") else _digits_zh(m.group(0)), text)
    text = _NEGATIVE.sub("负", text)
    for sym, word in _SYMBOLS_ZH.items():
        text = text.replace(sym, word)
    return text.replace("%", "").replace("％", "")


# ---- Japanese --------------------------------------------------------------------------------

_UNITS_JA = {"km": "キロメートル", "m": "メートル", "cm": "センチメートル", "mm": "ミリメートル",
             "kg": "キログラム", "g": "グラム", "mg": "ミリグラム", "ml": "ミリリットル", "l": "リットル",
             "gb": "ギガバイト", "mb": "メガバイト", "h": "時間", "min": "分", "s": "秒",
             "km/h": "キロメートル毎時", "m/s": "メートル毎秒"}
_CURRENCY_JA = {"$": "ドル", "£": "ポンド", "€": "ユーロ", "¥": "円", "￥": "円", "₹": "ルピー"}
_UNIT_RE_JA = re.compile(rf"({_NUM})\s?({'|'.join(sorted(_UNITS_JA, key=len, reverse=True))})(?![A-Za-z/])",
                         re.IGNORECASE)
_SCALES_JA = {"k": "千", "m": "百万", "bn": "十億"}
_SYMBOLS_JA = {"©": "コピーライト", "™": "トレードマーク", "®": "登録商標"}


def normalize_ja(text: str) -> str:
    text = _QUOTE_MARKS_CJK.sub("", _SEP_COMMAS.sub("", text))
    text = _ISO_DATE.sub(lambda m: f"{m.group(1)}年{int(m.group(2))}月{int(m.group(3))}日", text)
    text = _TIME.sub(lambda m: f"{int(m.group(1))}時" + (f"{int(m.group(2))}分" if int(m.group(2)) else "")
                     + (f"{int(m.group(3))}秒" if m.group(3) and int(m.group(3)) else ""), text)
    text = _TEMPERATURE.sub(lambda m: m.group(1) + ("華氏" if m.group(2) == "F" else "") + "度", text)
    text = _DEGREES.sub(r"\1度", text)
    text = _CURRENCY_RE.sub(lambda m: _money(m, _CURRENCY_JA, _SCALES_JA, ()), _CURRENCY_AFTER.sub(r"\2\1", text))
    text = _PERCENT.sub(lambda m: m.group(1) + "パーセント", text)
    text = _PER_MILLE.sub(r"\1パーミル", text)
    text = _UNIT_RE_JA.sub(_unit_sub(_UNITS_JA, ""), text)
    for sym, word in _SYMBOLS_JA.items():
        text = text.replace(sym, word)
    return _NEGATIVE.sub("マイナス", text)


_BY_LANGUAGE: dict[str, Callable[[str], str]] = {"en": normalize_en, "zh": normalize_zh, "ja": normalize_ja}

# Full-width letters and digits and half-width katakana (with its punctuation and voiced marks):
# the Mandarin G2P passes them through as [UNK], and the Japanese one reads ﾞ/ﾟ as [UNK]. Only
# these width forms go through NFKC: full-width punctuation (，：；！) is what zh/ja expect, and
# NFKC would turn it into ASCII (`:` and `;` are [UNK] in Mandarin). Runs, so that ｶﾞ composes to ガ.
_WIDTH_FORMS = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff61-\uff9f]+")
_KANJI_DIGITS = "〇一二三四五六七八九"
# 〇 (U+3007) is the ideographic zero; the G2Ps read it as [UNK]. Where it appears, a numeral is
# written digit by digit (二〇二四年).
_ZERO_RUN = re.compile(f"[{_KANJI_DIGITS}]*〇[{_KANJI_DIGITS}]*")


def _width_forms(text: str) -> str:
    return _WIDTH_FORMS.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)


def _ideographic_zero(text: str, language: str) -> str:
    if language == "zh":  # Mandarin reads such numerals digit by digit: 二零二四年
        return text.replace("〇", "零")
    # Japanese and English: Arabic digits, which OpenJTalk reads as a number (2024年: にせんにじゅうよねん)
    return _ZERO_RUN.sub(lambda m: "".join(str(_KANJI_DIGITS.index(c)) for c in m.group(0)), text)


def normalize_text(text: str, language: str) -> str:
    """Expand numbers, dates, times, money, percentages and units of one language's text.

    Args:
        text: one segment's text.
        language: "en" | "zh" | "ja".
    Returns:
        the text with those notations written out in words of that language.
    """
    return _BY_LANGUAGE[language](_ideographic_zero(_width_forms(text), language))
