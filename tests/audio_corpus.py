"""A corpus of malformed and odd audio inputs, generated on the fly (nothing is checked in).

`make_corpus(folder) -> list[Item]` writes each input as a file and says what a correct studio
must do with it:

- "ok": a valid recording; the studio must return a correct result (finite audio, a report).
- "error": not usable; the studio must answer with a clear error message, never a traceback/500.
- "either": odd but decodable by some tools (NaN/inf floats, all-zero, lying headers); a clear
  error or a correct result are both fine, a crash is not.

Long inputs are declared, not written: a RIFF header may claim an hour (or 4 GiB) while the file
holds one second, and the one real over-limit file is 11 minutes of 8 kHz 8-bit mono (5 MB).
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

OK, ERROR, EITHER = "ok", "error", "either"


@dataclass(frozen=True)
class Item:
    name: str  # short id, used as the test id
    path: Path  # the file (its suffix may lie about its content on purpose)
    expect: str  # "ok" | "error" | "either"
    note: str = ""  # what is odd about it


def speechlike(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """float32 [N, C] in [-0.5, 0.5]: a pitch-gliding buzz with syllable-rate bursts and a little
    noise, loud enough for the prompt checker's VAD to find 'speech'."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sr)))
    t = np.arange(n) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * (t > 0.15) * (t < seconds - 0.1)
    x = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(n)
    x = np.clip(x / max(1e-6, np.abs(x).max()) * 0.5, -1, 1).astype(np.float32)
    return np.stack([np.roll(x, 7 * c) for c in range(channels)], axis=1)


def wav_bytes(x: np.ndarray, sr: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def raw_wav(data: bytes, sr: int, channels: int, bits: int, fmt_tag: int = 1,
            riff_size: int | None = None, data_size: int | None = None) -> bytes:
    """A hand-made RIFF/WAVE file; sizes in the header may lie (None = the true size)."""
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt_tag, channels, sr, sr * block, block, bits)
    data_size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack(
        "<I", data_size & 0xFFFFFFFF) + data
    riff_size = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff_size & 0xFFFFFFFF) + body


def _items() -> list[tuple[str, str, bytes, str, str]]:
    """(name, suffix, bytes, expect, note) for every corpus entry."""
    good = speechlike(4.0, 24000)
    i16 = (good[:, 0] * 32767).astype("<i2").tobytes()
    out: list[tuple[str, str, bytes, str, str]] = [
        ("empty", ".wav", b"", ERROR, "0 bytes"),
        ("header-only", ".wav", raw_wav(b"", 24000, 1, 16), ERROR, "valid header, no samples"),
        ("one-sample", ".wav", wav_bytes(good[:1], 24000), EITHER, "1 sample"),
        ("0.1s", ".wav", wav_bytes(speechlike(0.1, 24000), 24000), EITHER, "100 ms"),
        ("speech-4s", ".wav", wav_bytes(good, 24000), OK, "the reference good input"),
        ("all-zero", ".wav", wav_bytes(np.zeros((72000, 1), np.float32), 24000), EITHER, "3 s of digital silence"),
        ("nan-float", ".wav", wav_bytes(np.full((48000, 1), np.nan, np.float32), 24000, "FLOAT"), EITHER, "NaN"),
        ("inf-float", ".wav", wav_bytes(np.where(good > 0, np.inf, -np.inf).astype(np.float32), 24000, "FLOAT"),
         EITHER, "+-inf"),
        ("one-nan", ".wav", wav_bytes(np.where(np.arange(len(good))[:, None] == 5000, np.nan, good).astype(np.float32),
                                      24000, "FLOAT"), EITHER, "one NaN sample in speech"),
        ("float-x100", ".wav", wav_bytes(good * 100, 24000, "FLOAT"), EITHER, "float samples far outside [-1, 1]"),
        ("dc-offset", ".wav", wav_bytes(np.clip(good * 0.3 + 0.6, -1, 1), 24000), OK, "large DC offset"),
        ("quiet-dc", ".wav", wav_bytes(good * 0.2 + 0.01, 24000), OK, "quiet speech, a small DC offset"),
        ("anti-phase", ".wav", wav_bytes(np.concatenate([good, -good], axis=1), 24000), OK,
         "stereo, one channel inverted: the channel mean is silence"),
        ("clipped", ".wav", wav_bytes(np.sign(good) * 1.0, 24000), EITHER, "square-wave clipping"),
    ]
    for sr in (8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000):
        out.append((f"rate-{sr}", ".wav", wav_bytes(speechlike(3.0, sr), sr), OK, f"{sr} Hz"))
    out.append(("rate-4000", ".wav", wav_bytes(speechlike(3.0, 4000), 4000), EITHER, "below 8 kHz"))
    out.append(("rate-384000", ".wav", wav_bytes(speechlike(1.0, 384000), 384000), EITHER, "above 192 kHz"))
    for ch in (2, 3, 6, 8):
        out.append((f"channels-{ch}", ".wav", wav_bytes(speechlike(3.0, 24000, ch), 24000), OK, f"{ch} channels"))
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        out.append((f"wav-{subtype.lower()}", ".wav", wav_bytes(good, 24000, subtype), OK, subtype))
    out += [
        ("flac", ".flac", wav_bytes(good, 24000, "PCM_16", "FLAC"), OK, "FLAC"),
        ("ogg-vorbis", ".ogg", wav_bytes(good, 24000, "VORBIS", "OGG"), OK, "Ogg Vorbis"),
        ("ogg-opus", ".ogg", wav_bytes(good, 48000 // 2, "OPUS", "OGG"), OK, "Ogg Opus"),
        ("mp3", ".mp3", wav_bytes(good, 24000, "MPEG_LAYER_III", "MP3"), OK, "MP3"),
        ("mp3-named-wav", ".wav", wav_bytes(good, 24000, "MPEG_LAYER_III", "MP3"), OK, "MP3 bytes, .wav name"),
        ("wav-named-mp3", ".mp3", wav_bytes(good, 24000), OK, "WAV bytes, .mp3 name"),
        ("random-bytes", ".wav", np.random.default_rng(1).bytes(50_000), ERROR, "noise bytes named .wav"),
        ("text-as-mp3", ".mp3", b"this is not audio at all\n" * 400, ERROR, "text named .mp3"),
        ("png-as-wav", ".wav", b"\x89PNG\r\n\x1a\n" + bytes(2000), ERROR, "PNG magic named .wav"),
        ("id3-only-mp3", ".mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(4000), ERROR, "ID3 tag, no frames"),
        ("truncated-header", ".wav", wav_bytes(good, 24000)[:22], ERROR, "cut inside the fmt chunk"),
        ("truncated-data", ".wav", wav_bytes(good, 24000)[: 44 + 24000 * 2 * 2 + 1], EITHER,
         "header says 4 s, file holds 2 s and an odd byte"),
        ("riff-4gib", ".wav", raw_wav(i16, 24000, 1, 16, riff_size=0xFFFFFFFF, data_size=0xFFFFFFF0), EITHER,
         "RIFF and data sizes claim ~4 GiB"),
        ("declared-1h", ".wav", raw_wav(i16[: 24000 * 2], 24000, 1, 16, data_size=3600 * 24000 * 2), EITHER,
         "header declares 1 h, file holds 1 s"),
        ("zero-channels", ".wav", raw_wav(i16, 24000, 0, 16), ERROR, "fmt chunk says 0 channels"),
        ("zero-rate", ".wav", raw_wav(i16, 0, 1, 16), ERROR, "fmt chunk says 0 Hz"),
        ("bad-format-tag", ".wav", raw_wav(i16, 24000, 1, 16, fmt_tag=0x1234), ERROR, "unknown codec tag"),
        ("long-11min-8k-u8", ".wav", wav_bytes(np.zeros((11 * 60 * 8000, 1), np.float32), 8000, "PCM_U8"), ERROR,
         "a real 11-minute file (over the 10-minute upload limit)"),
    ]
    return out


def make_corpus(folder: str | Path) -> list[Item]:
    """Write every corpus entry into `folder` -> the items (>= 30)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for name, suffix, data, expect, note in _items():
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        items.append(Item(name, path, expect, note))
    return items

