"""Text/image-to-video generation on top of `sampling`: classifier-free guidance, Wan2.2's two
experts, image conditioning, partial denoising and the official per-variant defaults.

Everything works on normalized latents (the space the DiT sees); `vae.normalize_latent` and
`denormalize_latent` convert from/to ComfyUI's raw LATENT. Conventions (docs/conventions.md §2, §4, §7; docs/sampling.md §7):
  * CFG: v = v_neg + g·(v_pos − v_neg), both passes batched into one forward when memory allows;
  * the DiT receives int(1000·σ) (the official samplers truncate; `exact_timesteps=True` passes
    1000·σ as ComfyUI and diffusers do); the solvers use the fp32 σ;
  * Wan2.2 A14B: each model evaluation goes to the high-noise expert when its timestep is
    >= boundary·1000, else to the low-noise expert, each with its own guide scale. Heun's second
    evaluation of a step is routed by its own σ, so every solver integrates the same field;
  * a noise mask (ComfyUI's `noise_mask`, 1 = generate, 0 = keep `latent`): TI2V keeps the known
    tokens clean with timestep 0 (official `textimage2video`); other models see the known region
    noised to the current σ (ComfyUI's inpainting convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..sampling.solvers import SOLVERS, denoise_sigmas, finite_number, official_sigmas, official_timestep, sample
from .defaults import BOUNDARY


@dataclass
class Conditioning:
    """What the DiT sees besides x and t. context/negative: [B, L, text_dim] (zero rows past the
    prompt); negative None = no guidance. clip_fea: [B, 257|514, 1280] (Wan2.1 I2V/FLF2V).
    y: [B, 20, T, h, w] = [mask | normalized image latent] (I2V, FLF2V, Wan2.2 I2V)."""

    context: torch.Tensor
    negative: torch.Tensor | None = None
    clip_fea: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def to(self, device) -> "Conditioning":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Conditioning(move(self.context), move(self.negative), move(self.clip_fea), move(self.y))


SEED_MAX = 2**64 - 1  # seeds are 64-bit (ComfyUI's seed widget: 0 ... 0xFFFFFFFFFFFFFFFF)


def check_seed(seed, name: str = "seed") -> int:
    """The seed as an int; a ValueError for a non-integer or one outside 64 bits (torch reads a
    negative seed >= -2^63 as its 64-bit two's complement, as before)."""
    if isinstance(seed, np.integer):
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} must be an integer 0 ... {SEED_MAX}; found {type(seed).__name__} {seed!r}")
    if not -(2**63) <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be an integer 0 ... {SEED_MAX} (64 bits); found {seed}")
    return seed


def seeded_noise(shape, seed: int) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `seed` (the same on every device; equal to
    ComfyUI's KSampler noise for the same seed and latent shape)."""
    seed = check_seed(seed)
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


class GuidedVelocity:
    """v(x, σ) of one or two experts with classifier-free guidance (see the module docstring)."""

    def __init__(self, experts, cond: Conditioning, *, boundary: float | None, exact_timesteps: bool,
                 keep_tokens: torch.Tensor | None, batch_cfg: bool | None):
        self.experts = experts  # [(model, guide_scale)]: high-noise first when two
        self.cond = cond
        self.boundary_t = None if boundary is None else boundary * 1000
        self.exact = exact_timesteps
        self.keep_tokens = keep_tokens  # TI2V: [B, L] 0 on kept tokens, 1 elsewhere
        self.batch_cfg = batch_cfg  # None = batch, fall back to two passes on out-of-memory
        self.calls = []  # (timestep, expert index) of every evaluation: for tests and logs
        self._batched = None  # cond + uncond inputs concatenated once, reused every step

    def timestep(self, sigma: float) -> float:
        return sigma * 1000 if self.exact else float(official_timestep(sigma))

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = self.timestep(sigma)
        index = 0 if self.boundary_t is None or len(self.experts) == 1 or t >= self.boundary_t else 1
        self.calls.append((t, index))
        model, guide = self.experts[index]
        B = x.shape[0]
        ts = torch.full((B,), t, device=x.device)
        if self.keep_tokens is not None:
            ts = ts[:, None] * self.keep_tokens
        c = self.cond
        if c.negative is None or guide == 1.0:  # g = 1: v_neg + 1·(v_pos − v_neg) is v_pos
            return model(x, ts, c.context, clip_fea=c.clip_fea, y=c.y)
        if self.batch_cfg is not False:
            try:
                if self._batched is None:
                    self._batched = (torch.cat([c.context, c.negative]), _twice(c.clip_fea), _twice(c.y))
                context, clip_fea, y = self._batched
                v = model(torch.cat([x, x]), torch.cat([ts, ts]), context, clip_fea=clip_fea, y=y)
                v_pos, v_neg = v.chunk(2)
                return v_neg + guide * (v_pos - v_neg)
            except torch.OutOfMemoryError:
                if self.batch_cfg:
                    raise
                self.batch_cfg = False  # not enough memory for both passes at once: from now on, one by one
                torch.cuda.empty_cache()
        v_pos = model(x, ts, c.context, clip_fea=c.clip_fea, y=c.y)
        v_neg = model(x, ts, c.negative, clip_fea=c.clip_fea, y=c.y)
        return v_neg + guide * (v_pos - v_neg)


def _twice(t):
    return None if t is None else torch.cat([t, t])


def token_mask(noise_mask: torch.Tensor, latent_shape, patch=(1, 2, 2)) -> torch.Tensor:
    """[B, 1, T, h, w] mask (1 = generate) -> [B, L] per DiT token (the top-left latent pixel of each
    2x2 patch, as the official TI2V code subsamples)."""
    B, _, T, h, w = latent_shape
    m = noise_mask.expand(B, 1, T, h, w)[:, 0, ::patch[0], ::patch[1], ::patch[2]]
    return m.reshape(B, -1)


def generate(
    model,
    noise: torch.Tensor,
    cond: Conditioning,
    *,
    steps: int,
    shift: float,
    guide_scale: float,
    solver: str = "unipc",
    low_noise_model=None,
    guide_scale_low: float | None = None,
    boundary: float | None = None,
    latent: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    denoise: float = 1.0,
    sigmas: torch.Tensor | None = None,
    exact_timesteps: bool = False,
    batch_cfg: bool | None = None,
    callback=None,
) -> torch.Tensor:
    """Sample a normalized latent x0 [B, C, T, h, w] from `noise` (same shape, standard normal).

    model: the DiT (the high-noise expert when `low_noise_model` is given; `boundary` defaults to
    the official 0.875 (T2V) / 0.9 (I2V)). latent: normalized x0 to start from when denoise < 1 and
    to keep where noise_mask is 0. sigmas: a custom grid (overrides steps/shift/denoise).
    callback(done, total, x0) after every step; raising from it stops sampling.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    guide_scale = finite_number(guide_scale, "guide_scale (cfg)")
    if guide_scale_low is not None:
        guide_scale_low = finite_number(guide_scale_low, "guide_scale_low (cfg of the low-noise expert)")
    if sigmas is None:
        shift = finite_number(shift, "shift")
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
    denoise = finite_number(denoise, "denoise")
    if boundary is not None and not 0 <= finite_number(boundary, "boundary") <= 1:
        raise ValueError(f"boundary must be in [0, 1] (a fraction of the 1000 timesteps), got {boundary}")
    if not 0 < denoise <= 1:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if (denoise < 1 or noise_mask is not None) and latent is None:
        raise ValueError("denoise < 1 and a noise mask need the latent to start from / keep")
    cfg = model.config
    if noise.ndim != 5 or noise.shape[1] != cfg.out_dim:
        raise ValueError(f"{cfg.variant or cfg.model_type} samples [B, {cfg.out_dim}, T, h, w] latents; "
                         f"found {tuple(noise.shape)}")
    if cfg.in_dim == 36 and cond.y is None:
        raise ValueError(f"{cfg.variant or 'this image-to-video model'} needs image conditioning (y): "
                         "use WanFlow Image To Video / conditioning.image_condition")
    device = next(model.parameters()).device
    experts = [(model, guide_scale)]
    if low_noise_model is not None:
        if low_noise_model.config.out_dim != cfg.out_dim or low_noise_model.config.in_dim != cfg.in_dim:
            raise ValueError("the two experts must be the same kind of model (high- and low-noise of one release)")
        experts.append((low_noise_model, guide_scale if guide_scale_low is None else guide_scale_low))
        if boundary is None:
            boundary = BOUNDARY["i2v" if cfg.in_dim == 36 else "t2v"]

    if sigmas is None:
        total = steps if denoise >= 1 else int(steps / denoise)
        sigmas = denoise_sigmas(official_sigmas(total, shift, solver), steps)
    noise = noise.to(device, torch.float32)
    sigma0 = float(sigmas[0])
    x0_known = None if latent is None else latent.to(device, torch.float32)
    x = noise if denoise >= 1 else (1 - sigma0) * x0_known + sigma0 * noise

    keep_tokens, project, mask = None, None, None
    if noise_mask is not None:
        mask = noise_mask.to(device, torch.float32).expand(noise.shape[0], 1, *noise.shape[2:])
        clean = cfg.model_type == "ti2v"  # per-token timesteps: known tokens stay clean at t = 0
        if clean:
            keep_tokens = token_mask(mask, noise.shape, cfg.patch_size)

        def project(y, sigma):
            known = x0_known if clean else (1 - sigma) * x0_known + sigma * noise
            return mask * y + (1 - mask) * known

        x = project(x, sigma0)

    velocity = GuidedVelocity(experts, cond.to(device), boundary=boundary, exact_timesteps=exact_timesteps,
                              keep_tokens=keep_tokens, batch_cfg=batch_cfg)
    field = velocity if project is None else (lambda y, s: velocity(project(y, s), s))
    return sample(field, x, sigmas, solver=solver, callback=callback, project=project)
