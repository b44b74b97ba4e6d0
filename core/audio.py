"""Audio in and out: constants, loading any format with limits, resampling, encoding.

Decoding tries libsndfile first (wav, flac, ogg vorbis/opus, mp3 and more) and falls back to the
ffmpeg command line (m4a/aac, webm from browsers, video files). Size, duration, rate and channel
limits are checked on the file size and the header before the samples are decoded, and ffmpeg
never decodes past the duration limit (browser webm often declares no duration at all).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from core.errors import AudioError
from core.vad import PromptReport, check_prompt


def exact_div(x: int, y: int) -> int:
    assert x % y == 0, f"{x} is not a multiple of {y}"
    return x // y


SAMPLE_RATE = 24000  # Hz: EnCodec 24 kHz in, Vocos 24 kHz out
HOP_LENGTH = 320  # samples per codec frame
FRAME_RATE = exact_div(SAMPLE_RATE, HOP_LENGTH)  # 75 codec frames per second
N_CODEBOOKS = 8  # EnCodec codebooks used at 6 kbps
CODEBOOK_SIZE = 1024  # codes per codebook

MIN_INPUT_RATE = 8000  # Hz, lowest rate accepted on input
MAX_INPUT_RATE = 192000  # Hz, highest rate accepted on input
MAX_CHANNELS = 64
MAX_SECONDS = 600.0  # default duration limit of one upload (10 min)
MAX_BYTES = 256 * 2**20  # default size limit of one upload (256 MiB)
MAX_DECODED_SAMPLES = 128 * 2**20  # frames x channels: 512 MiB of float32
FFMPEG_TIMEOUT_S = 120

__all__ = [
    "SAMPLE_RATE", "HOP_LENGTH", "FRAME_RATE", "N_CODEBOOKS", "CODEBOOK_SIZE", "AudioInfo",
    "load_audio", "load_mono", "to_mono", "resample", "check_prompt", "PromptReport",
    "encode_audio", "save_audio", "FORMATS",
]

log = logging.getLogger(__name__)

_FORMAT_HINT = "Save or export it as WAV, FLAC, MP3, OGG/Opus, M4A or WebM and upload it again."


@dataclass(frozen=True)
class AudioInfo:
    """What a header declares, checked before decoding."""

    sample_rate: int
    channels: int
    seconds: float | None  # None when the container does not say (e.g. browser webm)


# ----------------------------------------------------------------------------- array inputs
def _is_tensor(x) -> bool:
    """A torch tensor, told apart without importing torch (file objects have .detach too)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "numpy")


def _int_to_float(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1) (int16 / 32768, as Gradio's tuples need)."""
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if x.dtype in (np.int8, np.int16, np.int32):
        return x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
    raise AudioError(f"audio samples of type {x.dtype} are not supported.",
                     "Pass float32 in [-1, 1] or int16/int32 PCM samples.")


def _array_to_2d(x, name: str = "audio") -> np.ndarray:
    """Any [N] or [N, C] array (numpy or torch; float or int PCM) -> float32 [N, C]."""
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind in "iu":
        x = _int_to_float(x)
    elif x.dtype.kind != "f":
        raise AudioError(f"{name} has samples of type {x.dtype}.", "Pass float32 or int16 audio samples.")
    x = x.astype(np.float32, copy=False)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise AudioError(f"{name} has shape {x.shape}; expected [samples] or [samples, channels].",
                         "Pass a 1-D mono array or a 2-D [samples, channels] array.")
    if x.shape[1] > MAX_CHANNELS and x.shape[0] <= MAX_CHANNELS:
        x = x.T  # [channels, samples]: unambiguous once there are more samples than any channel count
    return x


def _check_info(info: AudioInfo, name: str, max_seconds: float) -> None:
    if not MIN_INPUT_RATE <= info.sample_rate <= MAX_INPUT_RATE:
        raise AudioError(f"{name} has a sample rate of {info.sample_rate} Hz, outside 8-192 kHz.",
                         "Export it at 16, 24, 44.1 or 48 kHz.")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{name} declares {info.channels} channels.", "Export it as mono or stereo.")
    if info.seconds is not None and info.seconds > max_seconds:
        raise AudioError(f"{name} declares a length of {_fmt_seconds(info.seconds)}; "
                         f"the limit is {_fmt_seconds(max_seconds)}.",
                         "Trim it to the part you need (a voice prompt needs only 3-10 s of speech).")
    if info.seconds is not None and info.seconds * info.sample_rate * info.channels > MAX_DECODED_SAMPLES:
        raise AudioError(f"{name} would decode to more than {MAX_DECODED_SAMPLES // 2**20} M samples.",
                         "Export a shorter mono clip at 48 kHz or less.")


def _check_samples(x: np.ndarray, name: str) -> np.ndarray:
    if x.shape[0] == 0:
        raise AudioError(f"{name} holds no audio samples.", "Record or upload a few seconds of speech.")
    if not np.isfinite(x).all():
        raise AudioError(f"{name} contains NaN or infinite samples.",
                         "The file or array is corrupt: re-export the recording and try again.")
    return x


def _fmt_seconds(s: float) -> str:
    """90.0 s, 10 min, 10 min 1 s, 2 h 5 min: never rounded onto the limit it is compared with."""
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        m, sec = divmod(int(s), 60)
        return f"{m} min" + (f" {sec} s" if sec else "")
    h, m = divmod(int(s) // 60, 60)
    return f"{h} h" + (f" {m} min" if m else "")


# ----------------------------------------------------------------------------- file inputs
def _read_bytes(src, max_bytes: int) -> tuple[bytes | None, Path | None, str]:
    """Path -> (None, path, name) after a size check; bytes / file-like -> (data, None, name)."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_dir():
            raise AudioError(f"{path} is a folder, not an audio file.", "Give the path of one recording.")
        if not path.is_file():
            raise AudioError(f"audio file {path} was not found.", "Check the path and upload the file again.")
        size = path.stat().st_size
        if size == 0:
            raise AudioError(f"{path.name} is empty (0 bytes).", "Record or upload the file again.")
        if size > max_bytes:
            raise AudioError(f"{path.name} is {size / 2**20:.0f} MiB; "
                             f"the limit is {max_bytes / 2**20:.0f} MiB.",
                             "Upload a shorter clip (a voice prompt needs only 3-10 s of speech).")
        return None, path, path.name
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif hasattr(src, "read"):
        data = src.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise AudioError("the audio file object was opened in text mode.", "Open it with mode 'rb'.")
    else:
        raise AudioError(f"cannot read audio from a {type(src).__name__}.",
                         "Pass a file path, bytes, a file object, (sample_rate, array) "
                         "or an array with sample_rate.")
    if len(data) == 0:
        raise AudioError("the uploaded audio is empty (0 bytes).", "Record or upload the file again.")
    if len(data) > max_bytes:
        raise AudioError(f"the upload is over the {max_bytes / 2**20:.0f} MiB limit.",
                         "Upload a shorter clip (a voice prompt needs only 3-10 s of speech).")
    return data, None, "the uploaded audio"


def _decode_soundfile(source, name: str, max_seconds: float) -> tuple[np.ndarray, int] | None:
    """libsndfile decode, or None when it does not know the format."""
    try:
        snd = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    with snd:
        seconds = snd.frames / snd.samplerate if snd.samplerate > 0 else None
        _check_info(AudioInfo(snd.samplerate, snd.channels, seconds), name, max_seconds)
        x = snd.read(frames=int(max_seconds * snd.samplerate) + 1, dtype="float32", always_2d=True)
        return x, snd.samplerate


def _probe_ffmpeg(path: Path, name: str) -> AudioInfo:
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,duration:format=duration", "-of", "json", str(path.resolve())]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        meta = json.loads(done.stdout or b"{}")
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        raise AudioError(f"{name} could not be inspected ({type(e).__name__}).", _FORMAT_HINT) from e
    streams = meta.get("streams") or []
    if done.returncode != 0 or not streams:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        why = why[0].replace(f"{path.resolve()}: ", "")  # ffprobe names the (server's temp) path
        raise AudioError(f"{name} is not a readable audio file ({why[:160]}).", _FORMAT_HINT)
    st = streams[0]
    dur = st.get("duration") or (meta.get("format") or {}).get("duration")
    try:
        seconds = float(dur) if dur not in (None, "N/A") else None
    except ValueError:
        seconds = None
    return AudioInfo(int(st.get("sample_rate") or 0), int(st.get("channels") or 0), seconds)


def _looks_like_audio(path: Path) -> bool:
    """Whether the file starts like an audio container ffmpeg might read (mp4/m4a, webm/mkv, ogg,
    mp3, AAC, FLAC, WAV, AIFF, CAF, AMR, WMA, au): only to tell "needs ffmpeg" from "not audio"
    when ffmpeg is missing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return True  # let the caller's own error speak
    magic = (b"\x1aE\xdf\xa3", b"OggS", b"ID3", b"fLaC", b"RIFF", b"RIFX", b"RF64", b"FORM", b"caff", b"#!AMR",
             b"0&\xb2u", b".snd")
    return (head[4:8] == b"ftyp" or head.startswith(magic)
            or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0))  # an MPEG / ADTS frame


def _decode_ffmpeg(path: Path, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        if not _looks_like_audio(path):
            raise AudioError(f"{name} is not an audio file (it does not start like any audio format).",
                             _FORMAT_HINT)
        raise AudioError(f"{name} is in a compressed format that needs ffmpeg, which is not installed.",
                         "Install ffmpeg (e.g. `apt install ffmpeg`) or upload a WAV/FLAC/MP3/OGG file.")
    info = _probe_ffmpeg(path, name)
    _check_info(info, name, max_seconds)
    # -t caps decoding just past the limit, so an undeclared 1-hour webm is never fully decoded.
    # An undeclared length is bounded by the sample budget too (rate x channels x seconds).
    cap_s = min(max_seconds, MAX_DECODED_SAMPLES / (info.sample_rate * info.channels))
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path.resolve()), "-map", "0:a:0", "-vn",
           "-t", f"{cap_s + 0.05:.3f}", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise AudioError(f"decoding {name} took too long.", "Upload a shorter clip or a WAV file.") from e
    x = np.frombuffer(done.stdout, dtype="<f4")
    if done.returncode != 0 and x.size == 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError(f"{name} could not be decoded ({why[0][:160]}); the file may be damaged.",
                         _FORMAT_HINT)
    if done.returncode != 0:
        log.warning("%s decoded with errors (damaged or truncated?): kept %d samples", name, x.size)
    x = x[: x.size - x.size % info.channels].reshape(-1, info.channels)
    if cap_s < max_seconds and x.shape[0] > cap_s * info.sample_rate:
        raise AudioError(f"{name} would decode to more than {MAX_DECODED_SAMPLES // 2**20} M samples.",
                         "Export a shorter mono clip at 48 kHz or less.")
    return x.astype(np.float32), info.sample_rate


def _decode_file(data: bytes | None, path: Path | None, name: str,
                 max_seconds: float) -> tuple[np.ndarray, int]:
    got = _decode_soundfile(io.BytesIO(data) if data is not None else str(path), name, max_seconds)
    if got is not None:
        return got
    if path is not None:
        return _decode_ffmpeg(path, name, max_seconds)
    # ffmpeg needs a seekable file for m4a/mp4 (the index is often at the end): spool to disk.
    with tempfile.TemporaryDirectory(prefix="vallex-audio-") as tmp:
        tmp_path = Path(tmp) / "upload"
        tmp_path.write_bytes(data)
        return _decode_ffmpeg(tmp_path, name, max_seconds)


# ----------------------------------------------------------------------------- public loaders
def load_audio(src, *, sample_rate: int | None = None, max_seconds: float = MAX_SECONDS,
               max_bytes: int = MAX_BYTES) -> tuple[np.ndarray, int]:
    """Decode any audio input, keeping its rate and channels.

    src: a path, bytes, a binary file object, Gradio's `(sample_rate, ndarray)` tuple (int16
    scaled by 1/32768, or float), or an ndarray / tensor `[N]` or `[N, C]` with `sample_rate`.
    Returns (float32 [N, C], sample_rate). Raises AudioError naming the problem and the fix.
    """
    if isinstance(src, tuple) and len(src) == 2 and not isinstance(src[0], (bytes, str)):
        sample_rate, src = src
    if isinstance(src, np.ndarray) or _is_tensor(src):
        if sample_rate is None:
            raise AudioError("an audio array came without its sample rate.",
                             "Pass sample_rate=... with the array.")
        x = _array_to_2d(src)
        try:
            sample_rate = int(sample_rate)
        except (TypeError, ValueError):
            raise AudioError(f"the sample rate {str(sample_rate)[:24]!r} is not a number.",
                             "Pass the recording's sample rate in Hz, e.g. 24000.") from None
        info = AudioInfo(sample_rate, x.shape[1], x.shape[0] / sample_rate if sample_rate > 0 else None)
        _check_info(info, "the audio", max_seconds)
        return _check_samples(x, "the audio"), int(sample_rate)
    data, path, name = _read_bytes(src, max_bytes)
    try:
        x, sr = _decode_file(data, path, name, max_seconds)
    except (sf.LibsndfileError, RuntimeError) as e:  # libsndfile opened it but failed mid-read
        log.info("libsndfile failed on %s (%s); trying ffmpeg", name, e)
        if path is None:
            raise AudioError(f"{name} could not be decoded ({e}); the file may be damaged.",
                             _FORMAT_HINT) from e
        x, sr = _decode_ffmpeg(path, name, max_seconds)
    if x.shape[0] > max_seconds * sr + 1:
        raise AudioError(f"{name} is longer than the {_fmt_seconds(max_seconds)} limit.",
                         "Trim it to the part you need (a voice prompt needs only 3-10 s of speech).")
    return _check_samples(x, name), sr


def to_mono(x: np.ndarray) -> np.ndarray:
    """[N] or [N, C] -> float32 [N]: the channel mean, as the reference prompt path. Where the
    channels cancel out (one wired in opposite phase) the mean would be near silence, so the
    loudest channel is taken instead, with a warning."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        return x
    mono = x.mean(axis=1, dtype=np.float32)
    if x.shape[1] > 1 and mono.size:
        power = np.einsum("nc,nc->c", x, x, dtype=np.float64)  # per channel, without a squared copy
        if float(mono @ mono) < 0.01 * float(power.max()):
            log.warning("the channels cancel out (one is in opposite phase): using channel %d alone",
                        int(power.argmax()) + 1)
            return np.ascontiguousarray(x[:, int(power.argmax())])
    return mono


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """float32 [N] or [N, C] from sr_in to sr_out with soxr (HQ); a no-op at equal rates."""
    x = np.asarray(x, dtype=np.float32)
    if int(sr_in) == int(sr_out) or x.shape[0] == 0:
        return x
    return soxr.resample(x, int(sr_in), int(sr_out), quality="HQ").astype(np.float32, copy=False)


def load_mono(src, sr: int = SAMPLE_RATE, *, sample_rate: int | None = None, max_seconds: float = MAX_SECONDS,
              max_bytes: int = MAX_BYTES) -> np.ndarray:
    """`load_audio`, then channel mean and soxr resampling to `sr`. Returns float32 [N]."""
    x, rate = load_audio(src, sample_rate=sample_rate, max_seconds=max_seconds, max_bytes=max_bytes)
    return resample(to_mono(x), rate, sr)


# ----------------------------------------------------------------------------- output
# fmt -> (soundfile format, subtype, allowed rates or None = any)
_SF_FORMATS = {
    "wav": ("WAV", "PCM_16", None),
    "flac": ("FLAC", "PCM_16", None),
    "ogg": ("OGG", "VORBIS", None),
    "opus": ("OGG", "OPUS", (8000, 12000, 16000, 24000, 48000)),
    "mp3": ("MP3", "MPEG_LAYER_III", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
}
FORMATS = (*_SF_FORMATS, "pcm")
_SUFFIXES = {".wav": "wav", ".flac": "flac", ".ogg": "ogg", ".oga": "ogg", ".opus": "opus", ".mp3": "mp3",
             ".pcm": "pcm", ".raw": "pcm"}


def encode_audio(wav, sr: int, fmt: str = "wav") -> bytes:
    """float [N] or [N, C] at `sr` -> file bytes in `fmt`: wav/flac (PCM16), ogg (Vorbis), opus
    (Ogg Opus), mp3, or pcm (raw int16 little-endian). Samples are clipped to [-1, 1]; opus and mp3
    resample to 48 kHz when `sr` is not one of their rates."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AudioError(f"audio format {fmt!r} is not supported.", f"Choose one of: {', '.join(FORMATS)}.")
    x = np.clip(_check_samples(_array_to_2d(wav), "the audio to save"), -1.0, 1.0)
    if fmt == "pcm":  # libsndfile's RAW writer, so pcm holds exactly the ints a wav would
        buf = io.BytesIO()
        sf.write(buf, x, int(sr), format="RAW", subtype="PCM_16", endian="LITTLE")
        return buf.getvalue()
    major, subtype, rates = _SF_FORMATS[fmt]
    if rates is not None and int(sr) not in rates:
        x, sr = resample(x, sr, 48000), 48000
    buf = io.BytesIO()
    sf.write(buf, x, int(sr), format=major, subtype=subtype)
    return buf.getvalue()


def check_output_path(path: str | os.PathLike) -> str:
    """Whether audio can be saved at `path`, checked before the work that makes it (nothing is
    written): its suffix names a format, it is not a folder, and its folder exists or can be made
    and is writable. Returns the format; raises AudioError saying what is wrong."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"Cannot tell the audio format from {path.name!r}.",
                         f"Use one of the suffixes {', '.join(sorted(_SUFFIXES))}.")
    if path.is_dir():
        raise AudioError(f"{path} is a folder.", f"Give a file name, e.g. {path / ('take' + path.suffix)}.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that is there
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        why = "is not a folder" if folder.exists() and not folder.is_dir() else "cannot be written to"
        raise AudioError(f"Cannot save {path}: {folder} {why}.", "Pick a place you can write to.")
    return fmt


def save_audio(path: str | os.PathLike, wav, sr: int) -> Path:
    """Write `wav` ([N] or [N, C] float) to `path`, format from its suffix; atomic (temp + rename)."""
    path = Path(path)
    data = encode_audio(wav, sr, check_output_path(path))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise AudioError(f"Cannot save {path}: {e.strerror or e}.", "Pick a place you can write to.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
