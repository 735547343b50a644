"""The networks, as `nn.Module`s built from a config (no file formats here; see `wan_core.formats`):
the Wan DiT (`dit`), the Wan 2.1 / 2.2 VAE (`vae`, tiled execution in `vae_tiling`), the UMT5 text
encoder and its tokenizer (`text_encoder`, `tokenizer`), CLIP vision (`clip_vision`), the attention
backend registry (`attention`) and the casting layers that keep weights small (`layers`)."""
from .clip_vision import WanClipVision
from .dit import WanConfig, WanDiT
from .text_encoder import WanTextEncoder, pad_context
from .vae import VAEConfig, WanVAE

__all__ = ["WanConfig", "WanDiT", "VAEConfig", "WanVAE", "WanTextEncoder", "pad_context", "WanClipVision"]
