"""Tiny random CLIP vision towers, and the same weights written in each on-disk layout (no downloads).

Layouts: the official Wan `.pth` (`visual.*` with fused `to_qkv`, `cls_embedding (1,1,W)`,
`pos_embedding (1,T,W)`, plus `textual.*`, `log_scale` and `visual.head` that loaders must ignore),
ComfyUI's `clip_vision_h.safetensors` (HF names under `vision_model.`, fp16 or fp32, with
`visual_projection.weight`), and an HF folder (config.json + model.safetensors).

The tiny tower has width 64 and 4 heads (head_dim 16, so it needs the head count from metadata,
config.json, or `config=TINY_CLIP_OVERRIDES` for the .pth, which cannot carry it), 3 layers, patch 14
and image 56: 1 + 4*4 = 17 tokens. Its image size is also what `encode` resizes to.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..formats.clip_vision import HEADS_METADATA_KEY
from ..io.write import atomic_write, save_safetensors
from ..models.clip_vision import WanClipVision, vision_tower, wrap_clip_vision_model
from .dit import randomize_

TINY_CLIP = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=128,
                 patch_size=14, image_size=56, hidden_act="gelu", layer_norm_eps=1e-5)
TINY_CLIP_OVERRIDES = {"num_attention_heads": TINY_CLIP["num_attention_heads"]}
PROJECTION_DIM = 32  # width of the (ignored) projection head written next to the tower


def tiny_clip_config(**overrides):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**{**TINY_CLIP, **overrides})


def random_clip_vision(seed: int = 0, std: float = 0.1, **overrides) -> WanClipVision:
    """A tiny fp32 tower with every parameter random (norm weights around 1)."""
    from transformers import CLIPVisionModel

    return wrap_clip_vision_model(randomize_(CLIPVisionModel(tiny_clip_config(**overrides)), seed, std))


def hf_state_dict(model: WanClipVision) -> dict:
    """HF `CLIPVisionModel` names without the `vision_model.` prefix (transformers 5 in-memory names)."""
    return {k: v.detach().clone() for k, v in vision_tower(model.vision).state_dict().items()}


def _extras(model: WanClipVision, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed + 1000)
    width = model.config.hidden_size
    return {"head": torch.randn(width, PROJECTION_DIM, generator=gen) * 0.1,
            "textual.token_embedding.weight": torch.randn(10, 8, generator=gen),
            "textual.blocks.0.attn.q.weight": torch.randn(8, 8, generator=gen),
            "log_scale": torch.tensor(4.6052)}


def official_state_dict(model: WanClipVision, seed: int = 0) -> dict:
    """The official Wan CLIP .pth names (docs/formats.md §9), with the text tower stubs it also holds."""
    sd, n = hf_state_dict(model), model.config.num_hidden_layers
    extras = _extras(model, seed)
    out = {
        "visual.patch_embedding.weight": sd["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": sd["embeddings.class_embedding"].reshape(1, 1, -1),
        "visual.pos_embedding": sd["embeddings.position_embedding.weight"].unsqueeze(0),
    }
    for ours, theirs in (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"visual.{ours}.{p}"] = sd[f"{theirs}.{p}"]
    for i in range(n):
        a, b = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for p in ("weight", "bias"):
            out[b + f"norm1.{p}"] = sd[a + f"layer_norm1.{p}"]
            out[b + f"norm2.{p}"] = sd[a + f"layer_norm2.{p}"]
            out[b + f"attn.to_qkv.{p}"] = torch.cat([sd[a + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
            out[b + f"attn.proj.{p}"] = sd[a + f"self_attn.out_proj.{p}"]
            out[b + f"mlp.0.{p}"] = sd[a + f"mlp.fc1.{p}"]
            out[b + f"mlp.2.{p}"] = sd[a + f"mlp.fc2.{p}"]
    out["visual.head"] = extras.pop("head")
    out.update(extras)
    return out


def comfy_state_dict(model: WanClipVision, dtype: torch.dtype = torch.float16, projection: bool = True,
                     seed: int = 0) -> dict:
    """ComfyUI clip_vision_h layout: `vision_model.` + HF names, optional `visual_projection.weight`."""
    out = {"vision_model." + k: v.to(dtype) for k, v in hf_state_dict(model).items()}
    if projection:
        out["visual_projection.weight"] = _extras(model, seed)["head"].T.contiguous().to(dtype)
    return out


def save_official_pth(model: WanClipVision, path: str | os.PathLike, seed: int = 0) -> Path:
    sd = {k: v.contiguous() for k, v in official_state_dict(model, seed).items()}
    return atomic_write(path, lambda tmp: torch.save(sd, tmp))


def save_comfy_safetensors(model: WanClipVision, path: str | os.PathLike, dtype: torch.dtype = torch.float16,
                           projection: bool = True, heads_metadata: bool = True) -> Path:
    """heads_metadata: store num_attention_heads in the header (real ComfyUI files do not have it)."""
    meta = {HEADS_METADATA_KEY: str(model.config.num_attention_heads)} if heads_metadata else None
    return save_safetensors(comfy_state_dict(model, dtype, projection), path, metadata=meta)


def save_hf_folder(model: WanClipVision, folder: str | os.PathLike, prefix: str = "vision_model.") -> Path:
    """config.json (a CLIPVisionConfig) + model.safetensors with `prefix` on every name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = ["CLIPVisionModel"]
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2)))
    save_safetensors({prefix + k: v for k, v in hf_state_dict(model).items()}, folder / "model.safetensors")
    return folder
