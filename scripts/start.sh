#!/usr/bin/env bash
# Set up (idempotent, skipped when done) and launch the studio. Extra arguments go to launch.py,
# e.g. `bash scripts/start.sh --port 7861 --share --auth me:secret`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python launch.py "$@"
