"""CPU benchmark: what the sampler adds on top of the DiT forwards, and what batching CFG saves.

Reference run in the same process: the bare DiT forwards a sampling run needs (one batched
cond+uncond forward of batch 2 per step), timed in alternation with full `generate()` runs at the
bench's `small` config (dim 512, 8 heads, 4 layers; latent [1,16,5,30,52], 512 text tokens).

    PYTHONPATH=. .venv/bin/python bench/bench_sampler.py              # 10 steps, 3 reps per solver
    PYTHONPATH=. .venv/bin/python bench/bench_sampler.py --steps 4 --reps 1

overhead = (generate time − steps × forward time) / (steps × forward time); goal ≤ 2 %.
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

from wan_core.generation import Conditioning, generate, seeded_noise
from wan_core.model import WanConfig, WanDiT
from wan_core.tiny import randomize_

LATENT = (1, 16, 5, 30, 52)
SMALL = dict(dim=512, num_heads=8, ffn_dim=2048, num_layers=4, text_dim=4096)


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

    def run(solver, batch_cfg=True):
        generate(model, noise, cond, steps=args.steps, shift=5.0, guide_scale=5.0, solver=solver, batch_cfg=batch_cfg)

    rows = []
    with torch.no_grad():
        forwards(1)
        run("euler")  # warm-up
        for solver in args.solvers.split(","):
            t_fwd, t_gen, t_seq = [], [], []
            for _ in range(args.reps):
                t_fwd.append(timed(lambda: forwards(args.steps)))
                t_gen.append(timed(lambda: run(solver)))
                t_seq.append(timed(lambda: run(solver, batch_cfg=False)))
            f, g, s = (statistics.median(v) for v in (t_fwd, t_gen, t_seq))
            rows.append(dict(solver=solver, steps=args.steps, forwards_s=f, generate_s=g, two_pass_cfg_s=s,
                             overhead=(g - f) / f, overhead_min=(min(t_gen) - min(t_fwd)) / min(t_fwd),
                             batched_over_two_pass=g / s))
    print("| solver | steps | bare forwards (s) | generate (s) | overhead (median / min) | batched CFG / two passes |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['solver']} | {r['steps']} | {r['forwards_s']:.3f} | {r['generate_s']:.3f} | "
              f"{100 * r['overhead']:+.2f} % / {100 * r['overhead_min']:+.2f} % | {r['batched_over_two_pass']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), torch=torch.__version__,
                                   latent=LATENT, config=SMALL, rows=rows), indent=1))


if __name__ == "__main__":
    main()
