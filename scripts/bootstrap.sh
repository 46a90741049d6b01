#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine (Python 3.10-3.12; root, or sudo without a
# password, for the apt part): system libraries, .venv with the project installed editable, and the
# default tiny model + sample videos. A second run does nothing and takes a fraction of a second.
# Quiet on success (one summary line, plus a line per thing done); on failure prints the log tail.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STATE="$REPO/.triton"
LOG_DIR="$STATE/logs"
STAMP="$VENV/.bootstrap-stamp"
mkdir -p "$LOG_DIR"
exec 9>"$STATE/bootstrap.lock"
flock 9  # serve.sh and test.sh may bootstrap at the same time

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 DEBIAN_FRONTEND=noninteractive
START_US=${EPOCHREALTIME//[!0-9]/}
PHASE_US=$START_US
TIMINGS=()

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }
phase_done() {  # phase_done NAME: record the time since the previous phase ended
  local now=${EPOCHREALTIME//[!0-9]/}
  TIMINGS+=("$1 $(( (now - PHASE_US) / 1000000 )).$(( (now - PHASE_US) / 100000 % 10 ))s")
  PHASE_US=$now
}
run_logged() {  # run_logged NAME CMD...: output goes to a log that is shown only on failure
  local log="$LOG_DIR/bootstrap-$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "bootstrap: ERROR: '$*' failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
python_ok() {  # python_ok PYTHON: runs, and is a supported version
  "$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' >/dev/null 2>&1
}

# --- python: the existing .venv if usable, else the first python3.12/3.11/3.10 that runs ----------
# (`command -v` is not enough: pyenv shims exist for versions that are not selected and then fail.)
if python_ok "$VENV/bin/python"; then
  BASE_PY="$VENV/bin/python"
else
  BASE_PY=""
  for candidate in python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null && python_ok "$candidate"; then BASE_PY="$candidate"; break; fi
  done
  [[ -n $BASE_PY ]] || die "no Python 3.10-3.12 found (tried python3.12, python3.11, python3.10, python3)"
fi
PY_VERSION="$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
phase_done python

# --- apt: system packages needed at run time, installed only when missing -------------------------
# tritonserver and the Python backend find their libraries in the wheel (nvidia_pytriton.libs), except:
#  - the stub embeds libpython3.X.so.1.0: the interpreter's own (pyenv/python.org builds ship it),
#    else Debian's libpython3.X;
#  - perf_analyzer (tritonclient 2.51 wheel) links the system libb64.so.0d;
#  - Debian's python3.X cannot create a venv without python3.X-venv.
LDCACHE="$(PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null || true)"
has_lib() { [[ $LDCACHE == *"$1 "* ]]; }
APT_NEEDED=()
PY_LIB="$("$BASE_PY" -c 'import os, sysconfig as s; print(os.path.join(s.get_config_var("LIBDIR") or "", s.get_config_var("INSTSONAME") or ""))')"
[[ -f $PY_LIB ]] || has_lib "libpython$PY_VERSION.so.1.0" || APT_NEEDED+=("libpython$PY_VERSION")
has_lib libb64.so.0d || APT_NEEDED+=(libb64-0d)
if [[ $BASE_PY != "$VENV/bin/python" ]] && ! "$BASE_PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  APT_NEEDED+=("python$PY_VERSION-venv")
fi
if (( ${#APT_NEEDED[@]} )); then
  SUDO=()
  if (( EUID != 0 )) && sudo -n true 2>/dev/null; then SUDO=(sudo -n); fi
  if ! command -v apt-get >/dev/null || { (( EUID != 0 )) && (( ${#SUDO[@]} == 0 )); }; then
    say "WARNING: missing system packages ${APT_NEEDED[*]} (not root, or no apt-get): install them yourself"
  else
    run_logged apt-update "${SUDO[@]}" apt-get update -qq
    run_logged apt-install "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${APT_NEEDED[@]}"
    say "installed system packages: ${APT_NEEDED[*]}"
  fi
fi
phase_done apt

# --- venv: created if missing, pip only when pyproject.toml (or the torch choice) changed ---------
if [[ $BASE_PY != "$VENV/bin/python" ]]; then
  [[ -e $VENV ]] && say "replacing unusable $VENV"
  rm -rf "$VENV"
  run_logged venv "$BASE_PY" -m venv "$VENV"
  say "created .venv with $("$VENV/bin/python" -V)"
fi
# CPU machines take the CPU build (pip's config points at a local wheel of exactly this version).
if command -v nvidia-smi >/dev/null; then TORCH_SPEC=torch; else TORCH_SPEC=torch==2.13.0; fi
WANT_STAMP="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) py$PY_VERSION $TORCH_SPEC"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT_STAMP" ]]; then
  run_logged pip-torch "$VENV/bin/python" -m pip install "$TORCH_SPEC"
  run_logged pip-project "$VENV/bin/python" -m pip install -e "$REPO[test,bench,gpu]"
  echo "$WANT_STAMP" >"$STAMP"
  say "installed $TORCH_SPEC and the project (-e .[test,bench,gpu]) into .venv"
fi
phase_done venv

# --- check: every shared library of tritonserver, the Python backend and its stub resolves --------
if ! "$VENV/bin/python" -m triton_adapters.launcher --check >"$LOG_DIR/bootstrap-check.log" 2>&1; then
  cat "$LOG_DIR/bootstrap-check.log" >&2
  die "tritonserver cannot run here (see the libraries above)"
fi
phase_done check

# --- artifacts: default model and sample videos, generated locally (no downloads) -----------------
generate() {  # generate WHAT SCRIPT OUT
  if [[ ! -f $REPO/$2 ]]; then
    say "skipped $1: $2 does not exist yet"
    return
  fi
  run_logged "$(basename "$2" .py)" "$VENV/bin/python" "$REPO/$2" --out "$REPO/$3"
  say "checked $1 in $3"
}
# Both scripts are idempotent (they skip what is already current and rebuild what is stale), so they
# always run: a model made by an older recipe or a sample video added to the set is picked up.
generate "the tiny model" scripts/make_tiny_model.py artifacts/models/tiny-qwen2.5-vl
generate "the sample videos" scripts/make_sample_videos.py artifacts/videos
phase_done artifacts

TOTAL_US=$(( ${EPOCHREALTIME//[!0-9]/} - START_US ))
say "ready in $(( TOTAL_US / 1000000 )).$(( TOTAL_US / 100000 % 10 ))s ($(IFS=,; echo "${TIMINGS[*]}" | sed 's/,/, /g'))"
