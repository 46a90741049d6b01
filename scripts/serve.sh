#!/usr/bin/env bash
# Serve model_repository/ with tritonserver in the foreground (Ctrl-C stops it).
#   bash scripts/serve.sh [tritonserver args, e.g. --http-port 18000 --grpc-port 18001 --metrics-port 18002]
# MLLM_MODEL_PATH selects the checkpoint (default: the generated tiny Qwen2.5-VL).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/bootstrap.sh"
export MLLM_MODEL_PATH="${MLLM_MODEL_PATH:-$REPO/artifacts/models/tiny-qwen2.5-vl}"
exec "$REPO/.venv/bin/python" -m triton_adapters.launcher --model-repository "$REPO/model_repository" "$@"
