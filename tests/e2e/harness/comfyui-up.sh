#!/usr/bin/env bash
# comfyui-up.sh - start a real ComfyUI (CPU) in the background for end-to-end tests.
#
# Usage: comfyui-up.sh [options] COMFYUI_DIR [PACK_DIR]
#
#   COMFYUI_DIR  a ComfyUI source checkout (must contain main.py and requirements.txt).
#   PACK_DIR     optional custom-node pack directory; it is symlinked into
#                <base-dir>/custom_nodes/<name> (the checkout itself is never modified).
#
# What it does:
#   1. creates or reuses a venv and installs ComfyUI's requirements.txt with torch pinned
#      (default torch==2.13.0, a CPU wheel; pip must find a CPU build). torchaudio is dropped
#      (no CPU build exists for it here); torchvision is resolved by pip to the release that
#      matches the pinned torch. If that torchvision's compiled ops cannot load (the registry
#      build links CUDA libraries), a small import-time shim is installed into the venv so
#      `import torchvision` still works (pure-Python parts only; torchvision.ops.* raise).
#   2. prepares a scratch base directory (ComfyUI --base-directory): models/, custom_nodes/,
#      input/, output/, temp/, user/ live there, not in the checkout.
#   3. starts `python main.py --cpu --listen HOST --port PORT --base-directory BASE ...` in the
#      background, waits until GET /system_stats answers, prints PID, URL, log path and any
#      custom-node import failures.
#
# Options (environment variable in brackets):
#   --venv DIR          venv to create/reuse          [COMFYUI_VENV]  default /tmp/comfyui-venv
#   --base-dir DIR      ComfyUI base directory        [COMFYUI_BASE]  default /tmp/comfyui-base-PORT
#   --port N            listen port                   [COMFYUI_PORT]  default 8188
#   --host ADDR         listen address (loopback only advised)        default 127.0.0.1
#   --python EXE        interpreter used to create the venv           default python3
#   --torch-spec SPEC   torch requirement             [COMFYUI_TORCH] default torch==2.13.0
#   --pack-name NAME    name of the symlink under custom_nodes/       default basename of PACK_DIR
#   --no-pack-reqs      do not pip-install PACK_DIR/requirements.txt
#   --playwright        also install the python 'playwright' package (for comfy_e2e.py ui);
#                       browsers are NOT downloaded: use a system Chromium (Debian 'chromium')
#   --no-install        skip every pip step (venv must already be complete)
#   --install-only      do steps 1 (venv) only and exit: nothing is started
#   --timeout S         seconds to wait for the server                 default 240
#   --keep-settings     do not seed user/default/comfy.settings.json
#   --compat-pins "..." extra requirements added to ComfyUI's list (default:
#                       'requests transformers>=4.37.2,<5', right for the Oct-2025 ComfyUI;
#                       pass '' for a checkout that needs transformers 5)
#   --                  everything after '--' is passed to main.py (e.g. -- --disable-api-nodes)
#
# Outputs: BASE/comfyui.pid, BASE/comfyui.log. Stop with comfyui-down.sh --base-dir BASE
# (or --port PORT when the default base dir was used).
set -euo pipefail

die() { echo "comfyui-up: $*" >&2; exit 1; }
log() { echo "comfyui-up: $*" >&2; }

VENV="${COMFYUI_VENV:-/tmp/comfyui-venv}"
PORT="${COMFYUI_PORT:-8188}"
HOST="127.0.0.1"
BASE="${COMFYUI_BASE:-}"
PY="python3"
TORCH_SPEC="${COMFYUI_TORCH:-torch==2.13.0}"
PACK_NAME=""
PACK_REQS=1
PLAYWRIGHT=0
INSTALL=1
INSTALL_ONLY=0
TIMEOUT=240
SEED_SETTINGS=1
COMPAT_PINS="${COMFYUI_COMPAT_PINS-requests transformers>=4.37.2,<5}"
EXTRA_ARGS=()
POS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2;;
    --base-dir) BASE="$2"; shift 2;;
    --port) PORT="$2"; shift 2;;
    --host) HOST="$2"; shift 2;;
    --python) PY="$2"; shift 2;;
    --torch-spec) TORCH_SPEC="$2"; shift 2;;
    --pack-name) PACK_NAME="$2"; shift 2;;
    --no-pack-reqs) PACK_REQS=0; shift;;
    --playwright) PLAYWRIGHT=1; shift;;
    --no-install) INSTALL=0; shift;;
    --install-only) INSTALL_ONLY=1; shift;;
    --timeout) TIMEOUT="$2"; shift 2;;
    --keep-settings) SEED_SETTINGS=0; shift;;
    --compat-pins) COMPAT_PINS="$2"; shift 2;;
    -h|--help) sed -n '2,44p' "$0"; exit 0;;
    --) shift; EXTRA_ARGS=("$@"); break;;
    -*) die "unknown option $1 (see --help)";;
    *) POS+=("$1"); shift;;
  esac
done

[ ${#POS[@]} -ge 1 ] || die "usage: comfyui-up.sh [options] COMFYUI_DIR [PACK_DIR]   (--help)"
COMFY_DIR="${POS[0]}"
PACK_DIR="${POS[1]:-}"
[ -n "$BASE" ] || BASE="/tmp/comfyui-base-$PORT"

# ---------------------------------------------------------------- checkout
COMFY_DIR="$(cd "$COMFY_DIR" 2>/dev/null && pwd)" || die "ComfyUI dir not found: ${POS[0]}"
[ -f "$COMFY_DIR/main.py" ] && [ -f "$COMFY_DIR/requirements.txt" ] || die "$COMFY_DIR is not a ComfyUI checkout (main.py/requirements.txt missing)"
if [ -n "$PACK_DIR" ]; then
  PACK_DIR="$(cd "$PACK_DIR" 2>/dev/null && pwd)" || die "pack dir not found: ${POS[1]}"
  [ -n "$PACK_NAME" ] || PACK_NAME="$(basename "$PACK_DIR")"
  [ -f "$PACK_DIR/__init__.py" ] || log "WARNING: $PACK_DIR has no __init__.py; ComfyUI will not import it as a node pack"
fi

# ---------------------------------------------------------------- port must be free
if [ "$INSTALL_ONLY" = 0 ] && "$PY" - "$HOST" "$PORT" <<'EOF'
import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)
EOF
then
  die "something already listens on $HOST:$PORT (stop it first, or use --port)"
fi

# ---------------------------------------------------------------- venv + requirements
VPY="$VENV/bin/python"
if [ ! -x "$VPY" ]; then
  [ "$INSTALL" = 1 ] || die "venv $VENV missing and --no-install given"
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$VENV/comfyui-up"
CONSTRAINTS="$VENV/comfyui-up/constraints.txt"
REQS="$VENV/comfyui-up/requirements.txt"
STAMP="$VENV/comfyui-up/stamp"

pip_q() {
  local out rc
  out="$("$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1)" && rc=0 || rc=$?
  # a pip config may list local index folders that do not exist: drop that noise
  printf '%s\n' "$out" | grep -v "is ignored: it is neither a file nor a directory" | grep -v '^$' >&2 || true
  [ "$rc" = 0 ] || die "pip install failed (exit $rc): $*"
}

if [ "$INSTALL" = 1 ]; then
  # torch pinned for every pip call; transformers<5 matches what ComfyUI of that era was
  # tested with (5.x also stopped pulling 'requests', which ComfyUI imports).
  printf '%s\n' "$TORCH_SPEC" > "$CONSTRAINTS"
  # Drop torch/torchaudio lines (torch comes from the pin, torchaudio has no CPU build here);
  # keep torchvision unpinned so pip picks the release matching the pinned torch.
  grep -viE '^[[:space:]]*(torch|torchaudio)[[:space:]]*([<>=!~;#].*)?$' "$COMFY_DIR/requirements.txt" > "$REQS"
  for pin in $COMPAT_PINS; do printf '%s\n' "$pin" >> "$REQS"; done
  want="$(cat "$CONSTRAINTS" "$REQS" | sha256sum | cut -c1-16)"
  have="$(cat "$STAMP" 2>/dev/null || true)"
  if [ "$want" != "$have" ]; then
    log "installing $TORCH_SPEC (pinned) ..."
    pip_q -c "$CONSTRAINTS" "$TORCH_SPEC"
    log "installing ComfyUI requirements (torch pinned, torchaudio skipped) ..."
    pip_q -c "$CONSTRAINTS" -r "$REQS"
    "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_SPEC#*==}') or '==' not in '$TORCH_SPEC' else 1)" \
      || die "torch in venv is not $TORCH_SPEC: $("$VPY" -c 'import torch;print(torch.__version__)')"
    echo "$want" > "$STAMP"
  else
    log "venv requirements up to date ($VENV)"
  fi
  if [ -n "$PACK_DIR" ] && [ "$PACK_REQS" = 1 ] && [ -f "$PACK_DIR/requirements.txt" ]; then
    log "installing $PACK_DIR/requirements.txt (torch pinned)"
    pip_q -c "$CONSTRAINTS" -r "$PACK_DIR/requirements.txt"
  fi
  if [ "$PLAYWRIGHT" = 1 ]; then
    "$VPY" -c "import playwright" 2>/dev/null || { log "installing python playwright (no browser download)"; pip_q -c "$CONSTRAINTS" playwright; }
  fi
fi

# ---------------------------------------------------------------- torchvision shim if needed
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! TV_ERR="$("$VPY" -c "import torchvision" 2>&1)"; then
  if [[ "$TV_ERR" == *"torchvision::nms does not exist"* ]]; then
    log "torchvision compiled ops cannot load (CUDA-linked wheel on a CPU torch): installing import shim"
    cat > "$SITE/comfyui_tv_cpu_shim.py" <<'EOF'
# Installed by comfyui-up.sh. When torchvision's compiled extension cannot be loaded
# (e.g. a CUDA-linked wheel next to a CPU-only torch), torchvision still registers fake
# kernels for 'torchvision::nms'/'qnms' at import time, which fails because the ops were
# never defined. This hook defines just those schemas first, so the pure-Python parts of
# torchvision (transforms, models, utils) import; torchvision.ops.* still raise clearly.
import sys
import importlib.abc

_libs = []


class _TorchvisionOpsShim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision._meta_registrations":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            import torch
            import torchvision.extension as ext
            if not ext._has_ops():
                lib = torch.library.Library("torchvision", "FRAGMENT")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _libs.append(lib)
        except Exception:
            pass
        return None


sys.meta_path.insert(0, _TorchvisionOpsShim())
EOF
    echo "import comfyui_tv_cpu_shim" > "$SITE/comfyui_tv_cpu_shim.pth"
    "$VPY" -c "import torchvision" || die "torchvision still fails to import"
  else
    log "WARNING: 'import torchvision' fails in $VENV; ComfyUI core will not start:"
    printf '%s\n' "$TV_ERR" | tail -n 3 >&2
  fi
fi

if [ "$INSTALL_ONLY" = 1 ]; then
  echo "VENV=$VENV"
  exit 0
fi

# ---------------------------------------------------------------- base dir + pack link
mkdir -p "$BASE"/{custom_nodes,models,input,output,temp,user/default}
BASE="$(cd "$BASE" && pwd)"
if [ -n "$PACK_DIR" ]; then
  link="$BASE/custom_nodes/$PACK_NAME"
  if [ -e "$link" ] && [ ! -L "$link" ]; then die "$link exists and is not a symlink"; fi
  ln -sfn "$PACK_DIR" "$link"
  log "linked $link -> $PACK_DIR"
fi
SETTINGS="$BASE/user/default/comfy.settings.json"
if [ "$SEED_SETTINGS" = 1 ] && [ ! -f "$SETTINGS" ]; then
  # Skip the first-run template browser and the online release check in the UI.
  printf '{\n  "Comfy.TutorialCompleted": true,\n  "Comfy.Notification.ShowVersionUpdates": false\n}\n' > "$SETTINGS"
fi

# ---------------------------------------------------------------- start
PIDFILE="$BASE/comfyui.pid"
LOGFILE="$BASE/comfyui.log"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  die "a server started from $BASE is still running (PID $(cat "$PIDFILE")); run comfyui-down.sh --base-dir $BASE"
fi
URL="http://$HOST:$PORT"
T0=$(date +%s.%N)
(
  cd "$COMFY_DIR"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
  # New session (detached from the caller's terminal/process group) without changing the
  # PID: the python process replaces this subshell, so $! below is the server's PID.
  exec "$VPY" -c 'import os, sys
try:
    os.setsid()
except OSError:
    pass
os.execv(sys.argv[1], sys.argv[1:])' "$VPY" main.py --cpu --listen "$HOST" --port "$PORT" \
    --base-directory "$BASE" --database-url "sqlite:///$BASE/user/comfyui.db" \
    --disable-auto-launch "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}" >"$LOGFILE" 2>&1 </dev/null
) &
PID=$!
echo "$PID" > "$PIDFILE"

ok=0
deadline=$(( $(date +%s) + TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if ! kill -0 "$PID" 2>/dev/null; then break; fi
  if "$VPY" -c "import urllib.request,sys; urllib.request.urlopen('$URL/system_stats', timeout=2).read()" 2>/dev/null; then ok=1; break; fi
  sleep 0.5
done
T1=$(date +%s.%N)
if [ "$ok" != 1 ]; then
  log "server did not come up (see $LOGFILE); last lines:"
  tail -n 40 "$LOGFILE" >&2 || true
  if kill -0 "$PID" 2>/dev/null; then kill "$PID" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
  exit 1
fi

STARTUP=$("$VPY" -c "print(f'{$T1-$T0:.1f}')")
VERS=$("$VPY" - "$URL" <<'EOF'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1] + "/system_stats"))["system"]
print("comfyui %s, frontend %s, templates %s, torch %s" % (s.get("comfyui_version"), s.get("required_frontend_version"), s.get("installed_templates_version"), s.get("pytorch_version")))
EOF
)
echo "PID=$PID"
echo "URL=$URL"
echo "BASE=$BASE"
echo "LOG=$LOGFILE"
echo "VENV=$VENV"
echo "STARTUP_SECONDS=$STARTUP"
echo "VERSIONS=$VERS"
# Custom-node import report (ComfyUI logs '(IMPORT FAILED)' per failing pack).
if grep -q "IMPORT FAILED" "$LOGFILE"; then
  grep "IMPORT FAILED" "$LOGFILE" | sed -E 's/^.*IMPORT FAILED\)?: */IMPORT_FAILED=/'
fi
if [ -n "$PACK_DIR" ]; then
  if grep -E "\(IMPORT FAILED\): .*custom_nodes/$PACK_NAME\$" "$LOGFILE" >/dev/null; then
    echo "PACK_IMPORT=FAILED ($PACK_NAME; traceback in $LOGFILE)"
    echo "comfyui-up: the server is left running (PID $PID); stop it with comfyui-down.sh --base-dir $BASE" >&2
    exit 2
  elif grep -E "seconds: .*custom_nodes/$PACK_NAME\$" "$LOGFILE" >/dev/null; then
    echo "PACK_IMPORT=OK ($PACK_NAME)"
  else
    echo "PACK_IMPORT=UNKNOWN ($PACK_NAME not listed in import times; see $LOGFILE)"
  fi
fi
