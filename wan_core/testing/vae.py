"""Tiny random Wan VAEs (released structure and latent channels, narrow widths) for tests and demos."""
from __future__ import annotations

import torch

from ..models.vae import VAE_VERSIONS, VAEConfig, WanVAE

TINY_WIDTHS = {"2.1": (8, 8), "2.2": (8, 12)}  # (encoder dim, decoder dim)


def tiny_vae_config(version: str = "2.1") -> VAEConfig:
    enc, dec = TINY_WIDTHS[version]
    return VAEConfig(version=version, enc_dim=enc, dec_dim=dec, z_dim=VAE_VERSIONS[version].latent_channels)


def randomize_vae_(vae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with unit-scale activations: convs ~ N(0, 1/fan_in), gains near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return vae


def random_vae(version: str = "2.1", seed: int = 0, config: VAEConfig | None = None) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(config or tiny_vae_config(version))
    return randomize_vae_(vae, seed).eval().requires_grad_(False)


def diffusers_vae_kwargs(cfg: VAEConfig) -> dict:
    """The AutoencoderKLWan config with the same architecture (for parity tests)."""
    from ..models.vae import LATENT_MEAN, LATENT_STD
    kw = dict(base_dim=cfg.enc_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
              temperal_downsample=list(cfg.temporal_down), latents_mean=LATENT_MEAN[cfg.version],
              latents_std=LATENT_STD[cfg.version])
    if cfg.version == "2.2":
        kw.update(decoder_base_dim=cfg.dec_dim, is_residual=True, in_channels=3 * cfg.patch ** 2,
                  out_channels=3 * cfg.patch ** 2, patch_size=cfg.patch, scale_factor_spatial=cfg.stride[1])
    return kw
