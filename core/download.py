"""The resumable transfer of one model file into the Hugging Face cache (`core.store.download_model`
calls it for each file of a model).

It uses huggingface_hub for the URL (`hf_hub_url`, mirrors via `HF_ENDPOINT`), the metadata
(`get_hf_file_metadata`: size, ETag, commit), auth headers, its HTTP client and its cache layout
(`blobs/`, `snapshots/`, `refs/`), so huggingface_hub finds the files too. The transfer itself is
ours, because `hf_hub_download` deletes a partial file on any failure: bytes go to a persistent
`<repo folder>/partial/<file>.part` with a JSON sidecar (repo, file, ETag, size, URL), and a later
call, in this process or another, continues it with an HTTP Range request (a partial of another
revision is discarded; a server that ignores Range makes it start over). Dropped connections are
retried with backoff within one call. Progress: a tqdm bar in a terminal and/or a
`progress(fraction, desc)` callback, resumed bytes included. Every file is then checked: its size
against the registry and the hub's metadata, and its sha256 against the registry or, for LFS files,
the hub's ETag (which is the file's sha256). A file that fails is deleted and `DownloadError` is
raised; one that passes is renamed into the cache atomically.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import DownloadError
from core.store import (DOWNLOAD_COMMAND, ModelFile, ModelSpec, Progress, _cache_dir, _human, _spec,
                        models_folder)

log = logging.getLogger(__name__)

PARTIAL_DIR = "partial"  # inside the repo's cache folder: `<file>.part` + `<file>.part.json`


def _storage(spec: ModelSpec) -> Path:
    """The repo's folder in the hub cache (`models--org--name`, huggingface_hub's layout)."""
    from huggingface_hub import constants

    return Path(_cache_dir() or constants.HF_HUB_CACHE) / ("models--" + spec.repo.replace("/", "--"))


def partial_paths(name: str, filename: str) -> tuple[Path, Path]:
    """Where an unfinished download of `filename` (of model `name`) is kept: the bytes so far and
    the JSON sidecar saying which remote file they belong to (repo, file, etag, size, url)."""
    spec = _spec(name)
    base = _storage(spec) / PARTIAL_DIR / (filename.replace("/", "--") + ".part")
    return base, base.with_name(base.name + ".json")


@dataclass(frozen=True)
class _Remote:
    url: str  # the file at the resolved commit (redirects, e.g. to a CDN, are followed)
    etag: str  # LFS files: the content's sha256
    size: int | None
    commit: str


class _Incomplete(Exception):
    """The server ended the body early without an error (transient: retried, resumed)."""


def _remote_file(spec: ModelSpec, f: ModelFile, endpoint: str | None) -> _Remote:
    """Size, etag and commit from a HEAD request (huggingface_hub: URL, auth headers, redirects)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(spec.repo, f.filename, revision=spec.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(f"The server at {endpoint or constants.ENDPOINT} sent no commit or ETag for "
                            f"{spec.repo}/{f.filename}: it does not look like a Hugging Face hub or mirror.",
                            "Check HF_ENDPOINT (unset it to use huggingface.co).")
    return _Remote(hf_hub_url(spec.repo, f.filename, revision=meta.commit_hash, endpoint=endpoint),
                   meta.etag, meta.size, meta.commit_hash)


def download_file(spec: ModelSpec, f: ModelFile, endpoint: str | None, progress: Progress | None,
                  attempts: int, force: bool, backoff: float, local_dir: Path | None = None) -> Path:
    """One file into the hub cache (`blobs/<etag>` + `snapshots/<commit>/<file>` + `refs/<revision>`),
    so that `try_to_load_from_cache` (hence `find_model`) and huggingface_hub itself find it.

    huggingface_hub does the metadata, but not the transfer: its `hf_hub_download` writes into a
    process-unique temp file that it deletes on any failure, so a download cut by a killed process,
    Ctrl-C or a dropped network starts again from zero, which is not acceptable for a 1.5 GB
    checkpoint. `_fetch` keeps a persistent partial file and continues it with HTTP Range.
    `attempts`: tries in a row without progress; `backoff`: seconds before the first retry (doubled
    each time, capped at 30 s); `local_dir`: the folder a failure's message offers for a copy made
    by hand (default: the default models folder's)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import WeakFileLock

    storage = _storage(spec)
    part, side = partial_paths(spec.name, f.filename)
    bar = _Bar(progress, f"{spec.title}: {f.filename}")
    remote: _Remote | None = None
    failures, last = 0, None
    try:
        while True:
            before = _size(part)
            try:
                if remote is None:
                    remote = _remote_file(spec, f, endpoint)
                pointer = storage / "snapshots" / remote.commit / f.filename
                if pointer.exists() and not force:
                    verify_file(pointer, f, sha256=_expected_sha(f, remote), size=remote.size)
                    return pointer
                part.parent.mkdir(parents=True, exist_ok=True)
                with WeakFileLock(part.with_name(part.name + ".lock")):  # one writer per partial file
                    return _fetch(storage, spec, f, remote, part, side, bar, force)
            except DownloadError:
                raise
            except Exception as e:  # network errors: httpx2 / OSError / HfHubHTTPError subclasses
                if (local := _local_problem(e)) is not None:
                    raise DownloadError(f"Cannot save {spec.repo}/{f.filename} in the model cache {storage}: "
                                        f"{local[0]}.", local[1]) from e
                if _is_permanent(e):
                    raise DownloadError(f"Cannot download {spec.repo}/{f.filename}: {type(e).__name__}: {e}",
                                        "Check the repo name and HF_ENDPOINT.") from e
                if remote is None and not force:  # hub unreachable: a cached copy will do
                    hit = try_to_load_from_cache(spec.repo, f.filename, cache_dir=str(storage.parent),
                                                 revision=spec.revision)
                    if isinstance(hit, str):
                        verify_file(Path(hit), f)
                        return Path(hit)
                last = e
                failures = 1 if _size(part) > before else failures + 1  # bytes arrived: start counting again
                log.warning("download of %s/%s interrupted (try %d of %d): %s: %s", spec.repo, f.filename,
                            failures, attempts, type(e).__name__, e)
                if failures >= attempts:
                    break
                time.sleep(min(backoff * 2 ** (failures - 1), 30.0))
    finally:
        bar.close()
    kept = f" ({_human(_size(part))} kept; the next run continues from there)" if _size(part) else ""
    raise DownloadError(
        f"Downloading {spec.repo}/{f.filename} failed after {attempts} attempt{'s' * (attempts != 1)}{kept}: "
        f"{type(last).__name__}: {last}",
        f"Check the network (or set HF_ENDPOINT to a mirror) and run `{DOWNLOAD_COMMAND} {spec.name}` again; "
        f"or put the file in {local_dir or models_folder() / spec.name}.") from last


def _expected_sha(f: ModelFile, remote: _Remote) -> str | None:
    """The registry's sha256, else the LFS ETag (the content's sha256); a git-blob ETag is not one."""
    return f.sha256 or (remote.etag if _SHA256.match(remote.etag) else None)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fetch(storage: Path, spec: ModelSpec, f: ModelFile, remote: _Remote, part: Path, side: Path,
           bar: "_Bar", force: bool) -> Path:
    """Continue (or start) the partial file, verify it, move it into the cache. Holds the lock."""
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / f.filename
    if not (blob.is_file() and not force):  # else another process finished it meanwhile
        have = _open_partial(part, side, spec, f, remote)
        bar.set(have, remote.size)
        if remote.size is None or have < remote.size:
            _transfer(remote, part, spec, f, have, bar)
        try:
            verify_file(part, f, sha256=_expected_sha(f, remote), size=remote.size)
        except DownloadError:
            side.unlink(missing_ok=True)
            raise
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, blob)  # atomic: the blob is complete or absent
        side.unlink(missing_ok=True)
        new_blob = True
    else:
        new_blob = False
    _link(blob, pointer, new_blob)
    if spec.revision != remote.commit:
        ref = storage / "refs" / spec.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(remote.commit)
        os.replace(tmp, ref)
    return pointer


def _sidecar(spec: ModelSpec, f: ModelFile, remote: _Remote) -> dict:
    return {"repo": spec.repo, "filename": f.filename, "etag": remote.etag, "size": remote.size,
            "url": remote.url, "commit": remote.commit}


def _open_partial(part: Path, side: Path, spec: ModelSpec, f: ModelFile, remote: _Remote) -> int:
    """How many bytes of this very file (same repo, name, etag and size) the partial holds; a partial
    of another file or revision, or one without a readable sidecar, is discarded."""
    import json

    want = _sidecar(spec, f, remote)
    try:
        had = json.loads(side.read_text())
    except (OSError, ValueError):
        had = None
    have = _size(part)
    same = isinstance(had, dict) and all(had.get(k) == want[k] for k in ("repo", "filename", "etag", "size"))
    if same and part.is_file() and (remote.size is None or have <= remote.size):
        if have:
            log.info("resuming %s/%s at %s", spec.repo, f.filename, _human(have))
        return have
    if have or had is not None:
        log.info("discarding a partial download of %s/%s (%s): it is not of this file's revision",
                 spec.repo, f.filename, _human(have))
    part.unlink(missing_ok=True)
    tmp = side.with_name(side.name + ".tmp")  # the sidecar first: a partial never exists without one
    tmp.write_text(json.dumps(want, indent=1))
    os.replace(tmp, side)
    part.touch()
    return 0


def _check_space(folder: Path, needed: int, f: ModelFile) -> None:
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise DownloadError(f"Not enough disk space for {f.filename}: {_human(needed)} more needed, "
                            f"{_human(free)} free in {folder}.",
                            "Free some space, or point HF_HUB_CACHE (or HF_HOME) at a bigger disk.")


def _transfer(remote: _Remote, part: Path, spec: ModelSpec, f: ModelFile, have: int, bar: "_Bar") -> None:
    """GET the rest of the file (Range: bytes=<have>-) and append it to `part`, reporting progress
    with the resumed bytes counted. A server that ignores Range (200) makes the file start over."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if remote.size is not None:
        _check_space(part.parent, remote.size - have, f)
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # byte offsets must be the file's own
    if have:
        headers["Range"] = f"bytes={have}-"
    with get_session().stream("GET", remote.url, headers=headers, follow_redirects=True,
                              timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
        if r.status_code == 416:  # the partial is not a prefix the server knows: start over
            r.read()
            part.write_bytes(b"")
            raise _Incomplete(f"the server refused the range from byte {have}; starting again")
        if r.status_code >= 400:
            r.read()
            hf_raise_for_status(r)
        if r.status_code == 206:
            start = _range_start(r.headers.get("Content-Range", ""))
            if start != have:
                r.close()
                part.write_bytes(b"")
                raise _Incomplete(f"the server answered from byte {start}, not {have}; starting again")
        elif r.status_code == 200:
            if have:
                log.info("the server ignored the Range request; %s/%s starts over", spec.repo, f.filename)
                have = 0
        else:
            raise _Incomplete(f"unexpected HTTP status {r.status_code}")
        with open(part, "r+b") as fh:
            fh.seek(have)
            fh.truncate()
            bar.set(have, remote.size)
            for chunk in r.iter_bytes():  # whatever arrives is written at once, so little is lost to a kill
                fh.write(chunk)
                have += len(chunk)
                bar.set(have, remote.size)
                if remote.size is not None and have > remote.size:
                    return  # too long: the size check rejects it
    if remote.size is not None and have < remote.size:
        raise _Incomplete(f"the connection closed at byte {have} of {remote.size}")


def _range_start(content_range: str) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-", content_range)
    return int(m.group(1)) if m else None


def _link(blob: Path, pointer: Path, new_blob: bool) -> None:
    """`snapshots/<commit>/<file>` -> `../../blobs/<etag>` (relative symlink, as huggingface_hub
    does); where symlinks are not allowed (Windows without developer mode) the file itself."""
    import shutil

    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        if new_blob:
            os.replace(blob, pointer)
        else:
            shutil.copyfile(blob, pointer)


class _Bar:
    """Progress of one file: a tqdm bar (huggingface_hub's, so HF_HUB_DISABLE_PROGRESS_BARS is
    honoured; it shows in a terminal) and the `progress(fraction, desc)` callback, both counting
    resumed bytes. The callback is called at most every `every` seconds (and at the end): a 1.5 GB
    file arrives in some 20,000 network reads."""

    def __init__(self, progress: Progress | None, desc: str, every: float = 0.1):
        self.progress, self.desc, self.tqdm, self.every, self.last = progress, desc, None, every, None

    def set(self, n: int, total: int | None) -> None:
        if self.tqdm is None:
            from huggingface_hub.utils import tqdm

            self.tqdm = tqdm(total=total, initial=n, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=self.desc.split(": ")[-1])
        elif n != self.tqdm.n:
            self.tqdm.update(n - self.tqdm.n)
        if self.progress and total:
            now = time.monotonic()
            if self.last is None or now - self.last >= self.every or n >= total:
                self.last = now
                self.progress(min(1.0, n / total), f"{self.desc}: {_human(n)} of {_human(total)}")

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}


def _local_problem(e: Exception) -> tuple[str, str] | None:
    """(what, what to do) when `e` is this machine's disk refusing the download rather than the
    network failing: retrying cannot help, and "check the network" would send the user the wrong way.
    Permission errors count only with a file name: a socket's EACCES (a firewall) has none."""
    if not isinstance(e, OSError) or e.errno is None:
        return None
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in _DISK_FULL:
        return (f"the disk is full{where}",
                "Free some space, or point HF_HUB_CACHE (or HF_HOME) at a bigger disk, and run it again.")
    if e.errno in _NOT_WRITABLE or (e.errno in (errno.EACCES, errno.EPERM) and e.filename):
        return (f"{e.strerror or e}{where}",
                "Point HF_HUB_CACHE (or HF_HOME) at a folder you can write to, and run it again.")
    return None


def _is_permanent(e: Exception) -> bool:
    """Errors that a retry cannot fix: no such repo/revision/file, gated, other 4xx."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(e, (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return True
    # A URL the client cannot use. By name: huggingface_hub's client is httpx2 in 2.x and httpx
    # before, and the two packages have their own classes.
    if type(e).__name__ in ("UnsupportedProtocol", "InvalidURL", "LocalProtocolError"):
        return True
    status = getattr(getattr(e, "response", None), "status_code", None)
    return (isinstance(e, HfHubHTTPError) and status is not None and 400 <= status < 500
            and status not in (408, 429))


# ---------------------------------------------------------------------------------- integrity

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, f: ModelFile, *, sha256: str | None = None, size: int | None = None) -> None:
    """Check a downloaded file's size and sha256; delete it (and the blob a cache link points to)
    and raise DownloadError when it does not match. Expected size: the registry's and `size` (the
    hub's); expected sha256: the registry's, else `sha256` (the LFS ETag), else the blob's name when
    that is a sha256 (the hub names LFS blobs by their ETag, which is the content's sha256)."""
    blob = path.resolve()
    got_size = blob.stat().st_size
    want_sha = f.sha256 or sha256 or (blob.name if _SHA256.match(blob.name) else None)
    problem = None
    for want_size in dict.fromkeys(x for x in (f.size, size) if x is not None):
        if got_size != want_size:
            problem = f"size {got_size} bytes, expected {want_size}"
            break
    if problem is None and want_sha is not None and (got := sha256_file(blob)) != want_sha:
        problem = f"sha256 {got[:16]}..., expected {want_sha[:16]}..."
    if problem is None:
        return
    for p in {path, blob}:
        try:
            p.unlink()
        except OSError:
            pass
    raise DownloadError(f"Downloaded file {f.filename} is corrupt ({problem}); it was deleted.",
                        f"Run `{DOWNLOAD_COMMAND}` again; if it keeps failing, the mirror (HF_ENDPOINT) may be serving a bad copy.")
