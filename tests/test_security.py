"""Security: pickles never run, voice names stay in their folder, upload limits hold, and with
`--auth` the page, the Gradio API and /v1 all refuse anonymous requests.

The pickle payload's `__reduce__` calls `open(marker, "w")`: if any loader unpickled it, the marker
file would appear. Every loader must refuse the file with a clear error and leave no marker.
"""
from __future__ import annotations

import builtins
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from core.audio import load_audio
from core.errors import AudioError, CheckpointError, StudioError, VoiceError
from core.voices import Voice, VoiceLibrary
from tests.figures import record

USER, PASSWORD = "alice", "s3cret-pass"


class Payload:
    """Unpickling this creates `marker` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _npz_ok(path: Path) -> Path:
    np.savez(path, audio_tokens=np.zeros((1, 10, 8), np.int64), text_tokens=np.ones((1, 5), np.int64),
             lang_code=np.asarray(2, np.int64))
    return path


def _evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    """name -> a file whose unpickling would create `marker`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["torch_save.pt"] = folder / "torch_save.pt"
    torch.save({"model": {"x": Payload(marker)}}, files["torch_save.pt"])
    files["raw_pickle.pt"] = folder / "raw_pickle.pt"
    files["raw_pickle.pt"].write_bytes(pickle.dumps({"model": Payload(marker)}))
    files["object_array.npz"] = folder / "object_array.npz"
    np.savez(files["object_array.npz"], audio_tokens=np.array([Payload(marker)], dtype=object),
             text_tokens=np.ones((1, 5), np.int64), lang_code=np.asarray(2, np.int64))
    files["pickle_named.npz"] = folder / "pickle_named.npz"
    files["pickle_named.npz"].write_bytes(pickle.dumps(Payload(marker)))
    files["npy_object.npz"] = folder / "npy_object.npz"
    with open(files["npy_object.npz"], "wb") as fh:
        np.save(fh, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return files


def test_pickle_payloads_never_execute(tiny_models, tmp_path, artifacts):
    from core.codec import Codec, Vocos
    from core.lm import VallEX
    from core.synth import Studio

    marker = tmp_path / "PWNED"
    files = _evil_files(tmp_path / "evil", marker)
    # sanity: the payload does run when unpickled the unsafe way
    pickle.loads(files["raw_pickle.pt"].read_bytes())
    assert marker.exists()
    marker.unlink()

    refused = []
    for name in ("torch_save.pt", "raw_pickle.pt", "pickle_named.npz"):
        with pytest.raises(CheckpointError) as err:
            VallEX.from_checkpoint(files[name], n_heads=2)
        assert err.value.message and not marker.exists()
        refused.append(f"VallEX.from_checkpoint({name})")
    lib = VoiceLibrary(tmp_path / "voices", presets_dir=None)
    for name in ("object_array.npz", "pickle_named.npz", "npy_object.npz", "torch_save.pt"):
        with pytest.raises(VoiceError) as err:
            lib.import_npz(files[name], "evil")
        assert err.value.message and not marker.exists()
        refused.append(f"VoiceLibrary.import_npz({name})")
    assert lib.list() == []

    # Vocos and EnCodec folders whose weight files are payloads
    for loader, sub, weight in ((Vocos, "vocos", "pytorch_model.bin"), (Codec, "encodec", "model.safetensors")):
        folder = tmp_path / f"evil-{sub}"
        shutil.copytree(tiny_models / sub, folder)
        for f in folder.glob("*.safetensors"):
            f.unlink()
        shutil.copyfile(files["torch_save.pt"], folder / weight)
        shutil.copyfile(files["torch_save.pt"], folder / "pytorch_model.bin")  # a tempting fallback
        with pytest.raises(StudioError) as err:
            loader.from_pretrained(folder)
        assert err.value.message and not marker.exists()
        refused.append(f"{loader.__name__}.from_pretrained({weight})")

    # the whole pipeline on a models folder whose VALL-E X checkpoint is a payload
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    shutil.copyfile(files["torch_save.pt"], models / "vallex" / "vallex-checkpoint.pt")
    studio = Studio(models, offline=True, voices_dir=tmp_path / "v2")
    with pytest.raises(StudioError) as err:
        studio.synthesize("Hello.")
    assert "checkpoint" in err.value.user_message().lower() and not marker.exists()
    refused.append("Studio.synthesize(payload checkpoint)")
    record(artifacts, "security_pickle", {"payload_loads_refused": len(refused), "executed": 0, "paths": refused})


BAD_NAMES = ["../evil", "../../evil", "..\\evil", "/tmp/evil-abs", "a/b", "sub/../evil", "a\x00b", "x" * 101,
             ".hidden", "..", "", "   ", "evil\nname", "C:\\evil", "a:b", "con<1>", "\x7f", "\u0000"]


def test_unsafe_voice_names_are_rejected_in_core(tmp_path, artifacts):
    root = tmp_path / "lib" / "voices"
    lib = VoiceLibrary(root, presets_dir=None)
    good = Voice("good", np.zeros((10, 8), np.int64), [1, 2, 3], "en", "hi")
    lib.save(good)
    npz = _npz_ok(tmp_path / "ok.npz")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    calls = 0
    for bad in BAD_NAMES:
        for fn in (lambda: lib.save(Voice(bad, good.audio_tokens, good.text_ids, "en")), lambda: lib.load(bad),
                   lambda: lib.delete(bad), lambda: lib.rename("good", bad), lambda: lib.rename(bad, "good"),
                   lambda: lib.import_npz(npz, bad or "../x"), lambda: lib.export_npz(bad)):
            calls += 1  # (import_npz with an empty name takes the file's stem, a safe default)
            with pytest.raises(VoiceError) as err:
                fn()
            assert err.value.message, bad
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written, renamed or deleted anywhere
    assert not Path("/tmp/evil-abs.npz").exists()
    assert [v.name for v in lib.list()] == ["good"]
    record(artifacts, "security_names", {"bad_names": len(BAD_NAMES), "core_calls_rejected": calls})


def test_upload_size_limits_in_core(tmp_path):
    big = tmp_path / "big.wav"
    with open(big, "wb") as fh:  # sparse: 300 MiB declared on disk without writing it
        fh.truncate(300 * 2**20)
    with pytest.raises(AudioError, match="limit"):
        load_audio(big)
    with pytest.raises(AudioError, match="limit"):
        load_audio(b"\0" * 2049, max_bytes=2048)
    with pytest.raises(AudioError, match="limit"):  # a file object is read only up to the limit
        load_audio(open(big, "rb"), max_bytes=4096)


# ------------------------------------------------------------------------------ a server with --auth
@pytest.fixture(scope="module")
def auth_app(tiny_models, tmp_path_factory):
    from tests.app_server import running_app

    work = tmp_path_factory.mktemp("auth-app")
    with running_app(tiny_models, work, "--auth", f"{USER}:{PASSWORD}",
                     headers={"Authorization": f"Bearer {PASSWORD}"}) as server:
        server.work = work
        yield server


@pytest.mark.slow
def test_auth_guards_page_gradio_api_and_v1(auth_app, artifacts):
    from gradio_client import Client

    url = auth_app.url
    anon = requests.Session()
    checks = {}
    checks["GET /config"] = anon.get(url + "config", timeout=30).status_code
    checks["GET /gradio_api/info"] = anon.get(url + "gradio_api/info", timeout=30).status_code
    checks["POST /gradio_api/call/convert"] = anon.post(url + "gradio_api/call/convert", timeout=30,
                                                        json={"data": [None, "louder"]}).status_code
    checks["POST /gradio_api/queue/join"] = anon.post(url + "gradio_api/queue/join", timeout=30, json={
        "data": [], "fn_index": 0, "session_hash": "x"}).status_code
    checks["POST /gradio_api/upload"] = anon.post(url + "gradio_api/upload", timeout=30,
                                                  files={"files": ("a.wav", b"RIFF")}).status_code
    for path in ("v1/models", "v1/voices"):
        checks[f"GET /{path}"] = anon.get(url + path, timeout=30).status_code
        checks[f"GET /{path} wrong key"] = anon.get(url + path, timeout=30,
                                                    headers={"Authorization": "Bearer nope"}).status_code
        checks[f"GET /{path} basic auth"] = anon.get(url + path, timeout=30, auth=(USER, PASSWORD)).status_code
    checks["POST /v1/audio/speech"] = anon.post(url + "v1/audio/speech", timeout=30,
                                                json={"input": "hi", "response_format": "wav"}).status_code
    refused = {k: v for k, v in checks.items() if v in (401, 403)}
    page = anon.get(url, timeout=30)
    anon_client_refused = False
    try:
        Client(url, verbose=False)
    except Exception:  # noqa: BLE001 - gradio_client raises different errors per version
        anon_client_refused = True
    # the right credentials work on every surface
    ok_client = Client(url, auth=(USER, PASSWORD), verbose=False)
    status_md = ok_client.predict(api_name="/status")
    v1 = requests.get(url + "v1/voices", headers={"Authorization": f"Bearer {PASSWORD}"}, timeout=30)
    record(artifacts, "security_auth", {"anonymous_requests": len(checks), "refused": len(refused),
                                        "status_codes": checks, "anon_gradio_client_refused": anon_client_refused})
    assert refused == checks, f"served without login: { {k: v for k, v in checks.items() if k not in refused} }"
    assert anon_client_refused
    assert "Clone a voice" not in page.text  # the login page, not the studio
    assert isinstance(status_md, str)
    assert v1.status_code == 200 and v1.json()["object"] == "list"


@pytest.mark.slow
def test_bad_names_pickles_and_sizes_through_the_app(auth_app, tmp_path, artifacts):
    from gradio_client import Client, handle_file

    from tests.audio_corpus import speechlike, wav_bytes

    url, key = auth_app.url, {"Authorization": f"Bearer {PASSWORD}"}
    client = Client(url, auth=(USER, PASSWORD), verbose=False)
    prompt = tmp_path / "prompt.wav"
    prompt.write_bytes(wav_bytes(speechlike(4.0, 24000), 24000))
    client.predict(handle_file(str(prompt)), "en", "Hello there.", api_name="/check_prompt")
    client.predict("good", "Hello there.", api_name="/save_voice")
    rejected, failures = 0, []

    def expect_error(what, fn):
        nonlocal rejected
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            if "verbose error reporting" in str(e) or not str(e).strip():
                failures.append(f"{what}: unclear error {e!r:.150}")
            rejected += 1
            return
        failures.append(f"{what}: accepted")

    for bad in [n for n in BAD_NAMES if n.strip()]:
        expect_error(f"save_voice {bad!r}", lambda: client.predict(bad, "Hello there.", api_name="/save_voice"))
        expect_error(f"rename_voice {bad!r}", lambda: client.predict("good", bad, api_name="/rename_voice"))
        expect_error(f"delete_voice {bad!r}", lambda: client.predict(bad, api_name="/delete_voice"))
        r = requests.post(url + "v1/audio/speech", headers=key, timeout=60,
                          json={"input": "Hello.", "voice": bad, "response_format": "wav"})
        if r.status_code == 400 and r.json()["error"]["message"]:
            rejected += 1
        else:
            failures.append(f"v1 voice {bad!r}: HTTP {r.status_code}")
    marker = tmp_path / "PWNED"
    evil = _evil_files(tmp_path / "evil", marker)
    for name in ("object_array.npz", "pickle_named.npz", "npy_object.npz"):
        expect_error(f"import_voice {name}", lambda: client.predict(handle_file(str(evil[name])), "evil",
                                                                      api_name="/import_voice"))
    ok_npz = _npz_ok(tmp_path / "fine.npz")
    expect_error("import_voice name '../x'", lambda: client.predict(handle_file(str(ok_npz)), "../x",
                                                                  api_name="/import_voice"))
    voices_dir = auth_app.work / "voices"
    on_disk = sorted(p.name for p in voices_dir.iterdir() if not p.name.startswith("."))
    # upload limits: > 50 MB refused by the server, an over-long /v1 input refused with 400
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF" + bytes(51 * 2**20))
    cookies = client.cookies if hasattr(client, "cookies") else None
    up = requests.post(url + "gradio_api/upload", files={"files": ("big.wav", open(big, "rb"))},
                       cookies=cookies, timeout=120)
    expect_error("convert 51 MB upload", lambda: client.predict(handle_file(str(big)), "louder", api_name="/convert"))
    long_input = requests.post(url + "v1/audio/speech", headers=key, timeout=60,
                               json={"input": "a" * 5000, "response_format": "wav"})
    record(artifacts, "security_app", {"bad_requests_rejected": rejected, "failures": len(failures),
                                       "failure_examples": failures[:10], "upload_51MB_status": up.status_code,
                                       "v1_input_5000_chars_status": long_input.status_code})
    assert not failures, failures
    assert not marker.exists()
    assert on_disk == ["good.json", "good.npz"], on_disk
    assert up.status_code in (400, 401, 413)
    assert long_input.status_code == 400 and "input" in long_input.json()["error"]["message"]
