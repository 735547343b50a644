"""The CLIP vision tower Wan 2.1 I2V / FLF2V condition on (open-clip XLM-RoBERTa ViT-H/14, visual part).

Wan feeds the DiT the *penultimate* hidden states of a ViT-H/14: for a 224x224 image, 1 CLS + 16x16
patch tokens of width 1280 -> `clip_fea [N, 257, 1280]`. No post-LayerNorm, no projection, CLS kept.
FLF2V encodes first and last frame as a batch of 2 and the DiT concatenates them along tokens.

The tower runs as transformers' `CLIPVisionModel`; this module maps the weights users have onto it:

* official `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`: `visual.*` names with a fused
  `to_qkv` (split q, k, v in that order), `cls_embedding (1,1,W)` (flattened), `pos_embedding (1,T,W)`
  (squeezed); `textual.*`, `log_scale` and the unused `visual.head` projection are ignored;
* ComfyUI `clip_vision_h.safetensors`: HF names under `vision_model.` (often fp16), with an ignored
  `visual_projection.weight`;
* an HF folder (config.json + model.safetensors, names with or without `vision_model.`; a full
  `CLIPModel` folder also works, its text tower is ignored).

Architecture is read from the tensor shapes: width, layers, MLP size, patch size, and the image size
(sqrt(positions - 1) * patch; 224 for ViT-H/14, which is also the resize target of the preprocessing).
The head count cannot be read from shapes. Rule, first that applies: the caller's
`config={"num_attention_heads": n}`, the HF config.json, the safetensors metadata key
`num_attention_heads` (written by our own writers, `tiny_clip`), then the released CLIP towers'
widths (1280 -> 16 heads of 80 for ViT-H; 768/1024/1408/1664 for ViT-B/L/g/bigG); anything else is an
error rather than a guess. GELU is exact ("gelu") and LayerNorm eps 1e-5, as in ViT-H, except where an
HF config.json says otherwise (read with transformers' meaning: no hidden_act there means quick_gelu).

Preprocessing is the official one (`official_preprocess`): images in [-1, 1], plain bicubic resize to
image_size x image_size (no antialias, no crop, aspect not kept), back to [0, 1], CLIP mean/std.
ComfyUI's own CLIPVisionEncode differs (antialias, center crop, 8-bit rounding); we follow the official.
The official model runs under fp16 autocast on GPU; here everything runs in the module's dtype.
`encode` stops after the penultimate block: the last block and post_layernorm are loaded (strict
loading) but never run.
"""
from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # transformers is imported lazily: importing wan_core stays cheap
    from transformers import CLIPVisionConfig, CLIPVisionModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------
# Preprocessing (official) and input checks
# --------------------------------------------------------------------------------------------


def official_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> normalized pixel values [N, 3, size, size] in fp32, as the official
    code: bicubic resize (align_corners False, no antialias, no crop), x*0.5+0.5, CLIP mean/std."""
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _check_images(images, *, comfy: bool) -> None:
    want = "a ComfyUI IMAGE [N, H, W, 3] in 0..1" if comfy else "images [N, 3, H, W] in [-1, 1]"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected {want} as a torch.Tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise ValueError(f"expected {want}, got a {images.ndim}-D tensor of shape {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected {want} as a floating tensor, got {images.dtype} (shape {shape}); "
                         f"convert 8-bit pixels first")
    channels = shape[3] if comfy else shape[1]
    if channels != 3:
        if comfy and shape[1] == 3:
            raise ValueError(f"expected {want}, got shape {shape}: this looks like [N, 3, H, W]; "
                             f"use encode() for channel-first images in [-1, 1]")
        if not comfy and shape[-1] in (3, 4):
            raise ValueError(f"expected {want}, got shape {shape}: this looks like a ComfyUI IMAGE "
                             f"[N, H, W, C]; use encode_comfy_image() (0..1, channel-last)")
        raise ValueError(f"expected {want}: 3 (RGB) channels, got {channels} (shape {shape})")
    if images.numel() == 0:
        raise ValueError(f"expected {want}, got an empty tensor of shape {shape}")
    lo, hi = images.min().item(), images.max().item()
    low, high = (0.0, 1.0) if comfy else (-1.0, 1.0)
    if lo < low - 1e-3 or hi > high + 1e-3 or math.isnan(lo) or math.isnan(hi):
        hint = " (0..255 pixels? divide by 255)" if comfy else " (0..1 images: use x*2-1; 0..255: x/127.5-1)"
        raise ValueError(f"expected {want}, got values in [{lo:.4g}, {hi:.4g}]{hint}")


# --------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------


def vision_tower(vision: "CLIPVisionModel") -> nn.Module:
    """The module holding embeddings/encoder: the model itself in transformers 5, `.vision_model` in 4.x.
    Its parameter names are the HF names without the `vision_model.` prefix."""
    return getattr(vision, "vision_model", vision)


def _run_layer(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    # transformers 4.x: layer(h, mask, causal_mask) -> (h,); 5.x: layer(h, mask) -> h
    if "causal_attention_mask" in inspect.signature(layer.forward).parameters:
        out = layer(h, None, None)
    else:
        out = layer(h, None)
    return out[0] if isinstance(out, tuple) else out


class WanClipVision(nn.Module):
    """A transformers `CLIPVisionModel` that returns Wan's CLIP features (penultimate hidden states)."""

    def __init__(self, vision: "CLIPVisionModel", *, layout: str = "memory", source: str | None = None):
        super().__init__()
        self.vision = vision
        self.layout = layout  # where the weights came from: official | comfyui | hf | memory
        self.source = source

    @property
    def config(self) -> "CLIPVisionConfig":
        return self.vision.config

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    @property
    def dtype(self) -> torch.dtype:
        return vision_tower(self.vision).embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return vision_tower(self.vision).embeddings.patch_embedding.weight.device

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [N, 3, S, S] -> penultimate hidden states [N, 1 + (S/patch)^2, width].
        Equals HF `hidden_states[-2]`; the last block is skipped instead of computed and dropped."""
        v = vision_tower(self.vision)
        h = v.pre_layrnorm(v.embeddings(pixel_values.to(self.device, self.dtype)))
        for layer in v.encoder.layers[:-1]:
            h = _run_layer(layer, h)
        return h

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] (any size) -> clip_fea [N, 257, 1280] for ViT-H, in self.dtype.
        Batch-friendly: FLF2V passes first and last frame as N=2."""
        _check_images(images, comfy=False)
        return self(official_preprocess(images.to(self.device), self.image_size))

    def encode_comfy_image(self, image: torch.Tensor) -> torch.Tensor:
        """ComfyUI IMAGE [N, H, W, 3] in 0..1 -> clip_fea, with the official preprocessing."""
        _check_images(image, comfy=True)
        return self.encode(image.permute(0, 3, 1, 2) * 2.0 - 1.0)


def wrap_clip_vision_model(vision: "CLIPVisionModel") -> WanClipVision:
    """An in-memory `CLIPVisionModel` as a WanClipVision (eval mode, no grad)."""
    return WanClipVision(vision).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# Key mapping: stored names -> HF CLIPVisionModel parameter names
# --------------------------------------------------------------------------------------------

# A stored tensor becomes an HF parameter by an op: "" (as is), "q"/"k"/"v" (a third of a fused
# qkv), "flatten" (cls (1,1,W) -> (W,)) or "squeeze0" (pos (1,T,W) -> (T,W)).


# --------------------------------------------------------------------------------------------
# Config inference
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Finding files and loading
# --------------------------------------------------------------------------------------------


