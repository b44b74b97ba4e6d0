"""The /v1 API's edges, served by uvicorn over a stand-in Studio whose takes last as long as a test
wants: hostile bodies, the waiting line when clients hang up, a take with no audio, auth details.
(tests/test_openai_api.py runs the same API over the real engine with tiny models.)"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import requests

from app import api
from app.gate import Gate
from core.errors import Stopped, VoiceError
from core.synth_types import SentenceResult, SynthResult

KEY = "qa-key"


class FakeStudio:
    """Takes of 0.1 s of audio; `hold` keeps every take busy until it is set (or its client leaves)."""

    sample_rate = 24000

    def __init__(self):
        self.hold = threading.Event()
        self.hold.set()
        self.silent = False  # the model stops at once: a take with no audio
        self.silent_at: set[int] = set()  # streamed sentences (lines) with no audio
        self.started = 0
        self.voices = self

    def load(self, name):  # studio.voices.load
        raise VoiceError(f"No saved voice called {name!r}.", "Pick one from the list, or make a new voice.")

    def synthesize(self, text, voice=None, options=None, stop=None):
        self.started += 1
        while not self.hold.wait(0.05):
            if stop is not None and stop():
                raise Stopped("take stopped on request")
        audio = np.zeros(0 if self.silent else 2400, np.float32)
        sentence = SentenceResult(0, text, audio, np.zeros((0, 8), np.int64), options.seed or 7, "eos",
                                  ["the model stopped at once"] if self.silent else [])
        return SynthResult(audio, 24000, [sentence], warnings=[f"sentence 1: {w}" for w in sentence.warnings])

    def stream(self, text, voice=None, options=None, stop=None):  # a sentence a line; silent_at: no audio
        for i, line in enumerate(text.splitlines()):
            silent = self.silent or i in self.silent_at
            yield SentenceResult(i, line, np.full(0 if silent else 2400, 0.5, np.float32), np.zeros((0, 8), np.int64),
                                 100 + i, "eos", ["the model stopped at once"] if silent else [])


@contextmanager
def serve(studio, max_waiting=2, keys=None, gate=None):
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(api.make_router(studio, gate or Gate(max_waiting=max_waiting), keys))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1/"
    finally:
        studio.hold.set()
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def studio():
    return FakeStudio()


def speech(url, data=None, timeout=10, **kw):
    return requests.post(url + "audio/speech", data=data, timeout=timeout, **kw)


def err(r, status):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_clients_that_hang_up_while_waiting_leave_the_line(studio):
    gate = Gate(max_waiting=2)
    with serve(studio, gate=gate) as url:
        studio.hold.clear()  # the studio is busy with a take
        busy = threading.Thread(target=lambda: speech(url, json={"input": "long take"}, timeout=30))
        busy.start()
        while studio.started < 1:
            time.sleep(0.01)
        for _ in range(2):  # two clients wait for their turn, then give up
            with pytest.raises(requests.exceptions.ReadTimeout):
                speech(url, json={"input": "hello"}, timeout=0.5)
        deadline = time.monotonic() + 10  # the server notices a hang-up within 0.25 s, the line within 0.1 s
        while gate.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gate.waiting == 0
        # their places are free: a third client waits for its turn instead of a 429
        results: list = []
        third = threading.Thread(target=lambda: results.append(speech(url, json={"input": "hi"}, timeout=30)))
        third.start()
        time.sleep(0.5)
        studio.hold.set()
        third.join(30)
        busy.join(30)
        assert results and results[0].status_code == 200, results[0].text
        assert studio.started == 2  # the two who left never started a take


def test_a_long_line_waits_in_the_gate_not_for_a_thread(studio):
    # --max-queue 60: every waiting request has its place in the line (anyio's default pool of 40
    # threads, shared with the page, held the ones past ~39 outside it, uncounted)
    gate = Gate(max_waiting=60)
    with serve(studio, gate=gate) as url:
        studio.hold.clear()
        results: list = []
        clients = [threading.Thread(target=lambda: results.append(speech(url, json={"input": "hi"}, timeout=60)))
                   for _ in range(50)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 20
        while gate.waiting < 49 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.waiting == 49 and studio.started == 1
        studio.hold.set()
        for c in clients:
            c.join(60)
        assert len(results) == 50 and all(r.status_code == 200 for r in results)


def test_a_take_with_no_audio_is_a_clear_error_not_an_empty_file(studio):
    studio.silent = True
    with serve(studio) as url:
        for fmt in ("wav", "mp3", "pcm"):
            e = err(speech(url, json={"input": "こんにちは。", "seed": 1, "response_format": fmt}), 400)
            assert e["code"] == "no_audio" and e["param"] == "seed"
            assert "no audio for this input with seed 1" in e["message"] and "another seed" in e["message"]
            assert "the model stopped at once" in e["message"] and "Record or upload" not in e["message"]
        e = err(speech(url, json={"input": "Hi"}), 400)
        assert e["param"] is None and "Send it again" in e["message"]


def test_a_streamed_take_with_no_audio_is_an_error_not_a_bare_header(studio):
    studio.silent = True
    with serve(studio) as url:
        for fmt in ("wav", "pcm"):
            r = speech(url, json={"input": "Hi.\nThere.", "seed": 3, "stream": True, "response_format": fmt})
            e = err(r, 400)
            assert e["code"] == "no_audio" and "seed 3" in e["message"]
            assert "sentence 2: the model stopped at once" in e["message"]
    # a silent first sentence is skipped: the audio starts with the next, whose seed is the take's
    studio.silent, studio.silent_at = False, {0}
    with serve(studio) as url:
        r = speech(url, json={"input": "Hi.\nThere.\nAgain.", "stream": True, "response_format": "pcm"})
        assert r.status_code == 200, r.text
        assert len(r.content) == 2 * 2400 * 2 and r.headers["X-Vallex-Seed"] == "101"
        assert "sentence 1: the model stopped at once" in r.headers["X-Vallex-Warnings"]


def test_a_body_of_many_megabytes_is_refused_unread(studio):
    # (2 MiB: over the limit, yet small enough for the socket buffers to take what the server leaves unread)
    big = b'{"input": "hi", "junk": "' + b"x" * (2 << 20) + b'"}'
    with serve(studio) as url:
        e = err(speech(url, big, headers={"Content-Type": "application/json"}), 413)
        assert e["code"] == "body_too_large" and "over 1 MiB" in e["message"] and "4,096" in e["message"]
        # chunked, with no Content-Length to go by: read up to the limit, then refused
        e = err(speech(url, iter([big[i:i + 65536] for i in range(0, len(big), 65536)])), 413)
        assert e["code"] == "body_too_large"
        # a long but legal body still goes through
        r = speech(url, json={"input": "\U0001F600 hi " * 800, "extra": "y" * 200_000})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("data, headers, expected", [
    (b"", {}, "The body is empty"),
    (b"input=Hi", {"Content-Type": "application/x-www-form-urlencoded"}, "form data"),
    (b'{"input": "Hi"', {}, "not valid JSON (Expecting ',' delimiter at line 1, column 15)"),
    (b'{"input": "\xff\xfe"}', {}, "not UTF-8"),
    (b'{"input": "Hi", "seed": ' + b"9" * 5000 + b"}", {}, "number too long to read"),
    (b"[" * 3000 + b"]" * 3000, {}, "nested too deeply"),
])
def test_unreadable_bodies_say_what_is_wrong(studio, data, headers, expected):
    with serve(studio) as url:
        e = err(speech(url, data, headers={"Content-Type": "application/json", **headers}), 400)
        assert e["code"] == "invalid_json" and expected in e["message"]
        assert "sys.set_int_max_str_digits" not in e["message"]


def test_each_error_names_its_field(studio):
    with serve(studio) as url:
        for body, param, words in [
            ({"input": "Hi", "language": "fr"}, "language", "auto-mix"),
            ({"input": "Hi", "accent": "de"}, "accent", "keep"),
            ({"input": "Hi", "preset": "turbo"}, "preset", "greedy"),
            ({"input": "Hi", "seed": 2**63}, "seed", "out of range"),
            ({"input": "Hi", "voice": "nobody"}, "voice", "GET /v1/voices"),
            ({"voice": "x"}, "input", "The field 'input' is missing"),
            ({"input": ""}, "input", "The input is empty"),
            ({"input": "Hi", "stream": True}, "response_format", "not mp3 (the default)"),
            ({"input": "Hi", "stream_format": "sse"}, "stream_format", "'sse' is not supported"),
        ]:
            e = err(speech(url, json=body), 400)
            assert e["param"] == param and words in e["message"], (body, e)
        assert studio.started == 0  # all said before any take


def test_head_and_options_get_openai_errors(studio):
    with serve(studio) as url:
        for method in ("HEAD", "OPTIONS"):
            r = requests.request(method, url + "models", timeout=10)
            assert r.status_code == 405 and r.headers["content-type"] == "application/json"
        assert "not OPTIONS" in requests.options(url + "audio/speech", timeout=10).json()["error"]["message"]


def test_bearer_key_with_extra_spaces_and_the_401_challenge(studio):
    with serve(studio, keys={KEY}) as url:
        r = requests.get(url + "models", headers={"Authorization": f"bearer   {KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        r = requests.get(url + "models", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert err(r, 401)["type"] == "authentication_error" and r.headers["WWW-Authenticate"] == "Bearer"


def test_gate_lets_a_waiter_leave_when_its_stop_says_so():
    gate, left = Gate(max_waiting=1), threading.Event()

    def wait_then_leave():
        with pytest.raises(Stopped):
            with gate.turn(stop=left.is_set):
                pass

    with gate.turn():
        waiter = threading.Thread(target=wait_then_leave)
        waiter.start()
        while gate.waiting != 1:
            time.sleep(0.01)
        left.set()
        waiter.join(5)
        assert not waiter.is_alive() and gate.waiting == 0  # its place is free while the studio is still held


def test_a_damaged_voice_is_named_without_the_servers_folders(studio, tmp_path):
    from core.voices import VoiceLibrary

    folder = tmp_path / "private" / "voices"
    studio.voices = VoiceLibrary(folder, presets_dir=None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "narrator.npz").write_bytes(b"PK\x03\x04 cut short")
    with serve(studio) as url:
        r = speech(url, json={"input": "Hello.", "voice": "narrator"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "voice"
    assert "narrator" in err["message"] and "damaged" in err["message"]
    assert str(tmp_path) not in err["message"] and "private" not in err["message"]
