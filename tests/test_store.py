"""core.store against a local fake Hub on 127.0.0.1 (hub URL layout, HEAD metadata, Range)."""
from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core import store
from core.errors import DownloadError, ModelMissingError

COMMIT = "a" * 40


class FakeHub(BaseHTTPRequestHandler):
    """Serves `/{repo}/resolve/{revision}/{filename}` like the Hub: ETag, X-Repo-Commit,
    Content-Length, X-Linked-Etag/Size (LFS: sha256), and byte ranges."""

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
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self._headers(key, data, 206 if start else 200, start)
        body = data[start:]
        if key in hub["corrupt"]:
            body = bytes(b ^ 0xFF for b in body[:10]) + body[10:]
        if key in hub["cut_once"]:  # drop the connection half-way, the first time only
            hub["cut_once"].discard(key)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.hub = {"files": {}, "log": [], "cut_once": set(), "corrupt": set()}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # conftest set it before the import
    # Bytes reach the file in chunks of this size; small chunks let a cut land after some of them.
    monkeypatch.setattr(hc, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
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


def test_corrupt_download_is_rejected_and_deleted(hub, tmp_path):
    _add(hub, "encodec")
    key = (store.REGISTRY["encodec"].repo, "model.safetensors")
    hub["corrupt"].add(key)
    with pytest.raises(DownloadError, match="corrupt.*sha256"):
        store.download_model("encodec", attempts=1)
    assert store.find_model("encodec") is None
    blobs = list((tmp_path / "cache").rglob("blobs/*"))
    assert all(hashlib.sha256(b.read_bytes()).hexdigest() == b.name for b in blobs if b.is_file())


def test_registry_size_and_sha_are_checked(hub, monkeypatch):
    files = _add(hub, "vocos")
    spec = store.REGISTRY["vocos"]
    wrong = store.ModelFile("config.yaml", 500, size=len(files["config.yaml"]) + 1)
    monkeypatch.setitem(store.REGISTRY, "vocos", store.ModelSpec(spec.name, spec.title, spec.repo, (wrong,)))
    with pytest.raises(DownloadError, match="size"):
        store.download_model("vocos", attempts=1)


def test_unknown_repo_file_is_a_download_error(hub):
    with pytest.raises(DownloadError):  # nothing served: 404
        store.download_model("asr", attempts=1)


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
    assert all(m.size_bytes > 0 and m.command.endswith(m.name) for m in missing)


def test_local_folder_override(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    paths = store.resolve_models(tiny_models, offline=True)
    assert paths.vallex == tiny_models / "vallex" / "vallex-checkpoint.pt"
    assert paths.vocos == tiny_models / "vocos" and paths.encodec == tiny_models / "encodec"
    assert paths.asr == tiny_models / "asr"
    assert store.missing_models(tiny_models) == []
    monkeypatch.setenv("VALLEX_MODELS", str(tiny_models))
    assert store.resolve_models(offline=True) == paths
