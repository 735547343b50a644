"""Reward model loader node: HPS v2.1 / PickScore / CLIP from models/reward_models (or the colour demo
reward, which needs no file), as a WANFLOW_REWARD for SRPO fine-tuning."""
from __future__ import annotations

from pathlib import Path

import torch

from ..wan_core.io.tensor_files import MODEL_SUFFIXES
from ..wan_core.rewards.base import ColourReward
from ..wan_core.rewards.clip import KIND_LABELS, find_clip_tokenizer, is_clip_tokenizer_folder, load_reward_model
from .comfy_bridge import (
    comfy_resource,
    compute_device,
    folder_roots,
    list_model_files,
    model_file_path,
    register_model_category,
)

REWARD_CATEGORY = "reward_models"
COLOUR_ENTRY = "colour (demo, no file)"
KINDS = {"auto": "auto", **{label: kind for kind, label in KIND_LABELS.items()}}
AUTO_TOKENIZER = "auto (next to the weights, else ComfyUI's CLIP tokenizer)"
COMFY_TOKENIZER = "ComfyUI's CLIP tokenizer (comfy/sd1_tokenizer)"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ["default", "cpu"]

register_model_category(REWARD_CATEGORY)  # ComfyUI has no such folder of its own: models/reward_models


def _folders_under_roots(is_wanted) -> dict[str, Path]:
    """{relative name: folder} of the folders under models/reward_models that `is_wanted` accepts."""
    found = {}
    for root in folder_roots(REWARD_CATEGORY):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
            name = str(folder.relative_to(root)).replace("\\", "/")
            if name not in found and is_wanted(folder):
                found[name] = folder
    return found


def _is_hf_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))


def hf_reward_folders() -> dict[str, Path]:
    return _folders_under_roots(_is_hf_model_folder)


def reward_entries() -> list[str]:
    """Weight files and Hugging Face folders under models/reward_models, then the colour demo entry.
    Files inside a listed folder belong to it and are not listed on their own."""
    folders = hf_reward_folders()
    files = [f for f in list_model_files(REWARD_CATEGORY)
             if Path(f).suffix.lower() in MODEL_SUFFIXES and not any(f.startswith(d + "/") for d in folders)]
    return sorted([*folders, *files]) + [COLOUR_ENTRY]


def tokenizer_entries() -> list[str]:
    folders = _folders_under_roots(lambda p: is_clip_tokenizer_folder(p) and not _is_hf_model_folder(p))
    return [AUTO_TOKENIZER, COMFY_TOKENIZER, *folders]


def _reward_path(name: str) -> Path:
    folders = hf_reward_folders()
    if name in folders:
        return folders[name]
    return Path(model_file_path(REWARD_CATEGORY, name))


def _comfy_tokenizer() -> Path | None:
    return comfy_resource("sd1_tokenizer")


def _tokenizer_dir(choice: str, weights: Path) -> Path | None:
    if choice == AUTO_TOKENIZER:
        return find_clip_tokenizer(weights) or _comfy_tokenizer()  # None: the loader explains where it looked
    if choice == COMFY_TOKENIZER:
        found = _comfy_tokenizer()
        if found is None:
            raise FileNotFoundError("ComfyUI's CLIP tokenizer (comfy/sd1_tokenizer) is only available inside "
                                    "ComfyUI; choose the auto tokenizer or a tokenizer folder under models/reward_models")
        return found
    folders = _folders_under_roots(is_clip_tokenizer_folder)
    if choice not in folders:
        raise FileNotFoundError(f"tokenizer folder {choice!r} not found under models/reward_models (expected "
                                f"tokenizer.json or vocab.json + merges.txt in it)")
    return folders[choice]


class WanFlowLoadRewardModel:
    """Load a CLIP-family reward model (HPS v2.1, PickScore, CLIP) or the colour demo reward."""

    DESCRIPTION = (
        "Loads a reward model for SRPO fine-tuning from models/reward_models: HPS v2.1 (HPS_v2.1_compressed.pt, an "
        "open_clip ViT-H-14 checkpoint), PickScore (the PickScore_v1 Hugging Face folder) or a plain CLIP (open_clip "
        "file or HF folder). The reward is frozen and differentiable in the pixels. HPS scores are cosines; PickScore "
        "and CLIP scores are CLIP logits divided by 20 (as the official SRPO does). 'colour (demo, no file)' is a "
        "tiny built-in reward (does the image's colour match the colour named in the prompt?) for the SRPO demo."
    )
    CATEGORY = "WanFlow/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("WANFLOW_REWARD",)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("The frozen reward model, for WanFlow SRPO training.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (reward_entries(), {
                    "tooltip": "A reward file or Hugging Face folder in models/reward_models, or the built-in colour "
                               "demo reward (no file needed).",
                }),
                "kind": (list(KINDS), {
                    "default": "auto",
                    "tooltip": "How the model's cosine becomes a score. auto: HPS v2.1 for open_clip files, PickScore "
                               "for folders named PickScore, else CLIP.",
                }),
                "tokenizer": (tokenizer_entries(), {
                    "default": AUTO_TOKENIZER,
                    "tooltip": "auto: a CLIP tokenizer (vocab.json + merges.txt or tokenizer.json) in the model folder "
                               "or next to the file, else the one bundled with ComfyUI (comfy/sd1_tokenizer, the same "
                               "BPE open_clip uses).",
                }),
                "dtype": (list(DTYPES), {
                    "default": "fp32",
                    "tooltip": "Precision of the reward's weights. bf16 halves the memory of the 1B-parameter ViT-H "
                               "models; scores stay close (features are normalized in fp32).",
                }),
                "device": (DEVICES, {
                    "default": "default",
                    "tooltip": "default: ComfyUI's compute device (the GPU). cpu: keep the reward off the GPU.",
                }),
            }
        }

    def load(self, reward, kind="auto", tokenizer=AUTO_TOKENIZER, dtype="fp32", device="default"):
        target = torch.device("cpu") if device == "cpu" else compute_device()
        # outside ComfyUI's inference mode: SRPO backpropagates through the reward to the pixels
        with torch.inference_mode(False):
            if reward == COLOUR_ENTRY:
                return (ColourReward().to(target),)
            path = _reward_path(reward)
            model = load_reward_model(path, KINDS.get(kind, kind), tokenizer_dir=_tokenizer_dir(tokenizer, path),
                                      device=target, dtype=DTYPES[dtype])
        return (model,)


NODE_CLASS_MAPPINGS = {"WanFlowLoadRewardModel": WanFlowLoadRewardModel}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowLoadRewardModel": "WanFlow Load Reward Model"}
