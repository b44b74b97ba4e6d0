"""core.audio + core.vad on real recordings (converted to every upload format with ffmpeg)
and on synthetic edge cases: limits before decoding, bad files, the prompt checker, encoders."""
from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.audio import (FRAME_RATE, HOP_LENGTH, SAMPLE_RATE, check_prompt, encode_audio, load_audio,
                        load_mono, resample, save_audio)
from core.errors import AudioError, StudioError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg converts the test files")

# format -> ffmpeg output arguments
CONVERSIONS = {
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus", "-b:a", "48k"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"],
    "webm": ["-c:a", "libopus", "-b:a", "48k"],
}


def ffmpeg(src: Path, dest: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *args, str(dest)], check=True)
    return dest


@pytest.fixture(scope="module")
def prompts(golden) -> Path:
    return golden / "prompts"


@pytest.fixture(scope="module")
def converted(prompts, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("formats")
    files = {fmt: ffmpeg(prompts / "en-1.wav", out / f"en-1.{fmt}", *args)
             for fmt, args in CONVERSIONS.items()}
    # a browser-style webm: written to a pipe, so the container declares no duration
    with open(out / "stream.webm", "wb") as f:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(prompts / "ja-1.wav"),
                        "-c:a", "libopus", "-f", "webm", "pipe:1"], stdout=f, check=True)
    files["stream.webm"] = out / "stream.webm"
    files["zh-1.m4a"] = ffmpeg(prompts / "zh-1.wav", out / "zh-1.m4a", "-c:a", "aac")
    files["ja-1-stereo44.mp3"] = ffmpeg(prompts / "ja-1.wav", out / "ja-1-stereo44.mp3",
                                        "-ac", "2", "-ar", "44100")
    return files


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Best normalised cross-correlation over small lags (lossy codecs add a delay)."""
    n = min(len(a), len(b)) - 4000
    best = 0.0
    for lag in range(0, 2000, 1):
        x, y = a[lag:lag + n], b[:n]
        c = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))
        best = max(best, c)
        if best > 0.98:
            break
    return best


# ----------------------------------------------------------------------------------- constants
def test_constants():
    assert (SAMPLE_RATE, HOP_LENGTH, FRAME_RATE) == (24000, 320, 75)


# ----------------------------------------------------------------------------------- real files
def test_wav_files_keep_rate_channels_and_values(prompts):
    expected = [("en-1.wav", 16000, 106627), ("zh-1.wav", 22050, 44100), ("ja-1.wav", 22050, 97281)]
    for name, rate, n in expected:
        x, sr = load_audio(prompts / name)
        ref, _ = sf.read(prompts / name, dtype="float32", always_2d=True)
        assert sr == rate and x.shape == (n, 1) and x.dtype == np.float32
        np.testing.assert_array_equal(x, ref)


@pytest.mark.parametrize("fmt", list(CONVERSIONS))
def test_every_upload_format_decodes_to_the_same_speech(fmt, converted, prompts):
    ref = load_mono(prompts / "en-1.wav", 16000)
    x = load_mono(converted[fmt], 16000)
    assert abs(len(x) - len(ref)) < 0.1 * 16000  # encoder padding only
    assert corr(x, ref) > 0.9


def test_path_bytes_and_file_object_agree(converted):
    for key in ("mp3", "m4a", "webm"):
        path = converted[key]
        a, sr_a = load_audio(path)
        b, sr_b = load_audio(path.read_bytes())
        with open(path, "rb") as f:
            c, sr_c = load_audio(f)
        assert sr_a == sr_b == sr_c
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_browser_webm_without_duration_and_other_rates(converted, prompts):
    x = load_mono(converted["stream.webm"], 22050)
    ref = load_mono(prompts / "ja-1.wav", 22050)
    assert corr(x, ref) > 0.9
    y, sr = load_audio(converted["ja-1-stereo44.mp3"])
    assert sr == 44100 and y.shape[1] == 2
    z = load_mono(converted["zh-1.m4a"])  # float32 22.05 kHz source -> aac -> 24 kHz mono
    assert abs(len(z) / SAMPLE_RATE - 2.0) < 0.1


def test_gradio_tuple_int16_is_scaled_like_soundfile(prompts):
    pcm, sr = sf.read(prompts / "en-1.wav", dtype="int16")
    x, rate = load_audio((sr, pcm))
    ref, _ = sf.read(prompts / "en-1.wav", dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(x[:, 0], ref)
    stereo = np.stack([pcm, np.zeros_like(pcm)], axis=1)
    mono = load_mono((sr, stereo), 16000)
    np.testing.assert_allclose(mono, ref / 2, atol=1e-7)  # channel mean


def test_multichannel_high_rate_float_downmix_and_resample(tmp_path):
    t = np.arange(192000) / 192000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    six = np.stack([tone * (k % 2) for k in range(6)], axis=1)  # 3 of 6 channels carry the tone
    sf.write(tmp_path / "six.wav", six, 192000, subtype="FLOAT")
    x = load_mono(tmp_path / "six.wav")
    assert len(x) == SAMPLE_RATE
    assert abs(np.abs(x[1000:-1000]).max() - 0.25) < 0.01
    low, sr = load_audio(resample(tone, 192000, 8000), sample_rate=8000)
    assert sr == 8000 and low.shape == (8000, 1)


# ----------------------------------------------------------------------------------- bad input
def err(fn, *args, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, (StudioError, ValueError)) and info.value.hint
    return info.value


def test_empty_missing_and_not_audio(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "empty" in str(err(load_audio, tmp_path / "empty.wav"))
    e = err(load_audio, b"")
    assert "empty" in str(e) and e.user_message().startswith("The uploaded audio is empty (0 bytes). Record")
    assert StudioError("text_ids out of range", "Fix them.").user_message() == "text_ids out of range. Fix them."
    assert "not found" in str(err(load_audio, tmp_path / "nope.wav"))
    (tmp_path / "notes.wav").write_text("these are my meeting notes, not audio\n" * 20)
    e = err(load_audio, tmp_path / "notes.wav")
    assert "not a readable audio file" in str(e) and "WAV" in e.hint
    assert str(tmp_path) not in str(e)  # the file's name, not the (server's temp) path
    (tmp_path / "header.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a header and nothing else
    err(load_audio, tmp_path / "header.wav")


def test_truncated_files_give_what_is_there(prompts, converted, tmp_path):
    data = (prompts / "en-1.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:100_000])
    x, sr = load_audio(tmp_path / "cut.wav")
    assert sr == 16000 and abs(len(x) - 100_000 // 2) < 60
    mp3 = converted["mp3"].read_bytes()
    y = load_mono(mp3[: len(mp3) // 2], 16000)
    assert 2.0 < len(y) / 16000 < 4.5


def test_limits_are_checked_on_the_header_before_decoding(prompts, tmp_path):
    # FLAC whose STREAMINFO declares 2**36 samples (~50 days): refused from the header alone
    sf.write(tmp_path / "a.flac", sf.read(prompts / "en-1.wav")[0], 16000)
    flac = bytearray((tmp_path / "a.flac").read_bytes())
    field = int.from_bytes(flac[18:26], "big") | ((1 << 36) - 1)
    flac[18:26] = field.to_bytes(8, "big")
    e = err(load_audio, bytes(flac))
    assert "declares" in str(e) and " h" in str(e)
    # WAV whose data chunk claims 4 GB but holds 1000 samples: the real samples come back
    fmt = struct.pack("<IHHIIHH", 16, 1, 2, 48000, 192000, 4, 16)
    hdr = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVEfmt " + fmt
    hdr += b"data" + struct.pack("<I", 0xFFFFFFE0)
    x, sr = load_audio(hdr + np.zeros(1000, "<i2").tobytes())
    assert x.shape == (500, 2) and sr == 48000
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 2048)
    assert "MiB" in str(err(load_audio, big, max_bytes=1024))
    assert "MiB" in str(err(load_audio, io.BytesIO(b"\0" * 2048), max_bytes=1024))


def test_one_hour_file_and_undeclared_length_are_refused(tmp_path, converted):
    hour = tmp_path / "hour.flac"
    with sf.SoundFile(hour, "w", 8000, 1, format="FLAC") as f:  # 1 h of near-silence compresses to ~KBs
        block = np.zeros(8000 * 60, dtype=np.float32)
        for _ in range(60):
            f.write(block)
    assert hour.stat().st_size < 2_000_000
    assert "60 min" in str(err(load_audio, hour))  # refused from the header: nothing decoded
    e = err(load_audio, converted["stream.webm"], max_seconds=2.0)  # ffmpeg stops at the limit
    assert "longer than" in str(e)


def test_bad_arrays_and_rates(tmp_path):
    bad = np.full(16000, 0.1, np.float32)
    bad[500] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    assert "NaN" in str(err(load_audio, tmp_path / "nan.wav"))
    assert "NaN" in str(err(load_audio, np.array([0.1, np.nan, 0.2], np.float32), sample_rate=16000))
    assert "NaN" in str(err(load_audio, (16000, np.array([0.1, np.inf], np.float32))))
    assert "sample rate" in str(err(load_audio, np.zeros(100, np.float32)))
    assert "8-192 kHz" in str(err(load_audio, np.zeros(4000, np.float32), sample_rate=4000))
    assert "no audio" in str(err(load_audio, np.zeros(0, np.float32), sample_rate=16000))


# ----------------------------------------------------------------------------------- prompt checker
def test_check_prompt_on_real_recordings(prompts):
    for name in ("en-1.wav", "ja-1.wav"):
        x, sr = load_audio(prompts / name)
        r = check_prompt(x, sr)
        assert r.ok and r.advice == [], (name, r.advice)
        assert 3.0 <= r.speech_s <= r.end_s - r.start_s <= 10.0 + 1e-6
        assert -30 < r.level_db < -8 and r.snr_db > 15 and r.clipping < 0.001
        assert r.wav.shape == (round(r.end_s * sr) - round(r.start_s * sr),)
    x, sr = load_audio(prompts / "zh-1.wav")  # 2 s: usable but short
    r = check_prompt(x, sr)
    assert not r.ok and r.issues == ["too_short"] and "too short" in r.advice[0].lower()


def test_check_prompt_picks_speech_from_a_long_recording(prompts):
    x = load_mono(prompts / "en-1.wav", 16000)
    rng = np.random.default_rng(0)
    hiss = lambda n: rng.normal(0, 1e-4, n).astype(np.float32)  # noqa: E731
    long = np.concatenate([hiss(16000 * 8), x, hiss(16000 * 10), x[: 16000 * 2], hiss(16000 * 5)])
    r = check_prompt(long, 16000)
    assert 7.5 < r.start_s < 8.1 and 13.5 < r.end_s < 14.9  # the en-1 speech, silence trimmed
    assert r.duration == pytest.approx(len(long) / 16000)
    twice = np.concatenate([x, x, x])  # 20 s of speech: a <= 10 s window cut at a pause
    r = check_prompt(twice, 16000)
    assert r.end_s - r.start_s <= 10.0 + 1e-6 and r.speech_s > 6


def test_check_prompt_advice(prompts):
    x = load_mono(prompts / "en-1.wav", 16000)
    assert check_prompt(x * 0.005, 16000).issues == ["too_quiet"]
    clipped = check_prompt(np.clip(x * 6, -1, 1), 16000)
    assert "clipped" in clipped.issues and any("clipped" in a.lower() for a in clipped.advice)
    flat = check_prompt(np.clip(x * 6, -0.6, 0.6), 16000)  # clipped, then turned down
    assert "clipped" in flat.issues
    noise = np.random.default_rng(1).normal(0, 1, len(x)).astype(np.float32)
    noisy = check_prompt(x + noise * 0.25 * np.sqrt((x**2).mean()), 16000)
    assert "noisy" in noisy.issues and noisy.snr_db < 15
    assert any("background noise" in a.lower() for a in noisy.advice)
    stereo = check_prompt(np.stack([x, x], axis=1), 16000)
    assert stereo.ok


def test_check_prompt_refuses_unusable_audio(prompts):
    x = load_mono(prompts / "en-1.wav", 16000)
    assert "silent" in str(err(check_prompt, np.zeros(48000, np.float32), 16000))
    assert "0.1 s" in str(err(check_prompt, x[16000:17600], 16000))
    noise = np.random.default_rng(2).normal(0, 0.05, 48000).astype(np.float32)
    assert "noise" in str(err(check_prompt, noise, 16000))
    assert "NaN" in str(err(check_prompt, np.full(48000, np.nan, np.float32), 16000))


# ----------------------------------------------------------------------------------- output
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "opus", "mp3", "pcm"])
def test_encode_audio_round_trips(fmt, prompts):
    x = 0.8 * load_mono(prompts / "en-1.wav")  # 24 kHz, below full scale after resampling
    data = encode_audio(x, SAMPLE_RATE, fmt)
    if fmt == "pcm":
        y, sr = np.frombuffer(data, "<i2").astype(np.float32) / 32768, SAMPLE_RATE
        assert len(data) == 2 * len(x)
    else:
        y2, sr = load_audio(data)
        y = y2[:, 0]
    assert sr == SAMPLE_RATE
    if fmt in ("wav", "flac", "pcm"):
        assert len(y) == len(x) and np.abs(y - x).max() < 1.0 / 16000
    else:
        assert corr(y, x) > 0.9


def test_encode_rates_and_clipping():
    t = np.arange(22050) / 22050
    tone = (1.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)  # over full scale: clipped on output
    y, sr = load_audio(encode_audio(tone, 22050, "opus"))  # opus has no 22.05 kHz: resampled to 48k
    assert sr == 48000 and len(y) == 48000
    pcm = np.frombuffer(encode_audio(tone, 22050, "pcm"), "<i2")
    assert pcm.max() == 32767 and pcm.min() <= -32767
    wav, _ = load_audio(encode_audio(tone, 22050, "wav"))
    np.testing.assert_array_equal(wav[:, 0], pcm / np.float32(32768))  # same ints in both
    assert "not supported" in str(err(encode_audio, tone, 22050, "aiff"))


def test_save_audio_picks_format_from_suffix(tmp_path, prompts):
    x = load_mono(prompts / "zh-1.wav")
    for suffix, kind in [(".wav", "WAV"), (".flac", "FLAC"), (".mp3", "MP3"), (".ogg", "OGG")]:
        path = save_audio(tmp_path / "out" / f"a{suffix}", x, SAMPLE_RATE)
        assert sf.info(path).format == kind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.flac", "a.mp3", "a.ogg", "a.wav"]
    err(save_audio, tmp_path / "a.xyz", x, SAMPLE_RATE)


def test_spectral_effects_work_block_by_block_on_long_audio():
    """Whisper and Robot on two minutes: the STFT is taken a block at a time (the whole clip's
    spectra at once peaked at ~440 MB here, several GB for a 10-minute 96 kHz upload), and the
    result is the same whatever the block size."""
    import tracemalloc

    from core import effects

    x = (np.random.default_rng(0).standard_normal(24000 * 120) * 0.1).astype(np.float32)
    for effect in (effects.Whisper(0.7, seed=3), effects.Robot(0.5)):
        tracemalloc.start()
        try:
            y = effect.apply(x, 24000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert y.shape == x.shape and np.isfinite(y).all()
        assert peak < 200e6, f"{type(effect).__name__} held {peak / 1e6:.0f} MB"
    short = x[:24000 * 3]
    whole = effects.Whisper(0.7, seed=3).apply(short, 24000)
    old, effects._BLOCK = effects._BLOCK, 7
    try:
        assert np.allclose(effects.Whisper(0.7, seed=3).apply(short, 24000), whole, atol=1e-6)
    finally:
        effects._BLOCK = old


def test_messages_for_a_folder_a_limit_just_passed_and_no_ffmpeg(tmp_path, monkeypatch):
    from core import audio

    (tmp_path / "adir.wav").mkdir()
    assert "adir.wav is a folder, not an audio file" in str(err(load_audio, tmp_path / "adir.wav"))
    # 601 s against a 600 s limit was "10 min; the limit is 10 min"
    assert [audio._fmt_seconds(s) for s in (90, 600, 601, 7200, 7500)] == \
        ["90.0 s", "10 min", "10 min 1 s", "2 h", "2 h 5 min"]
    monkeypatch.setattr(audio.shutil, "which", lambda _: None)  # no ffmpeg
    (tmp_path / "notes.wav").write_text("these are my meeting notes, not audio\n" * 20)
    e = err(load_audio, tmp_path / "notes.wav")
    assert "not a" in str(e) and "ffmpeg" not in str(e)
    (tmp_path / "a.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(400))
    assert "needs ffmpeg" in str(err(load_audio, tmp_path / "a.m4a"))
