"""End to end in a real ComfyUI (CPU): the pack imports, its workflows run and load in the browser,
and our DiT matches ComfyUI's own Wan model on the same checkpoint.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/e2e/README.md). Environment:
  COMFYUI_DIR            ComfyUI source checkout (required, else the module is skipped)
  COMFYUI_VENV           venv for ComfyUI (default: comfyui-up.sh's default); created on first use
  WANFLOW_SHARED_TOOLS   folder with comfyui-up.sh, comfyui-down.sh, comfy_e2e.py
                         (default <repo>/../shared/tools)
  WANFLOW_PACK_NAME      folder name of the pack under custom_nodes/ (default wan-flow)
  WANFLOW_E2E_NO_UI=1    skip the headless-Chromium part
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
COMFYUI_DIR = str(Path(COMFYUI_DIR).resolve()) if COMFYUI_DIR else ""
if not COMFYUI_DIR:
    pytest.skip("COMFYUI_DIR unset: the real-ComfyUI end-to-end test needs a ComfyUI checkout "
                "(see tests/e2e/README.md)", allow_module_level=True)
if not (Path(COMFYUI_DIR) / "main.py").is_file():
    pytest.fail(f"COMFYUI_DIR={COMFYUI_DIR} is not a ComfyUI checkout (no main.py)", pytrace=False)

import torch  # noqa: E402

from wan_core.dit_export import comfyui_state_dict, save_safetensors  # noqa: E402
from wan_core.tiny import random_dit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("WANFLOW_SHARED_TOOLS", REPO.parent / "shared" / "tools"))
PACK_NAME = os.environ.get("WANFLOW_PACK_NAME", "wan-flow")
CKPT_NAME = "wan2.1_t2v_1.3B_fp16.safetensors"
WORKFLOWS = REPO / "workflows"
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
UI_FILES = sorted(WORKFLOWS.glob("*.json"))

# ComfyUI computes the timestep sinusoid in fp32 (ours and the official code: fp64). At t=500 the
# fp32 arguments t*f (up to 500 rad) are off by up to ~500 * 2^-24 = 3e-5, so cos/sin differ by
# that much; the tiny random model carries it to its O(1) outputs as ~1e-5 (measured 1.0e-5 here).
# RoPE rounding and summation order add ~1e-6..1e-5 (t=0 has exact sinusoid arguments; measured
# 6.9e-6). The tolerances keep ~10x headroom for other BLAS builds. A real mismatch (wrong norm,
# RoPE split, head order, missing text padding) gives >= 1e-2, and the control below (+1e-3 on one
# weight of ComfyUI's copy, measured 4.5e-2) must land above the tolerance.
TOL_T500 = 2e-4
TOL_T0 = 1e-4


def pack_nodes():
    sys.path.insert(0, str(REPO / "tests"))
    from test_nodes import import_pack
    return import_pack().NODE_CLASS_MAPPINGS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, timeout=900, quiet=False, **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if not quiet or proc.returncode:
        print(proc.stdout[-4000:] + proc.stderr[-4000:], flush=True)
    return proc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Tiny random Wan2.1 T2V DiT (dims ComfyUI can build: text_dim 4096, head_dim 128), fp16 file."""
    base = tmp_path_factory.mktemp("comfyui-base")
    model = random_dit("t2v", dim=256, num_heads=2, ffn_dim=256, text_dim=4096)
    path = save_safetensors(comfyui_state_dict(model.state_dict(), dtype=torch.float16),
                            base / "models" / "diffusion_models" / CKPT_NAME)
    return base, path


@pytest.fixture(scope="module")
def server(checkpoint):
    base, _ = checkpoint
    port = free_port()
    ui = os.environ.get("WANFLOW_E2E_NO_UI") != "1" and shutil.which("chromium") is not None
    cmd = ["bash", TOOLS / "comfyui-up.sh", "--port", port, "--base-dir", base, "--pack-name", PACK_NAME]
    if ui:
        cmd.append("--playwright")
    if os.environ.get("COMFYUI_VENV"):
        cmd += ["--venv", os.environ["COMFYUI_VENV"]]
    t0 = time.monotonic()
    try:
        proc = sh(cmd + [COMFYUI_DIR, REPO], timeout=1800)
        info = dict(re.findall(r"^([A-Z_]+)=(.*)$", proc.stdout, re.M))
        # one IMPORT_FAILED line per failed module (core extras without torchaudio fail here too)
        info["IMPORT_FAILED"] = re.findall(r"^IMPORT_FAILED=(.*)$", proc.stdout, re.M)
        info.update(returncode=proc.returncode, url=f"http://127.0.0.1:{port}", base=str(base), ui=ui,
                    python=str(Path(info.get("VENV", "")) / "bin" / "python"), up_seconds=time.monotonic() - t0)
        yield info
    finally:
        sh(["bash", TOOLS / "comfyui-down.sh", "--base-dir", base], timeout=60)


def e2e(server, *args, timeout=600, quiet=False):
    python = server["python"] if Path(server["python"]).exists() else sys.executable
    return sh([python, TOOLS / "comfy_e2e.py", "--url", server["url"], *args], timeout=timeout, quiet=quiet)


def test_server_up_and_pack_imported(server):
    assert server["returncode"] == 0 and "URL" in server, f"comfyui-up.sh failed (log: {server.get('LOG')})"
    assert server.get("PACK_IMPORT", "").startswith("OK"), f"PACK_IMPORT={server.get('PACK_IMPORT')} (see {server['LOG']})"
    failed = [m for m in server["IMPORT_FAILED"] if PACK_NAME in m]
    assert failed == [], f"the pack failed to import: {failed} (see {server['LOG']})"
    print(f"server up in {server['up_seconds']:.1f}s (start {server.get('STARTUP_SECONDS')}s); {server.get('VERSIONS')}")


def test_every_node_registered(server):
    names = sorted(pack_nodes())
    proc = e2e(server, "nodes", "--module", f"custom_nodes.{PACK_NAME}", "--require", ",".join(names))
    assert proc.returncode == 0, proc.stdout
    listed = json.loads(e2e(server, "nodes", "--module", f"custom_nodes.{PACK_NAME}", "--json", quiet=True).stdout)
    assert sorted(listed) == names
    for name in names:
        assert listed[name]["python_module"] == f"custom_nodes.{PACK_NAME}", listed[name]["python_module"]
    # the loader's dropdown is filled by ComfyUI's folder_paths
    options = listed["WanFlowLoadDiffusionModel"]["input"]["required"]["model_name"][0]
    assert CKPT_NAME in options, options
    assert listed["WanFlowModelInfo"]["output_node"] is True


def test_templates_list_only_ui_workflows(server):
    """The Templates dialog lists workflows/*.json of the pack (not the API twins in workflows/api/)."""
    proc = e2e(server, "templates", "--pack", PACK_NAME)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with urllib.request.urlopen(server["url"] + "/api/workflow_templates", timeout=30) as r:
        served = json.load(r)
    assert sorted(served.get(PACK_NAME, [])) == sorted(p.stem for p in UI_FILES), served


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_runs(server, path, tmp_path):
    prompt = json.loads(path.read_text())
    info_nodes = [nid for nid, n in prompt.items() if n["class_type"] == "WanFlowModelInfo"]
    report = tmp_path / "report.json"
    args = ["run", path, "--timeout", "300", "--report", report]
    for nid in info_nodes:
        args += ["--expect-output", nid]
    proc = e2e(server, *args)
    assert proc.returncode == 0, proc.stdout
    rep = json.loads(report.read_text())
    assert rep["status"] == "success" and not rep["node_errors"]
    print(f"{path.name}: queued and finished in {rep['total_seconds']:.2f}s")
    for nid in info_nodes:
        text = rep["outputs"][nid]["text"][0]
        assert "model_type: t2v" in text and "dim: 256, heads: 2, layers: 2, ffn: 256" in text, text
        assert "variant: wan2.1-t2v" in text and "text_dim: 4096" in text, text
        assert "weights stored as: float16; compute dtype: float16" in text, text


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_loads_in_browser(server, path, tmp_path):
    if not server["ui"]:
        pytest.skip("headless UI check skipped: no 'chromium' on PATH (apt-get install chromium) "
                    "or WANFLOW_E2E_NO_UI=1")
    report, exported = tmp_path / "ui.json", tmp_path / "exported_api.json"
    proc = e2e(server, "ui", path, "--report", report, "--export-api", exported, "--strict-values",
               "--screenshot", tmp_path / "ui.png", "--queue", "--timeout", "300", timeout=420)
    if proc.returncode == 4:
        pytest.skip("headless UI check skipped: playwright or Chromium unavailable: " + proc.stderr.strip()[-300:])
    rep = json.loads(report.read_text())
    assert rep["missing_node_types"] == [], f"missing node types in the frontend: {rep['missing_node_types']}"
    assert rep["bad_combo_values"] == [], rep["bad_combo_values"]
    assert proc.returncode == 0, proc.stdout
    # queued from the page (Queue button path: the frontend's graphToPrompt, then POST /prompt)
    assert rep.get("queue_http_status") == 200 and rep.get("status") == "success", rep
    # the frontend's own UI->API conversion equals the shipped API twin
    twin = WORKFLOWS / "api" / path.name
    if twin.exists():
        strip = lambda g: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in g.items()}  # noqa: E731
        assert strip(json.loads(exported.read_text())) == strip(json.loads(twin.read_text()))


def test_dit_matches_comfyui_wan_model(server, checkpoint, tmp_path):
    """ComfyUI's own comfy.ldm.wan.model.WanModel vs wan_core on the same file, and the pack's
    ModelHandle.load() through ComfyUI's ModelPatcher, in ComfyUI's Python."""
    _, ckpt = checkpoint
    python = server["python"]
    assert Path(python).exists(), f"ComfyUI venv python not found ({python})"
    # wan_core alone on sys.path: the pack root would shadow ComfyUI's own `nodes` module
    shutil.copytree(REPO / "wan_core", tmp_path / "lib" / "wan_core", ignore=shutil.ignore_patterns("__pycache__"))
    t0 = time.monotonic()
    proc = sh([python, Path(__file__).with_name("comfy_dit_parity.py"), Path(COMFYUI_DIR).resolve(),
               tmp_path / "lib", REPO, ckpt], timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    print(f"ComfyUI WanModel vs wan_core (fp32): max abs diff {res['diff_t500']:.3e} at t=500, "
          f"{res['diff_t0']:.3e} at t=0 (|out| max {res['out_absmax']:.2f}; control +1e-3 weight -> "
          f"{res['diff_perturbed']:.3e}); {time.monotonic() - t0:.1f}s")
    det, ours = res["detected"], res["ours"]
    assert det["image_model"] == "wan2.1" and det["model_type"] == ours["model_type"] == "t2v"
    for key in ("dim", "num_heads", "num_layers", "ffn_dim", "in_dim", "out_dim", "freq_dim"):
        assert det[key] == ours[key], (key, det[key], ours[key])
    assert res["diff_t500"] <= TOL_T500
    assert res["diff_t0"] <= TOL_T0
    assert res["diff_perturbed"] > TOL_T500, "the comparison is not sensitive enough to catch a real error"
    assert res["out_absmax"] > 0.1, "degenerate outputs would make the comparison meaningless"
    p = res["patcher"]
    assert p["created"] and p["same_module"] and p["loaded"], p
    assert p["device"] == "cpu"
    assert p["diff_after_load"] <= 1e-6 and p["diff_after_reload"] <= 1e-6, p
