"""The synth command's files: its text inputs read into jobs (line N of a file -> NNNN.<fmt>, or
name.txt -> name.<fmt>), each output written atomically, and the temp files of a killed run cleared."""
from __future__ import annotations

import argparse
import codecs
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import StudioError, TextError


@dataclass
class Job:
    """One utterance of a batch: its text and where its audio goes."""

    text: str
    out: Path


@dataclass
class Batch:
    """What a batch's inputs hold: the jobs, and the inputs left out (with why), so the summary can
    name them instead of one bad file stopping the rest or an empty one vanishing."""

    jobs: list[Job]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (input, the user message)
    empty: list[Path] = field(default_factory=list)


def batch_jobs(args: argparse.Namespace) -> Batch:
    """--text-file: line N -> NNNN.<fmt>; --in-dir: name.txt (any case) -> name.<fmt>."""
    out_dir = Path(args.out_dir)
    if args.text_file:
        path = Path(args.text_file)
        if path.is_dir():
            raise StudioError(f"--text-file {path} is a folder.",
                              "Give it a text file, or use --in-dir for a folder of .txt files.")
        if not path.exists():  # a pipe (/dev/stdin, <(...)) is read as a file
            raise StudioError(f"No text file at {path}.", "Give --text-file an existing file.")
        # Lines as an editor numbers them: only \n, \r\n and \r end one (str.splitlines also splits
        # at form feeds, U+2028, U+0085..., which would shift every later output's number)
        lines = re.split(r"\r\n|\r|\n", read_text(path))
        lines = [ln.strip() for ln in (lines[:-1] if lines[-1] == "" else lines)]  # the last line's end
        width = max(4, len(str(len(lines))))
        jobs = [Job(t, out_dir / f"{i:0{width}d}.{args.format}") for i, t in enumerate(lines, 1) if t]
        if not jobs:
            raise StudioError(f"{path} has no text.", "Put one utterance per line.")
        return Batch(jobs)
    folder = Path(args.in_dir)
    if not folder.is_dir():
        if folder.exists():
            raise StudioError(f"--in-dir {folder} is not a folder.", "Give it a folder of .txt files, "
                              "or use --text-file for one file of lines.")
        raise StudioError(f"No folder at {folder}.", "Give --in-dir a folder of .txt files.")
    # Hidden files are left out: "._a.txt" is macOS's binary sidecar on USB drives, ".~a.txt" an
    # editor's lock file; neither is an utterance.
    inputs = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() == ".txt" and not p.name.startswith(".") and p.is_file())
    batch = Batch([])
    owner: dict[str, Path] = {}
    for p in inputs:
        out = out_dir / f"{p.stem}.{args.format}"
        if out.name in owner:  # a.txt and a.TXT on a case-sensitive disk: one would overwrite the other
            raise StudioError(f"{owner[out.name].name} and {p.name} would both be saved as {out.name}.",
                              "Rename one of them.")
        owner[out.name] = p
        try:
            text = read_text(p).strip()
        except StudioError as e:
            batch.unreadable.append((p, e.user_message()))
            continue
        if text:
            batch.jobs.append(Job(text, out))
        else:
            batch.empty.append(p)
    if not inputs:
        raise StudioError(f"There is no .txt file in {folder}.",
                          "Put one utterance per UTF-8 .txt file there (others and hidden ones are not read), "
                          "or give --text-file one file of lines.")
    if not batch.jobs:
        why = "; ".join(msg for _, msg in batch.unreadable[:3])
        raise StudioError(f"No .txt file in {folder} has text to speak" + (f" ({why})." if why else "."),
                          "Put one utterance per UTF-8 .txt file.")
    return batch


_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: FF FE 00 00
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def read_text(path: Path) -> str:
    """A text input as str: UTF-8, or any UTF with a byte-order mark (Windows' Notepad saves
    "Unicode" as UTF-16 with one). Anything else is refused with the reason, never guessed: a wrong
    guess (GBK read as Latin-1, say) would be spoken as gibberish."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StudioError(f"Cannot read {path}: {e.strerror or e}.", "Check the path and its permissions.") from None
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\0" in data[:8192]:
        zeros = data[:8192:2].count(0), data[1:8192:2].count(0)  # UTF-16 with no BOM: Latin letters
        if min(zeros) == 0 and max(zeros) >= max(2, len(data[:8192]) // 5):  # have a zero byte, on one side
            raise TextError(f"{path} looks like UTF-16 text without a byte-order mark.", _SAVE_UTF8)
        raise TextError(f"{path} is not a text file (it holds binary data).",
                        "Give plain text files saved as UTF-8.")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise TextError(f"{path} is not {encoding.upper().removesuffix('-SIG')} text (byte {e.start}: {e.reason}).",
                        _SAVE_UTF8) from None


_SAVE_UTF8 = "Save it as UTF-8 plain text (most editors: Save as, Encoding: UTF-8)."


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path` (named with this process's id), then rename: a killed
    batch never leaves half a file, and the next run removes the temp file it left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); an output is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


_PART = re.compile(r"\.(.+)\.(\d+)\.[A-Za-z0-9_]+\.part")  # write_atomic's: .NAME.PID.RANDOM.part


def remove_stale_parts(folder: Path, names: set[str]) -> int:
    """Remove write_atomic's temp files in `folder` for the outputs `names` whose process is gone
    (a batch killed between writing and renaming). A live run's, and anything not named after one
    of `names`, are left alone. Returns how many went."""
    gone = 0
    for p in folder.glob(".*.part"):
        m = _PART.fullmatch(p.name)
        if not m or m.group(1) not in names:
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # still running (ours, or another batch writing here)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue  # another user's process, or not a pid: not ours to judge
        try:
            p.unlink()
            gone += 1
        except OSError:
            pass
    return gone
