"""Voice-activity detection and the prompt checker.

`check_prompt(wav, sr)` finds the speech with WebRTC's VAD (gated by frame energy, because the
VAD alone calls steady noise "speech"), picks the best 3-10 s stretch of it without cutting
inside a word, and measures what makes a prompt clone well or badly: level, peak, clipping and
an SNR estimate (speech frames against the pauses). The UI shows `PromptReport.advice`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import soxr
import webrtcvad

from core.errors import AudioError

log = logging.getLogger(__name__)

VAD_RATE = 16000  # Hz; webrtcvad takes 8/16/32/48 kHz int16
FRAME_MS = 30  # webrtcvad frame length (10, 20 or 30 ms)
FRAME_LEN = VAD_RATE * FRAME_MS // 1000  # 480 samples
FRAME_S = FRAME_MS / 1000
SILENCE_DB = -60.0  # dBFS: a peak below this is a silent or muted recording
FLOOR_DB = -80.0  # dBFS: quieter frames are never speech (VAD on dither / hiss)
MIN_SNR_DB = 3.0  # below this the "speech" cannot be told from the noise
EPS = 1e-12


@dataclass(frozen=True)
class PromptLimits:
    """What the checker aims for and when it gives advice (levels in dBFS, times in seconds)."""

    min_speech_s: float = 1.0  # less speech than this cannot make a voice: AudioError
    short_s: float = 3.0  # under this: "too short" advice
    max_window_s: float = 10.0  # longest window kept (the reference accepts up to 15 s)
    pad_s: float = 0.15  # kept around the speech so onsets and endings are not cut
    bridge_s: float = 0.3  # pauses shorter than this stay inside one speech segment
    min_blip_s: float = 0.09  # shorter "speech" runs are clicks or breaths
    vad_mode: int = 2  # webrtcvad aggressiveness 0..3
    quiet_db: float = -35.0  # active speech level under this: "too quiet"
    clip_fraction: float = 0.001  # more clipped samples than this: "clipped"
    noisy_snr_db: float = 15.0  # SNR under this: "background noise"


@dataclass
class PromptReport:
    """The checker's verdict on a prompt recording and the window it chose.

    `wav` is the chosen window (float32 [M] at `sample_rate`); `start_s`/`end_s` locate it in the
    input; `duration` is the whole input's length. Levels are dBFS of the window's speech frames.
    """

    ok: bool
    advice: list[str]
    issues: list[str]  # machine-readable: "too_short", "too_quiet", "clipped", "noisy"
    duration: float
    start_s: float
    end_s: float
    speech_s: float
    level_db: float
    peak: float
    peak_db: float
    clipping: float  # fraction of window samples at the clip level
    snr_db: float
    sample_rate: int
    wav: np.ndarray = field(repr=False)

    @property
    def window_s(self) -> float:
        return self.end_s - self.start_s


def _db(power: float) -> float:
    return float(10 * np.log10(max(power, EPS)))


def frame_power(x16: np.ndarray) -> np.ndarray:
    """Mean square per 30 ms frame of a 16 kHz signal: float64 [F]."""
    n = len(x16) // FRAME_LEN
    frames = x16[: n * FRAME_LEN].astype(np.float64).reshape(n, FRAME_LEN)
    return (frames**2).mean(axis=1)


def speech_frames(x16: np.ndarray, power: np.ndarray, mode: int = 2) -> np.ndarray:
    """bool [F]: WebRTC VAD decision AND enough energy (absolute and relative to the loudest frame)."""
    vad = webrtcvad.Vad(mode)
    peak = float(np.abs(x16).max(initial=0.0))
    # the VAD misses speech in very quiet int16, so it hears a normalised copy; level is judged later
    scale = 0.9 / peak if peak > 0 else 1.0
    pcm = (np.clip(x16 * scale, -1, 1) * 32767).astype("<i2")
    voiced = np.array([vad.is_speech(pcm[i * FRAME_LEN:(i + 1) * FRAME_LEN].tobytes(), VAD_RATE)
                       for i in range(len(power))], dtype=bool)
    db = 10 * np.log10(power + EPS)
    gate = max(FLOOR_DB, float(db.max(initial=FLOOR_DB)) - 45.0)
    return voiced & (db > gate)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) frame index pairs of the True runs."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def speech_segments(flags: np.ndarray, limits: PromptLimits) -> list[tuple[int, int]]:
    """Frame runs of speech with short pauses bridged and blips dropped."""
    bridge, blip = round(limits.bridge_s / FRAME_S), round(limits.min_blip_s / FRAME_S)
    merged: list[tuple[int, int]] = []
    for s, e in _runs(flags):
        if merged and s - merged[-1][1] <= bridge:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return [(s, e) for s, e in merged if e - s >= blip]


def _split_long(seg: tuple[int, int], power: np.ndarray, max_len: int) -> list[tuple[int, int]]:
    """Cut a segment longer than max_len at its quietest frame (away from the ends), recursively."""
    s, e = seg
    if e - s <= max_len:
        return [seg]
    margin = (e - s) // 4
    cut = s + margin + int(np.argmin(power[s + margin:e - margin]))
    return _split_long((s, cut), power, max_len) + _split_long((cut + 1, e), power, max_len)


def best_window(segments: list[tuple[int, int]], power: np.ndarray, max_len: int) -> tuple[int, int]:
    """The run of whole segments spanning <= max_len frames with the most speech (earliest on ties)."""
    segs = [p for seg in segments for p in _split_long(seg, power, max_len)]
    best, best_speech, j, speech = (segs[0][0], segs[0][1]), -1, 0, 0
    for i, (s, _) in enumerate(segs):
        if j < i:
            j, speech = i, 0
        while j < len(segs) and segs[j][1] - s <= max_len:
            speech += segs[j][1] - segs[j][0]
            j += 1
        if j > i and speech > best_speech:
            best, best_speech = (s, segs[j - 1][1]), speech
        if j > i:
            speech -= segs[i][1] - segs[i][0]
    return best


def _clipping(x: np.ndarray, peak: float) -> float:
    """Fraction of samples at the clip level: near full scale, or a flat top repeated at the peak
    (a recording clipped before it was turned down)."""
    hard = np.abs(x) >= 0.99
    at_peak = np.abs(x) >= peak * 0.9999 if peak > 0.25 else np.zeros_like(hard)
    flat_count = int((at_peak[1:] & at_peak[:-1]).sum())  # a plateau, not a lone maximum
    count = int(hard.sum()) + (flat_count if flat_count > max(3, 0.0005 * len(x)) else 0)
    return min(1.0, count / max(len(x), 1))


def _as_mono(wav, name: str = "the prompt") -> np.ndarray:
    x = np.asarray(wav.detach().cpu().numpy() if hasattr(wav, "detach") else wav)
    if x.dtype.kind in "iu":
        raise AudioError(f"{name} has integer samples.",
                         "Load it with core.audio.load_mono (float32 in [-1, 1]).")
    from core.audio import to_mono  # here: core.audio imports this module

    x = to_mono(x)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"{name} is empty or has shape {x.shape}.",
                         "Record or upload a few seconds of speech.")
    if not np.isfinite(x).all():
        raise AudioError(f"{name} contains NaN or infinite samples.",
                         "Re-export the recording; it is corrupt.")
    return x


def _advice(speech_s: float, level_db: float, clip: float, snr_db: float,
            lim: PromptLimits) -> list[tuple[str, str]]:
    """(issue code, advice sentence) pairs for the UI."""
    out = []
    if speech_s < lim.short_s:
        out.append(("too_short", f"Too short: only {speech_s:.1f} s of speech; 3-10 s clones much better."))
    if level_db < lim.quiet_db:
        out.append(("too_quiet", f"Too quiet: speech at {level_db:.0f} dBFS; move closer to the microphone "
                                 "or raise the input gain."))
    if clip > lim.clip_fraction:
        out.append(("clipped", f"Clipped: {100 * clip:.1f} % of samples hit the limit; lower the input gain "
                               "and record again."))
    if snr_db < lim.noisy_snr_db:
        out.append(("noisy", f"Background noise: speech is only {snr_db:.0f} dB above the noise; record in "
                             "a quieter place."))
    return out


def _without_dc(x: np.ndarray, sr: int) -> np.ndarray:
    """`x` through a 40 Hz high-pass: a DC offset (a cheap sound card's) or a slow drift is power
    the VAD and the noise floor would take for sound, turning quiet speech into "noise"."""
    import pedalboard

    out = pedalboard.HighpassFilter(cutoff_frequency_hz=40.0)(x[None, :], float(sr))[0]
    return np.asarray(out, dtype=np.float32)


def check_prompt(wav, sr: int, limits: PromptLimits = PromptLimits()) -> PromptReport:
    """Check a prompt recording and choose the best 3-10 s of speech in it.

    wav: float [N] or [N, C] at `sr`. Raises AudioError for silence, NaN/inf samples and less than
    `limits.min_speech_s` of speech; otherwise returns a PromptReport (advice for weaker prompts).
    """
    x = _as_mono(wav)
    duration = len(x) / sr
    heard = _without_dc(x, sr)  # what is measured; the prompt itself keeps its samples
    peak = float(np.abs(heard).max())
    if _db(peak**2) < SILENCE_DB:
        raise AudioError(f"the recording is silent (peak {_db(peak ** 2):.0f} dBFS).",
                         "Check that the microphone is not muted and record again.")
    x16 = soxr.resample(heard, sr, VAD_RATE, quality="HQ") if sr != VAD_RATE else heard
    power = frame_power(x16)
    flags = speech_frames(x16, power, limits.vad_mode)
    segments = speech_segments(flags, limits)
    total = sum(e - s for s, e in segments) * FRAME_S
    if total < limits.min_speech_s:
        found = "no speech" if total == 0 else f"only {total:.1f} s of speech"
        raise AudioError(f"the recording has {found} ({duration:.1f} s long).",
                         "Record 3-10 s of clear speech in a quiet room.")
    pad = round(limits.pad_s / FRAME_S)
    s, e = best_window(segments, power, round(limits.max_window_s / FRAME_S) - 2 * pad)
    start_s, end_s = max(0.0, (s - pad) * FRAME_S), min(duration, (e + pad) * FRAME_S)
    window = x[int(round(start_s * sr)):int(round(end_s * sr))]
    in_win = np.zeros_like(flags)
    in_win[s:e] = True
    speech_win = flags & in_win
    pauses = np.ones_like(flags)
    for a, b in segments:
        pauses[max(0, a - pad):b + pad] = False
    noise = float(np.median(power[pauses])) if pauses.sum() >= 10 else float(np.percentile(power, 10))
    speech_power = float(power[speech_win].mean()) if speech_win.any() else float(power[s:e].mean())
    level_db = _db(speech_power)
    snr_db = float(np.clip(level_db - _db(noise), -20.0, 80.0))
    if snr_db < MIN_SNR_DB:
        raise AudioError(f"no speech stands out from the noise (SNR about {snr_db:.0f} dB).",
                         "Record 3-10 s of clear speech in a quiet room, close to the microphone.")
    win_peak = float(np.abs(window).max())
    clip = _clipping(window, win_peak)
    speech_s = float(speech_win.sum() * FRAME_S)
    items = _advice(speech_s, level_db, clip, snr_db, limits)
    return PromptReport(
        ok=not items, advice=[a for _, a in items], issues=[k for k, _ in items], duration=duration,
        start_s=start_s, end_s=end_s, speech_s=speech_s, level_db=level_db, peak=win_peak,
        peak_db=_db(win_peak**2), clipping=clip, snr_db=snr_db, sample_rate=int(sr), wav=window.copy(),
    )
