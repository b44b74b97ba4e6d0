"""Every named Gradio endpoint through `gradio_client`, against `launch.py` on the tiny models."""
from __future__ import annotations

import re
import threading
import time
import types

import numpy as np
import pytest
import requests
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.app_server import running_app, speech_wav

TRANSCRIPT = "Hello, this is a test of the voice cloning studio."
TEXT = "The quick brown fox jumps over the lazy dog near the river bank today."
LONG_TEXT = ("The quick brown fox jumps over the lazy dog near the river bank today. " * 2
             + "She sells sea shells by the sea shore every single summer morning.")


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("app")
    with running_app(tiny_models, work) as server:
        yield server


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return speech_wav(tmp_path_factory.mktemp("speech") / "speech.wav", TRANSCRIPT)


@pytest.fixture
def client(app):
    return Client(app.url, verbose=False)


def duration(path) -> float:
    info = sf.info(path)
    return info.frames / info.samplerate


def rows(table) -> list[list]:
    return table["data"] if isinstance(table, dict) else table


def value(update):
    """A component's value from an update the client returns as a dict."""
    return update["value"] if isinstance(update, dict) else update


def test_every_action_is_a_named_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ["/check_prompt", "/speak", "/reroll", "/parse_instruction", "/preset_values", "/convert",
                 "/translate", "/save_voice", "/use_voice", "/preview_voice", "/rename_voice", "/delete_voice",
                 "/import_voice", "/export_voice", "/list_voices", "/status", "/stop", "/stop_translation"]:
        assert name in api, name


def test_page_and_status(app, client):
    page = requests.get(app.url, timeout=10)
    assert page.status_code == 200
    assert client.predict(api_name="/status") == ""  # the tiny folder has every model


def test_the_server_loads_the_models_in_the_background(app):
    # once the page is up, the models load without a take asking (the first take need not wait)
    import time

    assert "loading the models in the background" in app.log()
    for _ in range(600):
        if "models loaded in" in app.log():
            break
        time.sleep(0.2)
    assert "models loaded in" in app.log()
    assert "in the background failed" not in app.log()


def test_check_prompt_reports_the_window_and_transcribes(client, wav):
    report, window, transcript = client.predict(handle_file(str(wav)), api_name="/check_prompt")
    total = duration(wav)
    assert f"of {total:.1f} s" in report and "level" in report
    assert 1.0 < duration(window) <= min(total, 10.0) + 0.05
    assert transcript.strip()  # the tiny Whisper's words, but words
    # a typed transcript wins over ASR
    _, _, typed = client.predict(handle_file(str(wav)), "en", TRANSCRIPT, api_name="/check_prompt")
    assert typed == TRANSCRIPT


def test_speak_same_seed_same_audio_and_reroll(client, wav):
    client.predict(handle_file(str(wav)), "en", TRANSCRIPT, api_name="/check_prompt")
    _, full, table, info, transcript = client.predict(LONG_TEXT, seed=11, api_name="/speak")
    assert transcript == TRANSCRIPT
    assert re.search(r"Made [\d.]+ s of speech in [\d.]+ s \(RTF [\d.]+; cpu, fp32\)", info), info
    data = rows(table)
    assert len(data) == 2 and [r[3] for r in data] == [11, 12]  # sentence i uses seed + i
    first, sr = sf.read(full)
    assert sr == 24000 and len(first) > 0
    again, _ = sf.read(client.predict(LONG_TEXT, seed=11, api_name="/speak")[1])
    np.testing.assert_array_equal(first, again)
    assert [r[0] for r in data] == [1, 2]  # counted from 1, as the notes and the re-roll box count
    _, rerolled, table2, notes = client.predict(1, 99, api_name="/reroll")
    assert re.match(r"Re-rolled sentence 1 \(seed 99\) in [\d.]+ s\.", notes), notes
    data2 = rows(table2)
    assert data2[0][3] == 99 and data2[1][3] == 12 and data2[1][1] == data[1][1]
    assert sf.read(rerolled)[0].shape != first.shape or not np.array_equal(sf.read(rerolled)[0], first)
    fresh_seed = rows(client.predict(2, api_name="/reroll")[2])[1][3]  # no seed: a new random one
    assert fresh_seed not in (0, 12)
    with pytest.raises(AppError, match="whole number"):
        client.predict(1, "abc", api_name="/reroll")
    for index in (1.5, 0, -1, 3):  # not rounded or wrapped: said
        with pytest.raises(AppError, match=r"Pick a sentence number from 1 to 2 \(the # column\)"):
            client.predict(index, api_name="/reroll")
    # the sampling boxes name the knob that is wrong (Gradio's own range checks did not)
    for knobs, words in [({"best_of": 100}, "best_of"), ({"top_p": 0}, "top_p"), ({"top_k": 2.5}, "top_k"),
                         ({"rep_window": -1}, "repetition_window")]:
        with pytest.raises(AppError, match=words):
            client.predict("Hello there.", **knobs, api_name="/speak")


def test_speak_streams_chunks_before_the_end(client):
    job = client.submit(LONG_TEXT, None, seed=3, api_name="/speak")
    outputs = list(job)
    _, full, table, info, _ = outputs[0]  # the last take leaves the page as the new one starts
    assert full is None and rows(table) == [] and info == "Making a new take…"
    outputs = outputs[1:]  # the first clears the last take away
    assert len(outputs) >= 3  # two sentence chunks, then the whole take
    streamed = [o[0] for o in outputs[:-1]]
    assert all(isinstance(p, str) and p.endswith(".m3u8") for p in streamed), streamed
    assert outputs[-1][1].endswith(".wav")


def test_stop_ends_the_take_and_keeps_what_was_made(client):
    client.predict(api_name="/stop")  # nothing is being made: a note, not an error
    text = " ".join(f"This is sentence number {i} of the long take." for i in range(150))
    job = client.submit(text, None, seed=5, long_mode="sliding", api_name="/speak")
    deadline = time.monotonic() + 300
    def streamed():  # outputs carrying a sentence's audio (the first only clears the last take)
        return [o for o in job.outputs() if isinstance(o[0], str)]

    while not streamed() and not job.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert streamed(), "no sentence was streamed"
    client.predict(api_name="/stop")
    _, full, table, info, _ = job.result()
    made = re.search(r"stopped on request after (\d+) of (\d+) sentences", info)
    assert made, info
    n, total = int(made[1]), int(made[2])
    assert 1 <= n < total and len(rows(table)) == n  # the finished sentences are the whole take
    assert duration(full) == pytest.approx(sum(float(r[2]) for r in rows(table)), abs=0.05 * n)
    # the next take in this session is not stopped by the old request
    _, full, table, info, _ = client.predict(TEXT, seed=5, api_name="/speak")
    assert "stopped" not in info and len(rows(table)) >= 1


def test_a_cancelled_call_stops_its_take(app, client):
    """gradio_client's job.cancel() (Gradio cancelling the event) stops the engine at once: it does
    not go on making a take nobody will get, holding the studio for everyone else."""
    text = " ".join(f"This is sentence number {i} of a take that is cancelled." for i in range(150))
    before = len(app.log())  # what earlier tests left in the server's log
    job = client.submit(text, None, seed=7, long_mode="sliding", api_name="/speak")
    deadline = time.monotonic() + 300
    while not any(isinstance(o[0], str) for o in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.02)
    job.cancel()
    deadline = time.monotonic() + 60
    while "speak was cancelled by its caller" not in app.log()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "speak was cancelled by its caller: stopping it" in app.log()[before:], app.log()[-3000:]
    # Cancelled mid-sentence, the engine stops at its next step (and says so); cancelled between two
    # sentences, the take's generator is closed and makes no more
    made = re.search(r"take stopped on request after (\d+) of (\d+) sentences", app.log()[before:])
    assert made is None or 1 <= int(made[1]) < int(made[2]), app.log()[-3000:]
    # the same session makes its next take as usual: the cancelled one left no stop behind
    _, full, table, info, _ = client.predict(TEXT, seed=5, api_name="/speak")
    assert "stopped" not in info and len(rows(table)) >= 1


def test_a_cancelled_translation_or_reroll_stops_too():
    """The same for the handlers that return once (translate, reroll): the cancel reaches the take."""
    import asyncio

    from app.handlers import TakeControl, stop_when_cancelled

    control, ended = TakeControl(), threading.Event()

    def translate(audio, control):
        with control.take():
            while not control.stop:  # the engine, asking between its steps
                time.sleep(0.01)
            ended.set()
            return "stopped"

    async def cancel_it():
        task = asyncio.ensure_future(stop_when_cancelled(translate)(None, control))
        await asyncio.sleep(0.2)
        assert control.running and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert ended.wait(5) and not control.busy()


def test_speak_errors_are_messages(client):
    with pytest.raises(AppError, match="Type the text to speak"):
        client.predict("   ", api_name="/speak")
    fresh = Client(client.src, verbose=False)
    with pytest.raises(AppError, match="Generate something first"):
        fresh.predict(0, api_name="/reroll")
    with pytest.raises(AppError, match="Record or upload"):
        fresh.predict(None, api_name="/check_prompt")
    with pytest.raises(AppError, match="25,000 characters; one take on this page holds at most 20,000"):
        client.predict("word " * 5000, None, api_name="/speak")
    # bad knobs are named before anything is generated
    with pytest.raises(AppError, match=r"top_p must be in \(0, 1\]"):
        client.predict("Hello.", None, top_p=0, api_name="/speak")
    with pytest.raises(AppError, match="seed .* out of range"):
        client.predict("Hello.", None, seed="1" * 30, api_name="/speak")


def test_ui_fields_that_are_not_numbers_are_named():
    import gradio as gr

    from app.handlers import make_options

    def knobs(**kw):
        base = dict(language=None, accent=None, preset=None, top_k=None, top_p=None, temperature=None,
                    rep_window=None, best_of=None, seed=None, speed=None, instruction="", long_mode=None)
        return make_options(**{**base, **kw})

    for field, value, says in [("top_k", "abc", "top_k must be a whole number, not 'abc'"),
                               ("top_k", 2.5, "top_k must be a whole number"),
                               ("top_p", "x", "top_p must be a number"),
                               ("best_of", "3 beams", "best of must be a whole number")]:
        with pytest.raises(gr.Error, match=re.escape(says)):
            knobs(**{field: value})
    assert knobs(top_k=3.0, speed="").top_k == 3 and knobs(speed=None).speed == 1.0
    with pytest.raises(Exception, match="speed 0.0"):  # 0 was taken as "empty" and became 1.0
        knobs(speed=0)


def test_instruction_plan_and_presets(client):
    plan = client.predict("twice as fast and louder", api_name="/parse_instruction")
    assert "speed x2.00" in plan and "dB" in plan
    top_k, top_p, temperature, window, best_of = client.predict("stable", api_name="/preset_values")
    assert (top_k, top_p, temperature, best_of) == (20, 0.8, 0.8, 3)
    assert client.predict("greedy", api_name="/preset_values")[0] == 1


def test_speak_applies_speed_and_instruction(client):
    base = duration(client.predict(TEXT, preset="greedy", api_name="/speak")[1])
    fast = client.predict(TEXT, preset="greedy", speed=2.0, api_name="/speak")
    assert duration(fast[1]) == pytest.approx(base / 2, rel=0.15)
    slow = client.predict(TEXT, preset="greedy", instruction="much slower", api_name="/speak")
    assert duration(slow[1]) > base * 1.2
    # "prompt" mode changes the voice prompt, not the output's length
    deeper = client.predict(TEXT, preset="greedy", instruction="much deeper", instruction_mode="prompt",
                            api_name="/speak")
    assert duration(deeper[1]) > 0


def test_convert(client, wav):
    out, plan = client.predict(handle_file(str(wav)), "twice as fast", api_name="/convert")
    assert "speed x2.00" in plan
    assert duration(out) == pytest.approx(duration(wav) / 2, rel=0.1)
    with pytest.raises(AppError, match="instruction"):
        client.predict(handle_file(str(wav)), "", api_name="/convert")
    with pytest.raises(AppError, match=r"asks for no change \(not understood: blorp\)"):
        client.predict(handle_file(str(wav)), "blorp", api_name="/convert")


def test_translate(client, wav):
    out, text = client.predict(handle_file(str(wav)), api_name="/translate")
    assert "English:" in text and "heard" in text
    assert duration(out) > 0


def test_voice_library_round_trip(client, wav, tmp_path):
    client.predict(handle_file(str(wav)), "en", TRANSCRIPT, api_name="/check_prompt")
    table, pick = client.predict("api-voice", api_name="/save_voice")
    names = [r[0] for r in rows(table)]
    assert "api-voice" in names and value(pick) == "api-voice"
    saved = next(r for r in rows(table) if r[0] == "api-voice")
    assert saved[1] == "en" and saved[3] == TRANSCRIPT and 1.0 < saved[2] <= 10.0

    exported = client.predict("api-voice", api_name="/export_voice")
    with np.load(exported, allow_pickle=False) as npz:
        assert set(npz.files) >= {"audio_tokens", "text_tokens", "lang_code"}
        assert 8 in npz["audio_tokens"].shape
    table, pick = client.predict(handle_file(exported), "imported-voice", api_name="/import_voice")
    assert "imported-voice" in [r[0] for r in rows(table)]

    table, pick = client.predict("api-voice", "renamed-voice", api_name="/rename_voice")
    names = [r[0] for r in rows(table)]
    assert "renamed-voice" in names and "api-voice" not in names and value(pick) == "renamed-voice"

    preview = client.predict("renamed-voice", api_name="/preview_voice")
    assert duration(preview) > 0

    transcript, message, _, report, window = client.predict("renamed-voice", api_name="/use_voice")
    assert transcript == TRANSCRIPT and "renamed-voice" in message
    assert "renamed-voice" in report and window is None  # the old recording's report and window went
    with pytest.raises(AppError, match="already exists"):  # saving over a voice is refused, not silent
        client.predict("renamed-voice", api_name="/save_voice")
    with pytest.raises(AppError, match="bundled voice"):
        client.predict("paimon", api_name="/save_voice")
    _, full, _, _, used = client.predict("Speaking with my saved voice now.", seed=1, api_name="/speak")
    assert used == TRANSCRIPT and duration(full) > 0

    for name in ("renamed-voice", "imported-voice"):
        _, pick = client.predict(name, api_name="/delete_voice")
        assert value(pick) is None  # nothing picked: a second Delete cannot remove the next voice
    table, _ = client.predict(api_name="/list_voices")
    assert not {"renamed-voice", "imported-voice"} & {r[0] for r in rows(table)}
    with pytest.raises(AppError, match="No saved voice"):
        client.predict("renamed-voice", api_name="/use_voice")


def test_eight_clients_at_once_each_get_their_own_result(app):
    """Same seed and text alone and under load -> the same audio; the queue keeps them apart."""
    texts = [f"Client {i} here." for i in range(8)]
    solo = Client(app.url, verbose=False)
    # greedy: quick on the tiny model, and each text has exactly one right answer
    expected = [sf.read(solo.predict(t, preset="greedy", api_name="/speak")[1])[0] for t in texts]
    assert len({e.tobytes() for e in expected}) == 8  # so a mix-up between clients would show
    results: dict[int, np.ndarray] = {}

    def run(i):
        c = Client(app.url, verbose=False)
        results[i] = sf.read(c.predict(texts[i], preset="greedy", api_name="/speak")[1])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(8))
    for i in range(8):
        np.testing.assert_array_equal(results[i], expected[i])


def test_take_notes_say_how_fast_and_where_a_faster_mode_is():
    # The notes under a take: its speed, a pointer to int8 / int4 only where fp32 / bf16 on a
    # CPU was slow, then the warnings as a list.
    from types import SimpleNamespace

    from app.format import take_markdown

    take = SimpleNamespace(audio=np.zeros(48000, np.float32), sample_rate=24000, warnings=["sentence 2: cut"])
    slow = take_markdown(take, 6.0, "cpu", "fp32")
    assert slow.startswith("Made 2.0 s of speech in 6.0 s (RTF 3.00; cpu, fp32).") and "--dtype int8" in slow
    assert slow.endswith("\n\n- sentence 2: cut")
    assert "--dtype" not in take_markdown(take, 1.0, "cpu", "int8")
    assert "--dtype" not in take_markdown(take, 6.0, "cuda", "fp32")
    assert take_markdown(take, None) == "- sentence 2: cut"  # a re-roll: no timing


# ---------------------------------------------------------------- the Translate tab's Stop (handlers)

class _TranslatingStudio:
    """Stands in for core.synth.Studio.translate: three sentences, stop() asked before each (as
    the engine asks between steps), a partial take noted as the real one notes it. `press(i)` runs
    just before sentence i: the user pressing Stop then."""

    sample_rate = 24000

    def __init__(self):
        self.press, self.asked = (lambda i: None), 0

    def status(self):
        return {"loaded": True}

    def translate(self, wav, sample_rate=None, progress=None, stop=None):
        from types import SimpleNamespace

        from core.errors import Stopped

        made = []
        for i in range(3):
            self.press(i)
            self.asked += 1
            if stop():
                break
            made.append(SimpleNamespace(text=f"Sentence {i}."))
        if not made:
            raise Stopped("The take was stopped before its first sentence was made.")
        warnings = ["heard (ja): こんにちは"] + ([f"stopped on request after {len(made)} of 3 sentences"]
                                                 if len(made) < 3 else [])
        return SimpleNamespace(sentences=made, warnings=warnings, sample_rate=self.sample_rate,
                               audio=np.zeros(2400 * len(made), np.float32))


def test_the_translate_stop_button_ends_the_translation_and_keeps_what_was_made():
    import gradio as gr

    from app.gate import Gate
    from app.handlers import Handlers, TakeControl

    clip, quiet = (16000, np.zeros(16000, np.float32)), (lambda *a, **k: None)
    control, studio = TakeControl(), _TranslatingStudio()
    h, visit = Handlers(studio, Gate()), types.SimpleNamespace(session_hash="visit-1")

    def press_at(n):
        def press(i):
            if i == n:
                h.stop(control)
        return press

    studio.press = press_at(1)  # Stop while the second sentence is being made
    h.queue_translation(control, visit)
    assert control.busy()
    (sr, audio), text = h.translate(clip, control, progress=quiet, request=visit)
    assert text.splitlines() == ["heard (ja): こんにちは", "English: Sentence 0.",
                                 "Stopped on request after 1 of 3 sentences"]
    assert len(audio) == 2400 and not control.busy() and not control.stop  # the next one starts clean
    # stopped while it waited for its turn: not made at all, and a note rather than an error
    h.queue_translation(control, visit)
    h.stop(control)
    asked = studio.asked
    assert h.translate(clip, control, progress=quiet, request=visit) == (gr.skip(), gr.skip())
    assert studio.asked == asked and not control.busy()
    # stopped while Whisper was listening, before the first sentence: a note too
    studio.press = press_at(0)
    h.queue_translation(control, visit)
    assert h.translate(clip, control, progress=quiet, request=visit) == (gr.skip(), gr.skip())
    assert studio.asked == asked + 1 and not control.busy()
    # and without a stop, the whole translation
    studio.press = press_at(-1)
    h.queue_translation(control, visit)
    _, text = h.translate(clip, control, progress=quiet, request=visit)
    assert text.splitlines()[1:] == ["English: Sentence 0. Sentence 1. Sentence 2."]


def test_closing_the_tab_stops_its_translation_too():
    from app.gate import Gate
    from app.handlers import Handlers, TakeControl

    h, visit = Handlers(_TranslatingStudio(), Gate()), types.SimpleNamespace(session_hash="visit-2")
    speak, translate = TakeControl(), TakeControl()
    h.queue_take(speak, visit)
    h.queue_translation(translate, visit)
    h.leave(visit)
    assert speak.stop and translate.stop
