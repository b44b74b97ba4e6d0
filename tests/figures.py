"""Hardening figures for the issue note: each test merges its numbers into
test-artifacts/hardening.json (readable after a run without `-s`)."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)
_LOCK = threading.Lock()


def record(artifacts: Path, section: str, figures: dict) -> None:
    """Merge `figures` under `section` in artifacts/hardening.json (atomic rewrite) and log them."""
    path = Path(artifacts) / "hardening.json"
    with _LOCK:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data.setdefault(section, {}).update(figures)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hardening.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False, default=str)
        os.replace(tmp, path)
    log.warning("hardening figures [%s]: %s", section, json.dumps(figures, default=str)[:2000])
