#!/usr/bin/env bash
# Installs dlu with its test extras (as quickstart.sh does) and runs the test suite.
# Extra arguments go to pytest (e.g. -m "not slow", -k data).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test
source scripts/setup_env.sh
# One worker process per core (at most 4), each test file in one worker (its fixtures built once).
"${PY}" -m pytest -q -n auto --maxprocesses=4 --dist loadfile "$@"
