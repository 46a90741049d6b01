#!/usr/bin/env bash
# Run the test suite: bash scripts/test.sh [pytest args, e.g. tests/test_launcher.py -m "not e2e"]
# Without paths pytest runs `testpaths` (tests/). Collecting no test at all is a failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/bootstrap.sh"
cd "$REPO"
rc=0
"$REPO/.venv/bin/python" -m pytest -q --durations=10 "$@" || rc=$?
if (( rc == 5 )); then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
