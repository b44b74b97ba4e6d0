"""Small DSP effects, one `apply(wav, sr) -> wav` method each, applied in order by `core.convert`.

Every effect takes and returns mono float32 `[N]` at the given rate (the length may change: speed
and the tails of reverb/echo). pedalboard does time-stretch, pitch, filters, reverb and delay;
praat-parselmouth does the formant shift (Praat's "Change gender"); whisper and robot are short
STFT tricks in numpy (no scipy here).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.errors import AudioError

log = logging.getLogger(__name__)

SPEED_RANGE = (0.5, 2.0)  # time-stretch limits offered to users (pitch is kept)


class Effect(Protocol):
    def apply(self, wav: np.ndarray, sr: int) -> np.ndarray: ...


def _mono(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise AudioError(f"expected mono audio [N], got shape {tuple(wav.shape)}",
                         "Downmix to one channel first (core.audio.load_mono does).")
    return wav


def change_speed(wav: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play `wav` `factor` times as fast, keeping its pitch.

    wav: float32 `[N]`; factor in 0.5..2 (2 = twice as fast, half as long). Returns float32
    `[~N / factor]`.
    """
    lo, hi = SPEED_RANGE
    if not lo <= float(factor) <= hi:
        raise AudioError(f"speed {factor} is outside {lo}-{hi}x", "Pick a speed between 0.5 and 2.")
    wav = _mono(wav)
    if abs(factor - 1.0) < 1e-4 or wav.size == 0:
        return wav
    import pedalboard

    out = pedalboard.time_stretch(wav[None, :], float(sr), stretch_factor=float(factor))
    return np.ascontiguousarray(out[0], dtype=np.float32)


@dataclass(frozen=True)
class Speed:
    factor: float

    def apply(self, wav, sr):
        # the plan already clamps; clamp again so a hand-built plan cannot fail late
        return change_speed(wav, sr, float(np.clip(self.factor, *SPEED_RANGE)))


@dataclass(frozen=True)
class Pitch:
    semitones: float

    def apply(self, wav, sr):
        wav = _mono(wav)
        if abs(self.semitones) < 1e-3 or wav.size == 0:
            return wav
        import pedalboard

        # preserve_formants keeps the vocal-tract resonances, so pitch and timbre (Formant) stay
        # independent knobs.
        out = pedalboard.time_stretch(wav[None, :], float(sr), stretch_factor=1.0,
                                      pitch_shift_in_semitones=float(self.semitones),
                                      preserve_formants=True)
        return np.ascontiguousarray(out[0], dtype=np.float32)


_PRAAT_LOCK = threading.Lock()  # Praat's random generator is one for the process


@dataclass(frozen=True)
class Formant:
    """Scale the formant frequencies by `ratio` (>1 smaller/brighter, <1 larger/darker), pitch kept."""

    ratio: float

    def apply(self, wav, sr):
        wav = _mono(wav)
        if abs(self.ratio - 1.0) < 1e-3 or wav.size < sr // 10:
            return wav
        import parselmouth
        from parselmouth.praat import call, run

        sound = parselmouth.Sound(wav.astype(np.float64), sampling_frequency=float(sr))
        with _PRAAT_LOCK:
            # Praat's resynthesis draws random numbers (in unvoiced stretches) from one global
            # generator seeded at start-up: seeded here, the same take gives the same audio
            run("random_initializeWithSeedUnsafelyButPredictably (1)")
            # args: pitch floor, pitch ceiling, formant shift ratio, new pitch median (0 = keep),
            # pitch range factor, duration factor
            out = call(sound, "Change gender", 75.0, 600.0, float(self.ratio), 0.0, 1.0, 1.0)
        res = np.asarray(out.values[0], dtype=np.float32)
        if int(round(out.sampling_frequency)) != sr:  # Praat keeps the rate; guard anyway
            import soxr

            res = soxr.resample(res, out.sampling_frequency, sr).astype(np.float32)
        return res


@dataclass(frozen=True)
class Gain:
    db: float

    def apply(self, wav, sr):
        return (_mono(wav) * np.float32(10.0 ** (self.db / 20.0))).astype(np.float32)


def _pad_tail(wav: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    return np.concatenate([wav, np.zeros(int(sr * seconds), dtype=np.float32)])


def _trim_tail(wav: np.ndarray, keep: int, floor_db: float = -60.0) -> np.ndarray:
    """Drop the silent end of a padded tail, never cutting before sample `keep`."""
    thresh = 10.0 ** (floor_db / 20.0)
    loud = np.flatnonzero(np.abs(wav[keep:]) > thresh)
    end = keep + (int(loud[-1]) + 1 if loud.size else 0)
    return wav[:end]


def _with_tail(board, wav: np.ndarray, sr: int, tail_s: float) -> np.ndarray:
    """Run a pedalboard effect on `wav` padded with `tail_s` of silence (so the reverb or echo
    tail is not cut off), then trim back with _trim_tail."""
    out = board(_pad_tail(wav, sr, tail_s)[None, :], sr)[0]
    return _trim_tail(np.asarray(out, dtype=np.float32), wav.size)


@dataclass(frozen=True)
class Reverb:
    amount: float  # 0..1

    def apply(self, wav, sr):
        import pedalboard

        wav, a = _mono(wav), float(np.clip(self.amount, 0.0, 1.0))
        board = pedalboard.Reverb(room_size=0.35 + 0.6 * a, damping=0.45, wet_level=0.12 + 0.3 * a,
                                  dry_level=1.0 - 0.25 * a, width=0.0)
        return _with_tail(board, wav, sr, 0.4 + 1.6 * a)


@dataclass(frozen=True)
class Echo:
    amount: float  # 0..1

    def apply(self, wav, sr):
        import pedalboard

        wav, a = _mono(wav), float(np.clip(self.amount, 0.0, 1.0))
        delay = 0.22 + 0.13 * a
        feedback = 0.15 + 0.35 * a
        board = pedalboard.Delay(delay_seconds=delay, feedback=feedback, mix=0.25 + 0.2 * a)
        # tail long enough for the repeats to fall ~60 dB
        repeats = int(np.ceil(np.log(1e-3) / np.log(feedback)))
        return _with_tail(board, wav, sr, delay * (repeats + 1))


@dataclass(frozen=True)
class Telephone:
    """Band-limit to a phone line: small amount ~200-4500 Hz, full amount ~400-3000 Hz + GSM codec."""

    amount: float  # 0..1

    def apply(self, wav, sr):
        import pedalboard

        wav, a = _mono(wav), float(np.clip(self.amount, 0.0, 1.0))
        low, high = 200.0 + 200.0 * a, 4500.0 - 1500.0 * a
        # two 2nd-order sections each side: ~24 dB/octave, steep enough to sound like a line
        plugins = [pedalboard.HighpassFilter(low), pedalboard.HighpassFilter(low),
                   pedalboard.LowpassFilter(high), pedalboard.LowpassFilter(high)]
        if a >= 0.75:
            plugins.append(pedalboard.GSMFullRateCompressor())
        plugins.append(pedalboard.Gain(3.0 * a))  # a phone line sounds pushed, not thin and quiet
        out = pedalboard.Pedalboard(plugins)(wav[None, :], sr)[0]
        return np.asarray(out, dtype=np.float32)


_BLOCK = 2048  # STFT frames at a time: ~16 MB of complex spectra at n_fft 1024, whatever the length


def _resynth(wav: np.ndarray, n_fft: int, hop: int, change) -> np.ndarray:
    """Short-time Fourier transform of `wav` (Hann window, `hop` apart), each block of frames'
    spectra [frames, n_fft // 2 + 1] replaced by `change(spectra)`, and overlap-added back to
    `wav`'s length. Block by block: the whole of a 10-minute 96 kHz clip at once was ~9 GB of
    complex spectra."""
    win = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    pad = np.concatenate([np.zeros(n_fft, np.float32), wav, np.zeros(n_fft, np.float32)])
    n_frames = 1 + (pad.size - n_fft) // hop
    total = hop * (n_frames - 1) + n_fft
    out, norm = np.zeros(total, np.float32), np.zeros(total, np.float32)
    for first in range(0, n_frames, _BLOCK):
        starts = hop * np.arange(first, min(n_frames, first + _BLOCK))
        spec = np.fft.rfft(pad[np.arange(n_fft)[None, :] + starts[:, None]] * win, axis=1)
        frames = np.fft.irfft(change(spec), n=n_fft, axis=1) * win
        for at, frame in zip(starts, frames):
            out[at:at + n_fft] += frame
            norm[at:at + n_fft] += win ** 2
    out /= np.maximum(norm, 1e-8)
    return out[n_fft:n_fft + wav.size]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@dataclass(frozen=True)
class Whisper:
    """Breathy/whispered voice: the spectral envelope kept, the voicing replaced by noise."""

    amount: float  # 0..1: share of the whispered signal in the mix (0.5 + 0.5 * amount)
    seed: int = 0

    def apply(self, wav, sr):
        wav = _mono(wav)
        if wav.size == 0:
            return wav
        n_fft, hop = 1024, 256
        # ~300 Hz moving average over frequency: removes the harmonic comb (the pitch), keeps the
        # formant envelope
        width = max(3, int(300.0 / (sr / n_fft)) | 1)
        kernel = np.ones(width) / width
        rng = np.random.default_rng(self.seed)

        def whispered(spec):
            power = np.abs(spec) ** 2
            env = np.sqrt(np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, power))
            return env * np.exp(1j * rng.uniform(-np.pi, np.pi, size=spec.shape))

        noisy = _resynth(wav, n_fft, hop, whispered)
        noisy *= _rms(wav) / max(_rms(noisy), 1e-9)
        mix = 0.5 + 0.5 * float(np.clip(self.amount, 0.0, 1.0))
        return ((1.0 - mix) * wav + mix * 0.8 * noisy).astype(np.float32)


@dataclass(frozen=True)
class Robot:
    """Robot voice: every STFT frame's phase set to zero, so the output buzzes at sr / hop (~100 Hz)."""

    amount: float  # 0..1: share of the robot signal in the mix (0.5 + 0.5 * amount)
    buzz_hz: float = 100.0

    def apply(self, wav, sr):
        wav = _mono(wav)
        if wav.size == 0:
            return wav
        hop = int(round(sr / self.buzz_hz))
        n_fft = 4 * hop
        # zero phase then a half-window circular shift: each frame becomes one centred pulse
        shift = np.exp(-1j * np.pi * np.arange(n_fft // 2 + 1))
        robot = _resynth(wav, n_fft, hop, lambda spec: np.abs(spec) * shift)
        robot *= _rms(wav) / max(_rms(robot), 1e-9)
        mix = 0.5 + 0.5 * float(np.clip(self.amount, 0.0, 1.0))
        return ((1.0 - mix) * wav + mix * robot).astype(np.float32)


@dataclass(frozen=True)
class PeakGuard:
    """Keep the result playable: a brick-wall limiter only when the peak passes -0.1 dBFS."""

    def apply(self, wav, sr):
        wav = _mono(wav)
        if wav.size == 0 or float(np.max(np.abs(wav))) <= 0.989:
            return wav
        import pedalboard

        log.info("peak %.2f after effects: limiting", float(np.max(np.abs(wav))))
        out = pedalboard.Limiter(threshold_db=-1.0, release_ms=80.0)(wav[None, :], sr)[0]
        return np.clip(out, -0.999, 0.999).astype(np.float32)


def apply_effects(wav: np.ndarray, sr: int, effects: list[Effect]) -> np.ndarray:
    """Run `effects` in order on float32 `[N]`; returns float32 `[M]`."""
    out = _mono(wav)
    for effect in effects:
        out = effect.apply(out, sr)
    return np.ascontiguousarray(out, dtype=np.float32)
