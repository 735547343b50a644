"""Generation nodes: an empty video latent of the right shape, and the flow sampler."""
from __future__ import annotations

import torch

from ..wan_core.generation.conditioning import concat_y
from ..wan_core.generation.defaults import official_defaults
from ..wan_core.generation.pipeline import Conditioning, check_seed, generate, seeded_noise
from ..wan_core.generation.preview import latent_rgb_preview
from ..wan_core.generation.shapes import latent_stride, video_latent_shape
from ..wan_core.models.vae import denormalize_latent, normalize_latent
from ..wan_core.sampling.solvers import SOLVERS, finite_number
from .comfy_bridge import intermediate_device, progress_callback
from .models import MODEL_TYPES, dit_config, load_dit

AUTO = "0 = the official default of the model"


class WanFlowEmptyLatent:
    """An empty (zero) video latent sized for the model."""

    DESCRIPTION = ("An empty Wan video LATENT [batch, C, 1 + (frames-1)/4, height/s, width/s] for text-to-video: C and "
                   "s come from the model (16 channels and s = 8 for Wan2.1 / Wan2.2 A14B, 48 and 16 for TI2V-5B). "
                   "Width and height must be multiples of 16 (32 for TI2V-5B), frames 1 + 4k.")
    CATEGORY = "WanFlow/latent"
    FUNCTION = "empty"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("A zero raw latent, interchangeable with native Wan latents.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPES, {"tooltip": "The diffusion model the latent is for (sets channels and stride)."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 8192, "step": 16, "tooltip": "Video width in pixels."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 8192, "step": 16, "tooltip": "Video height in pixels."}),
                "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4,
                                   "tooltip": "Number of video frames, 1 + 4k (81 = 5 s at 16 fps)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Videos per run."}),
            }
        }

    def empty(self, model, width, height, frames, batch_size):
        shape = video_latent_shape(dit_config(model), batch_size, width, height, frames)
        return ({"samples": torch.zeros(shape, device=intermediate_device())},)


def latent_samples(latent, name: str) -> torch.Tensor:
    """The 'samples' tensor of a LATENT input; a clear error naming the input for anything else."""
    if not isinstance(latent, dict):
        raise ValueError(f"{name}: expected a LATENT (a dict with 'samples' [B, C, T, h, w]); "
                         f"found {type(latent).__name__}")
    if "samples" not in latent:
        raise ValueError(f"{name}: expected a LATENT with 'samples' [B, C, T, h, w]; found a dict with keys "
                         f"{sorted(map(str, latent))}")
    samples = latent["samples"]
    if not torch.is_tensor(samples):
        raise ValueError(f"{name}: expected LATENT 'samples' to be a tensor [B, C, T, h, w]; "
                         f"found {type(samples).__name__}")
    if samples.numel() == 0:
        raise ValueError(f"{name}: the LATENT is empty (samples of shape {tuple(samples.shape)})")
    return samples


class ClipVisionFeatures:
    """CLIP features in conditioning, under the attribute name ComfyUI's native Wan models read."""

    def __init__(self, penultimate_hidden_states: torch.Tensor):
        self.penultimate_hidden_states = penultimate_hidden_states


def read_conditioning(conditioning, name: str) -> tuple[torch.Tensor, dict]:
    if not isinstance(conditioning, list) or not conditioning or not torch.is_tensor(conditioning[0][0]):
        raise ValueError(f"{name}: expected CONDITIONING (from WanFlow Text Encode or a text encode node); "
                         f"found {type(conditioning).__name__}")
    if len(conditioning) > 1:
        raise ValueError(f"{name}: WanFlow Sampler takes one conditioning entry; found {len(conditioning)} "
                         "(combined or area conditioning is not supported)")
    cond, extras = conditioning[0][0], conditioning[0][1]
    if cond.ndim != 3:
        raise ValueError(f"{name}: expected text features [1, tokens, dim]; found {tuple(cond.shape)}")
    return cond, extras


def text_context(cond: torch.Tensor, cfg, batch: int) -> torch.Tensor:
    if cond.shape[-1] != cfg.text_dim:
        raise ValueError(f"the text features are {cond.shape[-1]} wide but the model expects {cfg.text_dim} "
                         "(Wan uses the UMT5-XXL encoder, 4096)")
    cond = cond[:, :cfg.text_len]  # the official encoder keeps at most 512 tokens
    return cond.expand(batch, -1, -1) if cond.shape[0] == 1 else cond


def image_inputs(extras: dict, cfg, latent_shape):
    """clip_fea and y from conditioning extras (ours or ComfyUI's native Wan image-to-video nodes:
    concat_latent_image is a raw latent, concat_mask has 0 on given frames)."""
    clip, y = None, None
    out = extras.get("clip_vision_output")
    if cfg.image_branch:
        if out is None:
            raise ValueError(f"{cfg.variant or 'this model'} needs CLIP vision features: connect a CLIP vision model "
                             "to WanFlow Image To Video")
        clip = out.penultimate_hidden_states.float()
    image = extras.get("concat_latent_image")
    if cfg.in_dim == 36:
        if image is None:
            raise ValueError(f"{cfg.variant or 'this image-to-video model'} needs a start image: use WanFlow Image To Video")
        B, _, T, h, w = latent_shape
        if tuple(image.shape[2:]) != (T, h, w):
            raise ValueError(f"the image conditioning is for a latent {tuple(image.shape[2:])} (T, h, w) but the latent "
                             f"is {(T, h, w)}: use the same width, height and frames")
        mask = extras.get("concat_mask")
        known = torch.zeros_like(image[:, :4]) if mask is None else 1 - mask.float()
        y = concat_y(normalize_latent(image.float()), known)
        y = y.expand(B, -1, -1, -1, -1) if y.shape[0] == 1 else y
    if clip is not None and clip.shape[0] == 1:
        clip = clip.expand(latent_shape[0], -1, -1)
    return clip, y


class WanFlowSampler:
    """Flow-matching sampler for Wan 2.1 / 2.2 (one model or the two A14B experts)."""

    DESCRIPTION = (
        "Samples a Wan video latent with the official flow-matching conventions: UniPC (the official default), "
        "Euler or Heun on the shifted sigma schedule, classifier-free guidance with the negative prompt (both "
        "passes batched). Wan2.2 A14B: connect the high-noise expert to 'model' and the low-noise one to "
        "'model_low_noise'; each step goes to the expert its timestep belongs to (boundary 0.875 T2V / 0.9 "
        "I2V) with its own cfg. Image-to-video conditioning comes from WanFlow Image To Video (or ComfyUI's "
        "WanImageToVideo). 0 in steps/shift/cfg/boundary = the official setting of the model. Noise is drawn "
        "on the CPU from the seed, so results do not depend on the GPU."
    )
    CATEGORY = "WanFlow/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised raw latent: decode it with WanFlow VAE Decode or VAEDecode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPES, {"tooltip": "The diffusion model (WanFlow or native loader); for Wan2.2 A14B the high-noise expert."}),
                "positive": ("CONDITIONING", {"tooltip": "What the video should show."}),
                "negative": ("CONDITIONING", {"tooltip": "What to avoid (classifier-free guidance)."}),
                "latent": ("LATENT", {"tooltip": "From WanFlow Empty Latent / Image To Video, or a VAE-encoded video with denoise < 1."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed (noise is drawn on the CPU)."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                                  "tooltip": f"Sampling steps; {AUTO} (50, or 40 for I2V 14B and Wan2.2 A14B)."}),
                "solver": (list(SOLVERS), {"default": "unipc", "tooltip": "unipc: official default, 2nd order multistep; "
                                           "euler: 1st order; heun: 2nd order, two model calls per step."}),
                "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                    "tooltip": f"Sigma shift; {AUTO} (5; 3 for I2V 480p, 12 for Wan2.2 T2V A14B, 16 for FLF2V)."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                  "tooltip": f"Guidance scale (of the high-noise expert with two); {AUTO} (5; 4 for Wan2.2 T2V, 3.5 for Wan2.2 I2V)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "1 = from pure noise; below 1 = video-to-video from the input latent."}),
            },
            "optional": {
                "model_low_noise": (MODEL_TYPES, {"tooltip": "Wan2.2 A14B: the low-noise expert."}),
                "cfg_low_noise": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                            "tooltip": f"Guidance scale of the low-noise expert; {AUTO} (3 T2V, 3.5 I2V)."}),
                "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005,
                                       "tooltip": f"Expert switch as a fraction of 1000 timesteps; {AUTO} (0.875 T2V, 0.9 I2V)."}),
            },
        }

    def sample(self, model, positive, negative, latent, seed, steps, solver, shift, cfg, denoise,
               model_low_noise=None, cfg_low_noise=0.0, boundary=0.0):
        seed = check_seed(seed, "WanFlow Sampler: seed")
        for name, value in (("shift", shift), ("cfg", cfg), ("denoise", denoise), ("cfg_low_noise", cfg_low_noise),
                            ("boundary", boundary)):
            finite_number(value, f"WanFlow Sampler: {name}")
        config = dit_config(model)
        raw = latent_samples(latent, "latent")
        if raw.ndim != 5:
            raise ValueError(f"latent: expected a video LATENT {{'samples': [B, C, T, h, w]}}; found {tuple(raw.shape)}")
        if raw.shape[1] != config.out_dim:
            raise ValueError(f"the latent has {raw.shape[1]} channels but {config.variant or 'the model'} samples "
                             f"{config.out_dim}-channel latents (TI2V-5B: 48, others: 16); make it for this model")
        _, sh, sw = latent_stride(config)
        d = official_defaults(config, two_experts=model_low_noise is not None,
                              width=raw.shape[-1] * sw, height=raw.shape[-2] * sh)
        pos, pos_extras = read_conditioning(positive, "positive")
        neg, neg_extras = read_conditioning(negative, "negative")
        clip, y = image_inputs(pos_extras, config, raw.shape)
        cond = Conditioning(text_context(pos, config, raw.shape[0]), text_context(neg, config, raw.shape[0]), clip, y)

        mask = latent.get("noise_mask")
        if mask is not None and not torch.is_tensor(mask):
            raise ValueError(f"latent: noise_mask must be a tensor [B, 1, T, h, w]; found {type(mask).__name__}")
        if mask is not None:
            mask = mask.unsqueeze(1) if mask.ndim == 4 else mask  # [B, T, h, w] -> [B, 1, T, h, w]
            if mask.ndim != 5 or mask.shape[1] != 1 or mask.shape[-3:] != raw.shape[-3:]:
                raise ValueError(f"noise_mask: expected [B, 1, T, h, w] at the latent's size {tuple(raw.shape[-3:])}; "
                                 f"found {tuple(mask.shape)}")
        dit = load_dit(model)
        low = load_dit(model_low_noise) if model_low_noise is not None else None
        start = normalize_latent(raw.float()) if (denoise < 1 or mask is not None) else None
        steps = steps or d.steps
        x0 = generate(
            dit, seeded_noise(raw.shape, seed), cond, steps=steps, shift=shift or d.shift,
            guide_scale=cfg or d.guide_scale, solver=solver, low_noise_model=low,
            guide_scale_low=cfg_low_noise or d.guide_scale_low, boundary=boundary or d.boundary,
            latent=start, noise_mask=mask, denoise=denoise, callback=progress_callback(latent_rgb_preview),
        )
        out = dict(latent)
        out["samples"] = denormalize_latent(x0).to(intermediate_device())
        return (out,)


NODE_CLASS_MAPPINGS = {"WanFlowEmptyLatent": WanFlowEmptyLatent, "WanFlowSampler": WanFlowSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowEmptyLatent": "WanFlow Empty Latent", "WanFlowSampler": "WanFlow Sampler"}
