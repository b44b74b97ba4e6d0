"""Model files on disk: where they are, what is missing, and downloading them.

Where a model is looked for, in order:
1. a local models folder (argument `models_dir`, else env `VALLEX_MODELS`, else `models/` at the
   repository root) in the layout `vallex/vallex-checkpoint.pt`, `vocos/{config.yaml,
   pytorch_model.bin}`, `encodec/{config.json,model.safetensors}`, `asr/` (faster-whisper folder);
2. the Hugging Face cache (`HF_HUB_CACHE` / `HF_HOME`), where `download_model` puts files.

`download_model` respects `HF_HUB_OFFLINE` and hands each file to `core.download`: a resumable,
verified transfer into huggingface_hub's cache layout (ours, not `hf_hub_download`, which deletes
a partial file on any failure; see there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import DownloadError, ModelMissingError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = ROOT / "models"
DOWNLOAD_COMMAND = "python launch.py download"

Progress = Callable[[float, str], None]  # (fraction 0..1, description)


@dataclass(frozen=True)
class ModelFile:
    filename: str
    approx_bytes: int  # for messages; the real size is checked against `size` or the hub
    size: int | None = None  # exact size in bytes, when known
    sha256: str | None = None  # hex digest, when known


@dataclass(frozen=True)
class ModelSpec:
    name: str  # key, also the sub-folder of the local models folder
    title: str
    repo: str
    files: tuple[ModelFile, ...]
    revision: str = "main"
    optional: bool = False  # the studio works without it (ASR: the user types the transcript)

    @property
    def approx_bytes(self) -> int:
        return sum(f.approx_bytes for f in self.files)


REGISTRY: dict[str, ModelSpec] = {
    "vallex": ModelSpec("vallex", "VALL-E X checkpoint", "Plachta/VALL-E-X",
                        (ModelFile("vallex-checkpoint.pt", 1_482_200_000),)),
    "vocos": ModelSpec("vocos", "Vocos vocoder", "charactr/vocos-encodec-24khz",
                       (ModelFile("config.yaml", 500), ModelFile("pytorch_model.bin", 40_400_000))),
    "encodec": ModelSpec("encodec", "EnCodec 24 kHz", "facebook/encodec_24khz",
                         (ModelFile("config.json", 1_500), ModelFile("model.safetensors", 93_200_000))),
    "asr": ModelSpec("asr", "Whisper ASR (faster-whisper small)", "Systran/faster-whisper-small",
                     (ModelFile("config.json", 2_400), ModelFile("model.bin", 484_000_000),
                      ModelFile("tokenizer.json", 2_200_000), ModelFile("vocabulary.txt", 460_000)),
                     optional=True),
}
REQUIRED = ("vallex", "vocos", "encodec")


@dataclass(frozen=True)
class ModelPaths:
    """Resolved locations. `vallex` is the checkpoint file; the others are folders."""

    vallex: Path
    vocos: Path
    encodec: Path
    asr: Path | None


@dataclass(frozen=True)
class MissingModel:
    name: str
    title: str
    repo: str
    filename: str  # the files, comma-separated
    size_bytes: int  # approximate download size
    folder: Path  # where to put the files by hand
    command: str  # the command that downloads it
    optional: bool = False

    def describe(self) -> str:
        return (f"{self.title} ({self.repo}: {self.filename}, about {_human(self.size_bytes)}) -> "
                f"run `{self.command}` or put the files in {self.folder}")


# ---------------------------------------------------------------------------------- locating


def models_folder(models_dir: str | Path | None = None) -> Path:
    """The local models folder: the argument, else env VALLEX_MODELS, else `models/` at the repo root."""
    if models_dir is not None:
        return Path(models_dir).expanduser()
    env = os.environ.get("VALLEX_MODELS")
    return Path(env).expanduser() if env else DEFAULT_MODELS_DIR


def is_offline(offline: bool | None = None) -> bool:
    """`offline` if given, else env HF_HUB_OFFLINE (read now, not at import)."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DownloadError(f"Unknown model {name!r}.", f"Choose one of: {', '.join(REGISTRY)}.") from None


def _result_path(spec: ModelSpec, folder: Path) -> Path:
    return folder / spec.files[0].filename if spec.name == "vallex" else folder


def _local_path(spec: ModelSpec, models_dir: Path) -> Path | None:
    folder = models_dir / spec.name
    names = ("model.bin", "config.json") if spec.name == "asr" else [f.filename for f in spec.files]
    try:  # asr: any faster-whisper folder will do (other sizes too)
        if models_dir.exists() and not models_dir.is_dir():
            raise ModelMissingError(f"The models folder {models_dir} is a file, not a folder.",
                                    "Give --models (or VALLEX_MODELS) a folder.")
        if all((folder / name).is_file() for name in names):
            return folder if spec.name == "asr" else _result_path(spec, folder)
    except PermissionError as e:  # Path.is_file() raises on a folder we may not enter
        raise ModelMissingError(f"Cannot read the models folder {models_dir}: permission denied "
                                f"({e.filename}).", "Make it readable (chmod), or choose another with "
                                "--models.") from None
    return None


def _cache_dir() -> str | None:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _cached_path(spec: ModelSpec) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    folders = set()
    for f in spec.files:
        hit = try_to_load_from_cache(spec.repo, f.filename, cache_dir=_cache_dir(), revision=spec.revision)
        if not isinstance(hit, str):
            return None
        folders.add(Path(hit).parent)
    if len(folders) != 1:  # files from different snapshots: treat as not (consistently) cached
        return None
    return _result_path(spec, folders.pop())


def local_model(name: str, models_dir: str | Path | None = None) -> Path | None:
    """Model `name` in the local models folder (not the hub cache), or None."""
    return _local_path(_spec(name), models_folder(models_dir))


def find_model(name: str, models_dir: str | Path | None = None) -> Path | None:
    """Where model `name` is on disk now (local folder first, then the hub cache), or None."""
    spec = _spec(name)
    return _local_path(spec, models_folder(models_dir)) or _cached_path(spec)


def download_command(name: str = "", models_dir: str | Path | None = None) -> str:
    """The command that downloads `name` (every missing model when empty) into `models_dir`."""
    import shlex

    where = f" --models {shlex.quote(str(models_dir))}" if models_dir is not None else ""
    return f"{DOWNLOAD_COMMAND}{' ' + name if name else ''}{where}"


def repair_hint(name: str, path: str | Path, models_dir: str | Path | None = None) -> str:
    """What fixes a damaged copy of model `name` found at `path`: fetch it again into the hub
    cache, or (a copy in the models folder, which is used first) replace that copy."""
    path = Path(path)
    command = download_command(name, models_dir)
    if any(part.startswith("models--") for part in path.parts):
        return f"Run `{command} --force` to download it again."
    folder = path if path.is_dir() else path.parent
    return f"Replace the files in {folder} with good copies, or delete them and run `{command}`."


def missing_models(models_dir: str | Path | None = None, *, include_optional: bool = True) -> list[MissingModel]:
    """The models not on disk (never touches the network), for the UI's notice and the CLI."""
    folder = models_folder(models_dir)
    out = []
    for name, spec in REGISTRY.items():
        if (spec.optional and not include_optional) or find_model(name, models_dir) is not None:
            continue
        out.append(MissingModel(name, spec.title, spec.repo, ", ".join(f.filename for f in spec.files),
                                spec.approx_bytes, folder / name, download_command(name, models_dir),
                                spec.optional))
    return out


def missing_error(missing: list[MissingModel], offline: bool,
                  models_dir: str | Path | None = None) -> ModelMissingError:
    """One error naming every missing model, its size, the command and the folder."""
    total = sum(m.size_bytes for m in missing)
    env = offline and is_offline(None)  # the shell's HF_HUB_OFFLINE, not --offline / offline=True
    why = " (offline: HF_HUB_OFFLINE is set)" if env else " (offline: --offline was given)" if offline else ""
    msg = f"Model weights missing{why}: " + "; ".join(m.describe() for m in missing) + "."
    online = "unset HF_HUB_OFFLINE, then " if env else "drop --offline, then " if offline else ""
    hint = (f"To download them ({_human(total)} in all), {online}run `{download_command('', models_dir)}` "
            f"(set HF_ENDPOINT to use a mirror), or copy the files into those folders.")
    return ModelMissingError(msg, hint)


# ---------------------------------------------------------------------------------- resolving


def resolve_model(name: str, models_dir: str | Path | None = None, *, offline: bool | None = None,
                  download: bool = True, progress: Progress | None = None) -> Path:
    """The path of one model (checkpoint file for "vallex", folder otherwise), downloading it when
    allowed. Raises ModelMissingError when it is not on disk and cannot be fetched now."""
    path = find_model(name, models_dir)
    if path is not None:
        return path
    off = is_offline(offline)
    if off or not download:
        missing = [m for m in missing_models(models_dir) if m.name == name]
        raise missing_error(missing, off, models_dir)
    return download_model(name, progress=progress)


def resolve_models(models_dir: str | Path | None = None, *, offline: bool | None = None,
                   download: bool = True, progress: Progress | None = None,
                   asr: bool = False) -> ModelPaths:
    """Locate (and, online, download) the models. The ASR model is optional: its path is filled in
    when it is on disk, and it is downloaded only with `asr=True`. Raises ModelMissingError naming
    every missing required model, its size and the command or folder to fix it."""
    off = is_offline(offline)
    names = list(REQUIRED) + (["asr"] if asr else [])
    missing = [m for m in missing_models(models_dir) if m.name in names]
    if missing and (off or not download):
        raise missing_error(missing, off, models_dir)
    total = sum(m.size_bytes for m in missing) or 1
    done = 0
    for m in missing:
        sub = _sub_progress(progress, done / total, m.size_bytes / total)
        download_model(m.name, models_dir, progress=sub)
        done += m.size_bytes
    paths = {name: find_model(name, models_dir) for name in REGISTRY}
    if any(paths[n] is None for n in names):  # e.g. files vanished meanwhile
        raise missing_error([m for m in missing_models(models_dir) if m.name in names], off, models_dir)
    return ModelPaths(paths["vallex"], paths["vocos"], paths["encodec"], paths["asr"])


def _sub_progress(progress: Progress | None, start: float, span: float) -> Progress | None:
    if progress is None:
        return None
    return lambda frac, desc: progress(start + span * frac, desc)


# ---------------------------------------------------------------------------------- download

# Seconds before the first retry after a dropped connection; doubles each time, capped at 30 s.
# Read at each call and handed to core.download (tests shorten it).
BACKOFF_SECONDS = 1.0


def download_model(name: str, models_dir: str | Path | None = None, *, progress: Progress | None = None,
                   endpoint: str | None = None, attempts: int = 3, force: bool = False) -> Path:
    """Download model `name` into the Hugging Face cache and verify it; return its path.

    An interrupted download (dropped connection, Ctrl-C, killed process) leaves a partial file that
    the next call continues with an HTTP Range request. `attempts`: tries in a row that make no
    progress before giving up (a try that received bytes resets the count).
    `models_dir` is accepted for the CLI's sake: a model already in that local folder is not
    downloaded again (unless `force`: then the cached copy is fetched again, though a matching
    partial file is still continued, as the result is verified anyway). `endpoint` defaults to env
    HF_ENDPOINT (read now). Raises DownloadError (network, corrupt file) or ModelMissingError (offline).
    """
    from core.download import download_file  # imported late: core.download imports this module

    spec = _spec(name)
    if not force and models_dir is not None and (local := _local_path(spec, models_folder(models_dir))):
        return local
    if is_offline(None):
        cached = None if force else _cached_path(spec)
        if cached:
            return cached
        raise missing_error([m for m in missing_models(models_dir) if m.name == name], True, models_dir)
    endpoint = _checked_endpoint(endpoint)
    total = sum(f.approx_bytes for f in spec.files)
    done, folder = 0, None
    for f in spec.files:
        sub = _sub_progress(progress, done / total, f.approx_bytes / total)
        path = download_file(spec, f, endpoint, sub, max(1, attempts), force, BACKOFF_SECONDS,
                             models_folder(models_dir) / spec.name)
        folder = path.parent
        done += f.approx_bytes
    if progress:
        progress(1.0, f"{spec.title}: done")
    return _result_path(spec, folder)


def _checked_endpoint(endpoint: str | None) -> str | None:
    """`endpoint`, else env HF_ENDPOINT, else None (huggingface.co); a value that is not an http(s)
    address with a host is refused now, since each try would fail the same way ("hf-mirror.com"
    without https:// is the usual slip)."""
    from urllib.parse import urlsplit

    name = "The hub address (endpoint)" if endpoint else "HF_ENDPOINT"
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").strip() or None
    if endpoint is None:
        return None
    try:
        url = urlsplit(endpoint)
        ok = url.scheme in ("http", "https") and bool(url.hostname)
    except ValueError:  # e.g. a bad port or an unclosed [ of an IPv6 host
        ok = False
    if not ok:
        guess = f"https://{endpoint.split('://')[-1].strip('/')}" if "." in endpoint else "https://hf-mirror.com"
        raise DownloadError(f"{name} {endpoint!r} is not a web address: it needs http:// or https:// and a host.",
                            f"Set it to, say, {guess} (or unset HF_ENDPOINT to use huggingface.co).")
    return endpoint.rstrip("/")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def default_voices_dir() -> Path:
    """Where user voices are saved: env VALLEX_VOICES, else `voices/` at the repo root."""
    env = os.environ.get("VALLEX_VOICES")
    return Path(env).expanduser() if env else ROOT / "voices"


# Moved to core.download, still importable from here. Looked up on first use, because core.download
# imports this module (the registry, the cache folder).
_FROM_DOWNLOAD = ("PARTIAL_DIR", "partial_paths", "sha256_file", "verify_file")


def __getattr__(name: str):
    if name in _FROM_DOWNLOAD:
        from core import download

        return getattr(download, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
