"""Flow-matching solvers in Wan's convention (docs/conventions.md §1, docs/sampling.md): sigma
schedules with shift, UniPC / Euler / Heun, and the `sample` loop."""
from .solvers import SOLVERS, denoise_sigmas, flow_sigmas, official_sigmas, official_timestep, sample, shift_sigma

__all__ = ["SOLVERS", "flow_sigmas", "official_sigmas", "official_timestep", "shift_sigma", "denoise_sigmas",
           "sample"]
