"""Writing a Wan DiT state dict in the layouts users have on disk.

The same weights can be written as the official release (config.json + safetensors, optionally
sharded with an index json), as a ComfyUI single file (optionally with the `model.diffusion_model.`
prefix, in fp16/bf16, plain fp8 or ComfyUI "scaled fp8"), or as a torch .pth. Files are written
atomically (temporary file, then rename), so an interrupted save never leaves a broken checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .dit_checkpoint import is_block_linear_weight, quantize_fp8
from .model import WanConfig


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) and move the result into place only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved model should read like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def official_config_json(cfg: WanConfig) -> dict:
    """config.json as the official releases ship it."""
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0",
        "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim,
        "in_dim": cfg.in_dim, "model_type": cfg.model_type, "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers, "out_dim": cfg.out_dim, "text_len": cfg.text_len,
    }


def save_official(state_dict: dict, cfg: WanConfig, folder, *, shards: int = 1) -> Path:
    """Official layout: config.json + diffusion_pytorch_model.safetensors (or N shards + index json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(official_config_json(cfg), indent=2)))
    if shards <= 1:
        save_safetensors(state_dict, folder / "diffusion_pytorch_model.safetensors")
        return folder
    keys = list(state_dict)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = keys[i * per:(i + 1) * per]
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors({k: state_dict[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
        total += sum(state_dict[k].numel() * state_dict[k].element_size() for k in part)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    atomic_write(folder / "diffusion_pytorch_model.safetensors.index.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    return folder


def comfyui_state_dict(state_dict: dict, *, dtype=torch.float16, fp8: str | None = None, prefix: str = "") -> dict:
    """ComfyUI single-file tensors: 16-bit, or fp8 block Linear weights (fp8='e4m3fn' | 'e5m2' | 'scaled').

    'scaled' follows ComfyUI's fp8_scaled files: W/s in float8_e4m3fn with s = max|W|/448 stored as
    `<layer>.scale_weight`, plus an empty top-level `scaled_fp8` marker tensor.
    """
    out = {}
    for name, w in state_dict.items():
        if not (fp8 and is_block_linear_weight(name, w)):
            out[prefix + name] = w.to(dtype)
        elif fp8 == "scaled":
            out[prefix + name], out[prefix + name[: -len("weight")] + "scale_weight"] = quantize_fp8(w)
        else:
            out[prefix + name] = w.to({"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fp8])
    if fp8 == "scaled":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


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


def save_pth(state_dict: dict, path) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp))
