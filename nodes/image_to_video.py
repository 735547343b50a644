"""Image-to-video conditioning node: start (and end) frame -> conditioning + latent for the sampler."""
from __future__ import annotations

import torch

from ..wan_core.generation.conditioning import clip_features, image_to_video_inputs
from .comfy_bridge import intermediate_device, progress_callback
from .sampling import ClipVisionFeatures


def _frame(image, name: str, index: int) -> torch.Tensor:
    """One IMAGE frame [H, W, 3] in 0..1 -> [1, 3, H, W] in [-1, 1]."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] < 3:
        found = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE [N, H, W, 3]; found {found}")
    if image.numel() == 0:
        raise ValueError(f"{name}: the IMAGE batch is empty (shape {tuple(image.shape)}); expected at least one "
                         f"frame [N >= 1, H, W, 3]")
    return image[index, ..., :3].movedim(-1, 0)[None].float() * 2 - 1


def _with(conditioning, values: dict):
    """A copy of CONDITIONING with extra keys on every entry (like ComfyUI's conditioning_set_values)."""
    return [[c[0], {**c[1], **values}] for c in conditioning]


class WanFlowImageToVideo:
    """Condition a Wan image-to-video model on a start frame (and optionally an end frame)."""

    DESCRIPTION = (
        "Image-to-video conditioning as the official pipelines build it. With the Wan2.1 VAE (I2V-14B, FLF2V-14B, "
        "Wan2.2 I2V-A14B): the frame(s) and grey in between are VAE-encoded and put in the conditioning with the "
        "frame mask, plus CLIP vision features when a CLIP vision model is connected (needed by Wan2.1 I2V/FLF2V, "
        "not by Wan2.2); an end image makes it first-last-frame (FLF2V). With the Wan2.2 VAE (TI2V-5B): the "
        "encoded start frame becomes latent frame 0, kept during sampling. Images are center-cropped to the "
        "aspect ratio of width x height, then resized (bicubic); CLIP sees the original frames, as in the official code."
    )
    CATEGORY = "WanFlow/conditioning"
    FUNCTION = "condition"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the image.", "Negative conditioning with the image.",
                       "The latent to sample (empty, or with the start frame for TI2V-5B).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "From WanFlow Text Encode."}),
                "negative": ("CONDITIONING", {"tooltip": "From WanFlow Text Encode."}),
                "vae": ("WANFLOW_VAE", {"tooltip": "Wan2.1 VAE for I2V/FLF2V/Wan2.2 A14B, Wan2.2 VAE for TI2V-5B."}),
                "start_image": ("IMAGE", {"tooltip": "The first frame (the first image of the batch is used)."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 8192, "step": 16, "tooltip": "Video width in pixels."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 8192, "step": 16, "tooltip": "Video height in pixels."}),
                "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "Number of frames, 1 + 4k."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Videos per run."}),
            },
            "optional": {
                "clip_vision": ("WANFLOW_CLIP_VISION", {"tooltip": "Wan2.1 I2V / FLF2V: CLIP ViT-H (clip_vision_h)."}),
                "end_image": ("IMAGE", {"tooltip": "FLF2V: the last frame (the last image of the batch is used)."}),
            },
        }

    def condition(self, positive, negative, vae, start_image, width, height, frames, batch_size,
                  clip_vision=None, end_image=None):
        first_image = _frame(start_image, "start_image", 0)  # checked before the VAE loads
        last_image = None if end_image is None else _frame(end_image, "end_image", -1)
        module = vae.load()
        inputs = image_to_video_inputs(module, first_image, last_image, width, height, frames,
                                       callback=progress_callback())
        if inputs.latent is not None:  # Wan2.2 TI2V-5B: the start frame is latent frame 0
            samples = inputs.latent.float().expand(batch_size, -1, -1, -1, -1).to(intermediate_device())
            return positive, negative, {"samples": samples.contiguous(),
                                        "noise_mask": inputs.noise_mask.to(intermediate_device())}
        values = {"concat_latent_image": inputs.image_latent.float().to(intermediate_device()),
                  "concat_mask": (1 - inputs.known).float().to(intermediate_device())}  # ComfyUI's convention: 0 = given
        if clip_vision is not None:  # CLIP sees the original frames (official)
            fea = clip_features(clip_vision.load(), first_image, last_image)
            values["clip_vision_output"] = ClipVisionFeatures(fea.float().to(intermediate_device()))
        samples = torch.zeros(batch_size, *inputs.image_latent.shape[1:], device=intermediate_device())
        return _with(positive, values), _with(negative, values), {"samples": samples}


NODE_CLASS_MAPPINGS = {"WanFlowImageToVideo": WanFlowImageToVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowImageToVideo": "WanFlow Image To Video"}
