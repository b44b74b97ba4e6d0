"""Hardening: >= 10,000 generated strings through the request path; no crash, no hang.

Three depths, all on the tiny model folder:
1. 10,000 strings x random options through `Studio.synthesize` (split, normalise, phonemize,
   options, assembly, Vocos decode). The LM is replaced by a checking stand-in that asserts what
   the text path hands it (ids 0..69, one language id 0..2 per id, prompt length) and returns two
   frames, so the run fits the suite's time budget.
2. A sample of them through the real tiny VALL-E X with a 2-frame cap per sentence.
3. A sample through HTTP `POST /v1/audio/speech` of a server started in this process (same
   checking engine): every answer is audio or a 400 with an OpenAI-shaped error, never a 500.

Allowed outcome per call: a result with finite audio, or a `StudioError` (a ValueError with a
message). Each call is bounded by a watchdog (a hang fails the test; it is not a speed check).
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import replace

import numpy as np
import pytest
import torch

from core import longform
from core.errors import StudioError
from core.lm import Generation
from core.synth import PRESETS, Studio, SynthOptions
from tests.figures import record

N_STRINGS = int(__import__("os").environ.get("HARDENING_N_STRINGS", "10000"))
MAX_TEXT_IDS = int(longform.MAX_IDS_PER_CHAR * 170)  # one sentence's ids at the default budget
HANG_S = 120.0  # a call still running after this long is a hang (generous: 2 shared cores)

_SCRIPTS = {
    "en": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ     ,.!?'-",
    "zh": "你好世界中国的了是不一长行重我们说话声音今天天气很",
    "ja": "あいうえおかきくけこさしすせそんっーアイウエオンッヴ東京日本語です",
    "digits": "0123456789.,%$€£¥-+/:",
    "punct": ".,!?;:…—–-()[]{}<>\"'`~@#^&*_=|\\/，。！？、；：「」『』《》",
    "space": " \t\n\r\x0b\x0c\u00a0\u2028\u2029\u3000\u200b\ufeff",
    "control": "".join(chr(c) for c in range(32)) + "\x7f\x85",
    "emoji": "🙂😊🎉👍🏽🍕❤️\u200d🧑‍💻🇯🇵",
    "combining": "a\u0301e\u0308\u0336\u0489\u20dd",
    "rtl": "שלום مرحبا \u202e\u202d\u200f",
    "other": "Привет Ελληνικά 한국어 हिन्दी ไทย ꦲ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ＡＢＣ１２３",
}
_TEMPLATES = [
    "[EN]{}[EN]", "[ZH]{}[ZH]", "[JA]{}[JA]", "[EN]{}", "{}[ZH]", "[XX]{}[XX]", "<speak>{}</speak>",
    "{}; DROP TABLE voices;--", "%s%d{0}{}{{}}", "../../{}", "{}\x00{}", "{} " * 3,
]
_SPECIAL = [
    "", " ", "\n", "\x00", "\ud800", "a\udfffb", "." * 500, "!" * 4000, "9" * 300, "1e308", "-0.0", "1/0",
    "3.14159265358979323846264338327950288419716939937510", "１２３４５６７８９０" * 10, "$" * 50,
    "12:30 1999-12-31 3rd 21st 100% $5.50 €3 ¥1000 1,000,000 0.001 -42 1/2 2^10",
    "Dr. Mr. Mrs. St. e.g. i.e. etc. vs.", "ｶﾀｶﾅ半角", "〇一二三四五六七八九十百千万亿",
    "ー" * 100, "っっっっ", "ゃゅょ", "嗯" * 200, "a" * 4096, "あ" * 4096, "你" * 4096,
    "Hello 你好 こんにちは 123 !", "\u0000\u0001\u0002", "\U0010ffff" * 5, "\ufffd" * 10,
]


def generate_strings(n: int, seed: int = 0) -> list[str]:
    """`n` odd strings, reproducible: specials, random script mixes, templates, long ones."""
    rng = random.Random(seed)
    names = list(_SCRIPTS)
    out = list(_SPECIAL)
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:  # a mix of 1-4 scripts, short
            parts = [rng.choice(_SCRIPTS[rng.choice(names)]) for _ in range(rng.randint(1, 40))]
            s = "".join(parts)
        elif kind < 0.75:  # a word-like run of one script
            alphabet = _SCRIPTS[rng.choice(["en", "zh", "ja", "digits"])]
            s = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
                         for _ in range(rng.randint(1, 8)))
        elif kind < 0.85:  # a template around a short mix
            inner = "".join(rng.choice(_SCRIPTS[rng.choice(names)]) for _ in range(rng.randint(0, 12)))
            s = rng.choice(_TEMPLATES).replace("{}", inner, 2)
        elif kind < 0.97:  # any code point (lone surrogates included)
            s = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 20)))
        else:  # long: many sentences or one run-on sentence
            sent = "".join(rng.choice(_SCRIPTS[rng.choice(["en", "zh", "ja"])]) for _ in range(rng.randint(5, 60)))
            s = (sent + rng.choice([". ", "。", "! ", ""])) * rng.randint(3, 15)
        out.append(s)
    return out[:n]


def random_options(rng: random.Random) -> SynthOptions:
    return SynthOptions(
        language=rng.choice(["auto-mix", "auto", "en", "zh", "ja", "mix"]),
        accent=rng.choice(["keep", "keep", "en", "zh", "ja"]),
        preset=rng.choice(list(PRESETS)), seed=rng.randint(0, 2**31 - 2),
        prompt_mode=rng.choice(["fixed", "sliding"]), batch=rng.random() < 0.8,
    )


class CheckingEngine:
    """Stands in for VallEX: asserts the inputs the text path produced, returns 2 frames of codes."""

    def __init__(self):
        self.sentences = 0
        self.bad: list[str] = []

    def _check(self, text_ids, text_langs, prompt_text_len, prompt_codes) -> None:
        ids, langs = torch.as_tensor(text_ids), torch.as_tensor(text_langs)
        problems = []
        if ids.ndim != 1 or ids.shape != langs.shape or len(ids) <= prompt_text_len:
            problems.append(f"shapes ids {tuple(ids.shape)} langs {tuple(langs.shape)} prompt {prompt_text_len}")
        elif ids.min() < 0 or ids.max() >= 70 or langs.min() < 0 or langs.max() > 2:
            problems.append(f"ids {ids.min()}..{ids.max()} langs {langs.min()}..{langs.max()}")
        elif len(ids) - prompt_text_len > MAX_TEXT_IDS:
            problems.append(f"{len(ids) - prompt_text_len} text ids, over the sentence cap {MAX_TEXT_IDS}")
        if prompt_codes is not None and (prompt_codes.ndim != 2 or prompt_codes.shape[-1] != 8):
            problems.append(f"prompt codes {tuple(prompt_codes.shape)}")
        if problems:
            self.bad.append("; ".join(problems))
            raise AssertionError(problems)
        self.sentences += 1

    def generate(self, text_ids, text_langs, prompt_text_len=0, prompt_codes=None, sampling=None, stop=None):
        self._check(text_ids, text_langs, prompt_text_len, prompt_codes)
        seed = int(getattr(sampling, "seed", 0) or 0)
        codes = torch.tensor([[(seed + 37 * k) % 1024 for k in range(8)]] * 2, dtype=torch.long)
        return Generation(codes, "max_frames", [], seed)

    def generate_batch(self, requests, sampling=None, stop=None):
        base = int(getattr(sampling, "seed", 0) or 0)
        return [self.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes,
                              replace(sampling, seed=base + i) if sampling is not None else None)
                for i, r in enumerate(requests)]


@pytest.mark.parametrize("text, language", [
    ("9" * 5000, "auto-mix"), ("9" * 5000, "zh"), ("9" * 5000, "ja"), ("x" * 2000, "auto-mix"),
    ("1.5" * 700, "auto-mix"), ("1.5" * 700, "ja"), ("１２３４５６７８９０" * 100, "zh"),
])
def test_no_sentence_reaches_the_model_over_the_id_cap(text, language):
    # a run without spaces used to be one sentence: "9" * 5000 -> 25,000 ids, 41,667 in Chinese
    warnings: list[str] = []
    requests = longform.sentence_requests(text, SynthOptions(language=language), longform.Prompt.empty(), warnings)
    assert requests and not warnings
    assert max(len(r.ids) for r in requests) <= MAX_TEXT_IDS
    assert "".join(r.text for r in requests) == text


def test_a_chunk_that_cannot_be_split_is_left_out_with_a_note(monkeypatch):
    monkeypatch.setattr(longform, "MAX_IDS_PER_CHAR", 0.01)  # every chunk is over the cap
    warnings: list[str] = []
    assert longform.sentence_requests("Hello there.", SynthOptions(language="en"), longform.Prompt.empty(),
                                      warnings) == []
    assert warnings and all("add spaces or punctuation" in w for w in warnings)


@pytest.fixture(scope="module")
def studio(tiny_models, tmp_path_factory):
    return Studio(tiny_models, offline=True, voices_dir=tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="module")
def voice(studio):
    from tests.audio_corpus import speechlike

    v, _ = studio.make_voice(speechlike(4.0, 24000)[:, 0], sample_rate=24000, transcript="Hello there.",
                             language="en", name="fuzz")
    return v


class Outcomes:
    """Tally of ok / clear errors / failures (crash, bad output, hang), with examples."""

    def __init__(self):
        self.ok = self.clear = 0
        self.failures: list[str] = []
        self.errors_seen: dict[str, int] = {}

    def clear_error(self, e: StudioError) -> None:
        self.clear += 1
        key = type(e).__name__ + ": " + e.message[:50]
        self.errors_seen[key] = self.errors_seen.get(key, 0) + 1

    def fail(self, text: str, why: str) -> None:
        self.failures.append(f"{text[:60]!r}: {why}"[:300])

    def figures(self) -> dict:
        top = sorted(self.errors_seen.items(), key=lambda kv: -kv[1])[:8]
        return {"tried": self.ok + self.clear + len(self.failures), "ok": self.ok, "clear_errors": self.clear,
                "failures": len(self.failures), "failure_examples": self.failures[:10], "top_errors": dict(top)}


def _run_bounded(pool: ThreadPoolExecutor, fn, text: str, out: Outcomes) -> None:
    future = pool.submit(fn)
    try:
        result = future.result(timeout=HANG_S)
    except FutureTimeout:
        out.fail(text, f"no answer after {HANG_S:.0f} s (hang)")
        pytest.fail(f"hang on {text[:60]!r}")
    except StudioError as e:
        if not e.message.strip():
            out.fail(text, f"{type(e).__name__} without a message")
        else:
            out.clear_error(e)
    except Exception as e:  # noqa: BLE001 - any other exception is what this test hunts
        out.fail(text, f"{type(e).__name__}: {e}")
    else:
        audio = np.asarray(result.audio)
        if audio.dtype != np.float32 or audio.ndim != 1 or not np.isfinite(audio).all() or not result.sentences:
            out.fail(text, f"bad result: dtype {audio.dtype} shape {audio.shape}")
        else:
            out.ok += 1


@pytest.mark.slow
def test_ten_thousand_strings_through_synthesize(studio, voice, monkeypatch, artifacts):
    engine = CheckingEngine()
    monkeypatch.setattr(studio._load(), "lm", engine)
    strings = generate_strings(N_STRINGS)
    rng = random.Random(1)
    out = Outcomes()
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(1)
    try:
        for i, text in enumerate(strings):
            opts = random_options(rng)
            v = voice if i % 3 == 0 else None
            _run_bounded(pool, lambda: studio.synthesize(text, v, opts), text, out)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # never wait on a hung call
    figures = out.figures() | {"sentences_to_engine": engine.sentences, "engine_input_errors": len(engine.bad),
                               "seconds": round(time.perf_counter() - t0, 1)}
    record(artifacts, "text_synthesize", figures)
    assert out.ok + out.clear + len(out.failures) == N_STRINGS >= 10_000
    assert not engine.bad, engine.bad[:5]
    assert not out.failures, out.failures[:10]
    assert out.ok > N_STRINGS // 4  # most odd strings still have something to say


@pytest.mark.slow
def test_sample_through_the_real_tiny_model(studio, voice, monkeypatch, artifacts):
    monkeypatch.setattr(longform.Request, "max_frames", lambda self: 2)
    strings = generate_strings(N_STRINGS)[::100] + _SPECIAL
    rng = random.Random(2)
    out = Outcomes()
    pool = ThreadPoolExecutor(1)
    try:
        for i, text in enumerate(strings):
            opts = replace(random_options(rng), max_chars=400)
            _run_bounded(pool, lambda: studio.synthesize(text[:600], voice if i % 2 else None, opts), text, out)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    record(artifacts, "text_real_tiny_lm", out.figures())
    assert not out.failures, out.failures[:10]


@pytest.fixture(scope="module")
def http_server(studio):
    """The studio's server (page + /v1) in this process on a free port, with the checking engine."""
    from app.server import ServerOptions, serve
    from tests.app_server import free_port

    models = studio._load()
    real = models.lm
    models.lm = CheckingEngine()
    port = free_port()
    demo = serve(studio, ServerOptions(port=port, max_queue=64), block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        models.lm = real


@pytest.mark.slow
def test_strings_through_the_openai_endpoint(http_server, artifacts):
    import requests

    strings = generate_strings(N_STRINGS)[::20]
    rng = random.Random(3)
    counts = {"200": 0, "400": 0}
    failures: list[str] = []
    session = requests.Session()
    for text in strings:
        body = {"model": "vallex-x", "input": text, "response_format": rng.choice(["wav", "pcm", "flac"]),
                "seed": rng.randint(0, 1000), "language": rng.choice(["auto-mix", "en", "zh", "ja", "xx"])}
        try:
            r = session.post(http_server + "v1/audio/speech", json=body, timeout=HANG_S)
        except requests.RequestException as e:
            failures.append(f"{text[:40]!r}: {type(e).__name__}")
            continue
        if r.status_code == 200 and len(r.content) > 0:
            counts["200"] += 1
        elif r.status_code == 400 and (r.json().get("error") or {}).get("message"):
            counts["400"] += 1
        else:
            failures.append(f"{text[:40]!r}: HTTP {r.status_code} {r.text[:120]}")
    record(artifacts, "text_http_v1", {"tried": len(strings), "ok_200": counts["200"],
                                       "clear_400": counts["400"], "failures": len(failures),
                                       "failure_examples": failures[:10]})
    assert not failures, failures[:10]
    assert counts["200"] > 0 and counts["400"] > 0
