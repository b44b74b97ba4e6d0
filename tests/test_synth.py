"""The synthesis pipeline end to end on the tiny random models folder.

Tiny random weights speak noise, so the tests check the plumbing that real weights rely on: which
prompt and text reach the engine (a spy records every call), seeds, sentence order, batching,
re-rolls, speed and instructions measured on the audio, prompt-mode transforms measured on the
prompt audio that gets encoded, exports and error handling.
"""
from __future__ import annotations

import io
import itertools
import time
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from core import longform
from core.convert import EditPlan, apply_plan
from core.errors import Stopped, StudioError, TextError, VoiceError
from core.sampling import Sampling
from core.synth import PRESETS, Studio, SynthOptions, SynthResult
from tests.test_convert import f0_stats, level_db

SR = 24000
HOP = 320
# short sentences keep the tiny model quick: at most 1 s of audio per sentence
GREEDY = SynthOptions(preset="greedy", seed=7, max_sentence_s=1.0)
LONG = "Hello there. This is a test. 你好，世界。Good bye now."


class Spy:
    """Wraps the engine and records (prompt_codes, text_ids, text_langs, prompt_text_len) per sentence;
    raises for the calls `fail_if(call)` picks."""

    def __init__(self, lm, fail_if=None):
        self.lm, self.calls, self.batches, self.fail_if = lm, [], [], fail_if

    def _record(self, args):
        call = {k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in args.items()}
        self.calls.append(call)
        if self.fail_if is not None and self.fail_if(call):
            raise RuntimeError("boom")

    def generate(self, text_ids, text_langs, prompt_text_len=0, prompt_codes=None, sampling=None, stop=None):
        self._record(dict(text_ids=text_ids, text_langs=text_langs, prompt_text_len=prompt_text_len,
                          prompt_codes=prompt_codes))
        return self.lm.generate(text_ids, text_langs, prompt_text_len, prompt_codes, sampling=sampling, stop=stop)

    def generate_batch(self, requests, sampling=None, stop=None):
        self.batches.append(len(requests))
        for r in requests:
            self._record(dict(text_ids=r.text_ids, text_langs=r.text_langs, prompt_text_len=r.prompt_text_len,
                              prompt_codes=r.prompt_codes))
        return self.lm.generate_batch(requests, sampling, stop=stop)


@pytest.fixture(scope="module")
def studio(tiny_models, tmp_path_factory):
    return Studio(tiny_models, offline=True, voices_dir=tmp_path_factory.mktemp("voices"))


@pytest.fixture
def spy(studio, monkeypatch):
    models = studio._load()
    s = Spy(models.lm)
    monkeypatch.setattr(models, "lm", s)
    return s


@pytest.fixture(scope="module")
def en_voice(studio, golden):
    return studio.make_voice(golden / "prompts" / "en-1.wav", transcript="I know, I know. It's just.",
                             language="en", name="en-one")


def frames(result: SynthResult) -> int:
    return sum(len(s.codes) for s in result.sentences if s.ok)


# ---------------------------------------------------------------- voices

def test_no_voice(studio, spy):
    result = studio.synthesize("Hello world.", None, GREEDY)
    assert result.sample_rate == SR and result.audio.dtype == np.float32
    assert len(result.audio) == HOP * frames(result) > 0
    assert [s.seed for s in result.sentences] == [7]
    call = spy.calls[0]
    assert call["prompt_codes"].shape == (0, 8) and call["prompt_text_len"] == 0
    assert set(call["text_langs"].tolist()) == {0}
    again = studio.synthesize("Hello world.", None, GREEDY)
    assert np.array_equal(again.audio, result.audio)


def test_clone_from_recording(studio, spy, en_voice):
    voice, report = en_voice
    assert voice.audio_tokens.dtype == np.int64 and voice.audio_tokens.shape[1] == 8
    assert abs(len(voice.audio_tokens) / 75 - report.window_s) < 0.05 and report.window_s <= 15
    assert voice.language == "en" and voice.text_ids and voice.transcript.startswith("I know")
    result = studio.synthesize("你好，世界。", voice, GREEDY)  # cross-lingual: English voice, Chinese text
    call = spy.calls[0]
    assert np.array_equal(call["prompt_codes"], voice.audio_tokens)
    n = len(voice.text_ids)
    assert call["prompt_text_len"] == n and call["text_ids"][:n].tolist() == voice.text_ids
    assert set(call["text_langs"][:n].tolist()) == {0} and set(call["text_langs"][n:].tolist()) == {1}
    assert len(result.audio) == HOP * frames(result)


def test_accent_forces_target_language(studio, spy, en_voice):
    voice, _ = en_voice
    studio.synthesize("你好，世界。", voice, replace(GREEDY, accent="en"))
    n = len(voice.text_ids)
    assert set(spy.calls[0]["text_langs"][n:].tolist()) == {0}


def test_saved_voice_by_name_and_object(studio, spy, en_voice):
    voice, _ = en_voice
    studio.voices.save(voice)
    by_obj = studio.synthesize("Good morning.", voice, GREEDY)
    by_name = studio.synthesize("Good morning.", "en-one", GREEDY)
    loaded = studio.synthesize("Good morning.", studio.voices.load("en-one"), GREEDY)
    assert np.array_equal(by_obj.audio, by_name.audio) and np.array_equal(by_obj.audio, loaded.audio)
    assert np.array_equal(spy.calls[1]["prompt_codes"], voice.audio_tokens)
    with pytest.raises(StudioError):
        studio.synthesize("Hi.", "no-such-voice", GREEDY)


def test_make_voice_needs_speech(studio):
    with pytest.raises(StudioError):
        studio.make_voice(np.zeros(SR * 3, np.float32), sample_rate=SR, transcript="hello")


# ---------------------------------------------------------------- long text

def test_fixed_mode_batched_equals_one_by_one(studio, spy, en_voice):
    voice, _ = en_voice
    seen = []
    opts = SynthOptions(seed=11, max_chars=20, max_sentence_s=1.0)  # "balanced": sampled, seeded
    batched = studio.synthesize(LONG, voice, opts, progress=lambda f, msg: seen.append(f))
    assert len(batched.sentences) >= 4 and max(spy.batches) > 1
    single = studio.synthesize(LONG, voice, replace(opts, batch=False))
    for a, b in zip(batched.sentences, single.sentences):
        assert np.array_equal(a.codes, b.codes)
    assert [s.seed for s in batched.sentences] == list(range(11, 11 + len(batched.sentences)))
    assert seen == pytest.approx([(i + 1) / len(batched.sentences) for i in range(len(batched.sentences))])
    for call in spy.calls:  # fixed: every sentence gets the voice prompt
        assert np.array_equal(call["prompt_codes"], voice.audio_tokens)
    assert len(batched.audio) == HOP * frames(batched)


def test_sliding_mode_continues_from_previous_sentence(studio, spy):
    result = studio.synthesize("Hello there. Good bye now. See you soon. Take care.", None,
                               replace(GREEDY, prompt_mode="sliding", max_chars=15))
    sents = result.sentences
    assert len(sents) == len(spy.calls) >= 3
    continued = 0
    for i in range(1, len(sents)):
        prev, call = sents[i - 1], spy.calls[i]
        if 37 <= len(prev.codes) <= 750:  # long enough to continue from, short enough to keep < 22 s
            assert np.array_equal(call["prompt_codes"], prev.codes)
            assert call["text_ids"][:call["prompt_text_len"]].tolist() == spy.calls[i - 1]["text_ids"][
                spy.calls[i - 1]["prompt_text_len"]:].tolist()
            continued += 1
        else:
            assert call["prompt_codes"].shape[0] == 0  # back to the (empty) voice prompt, with a note
            assert any("used the voice prompt" in w for w in result.warnings)
    assert continued >= 1


def test_stream_yields_in_order_then_assembles(studio):
    opts = replace(GREEDY, max_chars=20)
    streamed = list(studio.stream(LONG, None, opts))
    assert [s.index for s in streamed] == list(range(len(streamed))) and len(streamed) >= 4
    for s in streamed:
        assert len(s.audio) == HOP * len(s.codes)
    whole = studio.assemble(streamed, options=opts)
    direct = studio.synthesize(LONG, None, opts)
    assert np.array_equal(whole.audio, direct.audio)


def test_a_one_sentence_take_is_decoded_once(studio, monkeypatch):
    # Its codes are the sentence's: the sentence's decoded and post-processed audio is the take's.
    vocos = studio._load().vocos
    calls = []
    decode = vocos.decode
    monkeypatch.setattr(vocos, "decode", lambda codes: calls.append(len(codes)) or decode(codes))
    opts = replace(GREEDY, speed=1.25, instruction="deeper")
    result = studio.synthesize("Hello world.", None, opts)
    assert len(calls) == 1 and len(result.sentences) == 1
    assert np.array_equal(result.audio, result.sentences[0].audio) and len(result.audio)
    # other options for the whole take: decoded again and post-processed with those
    slower = studio.assemble(result.sentences, options=replace(opts, speed=0.8))
    assert len(calls) == 2 and len(slower.audio) > 1.4 * len(result.audio)


def test_a_sentence_cut_by_the_length_cap_says_so(studio):
    result = studio.synthesize("This is a fairly long sentence that will not fit in the cap.", None,
                               SynthOptions(seed=1, max_sentence_s=0.3))
    assert result.sentences[0].stop_reason == "max_frames"  # (seed 1 on the tiny model: it does not end by itself)
    assert any(w.startswith("sentence 1: stopped at the length cap after 0.3 s") for w in result.warnings)


def test_reroll_changes_only_that_sentence(studio):
    result = studio.synthesize(LONG, None, SynthOptions(seed=3, max_chars=20, max_sentence_s=1.0))
    new = studio.reroll(result, 1)
    assert new.sentences[1].seed != result.sentences[1].seed
    for i, (a, b) in enumerate(zip(result.sentences, new.sentences)):
        if i != 1:
            assert np.array_equal(a.codes, b.codes) and a.seed == b.seed
    same = studio.reroll(new, 1, seed=result.sentences[1].seed)
    assert np.array_equal(same.sentences[1].codes, result.sentences[1].codes)
    assert np.array_equal(same.audio, result.audio)
    with pytest.raises(StudioError):
        studio.reroll(result, 99)


# ---------------------------------------------------------------- speed and instructions

def test_speed_keeps_codes_changes_duration(studio):
    base = studio.synthesize("Hello world.", None, GREEDY)
    fast = studio.synthesize("Hello world.", None, replace(GREEDY, speed=2.0))
    slow = studio.synthesize("Hello world.", None, replace(GREEDY, speed=0.5))
    assert np.array_equal(base.sentences[0].codes, fast.sentences[0].codes)
    assert len(fast.audio) / len(base.audio) == pytest.approx(0.5, rel=0.03)
    assert len(slow.audio) / len(base.audio) == pytest.approx(2.0, rel=0.03)
    with pytest.raises(StudioError, match="speed"):
        SynthOptions(speed=3)


@pytest.mark.parametrize("instruction,db,speed", [("quieter, 2x speed", -4, 2.0), ("声音小一点，慢一点", -2, 0.8 ** 0.5),
                                                  ("音量を下げて", -4, 1.0)])
def test_dsp_instruction_measured_on_output(studio, instruction, db, speed):
    base = studio.synthesize("Hello world.", None, GREEDY)
    out = studio.synthesize("Hello world.", None, replace(GREEDY, instruction=instruction))
    assert out.instruction_mode == "dsp" and out.plan.unknown_words == []
    assert out.plan.gain_db == pytest.approx(db) and out.plan.speed == pytest.approx(speed)
    assert np.array_equal(out.sentences[0].codes, base.sentences[0].codes)
    assert len(out.audio) / len(base.audio) == pytest.approx(1 / speed, rel=0.03)
    # level against the same take time-stretched alone (stretching noise-like audio moves its RMS)
    stretched = apply_plan(base.audio, SR, EditPlan(speed=out.plan.speed))
    assert level_db(out.audio) - level_db(stretched) == pytest.approx(db, abs=0.1)


def test_unknown_instruction_words_are_reported(studio):
    out = studio.synthesize("Hello world.", None, replace(GREEDY, instruction="banana voice, louder"))
    assert out.plan.unknown_words == ["banana"] and any("banana" in w for w in out.warnings)


def test_prompt_mode_transforms_the_prompt_before_encoding(studio, spy, en_voice):
    voice, report = en_voice
    out = studio.synthesize("Hello world.", voice, replace(GREEDY, instruction="+3 semitones, slower",
                                                            instruction_mode="prompt"))
    assert out.instruction_mode == "prompt"
    prompt = out.prompt_audio
    assert len(prompt) / len(report.wav) == pytest.approx(1 / 0.8, rel=0.03)
    assert f0_stats(prompt)[0] / f0_stats(report.wav)[0] == pytest.approx(2 ** (3 / 12), rel=0.04)
    # what the LM saw is that audio, encoded; the voice's own codes were not used
    codes = spy.calls[0]["prompt_codes"]
    assert np.array_equal(codes, studio._load().codec.encode(prompt, SR).numpy())
    assert len(codes) == pytest.approx(len(voice.audio_tokens) / 0.8, abs=2)
    # the output itself gets no DSP: same codes -> audio length is exactly the frames
    assert len(out.audio) == HOP * frames(out)


def test_prompt_mode_on_saved_voice_and_leftover_effects(studio, en_voice):
    voice, _ = en_voice
    studio.voices.save(replace(voice, name="saved-one"))
    saved = studio.voices.load("saved-one")
    studio._prompt_wavs.clear()  # as after a restart: only the codes are known -> Vocos decode first
    out = studio.synthesize("Hello world.", saved, replace(GREEDY, instruction="much louder, add reverb",
                                                            instruction_mode="prompt"))
    assert out.instruction_mode == "prompt+dsp"
    decoded = studio._load().vocos.decode(__import__("torch").from_numpy(saved.audio_tokens)).numpy()
    assert len(out.prompt_audio) == len(decoded)
    assert level_db(out.prompt_audio) - level_db(decoded) == pytest.approx(8, abs=1.5)  # limiter may trim peaks
    assert len(out.audio) > HOP * frames(out)  # the reverb tail: applied on the output


def test_prompt_mode_without_voice_falls_back_to_dsp(studio):
    out = studio.synthesize("Hello world.", None, replace(GREEDY, instruction="quieter", instruction_mode="prompt"))
    assert out.instruction_mode == "dsp" and any("needs a voice" in w for w in out.warnings)


# ---------------------------------------------------------------- output and errors

@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_export_formats(studio, fmt):
    result = studio.synthesize("Hi.", None, GREEDY)
    data, sr = sf.read(io.BytesIO(result.export(fmt)), dtype="float32")
    assert sr == SR and abs(len(data) - len(result.audio)) <= 2400


def test_bad_input_is_one_clear_error(studio):
    with pytest.raises(TextError):
        studio.synthesize("   ", None, GREEDY)
    with pytest.raises(StudioError, match="preset"):
        SynthOptions(preset="wild")
    with pytest.raises(StudioError, match="language"):
        SynthOptions(language="fr")
    for bad in ({"speed": "fast"}, {"speed": None}, {"speed": float("nan")}, {"max_sentence_s": "x"},
                {"speed": "1.5"}, {"speed": True}, {"max_chars": "x"}, {"max_chars": -5}, {"instruction": 5},
                {"preset": ["stable"]}):
        with pytest.raises(StudioError, match=f"(out-of-range|Unknown) {next(iter(bad))}"):  # not a TypeError
            SynthOptions(**bad)
    # numpy's numbers and a None instruction are taken, as plain Python values
    opts = SynthOptions(speed=np.float32(1.5), seed=np.int64(5), instruction=None)
    assert (opts.speed, opts.seed, opts.instruction) == (1.5, 5, "")
    assert type(opts.speed) is float and type(opts.seed) is int
    for call in (lambda: studio.convert(np.zeros(2400, np.float32), 24000, None),
                 lambda: studio.make_voice(np.zeros(2400, np.float32), sample_rate=0)):
        with pytest.raises(StudioError):  # not a TypeError / ZeroDivisionError
            call()
    with pytest.raises(VoiceError):
        studio.synthesize("Hi.", 42, GREEDY)
    assert set(PRESETS) >= {"stable", "balanced", "expressive", "reference", "greedy"}


def test_seeds_are_64_bit_whole_numbers(studio):
    for seed in (2**63, -(2**63) - 1, 10**30):
        with pytest.raises(StudioError, match="seed .* out of range") as e:
            SynthOptions(seed=seed)
        assert "whole number from" in e.value.user_message()
        with pytest.raises(StudioError, match="out of range"):
            Sampling(seed=seed)
    with pytest.raises(StudioError, match="whole number"):
        SynthOptions(seed=1.5)
    with pytest.raises(StudioError, match=r"top_p must be in \(0, 1\]"):  # at once, not per sentence
        SynthOptions(top_p=2.0)
    with pytest.raises(StudioError, match="Unreadable sampling setting"):
        SynthOptions(temperature="warm")
    # the edges work, and sentence i's seed (seed + i) stays a 64-bit seed at the top
    for seed in (-(2**63), 2**63 - 1):
        result = studio.synthesize("Hi. Bye.", None, replace(GREEDY, preset="stable", seed=seed, max_chars=4))
        assert all(s.ok for s in result.sentences) and result.seeds[0] == seed
    assert result.seeds[1] == -(2**63)
    with pytest.raises(StudioError, match="out of range"):
        studio.reroll(result, 0, seed=2**64)


def test_one_failing_sentence_keeps_the_others(studio, spy):
    opts = replace(GREEDY, max_chars=20)
    studio.synthesize(LONG, None, replace(opts, batch=False))
    bad_ids = spy.calls[1]["text_ids"]  # no voice: the text ids are the sentence's own
    spy.fail_if = lambda call: np.array_equal(call["text_ids"], bad_ids)
    for batch in (False, True):  # a failed batch is retried one by one: only the bad sentence is lost
        result = studio.synthesize(LONG, None, replace(opts, batch=batch))
        bad = result.sentences[1]
        assert not bad.ok and bad.stop_reason == "error" and "boom" in bad.warnings[0]
        assert all(s.ok for i, s in enumerate(result.sentences) if i != 1)
        assert any("sentence 2: generation failed" in w for w in result.warnings)
        assert len(result.audio) == HOP * frames(result) > 0
    spy.fail_if = lambda call: True
    with pytest.raises(StudioError, match="every sentence"):
        studio.synthesize("Hello.", None, GREEDY)


class Silent(Spy):
    """The first `n` engine calls stop at once (EOS on the first step: no codes), as a sampled
    sentence now and then does; later calls run the real engine."""

    def __init__(self, lm, n):
        super().__init__(lm)
        self.left = n

    def _silence(self, gens):
        from core.lm_io import Generation

        out = []
        for g in gens:
            if self.left > 0:
                self.left -= 1
                g = Generation(torch.zeros(0, 8, dtype=torch.long), "eos", [], g.seed)
            out.append(g)
        return out

    def generate(self, *args, **kwargs):
        return self._silence([super().generate(*args, **kwargs)])[0]

    def generate_batch(self, requests, sampling=None, stop=None):
        return self._silence(super().generate_batch(requests, sampling, stop))


def test_a_sampled_sentence_that_stops_at_once_is_drawn_again(studio, monkeypatch):
    import core.sentences as sentences

    models = studio._load()
    sampled = SynthOptions(max_sentence_s=1.0)  # the balanced preset: sampled, a random seed
    # the studio's "random" seeds made a known sequence: the tiny model itself then never stops at
    # once here, so every silent take is the wrapper's and the call counts are exact
    seeds = itertools.count(1000)
    for module in (sentences, longform):  # the take's base seed (longform), the re-draws (sentences)
        monkeypatch.setattr(module, "new_seed", lambda: next(seeds))
    silent = Silent(models.lm, 1)
    monkeypatch.setattr(models, "lm", silent)
    result = studio.synthesize("Hello there.", None, sampled)
    s = result.sentences[0]
    assert s.ok and len(s.codes) > 0 and len(silent.calls) == 2
    assert any("stopped at once" in w and f"seed {s.seed}" in w for w in s.warnings)
    # the seed reported is the one that spoke: it reproduces the sentence
    assert np.array_equal(studio.reroll(result, 0, seed=s.seed).sentences[0].codes, s.codes)
    # a re-roll with a seed the user gives keeps it, silent or not; one without draws again
    silent.left, silent.calls = 1, []
    assert len(studio.reroll(result, 0, seed=s.seed).sentences[0].codes) == 0 and len(silent.calls) == 1
    silent.left, silent.calls = 1, []
    assert len(studio.reroll(result, 0).sentences[0].codes) > 0 and len(silent.calls) == 2
    # a seed the user chose, or greedy decoding, is not drawn again: the sentence says so instead
    for opts in (replace(sampled, seed=5), GREEDY):
        silent.left, silent.calls = 1, []
        s = studio.synthesize("Hello there.", None, opts).sentences[0]
        assert len(s.codes) == 0 and len(silent.calls) == 1
        assert any("produced no audio" in w for w in s.warnings)
    # silent every time: REROLLS more draws, then the same warning
    silent.left, silent.calls = 99, []
    s = studio.synthesize("Hello there.", None, sampled).sentences[0]
    assert len(s.codes) == 0 and len(silent.calls) == 1 + sentences.REROLLS
    assert any("produced no audio" in w for w in s.warnings)
    # a draw that fails keeps the silent take (and its warning) instead of losing the take
    silent.left, silent.calls = 1, []
    silent.fail_if = lambda call: len(silent.calls) == 2  # the first sentence's draw again
    result = studio.synthesize("Hello there. Good bye now.", None, replace(sampled, batch=False, max_chars=15))
    first, second = result.sentences
    assert len(silent.calls) == 3 and len(first.codes) == 0 and second.ok and len(second.codes) > 0
    assert any("produced no audio" in w for w in first.warnings)


def test_convert_clip_without_models(golden):
    studio = Studio("/nonexistent-models", offline=True)
    wav, sr = sf.read(golden / "prompts" / "ja-1.wav", dtype="float32")
    out, plan = studio.convert(wav, sr, "2倍速")
    assert plan.speed == 2.0 and len(out) / len(wav) == pytest.approx(0.5, rel=0.02)
    assert studio.status()["loaded"] is False


# ---------------------------------------------------------------- speech recognition paths

@pytest.fixture
def fast_asr(studio, tiny_models, monkeypatch):
    """The tiny faster-whisper model with greedy decoding (random words, real flow)."""
    from core.asr import AsrOptions, Transcriber

    asr = Transcriber.from_pretrained(tiny_models / "asr", options=AsrOptions(beam_size=1, temperature=(0.0,),
                                                                              compute_type="float32"))
    monkeypatch.setattr(studio._load(), "asr", asr)
    return asr


def test_clone_with_asr_transcript(studio, fast_asr, golden):
    from core.text import phonemize

    voice, report = studio.make_voice(golden / "prompts" / "zh-1.wav")
    heard = fast_asr.transcribe(report.wav, SR)
    assert voice.transcript == heard.text.strip() != "" and voice.language == heard.language
    assert voice.text_ids == list(phonemize(voice.transcript, language=voice.language).ids)
    forced, _ = studio.make_voice(golden / "prompts" / "zh-1.wav", language="ja")
    assert forced.language == "ja"


def test_translate_speaks_english_in_the_input_voice(studio, fast_asr, spy, golden):
    wav, sr = sf.read(golden / "prompts" / "ja-1.wav", dtype="float32")
    result = studio.translate(wav, sr, options=replace(GREEDY, max_chars=400))
    english = fast_asr.translate(wav, sr)
    assert " ".join(s.text for s in result.sentences) == english.strip()
    call = spy.calls[0]
    n = call["prompt_text_len"]
    assert call["prompt_codes"].shape[0] > 75 and set(call["text_langs"][n:].tolist()) == {0}
    assert result.warnings[0].startswith("heard (")


def test_a_translation_can_be_stopped(studio, fast_asr, spy, golden):
    wav, sr = sf.read(golden / "prompts" / "ja-1.wav", dtype="float32")
    opts = replace(GREEDY, prompt_mode="sliding", max_chars=15)  # several short sentences
    whole = studio.translate(wav, sr, options=opts)
    assert len(whole.sentences) > 1
    spy.calls.clear()
    done = []
    part = studio.translate(wav, sr, options=opts, progress=lambda f, m: done.append(f), stop=lambda: len(done) >= 1)
    assert [s.text for s in part.sentences] == [whole.sentences[0].text] and len(spy.calls) == 1
    assert f"stopped on request after 1 of {len(whole.sentences)} sentences" in part.warnings
    spy.calls.clear()
    with pytest.raises(Stopped):  # stopped while Whisper listened: nothing is generated
        studio.translate(wav, sr, options=opts, stop=lambda: True)
    with pytest.raises(StudioError, match="stop must be a callable"):
        studio.translate(wav, sr, options=opts, stop="now")
    assert spy.calls == []


def test_no_asr_model_asks_for_a_transcript(studio, golden, monkeypatch):
    models = studio._load()
    monkeypatch.setattr(models, "paths", replace(models.paths, asr=None))
    monkeypatch.setattr(models, "asr", None)
    with pytest.raises(VoiceError, match="transcript") as e:
        studio.make_voice(golden / "prompts" / "zh-1.wav")
    assert f"python launch.py download asr --models {studio.models_dir}" in e.value.user_message()
    # Translate has no transcript to type: it says what it needs
    with pytest.raises(VoiceError, match="Translation needs the Whisper") as e:
        studio.translate(golden / "prompts" / "zh-1.wav")
    assert "transcript" not in e.value.user_message()


def test_no_asr_model_is_said_before_the_models_load(tiny_models, tmp_path, golden, monkeypatch):
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder, ignore=shutil.ignore_patterns("asr"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    s = Studio(folder, offline=True)
    with pytest.raises(VoiceError, match="no speech-recognition model"):
        s.make_voice(golden / "prompts" / "zh-1.wav")
    assert not s.status()["loaded"]  # nothing was loaded just to find that out


def test_readme_example_runs(tiny_models, golden, tmp_path, monkeypatch):
    """The five-line example of docs/python-api.md, run as written on the tiny models folder."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "python-api.md").read_text(encoding="utf-8")
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) == 5
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "en-1.wav").write_bytes((golden / "prompts" / "en-1.wav").read_bytes())
    (tmp_path / "models").symlink_to(tiny_models, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    from core import longform

    monkeypatch.setattr(longform, "MAX_CONTEXT_S", 1.0)  # tiny random model: 1 s per sentence is plenty
    monkeypatch.setattr(longform, "MIN_OUTPUT_S", 1.0)
    scope: dict = {}
    exec(compile(code, "python-api.md", "exec"), scope)
    data, sr = sf.read(tmp_path / "hello.mp3", dtype="float32")
    assert sr == SR and len(data) > SR // 4
    assert scope["result"].seeds == [42] and scope["voice"].language == "en"


def test_head_count_comes_from_an_optional_config_beside_the_checkpoint(tmp_path):
    from core.checkpoint import head_count

    ckpt = tmp_path / "vallex-checkpoint.pt"
    assert head_count(ckpt) == 16  # the public checkpoint: 16 heads, no config
    (tmp_path / "config.json").write_text('{"nhead": 4}')
    assert head_count(ckpt) == 4
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(StudioError, match="config"):
        head_count(ckpt)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_reduced_precision_studio_speaks(tiny_models, tmp_path, dtype):
    # The precision a user picks (`--dtype`) reaches the engine.
    from core import native, native_linear

    if dtype == "int4" and not (native.available() and native_linear.int4_available()):
        pytest.skip("int4 needs AVX-512 VNNI (the refusal is tested below)")
    studio = Studio(tiny_models, offline=True, voices_dir=tmp_path, dtype=dtype)
    result = studio.synthesize("Hello world.", None, GREEDY)
    assert result.sentences[0].ok and len(result.audio) == HOP * frames(result) > 0
    kinds = {type(layer.ff1).__name__ for layer in studio._load().lm.core.ar.layers}
    if native.available():
        assert kinds == {"Int4Linear" if dtype == "int4" else "Int8Linear"}


def test_int4_without_vnni_is_refused_with_the_alternative(tiny_models, tmp_path, monkeypatch):
    from core import native_linear

    monkeypatch.setattr(native_linear, "int4_available", lambda: False)
    studio = Studio(tiny_models, offline=True, voices_dir=tmp_path, dtype="int4")
    with pytest.raises(StudioError, match=r"AVX-512 VNNI.*--dtype int8"):
        studio.synthesize("Hello world.", None, GREEDY)


def test_preload_loads_the_models_in_the_background(tiny_models, tmp_path):
    # The server calls preload once it listens, so the first take does not wait for the models.
    s = Studio(tiny_models, offline=True, voices_dir=tmp_path / "voices")
    assert not s.status()["loaded"]
    thread = s.preload()
    assert thread is not None and thread.daemon
    thread.join(300)
    assert s.status()["loaded"] and s.load_seconds is not None
    from core import text

    assert text._WARM == {"en", "zh", "ja"}  # and the text front-end's dictionaries (3-5 s of a first take)
    assert s._models._codec is not None  # and EnCodec, which the page's first recording needs
    assert s.ready_at is not None and s.ready_at <= time.perf_counter()
    assert s.preload() is None  # loaded already: nothing to do
    models = s._models
    assert len(s.synthesize("Hello there.", None, GREEDY).audio)
    assert s._models is models  # the take used the preloaded models


def test_encodec_loads_only_when_audio_is_encoded(tiny_models, tmp_path, golden):
    # A take in a saved voice (or none) never encodes audio: EnCodec (~3.5 s, most of it importing
    # transformers) is not loaded for it; making a voice from a recording loads it then.
    s = Studio(tiny_models, offline=True, voices_dir=tmp_path / "voices")
    assert len(s.synthesize("Hello there.", None, GREEDY).audio)
    assert s._models._codec is None
    voice, _ = s.make_voice(golden / "prompts" / "en-1.wav", transcript="I know, I know. It's just.")
    assert s._models._codec is not None and voice.audio_tokens.shape[1] == 8


def test_encodec_loads_once_when_threads_ask_together():
    import threading

    from core.models import Loaded

    calls = []

    def load():
        calls.append(1)
        time.sleep(0.2)
        return object()

    models = Loaded(None, None, None, load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.codec)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 4 and all(g is got[0] for g in got)


def test_preload_downloads_nothing_and_leaves_errors_to_the_first_take(tiny_models, tmp_path, caplog):
    import shutil

    nothing = Studio(tmp_path / "no-models", offline=False, voices_dir=tmp_path / "voices")
    assert nothing.preload() is None  # required models missing: not fetched unasked
    assert not nothing.status()["loaded"] and not (tmp_path / "no-models").exists()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models, broken)
    (broken / "vallex" / "vallex-checkpoint.pt").write_bytes(b"not a checkpoint")
    s = Studio(broken, offline=True, voices_dir=tmp_path / "voices")
    thread = s.preload()
    assert thread is not None
    thread.join(300)
    assert not s.status()["loaded"] and "in the background failed" in caplog.text
    with pytest.raises(StudioError) as e:  # the first take says what is wrong, as without preload
        s.synthesize("Hello there.", None, GREEDY)
    assert "vallex-checkpoint.pt" in e.value.user_message()


# ---------------------------------------------------------------- stopping a take

def test_stop_ends_the_take_before_its_next_sentence(studio, spy):
    text = "Hello there. Good bye now. See you soon. Take care. One more. And the last."
    opts = replace(GREEDY, prompt_mode="sliding", max_chars=15)
    made = []
    for sent in studio.stream(text, None, opts, stop=lambda: len(made) >= 2):
        made.append(sent)
    assert [s.index for s in made] == [0, 1] and len(spy.calls) == 2  # nothing generated after the stop
    take = studio.assemble(made)
    total = len(studio.synthesize(text, None, opts).sentences)
    assert total > 2
    assert f"stopped on request after 2 of {total} sentences" in take.warnings
    # the note on what sentence 3 continues from is the full take's only: sentence 3 was not made
    assert any(w.startswith("sentence 2 was too short") for w in studio.synthesize(text, None, opts).warnings)
    assert not any("used the voice prompt" in w for w in take.warnings), take.warnings
    assert len(take.audio) == HOP * sum(len(s.codes) for s in made)


def test_stop_ends_the_batch_being_made_at_once(studio, spy):
    # fixed prompt: sentences are made in batches; a stop asked while one is being generated ends
    # it there (the engine asks between steps), and the sentences finished before it are the take
    text = " ".join(f"Sentence number {i} is here." for i in range(12))
    asked_in_batch = []

    def stop():
        if spy.batches:  # the second group (a batch of GROUP_SIZE) is being generated
            asked_in_batch.append(1)
        return len(asked_in_batch) >= 3

    result = studio.synthesize(text, None, replace(GREEDY, max_chars=30), stop=stop)
    assert spy.batches == [longform.GROUP_SIZE] and len(asked_in_batch) == 3  # stopped inside the batch
    assert [s.index for s in result.sentences] == list(range(longform.FIRST_GROUP))
    assert any(w.startswith(f"stopped on request after {longform.FIRST_GROUP} of ") for w in result.warnings)
    assert stop() and len(studio.reroll(result, 0).sentences[0].codes)  # a re-roll is not the stopped take
    # a re-roll takes its own stop: stopped, it raises and the take given stands
    calls = len(spy.calls)
    with pytest.raises(Stopped):
        studio.reroll(result, 0, stop=lambda: True)
    assert len(spy.calls) == calls + 1 and [s.index for s in result.sentences] == list(range(longform.FIRST_GROUP))
    with pytest.raises(StudioError, match="stop must be a callable"):
        studio.reroll(result, 0, stop="now")


def test_a_take_stopped_before_it_began_is_an_error(studio, spy):
    with pytest.raises(Stopped, match="stopped before its first sentence"):
        studio.synthesize("Hello world.", None, GREEDY, stop=lambda: True)
    assert spy.calls == []
    for bad in (True, "yes", 1):  # not a callable: said up front, before any work
        with pytest.raises(StudioError, match="stop must be a callable"):
            studio.synthesize("Hello world.", None, GREEDY, stop=bad)
        with pytest.raises(StudioError, match="stop must be a callable"):
            list(studio.stream("Hello world.", None, GREEDY, stop=bad))
    assert spy.calls == []


# ---------------------------------------------------------------- letters the model cannot say

def test_letters_of_other_scripts_are_left_out_with_a_note_not_spoken_as_noise(studio, spy):
    from core.text import phonemize

    result = studio.synthesize("Hello мир there.", None, GREEDY)
    assert spy.calls[0]["text_ids"].tolist() == phonemize("Hello  there.", language="auto-mix", normalize=True).ids
    assert "sentence 1: left out 'мир' (Cyrillic: not English, Chinese or Japanese)" in result.warnings
    # a re-roll keeps the note: it is about the text
    assert "sentence 1: left out 'мир' (Cyrillic: not English, Chinese or Japanese)" in studio.reroll(result, 0).warnings
    spy.calls.clear()
    for text, words in [("안녕하세요", "Hangul is not English"), ("مرحبا بالعالم", "Arabic is not English"),
                        ("Γεια σου, Привет", "Greek and Cyrillic are not English"), ("\u200b\u200c\u200d", None),
                        ("\ufeff", None)]:
        with pytest.raises(TextError, match="Nothing pronounceable") as e:
            studio.synthesize(text, None, GREEDY)
        if words:
            assert words in e.value.user_message(), e.value.user_message()
    assert spy.calls == []  # nothing was generated for any of them
    # a sentence of another script among good ones is skipped, and said
    result = studio.synthesize("Good morning. 안녕하세요 여러분 반갑습니다 오늘은. Good night.",
                               None, replace(GREEDY, max_chars=20))
    assert any("Hangul is not English" in w for w in result.warnings), result.warnings


def test_mix_mode_without_tags_says_how_to_tag():
    from core.synth import Studio as S

    with pytest.raises(TextError) as e:
        S(offline=True)._prepare("Hello there.", None, SynthOptions(language="mix"))
    assert "[EN]..[EN]" in e.value.user_message()


def test_a_transcript_is_screened_and_a_long_recording_gets_a_note(studio, golden):
    wav, sr = sf.read(golden / "prompts" / "en-1.wav", dtype="float32")
    with pytest.raises(VoiceError, match="no English, Chinese or Japanese words.*Hangul"):
        studio.make_voice(wav, sr, transcript="안녕하세요")
    voice, report = studio.make_voice(wav, sr, transcript="Hello there мир.")
    assert voice.transcript == "Hello there ." and any("left out 'мир'" in a for a in report.advice)
    assert not any("typed goes with" in a for a in report.advice)  # the whole recording is the window
    long = np.concatenate([wav, wav, wav])  # 20 s: a 10 s window is cut out of it
    voice, report = studio.make_voice(long, sr, transcript="Hello there.")
    assert any("The transcript you typed goes with the" in a and "trim the recording" in a for a in report.advice)


def test_a_symbol_without_a_reading_is_left_out_and_named(studio):
    result = studio.synthesize("I ★ you, © 2024.", None, GREEDY)
    said = " ".join(result.warnings)
    assert "left out '★' (no reading in English)" in said, result.warnings
    assert "©" not in said  # read out ("copyright"), not left out


def test_an_instruction_value_held_to_its_range_is_a_take_warning(studio):
    result = studio.synthesize("Hello there.", None, replace(GREEDY, instruction="3x faster"))
    assert "instruction: speed x3 is above the fastest, x2: using x2" in result.warnings


def test_a_saved_voice_takes_a_corrected_transcript_without_its_recording(studio, en_voice):
    from core.text import phonemize

    en_voice = en_voice[0]
    fixed = studio.with_transcript(en_voice, "I know, I know. It's just that.")
    assert fixed.transcript == "I know, I know. It's just that."
    assert fixed.text_ids == list(phonemize(fixed.transcript, language=en_voice.language).ids) != en_voice.text_ids
    assert np.array_equal(fixed.audio_tokens, en_voice.audio_tokens)  # the same recording's codes
    with pytest.raises(VoiceError, match="no English, Chinese or Japanese words"):
        studio.with_transcript(en_voice, "안녕하세요")


# ---------------------------------------------------------------- hostile input

def test_reroll_and_assemble_refuse_what_they_cannot_use(studio):
    """Each was an AttributeError / TypeError (or, for True, sentence 1 re-rolled) before."""
    from core.synth import SentenceResult

    result = studio.synthesize("Hi. Bye.", None, replace(GREEDY, max_chars=4))
    for index in (1.5, "1", None, True):
        with pytest.raises(StudioError, match="must be a whole number") as e:
            studio.reroll(result, index)
        assert "from 0 to 1" in e.value.user_message()
    for bad in ("x", None, result.sentences):
        with pytest.raises(StudioError, match="reroll takes the SynthResult"):
            studio.reroll(bad, 0)
    with pytest.raises(StudioError, match="no sentences") as e:
        studio.reroll(SynthResult(np.zeros(0, np.float32), SR, []), 0)
    assert "0--1" not in e.value.user_message()
    foreign = SentenceResult(0, "hand made", np.zeros(320, np.float32), np.zeros((1, 8), np.int64), 1, "eos")
    for bad, match in ((result, "already a whole take"), ("abc", "not str"), ([None], "Item 0 .* NoneType"),
                       ([foreign], "not made by a Studio"), (result.sentences + [foreign], "Sentence 2 .*not made")):
        with pytest.raises(StudioError, match=match):
            studio.assemble(bad)
    with pytest.raises(StudioError, match="options must be a SynthOptions"):
        studio.assemble(result.sentences, "fast")
    with pytest.raises(StudioError, match="reroll takes|not made by a Studio"):
        studio.reroll(SynthResult(np.zeros(0, np.float32), SR, [foreign]), 0)
    # what stream() yields may be passed on as it comes (a generator), not only as a list
    assert np.array_equal(studio.assemble(s for s in result.sentences).audio, result.audio)


def test_reroll_keeps_the_options_the_take_was_assembled_with(studio):
    streamed = list(studio.stream("Hi. Bye.", None, replace(GREEDY, max_chars=4)))
    fast = studio.assemble(streamed, replace(GREEDY, max_chars=4, speed=2.0))
    again = studio.reroll(fast, 1, seed=streamed[1].seed)  # same seed: same codes, so the same take
    assert again.options.speed == 2.0  # was 1.0: the take came back at twice the length
    assert np.array_equal(again.audio, fast.audio)


def test_reroll_of_a_take_spliced_from_two_takes_remakes_that_sentence(studio, spy):
    """The sentence was looked up by its number in the first sentence's take: another text (or a
    StopIteration) was made instead of the spliced sentence."""
    a = list(studio.stream("Hi. Bye.", None, replace(GREEDY, max_chars=4)))
    b = list(studio.stream("One. Two.", None, replace(GREEDY, max_chars=4)))
    spliced = studio.assemble([a[0], b[1]])
    spy.calls.clear()
    new = studio.reroll(spliced, 1, seed=b[1].seed)
    assert spy.calls[0]["text_ids"].tolist() == b[1].context.requests[1].ids
    assert new.sentences[1].text == b[1].text and np.array_equal(new.sentences[1].codes, b[1].codes)


def test_text_transcript_progress_and_hand_made_voices_are_checked_first(studio, spy, en_voice):
    voice, _ = en_voice
    for text in (b"Hi.", 5):
        with pytest.raises(TextError, match="must be a str"):
            studio.synthesize(text, None, GREEDY)
        with pytest.raises(TextError, match="must be a str"):
            list(studio.stream(text, None, GREEDY))
    # a progress that is not a callable was called (and failed) only after the first sentence was made
    for call in (lambda: studio.synthesize("Hi.", None, GREEDY, progress=5),
                 lambda: list(studio.stream("Hi.", None, GREEDY, progress="bar"))):
        with pytest.raises(StudioError, match="progress must be a callable"):
            call()
    assert spy.calls == []
    with pytest.raises(VoiceError, match="no voice to give a transcript to"):
        studio.with_transcript(None, "hello")
    for bad in (5, ["hello"]):
        with pytest.raises(VoiceError, match="transcript must be text"):
            studio.with_transcript(voice, bad)
    with pytest.raises(VoiceError, match="transcript must be text"):
        studio.make_voice(np.zeros(2400, np.float32), SR, transcript=5)
    # a Voice changed by hand is checked as a saved one is (KeyError / ValueError / TypeError before)
    for change, match in ((dict(language="fr"), "not en, zh or ja"), (dict(language=None), "not en, zh or ja"),
                          (dict(audio_tokens=np.zeros((5, 7), np.int64)), "shape"),
                          (dict(text_ids=None), "expected integers"), (dict(text_ids=[500]), "values must be")):
        with pytest.raises(VoiceError, match=match):
            studio.synthesize("Hi.", replace(voice, **change), GREEDY)
    assert spy.calls == []


def test_a_truthy_word_or_a_bool_is_not_a_switch_or_a_number():
    for bad in ({"batch": "no"}, {"batch": None}, {"top_k": True}, {"best_of": False}, {"top_p": np.True_}):
        with pytest.raises(StudioError, match=f"out-of-range {next(iter(bad))}"):
            SynthOptions(**bad)
    assert SynthOptions(batch=np.bool_(False)).batch is False


def test_a_too_long_instruction_is_refused_when_the_options_are_made():
    # not when the first sentence is made (the CLI said it once a file, the page after loading)
    with pytest.raises(StudioError, match="501 characters long; the most is 500"):
        SynthOptions(instruction="a" * 501)
    with pytest.raises(StudioError, match="out-of-range instruction 5"):
        SynthOptions(instruction=5)
    assert SynthOptions(instruction="  slower " + " " * 600).instruction.strip() == "slower"
