#!/usr/bin/env bash
# GPU checks in one command (benchmarks/gpu_check.py says what they measure):
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--iterations N] [--only CHECK,...]
#                                [--out DIR] [--json FILE] [--wheels DIR]
# Runs from a plain checkout: $PYTHON if set, else the project's .venv, else python3 on PATH; a machine
# without network installs the harness's missing dependencies from --wheels DIR first.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
