"""Word lists for `core.convert.parse_instruction` (English, Chinese, Japanese).

Data only. A phrase maps to one of: a concept (what to change, at a medium amount), a degree
modifier (scale: 0.5 small, 1 medium, 2 large), a direction (+1/-1, used with a dimension word or a
number), a dimension word (speed / pitch / volume / formant) or a filler (understood, no effect).
Matching is longest-first, so "大声" beats "大" and "a little bit" beats "a".
"""
from __future__ import annotations

import re

# concept -> medium amount. speed/formant multiply (raised to the modifier scale), semitones/gain_db
# add (times the scale), effect amounts are 0.5 * scale. dim/sign tell numbers which way to go.
CONCEPTS: dict[str, dict] = {
    "faster": {"dim": "speed", "sign": 1, "speed": 1.25},
    "slower": {"dim": "speed", "sign": -1, "speed": 0.8},
    "higher": {"dim": "pitch", "sign": 1, "semitones": 3.0},
    "lower": {"dim": "pitch", "sign": -1, "semitones": -3.0},
    "deeper": {"dim": "pitch", "sign": -1, "semitones": -2.0, "formant": 0.92},
    "female": {"dim": "pitch", "sign": 1, "semitones": 4.0, "formant": 1.12},
    "male": {"dim": "pitch", "sign": -1, "semitones": -4.0, "formant": 0.88},
    "child": {"dim": "pitch", "sign": 1, "semitones": 6.0, "formant": 1.18},
    "brighter": {"dim": "formant", "sign": 1, "formant": 1.08},
    "darker": {"dim": "formant", "sign": -1, "formant": 0.93},
    "louder": {"dim": "volume", "sign": 1, "gain_db": 4.0},
    "quieter": {"dim": "volume", "sign": -1, "gain_db": -4.0},
    "reverb": {"effect": "reverb"},
    "echo": {"effect": "echo"},
    "telephone": {"effect": "telephone"},
    "whisper": {"effect": "whisper"},
    "robot": {"effect": "robot"},
}

DIMENSION_DIRECTION = {
    ("speed", 1): "faster", ("speed", -1): "slower",
    ("pitch", 1): "higher", ("pitch", -1): "lower",
    ("volume", 1): "louder", ("volume", -1): "quieter",
    ("formant", 1): "brighter", ("formant", -1): "darker",
}

_WORDS = {
    "faster": "faster fast quicker quick quickly rapid rapidly speedier hurry hurried speed_up sped_up "
              "快 加快 加速 快速 急促 "
              "速く 早く はやく 速め 早め 早口 速い 早い スピードアップ 急いで",
    "slower": "slower slow slowly leisurely slow_down slowed_down "
              "慢 放慢 减速 缓慢 慢慢 慢速 "
              "ゆっくり 遅く おそく 遅め 遅い スロー のんびり",
    "higher": "higher high squeaky squeakier high-pitched higher-pitched "
              "高 尖 尖锐 高音 高亢 尖细 "
              "高く 高め 高い 甲高く 甲高い",
    "lower": "lower low low-pitched lower-pitched 低 低く 低め 低い",
    "deeper": "deeper deep bassier bass baritone gruff gruffer "
              "低沉 深沉 沉 浑厚 厚重 磁性 "
              "太く 太い 渋く 渋い 低音 重低音 重く",
    "female": "female feminine woman woman's girl girly lady "
              "女声 女生 女性 女人 女孩 女的 女の子",
    "male": "male masculine man man's guy manly giant monster "
            "男声 男生 男性 男人 男的 大叔 巨人 怪物 おじさん",
    "child": "child childlike kid kid's baby chipmunk cartoon "
             "小孩 童声 孩子 儿童 萝莉 小朋友 子供 子ども こども 幼く 幼い",
    "brighter": "brighter bright thinner thin smaller 明亮 清脆 亮 明るく 明るい",
    "darker": "darker dark fuller warmer warm bigger 暗 温暖 饱满 暗く 暗い",
    "louder": "louder loud boost boosted amplify amplified shout shouting yelling turn_it_up turn_up "
              "大 大声 响 响亮 洪亮 放大 "
              "大きく 大きい 大声 大きな声",
    "quieter": "quieter quiet softer soft softly quietly gentler turn_it_down turn_down "
               "小 小声 轻 安静 柔和 温柔 "
               "小さく 小さい 小声 静かに 静か 控えめ",
    "reverb": "reverb reverberation reverberant reverby hall cathedral church cave spacious ambience room "
              "big_room large_room concert_hall "
              "混响 回响 大厅 教堂 空旷 礼堂 山洞 房间 浴室 "
              "リバーブ 残響 響き 響く ホール 教会 お風呂 風呂場",
    "echo": "echo echoes echoey echoing delay canyon 回声 回音 延迟 山谷 エコー やまびこ 山びこ こだま ディレイ",
    "telephone": "phone telephone radio walkie-talkie intercom lo-fi lofi phone_call walkie_talkie "
                 "电话 打电话 对讲机 收音机 广播 电台 "
                 "電話 電話越し 無線 ラジオ トランシーバー",
    "whisper": "whisper whispering whispered whispery breathy breathier airy hushed "
               "耳语 悄悄话 悄悄 气声 气音 低语 私语 "
               "ささやき 囁き ささやく 囁く ささやいて 囁いて ひそひそ ヒソヒソ ウィスパー",
    "robot": "robot robotic robotically metallic dalek machine android cyborg vocoder "
             "机器人 机械 电子音 机器 ロボット 機械 機械的 ロボ",
}


def _split(spec: str) -> list[str]:
    """'a b_c d' -> ['a', 'b c', 'd']: whitespace separates entries, '_' joins multi-word phrases."""
    return [w.replace("_", " ") for w in spec.split()]


CONCEPT_WORDS: dict[str, str] = {w: c for c, spec in _WORDS.items() for w in _split(spec)}

_SMALL, _MEDIUM, _LARGE = 0.5, 1.0, 2.0
MODIFIERS: dict[str, float] = {}
for _scale, _spec in (
    (_SMALL, "slightly somewhat little bit lightly mildly subtle subtly a_bit a_little a_little_bit "
             "a_tiny_bit a_tad a_touch a_touch_of a_hint_of a_bit_more a_little_more kind_of sort_of "
             "一点 一点点 一点儿 一些 有点 有点儿 有些 稍微 稍稍 稍 略微 略 点 些 微微 轻微 少许 "
             "少し すこし ちょっと ちょっとだけ やや 少々 わずかに 若干 軽く ほんの少し 少しだけ"),
    (_MEDIUM, "more some rather 更 再 更加 还 比较 もっと より 更に さらに"),
    (1.5, "quite pretty noticeably 相当 明显 結構 けっこう"),
    (_LARGE, "much very way really extremely super far significantly heavily strongly totally massively "
             "hugely seriously lots heavy strong intense extra a_lot a_lot_of lots_of much_more way_more "
             "tons_of 很 非常 特别 超级 超 极其 极 十分 得多 大大 太 好多 很多 许多 多多 多 巨 "
             "とても すごく かなり 非常に めっちゃ めちゃくちゃ 大幅に ずっと もっともっと 思いっきり 思い切り "
             "強く 強め たっぷり"),
):
    MODIFIERS.update({w: _scale for w in _split(_spec)})

DIRECTIONS: dict[str, int] = {}
for _sign, _spec in (
    (1, "up raise raised increase increased 升高 提高 调高 增加 加大 升 提升 增大 拉高 上调 上げ 上げて 上げる アップ"),
    (-1, "down reduce reduced decrease decreased drop cut 降低 调低 减少 减小 降 下调 拉低 减 下げ 下げて 下げる ダウン"),
):
    DIRECTIONS.update({w: _sign for w in _split(_spec)})

# "no reverb", "不要混响", "リバーブなし": cancels the nearest concept
NEGATIONS: list[str] = _split("no not without remove without_any none 不要 不 别 去掉 去除 没有 无 なし なしで 無し いらない 消して")

DIMENSIONS: dict[str, str] = {}
for _dim, _spec in (
    ("speed", "speed pace tempo rate speaking_rate speech_rate 语速 速度 节奏 速率 スピード 速さ テンポ 話す速さ"),
    ("pitch", "pitch key 音调 音高 声调 音程 ピッチ キー 声の高さ"),
    ("volume", "volume loudness level gain 音量 声量 响度 ボリューム"),
    ("formant", "formant formants timbre 共振峰 フォルマント 声色 音色"),
):
    DIMENSIONS.update({w: _dim for w in _split(_spec)})

FILLERS: list[str] = _split(
    "a an the it its it's this that make makes made sound sounds sounding like as if please add adding "
    "with by to of in on at for from over through inside me my your you i we be is are was effect "
    "effects apply give put use just also style mode filter let speak speaking talk talking read say "
    "voice voiced speech audio tone than too so set turn go get want would could can should call "
    "version bring into out like_a as_if "
    "的 得 地 了 让 把 给 使 请 要 想 一下 说话 声音 嗓音 嗓子 讲话 说 讲 加 加上 添加 加入 带 带上 "
    "效果 像 像是 好像 一样 似的 在 里 中 用 变 变得 变成 听起来 感觉 模式 并且 而且 同时 和 跟 还有 "
    "然后 也 语气 风格 人声 它 我 你 来 去 那样 这样 般 有 是 个 那种 一种 吧 啊 呢 调 声 音 "
    "を に で の が は と も て な して する ください 下さい みたいに みたいな みたい のように ように "
    "ような っぽく っぽい 話して 話す 話し しゃべって 喋って 読んで 感じ 感じで 追加 追加して 加えて "
    "つけて 付けて かけて 効果 にして 風に 風 です ます お願い お願いします 音声 雰囲気 だけ から "
    "よ ね なる なって 聞こえる 声で"
)

# English number words and Chinese numerals that may stand in for digits before a unit.
NUMERALS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "twelve": 12,
            "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}

_NUM = (r"(?P<n>[+-]?\d+(?:\.\d+)?|[一二两三四五六七八九十]|"
        r"(?<![a-z])(?:an?|one|two|three|four|five|six|seven|eight|nine|ten|twelve)(?![a-z]))")
_CJK_NUM = "0-9一二两三四五六七八九十个個"


def _re(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.I)


# (pattern, dimension, fixed value when the pattern has no number). Earlier patterns win overlaps.
NUMBER_PATTERNS: list[tuple[re.Pattern, str, float | None]] = [
    (_re(r"(?<![a-z])(?:half|1/2)[\s-]*(?:the\s+)?speed(?![a-z])|half\s+as\s+fast|半速|半分の速さ"), "speed", 0.5),
    (_re(r"(?<![a-z])double[\s-]*speed(?![a-z])|twice\s+as\s+(?:fast|quick(?:ly)?)(?![a-z])"), "speed", 2.0),
    (_re(_NUM + r"\s*(?:x|×|倍速?|times)(?![a-z])"), "speed", None),
    (_re(r"(?<![a-z0-9])[x×]\s*(?P<n>\d+(?:\.\d+)?)"), "speed", None),
    (_re(rf"(?<![{_CJK_NUM}])倍速"), "speed", 2.0),
    (_re(_NUM + r"\s*(?:semi-?tones?|half[\s-]*steps?|st(?![a-z])|(?:个|個)?半音)"), "pitch", None),
    (_re(rf"(?<![{_CJK_NUM}])半音"), "pitch", 1.0),
    (_re(r"(?<![a-z])half\s+an?\s+octave(?![a-z])"), "pitch", 6.0),
    (_re(_NUM + r"\s*(?:octaves?(?![a-z])|(?:个|個)?八度|オクターブ)"), "octave", None),
    (_re(r"(?<![a-z0-9])octave(?![a-z])|(?<![0-9一二两三四五六七八九十个個])八度|オクターブ"), "octave", 1.0),
    (_re(r"(?P<n>[+-]?\d+(?:\.\d+)?)\s*(?:db|decibels?|分贝|デシベル)(?![a-z])"), "volume", None),
    (_re(r"(?P<n>\d+(?:\.\d+)?)\s*(?:%|％|percent(?![a-z]))"), "percent", None),
]
