"""Test helper: run `launch.py` as a subprocess on a free local port and wait until it answers."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str  # ends with "/"
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_app(models: Path, workdir: Path, *extra: str, timeout: float = 180.0, ready_path="v1/models",
                headers: dict | None = None):
    """Start the studio on the tiny models folder; yields a `Server`, stops it afterwards."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--models", str(models),
           "--voices", str(workdir / "voices"), "--offline", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}/", proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited ({proc.returncode}):\n{server.log()}")
            try:
                if requests.get(server.url + ready_path, timeout=2, headers=headers).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer in {timeout} s:\n{server.log()}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def speech_wav(path: Path, text: str = "Hello, this is a test of the voice cloning studio.",
               rate: int = 48000) -> Path:
    """A real speech recording made with espeak-ng + ffmpeg (mono PCM16)."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(raw), "-ar", str(rate), "-ac", "1",
                    "-c:a", "pcm_s16le", str(path)], check=True, capture_output=True)
    raw.unlink()
    return path
