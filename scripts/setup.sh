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
pip_install() {
  # this machine's pip config lists local index folders that may not exist: hide those warnings only
  "$PY" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install --upgrade pip
pip_install "$TORCH_SPEC"
pip_install -r requirements.txt
if [ "${1:-}" = "--test" ]; then
  pip_install -r requirements-test.txt
fi
echo "$want" > "$stamp"
