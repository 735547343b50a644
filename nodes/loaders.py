"""Loader nodes: files in ComfyUI's model folders -> wan_core models."""
from __future__ import annotations

import torch

from ..wan_core import load_clip_vision, load_dit, load_text_encoder, load_vae
from ..wan_core.io.dtypes import resolve_dtype
from ..wan_core.models.tokenizer import is_tokenizer_folder
from .comfy_bridge import ModelHandle, folder_roots, list_model_files, model_file_path

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
        # weights made outside ComfyUI's inference mode: training nodes can then use them in autograd
        # without first copying them (inference tensors cannot be saved for backward)
        with torch.inference_mode(False):
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


VAE_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class WanFlowLoadVAE:
    """Load a Wan2.1 or Wan2.2 VAE from ComfyUI's vae folder."""

    DESCRIPTION = (
        "Loads the Wan2.1 VAE (16 latent channels, 8x) or the Wan2.2 VAE (48 channels, 16x, for TI2V-5B) from "
        "models/vae: official .pth, ComfyUI safetensors or a diffusers vae file. The version is detected."
    )
    CATEGORY = "WanFlow/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("WANFLOW_VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The Wan VAE, for WanFlow VAE Encode / Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae_name": (list_model_files("vae"), {"tooltip": "A Wan VAE file in models/vae (wan_2.1_vae, wan2.2_vae, Wan2.1_VAE.pth ...)."}),
                "dtype": (list(VAE_DTYPES), {
                    "default": "auto",
                    "tooltip": "Precision of the VAE. auto: bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on the CPU "
                               "(the official code runs fp32).",
                }),
            }
        }

    def load(self, vae_name, dtype="auto"):
        path = model_file_path("vae", vae_name)
        chosen = VAE_DTYPES[dtype] or resolve_dtype(auto_compute_dtype()) or torch.float32
        return (ModelHandle(load_vae(path, dtype=chosen), name=vae_name, role="vae"),)


TEXT_DEVICES = ["default", "cpu"]
TEXT_WEIGHT_DTYPES = {
    "default": None,
    "keep file dtype (low memory)": "file",
    "fp8_e4m3fn (low memory)": "fp8_e4m3fn",
}
AUTO_TOKENIZER = "auto (embedded in the file or next to it)"


def tokenizer_folders() -> list[str]:
    """Tokenizer folders (tokenizer.json or spiece.model) under models/text_encoders, as relative paths."""
    found = set()
    for root in folder_roots("text_encoders"):
        if root.is_dir():
            found |= {str(f.parent.relative_to(root)).replace("\\", "/")
                      for marker in ("tokenizer.json", "spiece.model") for f in root.rglob(marker) if f.parent != root}
    return sorted(found)


def _tokenizer_path(choice: str):
    if choice == AUTO_TOKENIZER:
        return None
    for root in folder_roots("text_encoders"):
        path = (root / choice).resolve()
        if root.resolve() in path.parents and is_tokenizer_folder(path):
            return str(path)
    raise FileNotFoundError(f"tokenizer folder {choice!r} not found under models/text_encoders")


class WanFlowLoadTextEncoder:
    """Load the UMT5-XXL text encoder (with its tokenizer) from ComfyUI's text_encoders folder."""

    DESCRIPTION = (
        "Loads Wan's UMT5-XXL text encoder from models/text_encoders: ComfyUI's umt5_xxl files (fp16, bf16, fp8, "
        "fp8_scaled), the official models_t5_umt5-xxl-enc-bf16.pth (with its google/umt5-xxl tokenizer folder) or "
        "a diffusers text_encoder. The tokenizer embedded in ComfyUI files is used when present."
    )
    CATEGORY = "WanFlow/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("WANFLOW_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The UMT5 text encoder, for WanFlow Text Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder_name": (list_model_files("text_encoders"), {"tooltip": "A UMT5-XXL file in models/text_encoders."}),
                "tokenizer": ([AUTO_TOKENIZER] + tokenizer_folders(), {
                    "default": AUTO_TOKENIZER,
                    "tooltip": "auto: the sentencepiece model inside ComfyUI's umt5 files, or a google/umt5-xxl folder next "
                               "to the weights. Otherwise a tokenizer folder under models/text_encoders.",
                }),
                "device": (TEXT_DEVICES, {
                    "default": "default",
                    "tooltip": "default: where ComfyUI puts text encoders. cpu: keep the 5.7B encoder off the GPU.",
                }),
                "weight_dtype": (list(TEXT_WEIGHT_DTYPES), {
                    "default": "default",
                    "tooltip": "default: bf16 weights (the official precision). Low-memory choices keep fp8 weights and "
                               "upcast one layer at a time.",
                }),
            }
        }

    def load(self, text_encoder_name, tokenizer=AUTO_TOKENIZER, device="default", weight_dtype="default"):
        path = model_file_path("text_encoders", text_encoder_name)
        encoder = load_text_encoder(path, tokenizer=_tokenizer_path(tokenizer), weight_dtype=TEXT_WEIGHT_DTYPES[weight_dtype])
        return (ModelHandle(encoder, name=text_encoder_name, role="text_encoder", on_cpu=device == "cpu"),)


class WanFlowLoadCLIPVision:
    """Load the CLIP ViT-H/14 vision tower that Wan2.1 I2V and FLF2V use."""

    DESCRIPTION = (
        "Loads the open-clip ViT-H/14 image encoder for Wan2.1 I2V / FLF2V from models/clip_vision: ComfyUI's "
        "clip_vision_h.safetensors or the official models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth."
    )
    CATEGORY = "WanFlow/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("WANFLOW_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    OUTPUT_TOOLTIPS = ("The CLIP vision encoder, for WanFlow image-to-video conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": (list_model_files("clip_vision"), {"tooltip": "clip_vision_h.safetensors or the official CLIP .pth in models/clip_vision."}),
                "dtype": (list(VAE_DTYPES), {
                    "default": "auto",
                    "tooltip": "auto: fp16 on a GPU (the official code runs CLIP under fp16 autocast), fp32 on the CPU.",
                }),
            }
        }

    def load(self, clip_name, dtype="auto"):
        path = model_file_path("clip_vision", clip_name)
        chosen = VAE_DTYPES[dtype] or (torch.float16 if torch.cuda.is_available() else torch.float32)
        return (ModelHandle(load_clip_vision(path, dtype=chosen), name=clip_name, role="clip_vision"),)


NODE_CLASS_MAPPINGS = {
    "WanFlowLoadDiffusionModel": WanFlowLoadDiffusionModel,
    "WanFlowLoadVAE": WanFlowLoadVAE,
    "WanFlowLoadTextEncoder": WanFlowLoadTextEncoder,
    "WanFlowLoadCLIPVision": WanFlowLoadCLIPVision,
    "WanFlowModelInfo": WanFlowModelInfo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanFlowLoadDiffusionModel": "WanFlow Load Diffusion Model",
    "WanFlowLoadVAE": "WanFlow Load VAE",
    "WanFlowLoadTextEncoder": "WanFlow Load Text Encoder",
    "WanFlowLoadCLIPVision": "WanFlow Load CLIP Vision",
    "WanFlowModelInfo": "WanFlow Model Info",
}
