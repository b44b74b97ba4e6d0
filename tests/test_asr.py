"""core.asr on the tiny random faster-whisper folder (random text; the flow and types are real)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from core.asr import LANGUAGES, AsrOptions, Transcriber, Transcript
from core.errors import AudioError, ModelMissingError

FAST = AsrOptions(beam_size=1, temperature=(0.0,), compute_type="float32")


@pytest.fixture(scope="module")
def asr(tiny_models):
    return Transcriber.from_pretrained(tiny_models / "asr", options=FAST)


def test_transcribe_real_recording(asr, golden):
    wav, sr = sf.read(golden / "prompts" / "zh-1.wav", dtype="float32")  # 22.05 kHz float WAV
    out = asr.transcribe(wav, sr)
    assert isinstance(out, Transcript) and isinstance(out.text, str)
    assert out.language in LANGUAGES
    assert set(out.probabilities) == set(LANGUAGES)
    assert abs(sum(out.probabilities.values()) - 1.0) < 1e-5
    assert out.language == max(out.probabilities, key=out.probabilities.get)


def test_language_can_be_forced_and_stereo_int_input(asr):
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((24000, 2)) * 3000).astype(np.int16)
    out = asr.transcribe(stereo, 24000, language="ja")
    assert out.language == "ja"
    with pytest.raises(AudioError):
        asr.transcribe(stereo, 24000, language="fr")


def test_translate_returns_text(asr):
    wav = np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000).astype(np.float32) * 0.3
    assert isinstance(asr.translate(wav, 16000), str)


def test_bad_audio(asr):
    with pytest.raises(AudioError):
        asr.transcribe(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="NaN"):
        asr.transcribe(np.full(16000, np.nan, np.float32), 16000)


def test_missing_model_asks_for_a_transcript(tmp_path, monkeypatch):
    with pytest.raises(ModelMissingError) as err:
        Transcriber.from_pretrained(tmp_path / "nothing-here")
    msg = err.value.user_message()
    assert "transcript" in msg and "python launch.py download asr" in msg
    monkeypatch.setenv("VALLEX_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelMissingError, match="No speech-recognition model"):
        Transcriber.from_pretrained()


def test_the_same_recording_always_gets_the_same_transcript(tiny_models, golden):
    """The default options never sample: on the random model every decode fails Whisper's
    log-probability check, which with the usual temperature schedule means sampled retries and a
    transcript that could change from one check of the prompt to the next (seen with these numerics)."""
    wav, sr = sf.read(golden / "prompts" / "zh-1.wav", dtype="float32")
    wav = wav[: 4 * sr]
    texts = set()
    for _ in range(2):  # two models: each CTranslate2 worker has its own random generator
        t = Transcriber.from_pretrained(tiny_models / "asr", options=AsrOptions(compute_type="int8_float32"))
        texts |= {t.transcribe(wav, sr, language="en").text for _ in range(5)}
    assert len(texts) == 1, texts


class _Seg:
    def __init__(self, text, ratio):
        self.text, self.compression_ratio = text, ratio


class _FakeWhisper:
    """Stands in for faster_whisper.WhisperModel: records each decode's options."""

    def __init__(self, first_ratio):
        self.calls, self.first_ratio = [], first_ratio

    def transcribe(self, audio, **kw):
        self.calls.append(kw)
        if len(self.calls) == 1:
            return iter([_Seg(" la la la la la la la la", self.first_ratio)]), None
        return iter([_Seg(" la di da", 1.2)]), None


@pytest.mark.parametrize("first_ratio, decodes", [(1.5, 1), (3.0, 2)])
def test_a_repetition_loop_is_decoded_again_without_sampling(tmp_path, first_ratio, decodes):
    fake = _FakeWhisper(first_ratio)
    text = Transcriber(fake, tmp_path)._run(np.zeros(16000, np.float32), "en", "transcribe")
    assert len(fake.calls) == decodes
    assert all(c["temperature"] == [0.0] for c in fake.calls)  # never sampled
    if decodes == 1:
        assert text == "la la la la la la la la" and "no_repeat_ngram_size" not in fake.calls[0]
    else:
        assert text == "la di da" and fake.calls[1]["no_repeat_ngram_size"] == 3
