#!/usr/bin/env bash
# Quick start, command 2: set everything up and run the test suite.
# Extra arguments go to pytest. The real-ComfyUI end-to-end test runs only when COMFYUI_DIR is set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -q tests "$@"
