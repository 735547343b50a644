"""What a diffusion-model socket of ours accepts: our WANFLOW_MODEL handle, or a MODEL from ComfyUI's
native loader (UNETLoader), whose Wan weights we use in place through a WanDiT sharing them."""
from __future__ import annotations

import copy

import torch

from ..wan_core.formats.dit import detect_config
from ..wan_core.models.dit import WanDiT
from .comfy_bridge import ModelHandle, _comfy

MODEL_TYPES = "WANFLOW_MODEL,MODEL"  # a socket accepting both (ComfyUI matches comma-separated types)
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # ComfyUI's scaled-fp8 layers
_IGNORED_SUFFIXES = (".scale_input", ".input_scale")


def is_native(model) -> bool:
    return hasattr(model, "model") and hasattr(getattr(model, "model"), "diffusion_model")


def _native_state(patcher) -> tuple[dict, dict]:
    sd = patcher.model.diffusion_model.state_dict()
    scales = {k[: k.rfind(".")]: sd.pop(k) for k in list(sd) if k.endswith(_SCALE_SUFFIXES)}
    for k in [k for k in sd if k.endswith(_IGNORED_SUFFIXES) or k == "scaled_fp8"]:
        sd.pop(k)
    return sd, scales


def dit_config(model):
    """The WanConfig behind a model socket (no weights moved)."""
    if isinstance(model, ModelHandle):
        return model.config
    if is_native(model):
        sd, _ = _native_state(model)
        return detect_config(lambda k: tuple(sd[k].shape), set(sd), None, "", "ComfyUI MODEL")
    raise TypeError(f"expected a WanFlow model (WanFlow Load Diffusion Model) or a native Wan MODEL; found {type(model).__name__}")


def load_dit(model) -> WanDiT:
    """The WanDiT to sample with, on its compute device. A native MODEL is loaded by ComfyUI's memory
    manager (LoRA patches applied) and wrapped without copying its weights."""
    if isinstance(model, ModelHandle):
        return model.load()
    if not is_native(model):
        dit_config(model)  # raises the clear error
    _comfy("comfy.model_management").load_models_gpu([model], force_full_load=True)
    sd, scales = _native_state(model)
    cfg = detect_config(lambda k: tuple(sd[k].shape), set(sd), None, "", "ComfyUI MODEL")
    with torch.device("meta"):
        dit = WanDiT(cfg).requires_grad_(False)
    try:
        dit.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"this native MODEL is not a plain Wan DiT WanFlow can share weights with: {e}") from e
    for name, scale in scales.items():
        dit.get_submodule(name).weight_scale = scale
    cast = getattr(model.model, "manual_cast_dtype", None)
    if cast is not None or any(p.dtype.itemsize == 1 for p in dit.parameters()):
        dit.compute_dtype_override = cast or torch.bfloat16
    return dit.eval()


def full_finetune_copy(model) -> torch.nn.Module:
    """The DiT behind a model socket, copied for a full fine-tune (the input stays as it is: ComfyUI
    may reuse it); fp8-stored weights are refused."""
    source = load_dit(model)
    if any(p.dtype.itemsize == 1 for p in source.parameters()):
        raise ValueError("full fine-tuning needs 16/32-bit weights; this model is stored in fp8: load it with "
                         "weight_dtype 'default' or 'bf16' from a bf16/fp16 file")
    with torch.inference_mode(False):
        return copy.deepcopy(source)
