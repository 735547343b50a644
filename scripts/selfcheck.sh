#!/usr/bin/env bash
# Quick start, command 1: set everything up and run the main job on embedded tiny models
# (no downloads): write every checkpoint layout, reload, print the parity figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m wan_core selfcheck --out "${1:-out}"
