"""Loader nodes: files in ComfyUI's model folders -> wan_core models."""
from __future__ import annotations

import torch

from ..wan_core import load_dit
from .comfy_bridge import ModelHandle, list_model_files, model_file_path

WEIGHT_DTYPES = {
    "default": None,  # same as the compute dtype
    "keep file dtype (low memory)": "file",
    "fp8_e4m3fn (low memory)": "fp8_e4m3fn",
    "fp8_e5m2 (low memory)": "fp8_e5m2",
    "bf16": "bf16",
    "fp16": "fp16",
}
COMPUTE_DTYPES = {"auto": None, "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


class WanFlowLoadDiffusionModel:
    """Load a Wan 2.1 / 2.2 diffusion model (DiT) from ComfyUI's diffusion_models folder."""

    DESCRIPTION = (
        "Loads a Wan 2.1 / 2.2 diffusion model (T2V 1.3B/14B, I2V, FLF2V, 2.2 A14B experts, TI2V-5B) in any "
        "layout: official, ComfyUI repackaged (fp16/bf16/fp8/fp8_scaled) or diffusers. The variant is "
        "detected from the weights."
    )
    CATEGORY = "WanFlow/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("WANFLOW_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Wan diffusion model, for WanFlow nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (list_model_files("diffusion_models"), {
                    "tooltip": "A Wan DiT file in models/diffusion_models (official, ComfyUI or diffusers single file).",
                }),
                "weight_dtype": (list(WEIGHT_DTYPES), {
                    "default": "default",
                    "tooltip": "How the large weights are stored in memory. Low-memory choices keep 8/16-bit weights and upcast one layer at a time.",
                }),
                "compute_dtype": (list(COMPUTE_DTYPES), {
                    "default": "auto",
                    "tooltip": "Precision of the matrix math. auto: bf16 on a GPU (fp16 where bf16 is unsupported); on the CPU the file's dtype (bf16 for fp8 files).",
                }),
            }
        }

    def load(self, model_name, weight_dtype="default", compute_dtype="auto"):
        path = model_file_path("diffusion_models", model_name)
        dtype = COMPUTE_DTYPES[compute_dtype] or auto_compute_dtype()
        model = load_dit(path, dtype=dtype, weight_dtype=WEIGHT_DTYPES[weight_dtype])
        return (ModelHandle(model, name=model_name),)


def auto_compute_dtype():
    """bf16 (or fp16) on a GPU: official Wan files are often fp32, 4x the memory of what is needed.
    None on the CPU: load_dit then computes in the file's dtype."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return None


class WanFlowModelInfo:
    """Show what was detected in a loaded model (variant, architecture, dtypes)."""

    DESCRIPTION = "Shows the detected Wan variant, architecture and precision of a WanFlow model."
    CATEGORY = "WanFlow/utils"
    FUNCTION = "describe"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("info",)
    OUTPUT_TOOLTIPS = ("A one-line-per-field description of the model.",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("WANFLOW_MODEL", {"tooltip": "A model from WanFlow Load Diffusion Model."})}}

    def describe(self, model):
        text = describe_model(model.module)
        return {"ui": {"text": [text]}, "result": (text,)}


def describe_model(module) -> str:
    cfg = module.config
    params = sum(p.numel() for p in module.parameters())
    storage = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
    lines = [
        f"variant: {cfg.variant}" + (f" ({cfg.extras['expert']}-noise expert)" if cfg.extras.get("expert") else ""),
        f"model_type: {cfg.model_type}",
        f"layout: {cfg.extras.get('layout', '?')}",
        f"dim: {cfg.dim}, heads: {cfg.num_heads}, layers: {cfg.num_layers}, ffn: {cfg.ffn_dim}",
        f"in/out channels: {cfg.in_dim}/{cfg.out_dim}, text_dim: {cfg.text_dim}",
        f"parameters: {params:,}",
        f"weights stored as: {', '.join(storage)}; compute dtype: {str(module.compute_dtype).replace('torch.', '')}",
    ]
    return "\n".join(lines)
