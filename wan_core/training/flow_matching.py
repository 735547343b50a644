"""Flow-matching training of Wan DiTs: LoRA or full fine-tune, in Wan's own convention.

Objective (docs/conventions.md §1, §13): for a clean normalized latent x0, noise ε and a noise
level σ, the model sees x_σ = (1 − σ)·x0 + σ·ε at timestep 1000·σ and is trained to predict
v = ε − x0 with a (optionally weighted) mean squared error. Image conditioning (`y`, `clip_fea` of
I2V models) is clean and never noised; TI2V can keep latent frame 0 clean with timestep 0 on its
tokens, left out of the loss.

`train(model, dataset, config)` runs the loop: AdamW with warmup + cosine decay, gradient
accumulation and clipping, bf16 autocast over fp32 master weights, per-block gradient checkpointing,
an EMA of the trainable weights, and a resumable state (optimizer, step, RNG, EMA) written
atomically. The dataset is any object with `__len__`, `__getitem__(i) -> {"latent", "context", ...}`
and `bucket_of(i)` (see `wan_core.latent_cache`). Under torch.distributed every rank takes its
slice of the same global batch (see `wan_core.distributed`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..lora.adapters import LORA_TARGET_PRESETS
from ..sampling.solvers import shift_sigma
from .run import (
    NonFiniteError,
    ResumableTrainer,
    StepMetrics,
    Stop,
    base_model_identity,
    check_finite,
    check_tensors,
    expect,
    grad_norm,
    run_resumable,
)
from .settings import check_settings, setting

SIGMA_SAMPLINGS = ("uniform", "logit_normal", "shift")
LOSS_WEIGHTINGS = ("none", "diffsynth")
MODES = ("lora", "full")
PRECISIONS = ("bf16", "fp32")
LORA_TARGETS = tuple(LORA_TARGET_PRESETS)
STATE_FILE = "train_state.pt"
STATE_FORMAT = 2  # 2: per-step metrics history (format 1 kept only losses)


@dataclass
class TrainConfig:
    """Everything that shapes a training run (saved with the state, so a resume can check it).
    Each field's help, range and choices are declared here once (`training.settings`)."""

    mode: str = setting("lora", "lora: train a LoRA on the frozen model; full: fine-tune every weight.",
                        choices=MODES, node="none")
    steps: int = setting(1000, "Optimizer steps.", min=1, max=10_000_000, node="main")
    learning_rate: float = setting(1e-4, "Peak learning rate of AdamW (after warmup, then the schedule).",
                                   min=1e-9, max=1.0, step=1e-5, node="main")
    batch_size: int = setting(1, "Clips per rank and micro-step (clips of one bucket only).", min=1, max=1024)
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", min=1, max=4096)
    warmup_steps: int = setting(0, "Steps of linear learning-rate warmup.", min=0, max=10_000_000)
    lr_schedule: str = setting("cosine", "Learning rate after the warmup: cosine decay or constant.",
                               choices=("cosine", "constant"))
    min_lr_ratio: float = setting(0.0, "Floor of the cosine decay, as a fraction of learning_rate.", min=0.0, max=1.0,
                                  step=0.01)
    weight_decay: float = setting(0.01, "AdamW weight decay.", min=0.0, max=10.0, step=0.001)
    betas: tuple = setting((0.9, 0.999), "AdamW betas.", min=0.0, max=0.999999, node="none")
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this (0 = no clipping).", min=0.0, max=1e6,
                                   step=0.01)
    # noise levels: uniform σ, logit-normal σ (SD3), or uniform then shifted (DiffSynth-style, shift 5)
    sigma_sampling: str = setting("shift", "How noise levels are drawn: shift = uniform then shifted toward high "
                                  "noise (DiffSynth-style), logit_normal (SD3-style) or uniform.", choices=SIGMA_SAMPLINGS)
    shift: float = setting(5.0, "Shift of sigma_sampling=shift (and of the diffsynth loss weighting).", min=0.01,
                           max=100.0, step=0.1)
    logit_mean: float = setting(0.0, "Mean of sigma_sampling=logit_normal.", min=-10.0, max=10.0, step=0.05)
    logit_std: float = setting(1.0, "Standard deviation of sigma_sampling=logit_normal.", min=0.01, max=10.0, step=0.05)
    sigma_range: tuple = setting((0.0, 1.0), "Train only σ in [low, high] (Wan2.2 A14B: one expert's range).",
                                 min=0.0, max=1.0, step=0.005)
    loss_weighting: str = setting("none", "none, or diffsynth: a bell over timesteps favouring mid noise (mean 1).",
                                  choices=LOSS_WEIGHTINGS)
    lora_rank: int = setting(16, "LoRA rank: capacity and file size.", min=1, max=1024, node="main")
    lora_alpha: float = setting(16.0, "LoRA scale is alpha / rank.", min=0.01, max=4096.0, step=0.5, node="main")
    lora_dropout: float = setting(0.0, "Dropout on the LoRA input during training.", min=0.0, max=0.95, step=0.01)
    lora_targets: str = setting("attention+ffn", "Which linear layers get a LoRA: a preset (attention, attention+ffn, "
                                "self_attention, cross_attention, ffn) or glob patterns.", presets=LORA_TARGETS,
                                node="main")
    precision: str = setting("bf16", "bf16 autocast over fp32 master weights, or plain fp32.", choices=PRECISIONS)
    gradient_checkpointing: bool = setting(True, "Recompute each block in the backward pass: much less memory, "
                                           "about 30% slower.")
    ema_decay: float = setting(0.0, "EMA of the trained weights (0 = off); when on, the result is the EMA.",
                               min=0.0, max=0.99999, step=0.0001)
    first_frame_clean: bool = setting(False, "Wan2.2 TI2V-5B image-to-video training: latent frame 0 stays clean "
                                      "(timestep 0 on its tokens) and is left out of the loss.")
    seed: int = setting(0, "Fixes data order, noise levels, noise and LoRA init: the same seed gives the same run.",
                        min=0, max=2 ** 64 - 1, node="main")
    save_every: int = setting(0, "Write the resumable state every N optimizer steps (0: at the end and on interrupt).",
                              min=0, max=10_000_000)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.sigma_range = tuple(float(s) for s in self.sigma_range)
        check_settings(self)
        lo, hi = self.sigma_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"sigma_range must satisfy 0 <= lo < hi <= 1, got {self.sigma_range}")

    def resume_key(self) -> dict:
        """The settings a saved state must share with this run to be resumed by it."""
        keep = ("mode", "batch_size", "grad_accum", "lora_rank", "lora_alpha", "lora_targets", "seed",
                "sigma_sampling", "sigma_range", "first_frame_clean")
        return {k: v for k, v in asdict(self).items() if k in keep}


SAVE_DTYPES = ("bf16", "fp16", "fp32")
FULL_FINETUNE_LR = 2e-5  # the full fine-tune nodes' default: every weight moves, so 5x below TrainConfig's LoRA rate


@dataclass
class RunOptions:
    """A training run's options outside the resumable config: the Wan2.2 A14B expert split, validation
    samples and the dtype of a saved full model (the trainer nodes show them; declared here once)."""

    boundary: float = setting(0.875, "Wan2.2 A14B: the expert split in σ (0.875 T2V, 0.9 I2V); each expert trains "
                              "on its side of it.", min=0.01, max=0.99, step=0.005)
    validate_every: int = setting(0, "Sample the validation prompt every N steps (0 = only at the end).", min=0,
                                  max=10_000_000)
    validation_steps: int = setting(20, "Euler steps per validation sample.", min=1, max=1000)
    validation_cfg: float = setting(1.0, "Guidance scale of the validation samples (needs a validation negative).",
                                    min=1.0, max=30.0, step=0.1)
    save_dtype: str = setting("bf16", "dtype of a saved full model.", choices=SAVE_DTYPES, node="main")

    def __post_init__(self):
        check_settings(self)


@dataclass
class TrainResult:
    history: list = field(default_factory=list)  # StepMetrics per optimizer step, from step 1
    steps_done: int = 0
    seconds: float = 0.0
    network: object = None  # the LoRANetwork (mode "lora"), hooks still installed
    stopped: Stop | None = None  # why training ended early (non-finite loss), else None
    checkpoint_step: int | None = None  # the step of the last resumable state written

    @property
    def losses(self) -> list[float]:
        """One mean loss per optimizer step, from step 1."""
        return [m.loss for m in self.history]


# --------------------------------------------------------------------------------------------
# Noise levels and loss weights
# --------------------------------------------------------------------------------------------


def _unshift(sigma: float, shift: float) -> float:
    """Inverse of shift_sigma: the uniform u with shift(u) = sigma."""
    return sigma / (shift - (shift - 1.0) * sigma) if sigma < 1 else 1.0


def sample_sigmas(n: int, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """n noise levels in config.sigma_range, float32.

    The range is enforced by drawing u uniformly between the distribution's CDF values at the
    range's ends and mapping through its inverse CDF: the exact truncated distribution, with no
    rejection loop however narrow the range.
    """
    lo, hi = config.sigma_range
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if config.sigma_sampling == "uniform":
        return (lo + (hi - lo) * u).float()
    if config.sigma_sampling == "shift":
        a, b = _unshift(lo, config.shift), _unshift(hi, config.shift)
        return shift_sigma(a + (b - a) * u, config.shift).float()
    # logit-normal: σ = sigmoid(m + s·z), z ~ N(0, 1) truncated to the range
    m, s = config.logit_mean, config.logit_std
    cdf = lambda sigma: 0.0 if sigma <= 0 else 1.0 if sigma >= 1 else float(  # noqa: E731
        torch.special.ndtr(torch.tensor((math.log(sigma / (1 - sigma)) - m) / s, dtype=torch.float64)))
    p = cdf(lo) + (cdf(hi) - cdf(lo)) * u
    p = p.clamp(1e-12, 1 - 1e-12)
    return torch.sigmoid(m + s * torch.special.ndtri(p)).clamp(lo, hi).float()


def diffsynth_weights(sigmas: torch.Tensor, shift: float = 5.0) -> torch.Tensor:
    """The DiffSynth-Studio loss weight (docs/conventions.md §13): a bell over the timestep 1000σ, shifted so
    its minimum over the 1000-step training grid is 0 and scaled to mean 1 over that grid."""
    grid = shift_sigma(torch.linspace(1, 0, 1001, dtype=torch.float64)[:1000], shift) * 1000
    bell = lambda t: torch.exp(-2 * ((t - 500) / 1000) ** 2)  # noqa: E731
    low = bell(grid).min()
    mean = (bell(grid) - low).mean()
    return ((bell(sigmas.double() * 1000) - low) / mean).float()


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε, σ per sample."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def flow_matching_loss(model, x0, context, sigma, noise, *, clip_fea=None, y=None, first_frame_clean=False,
                       weights=None, stats: dict | None = None) -> torch.Tensor:
    """Mean over the batch of the per-sample MSE between the model's velocity and ε − x0.

    first_frame_clean (TI2V): latent frame 0 stays x0 with timestep 0 on its tokens and is left out
    of the loss, as the TI2V sampler treats a given first frame. `stats`, if given, receives
    `v_ratio` = |v_pred| / |v_target| and `v_cosine`, their cosine (over the trained elements).
    """
    x = noisy_input(x0, noise, sigma)
    target = noise - x0
    timestep = sigma.float() * 1000
    frame_mask = None
    if first_frame_clean:
        x = torch.cat([x0[:, :, :1], x[:, :, 1:]], dim=2)
        pt, ph, pw = model.config.patch_size
        grid = (x0.shape[2] // pt, x0.shape[3] // ph, x0.shape[4] // pw)
        per_frame = grid[1] * grid[2]
        timestep = timestep[:, None].repeat(1, math.prod(grid))
        timestep[:, :per_frame] = 0
        frame_mask = torch.ones_like(x0[:1, :1])
        frame_mask[:, :, 0] = 0
    v = model(x, timestep, context, clip_fea=clip_fea, y=y)
    err = (v.float() - target.float()) ** 2
    if frame_mask is not None:
        per_sample = (err * frame_mask).flatten(1).sum(1) / (frame_mask.sum() * err.shape[1])
    else:
        per_sample = err.flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    if stats is not None:
        with torch.no_grad():
            pred, want = v.detach().float(), target.float()
            if frame_mask is not None:
                pred, want = pred[:, :, 1:], want[:, :, 1:]
            stats["v_ratio"] = float(pred.norm() / want.norm().clamp_min(1e-12))
            stats["v_cosine"] = float(F.cosine_similarity(pred.flatten(), want.flatten(), dim=0))
    return per_sample.mean()


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def epoch_batches(dataset, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: indices shuffled, grouped by bucket (equal shapes), each
    bucket cut into batches of `global_batch` (the last one topped up from the same bucket's start,
    so small datasets still fill a batch), batch order shuffled. Fixed by (seed, epoch) alone, so a
    resumed run continues the same sequence."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(len(dataset), generator=gen).tolist()
    by_bucket: dict = {}
    for i in order:
        by_bucket.setdefault(dataset.bucket_of(i), []).append(i)
    batches = []
    for items in by_bucket.values():
        for start in range(0, len(items), global_batch):
            chunk = items[start:start + global_batch]
            while len(chunk) < global_batch:
                chunk = chunk + items[: global_batch - len(chunk)]
            batches.append(chunk)
    return [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]


class BatchStream:
    """Global batches one after another across epochs; `position` (micro-batches served) is all a
    resume needs."""

    def __init__(self, dataset, global_batch: int, seed: int, position: int = 0):
        self.dataset, self.global_batch, self.seed = dataset, global_batch, seed
        # every epoch has the same number of batches (it depends on the bucket sizes only), so a resume
        # jumps to its epoch and cursor instead of replaying the batches before it
        per_epoch = len(epoch_batches(dataset, global_batch, seed, 0))
        self.epoch, self.cursor = divmod(position, per_epoch)
        self.batches = epoch_batches(dataset, global_batch, seed, self.epoch)
        self.position = position

    def next(self) -> list[int]:
        if self.cursor == len(self.batches):
            self.epoch += 1
            self.batches, self.cursor = epoch_batches(self.dataset, self.global_batch, self.seed, self.epoch), 0
        batch = self.batches[self.cursor]
        self.cursor += 1
        self.position += 1
        return batch


def collate(items: list[dict], text_len: int, device) -> dict:
    """Stack dataset items into model inputs: contexts zero-padded to the model's text length (as
    at inference), copies made outside inference mode (ComfyUI runs nodes inside it)."""
    latent = torch.stack([it["latent"] for it in items]).float()
    rows = max(max(it["context"].shape[0] for it in items), text_len)
    context = latent.new_zeros(len(items), rows, items[0]["context"].shape[1])
    for i, it in enumerate(items):
        context[i, : it["context"].shape[0]] = it["context"].float()
    out = {"latent": latent.to(device), "context": context.to(device)}
    for key in ("y", "clip_fea"):
        if items[0].get(key) is not None:
            out[key] = torch.stack([it[key] for it in items]).float().to(device)
    return out


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def replace_inference_tensors(model: torch.nn.Module) -> None:
    """Replace inference tensors (made under ComfyUI's torch.inference_mode) by normal copies:
    autograd cannot save inference tensors for backward, even frozen ones."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_inference():
                module._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None and b.is_inference():
                module._buffers[name] = b.clone()


def attach_trainable(model, mode: str, *, rank: int, alpha: float, dropout: float, targets: str, seed: int,
                     network=None) -> tuple:
    """Make `model` ready for training (flow matching or SRPO): normal tensors instead of inference
    ones, the base frozen, then a LoRA hooked on (mode "lora"; `network` if given, else a new one)
    or every weight trainable in fp32 (mode "full": master weights, autocast picks the compute
    dtype). -> (the LoRANetwork or None, [(name, trainable parameter)])."""
    replace_inference_tensors(model)
    model.requires_grad_(False)
    if mode == "lora":
        if network is None:
            from ..lora.adapters import add_lora  # local import: lora is only needed in LoRA mode

            network = add_lora(model, rank=rank, alpha=alpha, dropout=dropout, targets=targets, seed=seed)
        network = network.to(next(model.parameters()).device)
        named = list(network.named_parameters())
    else:
        network = None
        if any(p.dtype != torch.float32 for p in model.parameters()):
            model.float()  # fp32 master weights; autocast computes in bf16
            model.compute_dtype_override = None
        named = list(model.named_parameters())
    for _, p in named:
        p.requires_grad_(True)
    return network, named


class Trainer(ResumableTrainer):
    """One flow-matching run's state: the trainable parameters, optimizer, EMA, RNG and data position.

    Use `train(...)` unless you need to drive the steps yourself.
    """

    STATE_FILE, STATE_FORMAT, KIND = STATE_FILE, STATE_FORMAT, "training"

    def __init__(self, model, dataset, config: TrainConfig, *, network=None):
        self.model, self.dataset, self.config = model, dataset, config
        self.base = base_model_identity(model)  # before any weight is touched
        self.device = next(model.parameters()).device
        self.rank, self.world = _rank_and_world()
        if config.first_frame_clean and getattr(model.config, "model_type", "") != "ti2v":
            raise ValueError("first_frame_clean is for Wan2.2 TI2V-5B image-to-video training; this model is "
                             f"{getattr(model.config, 'variant', '') or model.config.model_type}")
        model.gradient_checkpointing = config.gradient_checkpointing
        self.network, self.named_params = attach_trainable(
            model, config.mode, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
            targets=config.lora_targets, seed=config.seed, network=network)
        if self.network is not None:
            self.network.train()
        # sharding (FSDP) replaces the model's parameters: wrap before taking them for the optimizer
        self.wrapped = _wrap_distributed(model, self.network, config) if self.world > 1 else model
        if self.network is None:
            self.named_params = list(model.named_parameters())
        params = [p for _, p in self.named_params]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.ema = ({n: p.detach().clone().float() for n, p in self.named_params} if config.ema_decay > 0 else None)
        self.generator = torch.Generator().manual_seed(config.seed)  # σ and noise: same on every rank
        torch.manual_seed(config.seed + self.rank)  # dropout
        self.step = 0
        self.history: list[StepMetrics] = []
        self.stream = BatchStream(dataset, config.batch_size * self.world, config.seed)

    # ---- one optimizer step -----------------------------------------------------------------

    def micro_batch(self) -> dict:
        """The next global batch's σ and noise (drawn for all ranks alike) and this rank's slice."""
        indices = self.stream.next()
        items = [self.dataset[i] for i in indices]
        sigmas = sample_sigmas(len(items), self.config, self.generator)
        noises = [torch.randn(it["latent"].shape, generator=self.generator) for it in items]
        mine = slice(self.rank * self.config.batch_size, (self.rank + 1) * self.config.batch_size)
        batch = collate(items[mine], self.model.config.text_len, self.device)
        batch["sigma"] = sigmas[mine].to(self.device)
        batch["noise"] = torch.stack(noises[mine]).to(self.device)
        return batch

    def loss(self, batch: dict, stats: dict | None = None) -> torch.Tensor:
        weights = diffsynth_weights(batch["sigma"], self.config.shift) if self.config.loss_weighting == "diffsynth" else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")
        with autocast:
            return flow_matching_loss(self.wrapped, batch["latent"], batch["context"], batch["sigma"], batch["noise"],
                                      clip_fea=batch.get("clip_fea"), y=batch.get("y"),
                                      first_frame_clean=self.config.first_frame_clean, weights=weights, stats=stats)

    def train_step(self) -> StepMetrics:
        """One optimizer step over grad_accum micro-batches; returns its metrics (loss: the mean over
        ranks). Raises NonFiniteError, leaving the weights as they were before the step."""
        cfg = self.config
        lr = cfg.learning_rate * learning_rate_factor(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total, stats = 0.0, {"v_ratio": 0.0, "v_cosine": 0.0}
        for _ in range(cfg.grad_accum):
            micro = {}
            loss = self.loss(self.micro_batch(), micro)
            (loss / cfg.grad_accum).backward()
            total += loss.detach().float().item() / cfg.grad_accum
            for k in stats:
                stats[k] += micro[k] / cfg.grad_accum
        _sync_gradients(self)
        total = _mean_over_ranks(total, self.device)
        params = [p for _, p in self.named_params]
        if cfg.max_grad_norm > 0:
            norm = _clip_grad_norm(self.wrapped, params, cfg.max_grad_norm)  # the norm before clipping
        else:
            norm = grad_norm(params)
        try:
            check_finite(total, norm, self.step + 1)
        except NonFiniteError:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.named_params:
                    self.ema[n].lerp_(p.detach().float(), 1 - cfg.ema_decay)
        return StepMetrics(self.step, total, float(norm), lr, stats)

    # ---- state (the skeleton adds format, step, settings and the metrics history) ------------

    def extra_state(self) -> dict:
        return {
            "model_config": self.model.config.as_dict() if hasattr(self.model.config, "as_dict") else {},
            "trainable": {n: p.detach().cpu().clone() for n, p in _full_params(self)},
            "optimizer": _optimizer_state(self),
            "ema": None if self.ema is None else {n: _full_tensor(t).cpu() for n, t in self.ema.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "data_position": self.stream.position,
        }

    def check_extra_state(self, state: dict) -> None:
        like = dict(self.named_params)
        check_tensors(state, "trainable", like)
        if self.ema is not None:
            check_tensors(state, "ema", like)
        expect(isinstance(state.get("optimizer"), dict), state, "optimizer", "an optimizer state dict",
               type(state.get("optimizer")).__name__)
        for key, ours in (("generator", self.generator.get_state()), ("torch_rng", torch.get_rng_state())):
            found = state.get(key)
            expect(torch.is_tensor(found) and found.dtype == torch.uint8 and found.shape == ours.shape, state, key,
                   f"a random generator state (uint8 {tuple(ours.shape)})",
                   tuple(found.shape) if torch.is_tensor(found) else found)
        # micro-batches served: grad_accum per applied step, and one step's worth more after a non-finite stop
        position, most = state.get("data_position"), (state["step"] + 1) * self.config.grad_accum
        expect(isinstance(position, int) and not isinstance(position, bool) and 0 <= position <= most, state,
               "data_position", f"a whole number in [0, {most}]", position)

    def load_extra_state(self, state: dict) -> None:
        _load_full_params(self, state["trainable"])
        _load_optimizer_state(self, state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema = {n: _shard_like(state["ema"][n], p).float() for n, p in self.named_params}
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.stream = BatchStream(self.dataset, self.config.batch_size * self.world, self.config.seed,
                                  int(state["data_position"]))

    # ---- the skeleton's hooks -----------------------------------------------------------------

    validate = None  # validate(step), every `validate_every` steps, in eval mode under no_grad
    validate_every = 0

    def before_run(self) -> None:
        self.model.train()

    def after_step(self, metrics: StepMetrics) -> None:
        if self.validate is not None and self.validate_every and self.step % self.validate_every == 0:
            _run_validation(self.model, self, self.validate)

    def end_run(self) -> None:
        self.model.eval()
        self.model.gradient_checkpointing = False

    def use_ema_weights(self) -> None:
        """Copy the EMA into the trainable parameters (the result of an EMA run)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(self.ema[n].to(p.dtype))


def train(model, dataset, config: TrainConfig, *, state_dir=None, resume: bool = True, callback=None,
          validate=None, validate_every: int = 0) -> TrainResult:
    """Train `model` in place (full) or through a LoRA hooked onto it; see the module docstring.

    state_dir: where the resumable state lives; an existing state there is resumed (resume=True).
    callback(step, total, metrics: StepMetrics) after every optimizer step; an exception raised from it (e.g.
    ComfyUI's interrupt) stops the run after the state is saved. validate(step) every
    `validate_every` steps, in eval mode under no_grad. A non-finite loss stops the run without
    applying that step, keeps the last good state on disk, and says so in `result.stopped`.
    """
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    with torch.inference_mode(False), torch.enable_grad():
        trainer = Trainer(model, dataset, config)
        trainer.validate, trainer.validate_every = validate, validate_every
        outcome = run_resumable(trainer, config.steps, state_dir=state_dir, resume=resume,
                                save_every=config.save_every, callback=callback)
        trainer.use_ema_weights()
        model.requires_grad_(False)
        if trainer.network is not None:
            trainer.network.eval()
    return TrainResult(history=trainer.history, steps_done=trainer.step, seconds=outcome.seconds,
                       network=trainer.network, stopped=outcome.stopped, checkpoint_step=outcome.checkpoint_step)


def _run_validation(model, trainer, validate) -> None:
    model.eval()
    was = model.gradient_checkpointing
    if trainer.network is not None:
        trainer.network.eval()
    with torch.no_grad():
        validate(trainer.step)
    model.train()
    model.gradient_checkpointing = was
    if trainer.network is not None:
        trainer.network.train()


# --------------------------------------------------------------------------------------------
# torch.distributed hooks (kept here small; the wrapping itself lives in wan_core.distributed)
# --------------------------------------------------------------------------------------------


def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_ranks(value: float, device) -> float:
    rank, world = _rank_and_world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


def _wrap_distributed(model, network, config):
    from .distributed import wrap_for_training

    return wrap_for_training(model, network, config)


def _clip_grad_norm(wrapped, params, max_norm) -> torch.Tensor:
    if hasattr(wrapped, "clip_grad_norm_"):  # FSDP: the norm over all shards
        return wrapped.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _full_params(trainer):
    from .distributed import full_named_parameters

    return full_named_parameters(trainer)


def _load_full_params(trainer, tensors) -> None:
    from .distributed import load_full_parameters

    load_full_parameters(trainer, tensors)


def _sync_gradients(trainer) -> None:
    from .distributed import sync_gradients

    sync_gradients(trainer)


def _full_tensor(t):
    from .distributed import full_tensor

    return full_tensor(t)


def _shard_like(full, like):
    from .distributed import shard_like

    return shard_like(full, like)


def _optimizer_state(trainer) -> dict:
    from .distributed import optimizer_state

    return optimizer_state(trainer)


def _load_optimizer_state(trainer, state) -> None:
    from .distributed import load_optimizer_state

    load_optimizer_state(trainer, state)


def expert_sigma_ranges(boundary: float) -> dict:
    """Wan2.2 A14B: the σ range each expert sees at inference (high noise: timestep ≥ boundary·1000)."""
    if not 0 < boundary < 1:
        raise ValueError(f"boundary must be in (0, 1), got {boundary}")
    return {"high_noise": (boundary, 1.0), "low_noise": (0.0, boundary)}
