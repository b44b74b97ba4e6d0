"""The page's handlers on what a demanding user does: a take refused once it starts, a long take
watched while it is made, a saved voice whose transcript is corrected, boxes left empty. A fake
Studio (no models) makes each test take milliseconds; the handlers are the page's own."""
from __future__ import annotations

import numpy as np
import pytest

from app.gate import Gate
from app.handlers import Handlers, Prompt
from app.voice_handlers import VoiceHandlers
from core.errors import AudioError, TextError
from core.synth_types import SentenceResult, SynthResult
from core.voices import Voice, VoiceLibrary, voice_with_transcript

SR = 24000


def quiet(*args, **kwargs):
    return None


class FakeStudio:
    """What the handlers call on a `core.synth.Studio`: one second of audio per sentence."""

    sample_rate, ready_at, device, dtype = SR, None, "cpu", "fp32"

    def __init__(self, voices: VoiceLibrary | None = None):
        self.voices = voices
        self.spoken_with = None  # the voice the last take was asked to speak in

    def status(self) -> dict:
        return {"loaded": True, "missing": []}

    def make_voice(self, wav, sample_rate=None, transcript=None, language=None):
        raise AudioError("The recording has only 1.0 s of speech (1.0 s long).",
                         "Record 3-10 s of clear speech.")

    def with_transcript(self, voice, transcript):
        return voice_with_transcript(voice, transcript)

    def stream(self, text, voice=None, options=None, progress=None, stop=None):
        self.spoken_with = voice
        if "안녕" in text:  # what core refuses once the take has started (its text front-end)
            raise TextError(f"Nothing pronounceable in {text!r}: Hangul is not English, Chinese or Japanese.")
        parts = [p for p in text.split(".") if p.strip()]
        for i, part in enumerate(parts):
            progress((i + 1) / len(parts), f"sentence {i + 1}/{len(parts)}")
            audio, codes = np.full(SR, 0.1, np.float32), np.zeros((75, 8), np.int64)
            yield SentenceResult(i, part + ".", audio, codes, 7 + i, "eos")

    def assemble(self, sentences, options=None):
        return SynthResult(np.concatenate([s.audio for s in sentences]), SR, list(sentences))


def take(h: Handlers, text: str, audio=None, prompt=None, transcript=""):
    """Every output the page gets from one press of Speak, and the error it ended with (or None)."""
    outputs, error = [], None
    try:
        for out in h.speak(text, audio, prompt, transcript, seed="1", progress=quiet):
            outputs.append(out)
    except Exception as e:  # the page's refusal (a gr.Error)
        error = e
    return outputs, error


def is_skip(value) -> bool:
    return isinstance(value, dict) and set(value) == {"__type__"}


def test_a_refused_recording_is_said_in_the_notes_and_the_last_take_stays():
    # Before: the first output cleared the last take away and set the notes to "Making a new
    # take…"; the refusal was only a toast, so once it faded the page said a take was being made.
    h = Handlers(FakeStudio(), Gate())
    outputs, error = take(h, "Hello there.", audio=(16000, np.full(16000, 0.1, np.float32)))
    assert error is not None and "only 1.0 s of speech" in str(error)
    # the whole take, its rows and its state (what Re-roll works on) are never touched
    assert all(is_skip(out[i]) for out in outputs for i in (1, 2, 3))
    assert outputs[-1][4].startswith("⚠️ The recording has only 1.0 s of speech")


def test_a_text_refused_once_the_take_started_is_said_in_the_notes():
    h = Handlers(FakeStudio(), Gate())
    outputs, error = take(h, "안녕하세요")
    assert error is not None and "Nothing pronounceable" in str(error)
    notes = [out[4] for out in outputs if isinstance(out[4], str)]
    # not "Making a new take…", left there by the take that never came
    assert notes[-1].startswith("⚠️ Nothing pronounceable in '안녕하세요'")


def test_the_notes_count_the_sentences_while_a_take_is_made():
    h = Handlers(FakeStudio(), Gate())
    outputs, error = take(h, "One. Two. Three.")
    assert error is None
    notes = [out[4] for out in outputs if isinstance(out[4], str)]
    assert notes[0] == "Making a new take…"
    assert [n for n in notes if "done" in n] == [
        f"Making a new take: sentence {i}/3 done. **Stop** ends it here, keeping the sentences made so far."
        for i in (1, 2, 3)]
    assert notes[-1].startswith("Made 3.0 s of speech")


def saved_voice() -> Voice:
    return Voice("narrator", np.zeros((225, 8), np.int64), [1, 2, 3], "en", "Hello there.")


def test_an_edited_transcript_of_a_saved_voice_is_spoken_with_and_kept():
    # Before: with a saved voice in use (no recording on the page) the edit was ignored, and the
    # end of the take put the voice's old transcript back into the box over what was typed.
    studio = FakeStudio()
    h = Handlers(studio, Gate())
    typed = "Hello their, friend."
    outputs, error = take(h, "Speak now.", prompt=Prompt(None, saved_voice()), transcript=typed)
    assert error is None
    prompt, transcript = outputs[-1][5], outputs[-1][6]
    assert transcript == typed == prompt.voice.transcript == studio.spoken_with.transcript
    assert prompt.voice.text_ids != [1, 2, 3]  # the new words' phonemes
    assert np.array_equal(prompt.voice.audio_tokens, saved_voice().audio_tokens)  # the same voice
    # words the model cannot say are refused, with the way out
    _, error = take(h, "Speak now.", prompt=Prompt(None, saved_voice()), transcript="안녕")
    assert "no English, Chinese or Japanese words" in str(error) and "Type what the recording says" in str(error)


def test_saving_a_saved_voice_with_an_edited_transcript_saves_the_edit(tmp_path):
    library = VoiceLibrary(tmp_path, presets_dir=None)
    vh = VoiceHandlers(FakeStudio(library), Gate())
    vh.save_voice(Prompt(None, saved_voice()), "narrator 2", "Hello their, friend.")
    assert library.load("narrator 2").transcript == "Hello their, friend."


def test_renaming_a_voice_to_its_own_name_says_so(tmp_path, monkeypatch):
    import gradio as gr

    said = []
    monkeypatch.setattr(gr, "Info", said.append)
    library = VoiceLibrary(tmp_path, presets_dir=None)
    library.save(saved_voice())
    VoiceHandlers(FakeStudio(library), Gate()).rename_voice("narrator", " narrator ")
    assert said == ["'narrator' has that name already."]  # not "Renamed 'narrator' to 'narrator'."


def test_a_reroll_with_the_sentence_box_left_empty_says_what_to_type():
    import gradio as gr

    h = Handlers(FakeStudio(), Gate())
    result = take(h, "One. Two.")[0][-1][3]
    with pytest.raises(gr.Error) as refused:
        h.reroll(result, None)
    # not "..., not None."
    assert refused.value.message == "Pick a sentence number from 1 to 2 (the # column)."


def test_a_refused_prompt_check_is_said_in_the_report_too():
    # Before: the upload cleared the report, the refusal was a toast, and once it faded the page
    # showed the clip beside an empty report, as if it had been accepted
    import gradio as gr

    h = Handlers(FakeStudio(), Gate())
    outputs = []
    with pytest.raises(gr.Error, match="only 1.0 s of speech"):
        for out in h.check_prompt((16000, np.full(16000, 0.1, np.float32)), progress=quiet):
            outputs.append(out)
    report, window, transcript, prompt = outputs[-1]
    assert report.startswith("⚠️ The recording has only 1.0 s of speech")
    assert all(is_skip(x) for x in (window, transcript, prompt))


def test_delete_cancelled_in_the_page_deletes_nothing(tmp_path, monkeypatch):
    import gradio as gr

    said = []
    monkeypatch.setattr(gr, "Info", said.append)
    library = VoiceLibrary(tmp_path, presets_dir=None)
    library.save(saved_voice())
    vh = VoiceHandlers(FakeStudio(library), Gate())
    assert all(is_skip(out) for out in vh.delete_voice(None))  # the dialog's Cancel
    assert said == ["Nothing was deleted."] and library.exists("narrator")
    with pytest.raises(gr.Error, match="Pick a saved voice"):  # nothing picked
        vh.delete_voice("")
    vh.delete_voice("narrator")
    assert not library.exists("narrator")


def test_opening_the_voices_tab_reads_the_list_again_and_keeps_the_pick(tmp_path):
    library = VoiceLibrary(tmp_path, presets_dir=None)
    library.save(saved_voice())
    vh = VoiceHandlers(FakeStudio(library), Gate())
    library.save(Voice("another", np.zeros((225, 8), np.int64), [1], "en", "Hi."))  # saved elsewhere
    rows, pick = vh.refresh_voices("narrator")
    assert pick["value"] == "narrator" and set(pick["choices"]) == {"narrator", "another"}
    library.delete("narrator")
    assert vh.refresh_voices("narrator")[1]["value"] == "another"
