"""Flow-matching samplers in Wan's convention (docs/conventions.md §1, docs/sampling.md).

    x_σ = (1 − σ)·x0 + σ·noise,   the model predicts v = noise − x0 = dx/dσ,   σ: 1 (noise) -> 0 (data).

`sample(velocity_fn, x, sigmas)` integrates that ODE along a decreasing sigma grid with one of
  * "euler": x ← x + (σ' − σ)·v;
  * "heun":  Euler predictor, then the trapezoid of the two slopes (plain Euler on the step to σ = 0);
  * "unipc": UniPC (B(h) = e^h − 1 "bh2", order 2, data prediction x0 = x − σ·v, corrector from
    the second step on, order 1 on the last step) - the official Wan default (`flow_unipc`).
Nothing here knows about models: `velocity_fn(x, sigma)` is any callable, sigma a Python float.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

SOLVERS = ("unipc", "euler", "heun")
# The official UniPC grid starts at the first value of its 1000-step training table, stored in fp32.
UNIPC_SIGMA_MAX = float(np.float32(1 - 1 / 1000))  # 0.9990000128746033


def finite_number(value, name: str) -> float:
    """`value` as a float; a ValueError naming `name` for NaN, Inf or a non-number (a NaN shift or
    guidance scale would otherwise sample a video of NaN without any error)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number; found {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; found {value}")
    return float(value)


def shift_sigma(sigma, shift: float):
    """σ' = s·σ / (1 + (s − 1)·σ): keeps 0 and 1, spends more steps at high noise for s > 1."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(steps: int, shift: float, *, sigma_max: float = 1.0) -> torch.Tensor:
    """steps + 1 sigmas from `sigma_max` (shifted) down to 0, float64.

    sigma_max = 1 is the official DPM++ grid (and ComfyUI's "simple" schedule when steps divides
    1000); sigma_max = UNIPC_SIGMA_MAX is the official UniPC grid. Built in float64 with numpy like
    the official schedulers, so `official_timestep` truncates exactly as they do."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    shift = finite_number(shift, "shift")
    sigma_max = finite_number(sigma_max, "sigma_max")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    base = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    return torch.from_numpy(np.concatenate([shift_sigma(base, shift), [0.0]]))


def official_sigmas(steps: int, shift: float, solver: str) -> torch.Tensor:
    """The grid the official code uses for a solver: UniPC's starts at 0.999, the others at 1."""
    return flow_sigmas(steps, shift, sigma_max=UNIPC_SIGMA_MAX if solver == "unipc" else 1.0)


def official_timestep(sigma: float) -> int:
    """What the official samplers feed the DiT: int64(1000·σ), truncated toward zero."""
    return int(np.int64(sigma * 1000))


def denoise_sigmas(sigmas_full: torch.Tensor, steps: int) -> torch.Tensor:
    """The last `steps` steps of a longer grid (video-to-video / partial denoising, as ComfyUI does)."""
    return sigmas_full[-(steps + 1):]


# --------------------------------------------------------------------------------------------
# Solvers: each is a small stateful object whose step(x, v, i) returns x at sigmas[i + 1]
# --------------------------------------------------------------------------------------------


class Euler:
    def __init__(self, sigmas: torch.Tensor):
        self.sigmas = sigmas.float()

    def step(self, x, v, i, velocity_fn=None):
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * v


class Heun(Euler):
    """Second order: average the slope at both ends of the step (one extra model call per step)."""

    def __init__(self, sigmas: torch.Tensor):
        super().__init__(sigmas)
        self.sigmas64 = sigmas

    def step(self, x, v, i, velocity_fn=None):
        dt = self.sigmas[i + 1] - self.sigmas[i]
        x_euler = x + dt * v
        if self.sigmas64[i + 1] == 0:  # the slope at σ = 0 is never needed: x_euler is the x0 estimate
            return x_euler
        v_next = velocity_fn(x_euler, float(self.sigmas64[i + 1]))
        return x + dt * (v + v_next) / 2


class UniPC:
    """UniPC-bh2 of order 2 on data predictions, as in the official `FlowUniPCMultistepScheduler`
    (a port of diffusers' UniPCMultistepScheduler). λ = log((1 − σ)/σ); coefficients are computed in
    fp32 like the official code. State: the last two x0 predictions and the last input."""

    ORDER = 2

    def __init__(self, sigmas: torch.Tensor):
        # λ(σ = 1) = −∞: a grid starting at exactly 1 is nudged to 1 − 1e-6 (as diffusers does)
        self.sigmas = sigmas.clamp(max=1 - 1e-6).float()
        self.n = len(sigmas) - 1
        self.x0s: list[torch.Tensor] = []  # x0 predictions, newest last
        self.last_x = None
        self.last_order = 0

    def _lambda(self, i):
        s = self.sigmas[i]
        return torch.log(1 - s) - torch.log(s)

    @staticmethod
    def _phis(h):
        """hh = −h; B(h) = e^{hh} − 1 and the right-hand sides b_1, b_2 of the order conditions."""
        hh = -h
        phi1 = torch.expm1(hh)
        k1 = phi1 / hh - 1
        k2 = k1 / hh - 0.5
        return phi1, [k1 / phi1, 2 * k2 / phi1]

    def _base(self, x, x0, i_from, i_to):
        """The exponential-integrator part shared by predictor and corrector."""
        s, t = self.sigmas[i_from], self.sigmas[i_to]
        h = self._lambda(i_to) - self._lambda(i_from)
        phi1, b = self._phis(h)
        return t / s * x - (1 - t) * phi1 * x0, (1 - t) * phi1, h, b

    def step(self, x, v, i, velocity_fn=None):
        x0 = x - self.sigmas[i] * v
        if i > 0 and self.last_x is not None:  # corrector: refine x with the new x0 estimate
            x = self._correct(x, x0, i)
        self.x0s = (self.x0s + [x0])[-self.ORDER:]
        order = min(self.ORDER, self.n - i, len(self.x0s))  # warm-up, and order 1 on the last step
        self.last_x, self.last_order = x, order
        if self.sigmas[i + 1] == 0:  # λ = ∞: the predictor returns the data prediction itself
            return x0
        return self._predict(x, i, order)

    def _predict(self, x, i, order):
        m0 = self.x0s[-1]
        x_t, alpha_bh, h, _ = self._base(x, m0, i, i + 1)
        if order == 2:
            r1 = (self._lambda(i - 1) - self._lambda(i)) / h
            d1 = (self.x0s[-2] - m0) / r1
            x_t = x_t - alpha_bh * 0.5 * d1
        return x_t

    def _correct(self, x, x0_new, i):
        order = self.last_order
        m0 = self.x0s[-1]  # x0 at sigmas[i - 1]
        x_t, alpha_bh, h, b = self._base(self.last_x, m0, i - 1, i)
        d_new = x0_new - m0
        if order == 1:
            return x_t - alpha_bh * 0.5 * d_new
        r1 = (self._lambda(i - 2) - self._lambda(i - 1)) / h
        d1 = (self.x0s[-2] - m0) / r1
        # solve [[1, 1], [r1, 1]] @ rho = b
        rho = torch.linalg.solve(torch.stack([torch.ones(2), torch.stack([r1, torch.ones(())])]),
                                 torch.stack(b))
        return x_t - alpha_bh * (rho[0] * d1 + rho[1] * d_new)


SOLVER_CLASSES = {"euler": Euler, "heun": Heun, "unipc": UniPC}


def sample(
    velocity_fn: Callable[[torch.Tensor, float], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    solver: str = "euler",
    callback: Callable | None = None,
    project: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate dx/dσ = velocity_fn(x, σ) from sigmas[0] to sigmas[-1] and return x there.

    noise: x at sigmas[0] (pure noise when sigmas[0] ≈ 1; the caller mixes in x0 for partial
    denoising). sigmas: decreasing, usually ending at 0 (see `flow_sigmas`). callback(done, total,
    x0) runs after every step with the current data estimate (previews, progress; raising from it
    stops sampling). project(x, σ), if given, runs on x after every step (e.g. re-imposing a
    known first frame, as the official TI2V pipeline does).
    """
    if solver not in SOLVER_CLASSES:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError(f"sigmas must be finite; found {sigmas.tolist()[:8]}{' ...' if len(sigmas) > 8 else ''}")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError("sigmas must be decreasing (noise to data)")
    sigmas = sigmas.double()
    stepper = SOLVER_CLASSES[solver](sigmas)
    x = noise.float()
    total = len(sigmas) - 1
    for i in range(total):
        sigma = float(sigmas[i])
        v = velocity_fn(x, sigma).float()
        x0 = x - stepper.sigmas[i] * v if callback is not None else None  # the preview's data estimate
        x = stepper.step(x, v, i, velocity_fn)
        if project is not None:
            x = project(x, float(sigmas[i + 1]))
        if callback is not None:
            callback(i + 1, total, x0)
    return x
