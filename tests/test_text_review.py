"""Review findings on the Studio's text path (`normalize=True`): user tags, symbols, line breaks,
Chinese/English notations and zh/ja detection. The reference path (`normalize=False`) is the
golden tests' business and must not move."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import TextError
from core.text import LANG_IDS, phonemize, split_sentences
from core.text.mix import split_languages
from core.text.normalize import normalize_text
from tests.test_text_fuzz import _TEXT

EN, ZH, JA = LANG_IDS["en"], LANG_IDS["zh"], LANG_IDS["ja"]


def studio(text, language):
    return phonemize(text, language=language, normalize=True)


# ---- 1. user tags -------------------------------------------------------------------------

@pytest.mark.parametrize("language", ["mix", "auto-mix"])
def test_a_long_tagged_span_keeps_its_language_in_every_piece(language):
    span = "Beijing Shanghai Guangzhou Shenzhen, " * 12  # Latin letters the user wants read in Chinese
    text = f"[ZH]{span}[ZH][EN]Thanks.[EN]"
    chunks = split_sentences(text, language=language)
    assert len(chunks) > 2
    langs = [studio(c, language).langs for c in chunks]
    assert all(set(ls) == {ZH} for ls in langs[:-1]) and langs[-1][-1] == EN
    # nothing lost, in either reading: every piece is closed and reopened
    said = "".join(t for c in chunks for _, t in studio(c, language).segments)
    assert said.replace(" ", "") == (span + "Thanks.").replace(" ", "")
    assert all(phonemize(c, language="mix").ids for c in chunks)


@pytest.mark.parametrize("text, segments", [
    ("[EN]hello world", [("en", "hello world")]),  # unclosed: runs to the end
    ("hello world[ZH]", [("en", "hello world")]),  # a lone closing tag is ignored, the text kept
    ("untagged prefix [EN]tagged part[EN] untagged suffix",
     [("en", "untagged prefix tagged part untagged suffix")]),
    ("[EN]unbalanced [ZH]中文[ZH] inside English[EN]", [("en", "unbalanced "), ("zh", "中文"), ("en", " inside English")]),
    ("[zh]中文[zh]", [("zh", "中文")]),  # lower-case tags
    ("我说 [EN]hello[EN] 你好", [("zh", "我说 "), ("en", "hello"), ("zh", " 你好")]),
    ("[EN]a[ZH]b[EN]c[ZH]", [("en", "a"), ("zh", "b"), ("zh", "c")]),  # crossing: the last opened decides
])
def test_stray_and_unbalanced_tags_drop_nothing(text, segments):
    p = studio(text, "mix")
    assert [(lang, t) for lang, t in p.segments] == segments


def test_mix_mode_without_any_tag_says_how_to_tag():
    with pytest.raises(TextError) as err:
        studio("no tags at all in mix mode", "mix")
    assert "[EN]..[EN]" in err.value.user_message()


def test_auto_mix_reads_user_tags_the_same_way():
    assert studio("[zh]中文[zh] hello", "auto-mix").segments == (("zh", "中文"), ("en", " hello"))
    assert studio("[EN]hi[EN] [ZH]你好", "auto-mix").segments == (("en", "hi "), ("zh", "你好"))
    # a lone tag in auto-mix is no tagging: it is left out, the text detected by script
    assert studio("hello [JA] world 你好", "auto-mix").segments == (("en", "hello  world "), ("zh", "你好"))


def test_an_unknown_tag_is_named_in_the_error():
    with pytest.raises(TextError, match=r"\[FR\]") as err:
        studio("[FR]bonjour[FR] [EN]hello[EN]", "mix")
    assert isinstance(err.value, ValueError) and "[EN]" in err.value.user_message()
    # the splitter does not raise: phonemize names the tag for that sentence
    assert split_sentences("[FR]bonjour[FR] [EN]hello[EN]", language="mix")


def test_reference_tag_reading_is_unchanged():
    # the reference drops text outside tags and never-closed spans; normalize=False keeps that
    assert phonemize("untagged [EN]tagged part[EN] untagged", language="mix").segments == (("en", "tagged part"),)
    with pytest.raises(TextError):
        phonemize("[EN]hello", language="mix")


# ---- 2. symbols ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, language, expect", [
    ("5€", "en", "five euros"), ("€5", "en", "five euros"), ("5 € and 10€", "en", "five euros and ten euros"),
    ("£5", "en", "five pounds"), ("¥500", "en", "five hundred yen"), ("5‰", "en", "five per mille"),
    ("© 2024 Acme", "en", "copyright"), ("Brand™", "en", "Brand trademark"), ("Acme®", "en", "Acme registered"),
    ("90°", "en", "ninety degrees"), ("30°C", "en", "thirty degrees celsius"),
    ("“Hi,” she said.", "en", "Hi, she said."), ("don’t", "en", "don't"),
    ("5€", "zh", "5欧元"), ("5‰", "zh", "千分之5"), ("©2024", "zh", "版权"), ("他说“你好”", "zh", "他说你好"),
    ("5€", "ja", "5ユーロ"), ("5‰", "ja", "5パーミル"), ("商標®", "ja", "登録商標"),
])
def test_symbols_are_read_in_the_sentence_language(text, language, expect):
    assert expect in normalize_text(text, language)
    p = studio(text, language)
    assert 0 not in p.ids and not p.warnings


@pytest.mark.parametrize("text, language", [
    ("“Hi,” she said ‘twice’.", "en"), ("他说“你好”（真的）《书》。", "zh"), ("「こんにちは」と『本』。", "ja"),
])
def test_quotes_and_brackets_are_not_unknown_ids(text, language):
    p = studio(text, language)
    assert 0 not in p.ids and not p.warnings


def test_characters_without_a_reading_are_left_out_with_a_warning():
    p = studio("I ❤ NY ★ and/or so", "en")
    assert 0 not in p.ids and p.warnings and "★" in p.warnings[0] and "❤" in p.warnings[0]
    assert "ənd_əɹ" in p.phonemes  # and/or: the slash goes, the words stay apart
    zh = studio("我喜欢★。", "zh")
    assert 0 not in zh.ids and "★" in zh.warnings[0] and "Chinese" in zh.warnings[0]
    assert studio("Plain words.", "en").warnings == ()
    assert phonemize("I ❤ NY ★", language="en").warnings == ()  # the reference path says nothing
    with pytest.raises(TextError, match="★"):
        studio("★", "zh")
    many = studio("Some words " + "".join(chr(0x2600 + i) for i in range(40)), "en").warnings[0]
    assert " more (no reading in English)" in many and len(many) < 120  # one readable line, not forty symbols


# ---- 3. line breaks -----------------------------------------------------------------------

@pytest.mark.parametrize("text, punctuated, language", [
    ("Hello there\nHow are you", "Hello there.\nHow are you", "en"),
    ("Hello there\n\nHow are you", "Hello there.\n\nHow are you", "en"),
    ("Hello there\r\nHow are you", "Hello there. How are you", "en"),
    ("你好\n再见", "你好。\n再见", "zh"),
    ("こんにちは\n\nさようなら", "こんにちは。さようなら", "ja"),
    ("Hello there\n你好", "Hello there.\n你好", "auto-mix"),
])
def test_a_line_break_is_a_pause(text, punctuated, language):
    assert studio(text, language).ids == studio(punctuated, language).ids


def test_line_breaks_in_split_chunks():
    assert split_sentences("Hello there\nHow are you") == ["Hello there. How are you"]
    assert split_sentences("a long line that\ngoes on here.") == ["a long line that, goes on here."]
    assert split_sentences("Hello.\nHow are you") == ["Hello. How are you"]


# ---- 4. notations ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, language, expect", [
    ("代号007", "zh", "代号零零七"),
    ("电话010-12345678", "zh", "电话零幺零 幺二三四五六七八"),
    ("138-1234-5678", "zh", "幺三八 幺二三四 五六七八"),
    ("1990-2000年", "zh", "1990-二零零零年"),  # a year span is no phone number
    ("01月05日", "zh", "1月5日"),
    ("下降-5%", "zh", "下降负百分之5"), ("增长12%", "zh", "增长百分之12"),
    ("时速50km/h", "zh", "时速50公里每小时"), ("時速50km/h", "ja", "時速50キロメートル毎時"),
    ("￥100元", "zh", "100元"), ("¥100元", "zh", "100元"), ("¥100块", "zh", "100块"), ("￥100円", "ja", "100円"),
    ("100s of people", "en", "hundreds of people"), ("the 1900s", "en", "the nineteen hundreds"),
    ("A4 paper, room 4A", "en", "ay four paper, room four ay"),
])
def test_notations(text, language, expect):
    assert normalize_text(text, language) == expect


def test_a4_is_the_letter_not_the_article():
    assert studio("A4 paper", "en").phonemes.startswith("eɪ_fɔɹ")


@pytest.mark.parametrize("text, expect", [
    ("We need Plan A now.", "We need Plan ay now."), ("Vitamin A is good.", "Vitamin ay is good."),
    ("I got an A.", "I got an ay."), ("A. Smith wrote it.", "ay. Smith wrote it."),
    ("A and B.", "ay and B."), ("from A to Z", "from ay to Z"), ("Section A, part two.", "Section ay, part two."),
    # the article stays: sentence start, title case, all caps, hesitation, end of a language run
    ("A cat sat. A dog ran.", "A cat sat. A dog ran."), ("Once Upon A Time", "Once Upon A Time"),
    ("I HAVE A DOG.", "I HAVE A DOG."), ("It was a... a dream.", "It was a... a dream."),
    ("This is a ", "This is a "), ("Take a look.", "Take a look."), ("A-list", "A-list"),
])
def test_a_word_is_the_letter_only_where_no_article_can_be(text, expect):
    assert normalize_text(text, "en") == expect


def test_plan_a_is_said_as_the_letter():
    assert "plæn_eɪ_naʊ" in studio("We need Plan A now.", "en").phonemes
    assert studio("This is a 猫。", "auto-mix").phonemes.startswith("ðɪs_ɪz_ə")


# ---- 5. zh/ja detection -----------------------------------------------------------------------

@pytest.mark.parametrize("text, runs", [
    ("我喜欢ラーメン", [("zh", "我喜欢"), ("ja", "ラーメン")]),  # a katakana word in Chinese
    ("我喜欢ラーメン和寿司。", [("zh", "我喜欢"), ("ja", "ラーメン"), ("zh", "和寿司。")]),
    ("東京タワー", [("ja", "東京タワー")]),  # kanji Chinese does not write: Japanese as a whole
    ("東京駅。ここで待ちます。", [("ja", "東京駅。ここで待ちます。")]),  # a kanji clause in Japanese text
    ("我爱你。愛してる。", [("zh", "我爱你。"), ("ja", "愛してる。")]),  # 爱 is no Japanese character
    ("東京駅 is big", [("ja", "東京駅 "), ("en", "is big")]),  # 駅: a Japanese-only form
])
def test_clause_level_zh_ja(text, runs):
    assert split_languages(text) == runs


def test_katakana_in_chinese_is_said_in_japanese():
    p = studio("我喜欢ラーメン", "auto-mix")
    assert [lang for lang, _ in p.segments] == ["zh", "ja"]
    assert p.langs[0] == ZH and p.langs[-1] == JA


# ---- the Studio path never crashes --------------------------------------------------------

@settings(max_examples=3000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=_TEXT, language=st.sampled_from(["auto", "auto-mix", "en", "zh", "ja", "mix"]))
def test_studio_path_never_crashes(text, language):
    """Random text through the Studio's reading (tags, symbols, line breaks, warnings): a
    well-formed result or a TextError, and the warnings are strings."""
    try:
        p = studio(text, language)
    except TextError:
        return
    assert len(p.ids) == len(p.langs) > 0 and all(0 <= i < 70 for i in p.ids)
    assert all(isinstance(w, str) and w for w in p.warnings)
    for chunk in split_sentences(text, language=language):
        try:
            studio(chunk, language)
        except TextError:
            pass


@pytest.mark.parametrize("text, language, segments", [
    ("[ZH]你好[ZH]", "en", (("zh", "你好"),)),  # was spelled in English and then said again in Chinese
    ("[zh]你好", "zh", (("zh", "你好"),)),  # was "[zh]" read out as letters
    ("[EN]hello[EN]", "en", (("en", "hello"),)), ("[EN]hello", "auto", (("en", "hello"),)),
    ("Hi [ZH]你好[ZH] there", "en", (("en", "Hi "), ("zh", "你好"), ("en", " there"))),
])
def test_tags_are_read_when_a_language_is_picked(text, language, segments):
    assert studio(text, language).segments == segments


def test_tags_split_into_sentences_keep_their_language_when_a_language_is_picked():
    chunks = split_sentences("[ZH]" + "今天我很好。" * 12 + "[ZH] Bye now.", "en", max_chars=40)
    assert len(chunks) > 2
    said = [studio(c, "en").segments for c in chunks]
    assert all(lang == "zh" for segs in said[:-1] for lang, _ in segs)  # no Chinese spelled as English
    assert said[-1][-1] == ("en", "Bye now.")
