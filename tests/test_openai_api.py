"""The OpenAI-compatible /v1 API with the official `openai` package and plain HTTP, on a studio
started with a page login and an API key (so auth is on for both)."""
from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time

import numpy as np
import openai
import pytest
import requests
import soundfile as sf
from gradio_client import Client, handle_file

from app import api
from tests.app_server import running_app, speech_wav

KEY = "test-key-123"
LOGIN = ("ann", "secret-pw")
TEXT = "The quick brown fox jumps over the lazy dog near the river bank today."


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("openai")
    with running_app(tiny_models, work, "--auth", ":".join(LOGIN), "--api-key", KEY, "--max-queue", "10",
                     headers={"Authorization": f"Bearer {KEY}"}) as server:
        # a saved voice to speak with, made through the (logged-in) page API
        c = Client(server.url, auth=LOGIN, verbose=False)
        wav = speech_wav(work / "speech.wav")
        c.predict(handle_file(str(wav)), "en", "Hello, this is a test of the voice cloning studio.",
                  api_name="/check_prompt")
        c.predict("me", api_name="/save_voice")
        yield server


@pytest.fixture
def oai(app):
    return openai.OpenAI(base_url=app.url + "v1", api_key=KEY, max_retries=0, timeout=120)


def post(app, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(app.url + "v1/audio/speech", json=body, headers=headers, timeout=120, **kw)


def wav_of(data: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(data))


def test_voices_and_models(app, oai):
    r = requests.get(app.url + "v1/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    voices = {v["id"]: v for v in r.json()["data"]}
    assert voices["me"]["language"] == "en" and voices["me"]["transcript"].startswith("Hello")
    assert [m.id for m in oai.models.list()] == ["vallex-x"]


def test_speech_create_every_format(oai):
    from core.audio import load_audio

    out = {fmt: oai.audio.speech.create(model="tts-1", voice="me", input=TEXT, response_format=fmt,
                                        extra_body={"preset": "greedy"}).content
           for fmt in ("wav", "mp3", "flac", "opus", "pcm")}
    pcm = np.frombuffer(out["pcm"], dtype="<i2")  # raw 24 kHz int16 LE, as OpenAI's pcm
    wav, sr = sf.read(io.BytesIO(out["wav"]), dtype="int16")
    assert sr == 24000 and pcm.size > 0
    np.testing.assert_array_equal(wav, pcm)  # same take (greedy) in both containers
    flac, sr = sf.read(io.BytesIO(out["flac"]), dtype="int16")
    assert sr == 24000 and len(flac) == len(pcm)
    for fmt in ("mp3", "opus"):  # lossy: same length give or take codec padding
        audio, sr = load_audio(out[fmt])
        assert abs(audio.shape[0] / sr - pcm.size / 24000) < 0.1, fmt


def test_streaming_response_matches_plain_response(oai, tmp_path):
    """The SDK's streaming form; and the `seed` extra: same seed, same bytes."""
    body = dict(model="vallex-x", voice="me", input=TEXT, response_format="wav", extra_body={"seed": 9})
    plain = oai.audio.speech.create(**body).content
    out = tmp_path / "streamed.wav"
    with oai.audio.speech.with_streaming_response.create(**body) as resp:
        assert resp.headers["content-type"] == "audio/wav"
        resp.stream_to_file(out)
    assert out.read_bytes() == plain


def test_stream_true_sends_sentences_as_they_are_made(oai, app):
    two = TEXT + " " + TEXT + " She sells sea shells by the sea shore every single summer morning."
    whole = oai.audio.speech.create(model="tts-1", voice="me", input=two, response_format="pcm",
                                    extra_body={"preset": "greedy"}).content
    with oai.audio.speech.with_streaming_response.create(
            model="tts-1", voice="me", input=two, response_format="pcm",
            extra_body={"preset": "greedy", "stream": True}) as resp:
        assert resp.headers.get("transfer-encoding") == "chunked"
        streamed = b"".join(resp.iter_bytes())
    assert abs(len(streamed) - len(whole)) / 2 / 24000 < 0.1  # same take, sentence by sentence
    r = post(app, {"input": two, "voice": "me", "response_format": "wav", "preset": "greedy", "stream": True})
    wav, sr = sf.read(io.BytesIO(r.content), dtype="int16")  # header sizes say "unknown"
    assert sr == 24000 and r.content[44:] == streamed
    assert post(app, {"input": TEXT, "response_format": "mp3", "stream": True}).status_code == 400
    assert post(app, {"input": TEXT, "voice": "nobody", "response_format": "pcm", "stream": True}).status_code == 400


def test_extras_speed_language_instruction(app):
    def seconds(**extra):
        r = post(app, {"input": TEXT, "voice": "me", "response_format": "wav", "preset": "greedy", **extra})
        assert r.status_code == 200, r.text
        wav, sr = wav_of(r.content)
        return len(wav) / sr, wav

    base, _ = seconds()
    assert seconds(speed=2.0)[0] == pytest.approx(base / 2, rel=0.15)
    assert seconds(instruction="much slower")[0] > base * 1.2
    r = post(app, {"input": "Hi there.", "language": "en", "seed": 2})  # no voice: the model invents one
    assert r.status_code == 200 and len(r.content) > 0
    r = post(app, {"input": "Hi there.", "voice": "  "})  # blank is a mistake to point out, not "no voice"
    assert r.status_code == 400 and r.json()["error"]["param"] == "voice", r.text
    assert "The voice is empty" in r.json()["error"]["message"]


def test_the_take_comes_with_its_seed_and_warnings(app):
    import json

    # the unknown words come back in the warnings: non-Latin-1 text and line breaks included
    body = {"input": "Hello there. 你好。", "voice": "me", "response_format": "wav",
            "instruction": "deeper and purple 紫色\r\nX-Evil: 1"}
    r = post(app, body)
    assert r.status_code == 200, r.text
    assert "X-Evil" not in r.headers
    seed = int(r.headers["X-Vallex-Seed"])
    assert 'instruction: not understood "purple", "紫色", "X-Evil", "1"' in json.loads(r.headers["X-Vallex-Warnings"])
    wav, sr = wav_of(r.content)
    assert float(r.headers["X-Vallex-Audio-Seconds"]) == pytest.approx(len(wav) / sr, abs=1e-3)
    again = post(app, {**body, "seed": seed})  # the seed it reported makes the same take again
    assert again.headers["X-Vallex-Seed"] == str(seed) and again.content == r.content
    streamed = post(app, {**body, "seed": seed, "stream": True, "response_format": "pcm"})
    assert streamed.headers["X-Vallex-Seed"] == str(seed)
    assert 'instruction: not understood "purple", "紫色", "X-Evil", "1"' in \
        json.loads(streamed.headers["X-Vallex-Warnings"])


def test_take_headers_stay_small_and_ascii():
    import json

    from app.api import take_headers

    many = [f"sentence {i}: skipped 'ß😀\r\n{'x' * 400}'" for i in range(50)]
    h = take_headers(7, many, 1.5)
    value = h["X-Vallex-Warnings"]
    assert value.isascii() and "\r" not in value and "\n" not in value and len(value) <= 2000
    shown = json.loads(value)
    assert shown[-1] == f"... and {50 - (len(shown) - 1)} more" and shown[0].startswith("sentence 0: skipped 'ß😀\r\n")
    assert h["X-Vallex-Seed"] == "7" and h["X-Vallex-Audio-Seconds"] == "1.500"
    assert take_headers(None, []) == {"X-Vallex-Warnings": "[]"}


def test_a_client_that_hangs_up_stops_its_take(app):
    # a long text, and a client that gives up at once: the studio stops the take at once
    # instead of making (and holding the queue for) the rest of it
    text = " ".join(f"This is sentence number {i} of a very long request." for i in range(70))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(app.url + "v1/audio/speech", json={"input": text, "seed": 1},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=0.5)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "take stopped on request" not in app.log():
        time.sleep(0.1)
    assert "client of a speech request went away" in app.log()
    made = re.findall(r"take stopped on request after (\d+) of (\d+) sentences", app.log())
    assert made and int(made[-1][0]) < int(made[-1][1]), app.log()[-2000:]
    assert post(app, {"input": TEXT, "seed": 1}).status_code == 200  # the studio is free again
    # streamed: a listener who closes the stream after the first sentence is noticed at once
    with post(app, {"input": text, "seed": 1, "stream": True, "response_format": "pcm"}, stream=True) as r:
        assert r.status_code == 200 and next(r.iter_content(4096))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "streamed speech request went away" not in app.log():
        time.sleep(0.1)
    assert "client of a streamed speech request went away" in app.log()
    assert post(app, {"input": TEXT, "seed": 1}).status_code == 200


def test_a_streamed_take_stops_when_its_listener_goes_away():
    # Starlette cancels a streamed response whose client hung up; the take, busy in a worker
    # thread making its next sentences, must be told (its next engine step then stops it)
    gone, waited = threading.Event(), []

    def chunks():  # stands in for api.stream_request's chunks: the engine asks stop() every step
        yield b"first sentence"
        waited.append(gone.wait(30))
        yield b"never sent"

    async def listener():
        stream = api._until_gone(chunks(), gone)
        assert await stream.__anext__() == b"first sentence"
        pending = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.2)
        pending.cancel()  # the client hung up
        with pytest.raises(asyncio.CancelledError):
            await pending

    asyncio.run(listener())
    assert gone.is_set()
    deadline = time.monotonic() + 30
    while not waited and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waited == [True]  # the worker saw the stop


def test_bad_requests_are_openai_errors(app, oai):
    with pytest.raises(openai.BadRequestError, match="No saved voice"):
        oai.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    for body, param in [({"input": TEXT, "response_format": "aac"}, "response_format"),
                        ({"input": TEXT, "speed": 4.0}, "speed"),
                        ({"input": ""}, "input"),
                        ({"input": TEXT, "language": "fr"}, "language"),
                        ({"input": TEXT, "seed": 10**30}, "seed"),
                        ({"input": TEXT, "voice": "../x"}, "voice"),
                        ({"input": "?!…"}, "input")]:
        r = post(app, body)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
        assert err["param"] == param, (body, err)
    assert "seed" in post(app, {"input": TEXT, "seed": 10**30}).json()["error"]["message"]
    r = requests.post(app.url + "v1/audio/speech", data="not json", timeout=10,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def send(app, data: str | bytes, method="POST", path="v1/audio/speech", headers=None):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return requests.request(method, app.url + path, data=data, headers=headers, timeout=30)


def test_odd_bodies_and_paths_get_openai_errors_not_500s(app):
    # nested too deep for the JSON reader: a 400, not an internal error
    r = send(app, "[" * 3000 + "]" * 3000)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    for data, kind in [("[1, 2]", "an array"), ('"Hello"', "a string"), ("42", "a number"), ("null", "null")]:
        r = send(app, data)
        assert r.status_code == 400 and "must be a JSON object like" in r.json()["error"]["message"], data
        assert kind in r.json()["error"]["message"]
    # values a lenient parser would coerce are pointed out instead
    for body, param in [({"input": TEXT, "speed": float("nan")}, "speed"), ({"input": TEXT, "speed": True}, "speed"),
                        ({"input": TEXT, "seed": True}, "seed"), ({"input": TEXT, "seed": "5"}, "seed"),
                        ({"input": TEXT, "stream": "yes"}, "stream")]:
        r = send(app, json.dumps(body))
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    # too long: how long, the limit, and what to do
    r = post(app, {"input": "word " * 1000})
    msg = r.json()["error"]["message"]
    assert r.status_code == 400 and "5,000 characters" in msg and "4,096" in msg and "launch.py synth" in msg
    for field in ("instruction", "instructions"):  # parsed while the studio is held: kept short
        r = post(app, {"input": TEXT, field: "slower " * 100})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == field and "700 characters; the most is 500" in err["message"]
    # unknown paths and wrong methods answer in the same shape
    r = send(app, "", method="GET", path="v1/nothing")
    assert r.status_code == 404 and "POST /v1/audio/speech" in r.json()["error"]["message"]
    r = send(app, "", method="GET", path="v1/audio/speech")
    assert r.status_code == 405 and "takes POST, not GET" in r.json()["error"]["message"]


def test_a_non_ascii_key_is_a_401_not_a_crash(app):
    r = send(app, json.dumps({"input": TEXT}), headers={"Authorization": "Bearer s\u00e9cret".encode().decode("latin-1")})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = requests.get(app.url + "v1/models", headers={"Authorization": "Bearer ünïcode".encode().decode("latin-1")},
                     timeout=10)
    assert r.status_code == 401


def test_auth_on_v1_and_on_the_page(app):
    for key in (None, "wrong"):
        r = post(app, {"input": TEXT}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert requests.get(app.url + "v1/voices", timeout=10,
                            headers={"Authorization": f"Bearer {key}"} if key else {}).status_code == 401
    bad = openai.OpenAI(base_url=app.url + "v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="me", input=TEXT)
    # the page itself wants the login
    assert requests.get(app.url + "config", timeout=10).status_code == 401
    s = requests.Session()
    assert s.post(app.url + "login", data={"username": LOGIN[0], "password": LOGIN[1]}, timeout=10).ok
    assert s.get(app.url + "config", timeout=10).status_code == 200


def test_eight_requests_at_once_and_busy_beyond_the_queue(app):
    texts = [f"Request {i} here." for i in range(8)]
    # greedy: quick on the tiny model, and each text has exactly one right answer
    bodies = [{"input": t, "voice": "me", "response_format": "pcm", "preset": "greedy"} for t in texts]
    expected = [post(app, b).content for b in bodies]
    assert len(set(expected)) == 8  # so a mix-up between clients would show
    got: dict[int, bytes] = {}

    def run(i):
        r = post(app, bodies[i])
        assert r.status_code == 200, r.text
        got[i] = r.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) == expected[i] for i in range(8)] == [True] * 8

    # 20 at once with room for 10 in the line: the rest are told "busy" (429), none fail otherwise
    codes: list[int] = []
    long_body = bodies[0]

    def flood():
        r = post(app, long_body)
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "busy" and "busy" in r.json()["error"]["message"]
            assert r.headers["Retry-After"] == "5"

    threads = [threading.Thread(target=flood) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(codes) <= {200, 429} and codes.count(200) >= 10 and codes.count(429) >= 1, codes
