"""VAE nodes: IMAGE frames <-> LATENT through a Wan VAE.

LATENT holds raw (un-normalized) Wan latents [B, C, T, H, W], the convention of ComfyUI's native
Wan nodes, so our latents and native ones interchange; normalization happens inside the pack.
"""
from __future__ import annotations

import torch

from .comfy_bridge import free_memory_bytes, intermediate_device, progress_callback
from .sampling import latent_samples

TILE_TOOLTIP = ("Spatial tile size in pixels. 0 = automatic: tiles only when the clip would not fit in free GPU "
                "memory. Tiles overlap by a quarter and are blended; smaller tiles use less memory.")


def _tile(vae, tile_size: int):
    """Tile size in latent pixels (None = automatic)."""
    if tile_size <= 0:
        return None
    s = vae.config.stride[1]
    return (max(tile_size // s, 2),) * 2


def _budget(vae):
    """Memory left for activations once the VAE is loaded (None on the CPU: no tiling)."""
    free = free_memory_bytes(vae.device)
    return None if free is None else int(free * 0.8)


class WanFlowVAEEncode:
    """Encode video frames (an IMAGE batch) to a Wan LATENT."""

    DESCRIPTION = ("Encodes frames (IMAGE, frames as the batch) with a Wan VAE into a raw video LATENT [1, C, T, h, w] "
                   "like ComfyUI's native Wan nodes. The frame count must be 1 + 4k (1, 5, ..., 81).")
    CATEGORY = "WanFlow/latent"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Raw (un-normalized) Wan latent, interchangeable with native Wan latents.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pixels": ("IMAGE", {"tooltip": "Frames [N, H, W, 3] in 0..1; N = 1 + 4k; H, W multiples of 8 (Wan2.1) or 16 (Wan2.2)."}),
                "vae": ("WANFLOW_VAE", {"tooltip": "From WanFlow Load VAE."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 32, "tooltip": TILE_TOOLTIP}),
            }
        }

    def encode(self, pixels, vae, tile_size=0):
        if not torch.is_tensor(pixels) or pixels.ndim != 4 or pixels.shape[-1] < 3:
            found = tuple(pixels.shape) if torch.is_tensor(pixels) else type(pixels).__name__
            raise ValueError(f"WanFlow VAE Encode: expected IMAGE frames [N, H, W, 3], found {found}")
        if pixels.numel() == 0:
            raise ValueError(f"WanFlow VAE Encode: the IMAGE batch is empty (shape {tuple(pixels.shape)}); expected "
                             f"at least one frame [N >= 1, H, W, 3]")
        module = vae.load()
        video = pixels[..., :3].movedim(-1, 0).unsqueeze(0) * 2 - 1  # [1, 3, N, H, W] in [-1, 1]
        module.check_video(video)  # clear errors (frame count, size) before any transfer or compute
        video = video.to(module.device)
        latent = module.encode(video, normalized=False, tile=_tile(module, tile_size),
                               memory_budget=_budget(module), callback=progress_callback())
        return ({"samples": latent.to(intermediate_device())},)


class WanFlowVAEDecode:
    """Decode a Wan LATENT to video frames (an IMAGE batch)."""

    DESCRIPTION = ("Decodes a Wan video LATENT (ours or a native one) to frames: T latent frames give 1 + 4(T-1) images. "
                   "Batches of several videos come out one after another.")
    CATEGORY = "WanFlow/latent"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Frames [N, H, W, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "A raw Wan latent [B, C, T, h, w] (16 channels for Wan2.1, 48 for Wan2.2)."}),
                "vae": ("WANFLOW_VAE", {"tooltip": "From WanFlow Load VAE (the one matching the latent)."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 32, "tooltip": TILE_TOOLTIP}),
            }
        }

    def decode(self, samples, vae, tile_size=0):
        latent = latent_samples(samples, "WanFlow VAE Decode: samples") if not torch.is_tensor(samples) else samples
        if latent.numel() == 0:
            raise ValueError(f"WanFlow VAE Decode: the LATENT is empty (shape {tuple(latent.shape)})")
        if latent.ndim == 4:
            latent = latent.unsqueeze(2)  # an image latent [B, C, H, W] is one latent frame
        module = vae.load()
        module.check_latent(latent)
        video = module.decode(latent.to(module.device), normalized=False, tile=_tile(module, tile_size),
                              memory_budget=_budget(module), callback=progress_callback())
        images = ((video + 1) / 2).clamp(0, 1).movedim(1, -1)  # [B, F, H, W, 3]
        return (images.reshape(-1, *images.shape[2:]).to(intermediate_device(), torch.float32),)


NODE_CLASS_MAPPINGS = {"WanFlowVAEEncode": WanFlowVAEEncode, "WanFlowVAEDecode": WanFlowVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowVAEEncode": "WanFlow VAE Encode", "WanFlowVAEDecode": "WanFlow VAE Decode"}
