#!/usr/bin/env bash
# A device check of at most 8 minutes on one accelerator: device kind and versions, the
# throughput benchmark of every model in float32 and bfloat16, one short run per family with
# its MFU, 1-vs-N-device agreement; writes a markdown report (see scripts/device_check.py).
#
#   scripts/device_check.sh [REPORT.md] [--quick] [--budget_s=450]
#
# --quick: a CPU-sized check in well under a minute (the suite runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
# The jobs stop starting after --budget_s; this bounds the whole check at 8 minutes.
exec timeout 480 "$PYTHON" scripts/device_check.py "$@"
