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
import threading
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import VoiceError
from core.voice_file import atomic_write, check_voice, put_new, read_npz, remove_file, write_npz

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets" / "voices"
MAX_NAME = 100
MAX_NAME_BYTES = 200  # in UTF-8; with the temp file's prefix and suffix, well under the 255 a file name may have
# Not in a name: controls, invisible format marks (U+200B, U+202E, ...; the joiners U+200C/D that
# emoji and some scripts need stay), line separators, lone surrogates (no file name can hold one).
_BAD_CATEGORIES, _JOINERS = ("Cc", "Cf", "Cs", "Zl", "Zp"), "\u200c\u200d"
_WRITE_LOCK = threading.RLock()  # one writer of .npz + .json at a time: no voice with another's transcript


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


def check_name(name: object, new: bool = False) -> str:
    """A voice name that stays inside its folder: 1-100 chars, no path parts, NUL or control chars.
    `new` (a name being given: save, rename, import): no invisible marks either, which would make
    a voice look like another; a voice saved under such a name before still loads and deletes."""
    if not isinstance(name, str) or not name.strip():
        raise VoiceError("A voice needs a name.", "Type a name such as 'alice' or 'narrator-2'.")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise VoiceError(f"Voice name is {len(name)} characters long (at most {MAX_NAME}).", "Use a shorter name.")
    hidden = [c for c in name if unicodedata.category(c) in (_BAD_CATEGORIES if new else ("Cc", "Cs"))
              and c not in _JOINERS]
    if hidden:
        raise VoiceError(f"Voice name {name!r} has invisible or control characters "
                         f"({', '.join(sorted({f'U+{ord(c):04X}' for c in hidden}))}), which are not allowed.",
                         "Type the name again with letters, digits, spaces, '-' or '_'.")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:  # a file name holds 255 bytes, and CJK takes 3 each
        raise VoiceError(f"Voice name is {len(name.encode('utf-8'))} bytes long as a file name (at most "
                         f"{MAX_NAME_BYTES}: about {MAX_NAME_BYTES // 3} Chinese or Japanese characters).",
                         "Use a shorter name.")
    bad = [c for c in name if c in '/\\:*?"<>|']
    if bad or name.startswith(".") or os.path.isabs(name) or ".." in name:
        raise VoiceError(f"Voice name {name!r} has characters that are not allowed in a file name.",
                         "Use letters, digits, spaces, '-' or '_' (no '/', '\\', '..', or a leading '.').")
    return name


# ---------------------------------------------------------------------------------- transcripts


def transcript_words(transcript: str) -> tuple[str, str | None]:
    """A prompt's transcript -> (its English, Chinese and Japanese words, a note of what was left
    out or None). VoiceError when it has no such words."""
    from core.text.scripts import screen

    transcript = typed_transcript(transcript)
    screened = screen(transcript)
    if not screened.has_words():
        raise VoiceError(f"The transcript {transcript[:40]!r} has no English, Chinese or Japanese words"
                         + (f" ({screened.reason()})." if screened.dropped else "."),
                         "Type what the recording says in English, Chinese or Japanese.")
    if not screened.dropped:
        return transcript, None
    return screened.text.strip(), f"The transcript's {screened.note()}."


def typed_transcript(transcript) -> str:
    """A transcript as stripped text ("" for None); VoiceError for anything but text."""
    if transcript is not None and not isinstance(transcript, str):
        raise VoiceError(f"The transcript must be text, not {type(transcript).__name__}.",
                         "Type what the recording says, or leave it empty for Whisper to write it.")
    return (transcript or "").strip()


def voice_with_transcript(voice, transcript: str):
    """A Voice with a corrected transcript (or one for a bundled voice, which has none): the
    phonemes are made again from the new words in the voice's language; its audio codes stay, so
    no recording (and no codec) is needed."""
    from core.text import phonemize

    transcript, _ = transcript_words(transcript)
    return replace(voice, transcript=transcript, text_ids=list(phonemize(transcript, language=voice.language).ids))


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
            if not isinstance(meta, dict):  # [], "text", null: the voice itself is fine
                log.warning("ignoring voice metadata %s: not a JSON object", meta_path)
                meta = {}
        created = meta.get("created")
        if not isinstance(created, str) or not created:
            created = datetime.fromtimestamp(npz.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        transcript = meta.get("transcript")  # null is no transcript, not the words "None"
        return Voice(name=name, audio_tokens=audio, text_ids=text_ids, language=language,
                     transcript=transcript if isinstance(transcript, str) else "", created=created, preset=preset)

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
        if not isinstance(voice, Voice):
            raise VoiceError(f"Only a Voice can be saved, not {type(voice).__name__}.",
                             "Pass the Voice from studio.make_voice (or voices.load).")
        name = check_name(voice.name, new=True)
        check_voice(voice)
        npz = self._npz(name)
        self._not_a_preset(name)
        saved = Voice(name=name, audio_tokens=np.asarray(voice.audio_tokens, dtype=np.int64),
                      text_ids=[int(t) for t in voice.text_ids], language=voice.language,
                      transcript=voice.transcript or "", created=voice.created, preset=False)
        try:
            with self._folder(f"save the voice {name!r}"), _WRITE_LOCK:
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
        atomic_write(self._meta(voice.name), lambda fh: fh.write(data))

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
        new = check_name(new, new=True)
        if new == check_name(old):
            return self.load(new)
        self._not_a_preset(new)
        voice = self.load(old)
        voice.name = new
        with self._folder(f"rename the voice {old!r}"), _WRITE_LOCK:
            try:  # claim the new name (fails if taken), then describe it, and only then let go of the old
                put_new(npz, self._npz(new))
            except FileExistsError:
                raise self._taken(new) from None
            try:
                self._write_meta(voice)
            except BaseException:  # undo: the old name keeps its voice
                if npz.exists():
                    remove_file(self._npz(new))
                else:
                    os.replace(self._npz(new), npz)
                raise
            remove_file(npz)
            remove_file(self._meta(old))
        return voice

    def delete(self, name: str) -> None:
        npz = self._require_user(name)
        with self._folder(f"delete the voice {name!r}"), _WRITE_LOCK:
            npz.unlink()
            remove_file(self._meta(name))

    def import_npz(self, path: str | Path, name: str | None = None, transcript: str = "") -> Voice:
        """Copy a reference `.npz` prompt into the library (validated; pickles refused)."""
        path = Path(path)
        audio, text_ids, language = read_npz(path)
        voice = Voice(name=check_name(name or path.stem, new=True), audio_tokens=audio, text_ids=text_ids,
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
