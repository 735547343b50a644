"""Casting layers: one home for the casting policy, apart from the networks (as ComfyUI's ops).

`CastLinear` / `CastConv3d` keep their weight in a storage dtype (fp8, bf16) and cast it to the
input's dtype at call time, dequantizing with an optional per-tensor `weight_scale`; the networks
build themselves from these, so low-memory and fp8 modes need no change in the network code."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CastLinear(nn.Linear):
    """nn.Linear that casts its stored weight to the input's dtype for the call.

    Normally weights already sit in the compute dtype and nothing is cast. In low-memory mode the
    loader keeps them in fp8/bf16 and attaches `weight_scale` (ComfyUI scaled fp8): the
    dequantized weight exists only for the duration of this call.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_weight(self.weight, x.dtype, self.weight_scale), cast_bias(self.bias, x.dtype))


class CastConv3d(nn.Conv3d):
    """nn.Conv3d with the same cast-at-call behaviour as CastLinear (patch embedding)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = cast_weight(self.weight, x.dtype, self.weight_scale)
        return F.conv3d(x, w, cast_bias(self.bias, x.dtype), self.stride, self.padding, self.dilation, self.groups)


def cast_weight(w: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None) -> torch.Tensor:
    if w.dtype != dtype:
        w = w.to(dtype)
    if scale is not None:
        w = w * scale.to(dtype)
    return w


def cast_bias(b: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return b if b is None or b.dtype == dtype else b.to(dtype)


class ScaledCastLinear(CastLinear):
    """CastLinear whose scaled-fp8 dequantization rounds once, (w.float() * scale).to(x.dtype), exactly
    as the load-time dequantization does, so low-memory mode gives the same numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is None:
            return super().forward(x)
        return F.linear(x, (self.weight.float() * self.weight_scale).to(x.dtype))
