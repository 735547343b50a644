"""Tiny random-weight Wan DiTs for tests, the self-check and demos (no downloads).

head_dim stays 128, as in every release, so the real 44/42/42 RoPE split and ComfyUI's
`num_heads = dim // 128` rule both hold; 2 heads catch head-reshape bugs.
"""
from __future__ import annotations

import torch

from ..models.dit import FLF_IMAGE_TOKENS, WanConfig, WanDiT

TINY = dict(dim=256, num_heads=2, ffn_dim=96, num_layers=2, text_dim=64, freq_dim=256, text_len=512)
CHANNELS = {"t2v": (16, 16), "i2v": (36, 16), "flf2v": (36, 16), "ti2v": (48, 48), "i2v-2.2": (36, 16)}


def tiny_config(kind: str = "t2v", **overrides) -> WanConfig:
    """kind: t2v | i2v | flf2v | ti2v (Wan2.1/2.2 as released) or i2v-2.2 (A14B I2V expert, no CLIP)."""
    in_dim, out_dim = CHANNELS[kind]
    cfg = dict(TINY, in_dim=in_dim, out_dim=out_dim, model_type=kind.split("-")[0],
               image_branch=kind in ("i2v", "flf2v"), flf_pos_tokens=FLF_IMAGE_TOKENS if kind == "flf2v" else 0)
    cfg.update(overrides)
    return WanConfig(**cfg)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with N(0, std) (norm weights around 1): the official init zeros the
    head, which would make outputs bias-only and hide errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def random_dit(kind: str = "t2v", seed: int = 0, **overrides) -> WanDiT:
    return randomize_(WanDiT(tiny_config(kind, **overrides)), seed).eval()


def example_inputs(cfg: WanConfig, *, batch: int = 1, frames: int = 3, height: int = 8, width: int = 12,
                   text_tokens: int = 20, seed: int = 1) -> dict:
    """Random inputs that exercise every path of the given variant (per-token t for TI2V)."""
    gen = torch.Generator().manual_seed(seed)
    noise_channels = cfg.in_dim - (20 if cfg.in_dim == 36 else 0)
    inputs = {
        "x": torch.randn(batch, noise_channels, frames, height, width, generator=gen),
        "timestep": torch.full((batch,), 700.0),
        "context": torch.randn(batch, text_tokens, cfg.text_dim, generator=gen),
    }
    if cfg.in_dim == 36:
        inputs["y"] = torch.randn(batch, 20, frames, height, width, generator=gen)
    if cfg.image_branch:
        tokens = cfg.flf_pos_tokens or 257
        inputs["clip_fea"] = torch.randn(batch, tokens, 1280, generator=gen)
    if cfg.model_type == "ti2v":  # first latent frame is the clean image: timestep 0 on its tokens
        per_frame = (height // 2) * (width // 2)
        t = torch.full((batch, frames * per_frame), 700.0)
        t[:, :per_frame] = 0.0
        inputs["timestep"] = t
    return inputs


def dequantized_reference(tensors: dict, prefix: str = "") -> dict:
    """What a correct loader must produce from comfyui_state_dict() output: fp32 official-name tensors."""
    out = {}
    for name, w in tensors.items():
        if not name.startswith(prefix) or name.endswith(("scale_weight", "scaled_fp8")):
            continue
        key = name[len(prefix):]
        scale = tensors.get(name[: -len("weight")] + "scale_weight") if name.endswith(".weight") else None
        out[key] = w.float() * scale if scale is not None else w.float()
    return out
