#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what the pack needs.
#   scripts/setup.sh          runtime dependencies (torch pinned to the CPU wheel these machines carry)
#   scripts/setup.sh --test   plus the test-only dependencies (pytest, diffusers as the parity reference)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${WANFLOW_VENV:-.venv}"
TORCH_SPEC="${WANFLOW_TORCH:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.wanflow-installed"
want="$TORCH_SPEC $(cat requirements.txt requirements-test.txt 2>/dev/null | sha1sum | cut -c1-12) ${1:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$PY" -m pip install -q --upgrade pip >/dev/null
"$PY" -m pip install -q "$TORCH_SPEC"
"$PY" -m pip install -q -r requirements.txt
if [ "${1:-}" = "--test" ]; then
  "$PY" -m pip install -q -r requirements-test.txt
fi
echo "$want" > "$stamp"
