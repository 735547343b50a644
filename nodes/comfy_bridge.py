"""The few ComfyUI services the nodes use, with plain fallbacks so the nodes also work outside ComfyUI.

Everything ComfyUI-specific is imported lazily here and nowhere else: model folders
(`folder_paths`) and the memory manager (`comfy.model_management` + `ModelPatcher`). Outside ComfyUI
the model folders are `$WANFLOW_MODELS_DIR/<category>` (default `./models/<category>`) and models
stay on the CPU.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from ..wan_core.io.tensor_files import MODEL_SUFFIXES
from ..wan_core.io.write import save_safetensors


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
        for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES
    )


def register_model_category(category: str) -> None:
    """Make ComfyUI know a model-folder category core does not define (e.g. 'reward_models'):
    `<models_dir>/<category>` with the usual weight extensions. Left alone when already defined
    (by core or by extra_model_paths.yaml); outside ComfyUI `$WANFLOW_MODELS_DIR/<category>` needs nothing."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None or category in folder_paths.folder_names_and_paths:
        return
    folder = os.path.join(folder_paths.models_dir, category)
    folder_paths.folder_names_and_paths[category] = ([folder], set(folder_paths.supported_pt_extensions))


def comfy_resource(*parts: str) -> Path | None:
    """A file or folder shipped inside ComfyUI's `comfy` package (e.g. 'sd1_tokenizer'), or None when
    not running inside ComfyUI or when it is absent."""
    comfy = _comfy("comfy")
    for root in getattr(comfy, "__path__", None) or []:  # `comfy` is a namespace package (no __init__.py)
        path = Path(root).joinpath(*parts)
        if path.exists():
            return path
    return None


def compute_device() -> torch.device:
    """Where ComfyUI runs models (its torch device); outside ComfyUI the GPU when there is one."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class PatcherRoot(torch.nn.Module):
    """The module handed to ComfyUI's ModelPatcher. The patcher writes bookkeeping attributes on
    its model (`device`, `model_loaded_weight_memory`, ...); this container takes them, so our
    models keep their own read-only `device` / `dtype` properties."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


# where ComfyUI puts each kind of model: (load device, offload device) functions of model_management
DEVICE_ROLES = {
    "diffusion": ("get_torch_device", "unet_offload_device"),
    "vae": ("vae_device", "vae_offload_device"),
    "text_encoder": ("text_encoder_device", "text_encoder_offload_device"),
    "clip_vision": ("text_encoder_device", "text_encoder_offload_device"),
}


class ModelHandle:
    """What travels through a WANFLOW_* model socket: a wan_core model plus, inside ComfyUI, the
    ModelPatcher that lets ComfyUI's memory manager load it to the GPU and offload it when
    others need the memory. `on_cpu=True` keeps it on the CPU (e.g. the 5.7B text encoder).

    A diffusion handle may carry LoRAs [(ParsedLora, strength)]: handles made by `with_loras` share
    the module (and patcher), and `load()` merges the handle's LoRAs into the module's weights,
    restoring the original weights first when another handle's LoRAs are merged there."""

    loras: tuple = ()

    def __init__(self, module, name: str = "", role: str = "diffusion", on_cpu: bool = False):
        self.module = module
        self.name = name
        self.role = role
        self.patcher = None
        mm = _comfy("comfy.model_management")
        mp = _comfy("comfy.model_patcher")
        if mm is not None and mp is not None:
            load, offload = (getattr(mm, f)() for f in DEVICE_ROLES[role])
            if on_cpu:
                load = offload = torch.device("cpu")
            self.patcher = mp.ModelPatcher(PatcherRoot(module), load_device=load, offload_device=offload)

    @property
    def config(self):
        return self.module.config

    def with_loras(self, loras) -> "ModelHandle":
        """A new handle on the same module and patcher with `loras` added after this handle's."""
        handle = copy.copy(self)
        handle.loras = tuple(self.loras) + tuple(loras)
        return handle

    def load(self):
        """Make the module ready on its compute device (ComfyUI decides which) and return it."""
        if self.patcher is not None:
            _comfy("comfy.model_management").load_models_gpu([self.patcher])
        if __package__ and self.role == "diffusion":
            from ..wan_core.lora.merge import set_applied_loras  # lazy: tests/e2e also loads this file standalone
            set_applied_loras(self.module, self.loras)  # a no-op while no handle of this module has LoRAs
        return self.module

    def __repr__(self):
        label = self.name or getattr(getattr(self.module, "config", None), "variant", "") or type(self.module).__name__
        return f"<WanFlow {self.role} {label}>"


def progress_callback(preview=None):
    """A wan_core `callback(done, total, *state)` driving a ComfyUI progress bar; every update is also
    a cancellation point. With `preview` (state[0] -> PIL image), each update also sends that image
    to the browser. Outside ComfyUI: None."""
    utils = _comfy("comfy.utils")
    mm = _comfy("comfy.model_management")
    if utils is None or mm is None:
        return None
    cli = _comfy("comfy.cli_args")
    size = getattr(getattr(cli, "args", None), "preview_size", 512)
    bar = None

    def update(done: int, total: int, *state) -> None:
        nonlocal bar
        if bar is None:
            bar = utils.ProgressBar(total)
        image = ("JPEG", preview(state[0]), size) if preview is not None and state else None
        bar.update_absolute(done, total, image)
        mm.throw_exception_if_processing_interrupted()

    return update


def free_memory_bytes(device) -> int | None:
    """Free memory on a GPU device (ComfyUI's view when available); None on the CPU (no budget)."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return int(mm.get_free_memory(device))
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def intermediate_device() -> torch.device:
    """Where IMAGE / LATENT / CONDITIONING outputs live (ComfyUI: the CPU unless --gpu-only)."""
    mm = _comfy("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def folder_roots(category: str) -> list[Path]:
    """The folders of a model category (for finding tokenizer folders next to text encoders)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return [Path(p) for p in folder_paths.get_folder_paths(category)]
    return [fallback_models_dir() / category]


def save_folder(category: str) -> Path:
    """Where new files of a model category go (e.g. 'loras'): the folder named like the category when
    there is one (ComfyUI lists the legacy models/unet first for diffusion_models), else the first."""
    roots = folder_roots(category)
    return next((r for r in roots if r.name == category), roots[0])


def fallback_output_dir() -> Path:
    return Path(os.environ.get("WANFLOW_OUTPUT_DIR", "output"))


def output_root() -> Path:
    """ComfyUI's output folder ($WANFLOW_OUTPUT_DIR or ./output outside ComfyUI)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return fallback_output_dir()


def input_root() -> Path:
    """ComfyUI's input folder ($WANFLOW_INPUT_DIR or ./input outside ComfyUI)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return Path(os.environ.get("WANFLOW_INPUT_DIR", "input"))


def confined_path(root: Path, name: str, suffix: str = "") -> Path:
    """root/name+suffix for a user-given name, refusing anything that would land outside root."""
    expected = f"a relative name inside {root} such as 'wanflow/my_lora'"
    if not name.strip() or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"expected {expected}; found {name!r}")
    path = (root / (name.strip() + suffix)).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"expected {expected}; found {name!r}, which leads outside it")
    return path


def refresh_file_list(category: str) -> None:
    """Make a file just written show up in the category's dropdowns at once."""
    folder_paths = _comfy("folder_paths")
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(category, None)


def progress_text(text: str) -> None:
    """Show a line of text on the running node (ComfyUI's progress text); no-op outside ComfyUI."""
    server = _comfy("server")
    utils = _comfy("comfy_execution.utils")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    context = utils.get_executing_context() if utils is not None and hasattr(utils, "get_executing_context") else None
    if instance is None or context is None or not hasattr(instance, "send_progress_text"):
        return
    instance.send_progress_text(text, context.node_id)


# ---- shared by the trainer nodes ---------------------------------------------------------------

SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pil_image(image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE [1, H, W, 3] in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def model_name(model) -> str:
    """What a trained file's metadata names as its base model."""
    return model.name if isinstance(model, ModelHandle) else "ComfyUI MODEL"


def state_dir(name: str, tag: str = "") -> Path:
    """Where a trainer node keeps its resumable state: output/wanflow_training/<name><tag>."""
    return confined_path(output_root() / "wanflow_training", name + tag)


def save_full_model(dit, output_name: str, save_dtype: str, metadata: dict):
    """Write a fully fine-tuned DiT to models/diffusion_models (official keys) -> (ModelHandle, path)."""
    dtype = SAVE_DTYPES[save_dtype]
    path = confined_path(save_folder("diffusion_models"), output_name, ".safetensors")
    weights = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in dit.state_dict().items()}
    save_safetensors(weights, path, metadata=metadata)
    refresh_file_list("diffusion_models")
    return ModelHandle(dit.to(dtype).eval(), name=str(path.name)), path  # as saved
