"""wan_core: a plain-PyTorch implementation of the Wan 2.1 / 2.2 video models (no ComfyUI needed).

The subpackages, bottom layer first (each imports only from the ones above it in this list):
  io          tensor files, key ordering, dtypes/fp8, atomic writes: no model knowledge
  models      the networks (DiT, VAE, UMT5 text encoder, CLIP vision), attention and cast layers
  formats     the files users have <-> those networks, both ways (official, ComfyUI, diffusers, fp8)
  sampling    flow-matching solvers (UniPC, Euler, Heun) and their sigma schedules
  generation  text/image-to-video: CFG, expert routing, image conditioning, per-release defaults, previews
  lora        LoRA adapters for training, key formats of every trainer, merging into a model
  training    the resumable-run skeleton, flow-matching training, media datasets, latent cache, FSDP, CLI
  rewards     reward models (CLIP family, a toy colour reward) and SRPO reward fine-tuning
  demo        the embedded demo: procedural videos, a stand-in codec and text encoder, train + sample
  testing     tiny random-weight model builders, the diffusers bridge, the self-check (never imported at run time)
Facts the code relies on are written down in the repository's docs/ folder.
"""
from .formats.clip_vision import load_clip_vision
from .formats.dit import load_dit, load_dit_config
from .formats.text_encoder import load_text_encoder
from .formats.vae import load_vae
from .io.tensor_files import CheckpointError
from .models.attention import attention, register_attention_backend, set_attention_backend
from .models.clip_vision import WanClipVision
from .models.dit import WanConfig, WanDiT
from .models.text_encoder import WanTextEncoder
from .models.vae import VAEConfig, WanVAE
from .version import __version__

__all__ = [
    "WanConfig", "WanDiT", "load_dit", "load_dit_config", "CheckpointError",
    "attention", "register_attention_backend", "set_attention_backend",
    "load_clip_vision", "WanClipVision", "load_text_encoder", "WanTextEncoder",
    "load_vae", "WanVAE", "VAEConfig", "__version__",
]
