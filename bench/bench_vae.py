"""Wan VAE decode: time and peak memory, ours vs diffusers' AutoencoderKLWan, and tiled vs untiled.

Both models hold the same random weights of the released architecture (2.1: 127 M params; 2.2:
705 M) and decode the same latent in the same process, interleaved. Peak memory is the peak of
working memory above what was allocated before the call (weights excluded):
  * CUDA: torch.cuda.max_memory_allocated;
  * CPU: resident memory sampled every 2 ms by a thread (the script re-executes itself with
    MALLOC_MMAP_THRESHOLD_ set so freed tensors really leave the process between runs).
"Tiled" is our decode with `memory_budget` = --budget-fraction x our measured untiled peak: the
tile size is chosen from that budget. Also reported: max |tiled - untiled| on the decoded video.

    PYTHONPATH=. .venv/bin/python bench/bench_vae.py                        # 81 frames 832x480 (GPU)
    PYTHONPATH=. .venv/bin/python bench/bench_vae.py --frames 5 --reps 1    # CPU-sized (~15 min)
Writes bench/results/vae_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # make freed CPU tensors return to the OS
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

from wan_core.models.vae import VAEConfig, WanVAE  # noqa: E402
from wan_core.testing.diffusers_reference import diffusers_vae  # noqa: E402
from wan_core.testing.vae import randomize_vae_  # noqa: E402


class PeakMemory:
    """Peak working memory of the enclosed block, in bytes."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil
            self.proc = psutil.Process()
            self.base = self.peak = self.proc.memory_info().rss
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.peak, self.proc.memory_info().rss) - self.base


def measure(fn, device):
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, seconds, mem.bytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default="2.1", choices=["2.1", "2.2"])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--budget-fraction", type=float, default=0.35)
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--diffusers-tiled", action="store_true", help="also time diffusers' own tiled decode")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() if args.device != "cpu" else min(2, os.cpu_count()))
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    ours = randomize_vae_(WanVAE(VAEConfig.released(args.version))).eval().requires_grad_(False)
    ref = None if args.skip_diffusers else diffusers_vae(ours).to(device, dtype)
    ours = ours.to(device, dtype)
    st, s, _ = ours.config.stride
    latent = torch.randn(1, ours.config.z_dim, (args.frames - 1) // st + 1, args.height // s, args.width // s,
                         generator=torch.Generator().manual_seed(0)).to(device)
    print(f"VAE {args.version} {args.dtype} on {device}: latent {tuple(latent.shape)} -> "
          f"{args.frames} frames {args.width}x{args.height}", flush=True)

    runs = {"ours": [], "diffusers": [], "ours_tiled": [], "diffusers_tiled": []}
    outputs = {}
    for rep in range(args.reps):
        out, sec, peak = measure(lambda: ours.decode(latent, normalized=False), device)
        outputs["ours"] = out.cpu()
        runs["ours"].append((sec, peak))
        print(f"  ours      {sec:8.2f} s  peak {peak / 2**20:9.1f} MiB", flush=True)
        del out
        if ref is not None:
            out, sec, peak = measure(lambda: ref.decode(latent).sample, device)
            outputs["diffusers"] = out.float().cpu()
            runs["diffusers"].append((sec, peak))
            print(f"  diffusers {sec:8.2f} s  peak {peak / 2**20:9.1f} MiB", flush=True)
            del out
        budget = int(args.budget_fraction * min(p for _, p in runs["ours"]))
        from wan_core.models.vae_tiling import choose_tile
        tile = choose_tile(ours, latent.shape, budget, "decode")
        out, sec, peak = measure(lambda: ours.decode(latent, normalized=False, memory_budget=budget), device)
        outputs["ours_tiled"] = out.cpu()
        runs["ours_tiled"].append((sec, peak))
        print(f"  tiled     {sec:8.2f} s  peak {peak / 2**20:9.1f} MiB  (budget {budget / 2**20:.0f} MiB, "
              f"latent tile {tile})", flush=True)
        del out
        if ref is not None and args.diffusers_tiled:
            ref.enable_tiling()  # diffusers' defaults: 256-pixel tiles, stride 192
            out, sec, peak = measure(lambda: ref.decode(latent).sample, device)
            ref.disable_tiling()
            runs["diffusers_tiled"].append((sec, peak))
            print(f"  diffusers tiled {sec:8.2f} s  peak {peak / 2**20:9.1f} MiB", flush=True)
            del out

    def best(name):
        return (min(t for t, _ in runs[name]), min(p for _, p in runs[name])) if runs[name] else (None, None)

    result = {
        "version": args.version, "dtype": args.dtype, "device": str(device), "frames": args.frames,
        "size": f"{args.width}x{args.height}", "torch": torch.__version__, "tile": list(tile) if tile else None,
        "runs": runs,
        "tiled_vs_untiled_max_abs": (outputs["ours_tiled"] - outputs["ours"]).abs().max().item(),
        "tiled_vs_untiled_mean_abs": (outputs["ours_tiled"] - outputs["ours"]).abs().mean().item(),
        "tiled_peak_ratio": best("ours_tiled")[1] / best("ours")[1],
    }
    if ref is not None:
        result.update(
            ours_vs_diffusers_max_abs=(outputs["ours"] - outputs["diffusers"]).abs().max().item(),
            time_ratio=best("ours")[0] / best("diffusers")[0],
            peak_ratio=best("ours")[1] / best("diffusers")[1],
            tiled_peak_vs_diffusers_untiled=best("ours_tiled")[1] / best("diffusers")[1],
        )
    if runs["diffusers_tiled"]:
        result["tiled_time_vs_diffusers_tiled"] = best("ours_tiled")[0] / best("diffusers_tiled")[0]
        result["tiled_peak_vs_diffusers_tiled"] = best("ours_tiled")[1] / best("diffusers_tiled")[1]
    for k, v in result.items():
        if k != "runs":
            print(f"{k}: {v}")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"vae_{device.type}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
