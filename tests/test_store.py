"""core.store against a local fake Hub on 127.0.0.1 (hub URL layout, HEAD metadata, Range)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core import store
from core.errors import DownloadError, ModelMissingError

COMMIT = "a" * 40
ROOT = Path(__file__).resolve().parent.parent
BLOCK = 16 * 1024  # the fake hub writes bodies in blocks of this size


class FakeHub(BaseHTTPRequestHandler):
    """Serves `/{repo}/resolve/{revision}/{filename}` like the Hub: ETag, X-Repo-Commit,
    Content-Length, X-Linked-Etag/Size (LFS: sha256), and byte ranges. Test knobs in
    `server.hub`: `cut_once` (drop the connection half-way once), `corrupt`, `ignore_range`
    (answer 200 with the whole file), `throttle` (seconds per block); `served` counts body bytes
    sent per file."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _lookup(self):
        hub = self.server.hub
        parts = self.path.split("?")[0].lstrip("/").split("/resolve/")
        if len(parts) != 2:
            return None, None
        repo, rest = parts
        filename = rest.split("/", 1)[1] if "/" in rest else ""
        key = (repo, filename)
        return key, hub["files"].get(key)

    def _headers(self, key, data: bytes, status: int, start: int = 0):
        body_len = len(data) - start
        sha = hashlib.sha256(data).hexdigest()
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{sha}"')
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(body_len))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()

    def do_HEAD(self):
        key, data = self._lookup()
        self.server.hub["log"].append(("HEAD", key, None))
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(key, data, 200)

    def do_GET(self):
        hub = self.server.hub
        key, data = self._lookup()
        rng = self.headers.get("Range")
        hub["log"].append(("GET", key, rng))
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng and key not in hub["ignore_range"] else 0
        self._headers(key, data, 206 if start else 200, start)
        body = data[start:]
        if key in hub["corrupt"]:
            body = bytes(b ^ 0xFF for b in body[:10]) + body[10:]
        cut = key in hub["cut_once"]
        if cut:  # drop the connection half-way, the first time only
            hub["cut_once"].discard(key)
            body = body[: len(body) // 2]
        try:
            for i in range(0, len(body), BLOCK):
                if hub["throttle"].get(key):
                    time.sleep(hub["throttle"][key])
                self.wfile.write(body[i:i + BLOCK])
                hub["served"][key] = hub["served"].get(key, 0) + len(body[i:i + BLOCK])
            self.wfile.flush()
        except OSError:  # the client went away (killed)
            self.close_connection = True
            return
        if cut:
            self.close_connection = True
            self.connection.shutdown(2)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.hub = {"files": {}, "log": [], "cut_once": set(), "corrupt": set(), "ignore_range": set(),
                  "throttle": {}, "served": {}}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # conftest set it before the import
    monkeypatch.setattr(store, "BACKOFF_SECONDS", 0.05)  # retries after a cut: no need to wait 1 s here
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VALLEX_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server.hub
    server.shutdown()
    server.server_close()


def _add(hub, name: str, size: int = 300_000) -> dict[str, bytes]:
    spec = store.REGISTRY[name]
    files = {}
    for i, f in enumerate(spec.files):
        data = os.urandom(size + i)
        hub["files"][(spec.repo, f.filename)] = data
        files[f.filename] = data
    return files


def test_full_download_with_progress(hub):
    files = _add(hub, "vocos")
    seen = []
    folder = store.download_model("vocos", progress=lambda frac, desc: seen.append((frac, desc)))
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert seen and seen[-1][0] == 1.0 and all(0.0 <= f <= 1.0 for f, _ in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)  # monotone
    # Now cached: found without the network, and not missing any more.
    assert store.find_model("vocos") == folder
    assert "vocos" not in [m.name for m in store.missing_models()]
    gets = [e for e in hub["log"] if e[0] == "GET"]
    store.download_model("vocos")  # second call: from the cache, no new GET
    assert [e for e in hub["log"] if e[0] == "GET"] == gets


def test_interrupted_download_resumes_with_range(hub):
    files = _add(hub, "vallex", size=400_000)
    key = (store.REGISTRY["vallex"].repo, "vallex-checkpoint.pt")
    hub["cut_once"].add(key)
    path = store.download_model("vallex")
    assert path.name == "vallex-checkpoint.pt"
    assert path.read_bytes() == files["vallex-checkpoint.pt"]
    ranges = [rng for method, k, rng in hub["log"] if method == "GET" and k == key]
    assert ranges[0] is None and ranges[1] is not None  # second request resumed mid-file
    assert int(ranges[1].split("=")[1].split("-")[0]) > 0


def _gets(hub, key):
    return [rng for method, k, rng in hub["log"] if method == "GET" and k == key]


def _range_start(rng: str) -> int:
    return int(rng.split("=")[1].split("-")[0])


def test_killed_download_resumes_in_a_new_process(hub):
    """A download in another process is SIGKILLed mid-file; the next call continues the partial
    file with a Range request instead of starting from zero."""
    size = 1_000_000
    files = _add(hub, "vallex", size=size)
    key = (store.REGISTRY["vallex"].repo, "vallex-checkpoint.pt")
    hub["throttle"][key] = 0.02  # ~1.3 s for the file: time to kill it on the way
    part, side = store.partial_paths("vallex", "vallex-checkpoint.pt")
    child = subprocess.Popen([sys.executable, "-c", "from core import store; store.download_model('vallex')"],
                             cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while _size(part) < size // 4:
            assert child.poll() is None, child.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the child never got a quarter of the file"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    kept = _size(part)
    assert size // 4 <= kept < size and side.is_file()
    assert json.loads(side.read_text())["etag"] == hashlib.sha256(files["vallex-checkpoint.pt"]).hexdigest()
    assert store.find_model("vallex") is None  # not in the cache until complete and verified

    hub["throttle"].clear()
    seen = []
    path = store.download_model("vallex", progress=lambda frac, desc: seen.append(frac))
    assert path.read_bytes() == files["vallex-checkpoint.pt"]
    assert store.find_model("vallex") == path
    ranges = _gets(hub, key)
    assert ranges[0] is None and len(ranges) == 2 and _range_start(ranges[1]) == kept > 0
    assert hub["served"][key] < 2 * size
    assert seen[0] >= kept / size - 1e-9  # progress counts the resumed bytes
    assert not part.exists() and not side.exists()


def _sidecar(name: str, filename: str, data: bytes, etag: str | None = None) -> dict:
    spec = store.REGISTRY[name]
    return {"repo": spec.repo, "filename": filename, "etag": etag or hashlib.sha256(data).hexdigest(),
            "size": len(data)}


def test_partial_of_another_revision_is_discarded(hub):
    files = _add(hub, "vallex", size=200_000)
    data = files["vallex-checkpoint.pt"]
    key = (store.REGISTRY["vallex"].repo, "vallex-checkpoint.pt")
    part, side = store.partial_paths("vallex", "vallex-checkpoint.pt")
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(50_000))  # bytes of some older file
    side.write_text(json.dumps(_sidecar("vallex", "vallex-checkpoint.pt", data, etag="b" * 64)))
    path = store.download_model("vallex")
    assert path.read_bytes() == data
    assert _gets(hub, key) == [None]  # started from zero
    assert not part.exists() and not side.exists()


def test_partial_without_sidecar_is_discarded(hub):
    files = _add(hub, "vallex", size=100_000)
    key = (store.REGISTRY["vallex"].repo, "vallex-checkpoint.pt")
    part, _ = store.partial_paths("vallex", "vallex-checkpoint.pt")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 10_000)
    assert store.download_model("vallex").read_bytes() == files["vallex-checkpoint.pt"]
    assert _gets(hub, key) == [None]


def test_matching_partial_resumes_and_server_ignoring_range_restarts(hub):
    files = _add(hub, "vallex", size=200_000)
    data = files["vallex-checkpoint.pt"]
    key = (store.REGISTRY["vallex"].repo, "vallex-checkpoint.pt")
    part, side = store.partial_paths("vallex", "vallex-checkpoint.pt")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:50_000])
    side.write_text(json.dumps(_sidecar("vallex", "vallex-checkpoint.pt", data)))
    seen = []
    assert store.download_model("vallex", progress=lambda frac, desc: seen.append(frac)).read_bytes() == data
    assert _gets(hub, key) == ["bytes=50000-"] and hub["served"][key] == len(data) - 50_000
    assert seen[0] == pytest.approx(0.25) and seen == sorted(seen)

    # Same again (force: past the cached copy) against a server that ignores Range: the partial
    # is rewritten from byte 0 with the 200 answer's body.
    hub["ignore_range"].add(key)
    part.write_bytes(data[:50_000])
    side.write_text(json.dumps(_sidecar("vallex", "vallex-checkpoint.pt", data)))
    hub["log"].clear()
    hub["served"].clear()
    assert store.download_model("vallex", force=True).read_bytes() == data
    assert _gets(hub, key) == ["bytes=50000-"] and hub["served"][key] == len(data)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def test_corrupt_download_is_rejected_and_deleted(hub, tmp_path):
    _add(hub, "encodec")
    key = (store.REGISTRY["encodec"].repo, "model.safetensors")
    hub["corrupt"].add(key)
    with pytest.raises(DownloadError, match="corrupt.*sha256"):
        store.download_model("encodec", attempts=1)
    assert store.find_model("encodec") is None
    assert not any(p.exists() for p in store.partial_paths("encodec", "model.safetensors"))
    blobs = list((tmp_path / "cache").rglob("blobs/*"))
    assert all(hashlib.sha256(b.read_bytes()).hexdigest() == b.name for b in blobs if b.is_file())


def test_registry_size_and_sha_are_checked(hub, monkeypatch):
    files = _add(hub, "vocos")
    spec = store.REGISTRY["vocos"]
    wrong = store.ModelFile("config.yaml", 500, size=len(files["config.yaml"]) + 1)
    monkeypatch.setitem(store.REGISTRY, "vocos", store.ModelSpec(spec.name, spec.title, spec.repo, (wrong,)))
    with pytest.raises(DownloadError, match="size"):
        store.download_model("vocos", attempts=1)


def test_download_command_repairs_a_damaged_copy_and_counts_only_what_was_asked(hub, tmp_path, capsys):
    from app import cli

    files = _add(hub, "vocos")
    assert cli.main(["download", "vocos"]) == 0  # the others are missing too, but were not asked for
    out = capsys.readouterr().out
    assert "Done." in out and "Also missing: vallex, encodec, asr (optional)" in out
    assert "python launch.py download vallex encodec asr" in out
    weights = store.find_model("vocos") / "pytorch_model.bin"
    weights.resolve().write_bytes(b"garbage")  # damaged on disk after the download
    assert cli.main(["download", "vocos"]) == 0 and "Already there: vocos." in capsys.readouterr().out
    assert cli.main(["download", "vocos", "--force"]) == 0
    assert weights.read_bytes() == files["pytorch_model.bin"]  # fetched again
    # a copy in the models folder shadows any download: --force says so instead of fetching in vain
    local = tmp_path / "models" / "vocos"
    local.mkdir(parents=True)
    for name, data in files.items():
        (local / name).write_bytes(data)
    assert cli.main(["download", "vocos", "--force"]) == 2
    err = capsys.readouterr().err
    assert f"The vocos model is in the models folder ({local})" in " ".join(err.split()), err[-600:]


def test_unreadable_or_file_models_folder_is_a_message(tmp_path):
    from core.errors import ModelMissingError

    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ModelMissingError, match="is a file, not a folder"):
        store.missing_models(tmp_path / "afile")


def test_unknown_repo_file_is_a_download_error(hub):
    with pytest.raises(DownloadError):  # nothing served: 404
        store.download_model("asr", attempts=1)


def test_an_unreachable_hub_names_the_folder_the_user_chose(hub, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(DownloadError, match="failed after 1 attempt:") as e:
        store.download_model("vocos", tmp_path / "my-models", endpoint=dead, attempts=1)
    assert f"put the file in {tmp_path / 'my-models' / 'vocos'}." in e.value.user_message()


def test_offline_with_nothing_cached_says_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = tmp_path / "models"
    with pytest.raises(ModelMissingError) as err:
        store.resolve_models(models)
    msg = err.value.user_message()
    for text in ("VALL-E X", "Plachta/VALL-E-X", "vallex-checkpoint.pt", "1.5 GB", "Vocos", "EnCodec",
                 "python launch.py download", str(models / "vallex"), "offline"):
        assert text in msg, text
    missing = store.missing_models(models)
    assert {m.name for m in missing} == {"vallex", "vocos", "encodec", "asr"}
    assert [m.optional for m in missing if m.name == "asr"] == [True]
    assert all(m.size_bytes > 0 and m.command.endswith(f"download {m.name} --models {models}") for m in missing)


def test_local_folder_override(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    paths = store.resolve_models(tiny_models, offline=True)
    assert paths.vallex == tiny_models / "vallex" / "vallex-checkpoint.pt"
    assert paths.vocos == tiny_models / "vocos" and paths.encodec == tiny_models / "encodec"
    assert paths.asr == tiny_models / "asr"
    assert store.missing_models(tiny_models) == []
    monkeypatch.setenv("VALLEX_MODELS", str(tiny_models))
    assert store.resolve_models(offline=True) == paths


def test_a_hub_address_without_a_scheme_is_refused_at_once(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "hf-mirror.com")
    with pytest.raises(DownloadError, match="HF_ENDPOINT 'hf-mirror.com' is not a web address") as e:
        store.download_model("vocos", attempts=3)
    assert "https://hf-mirror.com" in e.value.user_message()
    assert hub["log"] == []  # nothing was tried, let alone three times
    with pytest.raises(DownloadError, match="endpoint"):
        store.download_model("vocos", endpoint="http://", attempts=3)


def test_a_cache_that_cannot_be_written_is_named_not_retried_as_a_network_error(hub, tmp_path, monkeypatch):
    import errno

    from core import download

    _add(hub, "vocos")
    (tmp_path / "afile").write_text("in the way")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "afile" / "cache"))
    slept = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    with pytest.raises(DownloadError, match="Cannot save .* in the model cache") as e:
        store.download_model("vocos", attempts=3)
    assert "HF_HUB_CACHE" in e.value.user_message() and "network" not in e.value.user_message()
    assert slept == []  # no retries
    # a full disk and a permission error on a file are the disk's; a socket's EACCES is the network's
    assert "disk is full" in download._local_problem(OSError(errno.ENOSPC, "No space left on device"))[0]
    assert download._local_problem(PermissionError(errno.EACCES, "Permission denied", "/c/x.part"))
    assert download._local_problem(PermissionError(errno.EACCES, "Permission denied")) is None
    assert download._local_problem(ConnectionResetError(errno.ECONNRESET, "reset")) is None
