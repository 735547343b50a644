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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..sampling.solvers import shift_sigma

SIGMA_SAMPLINGS = ("uniform", "logit_normal", "shift")
LOSS_WEIGHTINGS = ("none", "diffsynth")
MODES = ("lora", "full")
PRECISIONS = ("bf16", "fp32")
STATE_FILE = "train_state.pt"
STATE_FORMAT = 1


@dataclass
class TrainConfig:
    """Everything that shapes a training run (saved with the state, so a resume can check it)."""

    mode: str = "lora"  # lora | full
    steps: int = 1000  # optimizer steps
    learning_rate: float = 1e-4
    batch_size: int = 1  # per rank and micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # cosine | constant (both after the linear warmup)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of learning_rate
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0 = no clipping
    # noise levels: uniform σ, logit-normal σ (SD3), or uniform then shifted (DiffSynth-style, shift 5)
    sigma_sampling: str = "shift"
    shift: float = 5.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigma_range: tuple = (0.0, 1.0)  # train only σ in [lo, hi] (Wan2.2 A14B: one expert's range)
    loss_weighting: str = "none"  # none | diffsynth (bell curve over timesteps, mean 1)
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "attention+ffn"
    precision: str = "bf16"  # bf16: autocast over fp32 master weights; fp32: no autocast
    gradient_checkpointing: bool = True
    ema_decay: float = 0.0  # 0 = no EMA; else the returned weights are the EMA weights
    first_frame_clean: bool = False  # TI2V image-to-video training: latent frame 0 is the clean condition
    seed: int = 0
    save_every: int = 0  # optimizer steps between resumable states (0: only at the end / on interrupt)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.sigma_range = tuple(float(s) for s in self.sigma_range)
        for name, value, allowed in (("mode", self.mode, MODES), ("sigma_sampling", self.sigma_sampling, SIGMA_SAMPLINGS),
                                     ("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS),
                                     ("precision", self.precision, PRECISIONS),
                                     ("lr_schedule", self.lr_schedule, ("cosine", "constant"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        lo, hi = self.sigma_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"sigma_range must satisfy 0 <= lo < hi <= 1, got {self.sigma_range}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"steps, batch_size and grad_accum must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.grad_accum}")

    def resume_key(self) -> dict:
        """The settings a saved state must share with this run to be resumed by it."""
        keep = ("mode", "batch_size", "grad_accum", "lora_rank", "lora_alpha", "lora_targets", "seed",
                "sigma_sampling", "sigma_range", "first_frame_clean")
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass
class TrainResult:
    losses: list = field(default_factory=list)  # one mean loss per optimizer step, from step 1
    steps_done: int = 0
    seconds: float = 0.0
    network: object = None  # the LoRANetwork (mode "lora"), hooks still installed
    stopped: str | None = None  # why training ended early (non-finite loss), else None
    checkpoint_step: int | None = None  # the step of the last resumable state written


class NonFiniteLoss(RuntimeError):
    pass


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
                       weights=None) -> torch.Tensor:
    """Mean over the batch of the per-sample MSE between the model's velocity and ε − x0.

    first_frame_clean (TI2V): latent frame 0 stays x0 with timestep 0 on its tokens and is left out
    of the loss, as the TI2V sampler treats a given first frame.
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
        self.position = 0
        self.epoch, self.batches, self.cursor = 0, epoch_batches(dataset, global_batch, seed, 0), 0
        for _ in range(position):
            self.next()

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


def make_trainable(model: torch.nn.Module) -> None:
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
    make_trainable(model)
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


class Trainer:
    """One training run's state: the trainable parameters, optimizer, EMA, RNG and data position.

    Use `train(...)` unless you need to drive the steps yourself.
    """

    def __init__(self, model, dataset, config: TrainConfig, *, network=None):
        self.model, self.dataset, self.config = model, dataset, config
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
        self.losses: list[float] = []
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

    def loss(self, batch: dict) -> torch.Tensor:
        weights = diffsynth_weights(batch["sigma"], self.config.shift) if self.config.loss_weighting == "diffsynth" else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")
        with autocast:
            return flow_matching_loss(self.wrapped, batch["latent"], batch["context"], batch["sigma"], batch["noise"],
                                      clip_fea=batch.get("clip_fea"), y=batch.get("y"),
                                      first_frame_clean=self.config.first_frame_clean, weights=weights)

    def train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns the mean loss (over ranks).
        Raises NonFiniteLoss, leaving the weights as they were before the step."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.learning_rate * learning_rate_factor(self.step, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.grad_accum):
            loss = self.loss(self.micro_batch())
            (loss / cfg.grad_accum).backward()
            total += loss.detach().float().item() / cfg.grad_accum
        _sync_gradients(self)
        total = _mean_over_ranks(total, self.device)
        params = [p for _, p in self.named_params]
        if cfg.max_grad_norm > 0:
            norm = _clip_grad_norm(self.wrapped, params, cfg.max_grad_norm)
        else:
            norm = torch.tensor(0.0)
        if not math.isfinite(total) or not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"non-finite loss ({total}) or gradient norm ({float(norm)}) at step {self.step + 1}")
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.named_params:
                    self.ema[n].lerp_(p.detach().float(), 1 - cfg.ema_decay)
        self.losses.append(total)
        return total

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "config": self.config.resume_key(),
            "model_config": self.model.config.as_dict() if hasattr(self.model.config, "as_dict") else {},
            "trainable": {n: p.detach().cpu().clone() for n, p in _full_params(self)},
            "optimizer": _optimizer_state(self),
            "ema": None if self.ema is None else {n: _full_tensor(t).cpu() for n, t in self.ema.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "data_position": self.stream.position,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"training state format {state.get('format')} is not the supported {STATE_FORMAT}")
        if state["config"] != self.config.resume_key():
            diff = {k: (state["config"].get(k), v) for k, v in self.config.resume_key().items()
                    if state["config"].get(k) != v}
            raise ValueError(f"the saved training state was made with other settings (saved, now): {diff}; "
                             "use a new output name or the same settings to resume")
        if set(state["trainable"]) != {n for n, _ in self.named_params}:
            raise ValueError("the saved training state does not match this model's trainable parameters")
        _load_full_params(self, state["trainable"])
        _load_optimizer_state(self, state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema = {n: _shard_like(state["ema"][n], p).float() for n, p in self.named_params}
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.losses = state["losses"].tolist()
        self.stream = BatchStream(self.dataset, self.config.batch_size * self.world, self.config.seed,
                                  int(state["data_position"]))

    def save(self, state_dir) -> Path:
        """Write the resumable state atomically (the previous one survives a failed write)."""
        from ..io.write import atomic_write

        state = self.state_dict()  # collective under FSDP: every rank must call save
        path = Path(state_dir) / STATE_FILE
        if self.rank == 0:
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        if self.world > 1:
            # no rank goes on (and perhaps looks for this state to resume) before it is on disk
            torch.distributed.barrier()
        return path

    def use_ema_weights(self) -> None:
        """Copy the EMA into the trainable parameters (the result of an EMA run)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(self.ema[n].to(p.dtype))


def load_state(state_dir, filename: str = STATE_FILE) -> dict | None:
    """The resumable state saved in `state_dir` (read with weights_only), or None when there is none."""
    path = Path(state_dir) / filename
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read the training state {path}: {e}") from e


def train(model, dataset, config: TrainConfig, *, state_dir=None, resume: bool = True, callback=None,
          validate=None, validate_every: int = 0) -> TrainResult:
    """Train `model` in place (full) or through a LoRA hooked onto it; see the module docstring.

    state_dir: where the resumable state lives; an existing state there is resumed (resume=True).
    callback(step, total, loss) after every optimizer step; an exception raised from it (e.g.
    ComfyUI's interrupt) stops the run after the state is saved. validate(step) every
    `validate_every` steps, in eval mode under no_grad. A non-finite loss stops the run without
    applying that step, keeps the last good state on disk, and says so in `result.stopped`.
    """
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    started = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        trainer = Trainer(model, dataset, config)
        result = TrainResult(network=trainer.network)
        if state_dir is not None and resume:
            state = load_state(state_dir)
            if state is not None:
                trainer.load_state_dict(state)
                result.checkpoint_step = trainer.step
        model.train()
        try:
            while trainer.step < config.steps:
                try:
                    loss = trainer.train_step()
                except NonFiniteLoss as e:
                    kept = result.checkpoint_step
                    result.stopped = (f"{e}; training stopped" + (f", the last good state (step {kept}) is kept"
                                                                  if kept is not None else ""))
                    break
                if state_dir is not None and config.save_every and trainer.step % config.save_every == 0:
                    trainer.save(state_dir)
                    result.checkpoint_step = trainer.step
                if validate is not None and validate_every and trainer.step % validate_every == 0:
                    _run_validation(model, trainer, validate)
                if callback is not None:
                    callback(trainer.step, config.steps, loss)
        except BaseException:
            if state_dir is not None and trainer.step > (result.checkpoint_step or 0):
                trainer.save(state_dir)  # interrupted: keep what was trained, resumable
            raise
        finally:
            model.eval()
            model.gradient_checkpointing = False
        if state_dir is not None and result.stopped is None and trainer.step != result.checkpoint_step:
            trainer.save(state_dir)
            result.checkpoint_step = trainer.step
        trainer.use_ema_weights()
        model.requires_grad_(False)
        if trainer.network is not None:
            trainer.network.eval()
    result.losses = trainer.losses
    result.steps_done = trainer.step
    result.seconds = time.perf_counter() - started
    return result


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
