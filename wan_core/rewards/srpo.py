"""SRPO reward fine-tuning for Wan: Direct-Align + Semantic Relative Preference.

SRPO (Tencent-Hunyuan, for FLUX) fine-tunes a flow model on a differentiable image reward without
backpropagating through a sampling chain. Restated in Wan's convention (x_σ = (1 − σ)·x0 + σ·ε,
the model predicts v = ε − x0 and sees the timestep int(1000·σ)), one optimizer step is:

1. Rollout, without gradient: from one noise ε (the same on every rank), Euler with
   classifier-free guidance down to an image latent x0 (text-to-image: one latent frame).
2. Direct-Align, once per branch, with gradient through one model forward:
     target σ* drawn from a grid over the σ window, step Δ (grid steps, clipped at the edges);
     denoise branch:   x_s = (1 − s)·x0 + s·ε at s = σ* + Δ, then Euler down to σ*
     inversion branch: x_s at s = σ* − Δ, then Euler up to σ*
     x̃ = x_s + (σ* − s)·v(x_s, s), and the one-step recovery x̂0 = (x̃ − σ*·ε) / (1 − σ*).
   x_s is built from the detached rollout and the known ε, so only the velocity carries
   gradient. With the exact velocity v = ε − x0 both branches return x0 itself.
3. x̂0 is decoded by the frozen VAE (gradient through the decoder, under checkpointing, tiled
   for large images) and scored by a frozen differentiable reward (`wan_core.reward`).
4. Semantic Relative Preference: the reward's text gets control words only (never the DiT's):
   A = "<positive word>. prompt", B = "<negative word>. prompt", and the denoise branch scores
   f_img · ((1 + κ)·f_text(A) − f_text(B)); the inversion branch swaps A and B (its step runs
   the other way, so it pushes away from B). κ comes from a linear discount schedule over the
   window, one per branch, read at the lower σ of the branch's step. Loss: ReLU(τ − score).
   Each branch backpropagates on its own, so only one gradient-carrying forward is alive.

Training is LoRA by default (full fine-tune allowed), AdamW with clipping. Every `eval_every`
steps a held-out prompt set is rolled out with fixed seeds and scored without control words,
next to drift monitors (colour saturation, per-channel latent statistics, flow-matching loss on
held-out latents) measured against the model before training; a stop rule ends the run when a
monitor leaves its bound or the reward stops improving, and restores the best in-bounds weights.
Reward hacking sets in after a few dozen steps, so these are part of the method, not extras.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import torch
import torch.nn.functional as F

from ..generation.pipeline import Conditioning, generate
from ..sampling.solvers import official_timestep
from ..training.distributed import average_gradients, world
from ..training.flow_matching import LORA_TARGETS, SAVE_DTYPES
from ..training.run import (
    NonFiniteError,
    ResumableTrainer,
    StepMetrics,
    Stop,
    StopReason,
    base_model_identity,
    check_finite,
    check_tensors,
    expect,
    grad_norm,
    load_state,
    run_resumable,
)
from ..training.settings import check_settings, setting
from .base import saturation

# the official SRPO's control words (realism vs. "CG / oily" look), cycled by step
POSITIVE_WORDS = ("Natural-lighting", "Detail", "Detailed", "Real")
NEGATIVE_WORDS = ("Concept art", "Painting", "Anime", "Flat", "Oil")
BRANCHES = ("both", "denoise")
STATE_FILE = "srpo_state.pt"
STATE_FORMAT = 2  # 2: per-step metrics history (format 1 kept losses and scores)


@dataclass
class SRPOConfig:
    """Everything that shapes an SRPO run (saved with the state, so a resume can check it).
    Each field's help, range and choices are declared here once (`training.settings`)."""

    mode: str = setting("lora", "lora (saved to models/loras) or full fine-tune (models/diffusion_models).",
                        choices=("lora", "full"), node="main")
    steps: int = setting(100, "Optimizer steps (one rollout, one pass per branch).", min=1, max=1_000_000, node="main")
    learning_rate: float = setting(1e-4, "AdamW learning rate.", min=1e-9, max=1.0, step=1e-6, node="main")
    weight_decay: float = setting(1e-4, "AdamW weight decay.", min=0.0, max=10.0, step=1e-4)
    betas: tuple = setting((0.9, 0.999), "AdamW betas.", min=0.0, max=0.999999, node="none")
    max_grad_norm: float = setting(1.0, "Gradient clipping (0 = off).", min=0.0, max=1e6, step=0.01)
    lora_rank: int = setting(16, "LoRA rank.", min=1, max=1024, node="main")
    lora_alpha: float = setting(16.0, "LoRA scale is alpha / rank.", min=0.01, max=4096.0, step=0.5)
    lora_targets: str = setting("attention+ffn", "Which linear layers get a LoRA: a preset or glob patterns.",
                                presets=LORA_TARGETS)
    precision: str = setting("bf16", "bf16 autocast over fp32 master weights (CUDA), or fp32.", choices=("bf16", "fp32"))
    gradient_checkpointing: bool = setting(True, "Recompute each block in the backward pass.")
    # the image and its rollout
    width: int = setting(512, "Image width (a multiple of 16).", min=16, max=4096, step=16, node="main")
    height: int = setting(512, "Image height (a multiple of 16).", min=16, max=4096, step=16, node="main")
    rollout_steps: int = setting(20, "Euler steps of each rollout.", min=1, max=1000)
    rollout_shift: float = setting(5.0, "σ shift of the rollout grid.", min=0.01, max=100.0, step=0.1)
    guidance: float = setting(4.0, "Rollout CFG of the trained model (1 = none).", min=1.0, max=30.0, step=0.1)
    guidance_high: float = setting(4.0, "Rollout CFG of the high-noise expert, when one does the rollout's "
                                   "high-σ steps.", min=1.0, max=30.0, step=0.1)
    boundary: float = setting(0.875, "Wan2.2 A14B expert switch (σ).", min=0.01, max=0.99, step=0.005)
    # Direct-Align
    sigma_window: tuple = setting((0.5, 0.85), "The σ window the target σ* is drawn from (low, high); keep it below "
                                  "the A14B boundary 0.875 for the low-noise expert.", min=0.001, max=0.999, step=0.005)
    grid_points: int = setting(1000, "The window is a grid of this many σ, high to low.", min=3, max=100_000)
    delta_fraction: float = setting(0.1, "Δσ as a fraction of the window, in grid steps (shrunk at the edges).",
                                    min=0.001, max=0.49, step=0.01)
    edge_margin: int = setting(5, "σ* is drawn from grid indices [margin, points - 1 - margin].", min=0, max=10_000)
    branches: str = setting("both", "both = denoise + inversion (needs srp); denoise only.", choices=BRANCHES)
    # Semantic Relative Preference
    srp: bool = setting(True, "Semantic Relative Preference (control words). Off: the plain reward.")
    positive_words: tuple = setting(POSITIVE_WORDS, "Control words the reward should prefer (prefixed to the "
                                    "reward's text only, cycled by step).")
    negative_words: tuple = setting(NEGATIVE_WORDS, "Control words the reward should move away from.")
    discount_denoise: tuple = setting((0.1, 0.25), "κ of the denoise branch at the window's low σ end and at its "
                                      "high σ end (linear between).", min=0.0, max=10.0, step=0.01)
    discount_inversion: tuple = setting((0.3, 0.01), "κ of the inversion branch at the window's low and high σ ends.",
                                        min=0.0, max=10.0, step=0.01)
    hinge: float = setting(0.7, "τ in the loss ReLU(τ − score).", min=-10.0, max=10.0, step=0.05)
    # held-out evaluation and the stop rule
    eval_every: int = setting(10, "Steps between held-out evaluations (0: only at the end).", min=0, max=1_000_000)
    max_saturation_rise: float = setting(0.1, "Stop when the held-out images' saturation (mean per-pixel RGB spread, "
                                         "pixel units) rises more than this (1 or more: never).", min=0.0, max=100.0, step=0.005)
    max_channel_shift: float = setting(1.0, "Stop when a latent channel's mean moves more than this many of its std "
                                       "before training.", min=0.0, max=1000.0, step=0.05)
    max_fm_loss_ratio: float = setting(1.5, "Stop when the flow-matching loss on held-out latents grows by this "
                                       "factor.", min=1.0, max=1000.0, step=0.05)
    patience: int = setting(0, "Stop after this many evaluations without a better held-out reward (0 = never).",
                            min=0, max=100_000)
    keep: str = setting("best", "End with the best in-bounds evaluated weights, or the last ones.",
                        choices=("best", "last"))
    seed: int = setting(0, "Fixes the noise, σ* draws, prompt order and LoRA init.", min=0, max=2 ** 64 - 1,
                        node="main")
    save_every: int = setting(0, "Steps between resumable states (0: at the end and on interrupt only).", min=0,
                              max=1_000_000)

    def __post_init__(self):
        for name in ("betas", "sigma_window", "positive_words", "negative_words", "discount_denoise",
                     "discount_inversion"):
            setattr(self, name, tuple(getattr(self, name)))
        check_settings(self)
        lo, hi = self.sigma_window
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"sigma_window must be (low, high) with 0 < low < high < 1, got {self.sigma_window}")
        if self.grid_points < 2 * self.edge_margin + 3:
            raise ValueError(f"grid_points ({self.grid_points}) leaves no room inside the edge margin "
                             f"({self.edge_margin})")
        if not 0 < self.delta_fraction < 0.5:
            raise ValueError(f"delta_fraction must be in (0, 0.5), got {self.delta_fraction}")
        if self.branches == "both" and not self.srp:
            raise ValueError("the inversion branch applies the negative control words as a penalty, so it needs "
                             "SRP: use srp=True or branches='denoise'")
        if self.srp and (not self.positive_words or not self.negative_words):
            raise ValueError("SRP needs at least one positive and one negative control word")
        if self.width % 16 or self.height % 16:
            raise ValueError(f"width and height must be multiples of 16, got {self.width}x{self.height}")
        if self.steps < 1 or self.rollout_steps < 1:
            raise ValueError(f"steps and rollout_steps must be >= 1, got {self.steps}, {self.rollout_steps}")

    def resume_key(self) -> dict:
        keep = ("mode", "lora_rank", "lora_alpha", "lora_targets", "seed", "width", "height", "sigma_window",
                "grid_points", "branches", "srp")
        return {k: v for k, v in asdict(self).items() if k in keep}


# --------------------------------------------------------------------------------------------
# σ bookkeeping: the window grid, Δ and the discounts
# --------------------------------------------------------------------------------------------


@dataclass
class SRPORunOptions:
    """An SRPO run's options outside the resumable config (the SRPO nodes show them; declared here once)."""

    negative_prompt: str = setting("", "Negative prompt of the rollout's CFG (empty: Wan's default negative prompt).")
    decode_tile: int = setting(0, "VAE decode tile in latent pixels (0 = the whole image).", min=0, max=512)
    save_dtype: str = setting("bf16", "dtype of a saved full model.", choices=SAVE_DTYPES)

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class BranchPlan:
    """One step's σ: the target σ*, where each branch starts, and each branch's κ."""

    target_index: int
    delta_steps: int
    target: float
    start_denoise: float  # σ* + Δ
    start_inversion: float  # σ* − Δ
    kappa_denoise: float
    kappa_inversion: float


class SigmaWindow:
    """The grid σ_j = high − (high − low)·j / (points − 1), j = 0 (high) … points − 1 (low)."""

    def __init__(self, config: SRPOConfig):
        self.low, self.high = config.sigma_window
        self.points = config.grid_points
        self.margin = config.edge_margin
        self.delta_steps = int(config.delta_fraction * self.points) + 1
        self.discounts = {"denoise": config.discount_denoise, "inversion": config.discount_inversion}

    def sigma(self, j: int) -> float:
        return self.high - (self.high - self.low) * j / (self.points - 1)

    def kappa(self, branch: str, j: int) -> float:
        """The branch's discount at grid index j, linear from its low-σ value to its high-σ value."""
        at_low, at_high = self.discounts[branch]
        return at_low + (at_high - at_low) * (self.points - 1 - j) / (self.points - 1)

    def draw(self, generator: torch.Generator) -> int:
        lo, hi = self.margin, self.points - 1 - self.margin
        return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))

    def plan(self, j: int) -> BranchPlan:
        """Δ shrinks near the edges so both branches start inside the window; each branch's κ is read
        at the lower σ of its step (the target for denoise, the start for inversion)."""
        if not 0 <= j < self.points:
            raise ValueError(f"grid index {j} is outside the window's {self.points} points")
        d = min(self.delta_steps, j, self.points - 1 - j)
        return BranchPlan(j, d, self.sigma(j), self.sigma(j - d), self.sigma(j + d),
                          self.kappa("denoise", j), self.kappa("inversion", j + d))


# --------------------------------------------------------------------------------------------
# Direct-Align
# --------------------------------------------------------------------------------------------


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * noise


def direct_align(velocity, x_start: torch.Tensor, noise: torch.Tensor, sigma_start: float,
                 sigma_target: float) -> torch.Tensor:
    """One Euler step from sigma_start to sigma_target with `velocity` (the only term with
    gradient), then the one-step recovery x̂0 = (x̃ − σ*·ε) / (1 − σ*)."""
    x_target = x_start + (sigma_target - sigma_start) * velocity
    return (x_target - sigma_target * noise) / (1 - sigma_target)


def decode_for_reward(vae, latent: torch.Tensor, *, tile: tuple | None = None, checkpointed: bool = True) -> torch.Tensor:
    """Normalized one-frame latents [B, C, 1, h, w] -> images [B, 3, H, W] in [0, 1], differentiable.

    With `checkpointed`, the Wan VAE decoder recomputes each of its blocks in the backward pass
    instead of keeping their activations, and with `tile` (latent pixels) it decodes tile by tile,
    so the backward holds one block of one tile at a time. The VAE's weights stay frozen."""
    vae.check_latent(latent)
    if latent.shape[2] != 1:
        raise ValueError(f"reward decoding works on single images (one latent frame), found {latent.shape[2]}")
    video = vae.decode_with_grad(latent, tile=tile, checkpointed=checkpointed)
    # the official SRPO clamps the decoded image to [0, 1] (no gradient through clipped pixels)
    return (video[:, :, 0].float() / 2 + 0.5).clamp(0, 1)


def control_texts(prompt: str, step: int, config: SRPOConfig) -> tuple[str, str]:
    """(A, B) = (positive word, negative word) prefixed to the prompt, cycled by step."""
    positive = config.positive_words[step % len(config.positive_words)]
    negative = config.negative_words[step % len(config.negative_words)]
    return f"{positive}. {prompt}", f"{negative}. {prompt}"


def branch_score(reward, images: torch.Tensor, prompt: str, branch: str, plan: BranchPlan, step: int,
                 config: SRPOConfig) -> torch.Tensor:
    """The score the hinge loss pushes up: SRP (A/B swapped on the inversion branch) or the plain reward."""
    if not config.srp:
        return reward.score(images, [prompt] * images.shape[0])
    a, b = control_texts(prompt, step, config)
    if branch == "inversion":
        a, b = b, a
    kappa = plan.kappa_denoise if branch == "denoise" else plan.kappa_inversion
    n = images.shape[0]
    return reward.preference_score(images, [a] * n, [b] * n, kappa)


# --------------------------------------------------------------------------------------------
# Prompts, rollout, held-out evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    """A training or held-out prompt: its text (for the reward) and its DiT text embedding [L, D]."""

    text: str
    context: torch.Tensor


@dataclass
class Rollout:
    """How images are sampled: the trained model (plus, for Wan2.2 A14B, the high-noise expert for
    σ >= boundary), the negative embedding for CFG and the latent geometry."""

    model: object
    vae: object
    negative: torch.Tensor | None = None  # [L, D]; None = no guidance
    high_noise_model: object = None

    def latent_shape(self, config: SRPOConfig) -> tuple:
        sh = self.vae.config.stride[1]
        if config.width % sh or config.height % sh:
            raise ValueError(f"width and height must be multiples of the VAE's {sh}x downscale")
        return (1, self.vae.config.z_dim, 1, config.height // sh, config.width // sh)

    @torch.no_grad()
    def sample(self, prompt: Prompt, noise: torch.Tensor, config: SRPOConfig) -> torch.Tensor:
        device = next(self.model.parameters()).device
        text_len = self.model.config.text_len
        cond = Conditioning(_padded([prompt.context], text_len).to(device),
                            None if self.negative is None else _padded([self.negative], text_len).to(device))
        common = dict(steps=config.rollout_steps, shift=config.rollout_shift, solver="euler")
        if self.high_noise_model is not None:
            return generate(self.high_noise_model, noise, cond, guide_scale=config.guidance_high,
                            low_noise_model=self.model, guide_scale_low=config.guidance, boundary=config.boundary,
                            **common)
        return generate(self.model, noise, cond, guide_scale=config.guidance, **common)


def _padded(contexts, rows: int) -> torch.Tensor:
    """[L, D] text embeddings cut to the model's text length and zero-padded to it: [N, rows, D]
    (a prompt and the negative prompt then batch together for CFG)."""
    from ..models.text_encoder import pad_context

    return pad_context([c[:rows].float() for c in contexts], rows)


def channel_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every sample and position of [B, C, T, h, w] latents."""
    flat = latents.float().transpose(0, 1).reshape(latents.shape[1], -1)
    return flat.mean(1), flat.std(1)


FM_SIGMAS = (0.2, 0.4, 0.6, 0.8)  # where the held-out flow-matching loss is measured


def heldout_fm_loss(model, latents: torch.Tensor, contexts: torch.Tensor, noise: torch.Tensor) -> float:
    """Mean flow-matching loss of the model on fixed latents, noise and σ (no gradient)."""
    from ..training.flow_matching import flow_matching_loss

    with torch.no_grad():
        losses = [float(flow_matching_loss(model, latents, contexts, torch.full((latents.shape[0],), sigma,
                                                                              device=latents.device), noise))
                  for sigma in FM_SIGMAS]
    return sum(losses) / len(losses)


@dataclass
class Evaluation:
    step: int
    reward: float  # mean held-out reward (prompts without control words)
    saturation: float
    saturation_rise: float  # vs. before training
    channel_shift: float  # max over channels |Δ mean| / std before training
    fm_loss: float
    fm_loss_ratio: float  # vs. before training
    within_bounds: bool


class HeldOut:
    """The held-out prompts with fixed seeds, and the baseline (before training) they are compared to."""

    def __init__(self, prompts: Sequence[Prompt], rollout: Rollout, reward, config: SRPOConfig,
                 latents: torch.Tensor | None = None, decode_tile: tuple | None = None):
        if not prompts:
            raise ValueError("SRPO needs at least one held-out prompt (the stop rule watches them)")
        self.prompts, self.rollout, self.reward, self.config = list(prompts), rollout, reward, config
        self.decode_tile = decode_tile
        shape = rollout.latent_shape(config)
        self.noises = [torch.randn(shape, generator=torch.Generator().manual_seed(config.seed + 7919 + i))
                       for i in range(len(self.prompts))]
        self.latents = latents  # None: the baseline rollouts (the model's own distribution before training)
        self.baseline = None

    def _contexts(self, n: int, device) -> torch.Tensor:
        """The held-out prompts' embeddings for n held-out latents (cycled when n is larger)."""
        ctx = _padded([p.context for p in self.prompts], self.rollout.model.config.text_len).to(device)
        return ctx.repeat((n + len(self.prompts) - 1) // len(self.prompts), 1, 1)[:n]

    @torch.no_grad()
    def measure(self) -> dict:
        samples = [self.rollout.sample(p, n, self.config) for p, n in zip(self.prompts, self.noises)]
        x0 = torch.cat(samples)
        images = torch.cat([decode_for_reward(self.rollout.vae, s, tile=self.decode_tile) for s in samples])
        reward = float(self.reward.score(images, [p.text for p in self.prompts]).float().mean())
        if self.latents is None:
            self.latents = x0.clone()
        device = x0.device
        latents = self.latents.to(device)
        fm_noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(self.config.seed + 104729))
        fm = heldout_fm_loss(self.rollout.model, latents, self._contexts(latents.shape[0], device), fm_noise.to(device))
        mean, std = channel_stats(x0)
        return {"reward": reward, "saturation": float(saturation(images).mean()), "mean": mean.cpu(), "std": std.cpu(), "fm": fm,
                "images": images.cpu()}

    def evaluate(self, step: int) -> tuple[Evaluation, torch.Tensor]:
        m = self.measure()
        if self.baseline is None:
            self.baseline = {k: v for k, v in m.items() if k != "images"}
        b, c = self.baseline, self.config
        shift = float(((m["mean"] - b["mean"]).abs() / b["std"].clamp_min(1e-6)).max())
        ratio = m["fm"] / max(b["fm"], 1e-12)
        rise = m["saturation"] - b["saturation"]
        ok = rise <= c.max_saturation_rise and shift <= c.max_channel_shift and ratio <= c.max_fm_loss_ratio
        return Evaluation(step, m["reward"], m["saturation"], rise, shift, m["fm"], ratio, ok), m["images"]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class SRPOResult:
    history: list = field(default_factory=list)  # StepMetrics per step (extra: score, held-out figures)
    evaluations: list = field(default_factory=list)  # Evaluation, the first at step 0
    steps_done: int = 0
    best_step: int = 0  # the step whose weights the model has now
    stopped: Stop | None = None  # why the run ended before `steps`, else None
    seconds: float = 0.0
    network: object = None  # the LoRANetwork (mode lora)
    last_images: torch.Tensor | None = None  # the last evaluation's held-out images [N, 3, H, W]

    @property
    def losses(self) -> list[float]:
        """The mean hinge loss of each step."""
        return [m.loss for m in self.history]

    @property
    def scores(self) -> list[float]:
        """The mean branch score of each step."""
        return [m.extra["score"] for m in self.history]


class SRPOTrainer(ResumableTrainer):
    """One SRPO run's state: trainable parameters, optimizer, RNG, evaluations and the best weights."""

    STATE_FILE, STATE_FORMAT, KIND = STATE_FILE, STATE_FORMAT, "SRPO"

    def __init__(self, rollout: Rollout, reward, prompts: Sequence[Prompt], config: SRPOConfig,
                 heldout: HeldOut, decode_tile: tuple | None = None):
        from ..training.flow_matching import attach_trainable, replace_inference_tensors

        if not prompts:
            raise ValueError("SRPO needs at least one training prompt")
        self.rollout, self.reward, self.prompts, self.config = rollout, reward.freeze(), list(prompts), config
        self.heldout, self.decode_tile = heldout, decode_tile
        self.decode_checkpointing = True  # recompute the VAE decoder in backward (off only to measure it)
        self.model = model = rollout.model
        self.base = base_model_identity(model)  # before any weight is touched
        self.device = next(model.parameters()).device
        self.rank, self.world = world()
        rollout.vae.requires_grad_(False)
        # ComfyUI loads under inference_mode: the VAE and reward are frozen but autograd must save
        # their tensors for the backward to the pixels, so they need normal tensors too
        for module in (rollout.vae, self.reward):
            replace_inference_tensors(module)
        self.network, self.named_params = attach_trainable(
            model, config.mode, rank=config.lora_rank, alpha=config.lora_alpha, dropout=0.0,
            targets=config.lora_targets, seed=config.seed)
        self.optimizer = torch.optim.AdamW([p for _, p in self.named_params], lr=config.learning_rate,
                                           betas=config.betas, weight_decay=config.weight_decay)
        self.window = SigmaWindow(config)
        self.generator = torch.Generator().manual_seed(config.seed)  # ε, σ* and prompt order: same on all ranks
        self.step = 0
        self.history: list[StepMetrics] = []
        self.result = SRPOResult(network=self.network)
        self.best = None  # (step, reward, CPU copy of the trainable weights)

    # ---- one optimizer step ---------------------------------------------------------------

    def prompt_for(self, step: int) -> Prompt:
        n = len(self.prompts)
        epoch, position = divmod(step * self.world + self.rank, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 1000003 + epoch))
        return self.prompts[int(order[position])]

    def autocast(self):
        on = self.config.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def velocity(self, x: torch.Tensor, sigma: float, context: torch.Tensor) -> torch.Tensor:
        """The conditional velocity (no CFG: one forward) at the official integer timestep."""
        t = torch.full((x.shape[0],), float(official_timestep(sigma)), device=x.device)
        with self.autocast():
            return self.rollout.model(x, t, context).float()

    def branch(self, x0, noise, prompt: Prompt, branch: str, plan: BranchPlan, step: int):
        """Direct-Align for one branch: (loss, score, x̂0); the loss still holds its graph."""
        start = plan.start_denoise if branch == "denoise" else plan.start_inversion
        x_start = renoise(x0, noise, start)  # detached: x0 comes from the no-grad rollout
        v = self.velocity(x_start, start, prompt.context[None].to(self.device))
        x_hat = direct_align(v, x_start, noise, start, plan.target)
        images = decode_for_reward(self.rollout.vae, x_hat, tile=self.decode_tile,
                                   checkpointed=self.decode_checkpointing)
        score = branch_score(self.reward, images, prompt.text, branch, plan, step, self.config)
        return F.relu(self.config.hinge - score).mean(), score.detach(), x_hat

    def train_step(self) -> StepMetrics:
        config = self.config
        prompt = self.prompt_for(self.step)
        noise = torch.randn(self.rollout.latent_shape(config), generator=self.generator).to(self.device)
        plan = self.window.plan(self.window.draw(self.generator))
        self._eval_mode()
        x0 = self.rollout.sample(prompt, noise, config).detach()
        self._train_mode()
        branches = ("denoise", "inversion") if config.branches == "both" else ("denoise",)
        self.optimizer.zero_grad(set_to_none=True)
        losses, scores = [], []
        for name in branches:
            loss, score, _ = self.branch(x0, noise, prompt, name, plan, self.step)
            (loss / len(branches)).backward()  # one graph at a time: one gradient-carrying forward alive
            losses.append(float(loss.detach()))
            scores.append(float(score.mean()))
        params = [p for _, p in self.named_params]
        average_gradients(params)  # ranks rolled out different prompts from the same ε
        if config.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)  # the norm before clipping
        else:
            norm = grad_norm(params)
        loss = sum(losses) / len(losses)
        if self.step == 0 and loss > 0 and float(norm) == 0:
            raise ValueError("no gradient reaches the trained weights although the loss is active: with a LoRA "
                             "on a model whose output head is all zeros (e.g. an untrained demo model) nothing "
                             "can flow back; train that model fully (mode 'full') or start from a trained one")
        try:
            check_finite(loss, norm, self.step + 1, "SRPO loss")
        except NonFiniteError:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        self.optimizer.step()
        self.step += 1
        return StepMetrics(self.step, loss, float(norm), config.learning_rate, {"score": sum(scores) / len(scores)})

    def _eval_mode(self):
        self.rollout.model.eval()
        self.rollout.model.gradient_checkpointing = False
        if self.network is not None:
            self.network.eval()

    def _train_mode(self):
        self.rollout.model.train()
        self.rollout.model.gradient_checkpointing = self.config.gradient_checkpointing
        if self.network is not None:
            self.network.train()

    # ---- evaluation and the stop rule -----------------------------------------------------

    def evaluate(self) -> Evaluation:
        self._eval_mode()
        evaluation, images = self.heldout.evaluate(self.step)
        self.result.evaluations.append(evaluation)
        self.result.last_images = images
        if evaluation.within_bounds and (self.best is None or evaluation.reward > self.best[1]):
            self.best = (self.step, evaluation.reward, self.trainable_weights())
        return evaluation

    def stop_reason(self, evaluation: Evaluation) -> Stop | None:
        c = self.config
        if not evaluation.within_bounds:
            parts = []
            if evaluation.saturation_rise > c.max_saturation_rise:
                parts.append(f"saturation rose by {evaluation.saturation_rise:.3f} (> {c.max_saturation_rise})")
            if evaluation.channel_shift > c.max_channel_shift:
                parts.append(f"a latent channel's mean moved {evaluation.channel_shift:.2f} std (> {c.max_channel_shift})")
            if evaluation.fm_loss_ratio > c.max_fm_loss_ratio:
                parts.append(f"the held-out flow-matching loss grew {evaluation.fm_loss_ratio:.2f}x "
                             f"(> {c.max_fm_loss_ratio})")
            return Stop(StopReason.DRIFT, "drift monitor: " + "; ".join(parts))
        if c.patience and self.best is not None:
            evals_since_best = sum(1 for e in self.result.evaluations if e.step > self.best[0])
            if evals_since_best >= c.patience:
                return Stop(StopReason.NO_IMPROVEMENT,
                            f"the held-out reward has not improved for {evals_since_best} evaluations")
        return None

    def trainable_weights(self) -> dict:
        return {n: p.detach().to("cpu", copy=True) for n, p in self.named_params}

    def restore_best(self) -> None:
        if self.best is None:
            return
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(self.best[2][n].to(p.device, p.dtype))
        self.result.best_step = self.best[0]

    # ---- resumable state ------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {"weights": self.trainable_weights(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "evaluations": [asdict(e) for e in self.result.evaluations],
                "baseline": self.heldout.baseline, "heldout_latents": self.heldout.latents,
                "best": None if self.best is None else {"step": self.best[0], "reward": self.best[1],
                                                        "weights": self.best[2]}}

    def check_extra_state(self, state: dict) -> None:
        like = dict(self.named_params)
        check_tensors(state, "weights", like)
        expect(isinstance(state.get("optimizer"), dict), state, "optimizer", "an optimizer state dict",
               type(state.get("optimizer")).__name__)
        ours, found = self.generator.get_state(), state.get("generator")
        expect(torch.is_tensor(found) and found.dtype == torch.uint8 and found.shape == ours.shape, state,
               "generator", f"a random generator state (uint8 {tuple(ours.shape)})", found)
        evaluations = state.get("evaluations")
        names = {f.name for f in fields(Evaluation)}
        expect(isinstance(evaluations, list) and all(isinstance(e, dict) and set(e) == names for e in evaluations),
               state, "evaluations", f"a list of dicts with {sorted(names)}", evaluations)
        baseline, latents = state.get("baseline"), state.get("heldout_latents")
        expect(baseline is None or (isinstance(baseline, dict) and {"reward", "saturation", "mean", "std", "fm"}
                                    <= set(baseline)), state, "baseline", "the held-out baseline figures", baseline)
        expect(latents is None or (torch.is_tensor(latents) and latents.ndim == 5), state, "heldout_latents",
               "None or latents [N, C, 1, h, w]", latents)
        best = state.get("best")
        expect(best is None or (isinstance(best, dict) and set(best) == {"step", "reward", "weights"}
                                and isinstance(best["step"], int) and 0 <= best["step"] <= state["step"]),
               state, "best", "None or the best step, reward and weights", best)
        if best is not None:
            check_tensors(best, "weights", like)

    def load_extra_state(self, state: dict) -> None:
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(state["weights"][n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.result.evaluations = [Evaluation(**e) for e in state["evaluations"]]
        self.heldout.baseline, self.heldout.latents = state["baseline"], state["heldout_latents"]
        best = state["best"]
        self.best = None if best is None else (best["step"], best["reward"], best["weights"])

    # ---- the skeleton's hooks ---------------------------------------------------------------

    def before_run(self) -> None:
        if not self.result.evaluations:
            self.evaluate()  # the baseline every monitor is measured against

    def after_step(self, metrics: StepMetrics) -> Stop | None:
        c = self.config
        if not (c.eval_every and self.step % c.eval_every == 0 or self.step == c.steps):
            return None
        evaluation = self.evaluate()
        metrics.extra.update(heldout_reward=evaluation.reward, saturation_rise=evaluation.saturation_rise,
                             channel_shift=evaluation.channel_shift, fm_loss_ratio=evaluation.fm_loss_ratio)
        return self.stop_reason(evaluation)

    def end_run(self) -> None:
        self._eval_mode()


def load_srpo_state(state_dir) -> dict | None:
    return load_state(state_dir, STATE_FILE)


def train_srpo(rollout: Rollout, reward, prompts: Sequence[Prompt], heldout_prompts: Sequence[Prompt],
               config: SRPOConfig, *, heldout_latents: torch.Tensor | None = None, decode_tile: tuple | None = None,
               state_dir=None, resume: bool = True, callback=None) -> SRPOResult:
    """Fine-tune `rollout.model` in place (full) or through a LoRA hooked onto it; see the module
    docstring. The model ends with the best in-bounds weights seen by the held-out evaluation
    (config.keep = "best") or with the final ones ("last").

    heldout_latents: normalized latents [N, C, 1, h, w] for the flow-matching drift monitor (default:
    the model's own held-out rollouts before training). decode_tile: latent tile for the VAE.
    callback(step, total, metrics: StepMetrics) after every step (metrics.extra: the step's `score`, and
    after an evaluation `heldout_reward` and the drift monitors); an exception from it (ComfyUI's
    interrupt) saves the resumable state and re-raises.
    """
    model = rollout.model
    with torch.inference_mode(False), torch.enable_grad():
        heldout = HeldOut(heldout_prompts, rollout, reward, config, heldout_latents, decode_tile)
        trainer = SRPOTrainer(rollout, reward, prompts, config, heldout, decode_tile)
        outcome = run_resumable(trainer, config.steps, state_dir=state_dir, resume=resume,
                                save_every=config.save_every, callback=callback)
        result = trainer.result
        if config.keep == "best":
            trainer.restore_best()
        else:
            result.best_step = trainer.step
        model.requires_grad_(False)
    result.history, result.steps_done, result.stopped = trainer.history, trainer.step, outcome.stopped
    result.seconds = outcome.seconds
    return result


def reward_curve_image(result: SRPOResult, *, width: int = 640, height: int = 480):
    """Two stacked plots over the optimizer steps: the held-out reward (each evaluation's value held
    until the next one) and the training hinge loss."""
    from PIL import Image

    from ..training.plots import loss_curve_image

    evaluations = result.evaluations
    if evaluations:
        marks = {e.step: e.reward for e in evaluations}
        value, held = evaluations[0].reward, []
        for step in range(evaluations[-1].step + 1):
            value = marks.get(step, value)
            held.append(value)
        title = "held-out reward (evaluated at steps " + ", ".join(str(e.step) for e in evaluations[:8]) + \
            (", ..." if len(evaluations) > 8 else "") + ")"
    else:
        held, title = [float("nan")], "held-out reward (no evaluation)"
    top = loss_curve_image(held, width=width, height=height // 2, title=title, smooth=1, log_scale=False)
    bottom = loss_curve_image(result.losses or [float("nan")], width=width, height=height - height // 2,
                              title="SRPO hinge loss per step", log_scale=False)
    image = Image.new("RGB", (width, height))
    image.paste(top, (0, 0))
    image.paste(bottom, (0, height // 2))
    return image
