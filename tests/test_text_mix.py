"""auto-mix: untagged code-switched text is split into same-language runs and tagged."""
import json

import pytest

from core.text import LANG_IDS, phonemize
from core.text.mix import split_languages

EN, ZH, JA = LANG_IDS["en"], LANG_IDS["zh"], LANG_IDS["ja"]


def _runs(langs):
    out = []
    for lid in langs:
        if not out or out[-1] != lid:
            out.append(lid)
    return out


def test_zh_en_ja_sentence():
    text = "我今天去了 Starbucks and bought コーヒー"
    p = phonemize(text, language="auto-mix")
    assert p.language == "mix"
    assert [lang for lang, _ in p.segments] == ["zh", "en", "ja"]
    assert _runs(p.langs) == [ZH, EN, JA]
    # each run is exactly what the user would get by tagging it by hand
    tagged = phonemize("[ZH]我今天去了 [ZH][EN]Starbucks and bought [EN][JA]コーヒー[JA]", language="mix")
    assert (p.ids, p.langs) == (tagged.ids, tagged.langs)
    assert "ˈstɑɹˌbəks" in p.phonemes and "ko↑oçi↓i" in p.phonemes


@pytest.mark.parametrize("text, runs", [
    ("我用iPhone给你发了一条微信。", ["zh", "en", "zh"]),
    ("The word 你好 means hello.", ["en", "zh", "en"]),
    ("ラーメン and sushi", ["ja", "en"]),
    ("日本語とEnglishを話します。", ["ja", "en", "ja"]),
    ("I have 3 苹果", ["en", "zh"]),  # digits stay with the run before them
    ("東京タワーに行った。Then we had dinner.", ["ja", "en"]),  # Han next to kana is Japanese
    ("我爱你。I love you.", ["zh", "en"]),
])
def test_runs(text, runs):
    p = phonemize(text, language="auto-mix")
    assert [lang for lang, _ in p.segments] == runs
    assert _runs(p.langs) == [LANG_IDS[r] for r in runs]
    assert "".join(t for _, t in p.segments).replace(" ", "") == text.replace(" ", "")


def test_single_language_text(golden):
    """On one-language text auto-mix says it in the language its letters show (alphabetic ->
    English, kana -> Japanese), exactly as that fixed language would; Han-only and letterless
    text gives exactly what auto gives (including langid's choice)."""
    texts = [json.loads(line)["text"] for line in (golden / "text" / "cases.jsonl").read_text().splitlines()]
    texts += ["東京", "寿司", "123", "3.14", "カラオケ", "Merci beaucoup."]
    checked = 0
    for text in texts:
        found = {lang for lang, _ in split_languages(text)}
        if "[" in text or len(found) > 1:
            continue
        same_as = found.pop() if found in ({"en"}, {"ja"}) else "auto"
        try:
            expected = phonemize(text, language=same_as)
        except ValueError:
            with pytest.raises(ValueError):
                phonemize(text, language="auto-mix")
            continue
        mixed = phonemize(text, language="auto-mix")
        assert (mixed.ids, mixed.langs, mixed.language) == (expected.ids, expected.langs, expected.language), text
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("text, language", [
    ("Don’t stop — keep going…", "en"), ("Love you ❤️", "en"), ("Happy birthday 🎂🎈", "en"),
    ("• item one • item two", "en"), ("© 2024 Acme Inc.", "en"), ("Beijing", "en"), ("ok 👍", "en"),
    ("→ next step", "en"), ("Price: 5€ ™", "en"), ("カラオケ🎤", "ja"), ("ok カラオケ", "mix"),
])
def test_letters_decide_over_langid(text, language):
    # langid alone picks zh or ja for the Latin ones, which would be spelled letter by letter
    p = phonemize(text, language="auto-mix", normalize=True)
    assert p.language == language
    if language != "mix":
        assert set(p.langs) == {LANG_IDS[language]}
        assert p.ids == phonemize(text, language=language, normalize=True).ids


def test_user_tags_are_honoured_in_auto_mix():
    text = "[EN]Hello everyone.[EN][ZH]大家好。[ZH]"
    assert phonemize(text, language="auto-mix").ids == phonemize(text, language="mix").ids


def test_stray_tags_cannot_pair_with_ours():
    p = phonemize("hello [JA] world 你好", language="auto-mix")
    assert [lang for lang, _ in p.segments] == ["en", "zh"]
    assert "wəɹɫd" in p.phonemes


def test_accent_applies_to_auto_mix():
    p = phonemize("我今天去了 Starbucks and bought コーヒー", language="auto-mix", accent="en")
    assert set(p.langs) == {EN}


def test_mixed_normalisation_per_run():
    p = phonemize("我花了12%的钱 on 3 apples", language="auto-mix", normalize=True)
    assert [lang for lang, _ in p.segments] == ["zh", "en"]
    assert 0 not in p.ids and "θɹi" in p.phonemes
