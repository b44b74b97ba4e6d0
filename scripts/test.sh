#!/usr/bin/env bash
# Set up (idempotent; adds Chromium and the test tools) and run the whole test suite offline.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_lm.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q --durations=15 "$@"
