#!/usr/bin/env bash
# Run perf_analyzer (tritonclient 2.51 wheel) against the streaming ensemble `mllm` with one of the input
# scenarios of perf_analyzer_configs/ (README there: scenarios, load modes, TTFT from the profile export).
#
#   bash scripts/perf_analyzer.sh <text_only|video_url|video_b64|mixed> [--url HOST:GRPC_PORT]
#        [--video-dir DIR] [--max-tokens N] [--num-frames N] [--inputs-dir DIR] [perf_analyzer args...]
#
# e.g. bash scripts/perf_analyzer.sh video_url --max-tokens 16 --concurrency-range 1:4 \
#        --profile-export-file bench_out/pa_video_url.json
#
# Does, as needed: apt-get install libb64-0d (perf_analyzer links libb64.so.0d), pip install
# nvidia-cuda-runtime-cu12 into .venv (it needs libcudart.so.12 even on CPU, and we put that lib dir on
# LD_LIBRARY_PATH), then writes the scenario inputs for --video-dir (perf_analyzer_configs/make_inputs.py)
# and runs perf_analyzer over gRPC streaming (the ensemble is decoupled), printing the exact command.
# Without a load option it measures --concurrency-range 1. video_url needs the server's MLLM_MEDIA_ROOTS
# to include --video-dir.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
PA="$REPO/.venv/bin/perf_analyzer"
die() { echo "perf_analyzer.sh: ERROR: $*" >&2; exit 2; }

[[ $# -ge 1 && $1 != -* ]] || die "usage: $0 <text_only|video_url|video_b64|mixed> [--url HOST:PORT] [...]"
SCENARIO=$1
shift
URL=127.0.0.1:8001
VIDEO_DIR="$REPO/artifacts/videos"
INPUTS_DIR="$REPO/perf_analyzer_configs/generated"
MAX_TOKENS=32
NUM_FRAMES=""
PA_ARGS=()
while (( $# )); do
  case $1 in
    --url) URL=$2; shift 2 ;;
    --video-dir) VIDEO_DIR=$2; shift 2 ;;
    --inputs-dir) INPUTS_DIR=$2; shift 2 ;;
    --max-tokens) MAX_TOKENS=$2; shift 2 ;;
    --num-frames) NUM_FRAMES=$2; shift 2 ;;
    *) PA_ARGS+=("$1"); shift ;;
  esac
done
case $SCENARIO in text_only|video_url|video_b64|mixed) ;; *) die "unknown scenario '$SCENARIO'" ;; esac
[[ -x $PY && -x $PA ]] || die "$PA missing: run scripts/bootstrap.sh first"

# --- runtime libraries -------------------------------------------------------------------------------
LDCACHE="$(PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null || true)"
if [[ $LDCACHE != *"libb64.so.0d "* ]]; then
  SUDO=()
  if (( EUID != 0 )); then SUDO=(sudo -n); fi
  echo "perf_analyzer.sh: installing libb64-0d (apt-get)" >&2
  "${SUDO[@]}" apt-get update -qq >&2 && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends libb64-0d >&2 \
    || die "could not install libb64-0d; install it yourself (apt-get install libb64-0d)"
fi
cudart_dir() {  # the lib dir of pip's nvidia-cuda-runtime-cu12, empty when not installed
  "$PY" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia.cuda_runtime")
if spec and spec.submodule_search_locations:
    lib = pathlib.Path(list(spec.submodule_search_locations)[0]) / "lib"
    if (lib / "libcudart.so.12").exists():
        print(lib)
EOF
}
CUDART="$(cudart_dir)"
if [[ -z $CUDART && $LDCACHE != *"libcudart.so.12 "* ]]; then
  echo "perf_analyzer.sh: installing nvidia-cuda-runtime-cu12 into .venv (libcudart.so.12)" >&2
  "$PY" -m pip install -q --disable-pip-version-check nvidia-cuda-runtime-cu12 >&2
  CUDART="$(cudart_dir)"
fi
[[ -n $CUDART ]] && export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# --- inputs and run -----------------------------------------------------------------------------------
GEN_ARGS=(--video-dir "$VIDEO_DIR" --out "$INPUTS_DIR" --max-tokens "$MAX_TOKENS")
[[ -n $NUM_FRAMES ]] && GEN_ARGS+=(--num-frames "$NUM_FRAMES")
"$PY" "$REPO/perf_analyzer_configs/make_inputs.py" "${GEN_ARGS[@]}" >&2

HAS_LOAD=0
for arg in "${PA_ARGS[@]}"; do
  case $arg in --concurrency-range*|--request-rate-range*|--periodic-concurrency-range*|--request-intervals*) HAS_LOAD=1 ;; esac
done
(( HAS_LOAD )) || PA_ARGS=(--concurrency-range 1 "${PA_ARGS[@]}")
CMD=("$PA" -m mllm -i grpc --streaming -u "$URL" --input-data "$INPUTS_DIR/$SCENARIO.json" "${PA_ARGS[@]}")
echo "+ LD_LIBRARY_PATH=${CUDART:-} ${CMD[*]}" >&2
exec "${CMD[@]}"
