"""Video size <-> latent shape, for a DiT (its latent channels pick the VAE geometry, see
`models.vae.VAE_VERSIONS`) or for a VAE: the checks every front end (nodes, command line) makes
before it builds a latent or a conditioning.
"""
from __future__ import annotations

from ..models.dit import PATCH_SIZE
from ..models.vae import latent_channel_choices, vae_for_latent


def latent_stride(config) -> tuple[int, int, int]:
    """(frames, height, width) pixels per latent pixel for a DiT config: the stride of the VAE whose
    latents have the DiT's `out_dim` channels (Wan2.1 VAE: 4x8x8, Wan2.2 VAE: 4x16x16)."""
    spec = vae_for_latent(config.out_dim)
    if spec is None:
        raise ValueError(f"{config.variant or config.model_type}: a {config.out_dim}-channel latent matches no Wan VAE "
                         f"({latent_channel_choices()} channels)")
    return spec.stride


def check_frames(frames: int) -> None:
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 1 + 4k (1, 5, ..., 81); found {frames}")


def check_video_size(config, width: int, height: int, frames: int) -> None:
    """A clear error unless width x height x frames makes whole DiT tokens for this DiT config."""
    size = latent_stride(config)[1] * config.patch_size[1]
    bad = [f"{name} {v}" for name, v in (("width", width), ("height", height)) if v % size]
    if bad:
        raise ValueError(f"{config.variant or config.model_type}: width and height must be multiples of {size} "
                         f"(VAE stride x 2x2 patches); found {', '.join(bad)}")
    check_frames(frames)


def video_latent_shape(config, batch: int, width: int, height: int, frames: int) -> tuple:
    """[batch, C, 1 + (frames-1)/4, height/s, width/s] of a video for this DiT config (checked)."""
    check_video_size(config, width, height, frames)
    st, sh, sw = latent_stride(config)
    return (batch, config.out_dim, (frames - 1) // st + 1, height // sh, width // sw)


def check_vae_video_size(vae_config, width: int, height: int, frames: int) -> None:
    """The same check from a VAE config (image-to-video: the VAE encodes the start frame):
    width and height multiples of the VAE stride x the DiT patch, frames 1 + 4k."""
    size = vae_config.stride[1] * PATCH_SIZE[1]
    if width % size or height % size or (frames - 1) % vae_config.stride[0]:
        raise ValueError(f"width and height must be multiples of {size} and frames 1 + 4k for this VAE; "
                         f"found {width}x{height}, {frames} frames")
