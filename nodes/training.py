"""Training nodes: WanFlow Train LoRA and WanFlow Train Full (thin adapters over wan_core.training).

Both take cached latents (WanFlow Cache Latents or WanFlow Demo Dataset), show a progress bar with
the step, the loss and a live loss curve, stop at ComfyUI's interrupt with a resumable state saved
(queue the same graph again to continue), and save their result where ComfyUI lists it: LoRAs in
`models/loras`, full models in `models/diffusion_models`.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..wan_core.generation.pipeline import Conditioning, generate, seeded_noise
from ..wan_core.io.write import save_safetensors
from ..wan_core.lora import metadata as meta
from ..wan_core.lora.adapters import save_lora
from ..wan_core.training.flow_matching import LOSS_WEIGHTINGS, SIGMA_SAMPLINGS, TrainConfig, expert_sigma_ranges, train
from ..wan_core.training.plots import loss_curve_image, metrics_image
from .comfy_bridge import (
    ModelHandle,
    confined_path,
    output_root,
    progress_callback,
    progress_text,
    refresh_file_list,
    save_folder,
)
from .lora import model_with_lora
from .models import MODEL_TYPES, dit_config, load_dit
from .sampling import read_conditioning, text_context

LORA_TARGETS = ["attention+ffn", "attention", "self_attention", "cross_attention", "ffn"]
SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
    """The plumbing both nodes share: config, data checks, progress, validation, loss curve."""

    def __init__(self, latents, total_steps: int, kw: dict):
        if not hasattr(latents, "bucket_of") or len(latents) == 0:
            raise ValueError("latents: expected a non-empty WANFLOW_LATENTS dataset (WanFlow Cache Latents); "
                             f"found {type(latents).__name__} with {len(latents) if hasattr(latents, '__len__') else 0} items")
        self.latents, self.kw = latents, kw
        self.total, self.offset = total_steps, 0
        self.losses: list[float] = []
        self.validation_latents: list[torch.Tensor] = []
        self.bar = progress_callback(preview=loss_curve_image)

    def config(self, **extra) -> TrainConfig:
        kw = self.kw
        return TrainConfig(steps=kw["steps"], learning_rate=kw["learning_rate"], batch_size=kw["batch_size"],
                           grad_accum=kw["grad_accum"], sigma_sampling=kw["sigma_sampling"], shift=kw["shift"],
                           precision=kw["precision"], gradient_checkpointing=kw["gradient_checkpointing"],
                           seed=kw["seed"], warmup_steps=kw.get("warmup_steps", 0), ema_decay=kw.get("ema_decay", 0.0),
                           loss_weighting=kw.get("loss_weighting", "none"), save_every=kw.get("save_every", 0),
                           first_frame_clean=kw.get("first_frame_clean", False), **extra)

    def check_model(self, config) -> None:
        sample = self.latents[0]
        channels = sample["latent"].shape[0] + (sample["y"].shape[0] if sample.get("y") is not None else 0)
        if sample["latent"].shape[0] != config.out_dim or channels != config.in_dim:
            need = "with image conditioning (y) " if config.in_dim != config.out_dim and config.model_type != "ti2v" else ""
            raise ValueError(f"the latents have {sample['latent'].shape[0]} channels"
                             f"{' + ' + str(sample['y'].shape[0]) + ' of y' if sample.get('y') is not None else ''}, "
                             f"but {config.variant or 'the model'} takes {config.in_dim} input channels: cache the "
                             f"latents {need}with this model's VAE")
        if sample["context"].shape[-1] != config.text_dim:
            raise ValueError(f"the latents' text embeddings are {sample['context'].shape[-1]} wide, the model takes "
                             f"{config.text_dim}: cache them with this model's text encoder")
        if config.image_branch and sample.get("clip_fea") is None:
            raise ValueError(f"{config.variant} needs CLIP image features: cache the latents with a CLIP vision model")

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
        kw = self.kw
        positive = kw.get("validation_positive")
        if positive is None:
            return None
        config = dit.config
        shape = (1, *self.latents[0]["latent"].shape)
        pos, _ = read_conditioning(positive, "validation_positive")
        neg = kw.get("validation_negative")
        negative = text_context(read_conditioning(neg, "validation_negative")[0], config, 1) if neg is not None else None
        cfg_scale = kw.get("validation_cfg", 1.0) if negative is not None else 1.0
        cond = Conditioning(text_context(pos, config, 1), negative)
        first = self.latents[0]
        if first.get("y") is not None:
            cond.y = first["y"][None].float()
        if first.get("clip_fea") is not None:
            cond.clip_fea = first["clip_fea"][None].float()

        def validate(step):
            device = next(dit.parameters()).device
            x0 = generate(dit, seeded_noise(shape, kw["seed"]), cond.to(device), steps=kw.get("validation_steps", 20),
                          shift=kw["shift"], guide_scale=cfg_scale, solver="euler", low_noise_model=low,
                          boundary=boundary)
            self.validation_latents.append(x0.cpu())
        return validate

    def final_validation(self, validate, step: int) -> None:
        every = self.kw.get("validate_every", 0)
        if validate is not None and not (every and step % every == 0):  # else train() just made this one
            with torch.no_grad():
                validate(step)

    def validation_images(self) -> torch.Tensor:
        """Decoded validation clips as IMAGE frames [N·F, H, W, 3] (a black 64x64 frame when none)."""
        vae = self.kw.get("validation_vae")
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



def pil_image(image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE [1, H, W, 3] in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def metrics_plot(history) -> torch.Tensor:
    """The per-step metrics (loss, gradient norm, learning rate, |v_pred|/|v_target|, cosine) as an
    IMAGE [1, H, W, 3]."""
    return pil_image(metrics_image(history))


def full_finetune_copy(model) -> torch.nn.Module:
    """The DiT behind a model socket, copied for a full fine-tune (the input stays as it is: ComfyUI
    may reuse it); fp8-stored weights are refused."""
    source = load_dit(model)
    if any(p.dtype.itemsize == 1 for p in source.parameters()):
        raise ValueError("full fine-tuning needs 16/32-bit weights; this model is stored in fp8: load it with "
                         "weight_dtype 'default' or 'bf16' from a bf16/fp16 file")
    with torch.inference_mode(False):
        return copy.deepcopy(source)


def save_full_model(dit, output_name: str, save_dtype: str, metadata: dict):
    """Write a fully fine-tuned DiT to models/diffusion_models (official keys) -> (ModelHandle, path)."""
    dtype = SAVE_DTYPES[save_dtype]
    path = confined_path(save_folder("diffusion_models"), output_name, ".safetensors")
    weights = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in dit.state_dict().items()}
    save_safetensors(weights, path, metadata=metadata)
    refresh_file_list("diffusion_models")
    return ModelHandle(dit.to(dtype).eval(), name=str(path.name)), path  # as saved


def state_dir(name: str, tag: str = ""):
    return confined_path(output_root() / "wanflow_training", name + tag)


def _model_name(model) -> str:
    if isinstance(model, ModelHandle):
        return model.name
    return "ComfyUI MODEL"


class WanFlowTrainLoRA:
    """Train a LoRA on a Wan DiT (or both Wan2.2 A14B experts) with flow matching."""

    DESCRIPTION = (
        "Trains a LoRA with Wan's flow-matching objective (x = (1-σ)·x0 + σ·noise, target noise - x0) on cached "
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

    def run(self, model, latents, output_name, steps, learning_rate, batch_size, grad_accum, sigma_sampling, shift,
            precision, gradient_checkpointing, seed, rank, alpha, targets, model_low_noise=None, boundary=0.875,
            dropout=0.0, **kw):
        kw.update(steps=steps, learning_rate=learning_rate, batch_size=batch_size, grad_accum=grad_accum,
                  sigma_sampling=sigma_sampling, shift=shift, precision=precision,
                  gradient_checkpointing=gradient_checkpointing, seed=seed)
        experts = [("", model, (0.0, 1.0))]
        if model_low_noise is not None:
            ranges = expert_sigma_ranges(boundary)
            experts = [("_high_noise", model, ranges["high_noise"]), ("_low_noise", model_low_noise, ranges["low_noise"])]
        run = TrainingRun(latents, steps * len(experts), kw)
        for _, m, _ in experts:
            run.check_model(dit_config(m))
        paths, outputs, networks, history = [], [], [], []
        high = None
        try:
            for tag, m, sigma_range in experts:
                dit = load_dit(m)
                cfg = run.config(mode="lora", lora_rank=rank, lora_alpha=alpha, lora_dropout=dropout,
                                 lora_targets=targets, sigma_range=sigma_range)
                # A14B: validation samples need both experts, so it runs while the low-noise one trains
                if tag == "_high_noise":
                    validate = None
                elif tag == "_low_noise":
                    validate = run.validator(high, dit, boundary)
                else:
                    validate = run.validator(dit)
                result = train(dit, latents, cfg, state_dir=state_dir(output_name, tag), callback=run.on_step,
                               validate=validate, validate_every=kw.get("validate_every", 0))
                networks.append(result.network)
                if result.stopped:
                    raise RuntimeError(f"training stopped: {result.stopped}. Fix the data or lower the learning "
                                       "rate; the saved state resumes from the last good step.")
                run.final_validation(validate, result.steps_done)
                lora_sd = result.network.comfy_state_dict()
                path = confined_path(save_folder("loras"), output_name + tag, ".safetensors")
                save_lora(path, lora_sd, metadata={
                    meta.BASE_MODEL: _model_name(m), meta.VARIANT: dit.config.variant,
                    meta.RANK: str(rank), meta.ALPHA: str(alpha), meta.STEPS: str(result.steps_done),
                    meta.TARGETS: targets, meta.SIGMA_RANGE: f"{sigma_range[0]},{sigma_range[1]}",
                    meta.EXPERT: tag.strip("_") or "single",
                })
                paths.append(str(path))
                outputs.append(model_with_lora(m, lora_sd, 1.0)[0])
                history += result.history
                high = dit
                run.offset += steps
        finally:  # the hooks only served training (and validation); the outputs carry the LoRAs
            for network in networks:
                network.remove()
        refresh_file_list("loras")
        low_out = outputs[1] if len(outputs) > 1 else None
        text = "\n".join(paths)
        images = run.validation_images()
        return {"ui": {"text": [text]}, "result": (outputs[0], low_out, text, metrics_plot(history), images)}


class WanFlowTrainFull:
    """Full fine-tune of a Wan DiT with flow matching."""

    DESCRIPTION = (
        "Fine-tunes every weight of a Wan DiT with flow matching on cached latents (AdamW over fp32 master weights, "
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

    def run(self, model, latents, output_name, steps, learning_rate, batch_size, grad_accum, sigma_sampling, shift,
            precision, gradient_checkpointing, seed, save_dtype, **kw):
        kw.update(steps=steps, learning_rate=learning_rate, batch_size=batch_size, grad_accum=grad_accum,
                  sigma_sampling=sigma_sampling, shift=shift, precision=precision,
                  gradient_checkpointing=gradient_checkpointing, seed=seed)
        run = TrainingRun(latents, steps, kw)
        run.check_model(dit_config(model))
        dit = full_finetune_copy(model)
        validate = run.validator(dit)
        result = train(dit, latents, run.config(mode="full"), state_dir=state_dir(output_name), callback=run.on_step,
                       validate=validate, validate_every=kw.get("validate_every", 0))
        if result.stopped:
            raise RuntimeError(f"training stopped: {result.stopped}. Fix the data or lower the learning rate; "
                               "the saved state resumes from the last good step.")
        run.final_validation(validate, result.steps_done)
        handle, path = save_full_model(dit, output_name, save_dtype, {
            meta.BASE_MODEL: _model_name(model), meta.VARIANT: dit.config.variant,
            meta.STEPS: str(result.steps_done)})
        images = run.validation_images()
        return {"ui": {"text": [str(path)]}, "result": (handle, str(path), metrics_plot(result.history), images)}


NODE_CLASS_MAPPINGS = {"WanFlowTrainLoRA": WanFlowTrainLoRA, "WanFlowTrainFull": WanFlowTrainFull}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowTrainLoRA": "WanFlow Train LoRA", "WanFlowTrainFull": "WanFlow Train Full"}
