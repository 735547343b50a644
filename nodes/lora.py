"""LoRA loader node: a LoRA file from the `loras` folder onto a WanFlow model or a native MODEL.

The input model is never changed (ComfyUI caches node outputs, so the model without the LoRA may be
used elsewhere in the graph):
  * a WanFlow handle -> a new handle on the same module carrying the LoRA; its weights are merged
    when a sampler loads that handle, and restored when a handle without it loads the module;
  * a native MODEL (ComfyUI ModelPatcher) -> the LoRA in ComfyUI's native keys, applied by ComfyUI's
    own `comfy.sd.load_lora_for_models` on a clone of the patcher.
"""
from __future__ import annotations

import torch

from ..wan_core.lora.keys import parse_lora, to_comfy_state_dict
from ..wan_core.lora.merge import LoraReport, check_lora, check_strength
from ..wan_core.models.dit import WanDiT
from .comfy_bridge import ModelHandle, _comfy, list_model_files, model_file_path
from .models import MODEL_TYPES, dit_config


class WanFlowLoadLoRA:
    """Apply a Wan LoRA to a diffusion model (WanFlow or native), without changing the input model."""

    DESCRIPTION = (
        "Applies a Wan 2.1 / 2.2 LoRA from models/loras to a diffusion model: a WanFlow model or a native MODEL "
        "(UNETLoader). Reads ComfyUI / diffusion-pipe, kohya / musubi-tuner (lora_unet_...), diffusers / PEFT "
        "(transformer.*) and DiffSynth-Studio files, with or without alpha, and diff / diff_b deltas. The report "
        "lists what was applied, keys that did not fit (unknown name, shape mismatch) and warnings: a LoRA for "
        "another model size (e.g. 14B on 1.3B) or I2V keys on a T2V model. Chain several loaders to stack LoRAs. "
        "The output is the same kind of model as the input: a WanFlow model goes on to WanFlow nodes, a native "
        "MODEL to native nodes or to WanFlow Sampler."
    )
    CATEGORY = "WanFlow/loaders"
    FUNCTION = "load"
    # The socket type is the union so the output links into WanFlow inputs and native MODEL inputs; the
    # value is the input's kind (a WanFlow handle into a native-only node fails there, as it would unlinked).
    RETURN_TYPES = (MODEL_TYPES, "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = (
        "The model with the LoRA, of the same kind as the input (WanFlow model or native MODEL).",
        "What was applied, what was skipped and why.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPES, {"tooltip": "The diffusion model (WanFlow Load Diffusion Model or a native loader)."}),
                "lora_name": (list_model_files("loras"), {"tooltip": "A Wan LoRA file in models/loras."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "How strongly the LoRA changes the model (1 = as trained, "
                                                        "0 = not at all, negative = the opposite)."}),
            }
        }

    def load(self, model, lora_name, strength_model=1.0):
        strength_model = check_strength(strength_model, "WanFlow Load LoRA: strength_model")
        path = model_file_path("loras", lora_name)
        if strength_model == 0:
            text = f"LoRA {lora_name}: strength 0, not applied"
            return {"ui": {"text": [text]}, "result": (model, text)}
        out, report = model_with_lora(model, path, strength_model)
        text = str(report)
        return {"ui": {"text": [text]}, "result": (out, text)}


def model_with_lora(model, lora, strength: float = 1.0):
    """(a new model carrying the LoRA, LoraReport) for a WanFlow handle or a native MODEL; the input
    model is not changed. `lora`: a file path, a state dict (any key style) or a ParsedLora."""
    strength = check_strength(strength)
    parsed = parse_lora(lora)
    if isinstance(model, ModelHandle):
        report = check_lora(model.module, parsed)  # raises when nothing in the LoRA fits
        out = model.with_loras([(parsed, strength)])
        report.notes.append("merged into the weights when a sampler loads this model")
    else:
        config = dit_config(model)  # a clear error unless this is a native Wan MODEL
        out, report = _apply_native(model, config, parsed, strength)
    report.strength = strength
    return out, report


def _apply_native(model, config, parsed, strength: float):
    """ComfyUI applies the LoRA itself (as its LoraLoaderModelOnly does); our report comes from the
    same matching on a weightless (meta-device) copy of the architecture."""
    with torch.device("meta"):
        report: LoraReport = check_lora(WanDiT(config), parsed)
    state_dict = to_comfy_state_dict(parsed)
    key_map = _comfy("comfy.lora").model_lora_keys_unet(model.model, {})
    bases = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state_dict}
    mapped = sorted(b for b in bases if b in key_map)
    report.notes.append(f"ComfyUI mapped {len(mapped)} of {len(bases)} LoRA target(s) onto the native model")
    # deltas on parameters of non-leaf modules are mapped but skipped by ComfyUI's ModelPatcher (docs/formats.md §10)
    skipped = [b for b in mapped if b.endswith((".modulation", ".emb_pos"))]
    if skipped:
        report.warnings.append(f"ComfyUI does not apply the {len(skipped)} delta(s) on modulation / emb_pos "
                               f"tables (e.g. {skipped[0]}); the WanFlow model path does")
    patched, _ = _comfy("comfy.sd").load_lora_for_models(model, None, state_dict, strength, 0)
    return patched, report


NODE_CLASS_MAPPINGS = {"WanFlowLoadLoRA": WanFlowLoadLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowLoadLoRA": "WanFlow Load LoRA"}
