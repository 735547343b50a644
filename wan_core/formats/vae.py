"""Loading Wan VAEs from the layouts users have: the official .pth (Wan2.1_VAE.pth,
Wan2.2_VAE.pth), ComfyUI's safetensors (official names, often bf16/fp16), and diffusers'
`vae/` folder (AutoencoderKLWan names, renamed here to the official ones).

The variant (2.1 or 2.2) and the channel widths come from the tensor shapes, so tiny test models
and the released files go through the same code.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..io.dtypes import FP8_DTYPES
from ..io.tensor_files import CheckpointError, NonFiniteCheck, open_tensor_file, open_weights_folder
from ..models.vae import VAE_VERSIONS, VAEConfig, WanVAE, latent_stats

PREFIXES = ("first_stage_model.", "vae.")  # full-checkpoint prefixes that may wrap a VAE


def open_vae_source(source):
    """-> (tensor source, path) for a file, a diffusers `vae/` folder or a pipeline root."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not path.is_dir():
        return open_tensor_file(path), path
    if (path / "vae").is_dir():
        path = path / "vae"
    return open_weights_folder(path, "a Wan VAE (a diffusers vae/ folder or a .pth)"), path


# --------------------------------------------------------------------------------------------
# diffusers AutoencoderKLWan names -> official names
# --------------------------------------------------------------------------------------------

_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _resnet(rest: str) -> str:
    for new, old in _RESNET.items():
        if rest.startswith(new + ".") or rest == new:
            return old + rest[len(new):]
    return rest  # resample.* / time_conv.* keep their names


def diffusers_to_official(key: str, is_22: bool) -> str:
    """Rename one diffusers AutoencoderKLWan key (Wan2.1 or Wan2.2 VAE) to the official name."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for new, old in top.items():
        if key.startswith(new):
            return old + key[len(new):]
    side, rest = key.split(".", 1)
    rules = [
        (r"conv_in\.(.*)", lambda m: f"conv1.{m[1]}"),
        (r"norm_out\.(.*)", lambda m: f"head.0.{m[1]}"),
        (r"conv_out\.(.*)", lambda m: f"head.2.{m[1]}"),
        (r"mid_block\.resnets\.(\d+)\.(.*)", lambda m: f"middle.{2 * int(m[1])}.{_resnet(m[2])}"),
        (r"mid_block\.attentions\.0\.(.*)", lambda m: f"middle.1.{m[1]}"),
        # Wan2.2 (residual stages with named sub-blocks)
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda m: f"downsamples.{m[1]}.downsamples.{m[2]}.{_resnet(m[3])}"),
        (r"down_blocks\.(\d+)\.downsampler\.(.*)", lambda m: f"downsamples.{m[1]}.downsamples.2.{m[2]}"),
        (r"up_blocks\.(\d+)\.upsampler\.(.*)", lambda m: f"upsamples.{m[1]}.upsamples.3.{m[2]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda m: (
            f"upsamples.{m[1]}.upsamples.{m[2]}.{_resnet(m[3])}" if is_22  # Wan2.2: named sub-blocks
            else f"upsamples.{4 * int(m[1]) + int(m[2])}.{_resnet(m[3])}")),  # Wan2.1: flattened, 4 per stage
        (r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", lambda m: f"upsamples.{4 * int(m[1]) + 3}.{m[2]}"),
        # Wan2.1 encoder: flat index kept
        (r"down_blocks\.(\d+)\.(.*)", lambda m: f"downsamples.{m[1]}.{_resnet(m[2])}"),
    ]
    for pattern, build in rules:
        m = re.fullmatch(pattern, rest)
        if m:
            return f"{side}.{build(m)}"
    return key


def official_key_map(keys: list[str]) -> dict[str, str]:
    """official name -> file key, for official, ComfyUI (maybe prefixed) and diffusers files."""
    is_22 = any(".downsamples.0.downsamples." in k or "downsampler." in k or "upsampler." in k for k in keys)
    out = {}
    diffusers = any("mid_block." in k for k in keys)
    for k in keys:
        name = k
        for p in PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
        if diffusers:
            name = diffusers_to_official(name, is_22)
        out[name] = k
    return out


def detect_vae_config(shape_of, names: set, path) -> VAEConfig:
    """Version and widths from the shapes (official names)."""
    needed = ("conv2.weight", "encoder.conv1.weight", "decoder.head.2.weight")
    if not all(n in names for n in needed):
        sample = sorted(names)[:5]
        kind = _guess_kind(names)
        raise CheckpointError(
            f"{path}: not a Wan VAE - expected tensors {list(needed)}, found {len(names)} tensors like {sample}"
            + (f" (this looks like {kind})" if kind else "")
        )
    z = shape_of("conv2.weight")[0]
    enc = shape_of("encoder.conv1.weight")[0]
    in_ch = shape_of("encoder.conv1.weight")[1]
    dec = shape_of("decoder.head.2.weight")[1]
    by_input = {3 * v.patch ** 2: v for v in VAE_VERSIONS.values()}  # RGB x the pixels folded into channels
    residual = "encoder.downsamples.0.downsamples.0.residual.0.gamma" in names  # Wan2.2's named stages
    spec = VAE_VERSIONS["2.2"] if residual else by_input.get(in_ch, VAE_VERSIONS["2.1"])
    if in_ch != 3 * spec.patch ** 2:
        expected = " or ".join(f"{c} ({v.name})" for c, v in by_input.items())
        raise CheckpointError(f"{path}: encoder input has {in_ch} channels; expected {expected}")
    return VAEConfig(version=spec.version, enc_dim=enc, dec_dim=dec, z_dim=z)


def _guess_kind(names) -> str:
    joined = " ".join(list(names)[:50])
    if "blocks.0.self_attn" in joined or "patch_embedding" in joined:
        return "a Wan diffusion model (DiT); load it with the diffusion model loader"
    if "encoder.block." in joined or "token_embedding" in joined or "shared.weight" in joined:
        return "a T5 text encoder"
    if "vision_model." in joined or "visual." in joined:
        return "a CLIP vision model"
    return ""


def load_vae(source, *, dtype: torch.dtype | None = None, device=None) -> WanVAE:
    """Load a Wan2.1 or Wan2.2 VAE from an official .pth, a ComfyUI safetensors or a diffusers folder.

    dtype: the compute/storage dtype (default fp32, as the official code runs the VAE).
    """
    tensors, path = open_vae_source(source)
    name_map = official_key_map(list(tensors.keys()))
    cfg = detect_vae_config(lambda n: tuple(tensors.shape(name_map[n])), set(name_map), path)
    dtype = dtype or torch.float32
    with torch.device("meta"):
        vae = WanVAE(cfg)
    expected = {name: tuple(t.shape) for name, t in vae.state_dict().items()}
    missing = sorted(expected.keys() - set(name_map))
    unexpected = sorted(set(name_map) - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match a Wan{cfg.version} VAE (enc {cfg.enc_dim}, dec {cfg.dec_dim}, z {cfg.z_dim}) - "
            f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
        )
    state = {}
    non_finite = NonFiniteCheck(path, "VAE")
    for name, want in expected.items():
        t = tensors.read(name_map[name])
        if tuple(t.shape) != want:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {want}")
        state[name] = (t.float() if t.dtype in FP8_DTYPES else t).to(dtype)
        non_finite.check(name_map[name], state[name])
    non_finite.warn()
    vae.load_state_dict(state, strict=True, assign=True)
    vae.latent_mean, vae.latent_inv_std = latent_stats(cfg)  # built on meta: make them real
    return vae.to(device or "cpu").eval().requires_grad_(False)

