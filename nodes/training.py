"""Flow-matching training nodes (thin adapters over wan_core.training).

WanFlow Train LoRA and WanFlow Train Full show the decisions made on every run (model, data, output
name, steps, learning rate, LoRA rank / alpha / targets, seed); everything else comes from an
optional WanFlow Training Settings node (the defaults without it). Every widget is made from a
field of `TrainConfig` / `RunOptions` (`config_widgets`), so the nodes, the command line and the
library share one set of defaults, ranges and help texts. Both take cached latents, show a progress
bar with the step, the loss and a live loss curve, stop at ComfyUI's interrupt with a resumable
state saved (queue the same graph again to continue), and save their result where ComfyUI lists it:
LoRAs in `models/loras`, full models in `models/diffusion_models`. The earlier all-widgets nodes
(WanFlowTrainLoRA, WanFlowTrainFull) stay registered, deprecated, so saved graphs keep loading.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..wan_core.generation.pipeline import Conditioning, generate, seeded_noise
from ..wan_core.io.write import check_writable
from ..wan_core.lora import metadata as meta
from ..wan_core.lora.adapters import save_lora
from ..wan_core.training.flow_matching import (
    FULL_FINETUNE_LR,
    LOSS_WEIGHTINGS,
    SIGMA_SAMPLINGS,
    RunOptions,
    TrainConfig,
    expert_sigma_ranges,
    train,
)
from ..wan_core.training.flow_matching import LORA_TARGETS as TRAIN_LORA_TARGETS
from ..wan_core.training.latent_cache import check_latents_fit_model
from ..wan_core.training.plots import loss_curve_image, metrics_image
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
from .sampling import read_conditioning, text_context

LORA_TARGETS = list(TRAIN_LORA_TARGETS)  # the deprecated nodes' dropdown


def shared_inputs(default_lr: float, default_name: str) -> dict:
    return {
        "latents": ("WANFLOW_LATENTS", {"tooltip": "Training data: WanFlow Cache Latents (or WanFlow Demo Dataset)."}),
        "output_name": ("STRING", {"default": default_name, "tooltip": (
            "File name (no extension) of the result, relative to the model folder. The resumable training state "
            "lives in output/wanflow_training/<name>: queueing again with the same name and settings resumes.")}),
        "steps": ("INT", {"default": 500, "min": 1, "max": 1_000_000, "tooltip": "Optimizer steps."}),
        "learning_rate": ("FLOAT", {"default": default_lr, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                    "tooltip": "Peak learning rate of AdamW (after warmup, then cosine decay)."}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Clips per micro-step (clips of one bucket only)."}),
        "grad_accum": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Micro-batches per optimizer step."}),
        "sigma_sampling": (list(SIGMA_SAMPLINGS), {"default": "shift", "tooltip": (
            "How noise levels are drawn: shift = uniform then shifted toward high noise (DiffSynth-style), "
            "logit_normal (SD3-style) or uniform.")}),
        "shift": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1, "tooltip": "Shift for sigma_sampling=shift."}),
        "precision": (["bf16", "fp32"], {"default": "bf16", "tooltip": "bf16 autocast over fp32 master weights, or plain fp32."}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute each block in the backward pass: much less memory, ~30% slower."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                 "tooltip": "Fixes data order, noise levels, noise and LoRA init: the same seed gives the same run."}),
    }


def optional_inputs() -> dict:
    return {
        "warmup_steps": ("INT", {"default": 0, "min": 0, "max": 100_000, "tooltip": "Steps of linear learning-rate warmup."}),
        "ema_decay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99999, "step": 0.0001, "round": False,
                                "tooltip": "EMA of the trained weights (0 = off); when on, the saved result is the EMA."}),
        "loss_weighting": (list(LOSS_WEIGHTINGS), {"default": "none", "tooltip": "none, or diffsynth: a bell over timesteps favouring mid noise (mean 1)."}),
        "first_frame_clean": ("BOOLEAN", {"default": False, "tooltip": (
            "Wan2.2 TI2V-5B image-to-video training: latent frame 0 stays clean (timestep 0 on its tokens) and is "
            "left out of the loss, as the TI2V sampler treats a start image.")}),
        "save_every": ("INT", {"default": 0, "min": 0, "max": 100_000, "tooltip": "Write the resumable state every N steps (0: at the end and on interrupt)."}),
        "validation_positive": ("CONDITIONING", {"tooltip": "Prompt for validation samples (WanFlow Text Encode)."}),
        "validation_negative": ("CONDITIONING", {"tooltip": "Negative prompt for the validation samples (used when validation_cfg > 1)."}),
        "validation_vae": ("WANFLOW_VAE", {"tooltip": "Decodes the validation samples (after training)."}),
        "validate_every": ("INT", {"default": 0, "min": 0, "max": 100_000, "tooltip": "Sample the validation prompt every N steps (0 = only at the end)."}),
        "validation_steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Euler steps per validation sample."}),
        "validation_cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance scale of the validation samples (needs validation_negative)."}),
    }


class TrainingRun:
    """The plumbing the training nodes share: data checks, progress, validation, metrics plot."""

    def __init__(self, latents, config: TrainConfig, options: RunOptions, total_steps: int, validation: dict):
        if not hasattr(latents, "bucket_of") or len(latents) == 0:
            raise ValueError("latents: expected a non-empty WANFLOW_LATENTS dataset (WanFlow Cache Latents); "
                             f"found {type(latents).__name__} with {len(latents) if hasattr(latents, '__len__') else 0} items")
        self.latents, self.config, self.options, self.validation = latents, config, options, validation
        self.total, self.offset = total_steps, 0
        self.losses: list[float] = []
        self.validation_latents: list[torch.Tensor] = []
        self.bar = progress_callback(preview=loss_curve_image)

    def on_step(self, step: int, total: int, metrics) -> None:
        self.losses.append(metrics.loss)
        done = self.offset + step
        progress_text(f"step {done}/{self.total} · loss {metrics.loss:.5f} · grad norm {metrics.grad_norm:.3g}")
        if self.bar is not None:
            every = max(1, self.total // 100)  # a fresh loss curve ~100 times a run, not every step
            state = (self.losses,) if done % every == 0 or done == self.total else ()
            self.bar(done, self.total, *state)

    def validator(self, dit, low=None, boundary=None):
        """A validate(step) sampling the validation prompt (latents kept; decoded after training)."""
        positive = self.validation.get("validation_positive")
        if positive is None:
            return None
        config, options = dit.config, self.options
        shape = (1, *self.latents[0]["latent"].shape)
        pos, _ = read_conditioning(positive, "validation_positive")
        neg = self.validation.get("validation_negative")
        negative = text_context(read_conditioning(neg, "validation_negative")[0], config, 1) if neg is not None else None
        cfg_scale = options.validation_cfg if negative is not None else 1.0
        cond = Conditioning(text_context(pos, config, 1), negative)
        first = self.latents[0]
        if first.get("y") is not None:
            cond.y = first["y"][None].float()
        if first.get("clip_fea") is not None:
            cond.clip_fea = first["clip_fea"][None].float()

        def validate(step):
            device = next(dit.parameters()).device
            x0 = generate(dit, seeded_noise(shape, self.config.seed), cond.to(device), steps=options.validation_steps,
                          shift=self.config.shift, guide_scale=cfg_scale, solver="euler", low_noise_model=low,
                          boundary=boundary)
            self.validation_latents.append(x0.cpu())
        return validate

    def final_validation(self, validate, step: int) -> None:
        every = self.options.validate_every
        if validate is not None and not (every and step % every == 0):  # else train() just made this one
            with torch.no_grad():
                validate(step)

    def validation_images(self) -> torch.Tensor:
        """Decoded validation clips as IMAGE frames [N·F, H, W, 3] (a black 64x64 frame when none)."""
        vae = self.validation.get("validation_vae")
        if not self.validation_latents:
            return torch.zeros(1, 64, 64, 3)
        if vae is None:
            raise ValueError("validation samples need validation_vae (the VAE the latents were cached with)")
        module = vae.load()
        frames = []
        for x0 in self.validation_latents:
            video = module.decode(x0.to(module.device), normalized=True)  # [1, 3, F, H, W] in [-1, 1]
            frames.append(((video[0].float().permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(frames)


def _stopped_error(result) -> RuntimeError:
    return RuntimeError(f"training stopped: {result.stopped}. Fix the data or lower the learning rate; the saved "
                        "state resumes from the last good step.")


def train_lora(model, latents, output_name: str, config: TrainConfig, options: RunOptions, *,
               model_low_noise=None, validation: dict) -> dict:
    """Train a LoRA (two, one per expert, with Wan2.2 A14B's low-noise expert) and save it to models/loras."""
    experts = [("", model, config.sigma_range)]
    if model_low_noise is not None:
        ranges = expert_sigma_ranges(options.boundary)
        experts = [("_high_noise", model, ranges["high_noise"]), ("_low_noise", model_low_noise, ranges["low_noise"])]
    run = TrainingRun(latents, config, options, config.steps * len(experts), validation)
    for _, m, _ in experts:
        check_latents_fit_model(latents, dit_config(m))
    # every output can be written: found now, not after training
    targets = {tag: check_writable(confined_path(save_folder("loras"), output_name + tag, ".safetensors"), "LoRA file")
               for tag, _, _ in experts}
    paths, outputs, networks, history = [], [], [], []
    high = None
    try:
        for tag, m, sigma_range in experts:
            dit = load_dit(m)
            cfg = replace(config, mode="lora", sigma_range=sigma_range)
            # A14B: validation samples need both experts, so it runs while the low-noise one trains
            if tag == "_high_noise":
                validate = None
            elif tag == "_low_noise":
                validate = run.validator(high, dit, options.boundary)
            else:
                validate = run.validator(dit)
            result = train(dit, latents, cfg, state_dir=state_dir(output_name, tag), callback=run.on_step,
                           validate=validate, validate_every=options.validate_every)
            networks.append(result.network)
            if result.stopped:
                raise _stopped_error(result)
            run.final_validation(validate, result.steps_done)
            lora_sd = result.network.comfy_state_dict()
            path = targets[tag]
            save_lora(path, lora_sd, metadata={
                meta.BASE_MODEL: model_name(m), meta.VARIANT: dit.config.variant,
                meta.RANK: str(cfg.lora_rank), meta.ALPHA: str(cfg.lora_alpha), meta.STEPS: str(result.steps_done),
                meta.TARGETS: cfg.lora_targets, meta.SIGMA_RANGE: f"{sigma_range[0]},{sigma_range[1]}",
                meta.EXPERT: tag.strip("_") or "single",
            })
            paths.append(str(path))
            outputs.append(model_with_lora(m, lora_sd, 1.0)[0])
            history += result.history
            high = dit
            run.offset += config.steps
    finally:  # the hooks only served training (and validation); the outputs carry the LoRAs
        for network in networks:
            network.remove()
    refresh_file_list("loras")
    low_out = outputs[1] if len(outputs) > 1 else None
    text = "\n".join(paths)
    images = run.validation_images()
    return {"ui": {"text": [text]}, "result": (outputs[0], low_out, text, metrics_plot(history), images)}


def train_full(model, latents, output_name: str, config: TrainConfig, options: RunOptions, *,
               validation: dict) -> dict:
    """Fine-tune every weight of a copy of the model and save it to models/diffusion_models."""
    config = replace(config, mode="full")
    run = TrainingRun(latents, config, options, config.steps, validation)
    check_latents_fit_model(latents, dit_config(model))
    check_writable(confined_path(save_folder("diffusion_models"), output_name, ".safetensors"), "model file")
    dit = full_finetune_copy(model)
    validate = run.validator(dit)
    result = train(dit, latents, config, state_dir=state_dir(output_name), callback=run.on_step,
                   validate=validate, validate_every=options.validate_every)
    if result.stopped:
        raise _stopped_error(result)
    run.final_validation(validate, result.steps_done)
    handle, path = save_full_model(dit, output_name, options.save_dtype, {
        meta.BASE_MODEL: model_name(model), meta.VARIANT: dit.config.variant, meta.STEPS: str(result.steps_done)})
    images = run.validation_images()
    return {"ui": {"text": [str(path)]}, "result": (handle, str(path), metrics_plot(result.history), images)}


def metrics_plot(history) -> torch.Tensor:
    """The per-step metrics (loss, gradient norm, learning rate, |v_pred|/|v_target|, cosine) as an
    IMAGE [1, H, W, 3]."""
    return pil_image(metrics_image(history))


def validation_inputs(kw: dict) -> dict:
    return {k: kw.get(k) for k in VALIDATION_INPUTS}


def legacy_settings(kw: dict, **fields) -> tuple[TrainConfig, RunOptions]:
    """The deprecated nodes' widget values -> (TrainConfig, RunOptions)."""
    values = {**kw, **fields}
    config = TrainConfig(**config_values(TrainConfig, {k: v for k, v in values.items() if k not in VALIDATION_INPUTS}))
    return config, RunOptions(**config_values(RunOptions, values))


VALIDATION_INPUTS = ("validation_positive", "validation_negative", "validation_vae")
FULL_FINETUNE_DEFAULTS = {"learning_rate": FULL_FINETUNE_LR}


def validation_sockets() -> dict:
    return {
        "validation_positive": ("CONDITIONING", {"tooltip": "Prompt for validation samples (WanFlow Text Encode)."}),
        "validation_negative": ("CONDITIONING", {"tooltip": "Negative prompt of the validation samples (used when "
                                                 "validation_cfg > 1)."}),
        "validation_vae": ("WANFLOW_VAE", {"tooltip": "Decodes the validation samples (after training)."}),
    }


def main_widgets(kind: str) -> dict:
    """The trainer node's own widgets: the decisions made on every run, from TrainConfig / RunOptions."""
    widgets = widgets_for(TrainConfig, "main")
    if kind == "full":
        widgets = {k: v for k, v in widgets.items() if not k.startswith("lora_")}
        for name, default in FULL_FINETUNE_DEFAULTS.items():
            widgets[name] = (widgets[name][0], {**widgets[name][1], "default": default})
        widgets.update(widgets_for(RunOptions, "main"))
    return widgets


def build_settings(settings, **main) -> tuple[TrainConfig, RunOptions]:
    """The trainer node's widgets over its settings node's values (or the defaults)."""
    config_fields, option_fields = read_settings(settings, "training", "WanFlow Training Settings")
    config = TrainConfig(**{**config_fields, **config_values(TrainConfig, main)})
    return config, RunOptions(**{**option_fields, **config_values(RunOptions, main)})


class WanFlowTrainingSettings:
    """Everything but the everyday decisions of the flow-matching trainers, in one collapsible node."""

    DESCRIPTION = (
        "Settings of WanFlow Train LoRA / Train Full beyond the ones on the trainer: batch and accumulation, noise "
        "levels (σ sampling, shift, range), schedule, clipping, EMA, precision and checkpointing, LoRA dropout, the "
        "Wan2.2 A14B expert split, validation cadence and state saving. Without this node the trainer uses these "
        "defaults; with it, exactly the values shown here."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    RETURN_TYPES = ("WANFLOW_TRAIN_SETTINGS",)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("Connect to the settings input of WanFlow Train LoRA or WanFlow Train Full.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**widgets_for(TrainConfig, "settings"), **widgets_for(RunOptions, "settings")}}

    def run(self, **values):
        return (settings_output("training", TrainConfig, RunOptions, values),)


class WanFlowLoRATraining:
    """Train a LoRA on a Wan DiT (or both Wan2.2 A14B experts) with flow matching."""

    DESCRIPTION = (
        "Trains a LoRA with Wan's flow-matching objective (x = (1-σ)·x0 + σ·noise, target noise - x0) on cached "
        "latents, and saves it in ComfyUI's native LoRA format to models/loras, where LoraLoaderModelOnly and WanFlow "
        "Load LoRA find it. With model_low_noise connected (Wan2.2 A14B), each expert trains on its own noise range "
        "(split at the settings' boundary) and two LoRAs are saved, tagged _high_noise and _low_noise. Everything "
        "else comes from WanFlow Training Settings (defaults without it). Interrupting saves a resumable state; "
        "queue again to continue."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = (MODEL_TYPES, MODEL_TYPES, "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("model", "model_low_noise", "lora_path", "metrics", "validation")
    OUTPUT_TOOLTIPS = ("The model with the trained LoRA applied.", "The low-noise expert with its LoRA (A14B only).",
                       "Path(s) of the saved LoRA file(s).",
                       "Per-step loss, gradient norm, learning rate, |v_pred|/|v_target| and their cosine.",
                       "Validation samples (frames), when a validation prompt is connected.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPES, {"tooltip": "The model to adapt (the high-noise expert for A14B)."}),
                "latents": ("WANFLOW_LATENTS", {"tooltip": "Training data: WanFlow Cache Latents (or WanFlow Demo "
                                                "Dataset)."}),
                "output_name": ("STRING", {"default": "wanflow/my_lora", "tooltip": OUTPUT_NAME_TIP}),
                **main_widgets("lora"),
            },
            "optional": {
                "settings": ("WANFLOW_TRAIN_SETTINGS", {"tooltip": "WanFlow Training Settings (defaults without it)."}),
                "model_low_noise": (MODEL_TYPES, {"tooltip": "Wan2.2 A14B: the low-noise expert (trained below the "
                                                  "boundary)."}),
                **validation_sockets(),
            },
        }

    def run(self, model, latents, output_name, settings=None, model_low_noise=None, **kw):
        config, options = build_settings(settings, **{k: v for k, v in kw.items() if k not in VALIDATION_INPUTS})
        return train_lora(model, latents, output_name, config, options, model_low_noise=model_low_noise,
                          validation=validation_inputs(kw))


class WanFlowFullTraining:
    """Full fine-tune of a Wan DiT with flow matching."""

    DESCRIPTION = (
        "Fine-tunes every weight of a Wan DiT with flow matching on cached latents (AdamW over fp32 master weights, "
        "bf16 autocast) and saves it with the official key names to models/diffusion_models, where the loaders "
        "(ours and ComfyUI's UNETLoader) find it. The input model is not changed: training works on a copy. Needs "
        "~16 bytes per parameter plus activations. Everything else comes from WanFlow Training Settings (defaults "
        "without it). Interrupting saves a resumable state; queue again to continue."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("WANFLOW_MODEL", "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("model", "model_path", "metrics", "validation")
    OUTPUT_TOOLTIPS = ("The fine-tuned model.", "Path of the saved model file.",
                       "Per-step loss, gradient norm, learning rate, |v_pred|/|v_target| and their cosine.",
                       "Validation samples (frames), when a validation prompt is connected.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPES, {"tooltip": "The model to fine-tune (WanFlow Demo Models for the demo)."}),
                "latents": ("WANFLOW_LATENTS", {"tooltip": "Training data: WanFlow Cache Latents (or WanFlow Demo "
                                                "Dataset)."}),
                "output_name": ("STRING", {"default": "wanflow/my_finetune", "tooltip": OUTPUT_NAME_TIP}),
                **main_widgets("full"),
            },
            "optional": {
                "settings": ("WANFLOW_TRAIN_SETTINGS", {"tooltip": "WanFlow Training Settings (defaults without it)."}),
                **validation_sockets(),
            },
        }

    def run(self, model, latents, output_name, settings=None, **kw):
        config, options = build_settings(settings, **{k: v for k, v in kw.items() if k not in VALIDATION_INPUTS})
        return train_full(model, latents, output_name, config, options, validation=validation_inputs(kw))


OUTPUT_NAME_TIP = ("File name (no extension) of the result, relative to the model folder. The resumable training "
                   "state lives in output/wanflow_training/<name>: queueing again with the same name and settings "
                   "resumes.")


class WanFlowTrainLoRA:
    """Deprecated (every setting on the node; saved graphs keep loading): WanFlow Train LoRA with its settings
    node replaces it."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated: use WanFlow Train LoRA (with WanFlow Training Settings). Trains a LoRA with Wan's flow-matching objective (x = (1-σ)·x0 + σ·noise, target noise - x0) on cached "
        "latents, and saves it in ComfyUI's native LoRA format to models/loras, where LoraLoaderModelOnly and WanFlow "
        "Load LoRA find it. With model_low_noise connected (Wan2.2 A14B), each expert trains on its own noise range "
        "(split at boundary) and two LoRAs are saved, tagged _high_noise and _low_noise. Interrupting saves a "
        "resumable state; queue again to continue."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = (MODEL_TYPES, MODEL_TYPES, "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("model", "model_low_noise", "lora_path", "loss_curve", "validation")
    OUTPUT_TOOLTIPS = ("The model with the trained LoRA applied.", "The low-noise expert with its LoRA (A14B only).",
                       "Path(s) of the saved LoRA file(s).", "The loss per step.",
                       "Validation samples (frames), when a validation prompt is connected.")

    @classmethod
    def INPUT_TYPES(cls):
        required = {"model": (MODEL_TYPES, {"tooltip": "The model to adapt (the high-noise expert for A14B)."})}
        required.update(shared_inputs(1e-4, "wanflow/my_lora"))
        required.update({
            "rank": ("INT", {"default": 16, "min": 1, "max": 512, "tooltip": "LoRA rank: capacity and file size."}),
            "alpha": ("FLOAT", {"default": 16.0, "min": 0.01, "max": 1024.0, "step": 0.5,
                                "tooltip": "LoRA scale is alpha / rank."}),
            "targets": (LORA_TARGETS, {"default": "attention+ffn", "tooltip": "Which linear layers get a LoRA."}),
        })
        optional = {
            "model_low_noise": (MODEL_TYPES, {"tooltip": "Wan2.2 A14B: the low-noise expert (trained below the boundary)."}),
            "boundary": ("FLOAT", {"default": 0.875, "min": 0.01, "max": 0.99, "step": 0.005,
                                   "tooltip": "Expert split in σ (0.875 T2V, 0.9 I2V)."}),
            "dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.9, "step": 0.01, "tooltip": "Dropout on the LoRA input during training."}),
        }
        optional.update(optional_inputs())
        return {"required": required, "optional": optional}

    def run(self, model, latents, output_name, rank, alpha, targets, model_low_noise=None, dropout=0.0, **kw):
        config, options = legacy_settings(kw, lora_rank=rank, lora_alpha=alpha, lora_targets=targets,
                                          lora_dropout=dropout)
        return train_lora(model, latents, output_name, config, options, model_low_noise=model_low_noise,
                          validation=validation_inputs(kw))


class WanFlowTrainFull:
    """Deprecated (every setting on the node; saved graphs keep loading): WanFlow Train Full with its settings
    node replaces it."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated: use WanFlow Train Full (with WanFlow Training Settings). Fine-tunes every weight of a Wan DiT with flow matching on cached latents (AdamW over fp32 master weights, "
        "bf16 autocast) and saves it with the official key names to models/diffusion_models, where the loaders "
        "(ours and ComfyUI's UNETLoader) find it. The input model is not changed: training works on a copy. Needs "
        "~16 bytes per parameter plus activations. Interrupting saves a resumable state; queue again to continue."
    )
    CATEGORY = "WanFlow/training"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("WANFLOW_MODEL", "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("model", "model_path", "loss_curve", "validation")
    OUTPUT_TOOLTIPS = ("The fine-tuned model.", "Path of the saved model file.", "The loss per step.",
                       "Validation samples (frames), when a validation prompt is connected.")

    @classmethod
    def INPUT_TYPES(cls):
        required = {"model": (MODEL_TYPES, {"tooltip": "The model to fine-tune (WanFlow Demo Models for the demo)."})}
        required.update(shared_inputs(2e-5, "wanflow/my_finetune"))
        required["save_dtype"] = (list(SAVE_DTYPES), {"default": "bf16", "tooltip": "dtype of the saved weights."})
        return {"required": required, "optional": optional_inputs()}

    def run(self, model, latents, output_name, save_dtype, **kw):
        config, options = legacy_settings(kw, save_dtype=save_dtype)
        return train_full(model, latents, output_name, config, options, validation=validation_inputs(kw))


NODE_CLASS_MAPPINGS = {
    "WanFlowLoRATraining": WanFlowLoRATraining,
    "WanFlowFullTraining": WanFlowFullTraining,
    "WanFlowTrainingSettings": WanFlowTrainingSettings,
    "WanFlowTrainLoRA": WanFlowTrainLoRA,  # deprecated: saved graphs keep loading
    "WanFlowTrainFull": WanFlowTrainFull,  # deprecated
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanFlowLoRATraining": "WanFlow Train LoRA",
    "WanFlowFullTraining": "WanFlow Train Full",
    "WanFlowTrainingSettings": "WanFlow Training Settings",
    "WanFlowTrainLoRA": "WanFlow Train LoRA (legacy)",
    "WanFlowTrainFull": "WanFlow Train Full (legacy)",
}
