"""The reference's voice prompt file (`.npz`): read and validated without unpickling, written
atomically. core/voices.py keeps a library of them.

    audio_tokens int64 [1, T, 8], text_tokens int64 [1, L], lang_code int64 0-d (the PROMPT mapping
    zh=0 ja=1 en=2, not the model's en=0 zh=1 ja=2)
"""
from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from core.errors import VoiceError

PROMPT_LANG_CODE = {"zh": 0, "ja": 1, "en": 2}  # reference macros.lang2code (prompt files)
CODE_TO_LANG = {v: k for k, v in PROMPT_LANG_CODE.items()}
N_CODEBOOKS = 8
CODEBOOK_SIZE = 1024
N_PHONEME_IDS = 70  # phoneme symbol table (ids 0..69)
MAX_FRAMES = 75 * 120  # 2 minutes of prompt: far beyond any useful voice prompt
NPZ_KEYS = ("audio_tokens", "text_tokens", "lang_code")


def read_npz(path: str | Path) -> tuple[np.ndarray, list[int], str]:
    """Read and validate a reference prompt file -> (audio_tokens int64 [T, 8], text_ids, language).
    Raises VoiceError for pickled, damaged, malformed or out-of-range files: each array's header is
    read first, so a file cut short or one whose header claims a huge array is refused before
    anything is allocated."""
    path = Path(path)
    hint = "Use a .npz voice file saved by this studio or by VALL-E X (make_prompt)."
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04":  # np.load would try to unpickle anything that is not npy/npz
            raise VoiceError(f"{path.name} is not a readable .npz file (it is not a zip archive).", hint)
        with zipfile.ZipFile(path) as z:
            arrays = {key: _read_member(z, key, path.name, hint) for key in NPZ_KEYS}
    except VoiceError:
        raise
    except FileNotFoundError:
        raise VoiceError(f"Voice file {path} does not exist.", hint) from None
    except IsADirectoryError:
        raise VoiceError(f"{path} is a folder, not a voice file.", hint) from None
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, MemoryError) as e:
        raise VoiceError(f"{path.name} is damaged ({type(e).__name__}: {e}).", hint) from None
    return _validate(arrays, path.name, hint)


# An array's bytes, at most: the audio tokens of MAX_FRAMES frames (int64), with room to spare.
_MAX_ARRAY_BYTES = MAX_FRAMES * N_CODEBOOKS * 8 * 2


def _read_member(z: zipfile.ZipFile, key: str, fname: str, hint: str) -> np.ndarray:
    """One array of the archive, its header checked before its data is read: an object array
    (pickle) is refused, and so is a size the member cannot hold or no voice needs."""
    from numpy.lib import format as npy

    try:
        info = z.getinfo(f"{key}.npy")
    except KeyError:
        raise VoiceError(f"{fname} is missing {key}.", hint) from None
    with z.open(info) as fh:
        version = npy.read_magic(fh)
        shape, fortran, dtype = (npy.read_array_header_1_0(fh) if version == (1, 0)
                                 else npy.read_array_header_2_0(fh))
        if dtype.hasobject:
            raise VoiceError(f"{fname} holds pickled data ({key}), which is refused for safety.", hint)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > _MAX_ARRAY_BYTES:
            raise VoiceError(f"{fname}: {key} has shape {list(shape)}, far larger than any voice prompt.", hint)
        data = fh.read(nbytes + 1)
    if len(data) != nbytes:
        raise VoiceError(f"{fname} is damaged: {key} holds {len(data)} bytes of its {nbytes}.", hint)
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.copy()  # writable and owning its memory, as np.load's would be


def _validate(a: dict[str, np.ndarray], fname: str, hint: str) -> tuple[np.ndarray, list[int], str]:
    for key in NPZ_KEYS:
        if not np.issubdtype(a[key].dtype, np.integer):
            raise VoiceError(f"{fname}: {key} has dtype {a[key].dtype}, expected integers.", hint)
    audio, text, code = a["audio_tokens"], a["text_tokens"], a["lang_code"]
    if audio.ndim != 3 or audio.shape[0] != 1 or audio.shape[2] != N_CODEBOOKS or not 0 < audio.shape[1] <= MAX_FRAMES:
        raise VoiceError(f"{fname}: audio_tokens has shape {list(audio.shape)}, expected [1, T, 8] "
                         f"with 1 <= T <= {MAX_FRAMES}.", hint)
    if audio.min() < 0 or audio.max() >= CODEBOOK_SIZE:
        raise VoiceError(f"{fname}: audio_tokens values must be 0..{CODEBOOK_SIZE - 1}.", hint)
    if text.ndim != 2 or text.shape[0] != 1 or text.shape[1] == 0:
        raise VoiceError(f"{fname}: text_tokens has shape {list(text.shape)}, expected [1, L] with L >= 1.", hint)
    if text.min() < 0 or text.max() >= N_PHONEME_IDS:
        raise VoiceError(f"{fname}: text_tokens values must be 0..{N_PHONEME_IDS - 1}.", hint)
    if code.size != 1 or int(code.reshape(-1)[0]) not in CODE_TO_LANG:
        raise VoiceError(f"{fname}: lang_code must be one of 0 (zh), 1 (ja), 2 (en).", hint)
    language = CODE_TO_LANG[int(code.reshape(-1)[0])]
    return audio[0].astype(np.int64), [int(t) for t in text[0]], language


def check_voice(voice) -> None:
    """VoiceError unless `voice` holds what a prompt file can: en/zh/ja, codes [T, 8] in range,
    1 or more phoneme ids (whole numbers, never silently rounded) in range."""
    hint = "Make the voice again from a recording and its transcript."
    if not isinstance(voice.language, str) or voice.language not in PROMPT_LANG_CODE:
        raise VoiceError(f"Voice language {voice.language!r} is not en, zh or ja.", "Pick en, zh or ja.")
    try:
        tokens, text = (a.astype(np.int64) if a.size == 0 else a  # [] is float64 to numpy
                        for a in (np.asarray(voice.audio_tokens), np.asarray(voice.text_ids)))
    except (TypeError, ValueError) as e:  # ragged lists
        raise VoiceError(f"Voice {voice.name!r} has unreadable codes or phoneme ids ({e}).", hint) from None
    arrays = {"audio_tokens": tokens[None] if tokens.ndim == 2 else tokens, "text_tokens": text[None],
              "lang_code": np.asarray(PROMPT_LANG_CODE[voice.language], dtype=np.int64)}
    _validate(arrays, f"voice {voice.name!r}", hint)


def put_new(src: str | Path, dst: Path) -> None:
    """Give `dst` the contents of `src`, failing with FileExistsError when `dst` exists, even if
    another process creates it at the same moment (a check-then-write would let both succeed).
    A hard link does that in one step, and `src` stays; on a file system without hard links (FAT,
    some network shares) `dst` is claimed as an empty file first, then `src` is moved over it."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        raise
    except OSError:  # EPERM / ENOTSUP / ...: no hard links here
        pass
    os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.replace(src, dst)


def remove_file(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)


def atomic_write(path: Path, write, overwrite: bool = True) -> None:
    """write(fileobj) into a temp file beside `path`, fsync, then rename over `path`. Without
    `overwrite`, the temp file is hard-linked to `path` instead, which fails (FileExistsError) when
    `path` exists: a check-then-write would let two savers of one name both succeed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            put_new(tmp, path)
            remove_file(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_npz(path: Path, voice, overwrite: bool = True) -> None:
    """Write `voice` in the reference prompt format, atomically (FileExistsError: `path` exists and
    not `overwrite`)."""
    tokens = np.asarray(voice.audio_tokens, dtype=np.int64)
    arrays = {"audio_tokens": tokens[None] if tokens.ndim == 2 else tokens,
              "text_tokens": np.asarray(voice.text_ids, dtype=np.int64)[None],
              "lang_code": np.asarray(PROMPT_LANG_CODE[voice.language], dtype=np.int64)}
    atomic_write(path, lambda fh: np.savez(fh, **arrays), overwrite)
