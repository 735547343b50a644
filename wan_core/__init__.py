"""wan_core: a plain-PyTorch implementation of the Wan 2.1 / 2.2 video models (no ComfyUI needed).

Importing this package is cheap; submodules load torch-heavy pieces only when used.
"""
from .attention import attention, register_attention_backend, set_attention_backend
from .clip_vision import WanClipVision, load_clip_vision
from .dit_checkpoint import load_dit, load_dit_config
from .model import WanConfig, WanDiT
from .tensor_files import CheckpointError
from .text_encoder import WanTextEncoder, load_text_encoder
from .vae import VAEConfig, WanVAE
from .vae_checkpoint import load_vae

__all__ = [
    "WanConfig", "WanDiT", "load_dit", "load_dit_config", "CheckpointError",
    "attention", "register_attention_backend", "set_attention_backend",
    "load_clip_vision", "WanClipVision", "load_text_encoder", "WanTextEncoder",
    "load_vae", "WanVAE", "VAEConfig",
]
__version__ = "0.1.0"
