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
