#!/usr/bin/env bash
# Quick start, the demo: set everything up, then train a tiny Wan DiT from scratch on procedural videos
# (coloured squares moving in known directions; no downloads, CPU, a few minutes), sample prompts held out
# from training with Euler and Heun, and score them. Writes report.json, loss.png and clips to out/demo.
#   scripts/demo.sh [OUT_DIR] [extra options of `python -m wan_core demo`, e.g. --seed 1 or --quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out="${1:-out/demo}"
shift $(( $# > 0 ? 1 : 0 ))
exec .venv/bin/python -m wan_core demo --out "$out" "$@"
