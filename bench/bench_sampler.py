"""CPU benchmark: what the sampler adds on top of the DiT forwards, and what batching CFG saves.

At the bench's `small` config (dim 512, 8 heads, 4 layers; latent [1,16,5,30,52], 512 text tokens):
  * overhead (in-run): the DiT is wrapped in a timer, so the forwards of a `generate()` run and the
    run itself are timed together; overhead = (run − its forwards) / its forwards. Immune to the
    machine drifting between runs.
  * reference run in the same process: the bare batched forwards the run needs (batch 2 per step),
    timed in alternation with `generate()`; noisier, reported as a cross-check.
  * batched CFG vs two passes of batch 1.

    PYTHONPATH=. .venv/bin/python bench/bench_sampler.py              # 10 steps, 3 reps per solver
    PYTHONPATH=. .venv/bin/python bench/bench_sampler.py --steps 4 --reps 1

Goal: overhead ≤ 2 % of the DiT forwards.
Results: a markdown table on stdout and JSON in bench/results/sampler_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from wan_core.generation.pipeline import Conditioning, generate, seeded_noise
from wan_core.models.dit import WanConfig, WanDiT
from wan_core.testing.dit import randomize_

LATENT = (1, 16, 5, 30, 52)
SMALL = dict(dim=512, num_heads=8, ffn_dim=2048, num_layers=4, text_dim=4096)


class TimedModel(torch.nn.Module):
    """The DiT with a stopwatch around every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.seconds = inner, inner.config, 0.0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--solvers", default="unipc,euler")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = randomize_(WanDiT(WanConfig(**SMALL)), seed=0, std=0.02).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(1, 512, 4096, generator=gen)
    neg = torch.randn(1, 512, 4096, generator=gen)
    noise = seeded_noise(LATENT, 0)
    x2 = torch.cat([noise, noise])
    ctx2 = torch.cat([pos, neg])
    t2 = torch.full((2,), 700.0)
    cond = Conditioning(pos, neg)

    def forwards(n):  # the model work of n CFG steps, nothing else
        for _ in range(n):
            model(x2, t2, ctx2)

    timed_model = TimedModel(model)

    def run(solver, batch_cfg=True):
        generate(timed_model, noise, cond, steps=args.steps, shift=5.0, guide_scale=5.0, solver=solver,
                 batch_cfg=batch_cfg)

    def in_run_overhead(solver):
        timed_model.seconds = 0.0
        total = timed(lambda: run(solver))
        return (total - timed_model.seconds) / timed_model.seconds

    rows = []
    with torch.no_grad():
        forwards(1)
        run("euler")  # warm-up
        for solver in args.solvers.split(","):
            t_fwd, t_gen, t_seq, inrun = [], [], [], []
            for _ in range(args.reps):
                t_fwd.append(timed(lambda: forwards(args.steps)))
                t_gen.append(timed(lambda: run(solver)))
                t_seq.append(timed(lambda: run(solver, batch_cfg=False)))
                inrun.append(in_run_overhead(solver))
            f, g, s = (statistics.median(v) for v in (t_fwd, t_gen, t_seq))
            rows.append(dict(solver=solver, steps=args.steps, forwards_s=f, generate_s=g, two_pass_cfg_s=s,
                             overhead_in_run=statistics.median(inrun), overhead_vs_reference=(g - f) / f,
                             batched_over_two_pass=g / s))
    print("| solver | steps | bare forwards (s) | generate (s) | overhead in-run | vs reference run | batched CFG / two passes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['solver']} | {r['steps']} | {r['forwards_s']:.3f} | {r['generate_s']:.3f} | "
              f"{100 * r['overhead_in_run']:.2f} % | {100 * r['overhead_vs_reference']:+.1f} % | "
              f"{r['batched_over_two_pass']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), torch=torch.__version__,
                                   latent=LATENT, config=SMALL, rows=rows), indent=1))


if __name__ == "__main__":
    main()
