"""Flow-matching solvers: convergence orders on an exact flow, the official grids, and step-for-step
equality with diffusers' schedulers."""
import math

import numpy as np
import pytest
import torch

from wan_core.sampling.solvers import (
    UNIPC_SIGMA_MAX,
    flow_sigmas,
    official_sigmas,
    official_timestep,
    sample,
    shift_sigma,
)

MU, STD = 0.3, 0.5  # data ~ N(MU, STD^2) per element


def exact_velocity(x, sigma):
    """E[noise − x0 | x_σ] for Gaussian data: the exact flow of x_σ = (1−σ)x0 + σ·noise."""
    var = (1 - sigma) ** 2 * STD ** 2 + sigma ** 2
    return (sigma - (1 - sigma) * STD ** 2) / var * (x - (1 - sigma) * MU) - MU


def exact_solution(x, sigma):
    """The flow map from σ to 0 keeps the standardized value (x − (1−σ)MU) / sqrt(var(σ))."""
    var = (1 - sigma) ** 2 * STD ** 2 + sigma ** 2
    return MU + STD * (x - (1 - sigma) * MU) / math.sqrt(var)


def final_error(solver, steps, shift=1.0):
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    grid = official_sigmas(steps, shift, solver)
    out = sample(exact_velocity, x, grid, solver=solver)
    return (out.double() - exact_solution(x.double(), float(grid[0]))).abs().max().item()


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("unipc", 2)])
def test_convergence_order(solver, order):
    steps = [16, 32, 64, 128]  # UniPC is pre-asymptotic below ~16 steps on this flow
    errors = [final_error(solver, n) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    print(solver, errors, f"slope {slope:.2f}")
    assert errors[-1] < errors[0] / 2 ** (3 * order - 1)
    assert order - 0.25 < slope < order + 0.6, (solver, slope, errors)


def test_shift_and_grids():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(shift_sigma(s, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0], dtype=torch.float64))
    grid = flow_sigmas(4, 1.0)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    # official UniPC values (docs/sampling.md §2): first timesteps and last non-zero sigma
    for (n, shift), first, last in [((50, 5.0), [999, 995, 991, 987], (0.092507, 92)),
                                    ((50, 3.0), [999, 992, 985, 978], (0.057637, 57)),
                                    ((40, 5.0), [999, 994, 989, 983], (0.113533, 113)),
                                    ((10, 5.0), [999, 978, 952, 920], (0.356888, 356))]:
        sig = official_sigmas(n, shift, "unipc")
        assert len(sig) == n + 1 and sig[-1] == 0
        assert [official_timestep(float(v)) for v in sig[:4]] == first
        assert abs(float(sig[-2]) - last[0]) < 5e-7 and official_timestep(float(sig[-2])) == last[1]
    # DPM++-style grid starts at exactly 1 (timestep 1000)
    assert [official_timestep(float(v)) for v in official_sigmas(50, 5.0, "euler")[:4]] == [1000, 995, 991, 987]
    full = ("999 997 995 993 990 988 985 982 979 976 972 969 965 961 956 952 947 941 936 929 922 915 907 898 888 "
            "877 865 852 837 819 799 776 749 717 678 631 571 492 386 235")
    assert [official_timestep(float(v)) for v in official_sigmas(40, 12.0, "unipc")[:-1]] == list(map(int, full.split()))
    assert UNIPC_SIGMA_MAX == pytest.approx(0.9990000128746033, abs=0)


def wavy_velocity(x, sigma):
    """A nonlinear field (no closed form): solver bookkeeping errors show up in it."""
    return torch.tanh(1.5 * x) * (0.5 + sigma) + 0.3 * torch.sin(3 * x) - 0.2 * sigma


def test_euler_equals_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    sched.set_timesteps(12)
    x = torch.randn(2, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    for t, sigma in zip(sched.timesteps, sched.sigmas[:-1]):
        ref = sched.step(wavy_velocity(ref, float(sigma)), t, ref).prev_sample
    ours = sample(wavy_velocity, x, sched.sigmas, solver="euler")
    assert torch.equal(ours, ref), (ours - ref).abs().max()


def diffusers_unipc(sigmas, steps, shift):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                    solver_order=2, solver_type="bh2", lower_order_final=True)
    sched.set_timesteps(steps)
    if sigmas is not None:  # the official grid (diffusers' own differs slightly, docs/sampling.md §2)
        sched.sigmas = sigmas.float()
        sched.timesteps = torch.tensor([official_timestep(float(s)) for s in sigmas[:-1]])
    return sched


@pytest.mark.parametrize("steps,shift", [(10, 5.0), (7, 3.0), (2, 12.0)])
def test_unipc_equals_official_updates(steps, shift):
    """The official FlowUniPCMultistepScheduler is diffusers' UniPC (bh2, order 2, x0-prediction) on the
    official grid: run diffusers' implementation on that grid, step for step."""
    grid = official_sigmas(steps, shift, "unipc")
    sched = diffusers_unipc(grid, steps, shift)
    x = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(2))
    ref, trajectory = x.clone(), []
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(wavy_velocity(ref, float(grid[i])), t, ref).prev_sample
        trajectory.append(ref)
    ours_steps = []
    ours = sample(wavy_velocity, x, grid, solver="unipc",
                  project=lambda y, s: ours_steps.append(y) or y)
    assert len(ours_steps) == len(trajectory) == steps  # zip below compares every step, none silently dropped
    for a, b in zip(ours_steps, trajectory):
        assert torch.allclose(a, b, atol=2e-6, rtol=0), (a - b).abs().max()
    assert (ours - ref).abs().max() < 2e-6
    # a different solver on the same grid is far away: the comparison can fail. With 2 steps UniPC is Euler
    # (the corrector only touches x after the last model call), so Heun is the different solver there
    euler = sample(wavy_velocity, x, grid, solver="euler")
    if steps > 2:
        assert (euler - ref).abs().max() > 1e-3
    else:
        assert (euler - ref).abs().max() < 2e-6
        assert (sample(wavy_velocity, x, grid, solver="heun") - ref).abs().max() > 1e-3


def test_unipc_on_diffusers_grid():
    sched = diffusers_unipc(None, 10, 5.0)
    grid = sched.sigmas.double()
    x = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(3))
    ref = x.clone()
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(wavy_velocity(ref, float(grid[i])), t, ref).prev_sample
    assert (sample(wavy_velocity, x, grid, solver="unipc") - ref).abs().max() < 2e-6


def test_heun_calls_and_last_step_is_euler():
    calls = []

    def v(x, s):
        calls.append(s)
        return wavy_velocity(x, s)

    grid = flow_sigmas(5, 2.0)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    out = sample(v, x, grid, solver="heun")
    assert len(calls) == 2 * 5 - 1 and 0.0 not in calls  # no evaluation at sigma 0
    # manual reference
    y = x.clone().float()
    g = grid.float()
    for i in range(5):
        d = g[i + 1] - g[i]
        v1 = wavy_velocity(y, float(grid[i]))
        y_e = y + d * v1
        y = y_e if i == 4 else y + d * (v1 + wavy_velocity(y_e, float(grid[i + 1]))) / 2
    assert torch.allclose(out, y, atol=1e-6)


def test_callback_and_errors():
    seen = []
    sample(wavy_velocity, torch.zeros(3), flow_sigmas(4, 1.0), callback=lambda d, t, x0: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(ValueError, match="unknown solver"):
        sample(wavy_velocity, torch.zeros(3), flow_sigmas(4, 1.0), solver="dpm")
    with pytest.raises(ValueError, match="decreasing"):
        sample(wavy_velocity, torch.zeros(3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0, 1.0)
    assert math.isclose(float(flow_sigmas(3, 5.0)[0]), 1.0)
