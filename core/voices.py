"""Saved voices: voice prompts in the reference `.npz` format plus a small JSON metadata file.

On disk, per voice `NAME` in the user's folder (default `voices/` at the repo root, env
`VALLEX_VOICES`):

    NAME.npz   audio_tokens int64 [1, T, 8], text_tokens int64 [1, L], lang_code int64 0-d
               (the reference's prompt format; `lang_code` uses the PROMPT mapping zh=0 ja=1 en=2,
               not the model's en=0 zh=1 ja=2)
    NAME.json  {"name", "transcript", "language", "created", "format"}

The `.npz` is the source of truth (a voice whose JSON is missing still loads). Files are read with
`allow_pickle=False` and validated; every write goes to a temporary file that is fsynced and then
renamed over the old one, so a crash mid-save leaves the previous version intact. Bundled presets
(`presets/voices/*.npz`, read-only) are listed alongside the user's voices.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import VoiceError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets" / "voices"
PROMPT_LANG_CODE = {"zh": 0, "ja": 1, "en": 2}  # reference macros.lang2code (prompt files)
CODE_TO_LANG = {v: k for k, v in PROMPT_LANG_CODE.items()}
N_CODEBOOKS = 8
CODEBOOK_SIZE = 1024
N_PHONEME_IDS = 70  # phoneme symbol table (ids 0..69)
MAX_FRAMES = 75 * 120  # 2 minutes of prompt: far beyond any useful voice prompt
MAX_NAME = 100
MAX_NAME_BYTES = 200  # in UTF-8; with the temp file's prefix and suffix, well under the 255 a file name may have
NPZ_KEYS = ("audio_tokens", "text_tokens", "lang_code")


@dataclass
class Voice:
    """A voice prompt. audio_tokens: np.int64 [T, 8] (EnCodec codes); text_ids: phoneme ids of the
    transcript; language: "en" | "zh" | "ja"."""

    name: str
    audio_tokens: np.ndarray
    text_ids: list[int]
    language: str
    transcript: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    preset: bool = False  # bundled, read-only

    @property
    def duration_s(self) -> float:
        return len(self.audio_tokens) / 75.0


def check_name(name: object) -> str:
    """A voice name that stays inside its folder: 1-100 chars, no path parts, NUL or control chars."""
    if not isinstance(name, str) or not name.strip():
        raise VoiceError("A voice needs a name.", "Type a name such as 'alice' or 'narrator-2'.")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise VoiceError(f"Voice name is {len(name)} characters long (at most {MAX_NAME}).", "Use a shorter name.")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:  # a file name holds 255 bytes, and CJK takes 3 each
        raise VoiceError(f"Voice name is {len(name.encode('utf-8'))} bytes long as a file name (at most "
                         f"{MAX_NAME_BYTES}: about {MAX_NAME_BYTES // 3} Chinese or Japanese characters).",
                         "Use a shorter name.")
    bad = [c for c in name if c in '/\\:*?"<>|' or ord(c) < 32 or ord(c) == 127]
    if bad or name.startswith(".") or os.path.isabs(name) or ".." in name:
        raise VoiceError(f"Voice name {name!r} has characters that are not allowed in a file name.",
                         "Use letters, digits, spaces, '-' or '_' (no '/', '\\', '..', or a leading '.').")
    return name


# ---------------------------------------------------------------------------------- npz format


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


def _check_voice(voice: Voice) -> None:
    tokens = np.asarray(voice.audio_tokens)
    if voice.language not in PROMPT_LANG_CODE:
        raise VoiceError(f"Voice language {voice.language!r} is not en, zh or ja.", "Pick en, zh or ja.")
    arrays = {"audio_tokens": tokens[None] if tokens.ndim == 2 else tokens,
              "text_tokens": np.asarray(voice.text_ids, dtype=np.int64)[None],
              "lang_code": np.asarray(PROMPT_LANG_CODE[voice.language], dtype=np.int64)}
    _validate(arrays, f"voice {voice.name!r}", "Make the voice again from a recording and its transcript.")


def _put_new(src: str | Path, dst: Path) -> None:
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


def _remove(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)


def _atomic_write(path: Path, write, overwrite: bool = True) -> None:
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
            _put_new(tmp, path)
            _remove(tmp)
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


def write_npz(path: Path, voice: Voice, overwrite: bool = True) -> None:
    """Write `voice` in the reference prompt format, atomically (FileExistsError: `path` exists and
    not `overwrite`)."""
    tokens = np.asarray(voice.audio_tokens, dtype=np.int64)
    arrays = {"audio_tokens": tokens[None] if tokens.ndim == 2 else tokens,
              "text_tokens": np.asarray(voice.text_ids, dtype=np.int64)[None],
              "lang_code": np.asarray(PROMPT_LANG_CODE[voice.language], dtype=np.int64)}
    _atomic_write(path, lambda fh: np.savez(fh, **arrays), overwrite)


# ---------------------------------------------------------------------------------- library


class VoiceLibrary:
    """User voices in `root` (read-write) plus bundled presets (read-only).

    A user voice with the same name as a preset hides the preset."""

    def __init__(self, root: str | Path | None = None, presets_dir: str | Path | None = PRESETS_DIR):
        if root is None:
            root = os.environ.get("VALLEX_VOICES") or ROOT / "voices"
        self.root = Path(root).expanduser()
        self.presets_dir = Path(presets_dir) if presets_dir is not None else None

    @contextlib.contextmanager
    def _folder(self, doing: str):
        """OS errors of the voices folder (not writable, not a folder, full) as a VoiceError."""
        try:
            yield
        except OSError as e:
            if isinstance(e, FileExistsError) and not self.root.is_dir():
                why = "it is a file, not a folder"
            else:
                why = e.strerror or str(e) or type(e).__name__
            raise VoiceError(f"Cannot {doing}: the voices folder {self.root} failed ({why}).",
                             "Make it writable, or choose another folder with --voices (or VALLEX_VOICES).") from e

    # -- paths
    def _npz(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.npz"

    def _meta(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.json"

    def _preset(self, name: str) -> Path | None:
        if self.presets_dir is None:
            return None
        path = self.presets_dir / f"{check_name(name)}.npz"
        return path if path.is_file() else None

    def exists(self, name: str) -> bool:
        with self._folder(f"look for the voice {name!r}"):
            return self._npz(name).is_file() or self._preset(name) is not None

    # -- read
    def _read(self, npz: Path, name: str, preset: bool) -> Voice:
        audio, text_ids, language = read_npz(npz)
        meta: dict = {}
        meta_path = npz.with_suffix(".json")
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable voice metadata %s: %s", meta_path, e)
        created = meta.get("created") or datetime.fromtimestamp(npz.stat().st_mtime, timezone.utc).isoformat(
            timespec="seconds")
        return Voice(name=name, audio_tokens=audio, text_ids=text_ids, language=language,
                     transcript=str(meta.get("transcript", "")), created=str(created), preset=preset)

    def load(self, name: str) -> Voice:
        """The voice called `name` (user voices first, then presets). Raises VoiceError."""
        npz = self._npz(name)
        with self._folder(f"read the voice {name!r}"):
            here = npz.is_file()
        if here:
            try:
                return self._read(npz, check_name(name), preset=False)
            except VoiceError as e:
                raise VoiceError(f"The voice {name!r} is damaged: {e.message}",
                                 f"Delete {npz} (or import a good copy under another name).") from e
        preset = self._preset(name)
        if preset is not None:
            return self._read(preset, check_name(name), preset=True)
        raise VoiceError(f"No saved voice called {name!r}.", "Pick one from the list, or make a new voice.")

    def list(self) -> list[Voice]:
        """User voices (newest first), then presets (by name). Unreadable files are skipped."""
        user, presets = [], []
        for folder, bucket, preset in ((self.root, user, False), (self.presets_dir, presets, True)):
            with self._folder("list the voices"):
                files = sorted(folder.glob("*.npz")) if folder is not None and folder.is_dir() else []
            for npz in files:
                if npz.name.startswith("."):
                    continue
                try:
                    bucket.append(self._read(npz, npz.stem, preset))
                except VoiceError as e:
                    log.warning("skipping voice file %s: %s", npz, e.message)
        names = {v.name for v in user}
        user.sort(key=lambda v: v.created, reverse=True)
        return user + [v for v in presets if v.name not in names]

    # -- write
    def save(self, voice: Voice, overwrite: bool = True) -> Voice:
        """Write `voice` into the user folder (atomically). Returns the saved Voice."""
        name = check_name(voice.name)
        _check_voice(voice)
        npz = self._npz(name)
        self._not_a_preset(name)
        saved = Voice(name=name, audio_tokens=np.asarray(voice.audio_tokens, dtype=np.int64),
                      text_ids=[int(t) for t in voice.text_ids], language=voice.language,
                      transcript=voice.transcript or "", created=voice.created, preset=False)
        try:
            with self._folder(f"save the voice {name!r}"):
                self.root.mkdir(parents=True, exist_ok=True)
                write_npz(npz, saved, overwrite)
                self._write_meta(saved)
        except VoiceError as e:
            if isinstance(e.__cause__, FileExistsError) and self.root.is_dir():
                raise self._taken(name) from None
            raise
        return saved

    def _taken(self, name: str) -> VoiceError:
        """The name is taken: by a voice in the list, or by a damaged file the list leaves out."""
        try:
            self._read(self._npz(name), name, preset=False)
        except VoiceError:
            return VoiceError(f"The name {name!r} is taken by a damaged voice file, {self._npz(name)}.",
                              "Delete that file to free the name, or pick another name.")
        return VoiceError(f"A voice called {name!r} already exists.", "Pick another name, or delete the old voice first.")

    def _write_meta(self, voice: Voice) -> None:
        meta = {"name": voice.name, "transcript": voice.transcript, "language": voice.language,
                "created": voice.created, "format": 1}
        data = json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8")
        _atomic_write(self._meta(voice.name), lambda fh: fh.write(data))

    def _require_user(self, name: str) -> Path:
        npz = self._npz(name)
        with self._folder(f"change the voice {name!r}"):
            here = npz.is_file()
        if here:
            return npz
        if self._preset(name) is not None:
            raise VoiceError(f"{name!r} is a bundled preset and cannot be changed.",
                             "Import or save it under a new name, then change that copy.")
        raise VoiceError(f"No saved voice called {name!r}.", "Pick one from the list.")

    def _not_a_preset(self, name: str) -> None:
        """A user voice may not take a bundled voice's name: it would hide the bundled one."""
        if self._preset(name) is not None:
            raise VoiceError(f"{name!r} is the name of a bundled voice.", "Pick another name.")

    def rename(self, old: str, new: str) -> Voice:
        npz = self._require_user(old)
        new = check_name(new)
        if new == check_name(old):
            return self.load(new)
        self._not_a_preset(new)
        voice = self.load(old)
        voice.name = new
        with self._folder(f"rename the voice {old!r}"):
            try:  # claim the new name (fails if taken), then describe it, and only then let go of the old
                _put_new(npz, self._npz(new))
            except FileExistsError:
                raise self._taken(new) from None
            try:
                self._write_meta(voice)
            except BaseException:  # undo: the old name keeps its voice
                if npz.exists():
                    _remove(self._npz(new))
                else:
                    os.replace(self._npz(new), npz)
                raise
            _remove(npz)
            _remove(self._meta(old))
        return voice

    def delete(self, name: str) -> None:
        npz = self._require_user(name)
        with self._folder(f"delete the voice {name!r}"):
            npz.unlink()
            _remove(self._meta(name))

    def import_npz(self, path: str | Path, name: str | None = None, transcript: str = "") -> Voice:
        """Copy a reference `.npz` prompt into the library (validated; pickles refused)."""
        path = Path(path)
        audio, text_ids, language = read_npz(path)
        voice = Voice(name=check_name(name or path.stem), audio_tokens=audio, text_ids=text_ids,
                      language=language, transcript=transcript)
        return self.save(voice, overwrite=False)

    def export_npz(self, name: str) -> Path:
        """The path of the voice's `.npz` (reference format), for download or use by VALL-E X."""
        npz = self._npz(name)
        if npz.is_file():
            return npz
        preset = self._preset(name)
        if preset is not None:
            return preset
        raise VoiceError(f"No saved voice called {name!r}.", "Pick one from the list.")
