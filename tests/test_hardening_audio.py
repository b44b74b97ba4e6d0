"""Hardening: every item of the odd-audio corpus (tests/audio_corpus.py) through core.audio, the
Studio, the UI endpoints (gradio_client) and, via saved voices, the OpenAI endpoint.

Outcome per item and path: a clear error (a StudioError / an error message that is not Gradio's
generic "the upstream app raised an exception") or a correct result (finite audio, a report).
Items marked "ok" must succeed, items marked "error" must fail clearly, "either" may do both.
/v1 takes no audio: audio enters it through a voice made and saved on the page, so each corpus
voice that the page accepted is listed by GET /v1/voices and (a sample) spoken by /v1/audio/speech.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
import soundfile as sf

from core.audio import check_prompt, load_mono
from core.errors import StudioError
from core.synth import Studio
from tests.audio_corpus import EITHER, ERROR, OK, make_corpus
from tests.figures import record

GENERIC = "has not enabled verbose error reporting"  # Gradio's text when a handler's error is hidden
N_SPOKEN = 6  # corpus voices spoken through /v1/audio/speech (each is a real tiny-model synthesis)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_big_and_varied(corpus):
    assert len(corpus) >= 30
    kinds = {i.expect for i in corpus}
    assert kinds == {OK, ERROR, EITHER}
    assert len({i.path.suffix for i in corpus}) >= 4


def _judge(item, outcome: str, detail: str, tally: dict, failures: list, path: str) -> None:
    """outcome: "ok" | "error" (clear) | "crash"."""
    tally[outcome] = tally.get(outcome, 0) + 1
    if outcome == "crash":
        failures.append(f"{path} {item.name}: crash {detail}")
    elif item.expect == OK and outcome != "ok":
        failures.append(f"{path} {item.name}: expected a result, got error {detail}")
    elif item.expect == ERROR and outcome != "error":
        failures.append(f"{path} {item.name}: expected a clear error, got a result")


@pytest.mark.slow
def test_corpus_through_core(corpus, tiny_models, tmp_path, artifacts):
    studio = Studio(tiny_models, offline=True, voices_dir=tmp_path / "voices")
    tally: dict[str, int] = {}
    failures: list[str] = []
    for item in corpus:
        for path, fn in (("load+check", lambda: _core_check(item.path)),
                         ("convert", lambda: _core_convert(studio, item.path)),
                         ("make_voice", lambda: _core_voice(studio, item.path))):
            try:
                fn()
            except StudioError as e:
                outcome, detail = ("error", e.user_message()) if e.message.strip() else ("crash", "empty message")
            except Exception as e:  # noqa: BLE001 - what this test hunts
                outcome, detail = "crash", f"{type(e).__name__}: {e}"
            else:
                outcome, detail = "ok", ""
            # check_prompt refuses unusable prompts by design: only crashes count there for "ok" items
            if path != "convert" and item.expect == OK and outcome == "error":
                outcome = "error" if "speech" not in detail and "noise" not in detail else "ok-refused"
            _judge(item, "ok" if outcome == "ok-refused" else outcome, detail, tally, failures, path)
    record(artifacts, "audio_core", {"items": len(corpus), "calls": sum(tally.values()), "outcomes": tally,
                                     "failures": len(failures), "failure_examples": failures[:10]})
    assert not failures, failures


def _core_check(path) -> None:
    wav = load_mono(path)
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
    report = check_prompt(wav, 24000)
    assert np.isfinite(report.wav).all() and 0 <= report.start_s <= report.end_s


def _core_convert(studio, path) -> None:
    out, plan = studio.convert(path, None, "louder and a bit faster")
    n_in = len(load_mono(path))
    # a 1-sample clip sped up has no sample left: empty is the right length there
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
    assert len(out) > 0 or n_in < 100
    assert plan.speed > 1 and plan.gain_db > 0


def _core_voice(studio, path) -> None:
    voice, report = studio.make_voice(path, transcript="Hello there.", language="en")
    assert voice.audio_tokens.ndim == 2 and voice.audio_tokens.shape[1] == 8 and len(voice.audio_tokens) > 0
    assert voice.audio_tokens.min() >= 0 and voice.audio_tokens.max() < 1024


# ------------------------------------------------------------------------------------ UI + /v1
@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    from tests.app_server import running_app

    with running_app(tiny_models, tmp_path_factory.mktemp("app")) as server:
        yield server


def _ui_call(client, *args, api_name: str):
    """-> ("ok", result) | ("error", message) | ("crash", why)."""
    try:
        return "ok", client.predict(*args, api_name=api_name)
    except Exception as e:  # noqa: BLE001 - gradio_client raises AppError / ValueError subclasses
        text = str(e)
        if GENERIC in text or "Traceback" in text or not text.strip():
            return "crash", f"{type(e).__name__}: {text[:200]}"
        return "error", text


def _audio_file_ok(path) -> bool:
    x, sr = sf.read(path, dtype="float32")
    return sr > 0 and x.size > 0 and np.isfinite(x).all()


@pytest.mark.slow
def test_corpus_through_ui_and_openai_endpoint(corpus, app, artifacts):
    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False)
    tally: dict[str, int] = {}
    failures: list[str] = []
    saved: list[str] = []
    t0 = time.perf_counter()
    for item in corpus:
        kind, got = _ui_call(client, handle_file(str(item.path)), "louder", api_name="/convert")
        if kind == "ok" and not _audio_file_ok(got[0]):
            kind, got = "crash", "convert returned unreadable audio"
        _judge(item, kind, str(got)[:200], tally, failures, "ui/convert")

        kind, got = _ui_call(client, handle_file(str(item.path)), "en", "Hello there.", api_name="/check_prompt")
        if kind == "ok":
            report, window = got[0], got[1]
            if not (isinstance(report, str) and report.strip() and window and _audio_file_ok(window)):
                kind, got = "crash", f"check_prompt returned {got!r:.200}"
        refused = kind == "error" and item.expect == OK and ("speech" in got or "noise" in got)
        _judge(item, "ok" if refused else kind, str(got)[:200], tally, failures, "ui/check_prompt")
        if kind == "ok":  # the prompt made a voice: save it, so that /v1 can use it
            name = f"corpus-{item.name}"
            k2, got2 = _ui_call(client, name, "Hello there.", api_name="/save_voice")
            if k2 != "ok":
                failures.append(f"ui/save_voice {item.name}: {k2} {str(got2)[:200]}")
            else:
                saved.append(name)

    listed = {v["name"] for v in requests.get(app.url + "v1/voices", timeout=30).json()["data"]}
    missing = sorted(set(saved) - listed)
    spoken = 0
    for name in saved[:: max(1, len(saved) // N_SPOKEN)][:N_SPOKEN]:
        r = requests.post(app.url + "v1/audio/speech", timeout=300, json={
            "model": "vallex-x", "input": "Hello.", "voice": name, "response_format": "wav", "seed": 1})
        if r.status_code != 200:
            failures.append(f"v1 {name}: HTTP {r.status_code} {r.text[:200]}")
            continue
        x, sr = sf.read(io.BytesIO(r.content), dtype="float32")
        if sr != 24000 or x.size == 0 or not np.isfinite(x).all():
            failures.append(f"v1 {name}: bad audio ({sr} Hz, {x.size} samples)")
        spoken += 1
    # a corpus item the page refused never becomes a voice: /v1 says so clearly
    r = requests.post(app.url + "v1/audio/speech", timeout=60,
                      json={"input": "Hello.", "voice": "corpus-random-bytes", "response_format": "wav"})
    if r.status_code != 400 or "No saved voice" not in r.json()["error"]["message"]:
        failures.append(f"v1 refused voice: HTTP {r.status_code} {r.text[:200]}")
    log_tracebacks = app.log().count("Traceback")
    record(artifacts, "audio_ui_v1", {
        "items": len(corpus), "ui_calls": sum(tally.values()), "outcomes": tally, "voices_saved": len(saved),
        "v1_spoken": spoken, "failures": len(failures), "failure_examples": failures[:12],
        "server_log_tracebacks": log_tracebacks, "seconds": round(time.perf_counter() - t0, 1)})
    assert not missing, f"saved on the page but not listed by /v1/voices: {missing}"
    assert not failures, failures
    assert len(saved) >= 10 and spoken >= 1
