#!/usr/bin/env bash
# One install command for a fresh machine: torch first (the CUDA extension builds against it),
# then this project in editable mode without build isolation (so pip does not fetch torch again).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
python -m pip install --no-build-isolation -e ".[test]"
