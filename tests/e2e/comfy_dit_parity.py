"""Run inside ComfyUI's own Python (not pytest): our DiT vs ComfyUI's WanModel on one checkpoint.

Usage: python comfy_dit_parity.py COMFYUI_DIR WAN_CORE_PARENT PACK_DIR CHECKPOINT

WAN_CORE_PARENT is a folder holding a copy of wan_core (so the pack root, whose `nodes/` would
shadow ComfyUI's `nodes` module, is not on sys.path). Prints one line `RESULT {json}` with:
  detected:   ComfyUI's detect_unet_config for the file, ours: our WanConfig fields
  diff_t500, diff_t0: max |ComfyUI - ours| in fp32 at timestep 500 and 0
  out_absmax: max |output| (scale of the figures above)
  patcher:    ModelHandle.load() through ComfyUI's ModelPatcher / load_models_gpu, and the max abs
              change of our output afterwards
"""
import importlib.util
import json
import sys

comfy_dir, wan_core_parent, pack_dir, checkpoint = sys.argv[1:5]
sys.path.insert(0, comfy_dir)
sys.path.insert(1, wan_core_parent)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before comfy.model_management is imported (else it probes CUDA)

import comfy.model_detection  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.utils  # noqa: E402
import torch  # noqa: E402
from comfy.ldm.wan.model import WanModel  # noqa: E402

import wan_core  # noqa: E402

assert wan_core.__file__.startswith(wan_core_parent), wan_core.__file__
torch.manual_seed(0)
result = {}

# ---- both models from the same file, fp32
ours = wan_core.load_dit(checkpoint, dtype=torch.float32)
cfg = ours.config
result["ours"] = {k: getattr(cfg, k) for k in ("variant", "model_type", "dim", "num_heads", "num_layers",
                                                "ffn_dim", "in_dim", "out_dim", "text_dim", "freq_dim")}

sd = comfy.utils.load_torch_file(checkpoint)
unet_config = comfy.model_detection.detect_unet_config(sd, "")
result["detected"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet_config.items()}
kwargs = {k: v for k, v in unet_config.items() if k != "image_model"}
theirs = WanModel(**kwargs, text_dim=cfg.text_dim, text_len=cfg.text_len, device="cpu", dtype=torch.float32,
                  operations=comfy.ops.disable_weight_init)
theirs.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
theirs.eval()

gen = torch.Generator().manual_seed(1)
x = torch.randn(1, 16, 3, 8, 12, generator=gen)
context = torch.randn(1, 20, 4096, generator=gen)
# ComfyUI's WanModel does not pad the text itself: its UMT5 tokenizer pads every prompt to 512
# tokens (min_length=512) and the encoder zeroes the masked positions (zero_out_masked), so the
# model receives [B, 512, 4096] with zero rows. Ours pads with zeros inside forward.
context_512 = torch.nn.functional.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))


def run_ours(t):
    with torch.no_grad():
        return ours(x, torch.tensor([t]), context)


def run_theirs(t):
    with torch.no_grad():
        return theirs(x, torch.tensor([t]), context_512).float()


out500 = run_ours(500.0)
for t in (500.0, 0.0):
    a, b = run_theirs(t), (out500 if t == 500.0 else run_ours(t))
    assert a.shape == b.shape == x.shape, (a.shape, b.shape)
    result[f"diff_t{int(t)}"] = (a - b).abs().max().item()
result["out_absmax"] = out500.abs().max().item()
# a control: the comparison is sensitive (a small weight change is far above the tolerance)
with torch.no_grad():
    theirs.blocks[0].ffn[2].weight.add_(1e-3)
result["diff_perturbed"] = (run_theirs(500.0) - out500).abs().max().item()

# ---- the pack's ModelHandle with ComfyUI's memory manager
# the pack imported as ComfyUI imports it: a package by folder path (its modules import relatively)
spec = importlib.util.spec_from_file_location("wanflow_pack", f"{pack_dir}/__init__.py",
                                              submodule_search_locations=[pack_dir])
pack = importlib.util.module_from_spec(spec)
sys.modules["wanflow_pack"] = pack
spec.loader.exec_module(pack)
bridge = importlib.import_module("wanflow_pack.nodes.comfy_bridge")
handle = bridge.ModelHandle(ours, name="wan2.1_t2v_1.3B_fp16.safetensors")
import comfy.model_patcher  # noqa: E402

patcher = {"created": isinstance(handle.patcher, comfy.model_patcher.ModelPatcher)}
module = handle.load()
patcher["same_module"] = module is ours
patcher["loaded"] = any(m.model is handle.patcher for m in comfy.model_management.current_loaded_models)
patcher["device"] = str(next(module.parameters()).device)
patcher["diff_after_load"] = (run_ours(500.0) - out500).abs().max().item()
handle.load()  # a second load is a no-op for the memory manager
patcher["diff_after_reload"] = (run_ours(500.0) - out500).abs().max().item()
result["patcher"] = patcher
print("RESULT " + json.dumps(result))
