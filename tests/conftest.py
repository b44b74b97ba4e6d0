"""Shared test set-up: offline, two threads, the golden vectors and the tiny model folder.

Fixtures other test modules use:
- `golden`: Path of ../shared/golden (override with VALLEX_GOLDEN).
- `tiny_models`: a session-wide models folder in the real formats with tiny random weights
  (tests/tiny_models.py), loaded by the same code path as real weights.
- `artifacts`: a folder kept after the run (screenshots, logs): test-artifacts/ at the repo root.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

# Before anything imports huggingface_hub / transformers / gradio.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
    yield


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the tiny models are latency-bound, and a second thread
    only adds synchronisation."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def golden() -> Path:
    path = Path(os.environ.get("VALLEX_GOLDEN", ROOT.parent / "shared" / "golden"))
    if not (path / "README.md").exists():
        pytest.fail(f"golden vectors not found at {path} (set VALLEX_GOLDEN)")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    from tests.tiny_models import make_models_folder

    return make_models_folder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that ran against a live studio (`app` fixture) gets the tail of the server's
    log in its report: CI keeps only pytest's output, and the log holds the traceback."""
    report = yield
    server = getattr(item, "funcargs", {}).get("app")
    if report.failed and hasattr(server, "log_path"):
        try:
            tail = server.log_path.read_text(errors="replace").splitlines()[-80:]
        except OSError as e:
            tail = [f"(the server log could not be read: {e})"]
        report.sections.append(("studio server log (last 80 lines)", "\n".join(tail)))
    return report
