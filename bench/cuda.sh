#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and a CUDA build of torch: the CUDA tests, then the LM and the
# end-to-end benchmarks on cuda (what bench/README.md's CUDA section reports).
# Usage: bash bench/cuda.sh [PYTHON]   (default .venv/bin/python; VALLEX_GOLDEN: the golden folder)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -m pytest -q -p no:cacheprovider tests/test_lm.py -k "cuda or refused"
"$PY" bench/bench_lm.py --no-ref --device cuda --modes fp32,bf16,int8 --batch-modes fp32,bf16,int8
"$PY" bench/bench_e2e.py --device cuda --modes fp32,bf16,int8
