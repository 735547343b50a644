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

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..generation.pipeline import Conditioning, generate
from ..sampling.solvers import official_timestep
from ..training.distributed import average_gradients, world
from .base import saturation

# the official SRPO's control words (realism vs. "CG / oily" look), cycled by step
POSITIVE_WORDS = ("Natural-lighting", "Detail", "Detailed", "Real")
NEGATIVE_WORDS = ("Concept art", "Painting", "Anime", "Flat", "Oil")
BRANCHES = ("both", "denoise")
STATE_FILE = "srpo_state.pt"
STATE_FORMAT = 1


@dataclass
class SRPOConfig:
    """Everything that shapes an SRPO run (saved with the state, so a resume can check it)."""

    mode: str = "lora"  # lora | full
    steps: int = 100  # optimizer steps (one rollout, one pass per branch)
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0 = no clipping
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: str = "attention+ffn"
    precision: str = "bf16"  # bf16: autocast over fp32 master weights (CUDA); fp32: none
    gradient_checkpointing: bool = True
    # the image and its rollout
    width: int = 512
    height: int = 512
    rollout_steps: int = 20
    rollout_shift: float = 5.0
    guidance: float = 4.0  # CFG of the trained model during rollout
    guidance_high: float = 4.0  # the high-noise expert's, when one does the rollout's high-σ steps
    boundary: float = 0.875  # Wan2.2 A14B T2V expert switch (σ)
    # Direct-Align
    sigma_window: tuple = (0.5, 0.85)  # (low, high): inside the low-noise expert's range (< 0.875)
    grid_points: int = 1000  # the window is a grid of this many σ, high to low
    delta_fraction: float = 0.1  # Δ = this fraction of the grid, in grid steps (+1, as the official)
    edge_margin: int = 5  # σ* is drawn from grid indices [margin, points - 1 - margin]
    branches: str = "both"  # both (denoise + inversion) | denoise
    # Semantic Relative Preference
    srp: bool = True
    positive_words: tuple = POSITIVE_WORDS
    negative_words: tuple = NEGATIVE_WORDS
    discount_denoise: tuple = (0.1, 0.25)  # κ at the window's low σ end, at its high σ end
    discount_inversion: tuple = (0.3, 0.01)
    hinge: float = 0.7  # τ in ReLU(τ − score)
    # held-out evaluation and the stop rule
    eval_every: int = 10
    max_saturation_rise: float = 0.1  # mean per-pixel RGB spread, in [0, 1] pixel units
    max_channel_shift: float = 1.0  # |Δ mean| of any latent channel, in its std before training
    max_fm_loss_ratio: float = 1.5  # flow-matching loss on held-out latents vs. before training
    patience: int = 0  # evaluations without a better held-out reward before stopping (0 = never)
    keep: str = "best"  # best: end with the best in-bounds evaluated weights | last: the final weights
    seed: int = 0
    save_every: int = 0  # steps between resumable states (0: at the end / on interrupt only)

    def __post_init__(self):
        for name in ("betas", "sigma_window", "positive_words", "negative_words", "discount_denoise",
                     "discount_inversion"):
            setattr(self, name, tuple(getattr(self, name)))
        for name, value, allowed in (("mode", self.mode, ("lora", "full")), ("branches", self.branches, BRANCHES),
                                     ("precision", self.precision, ("bf16", "fp32")), ("keep", self.keep, ("best", "last"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
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
    losses: list = field(default_factory=list)  # mean hinge loss per step
    scores: list = field(default_factory=list)  # mean branch score per step
    evaluations: list = field(default_factory=list)  # Evaluation, the first at step 0
    steps_done: int = 0
    best_step: int = 0  # the step whose weights the model has now
    stopped: str | None = None  # why the run ended before `steps`, else None
    seconds: float = 0.0
    network: object = None  # the LoRANetwork (mode lora)
    last_images: torch.Tensor | None = None  # the last evaluation's held-out images [N, 3, H, W]


class SRPOTrainer:
    """One SRPO run's state: trainable parameters, optimizer, RNG, evaluations and the best weights."""

    def __init__(self, rollout: Rollout, reward, prompts: Sequence[Prompt], config: SRPOConfig,
                 heldout: HeldOut, decode_tile: tuple | None = None):
        from ..training.flow_matching import attach_trainable, make_trainable

        if not prompts:
            raise ValueError("SRPO needs at least one training prompt")
        self.rollout, self.reward, self.prompts, self.config = rollout, reward.freeze(), list(prompts), config
        self.heldout, self.decode_tile = heldout, decode_tile
        self.decode_checkpointing = True  # recompute the VAE decoder in backward (off only to measure it)
        self.model = model = rollout.model
        self.device = next(model.parameters()).device
        self.rank, self.world = world()
        rollout.vae.requires_grad_(False)
        # ComfyUI loads under inference_mode: the VAE and reward are frozen but autograd must save
        # their tensors for the backward to the pixels, so they need normal tensors too
        for module in (rollout.vae, self.reward):
            make_trainable(module)
        self.network, self.named_params = attach_trainable(
            model, config.mode, rank=config.lora_rank, alpha=config.lora_alpha, dropout=0.0,
            targets=config.lora_targets, seed=config.seed)
        self.optimizer = torch.optim.AdamW([p for _, p in self.named_params], lr=config.learning_rate,
                                           betas=config.betas, weight_decay=config.weight_decay)
        self.window = SigmaWindow(config)
        self.generator = torch.Generator().manual_seed(config.seed)  # ε, σ* and prompt order: same on all ranks
        self.step = 0
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

    def train_step(self) -> tuple[float, float]:
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
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        else:
            norm = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm()
        loss = sum(losses) / len(losses)
        if self.step == 0 and loss > 0 and float(norm) == 0:
            raise ValueError("no gradient reaches the trained weights although the loss is active: with a LoRA "
                             "on a model whose output head is all zeros (e.g. an untrained demo model) nothing "
                             "can flow back; train that model fully (mode 'full') or start from a trained one")
        if not (math.isfinite(loss) and math.isfinite(float(norm))):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"non-finite SRPO loss or gradient at step {self.step + 1}")
        self.optimizer.step()
        self.step += 1
        self.result.losses.append(loss)
        self.result.scores.append(sum(scores) / len(scores))
        return loss, self.result.scores[-1]

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

    def stop_reason(self, evaluation: Evaluation) -> str | None:
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
            return "drift monitor: " + "; ".join(parts)
        if c.patience and self.best is not None:
            evals_since_best = sum(1 for e in self.result.evaluations if e.step > self.best[0])
            if evals_since_best >= c.patience:
                return f"the held-out reward has not improved for {evals_since_best} evaluations"
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

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "config": self.config.resume_key(), "step": self.step,
                "weights": self.trainable_weights(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "losses": torch.tensor(self.result.losses, dtype=torch.float64),
                "scores": torch.tensor(self.result.scores, dtype=torch.float64),
                "evaluations": [asdict(e) for e in self.result.evaluations],
                "baseline": self.heldout.baseline, "heldout_latents": self.heldout.latents,
                "best": None if self.best is None else {"step": self.best[0], "reward": self.best[1],
                                                        "weights": self.best[2]}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown SRPO state format {state.get('format')!r} (expected {STATE_FORMAT})")
        if state["config"] != self.config.resume_key():
            theirs, ours = state["config"], self.config.resume_key()
            diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
            raise ValueError(f"the saved SRPO state was made with other settings (saved, now): {diff}; "
                             "use another output name or the same settings")
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(state["weights"][n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.result.losses = state["losses"].tolist()
        self.result.scores = state["scores"].tolist()
        self.result.evaluations = [Evaluation(**e) for e in state["evaluations"]]
        self.heldout.baseline, self.heldout.latents = state["baseline"], state["heldout_latents"]
        best = state["best"]
        self.best = None if best is None else (best["step"], best["reward"], best["weights"])

    def save(self, state_dir) -> Path:
        from ..io.write import atomic_write

        path = Path(state_dir) / STATE_FILE
        state = self.state_dict()
        if self.rank == 0:
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        if self.world > 1:
            torch.distributed.barrier()
        return path


def load_srpo_state(state_dir) -> dict | None:
    from ..training.flow_matching import load_state

    return load_state(state_dir, STATE_FILE)


def train_srpo(rollout: Rollout, reward, prompts: Sequence[Prompt], heldout_prompts: Sequence[Prompt],
               config: SRPOConfig, *, heldout_latents: torch.Tensor | None = None, decode_tile: tuple | None = None,
               state_dir=None, resume: bool = True, callback=None) -> SRPOResult:
    """Fine-tune `rollout.model` in place (full) or through a LoRA hooked onto it; see the module
    docstring. The model ends with the best in-bounds weights seen by the held-out evaluation
    (config.keep = "best") or with the final ones ("last").

    heldout_latents: normalized latents [N, C, 1, h, w] for the flow-matching drift monitor (default:
    the model's own held-out rollouts before training). decode_tile: latent tile for the VAE.
    callback(step, total, loss, score, evaluation or None) after every step; an exception from it
    (ComfyUI's interrupt) saves the resumable state and re-raises.
    """
    started = time.perf_counter()
    model = rollout.model
    with torch.inference_mode(False), torch.enable_grad():
        heldout = HeldOut(heldout_prompts, rollout, reward, config, heldout_latents, decode_tile)
        trainer = SRPOTrainer(rollout, reward, prompts, config, heldout, decode_tile)
        result = trainer.result
        state = load_srpo_state(state_dir) if state_dir is not None and resume else None
        saved_at = None
        if state is not None:
            trainer.load_state_dict(state)
            saved_at = trainer.step
        try:
            if not result.evaluations:
                trainer.evaluate()  # the baseline every monitor is measured against
            while trainer.step < config.steps and result.stopped is None:
                try:
                    loss, score = trainer.train_step()
                except FloatingPointError as e:
                    result.stopped = f"{e}; training stopped"
                    break
                evaluation = None
                if config.eval_every and trainer.step % config.eval_every == 0 or trainer.step == config.steps:
                    evaluation = trainer.evaluate()
                    result.stopped = trainer.stop_reason(evaluation)
                if state_dir is not None and config.save_every and trainer.step % config.save_every == 0:
                    trainer.save(state_dir)
                    saved_at = trainer.step
                if callback is not None:
                    callback(trainer.step, config.steps, loss, score, evaluation)
        except BaseException:
            if state_dir is not None and trainer.step != saved_at:
                trainer.save(state_dir)
            raise
        finally:
            trainer._eval_mode()
        if state_dir is not None and trainer.step != saved_at:
            trainer.save(state_dir)
        if config.keep == "best":
            trainer.restore_best()
        else:
            result.best_step = trainer.step
        model.requires_grad_(False)
    result.steps_done = trainer.step
    result.seconds = time.perf_counter() - started
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
