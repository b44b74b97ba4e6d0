#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine with Python 3.11 and root:
#   Debian packages, a .venv at the repo root, torch 2.13.0 (CPU build), the project itself.
# Usage: scripts/setup.sh [--test]   (--test also installs the browser + test tools)
#        TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 scripts/setup.sh   (torch for a GPU)
# Each step is skipped when what it makes is already there, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------------------------
APT_PKGS=(ffmpeg espeak-ng libportaudio2 libsndfile1)
(( WITH_TEST )) && APT_PKGS+=(chromium)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtual environment -----------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# A stamp keyed on the dependency list makes the second run skip pip entirely.
want="$( (cat pyproject.toml scripts/setup.sh; echo "${TORCH_INDEX_URL:-}") | sha256sum | cut -c1-16)-$WITH_TEST"
stamp=".venv/.studio-setup"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$have" != "$want" && "$have" != "${want%-0}-1" ]]; then
    log "installing Python packages (first run takes a few minutes)"
    "$VPY" -m pip install -q --upgrade pip
    # torch first and pinned: the local CPU wheel, never the CUDA build, unless TORCH_INDEX_URL
    # names a PyTorch wheel index (e.g. https://download.pytorch.org/whl/cu130 for a GPU)
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        "$VPY" -m pip install -q --force-reinstall torch==2.13.0 --index-url "$TORCH_INDEX_URL"
    else
        "$VPY" -m pip install -q torch==2.13.0
    fi
    if (( WITH_TEST )); then
        "$VPY" -m pip install -q -e ".[test]"
    else
        "$VPY" -m pip install -q -e .
    fi
    # --no-deps: faster-whisper's onnxruntime requirement is only for its optional VAD, and
    # onnxruntime changes pyopenjtalk-plus's readings of 何 (reference parity).
    "$VPY" -m pip install -q --no-deps "faster-whisper==1.2.1"
    "$VPY" -m pip uninstall -q -y onnxruntime 2>/dev/null || true
    echo "$want" > "$stamp"
else
    log "Python packages up to date"
fi
