"""Faults: a process killed (SIGKILL) during a voice save or a CLI batch, a download cut half-way,
and missing or corrupt model files.

- Voice save: a child process saves two different voices under one name in a loop; it is killed
  at several moments. Each time, the name must load as exactly one of the two voices (never a
  mix, never unreadable) and the library must list cleanly.
- Batch: `launch.py synth` is killed once some outputs exist; every output on disk must be a
  complete audio file, and a second run must skip them and finish the rest.
- Download: the store's fake Hub (tests/test_store.py) cuts the file half-way; the next call
  resumes with a Range request and the result verifies.
- Models: a missing or corrupt file gives a clear StudioError through the Studio and a clear
  message through /v1 and the page.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from core.errors import ModelMissingError, StudioError
from core.voices import VoiceLibrary
from tests.figures import record
from tests.test_store import _add, hub  # noqa: F401 - the store helper's local fake Hub fixture

ROOT = Path(__file__).resolve().parent.parent

SAVER = textwrap.dedent("""
    import sys, numpy as np
    from core.voices import Voice, VoiceLibrary
    lib = VoiceLibrary(sys.argv[1], presets_dir=None)
    a = Voice("victim", np.full((3000, 8), 1, np.int64), [1] * 50, "en", "A" * 2000)
    b = Voice("victim", np.full((2000, 8), 2, np.int64), [2] * 80, "zh", "B" * 3000)
    print("ready", flush=True)
    i = 0
    while True:
        lib.save(a if i % 2 == 0 else b)
        i += 1
""")


def test_kill_during_voice_save_leaves_no_corrupt_voice(tmp_path, artifacts):
    root = tmp_path / "voices"
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outcomes = {"A": 0, "B": 0}
    delays = [0.05, 0.13, 0.21, 0.34, 0.55, 0.8, 1.3, 2.1]
    for delay in delays:
        proc = subprocess.Popen([sys.executable, str(script), str(root)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        lib = VoiceLibrary(root, presets_dir=None)
        if not (root / "victim.npz").exists():
            continue  # killed before the first save finished: no voice, which is fine
        voice = lib.load("victim")
        kind = "A" if int(voice.audio_tokens[0, 0]) == 1 else "B"
        expected_frames, expected_ids, lang = (3000, [1] * 50, "en") if kind == "A" else (2000, [2] * 80, "zh")
        assert voice.audio_tokens.shape == (expected_frames, 8) and np.all(voice.audio_tokens == voice.audio_tokens[0, 0])
        assert voice.text_ids == expected_ids and voice.language == lang
        assert [v.name for v in lib.list()] == ["victim"]
        outcomes[kind] += 1
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    record(artifacts, "fault_voice_save", {"kills": len(delays), "voice_intact_after_kill": sum(outcomes.values()),
                                           "as_A": outcomes["A"], "as_B": outcomes["B"], "corrupt": 0,
                                           "temp_files_left": len(leftovers)})
    assert sum(outcomes.values()) >= len(delays) - 2  # the voice existed and was intact nearly every time


def _synth_cmd(models: Path, lines: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "launch.py"), "synth", "--text-file", str(lines), "--out-dir", str(out),
            "--models", str(models), "--offline", "--seed", "5", "--preset", "greedy", "--format", "wav",
            "--voices", str(out.parent / "voices")]


@pytest.mark.slow
def test_kill_during_batch_then_resume(tiny_models, tmp_path, artifacts):
    lines = tmp_path / "lines.txt"
    texts = ["Hello there.", "Good morning.", "One two three.", "See you soon.", "The cat sat.", "Thank you.",
             "Good night.", "Welcome home."]
    lines.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    proc = subprocess.Popen(_synth_cmd(tiny_models, lines, out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in out.glob("*.wav")] if out.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    first = sorted(p.name for p in out.glob("*.wav"))
    assert first, "the batch wrote nothing before the kill"
    for p in out.glob("*.wav"):  # complete files only: each decodes to its whole length
        x, sr = sf.read(p)
        assert sr == 24000 and len(x) > 0
    second = subprocess.run(_synth_cmd(tiny_models, lines, out), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    final = sorted(p.name for p in out.glob("*.wav"))
    assert len(final) == len(texts)
    assert f"{len(first)} already done" in second.stdout, second.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial temp files left behind
    record(artifacts, "fault_batch", {"utterances": len(texts), "done_before_kill": len(first),
                                      "redone_after_resume": len(texts) - len(first), "complete_at_end": len(final)})


def test_download_cut_midway_resumes(hub, artifacts):  # noqa: F811 - the fixture from tests/test_store
    from core import store

    files = _add(hub, "vocos", 400_000)
    key = next(iter(hub["files"]))
    hub["cut_once"].add(key)
    path = None
    for attempt in range(3):
        try:
            path = store.download_model("vocos")
            break
        except StudioError:
            continue
    gets = [rng for method, k, rng in hub["log"] if method == "GET" and k == key]
    record(artifacts, "fault_download", {"attempts": attempt + 1, "get_requests": len(gets),
                                         "resumed_with_range": any(r for r in gets[1:])})
    assert path is not None
    assert any(r for r in gets[1:])  # a later request asked only for the rest
    for name, data in files.items():
        assert (path / name).read_bytes() == data  # resumed file is whole and verified


def _broken_copies(tiny_models: Path, tmp_path: Path) -> dict[str, Path]:
    """name -> a models folder with one fault."""
    cases = {}
    for name in ("missing-vallex", "truncated-vallex", "garbage-vocos-config", "empty-encodec-weights",
                 "lfs-pointer-vallex", "html-vocos", "encodec-missing-weights"):
        folder = tmp_path / name
        shutil.copytree(tiny_models, folder)
        cases[name] = folder
    (cases["missing-vallex"] / "vallex" / "vallex-checkpoint.pt").unlink()
    ckpt = cases["truncated-vallex"] / "vallex" / "vallex-checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (cases["garbage-vocos-config"] / "vocos" / "config.yaml").write_text("feature_extractor: [unclosed\n\t:")
    (cases["empty-encodec-weights"] / "encodec" / "model.safetensors").write_bytes(b"")
    # what a download gone wrong leaves: a clone without git-lfs, an error page saved as the file
    (cases["lfs-pointer-vallex"] / "vallex" / "vallex-checkpoint.pt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1482200000\n")
    (cases["html-vocos"] / "vocos" / "pytorch_model.bin").write_text("<!DOCTYPE html><html>502 Bad Gateway</html>")
    from safetensors.torch import load_file, save_file

    weights = cases["encodec-missing-weights"] / "encodec" / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if not k.startswith("quantizer.layers.0.")}, str(weights))
    return cases


def test_missing_or_corrupt_models_give_a_clear_message(tiny_models, tmp_path, artifacts, golden):
    from core.synth import Studio

    messages = {}
    for name, folder in _broken_copies(tiny_models, tmp_path).items():
        studio = Studio(folder, offline=True, voices_dir=tmp_path / "voices")
        encodec = name.startswith(("empty-encodec", "encodec-"))
        if encodec:
            # EnCodec loads where audio is encoded: a take without a recording does not need it
            assert len(studio.synthesize("Hello there.").audio)
        with pytest.raises(StudioError) as err:
            if encodec:
                studio.make_voice(golden / "prompts" / "en-1.wav", transcript="I know, I know. It's just.")
            else:
                studio.synthesize("Hello there.")
        msg = err.value.user_message()
        messages[name] = msg[:300]
        assert err.value.hint and len(msg) > 30, msg
        if name == "missing-vallex":
            assert isinstance(err.value, ModelMissingError) and "vallex" in msg.lower()
        else:  # which copy is damaged, and the command that replaces it
            model = next(m for m in ("vallex", "vocos", "encodec") if m in name)
            assert f"`python launch.py download {model} --models {folder}`" in msg, msg
        if name == "lfs-pointer-vallex":
            assert "Git LFS pointer" in msg
        if name == "html-vocos":
            assert "web page (HTML)" in msg and "weights_only" not in msg
        if name == "encodec-missing-weights":  # not filled with random numbers by transformers
            assert "missing weights (quantizer.layers.0.codebook" in msg
    record(artifacts, "fault_models", {"cases": len(messages), "messages": messages})


@pytest.mark.slow
def test_corrupt_model_through_the_app(tiny_models, tmp_path, artifacts):
    from gradio_client import Client

    from tests.app_server import running_app

    folder = _broken_copies(tiny_models, tmp_path)["truncated-vallex"]
    with running_app(folder, tmp_path) as server:
        r = requests.post(server.url + "v1/audio/speech", json={"input": "Hello.", "response_format": "wav"},
                          timeout=300)
        client = Client(server.url, verbose=False)
        try:
            client.predict("Hello there.", api_name="/speak")
            ui_message = None
        except Exception as e:  # noqa: BLE001
            ui_message = str(e)
        # the page's notice says so too (once a load has failed), so that nobody else presses Speak in vain
        notice = client.predict(api_name="/status")
    record(artifacts, "fault_models_app", {"v1_status": r.status_code, "v1_message": r.text[:200],
                                           "ui_message": (ui_message or "")[:200]})
    assert r.status_code == 503 and "checkpoint" in r.json()["error"]["message"].lower()  # the server's fault
    assert ui_message and "verbose error reporting" not in ui_message and "checkpoint" in ui_message.lower()
    assert "Model weights damaged" in notice and "vallex-checkpoint.pt" in notice, notice
