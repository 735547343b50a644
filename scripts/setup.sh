#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what the pack needs.
#   scripts/setup.sh          runtime dependencies (torch pinned to the CPU wheel these machines carry)
#   scripts/setup.sh --test   plus the test-only dependencies (pytest, diffusers as the parity reference)
# Each layer remembers what it installed (a stamp per layer), so running the two forms in turn installs
# nothing again; a changed requirements file or torch pin reinstalls that layer only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${WANFLOW_VENV:-.venv}"
TORCH_SPEC="${WANFLOW_TORCH:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() {
  # this machine's pip config lists local index folders that may not exist: hide those warnings only
  "$PY" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
layer() {  # layer NAME WANT COMMAND...: run the install unless the layer's stamp says WANT
  local stamp="$VENV/.wanflow-$1" want="$2"
  shift 2
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  "$@"
  echo "$want" > "$stamp"
}
runtime() {
  pip_install --upgrade pip
  pip_install "$TORCH_SPEC"
  pip_install -r requirements.txt
}
layer runtime "$TORCH_SPEC $(sha1sum requirements.txt | cut -c1-12)" runtime
if [ "${1:-}" = "--test" ]; then
  layer test "$TORCH_SPEC $(cat requirements.txt requirements-test.txt | sha1sum | cut -c1-12)" \
    pip_install -r requirements-test.txt
fi
