"""The demo's stand-in VAE: a fixed, parameter-free linear codec with the Wan2.1 VAE geometry.

The embedded demo trains a tiny DiT from scratch, so it needs a VAE without downloading one. This
codec has the same latent layout as the Wan2.1 VAE, so every node of the pack works on it unchanged:
16 latent channels, 8x spatial and 4x causal temporal compression (latent frame 0 <-> video frame 0,
latent frame k <-> frames 4k-3..4k, so F = 1 + 4k frames give 1 + k latent frames).

Encode: average each temporal group and each 4x4 pixel block, then fold 2x2 of those blocks into
channels (3 colours x 2 x 2 = 12 channels) and multiply by GAIN; the last 4 channels are zero. That
16-channel tensor *is* the normalized latent the DiT sees (GAIN gives the demo clips a spread close
to a real VAE's normalized latents; without it the grey background and small squares would sit so
close to 0 that noise drowns them early in the noise schedule); the raw latent (ComfyUI's LATENT convention) is obtained with the
pack's own `denormalize_latent` (Wan2.1 statistics), so the Sampler node's denormalization and the VAE
Decode node's input agree exactly as with the real VAE.
Decode: the inverse layout, nearest upsampling to pixels, each latent frame repeated over its group.
encode(decode(z)) == z for every z whose extra channels are zero, and decode(encode(v)) == v for
clips that are constant over 4x4 pixel blocks and over each temporal group.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.vae import VAE_VERSIONS, WanVAE, denormalize_latent, normalize_latent

GEOMETRY = VAE_VERSIONS["2.1"]  # the latent layout the codec copies
BLOCK = GEOMETRY.stride[1] // 2  # pixels averaged per side before the 2x2 fold into channels (4 x 2 = stride 8)
COLOUR_CHANNELS = 3 * 2 * 2
GAIN = 4.0  # normalized latent = GAIN x pixel block means in [-1, 1]


@dataclass(frozen=True)
class DemoCodecConfig:
    """What the nodes read from a VAE config (same values as the Wan2.1 VAE's)."""

    version: str = GEOMETRY.version  # whose latent statistics `normalize_latent` applies (16 channels -> 2.1)
    z_dim: int = GEOMETRY.latent_channels
    stride: tuple = GEOMETRY.stride
    patch: int = GEOMETRY.patch


class DemoCodec(nn.Module):
    """Quacks like `wan_core.vae.WanVAE` where the pack uses it (encode/decode/check_*, device, dtype, config)."""

    def __init__(self):
        super().__init__()
        self.config = DemoCodecConfig()
        # no weights; this buffer tells where the codec lives (ComfyUI's memory manager moves it like a model)
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    # the Wan2.1 VAE's shape rules and error messages (they read only self.config)
    latent_shape = WanVAE.latent_shape
    check_video = WanVAE.check_video
    check_latent = WanVAE.check_latent

    def check_compatible(self, dit_config) -> None:
        if dit_config.out_dim != self.config.z_dim:
            raise ValueError(f"the demo codec makes {self.config.z_dim}-channel latents; the DiT works on "
                             f"{dit_config.out_dim} channels")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, normalized: bool = True, tile=None, memory_budget=None,
               callback=None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> [B, 16, 1 + (F-1)/4, H/8, W/8] (normalized by default).
        tile and memory_budget are accepted for interface parity and ignored (the codec is tiny)."""
        self.check_video(video)
        video = video.to(self.device, torch.float32)
        st = self.config.stride[0]
        b, c, f, h, w = video.shape
        # temporal groups: frame 0 alone, then 4 frames each (the causal layout of the Wan VAE)
        rest = video[:, :, 1:].unflatten(2, ((f - 1) // st, st)).mean(3)
        frames = torch.cat([video[:, :, :1], rest], dim=2)  # [B, 3, T, H, W]
        t = frames.shape[2]
        pooled = F.avg_pool2d(frames.transpose(1, 2).reshape(b * t, c, h, w), BLOCK)  # [B*T, 3, H/4, W/4]
        folded = F.pixel_unshuffle(pooled, 2)  # [B*T, 12, H/8, W/8], channel = colour * 4 + dy * 2 + dx
        hl, wl = folded.shape[-2:]
        features = folded.reshape(b, t, COLOUR_CHANNELS, hl, wl).transpose(1, 2) * GAIN
        z = torch.cat([features, features.new_zeros(b, self.config.z_dim - COLOUR_CHANNELS, t, hl, wl)], 1)
        if callback is not None:
            callback(1, 1)
        return z if normalized else denormalize_latent(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return denormalize_latent(z)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, normalized: bool = True, tile=None, memory_budget=None,
               callback=None) -> torch.Tensor:
        """[B, 16, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w] clamped to [-1, 1]."""
        self.check_latent(latent)
        z = latent.to(self.device, torch.float32)
        return self._decode(z if normalized else normalize_latent(z), callback)

    def decode_with_grad(self, latent: torch.Tensor, *, normalized: bool = True, tile=None,
                         checkpointed: bool = True) -> torch.Tensor:
        """`decode` with autograd (WanVAE.decode_with_grad's contract: reward fine-tuning decodes through
        it). tile and checkpointed are accepted for interface parity and ignored (no activations to keep)."""
        self.check_latent(latent)
        z = latent.to(self.device, torch.float32)
        return self._decode(z if normalized else normalize_latent(z), None)

    def _decode(self, z: torch.Tensor, callback) -> torch.Tensor:
        b, _, t, h, w = z.shape
        features = z[:, :COLOUR_CHANNELS].transpose(1, 2).reshape(b * t, COLOUR_CHANNELS, h, w) / GAIN
        pooled = F.pixel_shuffle(features, 2)  # [B*T, 3, 2h, 2w]
        s = self.config.stride[1]
        pixels = F.interpolate(pooled, scale_factor=BLOCK, mode="nearest").reshape(b, t, 3, s * h, s * w)
        pixels = pixels.transpose(1, 2)  # [B, 3, T, H, W]
        st = self.config.stride[0]
        # latent frame 0 -> video frame 0; every later latent frame -> its group of 4 frames
        video = torch.cat([pixels[:, :, :1], pixels[:, :, 1:].repeat_interleave(st, dim=2)], dim=2)
        if callback is not None:
            callback(1, 1)
        return video.clamp(-1.0, 1.0)
