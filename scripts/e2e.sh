#!/usr/bin/env bash
# The real-ComfyUI end-to-end tests (tests/e2e) with everything they need set up first.
#
#   scripts/e2e.sh [--ci] [pytest arguments...]
#
# ComfyUI: $COMFYUI_DIR when set (your own checkout); otherwise the vendored release
#   ${WANFLOW_COMFYUI_TARBALL:-../shared/vendor/comfyui-0.3.64.tar.gz} is unpacked afresh under
#   out/e2e/ (the scratch folder, ${WANFLOW_E2E_WORK:-out/e2e}).
# ComfyUI's venv: $COMFYUI_VENV, default out/e2e/comfyui-venv, made by tests/e2e/harness/comfyui-up.sh
#   (ComfyUI's requirements with torch pinned to the CPU build, torchaudio left out) and reused while
#   its stamp matches; the python package 'playwright' goes in too when a Chromium is there (no browser
#   is downloaded: the system's Chromium is used).
# Chromium: Debian's 'chromium'. Without it the browser checks are skipped with a message.
# --ci: installs 'chromium' with apt-get when it is missing (needs root), ignores WANFLOW_E2E_NO_UI and
#   runs strict (WANFLOW_E2E_STRICT=1): a skipped end-to-end test fails the run, and so does a run
#   that executed no test (pytest's exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

CI_MODE=0
if [ "${1:-}" = "--ci" ]; then CI_MODE=1; shift; fi
log() { echo "e2e: $*" >&2; }
step_start=0
begin() { step_start=$SECONDS; log "$*"; }
took() { log "$* took $((SECONDS - step_start))s"; }

WORK="${WANFLOW_E2E_WORK:-out/e2e}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

begin "project venv (.venv, scripts/setup.sh --test)"
scripts/setup.sh --test
took "project venv"

# ---------------------------------------------------------------- ComfyUI source
if [ -z "${COMFYUI_DIR:-}" ]; then
  tarball="${WANFLOW_COMFYUI_TARBALL:-../shared/vendor/comfyui-0.3.64.tar.gz}"
  [ -f "$tarball" ] || { log "no COMFYUI_DIR and no ComfyUI archive at $tarball"; exit 1; }
  name="$(basename "$tarball" .tar.gz)"
  begin "unpacking $tarball into $WORK/$name"
  rm -rf "${WORK:?}/$name"
  tar -xzf "$tarball" -C "$WORK"
  [ -f "$WORK/$name/main.py" ] || { log "$tarball did not unpack to $WORK/$name/main.py"; exit 1; }
  COMFYUI_DIR="$WORK/$name"
  took "unpacking"
fi
export COMFYUI_DIR
export COMFYUI_VENV="${COMFYUI_VENV:-$WORK/comfyui-venv}"

# ---------------------------------------------------------------- Chromium
if [ "$CI_MODE" = 1 ]; then
  if [ -n "${WANFLOW_E2E_NO_UI:-}" ]; then log "--ci: ignoring WANFLOW_E2E_NO_UI=$WANFLOW_E2E_NO_UI"; fi
  unset WANFLOW_E2E_NO_UI
  export WANFLOW_E2E_STRICT=1
  if ! command -v chromium >/dev/null; then
    begin "installing Debian's chromium (apt-get)"
    # another apt/dpkg may hold the lock: wait for it rather than fail
    apt-get -o DPkg::Lock::Timeout=900 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q chromium
    took "apt-get chromium"
  fi
  command -v chromium >/dev/null || { log "--ci: no chromium after apt-get install"; exit 1; }
fi
UI_OPT=()
if command -v chromium >/dev/null && [ "${WANFLOW_E2E_NO_UI:-}" != 1 ]; then
  UI_OPT=(--playwright)
else
  log "no 'chromium' on PATH (or WANFLOW_E2E_NO_UI=1): the browser checks will be skipped (apt-get install chromium)"
fi

# ---------------------------------------------------------------- ComfyUI venv
begin "ComfyUI venv $COMFYUI_VENV"
bash tests/e2e/harness/comfyui-up.sh --install-only --venv "$COMFYUI_VENV" "${UI_OPT[@]+"${UI_OPT[@]}"}" \
  "$COMFYUI_DIR" "$REPO" >/dev/null
took "ComfyUI venv"

# ---------------------------------------------------------------- the tests
begin "pytest tests/e2e (COMFYUI_DIR=$COMFYUI_DIR)"
rc=0
# --basetemp: the models, ComfyUI's base dir and its log (comfyui.log) stay in out/e2e/pytest after the run
.venv/bin/python -m pytest tests/e2e -v --durations=10 --basetemp "$WORK/pytest" "$@" || rc=$?
took "pytest tests/e2e"
if [ "$rc" = 5 ]; then
  log "pytest collected no end-to-end test (exit 5): failing"
  exit 1
fi
# the unit tests that need a ComfyUI source tree (marked `comfyui`; they skip in scripts/test.sh without one)
begin "pytest -m comfyui (unit tests that read COMFYUI_DIR)"
marked=0
.venv/bin/python -m pytest -q -m comfyui tests --ignore=tests/e2e -p no:cacheprovider || marked=$?
took "pytest -m comfyui"
[ "$marked" = 5 ] && { log "no test is marked comfyui (exit 5): failing"; marked=1; }
[ "$rc" = 0 ] && rc=$marked
exit "$rc"
