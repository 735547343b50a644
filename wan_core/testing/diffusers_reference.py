"""Optional bridge to diffusers' WanTransformer3DModel, the independent reference implementation.

Used by the tests and the self-check to compare numbers; diffusers is not a runtime dependency.
"""
from __future__ import annotations

import torch

from ..formats.dit import diffusers_to_official_name
from ..models.dit import WanConfig


def diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def diffusers_model(cfg: WanConfig, official_state: dict):
    """A diffusers WanTransformer3DModel holding the given official-name weights (fp32)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, image_dim=1280 if cfg.image_branch else None,
        added_kv_proj_dim=cfg.dim if cfg.image_branch else None,
        pos_embed_seq_len=cfg.flf_pos_tokens or None,
    )
    target = model.state_dict()
    mapped = {k: official_state[diffusers_to_official_name(k)].float() for k in target if diffusers_to_official_name(k) in official_state}
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise KeyError(f"no official weight for diffusers keys {missing[:5]}")
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def diffusers_forward(model, cfg: WanConfig, x, timestep, context, clip_fea=None, y=None) -> torch.Tensor:
    """Call diffusers with our calling convention (it wants y concatenated, text padded to 512,
    and FLF2V image features as [2B, 257, 1280])."""
    if y is not None:
        x = torch.cat([x, y], dim=1)
    context = torch.nn.functional.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
    if clip_fea is not None and cfg.flf_pos_tokens:
        clip_fea = clip_fea.reshape(-1, 257, clip_fea.shape[-1])
    with torch.no_grad():
        return model(x, timestep, context, encoder_hidden_states_image=clip_fea, return_dict=False)[0]


def diffusers_vae(vae):
    """A diffusers AutoencoderKLWan holding the same weights as our WanVAE `vae` (same dtype)."""
    from diffusers import AutoencoderKLWan

    from ..formats.vae import official_key_map
    from .vae import diffusers_vae_kwargs

    ref = AutoencoderKLWan(**diffusers_vae_kwargs(vae.config))
    ours = vae.state_dict()
    names = official_key_map(list(ref.state_dict()))
    ref.load_state_dict({key: ours[name] for name, key in names.items()}, strict=True)
    return ref.to(vae.dtype).eval().requires_grad_(False)
