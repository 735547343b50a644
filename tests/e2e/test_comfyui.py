"""End to end in a real ComfyUI (CPU): the pack imports, its workflows run and load in the browser,
and our DiT matches ComfyUI's own Wan model on the same checkpoint.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/e2e/README.md; scripts/e2e.sh
sets everything up). The harness (comfyui-up.sh, comfyui-down.sh, comfy_e2e.py) is in harness/.
Environment:
  COMFYUI_DIR            ComfyUI source checkout (required, else the module is skipped)
  COMFYUI_VENV           venv for ComfyUI (default: comfyui-up.sh's default); created on first use
  WANFLOW_PACK_NAME      folder name of the pack under custom_nodes/ (default wan-flow)
  WANFLOW_E2E_NO_UI=1    skip the headless-Chromium part
  WANFLOW_E2E_STRICT=1   a skipped test fails (CI; conftest.py)
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

from wan_core.formats.dit import comfyui_state_dict
from wan_core.io.write import save_safetensors  # noqa: E402
from wan_core.models.vae import VAEConfig, WanVAE  # noqa: E402
from wan_core.testing.clip_vision import random_clip_vision, save_comfy_safetensors  # noqa: E402
from wan_core.testing.dit import random_dit  # noqa: E402
from wan_core.testing.text_encoder import random_umt5, save_comfyui_file  # noqa: E402
from wan_core.testing.vae import random_vae, randomize_vae_  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(__file__).resolve().parent / "harness"
PACK_NAME = os.environ.get("WANFLOW_PACK_NAME", "wan-flow")
CKPT_NAME = "wan2.1_t2v_1.3B_fp16.safetensors"
VAE_NAME = "wan_2.1_vae.safetensors"  # tiny widths: what the shipped workflows use
FULL_VAE_NAME = "wan_2.1_vae_released_widths.safetensors"  # random weights, widths ComfyUI can build
UMT5_NAME = "umt5_xxl_fp16.safetensors"
GEN_UMT5_NAME = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"  # tiny, 4096 wide (what the DiTs take)
VAE22_NAME = "wan2.2_vae.safetensors"
GEN_DITS = {  # file name -> (kind, seed, fp8 scaled)
    "wan2.1_i2v_480p_14B_fp16.safetensors": ("i2v", 11, False),
    "wan2.2_ti2v_5B_fp16.safetensors": ("ti2v", 12, False),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": ("t2v", 13, True),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": ("t2v", 14, True),
}
E2E_LORA = "wanflow/my_wan21_1.3b_lora.safetensors"  # what wanflow_t2v_wan21_1.3b_lora loads
HPS_NAME = "HPS_v2.1_compressed.pt"  # what wanflow_srpo_wan22_a14b_low_noise loads from models/reward_models
CLIP_VOCAB = 49408  # the real CLIP BPE's size: the tiny reward then reads ComfyUI's own comfy/sd1_tokenizer
# small sizes for queuing the shipped generation workflows on CPU
FAST = {"width": 64, "height": 64, "frames": 5, "steps": 3, "train_steps": 3}
# SRPO at the smallest size the tiny VAEs allow (8x spatial, patch 2: 32 px = 2x2 tokens)
FAST_SRPO = {"steps": 2, "width": 32, "height": 32, "rollout_steps": 2, "eval_every": 1}
SCREEN_HEIGHT = 900  # px at zoom 1 (the frontend's default): a trainer node must fit a laptop screen
TRAINERS = ("WanFlowLoRATraining", "WanFlowFullTraining")  # flow-matching trainer nodes of the shipped workflows
SHRUNK_NODES = ("WanFlowSampler", "WanFlowSRPOTraining")  # workflows that only run on CPU once shrunk
# the VAE round trip's EmptyImage (832x480, 17 frames: minutes per run on a 2-core CPU) at a CPU size that
# still crosses the causal VAE's 4-frame chunks twice; sizes stay multiples of 16 (both VAEs)
FAST_ROUND_TRIP = {"width": 128, "height": 96, "batch_size": 9}
CLIP_NAME = "clip_vision_h.safetensors"
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


def PIL_Image():
    from PIL import Image
    return Image


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
    models = base / "models"
    save_safetensors(random_vae("2.1", seed=7).state_dict(), models / "vae" / VAE_NAME)
    full = randomize_vae_(WanVAE(VAEConfig.released("2.1")), seed=8)
    save_safetensors({k: v.to(torch.bfloat16) for k, v in full.state_dict().items()}, models / "vae" / FULL_VAE_NAME)
    save_comfyui_file(random_umt5(seed=3), models / "text_encoders" / UMT5_NAME)
    # the generation workflows' files: tiny models whose widths fit together (text 4096, CLIP 1280)
    save_comfy_safetensors(random_clip_vision(seed=4, hidden_size=1280), models / "clip_vision" / CLIP_NAME,
                           dtype=torch.float32)
    save_comfyui_file(random_umt5(seed=5, d_model=4096), models / "text_encoders" / GEN_UMT5_NAME)
    save_safetensors(random_vae("2.2", seed=9).state_dict(), models / "vae" / VAE22_NAME)
    for name, (kind, seed, fp8) in GEN_DITS.items():
        dit = random_dit(kind, seed=seed, dim=256, num_heads=2, ffn_dim=256, text_dim=4096)
        sd = comfyui_state_dict(dit.state_dict(), fp8="scaled") if fp8 else comfyui_state_dict(dit.state_dict(), dtype=torch.float16)
        save_safetensors(sd, models / "diffusion_models" / name)
    example = (torch.linspace(0, 1, 96)[None, :, None] * torch.linspace(1, 0.2, 64)[:, None, None]).expand(64, 96, 3)
    (base / "input").mkdir(parents=True, exist_ok=True)
    PIL_Image().fromarray((example * torch.tensor([1.0, 0.6, 0.3]) * 255).byte().numpy()).save(base / "input" / "example.png")
    write_training_clips(base / "input" / "wanflow_dataset")
    # a LoRA for the tiny 1.3B (random non-zero up weights), under the name the LoRA workflow loads
    from wan_core.lora.adapters import add_lora, save_lora
    net = add_lora(model, rank=4, alpha=2.0, targets="attention+ffn", seed=1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "up" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.05)
    save_lora(models / "loras" / E2E_LORA, net, metadata={"wanflow.variant": model.config.variant})
    net.remove()
    write_tiny_hps(models / "reward_models" / HPS_NAME)
    return base, path


def write_tiny_hps(path: Path) -> None:
    """A tiny random CLIP in HPS v2.1's file layout (open_clip keys under 'module.', a {"state_dict"}
    .pt) with the real CLIP vocabulary size and no tokenizer beside it: the loader's auto tokenizer
    falls back to ComfyUI's bundled comfy/sd1_tokenizer, as it does for the real file."""
    from transformers import CLIPModel

    from wan_core.testing.dit import randomize_
    from wan_core.testing.reward import TINY_LOGIT_SCALE, save_open_clip_checkpoint, tiny_clip_config

    model = randomize_(CLIPModel(tiny_clip_config(vocab_size=CLIP_VOCAB)), 21, 0.05)
    with torch.no_grad():
        model.logit_scale.fill_(TINY_LOGIT_SCALE)
    save_open_clip_checkpoint(model, path, module_prefix=True)


def write_training_clips(folder: Path) -> None:
    """Two small captioned mp4 clips (a moving bright square) for the LoRA training workflow."""
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i, (dx, caption) in enumerate([(2, "a square moving right"), (-2, "a square moving left")]):
        with av.open(str(folder / f"clip{i}.mp4"), "w") as out:
            stream = out.add_stream("libx264", rate=16)
            stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
            for t in range(12):
                frame = np.full((48, 48, 3), 40, np.uint8)
                x = 16 + dx * t
                frame[16:32, max(x, 0):max(x + 16, 0)] = (230, 200, 60)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        (folder / f"clip{i}.txt").write_text(caption)


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
    for node, widget, name in [("WanFlowLoadVAE", "vae_name", VAE_NAME), ("WanFlowLoadTextEncoder", "text_encoder_name", UMT5_NAME),
                               ("WanFlowLoadCLIPVision", "clip_name", CLIP_NAME)]:
        assert name in listed[node]["input"]["required"][widget][0], (node, listed[node]["input"]["required"][widget])
    assert listed["WanFlowModelInfo"]["output_node"] is True
    # models/reward_models is the pack's own category, registered with ComfyUI's folder_paths
    rewards = listed["WanFlowLoadRewardModel"]["input"]["required"]["reward"][0]
    assert HPS_NAME in rewards and "colour (demo, no file)" in rewards, rewards


def test_templates_list_only_ui_workflows(server):
    """The Templates dialog lists workflows/*.json of the pack (not the API twins in workflows/api/)."""
    proc = e2e(server, "templates", "--pack", PACK_NAME)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with urllib.request.urlopen(server["url"] + "/api/workflow_templates", timeout=30) as r:
        served = json.load(r)
    assert sorted(served.get(PACK_NAME, [])) == sorted(p.stem for p in UI_FILES), served


def fast_generation_prompt(prompt: dict) -> dict:
    """The shipped generation graph at CPU-friendly sizes, plus a SaveImage on every decode (exact
    8-bit frames to compare; the videos are lossy)."""
    fast = json.loads(json.dumps(prompt))
    for nid, node in list(fast.items()):
        if node["class_type"] in ("WanFlowEmptyLatent", "WanFlowImageToVideo"):
            node["inputs"].update(width=FAST["width"], height=FAST["height"], frames=FAST["frames"])
        if node["class_type"] == "WanFlowSampler":
            node["inputs"]["steps"] = FAST["steps"]
        if node["class_type"] == "WanFlowVideoDataset":
            node["inputs"]["buckets"] = "32x32x5"
        if node["class_type"] in TRAINERS:
            node["inputs"].update(steps=FAST["train_steps"])
        if node["class_type"] == "WanFlowTrainingSettings":
            node["inputs"].update(validation_steps=2, validate_every=0)
        if node["class_type"] == "WanFlowDemoDataset":
            node["inputs"]["clips_per_combo"] = 1
        if node["class_type"] == "WanFlowSRPOTraining":
            node["inputs"].update({k: FAST_SRPO[k] for k in ("steps", "width", "height")})
        if node["class_type"] == "WanFlowSRPOSettings":
            node["inputs"].update({k: FAST_SRPO[k] for k in ("rollout_steps", "eval_every")})
        if node["class_type"] == "WanFlowVAEDecode":
            fast[f"frames{nid}"] = {"class_type": "SaveImage",
                                    "inputs": {"images": [nid, 0], "filename_prefix": f"wanflow_e2e/frames{nid}"}}
    return fast


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_runs(server, path, tmp_path):
    prompt = json.loads(path.read_text())
    shrunk = any(n["class_type"] in SHRUNK_NODES for n in prompt.values())
    if shrunk:
        prompt = fast_generation_prompt(prompt)
    round_trip = [nid for nid, n in prompt.items() if n["class_type"] == "EmptyImage"]
    for nid in round_trip:
        prompt[nid]["inputs"].update(FAST_ROUND_TRIP)
    if shrunk or round_trip:
        path = tmp_path / path.name
        path.write_text(json.dumps(prompt))
    info_nodes = [nid for nid, n in prompt.items() if n["class_type"] == "WanFlowModelInfo"]
    save_nodes = [nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"]
    video_nodes = [nid for nid, n in prompt.items() if n["class_type"] in ("WanFlowSaveVideo", "SaveVideo")]
    srpo_nodes = [nid for nid, n in prompt.items() if n["class_type"] == "WanFlowSRPOTraining"]
    preview_nodes = [nid for nid, n in prompt.items() if n["class_type"] == "PreviewImage"]
    report, downloads = tmp_path / "report.json", tmp_path / "downloads"
    args = ["run", path, "--timeout", "600", "--report", report, "--download", downloads]
    for nid in info_nodes + save_nodes + video_nodes + srpo_nodes + preview_nodes:
        args += ["--expect-output", nid]
    proc = e2e(server, *args, timeout=900)
    assert proc.returncode == 0, proc.stdout
    rep = json.loads(report.read_text())
    assert rep["status"] == "success" and not rep["node_errors"]
    print(f"{path.name}: queued and finished in {rep['total_seconds']:.2f}s")
    for nid in info_nodes:
        text = rep["outputs"][nid]["text"][0]
        assert "model_type: t2v" in text and "dim: 256, heads: 2, layers: 2, ffn: 256" in text, text
        assert "variant: wan2.1-t2v" in text and "text_dim: 4096" in text, text
        assert "weights stored as: float16; compute dtype: float16" in text, text
    if srpo_nodes:
        check_srpo_outputs(prompt, rep["outputs"], Path(server["base"]), downloads)
    if shrunk:
        check_training_outputs(prompt, rep["outputs"], Path(server["base"]))
        check_generation_outputs(prompt, rep["outputs"], save_nodes, video_nodes, Path(server["base"]))
        return
    for nid in save_nodes:
        check_saved_frames(prompt, nid, rep["outputs"][nid]["images"], downloads, Path(server["base"]))


def check_training_outputs(prompt, outputs, base: Path) -> None:
    """Trainer nodes wrote their file where ComfyUI lists it, with the step count, and reported it."""
    from safetensors import safe_open

    for nid, node in prompt.items():
        kind = node["class_type"]
        if kind not in TRAINERS:
            continue
        folder = "loras" if kind == "WanFlowLoRATraining" else "diffusion_models"
        path = base / "models" / folder / (node["inputs"]["output_name"] + ".safetensors")
        assert outputs[nid]["text"][0] == str(path.resolve()), outputs[nid]
        with safe_open(path, "pt") as f:
            meta, keys = f.metadata(), list(f.keys())
        assert meta["wanflow.steps"] == str(FAST["train_steps"]), meta
        if kind == "WanFlowLoRATraining":
            assert keys and all(k.startswith("diffusion_model.blocks.") for k in keys), keys[:3]
            assert any(k.endswith(".lora_down.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
        else:
            assert "head.head.weight" in keys and "blocks.0.self_attn.q.weight" in keys
        state = base / "output" / "wanflow_training" / node["inputs"]["output_name"] / "train_state.pt"
        assert state.is_file(), f"no resumable state at {state}"
        print(f"  {kind} {nid}: wrote {path.relative_to(base)} ({len(keys)} tensors) and its resumable state")


def check_srpo_outputs(prompt, outputs, base: Path, downloads: Path) -> None:
    """SRPO nodes wrote their LoRA (or full model) where ComfyUI lists it, with its SRPO summary and a
    resumable state, and their reward curve and held-out images reached the previews."""
    import numpy as np
    from safetensors import safe_open

    for nid, node in prompt.items():
        if node["class_type"] != "WanFlowSRPOTraining":
            continue
        inputs = node["inputs"]
        lora = inputs.get("mode", "lora") == "lora"
        path = base / "models" / ("loras" if lora else "diffusion_models") / (inputs["output_name"] + ".safetensors")
        text = outputs[nid]["text"][0]
        assert text.startswith(str(path.resolve()) + "\n") and "held-out reward" in text, text
        with safe_open(path, "pt") as f:
            meta, keys = f.metadata(), list(f.keys())
        # both evaluations (eval_every 1) ran unless a drift monitor stopped the run, which it then says
        stopped = "stopped early" in meta["wanflow.srpo.summary"]
        assert meta["wanflow.steps"] == str(FAST_SRPO["steps"]) or stopped, meta
        assert meta["wanflow.srpo.summary"] in text, (meta, text)
        if lora:
            assert keys and all(k.startswith("diffusion_model.blocks.") for k in keys), keys[:3]
            assert any(k.endswith(".lora_down.weight") for k in keys)
            assert any(k.endswith(".lora_up.weight") for k in keys)
            assert any(k.endswith(".alpha") for k in keys) and meta["wanflow.rank"] == str(inputs["lora_rank"]), meta
        else:
            assert "head.head.weight" in keys and "blocks.0.self_attn.q.weight" in keys, keys[:3]
        state = base / "output" / "wanflow_training" / (inputs["output_name"] + "_srpo") / "srpo_state.pt"
        assert state.is_file(), f"no resumable state at {state}"
        n_heldout = len([line for line in inputs["heldout_prompts"].splitlines() if line.strip()])
        previews = {prompt[pid]["inputs"]["images"][1]: pid for pid, p in prompt.items()
                    if p["class_type"] == "PreviewImage" and p["inputs"]["images"][0] == nid}
        assert set(previews) == {2, 3}, f"the workflow previews reward_curve and heldout_images: {previews}"
        expected = {2: (1, (480, 640, 3)), 3: (n_heldout, (inputs["height"], inputs["width"], 3))}
        for slot, (count, shape) in expected.items():
            pid = previews[slot]
            images = outputs[pid]["images"]
            assert len(images) == count, (slot, images)
            arrays = [np.asarray(PIL_Image().open(downloads / f"{pid}_{e['filename']}").convert("RGB")) for e in images]
            assert all(a.shape == shape for a in arrays), [a.shape for a in arrays]
            assert all(a.std() > 1.0 for a in arrays), "blank preview"
        print(f"  WanFlowSRPOTraining {nid}: wrote {path.relative_to(base)} ({len(keys)} tensors), its state, a reward "
              f"curve and {n_heldout} held-out image(s)\n    " + meta["wanflow.srpo.summary"].replace("\n", "\n    "))


def output_files(base: Path, entries) -> list[Path]:
    return [base / "output" / e.get("subfolder", "") / e["filename"] for e in entries]


def read_video(path: Path) -> torch.Tensor:
    import imageio.v3 as iio
    return torch.from_numpy(iio.imread(path, plugin="pyav")).float() / 255


def check_generation_outputs(prompt, outputs, save_nodes, video_nodes, base):
    """Frames saved by ComfyUI equal the same graph run by our nodes here (outside ComfyUI, same
    model files); the videos hold those frames (lossy codecs: small mean error)."""
    import numpy as np

    expected = run_pack_graph(prompt, base)
    for nid in save_nodes:
        decode_id = prompt[nid]["inputs"]["images"][0]
        files = sorted(output_files(base, outputs[nid]["images"]))
        saved = torch.stack([torch.from_numpy(np.array(PIL_Image().open(f).convert("RGB"))) for f in files]).float() / 255
        want = expected[decode_id]
        # frames of every clip of the batch one after another (the demo samples 4 clips)
        assert saved.shape == want.shape and want.shape[0] % FAST["frames"] == 0, (saved.shape, want.shape)
        assert want.shape[1:] == (FAST["height"], FAST["width"], 3), want.shape
        diff = (saved - want).abs()
        print(f"  frames of decode {decode_id}: ComfyUI vs pack-here mean |diff| {diff.mean() * 255:.3f}/255, "
              f"max {diff.max() * 255:.1f}/255; frame std {want.std():.3f}")
        assert want.std() > 0.02, "degenerate frames would make the comparison meaningless"
        assert diff.mean() < 1 / 255 and diff.max() < 12 / 255
        for vid in video_nodes:
            source = prompt[vid]["inputs"].get("images") or prompt[prompt[vid]["inputs"]["video"][0]]["inputs"]["images"]
            if source[0] != decode_id:
                continue
            (video_file,) = output_files(base, outputs[vid]["images"])
            frames = read_video(video_file)
            assert frames.shape == want.shape, (frames.shape, want.shape)
            # tiny random models draw pixel noise, which H.264/VP9 at yuv420 cannot keep pixel by pixel
            # (measured 11-48/255 per pixel): compare 4x4 block means (measured 2.9-4.3/255)
            blocks = lambda x: torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 4)  # noqa: E731
            err = (blocks(frames) - blocks(want)).abs().mean().item()
            control = (blocks(frames) - blocks(want.flip(0).roll(8, 1))).abs().mean().item()
            print(f"  {prompt[vid]['class_type']} {video_file.name}: {tuple(frames.shape)}, mean |video - frames| "
                  f"over 4x4 blocks {err * 255:.2f}/255 (control: other frames {control * 255:.1f}/255)")
            assert err < 8 / 255 < control


def run_pack_graph(prompt: dict, base: Path) -> dict:
    """Execute the pack's nodes of an API prompt in this process (models from base/models); LoadImage
    reads base/input like ComfyUI; output nodes are skipped. Returns {node id: first output}."""
    import tempfile

    import numpy as np

    os.environ["WANFLOW_MODELS_DIR"] = str(base / "models")
    os.environ["WANFLOW_INPUT_DIR"] = str(base / "input")
    os.environ["WANFLOW_OUTPUT_DIR"] = tempfile.mkdtemp(prefix="wanflow-e2e-pack-run-")  # fresh: no resume
    nodes = pack_nodes()
    results: dict = {}

    def value(v):
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
            return evaluate(v[0])[v[1]]
        return v

    def evaluate(nid):
        if nid not in results:
            node = prompt[nid]
            kind = node["class_type"]
            if kind == "LoadImage":
                img = np.array(PIL_Image().open(base / "input" / node["inputs"]["image"]).convert("RGB"))
                results[nid] = (torch.from_numpy(img).float()[None] / 255, None)
            else:
                cls = nodes[kind]
                obj = cls()
                out = getattr(obj, cls.FUNCTION)(**{k: value(v) for k, v in node["inputs"].items()})
                results[nid] = out["result"] if isinstance(out, dict) else out  # {"ui": ..., "result": ...}
        return results[nid]

    with torch.inference_mode():
        for nid, node in prompt.items():
            if node["class_type"] == "WanFlowVAEDecode":
                evaluate(nid)
    return {nid: out[0] for nid, out in results.items()}


def check_saved_frames(prompt, save_id, images, downloads, base):
    """The VAE round-trip workflow's PNGs equal wan_core's decode(encode(frames)) on the same VAE file."""
    import numpy as np
    from PIL import Image

    decode = prompt[prompt[save_id]["inputs"]["images"][0]]
    encode = prompt[decode["inputs"]["samples"][0]]
    source = prompt[encode["inputs"]["pixels"][0]]
    assert source["class_type"] == "EmptyImage", "this check knows only EmptyImage-fed round trips"
    w, h, n, color = (source["inputs"][k] for k in ("width", "height", "batch_size", "color"))
    assert len(images) == n, f"{len(images)} images saved, expected {n}"
    rgb = torch.tensor([(color >> 16) & 255, (color >> 8) & 255, color & 255]) / 255
    frames = rgb.view(1, 3, 1, 1, 1).expand(1, 3, n, h, w) * 2 - 1
    vae = wan_core_load_vae(base / "models" / "vae" / prompt[encode["inputs"]["vae"][0]]["inputs"]["vae_name"])
    expected = ((vae.decode(vae.encode(frames, normalized=False), normalized=False) + 1) / 2)[0].permute(1, 2, 3, 0)
    files = sorted(downloads.rglob("*.png"))
    assert len(files) == n, files
    saved = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files]).float() / 255
    diff = (saved - expected).abs().max().item()
    print(f"round trip: {n} PNGs {w}x{h}, max |saved - wan_core| = {diff:.4f} (SaveImage truncates to 8 bits: up to 1/255)")
    assert diff <= 1.5 / 255, diff
    assert expected.std() > 0.01  # the random VAE makes a non-trivial picture, so the check means something


def wan_core_load_vae(path):
    from wan_core import load_vae
    return load_vae(path)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_loads_in_browser(server, path, tmp_path):
    if not server["ui"]:
        pytest.skip("headless UI check skipped: no 'chromium' on PATH (apt-get install chromium) "
                    "or WANFLOW_E2E_NO_UI=1")
    report, exported = tmp_path / "ui.json", tmp_path / "exported_api.json"
    # generation and SRPO workflows run at full size (minutes per step on a CPU even with tiny models):
    # the API test queues their twins at small sizes; here they are loaded and converted only
    queue = not any(kind in path.read_text() for kind in SHRUNK_NODES)
    # queued at the CPU size of the API test (set in the page after the UI->API export)
    sets = [arg for node in json.loads(path.read_text())["nodes"] if node["type"] == "EmptyImage"
            for key, val in FAST_ROUND_TRIP.items() for arg in ("--set", f"{node['id']}.{key}={val}")]
    proc = e2e(server, "ui", path, "--report", report, "--export-api", exported, "--strict-values",
               "--screenshot", tmp_path / "ui.png", "--fit-view", "--viewport", "2000x1250",
               *(["--queue", *sets] if queue else []), "--timeout", "300", timeout=420)
    if proc.returncode == 4:
        pytest.skip("headless UI check skipped: playwright or Chromium unavailable: " + proc.stderr.strip()[-300:])
    rep = json.loads(report.read_text())
    assert rep["missing_node_types"] == [], f"missing node types in the frontend: {rep['missing_node_types']}"
    assert rep["bad_combo_values"] == [], rep["bad_combo_values"]
    assert proc.returncode == 0, proc.stdout
    # queued from the page (Queue button path: the frontend's graphToPrompt, then POST /prompt)
    if queue:
        assert rep.get("queue_http_status") == 200 and rep.get("status") == "success", rep
    # every trainer node fits on one screen at the default zoom (its settings node collapsed)
    for n in rep["nodes"]:
        if n["type"] in TRAINERS + ("WanFlowSRPOTraining",):
            assert n["size"][1] <= SCREEN_HEIGHT, f"{n['type']} is {n['size'][1]:.0f} px tall: {n}"
        if n["type"] in ("WanFlowTrainingSettings", "WanFlowSRPOSettings"):
            assert n["collapsed"], n
    if os.environ.get("WANFLOW_SCREENSHOT_DIR"):  # the README's workflow pictures
        shots = Path(os.environ["WANFLOW_SCREENSHOT_DIR"])
        shots.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "ui.png", shots / f"{path.stem}.png")
    if queue and sets:  # the page queued the graph with the values set there
        saved = [image for out in rep["outputs"].values() for image in out.get("images", [])]
        assert len(saved) == FAST_ROUND_TRIP["batch_size"], saved
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


def test_vae_text_clip_match_comfyui_side(server, checkpoint, tmp_path):
    """ComfyUI's native Wan VAE (comfy.sd.VAE) vs ours on the same released-width file; our UMT5 and
    CLIP-vision encoders under the transformers version ComfyUI installs, vs transformers' models."""
    base, _ = checkpoint
    python = server["python"]
    assert Path(python).exists(), f"ComfyUI venv python not found ({python})"
    shutil.copytree(REPO / "wan_core", tmp_path / "lib" / "wan_core", ignore=shutil.ignore_patterns("__pycache__"))
    models = Path(base) / "models"
    t0 = time.monotonic()
    proc = sh([python, Path(__file__).with_name("comfy_media_parity.py"), Path(COMFYUI_DIR).resolve(), tmp_path / "lib",
               models / "vae" / FULL_VAE_NAME, models / "text_encoders" / UMT5_NAME, models / "clip_vision" / CLIP_NAME],
              timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    print(f"ComfyUI side ({time.monotonic() - t0:.1f}s, transformers {res['transformers']}): VAE decode diff "
          f"{res['vae_decode_diff']:.2e} (|frames| max {res['vae_decode_absmax']:.2f}), encode diff "
          f"{res['vae_encode_diff']:.2e} (|latent| max {res['vae_encode_absmax']:.2f}); UMT5 diff {res['text_diff']:.2e}; "
          f"CLIP diff {res['clip_diff']:.2e}")
    assert res["vae_decode_absmax"] > 0.1 and res["vae_encode_absmax"] > 0.1
    assert res["vae_decode_diff"] <= 1e-4 and res["vae_encode_diff"] <= 1e-4
    assert res["text_diff"] <= 1e-5 and res["clip_diff"] <= 1e-5


# nodes "3"-"5" shared by the interop prompts: text encoder, prompts, a native empty video latent
TEXT_AND_LATENT = {
    "3": {"class_type": "WanFlowLoadTextEncoder", "inputs": {
        "text_encoder_name": GEN_UMT5_NAME, "tokenizer": "auto (embedded in the file or next to it)",
        "device": "default", "weight_dtype": "default"}},
    "4": {"class_type": "WanFlowTextEncode", "inputs": {"text_encoder": ["3", 0], "positive": "a red fox in snow",
                                                         "negative": "", "variant": "wan2.1 t2v (1.3B / 14B)"}},
    "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}},
}


def test_native_interop(server, checkpoint, tmp_path):
    """Native empty latent -> our sampler -> native VAE decode; a native UNETLoader MODEL in our sampler
    equals our loader's model on the same file; our decode equals native decode on the same latent."""
    from safetensors.torch import load_file

    sampler = {"seed": 7, "steps": 3, "solver": "unipc", "shift": 5.0, "cfg": 5.0, "denoise": 1.0,
               "positive": ["4", 0], "negative": ["4", 1], "latent": ["5", 0]}
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": CKPT_NAME, "weight_dtype": "default"}},
        # ComfyUI runs this fp16 file in fp32 on the CPU: the same compute dtype makes the paths comparable
        "2": {"class_type": "WanFlowLoadDiffusionModel", "inputs": {"model_name": CKPT_NAME, "weight_dtype": "default",
                                                                     "compute_dtype": "fp32"}},
        **TEXT_AND_LATENT,
        "6": {"class_type": "WanFlowSampler", "inputs": {**sampler, "model": ["1", 0]}},
        "7": {"class_type": "WanFlowSampler", "inputs": {**sampler, "model": ["2", 0]}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "wanflow_e2e/native_model"}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "wanflow_e2e/pack_model"}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": FULL_VAE_NAME}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["10", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "wanflow_e2e/native_decode"}},
        "13": {"class_type": "WanFlowLoadVAE", "inputs": {"vae_name": FULL_VAE_NAME, "dtype": "auto"}},
        "14": {"class_type": "WanFlowVAEDecode", "inputs": {"samples": ["7", 0], "vae": ["13", 0], "tile_size": 0}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "wanflow_e2e/pack_decode"}},
    }
    path, report = tmp_path / "interop.json", tmp_path / "report.json"
    path.write_text(json.dumps(prompt))
    proc = e2e(server, "run", path, "--timeout", "600", "--report", report, "--expect-output", "12",
               "--expect-output", "15", timeout=900)
    assert proc.returncode == 0, proc.stdout
    rep = json.loads(report.read_text())
    assert rep["status"] == "success"
    out = Path(server["base"]) / "output" / "wanflow_e2e"
    native = load_file(sorted(out.glob("native_model_*.latent"))[-1])["latent_tensor"]
    pack = load_file(sorted(out.glob("pack_model_*.latent"))[-1])["latent_tensor"]
    diff = (native - pack).abs().max().item()
    print(f"native UNETLoader model vs WanFlow loader in WanFlow Sampler: max |latent diff| {diff:.2e} "
          f"(|latent| max {pack.abs().max():.2f})")
    assert pack.shape == (1, 16, 2, 8, 8) and pack.abs().max() > 0.1
    assert diff <= 1e-4
    import numpy as np
    images = {}
    for name in ("native_decode", "pack_decode"):
        files = sorted(out.glob(f"{name}_*.png"))[-FAST["frames"]:]
        images[name] = torch.stack([torch.from_numpy(np.array(PIL_Image().open(f).convert("RGB"))) for f in files]).float()
    d = (images["native_decode"] - images["pack_decode"]).abs()
    print(f"native VAEDecode vs WanFlow VAE Decode on our sampler's latent: max {d.max():.0f}/255, mean {d.mean():.3f}/255")
    assert images["pack_decode"].shape == (FAST["frames"], 64, 64, 3) and d.max() <= 2


def test_lora_interop(server, checkpoint, tmp_path):
    """One LoRA file: native UNETLoader -> LoraLoaderModelOnly gives the same samples in our sampler as
    WanFlow Load Diffusion Model -> WanFlow Load LoRA (and the LoRA does change them)."""
    from safetensors.torch import load_file

    sampler = {"seed": 7, "steps": 3, "solver": "euler", "shift": 5.0, "cfg": 5.0, "denoise": 1.0,
               "positive": ["4", 0], "negative": ["4", 1], "latent": ["5", 0]}
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": CKPT_NAME, "weight_dtype": "default"}},
        "2": {"class_type": "WanFlowLoadDiffusionModel", "inputs": {"model_name": CKPT_NAME, "weight_dtype": "default",
                                                                     "compute_dtype": "fp32"}},
        **TEXT_AND_LATENT,
        "6": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": E2E_LORA, "strength_model": 0.8}},
        "7": {"class_type": "WanFlowLoadLoRA", "inputs": {"model": ["2", 0], "lora_name": E2E_LORA, "strength_model": 0.8}},
        "8": {"class_type": "WanFlowSampler", "inputs": {**sampler, "model": ["6", 0]}},
        "9": {"class_type": "WanFlowSampler", "inputs": {**sampler, "model": ["7", 0]}},
        "10": {"class_type": "WanFlowSampler", "inputs": {**sampler, "model": ["2", 0]}},
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "wanflow_e2e/lora_native"}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "wanflow_e2e/lora_pack"}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "wanflow_e2e/lora_none"}},
    }
    path, report = tmp_path / "lora.json", tmp_path / "report.json"
    path.write_text(json.dumps(prompt))
    proc = e2e(server, "run", path, "--timeout", "600", "--report", report, "--expect-output", "7", timeout=900)
    assert proc.returncode == 0, proc.stdout
    rep = json.loads(report.read_text())
    assert rep["status"] == "success"
    text = rep["outputs"]["7"]["text"][0]
    # 2 blocks x (4 self + 4 cross + 2 ffn) linears, every file key used
    assert "20 module(s) changed at strength 0.8" in text and "not used" not in text, text
    out = Path(server["base"]) / "output" / "wanflow_e2e"
    latents = {name: load_file(sorted(out.glob(f"lora_{name}_*.latent"))[-1])["latent_tensor"]
               for name in ("native", "pack", "none")}
    diff = (latents["native"] - latents["pack"]).abs().max().item()
    effect = (latents["pack"] - latents["none"]).abs().max().item()
    print(f"LoRA via native LoraLoaderModelOnly vs WanFlow Load LoRA: max |latent diff| {diff:.2e}; "
          f"LoRA effect {effect:.3f}\n{text}")
    assert effect > 100 * max(diff, 1e-6)
    assert diff <= 1e-4
