"""Text front-end speed: sentences/s per language, load time apart, and a 10k-character text.

    .venv/bin/python bench/bench_text.py [--golden ../shared/golden] [--repeat 3]

Sentences are the golden cases of each language (the reference's own test inputs). "cold" is the
first pass after loading (per-word caches empty); "warm" is the best later pass (eng_to_ipa word
results memoised, as in a long session). Loading (langid, CMU dictionary, jieba, OpenJTalk) is
timed apart, once per process.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("bench_text")


def _load_sentences(golden: Path) -> dict[str, list[str]]:
    by_lang: dict[str, list[str]] = {}
    for line in (golden / "text" / "cases.jsonl").read_text().splitlines():
        case = json.loads(line)
        if "error" not in case:
            by_lang.setdefault(case["language"], []).append(case["text"])
    by_lang["auto-mix"] = [t for lang in ("en", "zh", "ja") for t in by_lang[lang][:20]] + [
        "我今天去了 Starbucks and bought コーヒー", "我用iPhone给你发了一条微信。",
        "The word 你好 means hello.", "ラーメン and sushi", "日本語とEnglishを話します。"]
    return by_lang


def _pass(phonemize, texts: list[str], language: str, **kw) -> tuple[float, int]:
    start = time.perf_counter()
    n_ids = sum(len(phonemize(t, language=language, **kw).ids) for t in texts)
    return time.perf_counter() - start, n_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--golden", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "golden")
    ap.add_argument("--repeat", type=int, default=3, help="warm passes per language")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    t0 = time.perf_counter()
    from core.text import phonemize, warmup
    from core.text.en import _word_to_ipa

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    warmup()
    t_load = time.perf_counter() - t0
    log.info("import %.2f s, load models/dictionaries %.2f s (once per process)", t_import, t_load)

    sentences = _load_sentences(args.golden)
    log.info("%-9s %6s %12s %12s %10s %9s", "language", "n", "cold sent/s", "warm sent/s", "ms/sent", "ids/s")
    for language in ("en", "zh", "ja", "mix", "auto", "auto-mix"):
        texts = sentences[language]
        _word_to_ipa.cache_clear()
        cold, _ = _pass(phonemize, texts, language)
        warm, n_ids = min(_pass(phonemize, texts, language) for _ in range(args.repeat))
        log.info("%-9s %6d %12.1f %12.1f %10.2f %9.0f", language, len(texts), len(texts) / cold,
                 len(texts) / warm, 1000 * warm / len(texts), n_ids / warm)

    for language, unit in [("en", "The quick brown fox jumps over the lazy dog. "),
                           ("zh", "今天天气很好，我们去公园散步吧。"), ("ja", "今日はいい天気ですね、公園に行きましょう。")]:
        text = (unit * 2000)[:10_000]
        start = time.perf_counter()
        n = len(phonemize(text, language=language, normalize=True).ids)
        log.info("10,000 chars %s (normalize=True): %.2f s, %d ids", language, time.perf_counter() - start, n)


if __name__ == "__main__":
    main()
