"""The files users have <-> the networks of `wan_core.models`, both ways: official releases, ComfyUI
repackaged single files (16-bit, fp8, scaled fp8), diffusers folders, sharded index files, .pth.
Key names and layouts: docs/formats.md."""
from .clip_vision import load_clip_vision
from .dit import comfyui_state_dict, load_dit, load_dit_config, save_official
from .text_encoder import load_text_encoder
from .vae import load_vae

__all__ = ["load_dit", "load_dit_config", "save_official", "comfyui_state_dict", "load_vae",
           "load_text_encoder", "load_clip_vision"]
