"""The few ComfyUI services the nodes use, with plain fallbacks so the nodes also work outside ComfyUI.

Everything ComfyUI-specific is imported lazily here and nowhere else: model folders
(`folder_paths`) and the memory manager (`comfy.model_management` + `ModelPatcher`). Outside ComfyUI
the model folders are `$WANFLOW_MODELS_DIR/<category>` (default `./models/<category>`) and models
stay on the CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

MODEL_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


def _comfy(name: str):
    """Import a ComfyUI module, or None when not running inside ComfyUI."""
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # ImportError outside ComfyUI; anything else means ComfyUI is half-present
        return None


def fallback_models_dir() -> Path:
    return Path(os.environ.get("WANFLOW_MODELS_DIR", "models"))


def list_model_files(category: str) -> list[str]:
    """Files of a model-folder category (e.g. 'diffusion_models') as relative paths for a dropdown."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return folder_paths.get_filename_list(category)
    root = fallback_models_dir() / category
    if not root.is_dir():
        return []
    return sorted(
        str(p.relative_to(root)).replace(os.sep, "/")
        for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS
    )


def model_file_path(category: str, name: str) -> str:
    """Absolute path of a dropdown entry; a clear error when it does not exist."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return folder_paths.get_full_path_or_raise(category, name)
    root = fallback_models_dir() / category
    path = (root / name).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise FileNotFoundError(f"model file {name!r} not found in {root}")
    return str(path)


class ModelHandle:
    """What travels through a WANFLOW_MODEL socket: a wan_core model plus, inside ComfyUI, the
    ModelPatcher that lets ComfyUI's memory manager load it to the GPU and offload it when
    others need the memory."""

    def __init__(self, module, name: str = ""):
        self.module = module
        self.name = name
        self.patcher = None
        mm = _comfy("comfy.model_management")
        mp = _comfy("comfy.model_patcher")
        if mm is not None and mp is not None:
            self.patcher = mp.ModelPatcher(module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    @property
    def config(self):
        return self.module.config

    def load(self):
        """Make the module ready on its compute device (ComfyUI decides which) and return it."""
        if self.patcher is not None:
            _comfy("comfy.model_management").load_models_gpu([self.patcher])
        return self.module

    def __repr__(self):
        return f"<WanFlow model {self.name or self.module.config.variant}>"
