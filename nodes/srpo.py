"""SRPO reward fine-tuning nodes (Direct-Align + Semantic Relative Preference), thin adapters over
wan_core.rewards.srpo. Text-to-image on one latent frame; LoRA by default (saved to models/loras in
ComfyUI's format), full fine-tune to models/diffusion_models.

WanFlow SRPO Train shows the decisions made on every run (models, reward, prompts, output name,
steps, learning rate, rank, image size, mode, seed); the method's other settings come from an
optional WanFlow SRPO Settings node (the defaults without it). Every widget is made from a field of
`SRPOConfig` / `SRPORunOptions`. The earlier all-widgets node (WanFlowSRPOTrain) stays registered,
deprecated, so saved graphs keep loading.
"""
from __future__ import annotations

import torch

from ..wan_core.generation.defaults import default_negative_prompt
from ..wan_core.io.write import check_writable
from ..wan_core.lora import metadata as meta
from ..wan_core.lora.adapters import save_lora
from ..wan_core.rewards.srpo import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    Prompt,
    Rollout,
    SRPOConfig,
    SRPORunOptions,
    reward_curve_image,
    train_srpo,
)
from ..wan_core.training.run import StopReason
from .comfy_bridge import (
    SAVE_DTYPES,
    confined_path,
    model_name,
    pil_image,
    progress_callback,
    progress_text,
    refresh_file_list,
    save_folder,
    save_full_model,
    state_dir,
)
from .config_widgets import config_values, read_settings, settings_output, widgets_for
from .lora import model_with_lora
from .models import MODEL_TYPES, dit_config, full_finetune_copy, load_dit
from .training import LORA_TARGETS


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _negative_text(negative_prompt: str, cfg) -> str:
    """The rollout's CFG negative: the given one, else Wan's default for the variant (none for others)."""
    if negative_prompt.strip():
        return negative_prompt
    try:
        return default_negative_prompt(cfg.variant or "wan2.1-t2v")
    except ValueError:  # not a Wan release (the demo model): an empty negative prompt
        return ""


class WanFlowSRPOTrain:
    """Deprecated (every setting on the node; saved graphs keep loading): WanFlow SRPO Train with its settings
    node replaces it."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated: use WanFlow SRPO Train (with WanFlow SRPO Settings). Reward fine-tuning with SRPO (Direct-Align + Semantic Relative Preference), text-to-image. Each step rolls "
        "out an image without gradient (Euler + CFG; the high-noise expert takes the steps above the boundary when "
        "connected), re-noises it with the same noise inside the σ window, takes one gradient-carrying model step "
        "down (denoise branch) and one up (inversion branch), recovers the image in one step, decodes it with the "
        "frozen VAE and scores it with the frozen reward: control words go to the reward's text only (positive "
        "words preferred, negative words rejected; swapped on the inversion branch). A held-out prompt set is "
        "scored every eval_every steps with drift monitors (saturation, latent channel statistics, flow-matching "
        "loss); training stops when one leaves its bound or the reward stops improving, and the best weights are "
        "kept. The LoRA goes to models/loras (ComfyUI format). Interrupting saves a resumable state."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = (MODEL_TYPES, "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("model", "lora_path", "reward_curve", "heldout_images")
    OUTPUT_TOOLTIPS = ("The model with the trained LoRA (or the fine-tuned weights).",
                       "Path of the saved LoRA (or model) file.",
                       "Held-out reward per evaluation (top) and the hinge loss per step (bottom).",
                       "The held-out prompts' images at the last evaluation.")

    @classmethod
    def INPUT_TYPES(cls):
        d = SRPOConfig()
        return {
            "required": {
                "model": (MODEL_TYPES, {"tooltip": "The model to fine-tune: the Wan2.2 A14B low-noise expert, or any Wan DiT."}),
                "vae": ("WANFLOW_VAE", {"tooltip": "Decodes the recovered image for the reward (frozen)."}),
                "text_encoder": ("WANFLOW_TEXT_ENCODER", {"tooltip": "Encodes the prompts for the DiT."}),
                "reward": ("WANFLOW_REWARD", {"tooltip": "From WanFlow Load Reward Model (frozen)."}),
                "prompts": ("STRING", {"multiline": True, "default": "a red square\na blue square",
                                       "tooltip": "Training prompts, one per line."}),
                "heldout_prompts": ("STRING", {"multiline": True, "default": "a green square",
                                               "tooltip": "Held-out prompts, one per line: scored with fixed seeds every eval_every steps."}),
                "output_name": ("STRING", {"default": "wanflow/my_srpo_lora", "tooltip": (
                    "File name (no extension) of the result. The resumable state lives in "
                    "output/wanflow_training/<name>_srpo: queueing again with the same settings resumes.")}),
                "steps": ("INT", {"default": d.steps, "min": 1, "max": 100_000, "tooltip": "Optimizer steps (one rollout each)."}),
                "learning_rate": ("FLOAT", {"default": d.learning_rate, "min": 1e-8, "max": 1.0, "step": 1e-6, "round": False,
                                            "tooltip": "AdamW learning rate."}),
                "lora_rank": ("INT", {"default": d.lora_rank, "min": 1, "max": 512, "tooltip": "LoRA rank."}),
                "width": ("INT", {"default": d.width, "min": 16, "max": 4096, "step": 16, "tooltip": "Image width."}),
                "height": ("INT", {"default": d.height, "min": 16, "max": 4096, "step": 16, "tooltip": "Image height."}),
                "sigma_low": ("FLOAT", {"default": d.sigma_window[0], "min": 0.01, "max": 0.99, "step": 0.005,
                                        "tooltip": "Bottom of the σ window the target σ* is drawn from."}),
                "sigma_high": ("FLOAT", {"default": d.sigma_window[1], "min": 0.01, "max": 0.99, "step": 0.005,
                                         "tooltip": "Top of the σ window (keep it below the A14B boundary 0.875 for the low-noise expert)."}),
                "positive_words": ("STRING", {"default": ", ".join(POSITIVE_WORDS), "tooltip": (
                    "Control words the reward should prefer, comma-separated (prefixed to the reward's text only, cycled by step).")}),
                "negative_words": ("STRING", {"default": ", ".join(NEGATIVE_WORDS), "tooltip": (
                    "Control words the reward should move away from, comma-separated.")}),
                "discount_denoise_low": ("FLOAT", {"default": d.discount_denoise[0], "min": 0.0, "max": 10.0, "step": 0.01,
                                                   "tooltip": "κ of the denoise branch at the window's low σ (linear to the high value)."}),
                "discount_denoise_high": ("FLOAT", {"default": d.discount_denoise[1], "min": 0.0, "max": 10.0, "step": 0.01,
                                                    "tooltip": "κ of the denoise branch at the window's high σ."}),
                "discount_inversion_low": ("FLOAT", {"default": d.discount_inversion[0], "min": 0.0, "max": 10.0, "step": 0.01,
                                                     "tooltip": "κ of the inversion branch at the window's low σ."}),
                "discount_inversion_high": ("FLOAT", {"default": d.discount_inversion[1], "min": 0.0, "max": 10.0, "step": 0.01,
                                                      "tooltip": "κ of the inversion branch at the window's high σ."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Fixes the noise, σ* draws, prompt order and LoRA init."}),
            },
            "optional": {
                "model_high_noise": (MODEL_TYPES, {"tooltip": "Wan2.2 A14B: the high-noise expert, used (frozen) for the rollout's steps above the boundary."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": (
                    "Negative prompt of the rollout's CFG (empty: Wan's default negative prompt).")}),
                "guidance": ("FLOAT", {"default": d.guidance, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Rollout CFG of the trained model (1 = none)."}),
                "guidance_high": ("FLOAT", {"default": d.guidance_high, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Rollout CFG of the high-noise expert."}),
                "rollout_steps": ("INT", {"default": d.rollout_steps, "min": 1, "max": 200, "tooltip": "Euler steps of each rollout."}),
                "rollout_shift": ("FLOAT", {"default": d.rollout_shift, "min": 1.0, "max": 20.0, "step": 0.1, "tooltip": "σ shift of the rollout grid."}),
                "boundary": ("FLOAT", {"default": d.boundary, "min": 0.01, "max": 0.99, "step": 0.005, "tooltip": "A14B expert switch (σ)."}),
                "branches": (["both", "denoise"], {"default": d.branches, "tooltip": "both = denoise + inversion (needs srp); denoise only."}),
                "srp": ("BOOLEAN", {"default": d.srp, "tooltip": "Semantic Relative Preference (control words). Off: the plain reward."}),
                "hinge": ("FLOAT", {"default": d.hinge, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip": "τ in the loss ReLU(τ − score)."}),
                "delta_fraction": ("FLOAT", {"default": d.delta_fraction, "min": 0.001, "max": 0.49, "step": 0.01,
                                             "tooltip": "Δσ as a fraction of the window (shrunk at the edges)."}),
                "eval_every": ("INT", {"default": d.eval_every, "min": 0, "max": 10_000, "tooltip": "Steps between held-out evaluations (0: only at the end)."}),
                "max_saturation_rise": ("FLOAT", {"default": d.max_saturation_rise, "min": 0.0, "max": 1.0, "step": 0.005,
                                                  "tooltip": "Stop when the held-out images' saturation rises more than this (pixel units)."}),
                "max_channel_shift": ("FLOAT", {"default": d.max_channel_shift, "min": 0.0, "max": 100.0, "step": 0.05,
                                                "tooltip": "Stop when a latent channel's mean moves more than this many of its std."}),
                "max_fm_loss_ratio": ("FLOAT", {"default": d.max_fm_loss_ratio, "min": 1.0, "max": 100.0, "step": 0.05,
                                                "tooltip": "Stop when the flow-matching loss on held-out latents grows by this factor."}),
                "keep": (["best", "last"], {"default": d.keep, "tooltip": "End with the best in-bounds evaluated weights, or the last ones."}),
                "patience": ("INT", {"default": d.patience, "min": 0, "max": 1000, "tooltip": "Stop after this many evaluations without a better held-out reward (0 = never)."}),
                "max_grad_norm": ("FLOAT", {"default": d.max_grad_norm, "min": 0.0, "max": 100.0, "step": 0.01, "tooltip": "Gradient clipping (0 = off)."}),
                "lora_alpha": ("FLOAT", {"default": d.lora_alpha, "min": 0.01, "max": 1024.0, "step": 0.5, "tooltip": "LoRA scale is alpha / rank."}),
                "lora_targets": (LORA_TARGETS, {"default": d.lora_targets, "tooltip": "Which linear layers get a LoRA."}),
                "mode": (["lora", "full"], {"default": "lora", "tooltip": "lora (saved to models/loras) or full fine-tune (models/diffusion_models)."}),
                "precision": (["bf16", "fp32"], {"default": d.precision, "tooltip": "bf16 autocast over fp32 master weights (CUDA), or fp32."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": d.gradient_checkpointing, "tooltip": "Recompute each block in the backward pass."}),
                "decode_tile": ("INT", {"default": 0, "min": 0, "max": 512, "tooltip": "VAE decode tile in latent pixels (0 = whole image)."}),
                "save_dtype": (list(SAVE_DTYPES), {"default": "bf16", "tooltip": "dtype of a saved full model."}),
            },
        }

    def run(self, model, vae, text_encoder, reward, prompts, heldout_prompts, output_name, steps, learning_rate,
            lora_rank, width, height, sigma_low, sigma_high, positive_words, negative_words, discount_denoise_low,
            discount_denoise_high, discount_inversion_low, discount_inversion_high, seed, model_high_noise=None,
            **options):
        values = dict(options, steps=steps, learning_rate=learning_rate, lora_rank=lora_rank, width=width,
                      height=height, sigma_window_low=sigma_low, sigma_window_high=sigma_high,
                      positive_words=positive_words, negative_words=negative_words,
                      discount_denoise_low=discount_denoise_low, discount_denoise_high=discount_denoise_high,
                      discount_inversion_low=discount_inversion_low, discount_inversion_high=discount_inversion_high,
                      seed=seed)
        config = SRPOConfig(**config_values(SRPOConfig, values))
        return srpo_train(model, vae, text_encoder, reward, prompts, heldout_prompts, output_name, config,
                          SRPORunOptions(**config_values(SRPORunOptions, values)), model_high_noise=model_high_noise)


def srpo_train(model, vae, text_encoder, reward, prompts: str, heldout_prompts: str, output_name: str,
               config: SRPOConfig, options: SRPORunOptions, *, model_high_noise=None) -> dict:
    """The SRPO nodes' work: encode the prompts, run SRPO, save the LoRA (or full model), report."""
    train_texts, heldout_texts = _lines(prompts), _lines(heldout_prompts)
    if not train_texts or not heldout_texts:
        raise ValueError("SRPO needs at least one training prompt and one held-out prompt (one per line); found "
                         f"{len(train_texts)} and {len(heldout_texts)}")
    if not hasattr(reward, "image_features") or not hasattr(reward, "text_features"):
        raise ValueError(f"reward: expected a WANFLOW_REWARD (WanFlow Load Reward Model); found {type(reward).__name__}")
    folder = save_folder("loras" if config.mode == "lora" else "diffusion_models")
    check_writable(confined_path(folder, output_name, ".safetensors"), "output file")  # before any work
    cfg = dit_config(model)
    codec = vae.load()
    codec.check_compatible(cfg)
    source = full_finetune_copy(model) if config.mode == "full" else load_dit(model)
    high = load_dit(model_high_noise) if model_high_noise is not None else None

    encoder = text_encoder.load()
    guided = config.guidance > 1 or (high is not None and config.guidance_high > 1)
    texts = train_texts + heldout_texts + ([_negative_text(options.negative_prompt, cfg)] if guided else [])
    with torch.inference_mode(False):
        features = [f.detach().float().cpu().clone() for f in encoder.encode(texts)]
    for f in features:
        if f.shape[-1] != cfg.text_dim:
            raise ValueError(f"the text encoder gives {f.shape[-1]}-wide features, the model takes {cfg.text_dim}")
    train_prompts = [Prompt(t, f[:cfg.text_len]) for t, f in zip(train_texts, features)]
    heldout = [Prompt(t, f[:cfg.text_len]) for t, f in zip(heldout_texts, features[len(train_texts):])]
    negative = features[-1][:cfg.text_len] if guided else None

    bar = progress_callback()

    def on_step(step, total, metrics):
        reward = metrics.extra.get("heldout_reward")
        note = f" · held-out reward {reward:.4f}" if reward is not None else ""
        progress_text(f"step {step}/{total} · loss {metrics.loss:.4f} · score {metrics.extra['score']:.4f}{note}")
        if bar is not None:
            bar(step, total)

    tile = (options.decode_tile,) * 2 if options.decode_tile else None
    result = train_srpo(Rollout(source, codec, negative, high), reward, train_prompts, heldout, config,
                        decode_tile=tile, state_dir=state_dir(output_name, "_srpo"), callback=on_step)
    try:
        if result.stopped is not None and result.stopped.reason is StopReason.NON_FINITE:
            raise RuntimeError(f"SRPO stopped: {result.stopped}. Lower the learning rate; the saved state "
                               "resumes from the last good step.")
        summary = _summary(result)
        metadata = {meta.BASE_MODEL: model_name(model), meta.VARIANT: source.config.variant,
                    meta.STEPS: str(result.steps_done), meta.SRPO_BEST_STEP: str(result.best_step),
                    meta.SRPO_SUMMARY: summary}
        if config.mode == "lora":
            lora_sd = result.network.comfy_state_dict()
            path = confined_path(save_folder("loras"), output_name, ".safetensors")
            save_lora(path, lora_sd, metadata={**metadata, meta.RANK: str(config.lora_rank),
                                               meta.ALPHA: str(config.lora_alpha),
                                               meta.TARGETS: config.lora_targets})
            refresh_file_list("loras")
            out_model = model_with_lora(model, lora_sd, 1.0)[0]
        else:
            out_model, path = save_full_model(source, output_name, options.save_dtype, metadata)
    finally:
        if result.network is not None:
            result.network.remove()  # the hooks served training; the output carries the LoRA
    images = result.last_images.permute(0, 2, 3, 1).contiguous() if result.last_images is not None else torch.zeros(1, 64, 64, 3)
    text = f"{path}\n{summary}"
    return {"ui": {"text": [text]}, "result": (out_model, str(path), pil_image(reward_curve_image(result)), images)}


def _summary(result) -> str:
    first, last = result.evaluations[0], result.evaluations[-1]
    best = next((e for e in result.evaluations if e.step == result.best_step), last)
    lines = [f"held-out reward {first.reward:.4f} -> {best.reward:.4f} (kept weights of step {result.best_step}; "
             f"{result.steps_done} steps run)",
             f"last evaluation (step {last.step}): saturation {last.saturation_rise:+.4f}, channel shift "
             f"{last.channel_shift:.3f} std, flow-matching loss x{last.fm_loss_ratio:.3f}"]
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    return "\n".join(lines)


class WanFlowSRPOSettings:
    """The SRPO method's settings beyond the everyday ones, in one collapsible node."""

    DESCRIPTION = (
        "Settings of WanFlow SRPO Train beyond the ones on the trainer: the rollout (steps, shift, CFG, the A14B "
        "boundary), Direct-Align (σ window, grid, Δ, branches), Semantic Relative Preference (control words, "
        "discounts, hinge), the held-out evaluation and its stop rule (drift monitors, patience, keep), LoRA alpha "
        "and targets, clipping, precision, checkpointing, VAE tiles and saving. Without this node the trainer uses "
        "these defaults; with it, exactly the values shown here."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    RETURN_TYPES = ("WANFLOW_SRPO_SETTINGS",)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("Connect to the settings input of WanFlow SRPO Train.",)

    @classmethod
    def INPUT_TYPES(cls):
        widgets = {**widgets_for(SRPOConfig, "settings"), **widgets_for(SRPORunOptions, "settings")}
        widgets["negative_prompt"][1]["multiline"] = True
        return {"required": widgets}

    def run(self, **values):
        return (settings_output("srpo", SRPOConfig, SRPORunOptions, values),)


class WanFlowSRPOTraining:
    """SRPO reward fine-tuning of a Wan DiT (the Wan2.2 A14B low-noise expert by default)."""

    DESCRIPTION = WanFlowSRPOTrain.DESCRIPTION.replace(
        "Deprecated: use WanFlow SRPO Train (with WanFlow SRPO Settings). ", "") + (
        " The method's other settings come from WanFlow SRPO Settings (defaults without it).")
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = WanFlowSRPOTrain.RETURN_TYPES
    RETURN_NAMES = WanFlowSRPOTrain.RETURN_NAMES
    OUTPUT_TOOLTIPS = WanFlowSRPOTrain.OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        required = WanFlowSRPOTrain.INPUT_TYPES()["required"]
        sockets = {k: required[k] for k in ("model", "vae", "text_encoder", "reward", "prompts", "heldout_prompts",
                                            "output_name")}
        return {
            "required": {**sockets, **widgets_for(SRPOConfig, "main")},
            "optional": {
                "settings": ("WANFLOW_SRPO_SETTINGS", {"tooltip": "WanFlow SRPO Settings (defaults without it)."}),
                "model_high_noise": WanFlowSRPOTrain.INPUT_TYPES()["optional"]["model_high_noise"],
            },
        }

    def run(self, model, vae, text_encoder, reward, prompts, heldout_prompts, output_name, settings=None,
            model_high_noise=None, **main):
        config_fields, option_fields = read_settings(settings, "srpo", "WanFlow SRPO Settings")
        config = SRPOConfig(**{**config_fields, **config_values(SRPOConfig, main)})
        return srpo_train(model, vae, text_encoder, reward, prompts, heldout_prompts, output_name, config,
                          SRPORunOptions(**option_fields), model_high_noise=model_high_noise)


NODE_CLASS_MAPPINGS = {
    "WanFlowSRPOTraining": WanFlowSRPOTraining,
    "WanFlowSRPOSettings": WanFlowSRPOSettings,
    "WanFlowSRPOTrain": WanFlowSRPOTrain,  # deprecated: saved graphs keep loading
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanFlowSRPOTraining": "WanFlow SRPO Train",
    "WanFlowSRPOSettings": "WanFlow SRPO Settings",
    "WanFlowSRPOTrain": "WanFlow SRPO Train (legacy)",
}
