"""One attention entry point for every Wan module.

All attention in the pack goes through `attention(q, k, v)`, so a faster kernel (flash-attn,
SageAttention, ...) can be plugged in with `set_attention_backend` without touching the models.
A backend that is unavailable or fails on the given inputs falls back to PyTorch's SDPA.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# q, k, v: [B, L, heads, head_dim] -> [B, Lq, heads, head_dim]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain scaled dot-product attention, scale 1/sqrt(head_dim), no mask."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


_BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention}
_active = "sdpa"


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Make `fn` selectable by `set_attention_backend(name)`."""
    _BACKENDS[name] = fn


def set_attention_backend(name: str) -> None:
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)}")
    _active = name


def get_attention_backend() -> str:
    return _active


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention over [B, L, heads, head_dim] tensors with the active backend (SDPA fallback)."""
    if _active != "sdpa":
        try:
            return _BACKENDS[_active](q, k, v)
        except (RuntimeError, NotImplementedError, TypeError):
            # A plug-in kernel may not support this dtype/device/shape: the reference path always does.
            pass
    return sdpa_attention(q, k, v)
