"""Speech recognition for voice prompts (faster-whisper), language limited to en / zh / ja.

`Transcriber.from_pretrained(folder)` loads a faster-whisper (CTranslate2) model folder, e.g. the
store's `asr/` (Systran/faster-whisper-small). `transcribe(wav, sr)` detects the language with the
model's own language probabilities, restricted to the three languages VALL-E X speaks, and returns
the text in that language; `translate(wav, sr)` runs Whisper's translate task (to English).
Without a model, `ModelMissingError` asks the user to type the transcript instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import AudioError, ModelMissingError, StudioError

log = logging.getLogger(__name__)

WHISPER_RATE = 16000  # Hz, Whisper's input rate
LANGUAGES = ("en", "zh", "ja")  # the languages VALL-E X speaks
MISSING_HINT = ("Type what the recording says in the transcript box instead, or download the speech "
                "recognition model (about 484 MB) with `python launch.py download asr`.")


@dataclass(frozen=True)
class AsrOptions:
    beam_size: int = 5
    # Beam search only, no sampling: the same recording always gets the same transcript. Whisper's
    # usual schedule (0.0, 0.2, ... 1.0) retries with *sampling* when the text looks unlikely, and
    # CTranslate2 cannot seed one call, so re-checking a prompt could change its transcript.
    temperature: tuple[float, ...] = (0.0,)
    # The retry kept from that schedule, made deterministic: text that compresses better than this
    # ratio is a repetition loop, and is decoded again with repeated 3-grams banned.
    loop_compression_ratio: float = 2.4
    loop_no_repeat_ngram_size: int = 3
    condition_on_previous_text: bool = False  # prompts are short; avoids runaway repetition
    compute_type: str | None = None  # None: int8 on CPU, float16 on CUDA


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # "en" | "zh" | "ja"
    language_probability: float = 0.0  # among the three languages (renormalised)
    probabilities: dict[str, float] = field(default_factory=dict)


def _to_whisper_input(wav: np.ndarray, sr: int) -> np.ndarray:
    """float [N] or [N, C] at `sr` -> float32 mono [M] at 16 kHz."""
    wav = np.asarray(wav)
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if wav.ndim != 1 or wav.size == 0:
        raise AudioError(f"Audio for transcription must be a non-empty 1-D or [N, C] array, got shape {list(wav.shape)}.",
                         "Record or upload a few seconds of speech.")
    if np.issubdtype(wav.dtype, np.integer):
        wav = wav / float(np.iinfo(wav.dtype).max)
    wav = wav.astype(np.float32)
    if not np.isfinite(wav).all():
        raise AudioError("The audio contains NaN or infinite samples.", "Re-record or re-export the file.")
    if sr != WHISPER_RATE:
        import soxr

        wav = soxr.resample(wav, sr, WHISPER_RATE).astype(np.float32)
    return wav


class Transcriber:
    """faster-whisper with the language restricted to en/zh/ja."""

    def __init__(self, model, folder: Path, options: AsrOptions = AsrOptions()):
        self.model = model
        self.folder = folder
        self.options = options

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str = "cpu",
                        options: AsrOptions = AsrOptions(), cpu_threads: int = 0) -> "Transcriber":
        """Load a faster-whisper folder (None: the store's ASR model, never downloaded here).
        Raises ModelMissingError when there is no model."""
        if folder is None:
            from core.store import find_model

            folder = find_model("asr")
            if folder is None:
                raise ModelMissingError("No speech-recognition model is installed.", MISSING_HINT)
        folder = Path(folder)
        if not (folder / "model.bin").is_file():
            raise ModelMissingError(f"No speech-recognition model in {folder} (model.bin is missing).", MISSING_HINT)
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise StudioError(f"faster-whisper is not installed ({e}).", "Run the set-up script again.") from e
        compute = options.compute_type or ("float16" if str(device).startswith("cuda") else "int8")
        try:
            model = WhisperModel(str(folder), device=str(device).split(":")[0], compute_type=compute,
                                 cpu_threads=cpu_threads)
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelMissingError(f"The speech-recognition model in {folder} could not be loaded: {e}",
                                    MISSING_HINT) from e
        if not model.model.is_multilingual:
            raise ModelMissingError(f"The speech-recognition model in {folder} is English-only.",
                                    "Use a multilingual faster-whisper model (e.g. Systran/faster-whisper-small).")
        return cls(model, folder, options)

    def detect_language(self, wav: np.ndarray, sr: int) -> tuple[str, dict[str, float]]:
        """Most likely of en/zh/ja from the model's language probabilities (first 30 s)."""
        return self._detect(_to_whisper_input(wav, sr))

    def _detect(self, audio: np.ndarray) -> tuple[str, dict[str, float]]:
        _, _, all_probs = self.model.detect_language(audio)
        probs = {lang: float(p) for lang, p in all_probs if lang in LANGUAGES}
        total = sum(probs.values())
        probs = {lang: probs.get(lang, 0.0) / total if total > 0 else 1.0 / 3 for lang in LANGUAGES}
        return max(probs, key=probs.get), probs

    def _run(self, audio: np.ndarray, language: str, task: str) -> str:
        o = self.options

        def decode(**extra) -> list:
            segments, _ = self.model.transcribe(
                audio, language=language, task=task, beam_size=o.beam_size, temperature=list(o.temperature),
                condition_on_previous_text=o.condition_on_previous_text, vad_filter=False, **extra)
            return list(segments)

        segments = decode()
        if any(s.compression_ratio > o.loop_compression_ratio for s in segments):
            log.info("the transcript repeats itself; decoding again without repeated %d-grams",
                     o.loop_no_repeat_ngram_size)
            segments = decode(no_repeat_ngram_size=o.loop_no_repeat_ngram_size)
        return "".join(s.text for s in segments).strip()

    def transcribe(self, wav: np.ndarray, sr: int, language: str | None = None) -> Transcript:
        """wav float [N] or [N, C] at `sr` -> Transcript(text, language in en/zh/ja).
        `language` forces the language instead of detecting it."""
        audio = _to_whisper_input(wav, sr)
        if language is not None and language not in LANGUAGES:
            raise AudioError(f"Transcription language {language!r} is not en, zh or ja.", "Pick en, zh or ja.")
        detected, probs = self._detect(audio)
        language = language or detected
        text = self._run(audio, language, "transcribe")
        log.info("transcribed %.1f s as %s (p=%.2f): %r", len(audio) / WHISPER_RATE, language, probs[language], text[:80])
        return Transcript(text, language, probs[language], probs)

    def translate(self, wav: np.ndarray, sr: int, language: str | None = None) -> str:
        """Speech in en/zh/ja -> English text (Whisper's translate task)."""
        audio = _to_whisper_input(wav, sr)
        language = language or self._detect(audio)[0]
        return self._run(audio, language, "translate")
