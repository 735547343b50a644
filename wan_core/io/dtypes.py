"""dtype names, fp8 quantization and fp8 scales (docs/formats.md §3), with no model knowledge."""
from __future__ import annotations

import torch

from .tensor_files import CheckpointError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def read_fp8_scale(tensors, name_map, name):
    if not name.endswith(".weight"):
        return None
    base = name[: -len(".weight")]
    for suffix in (".scale_weight", ".weight_scale"):
        if base + suffix in name_map:
            scale = tensors.read(name_map[base + suffix]).float()
            if scale.numel() != 1:
                raise CheckpointError(f"{name_map[base + suffix]}: expected a scalar fp8 scale, found shape {tuple(scale.shape)}")
            return scale.reshape(())
    return None


def quantize_fp8(w: torch.Tensor, dtype=torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8, as ComfyUI's fp8_scaled files: -> (w / s in fp8, s = max|w| / fp8 max)."""
    scale = w.float().abs().max().clamp(min=1e-12) / torch.finfo(dtype).max
    return (w.float() / scale).to(dtype), scale


_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn,
    "float8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "float8_e5m2": torch.float8_e5m2,
}


def resolve_dtype(d):
    if d is None or isinstance(d, torch.dtype):
        return d
    if d in _DTYPE_NAMES:
        return _DTYPE_NAMES[d]
    raise ValueError(f"unknown dtype {d!r}; expected one of {sorted(_DTYPE_NAMES)} or a torch.dtype")
