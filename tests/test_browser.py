"""Real-browser tests: headless Debian Chromium driven by Playwright, a fake microphone fed from a
speech WAV (espeak-ng), the studio running on the tiny models. Assertions are on what the server
received and produced (durations, levels, saved files), not only on page text. Screenshots go to
the `artifacts` folder. Settings: ../shared/docs/browser-testing.md."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import time

import numpy as np
import pytest
import requests
import soundfile as sf
from playwright.sync_api import expect, sync_playwright

from tests.app_server import running_app, speech_wav

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--headless=new"]
TRANSCRIPT = "Hello, this is a test of the voice cloning studio. I am speaking clearly."
TEXT = ("The quick brown fox jumps over the lazy dog near the river bank today. " * 2
        + "She sells sea shells by the sea shore every single summer morning.")  # two sentences


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def speech(work):
    return speech_wav(work / "speech.wav", TRANSCRIPT)  # about 4.5 s, mono 48 kHz PCM16


@pytest.fixture(scope="module")
def app(tiny_models, work):
    with running_app(tiny_models, work) as server:
        yield server


@pytest.fixture(scope="module")
def chrome(speech):
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (scripts/setup.sh --test installs it)")
    args = FLAGS + ["--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={speech}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


@contextlib.contextmanager
def studio_page(chrome, app):
    """A visit to the studio page in its own browser context (its own Gradio session)."""
    ctx = chrome.new_context(permissions=["microphone"], viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(app.url)
    pg.wait_for_selector("#speak_btn")
    try:
        yield pg
    finally:
        ctx.close()


@pytest.fixture
def tab(chrome, app):
    """A fresh browser tab on the studio page (named `tab`: pytest-playwright owns `page`)."""
    with studio_page(chrome, app) as pg:
        yield pg


def report_numbers(page) -> tuple[float, float]:
    """(whole recording seconds, level dB) from the prompt checker's report."""
    report = page.locator("#prompt_report")
    expect(report).to_contain_text(re.compile("level|Error"), timeout=90_000)
    if "level" not in report.inner_text():  # the check failed: say why (the toast's text)
        toasts = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"the prompt check failed: {toasts or report.inner_text()}")
    text = report.inner_text()
    total = float(re.search(r"of ([\d.]+) s", text).group(1))
    level = float(re.search(r"level (-?[\d.]+) dB", text).group(1))
    return total, level


def upload_prompt(page, path) -> None:
    box = page.locator("#prompt_audio")
    box.locator("input[type=file]").set_input_files(str(path))
    expect(box.get_by_role("button", name="Download")).to_be_visible()


def set_seed(page, seed: str) -> None:
    """Open the advanced knobs and type a seed until the box keeps it. Under a loaded CI machine
    the box, typed into just as the accordion opened, was emptied again a moment later (its
    content mounting after the typing), and Speak then went out with a random seed."""
    page.get_by_text("Advanced sampling").click()
    box = page.locator("#seed textarea")
    expect(box).to_be_visible()
    kept = 0
    for _ in range(20):
        if box.input_value() != seed:
            box.fill(seed)
            box.press("Tab")
            kept = 0
        else:
            kept += 1
            if kept == 3:  # still there after ~0.6 s
                break
        page.wait_for_timeout(200)
    expect(box).to_have_value(seed)


def audio_state(page, elem_id: str):
    """The player's <audio src=blob:> (Playwright's CSS pierces the waveform's shadow DOM)."""
    players = page.locator(f"#{elem_id} audio[src]")
    if players.count() == 0:
        return None
    return players.first.evaluate(
        "a => ({duration: a.duration, t: a.currentTime, ended: a.ended, paused: a.paused})")


def wait_for_audio(page, elem_id: str, timeout_s: float = 90.0) -> float:
    """Wait until the player has loaded some audio; returns its duration in seconds."""
    for _ in range(int(timeout_s / 0.2)):
        state = audio_state(page, elem_id)
        if state and state["duration"] and state["duration"] > 0:
            return state["duration"]
        page.wait_for_timeout(200)
    raise AssertionError(f"no audio in #{elem_id}")


def test_record_prompt_with_browser_microphone(tab, artifacts):
    page = tab
    box = page.locator("#prompt_audio")
    box.get_by_label("Record audio").click()
    start = time.monotonic()
    box.get_by_role("button", name="Record", exact=True).click()
    page.wait_for_timeout(4000)
    box.get_by_role("button", name="Stop", exact=True).click()
    open_s = time.monotonic() - start  # the recorder was open at most this long (a loaded CI: ~5 s)
    expect(box.get_by_role("button", name="Download")).to_be_visible()
    total, level = report_numbers(page)  # measured by the server on what it received
    page.screenshot(path=str(artifacts / "browser_record_prompt.png"), full_page=True)
    assert 3.3 <= total <= open_s + 0.3, (total, open_s)  # the ~4 s recorded, all of it and no more
    assert level > -35.0, level  # speech, not the silence a wrong fake-capture path gives
    expect(page.locator("#transcript textarea")).not_to_have_value("")  # filled by ASR


def test_upload_type_generate_and_hear_the_stream(tab, speech, artifacts):
    page = tab
    upload_prompt(page, speech)
    total, level = report_numbers(page)
    assert abs(total - 4.5) < 0.6 and level > -35.0
    page.locator("#transcript textarea").fill(TRANSCRIPT)
    page.locator("#text textarea").fill(TEXT)
    set_seed(page, "11")  # a fixed seed: the tiny random model sometimes says nothing
    page.click("#speak_btn")

    # the live player gets audio while the take is being made, and plays it to the end
    expect(page.locator("#stream_out audio[src]").first).to_be_attached(timeout=90_000)
    states = []
    for _ in range(200):
        states.append(audio_state(page, "stream_out"))
        if states[-1] and states[-1]["ended"]:
            break
        page.wait_for_timeout(150)
    assert states[-1] and states[-1]["ended"], states[-5:]
    assert any(s and s["t"] > 0 for s in states)

    whole = wait_for_audio(page, "full_out")
    table = page.locator("#sentences")
    expect(table).to_contain_text("quick brown fox")  # one row per sentence
    expect(table).to_contain_text("She sells sea shells")
    # the file the server made for download is what the player holds
    href = page.locator("#full_out a[download]").first.get_attribute("href")
    wav, sr = sf.read(io.BytesIO(requests.get(href, timeout=30).content))
    page.screenshot(path=str(artifacts / "browser_generate.png"), full_page=True)
    assert sr == 24000 and len(wav) > 0
    assert whole == pytest.approx(len(wav) / sr, abs=0.05)
    # the transcript the server used is the one typed
    expect(page.locator("#transcript textarea")).to_have_value(TRANSCRIPT)


def test_save_and_reuse_a_voice(tab, app, speech, artifacts, work):
    page = tab
    upload_prompt(page, speech)
    report_numbers(page)
    page.locator("#transcript textarea").fill(TRANSCRIPT)
    page.click("#check_btn")
    expect(page.locator("#transcript textarea")).to_have_value(TRANSCRIPT)
    page.get_by_role("tab", name="Voices").click()
    page.locator("#voice_name textarea").fill("browser-voice")
    page.click("#save_voice_btn")
    expect(page.locator("#voices_table")).to_contain_text("browser-voice")
    saved = work / "voices" / "browser-voice.npz"
    assert saved.is_file()
    with np.load(saved, allow_pickle=False) as npz:
        frames = max(npz["audio_tokens"].shape)
    assert 3.0 * 75 <= frames <= 4.6 * 75  # the chosen window of the uploaded 4.5 s

    # a new visit: pick the saved voice, use it, speak
    page.reload()
    page.wait_for_selector("#speak_btn")
    page.get_by_role("tab", name="Voices").click()
    page.locator("#voice_pick input").fill("browser-voice")
    page.get_by_role("option", name="browser-voice").click()
    page.click("#use_voice_btn")
    expect(page.locator("#voice_msg")).to_contain_text("browser-voice")
    page.screenshot(path=str(artifacts / "browser_voices.png"), full_page=True)
    page.get_by_role("tab", name="Clone & speak").click()
    expect(page.locator("#transcript textarea")).to_have_value(TRANSCRIPT)
    page.locator("#text textarea").fill("Now I speak with my saved voice.")
    set_seed(page, "3")
    page.click("#speak_btn")
    expect(page.locator("#sentences")).to_contain_text("saved voice", timeout=90_000)
    page.screenshot(path=str(artifacts / "browser_reuse_voice.png"), full_page=True)
    wait_for_audio(page, "full_out")
    expect(page.locator("#sentences")).to_contain_text("3")  # the seed typed in the page

    # Delete asks first: Cancel keeps the voice, OK deletes it
    page.get_by_role("tab", name="Voices").click()
    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click("#delete_voice_btn")
    expect(page.get_by_text("Nothing was deleted.")).to_be_visible()
    assert asked == ["Delete the voice 'browser-voice'? This cannot be undone."] and saved.is_file()
    page.once("dialog", lambda d: d.accept())
    page.click("#delete_voice_btn")
    expect(page.locator("#voices_table")).not_to_contain_text("browser-voice")
    assert not saved.exists()

    # a voice saved elsewhere (another tab, the CLI) shows when the Voices tab is opened again
    from core.voices import Voice, VoiceLibrary
    VoiceLibrary(work / "voices", presets_dir=None).save(
        Voice("saved-elsewhere", np.zeros((225, 8), np.int64), [1, 2, 3], "en", "Hello."))
    page.get_by_role("tab", name="Clone & speak").click()
    page.get_by_role("tab", name="Voices").click()
    expect(page.locator("#voices_table")).to_contain_text("saved-elsewhere")


def test_stop_ends_a_long_take_and_keeps_its_sentences(tab, artifacts):
    page = tab
    page.locator("#text textarea").fill(" ".join(f"This is sentence number {i} of a long take." for i in range(150)))
    set_seed(page, "5")
    page.click("#speak_btn")
    expect(page.locator("#stream_out audio[src]").first).to_be_attached(timeout=90_000)  # it is under way
    page.click("#stop_btn")
    info = page.locator("#speak_info")
    expect(info).to_contain_text("stopped on request after", timeout=120_000)
    n, total = map(int, re.search(r"after (\d+) of (\d+) sentences", info.inner_text()).groups())
    assert 1 <= n < total
    page.screenshot(path=str(artifacts / "browser_stop.png"), full_page=True)
    assert wait_for_audio(page, "full_out") > 0  # the sentences made are the whole take
    expect(page.locator("#sentences")).to_contain_text("sentence number 0 of a long take")


def test_stop_while_waiting_for_a_turn_cancels_that_take(chrome, app, tab, artifacts):
    first = tab  # a long take holds the studio (near the page's 20,000 characters: the tiny models make
    # 150 such sentences in ~6 s on a fast CPU, sooner than the second visitor below gets in line)...
    first.locator("#text textarea").fill(" ".join(f"Sentence {i} holds the studio for a while." for i in range(440)))
    first.click("#speak_btn")
    expect(first.locator("#stream_out audio[src]").first).to_be_attached(timeout=90_000)
    with studio_page(chrome, app) as second:  # ...so a second visitor's take waits for its turn
        second.locator("#text textarea").fill("This take is stopped before it starts.")
        second.click("#speak_btn")
        expect(second.get_by_text(re.compile("queue", re.I)).first).to_be_visible(timeout=30_000)
        second.click("#stop_btn")
        expect(second.locator(".toast-body").first).to_contain_text("will not start", timeout=30_000)
        first.click("#stop_btn")  # the studio is free: the second take is refused, never made
        expect(first.locator("#speak_info")).to_contain_text("stopped on request after", timeout=120_000)
        expect(second.locator(".toast-body").filter(has_text="stopped before it started")).to_be_visible(
            timeout=60_000)
        second.screenshot(path=str(artifacts / "browser_stop_queued.png"), full_page=True)
        assert second.locator("#full_out audio[src]").count() == 0
        expect(second.locator(".error")).to_have_count(0)  # a stop asked for is not an error
        expect(second.locator("#sentences")).not_to_contain_text("stopped before it starts")


def test_closing_the_tab_stops_its_take(chrome, app):
    # a take made for nobody must not hold the studio (and everyone queued behind it)
    with studio_page(chrome, app) as page:
        page.locator("#text textarea").fill(" ".join(f"Sentence {i} is for a visitor who leaves." for i in range(150)))
        page.click("#speak_btn")
        expect(page.locator("#stream_out audio[src]").first).to_be_attached(timeout=90_000)
        stops = app.log().count("take stopped on request")
    deadline = time.monotonic() + 60  # the context is closed: Gradio's unload event
    while time.monotonic() < deadline and app.log().count("take stopped on request") == stops:
        time.sleep(0.1)
    assert "a visitor left during a take (speak): stopping it" in app.log()
    made = re.findall(r"take stopped on request after (\d+) of (\d+) sentences", app.log())
    assert len(made) == stops + 1 and int(made[-1][0]) < int(made[-1][1])



def test_a_refused_action_leaves_its_outputs_usable(app, tab, artifacts):
    # Gradio lays an "Error" badge over every output of a failed event; the studio hides it (the
    # toast says what was wrong), so the transcript box, a next step's input, can still be typed in
    page = tab
    tracebacks = app.log().count("Traceback")
    page.click("#speak_btn")  # no text
    expect(page.locator(".toast-body").filter(has_text="Type the text to speak first")).to_be_visible(timeout=30_000)
    expect(page.locator("#speak_info span.error")).to_have_count(1)  # the event did fail...
    expect(page.locator(".wrap span.error:visible")).to_have_count(0)  # ...and no badge is shown
    page.locator("#transcript textarea").click(timeout=5_000)  # nothing lies over it
    page.keyboard.type("typed after the refusal")
    expect(page.locator("#transcript textarea")).to_have_value("typed after the refusal")
    page.screenshot(path=str(artifacts / "browser_refused.png"), full_page=True)
    # the server's log says it in one line: a user's mistake is not a traceback
    assert "speak refused: Type the text to speak first." in app.log()
    assert app.log().count("Traceback") == tracebacks


def test_a_refused_upload_is_said_beside_the_clip(tab, work, artifacts):
    # the toast fades after a few seconds; the report under the clip keeps saying why it was refused
    page = tab
    fake = work / "notes.wav"
    fake.write_text("not audio, only renamed")
    upload_prompt(page, fake)
    report = page.locator("#prompt_report")
    expect(report).to_contain_text("notes.wav is not a readable audio file", timeout=30_000)
    expect(page.locator(".wrap span.error:visible")).to_have_count(0)
    page.screenshot(path=str(artifacts / "browser_refused_upload.png"), full_page=True)
