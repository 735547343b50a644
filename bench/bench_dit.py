"""CPU benchmark: our WanDiT vs diffusers' WanTransformer3DModel, same weights, same inputs.

Both models live in one process and are timed in alternation (warm-up first, then N interleaved
repetitions, median reported), so drift of the machine hits both alike.

    PYTHONPATH=. .venv/bin/python bench/bench_dit.py                      # everything, 3 reps
    PYTHONPATH=. .venv/bin/python bench/bench_dit.py --configs small --dtypes fp32 --modes fwd --reps 1

Results: a markdown table on stdout, JSON in bench/results/dit_cpu.json (merged under --tag).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = {
    # "dim 512, 8 heads" -> head_dim 64 (not a released shape, but the issue asks for it)
    "small": dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=4),
    # the block shape of Wan2.1 T2V-1.3B, only 2 of its 30 blocks
    "1.3b-blocks": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=2),
}
COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
LATENT = (1, 16, 5, 30, 52)
TEXT_LEN = 512
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_diffusers(name: str, seed: int = 0):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(**COMMON, **CONFIGS[name]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(noise + (1.0 if "norm" in pname and pname.endswith("weight") else 0.0))
    return model


def make_inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(*LATENT, generator=gen),
                t=torch.tensor([700.0]),
                context=torch.randn(1, TEXT_LEN, COMMON["text_dim"], generator=gen))


def run_ours(model, inp, dtype):
    return model(inp["x"], inp["t"], inp["context"])


def run_diffusers(model, inp, dtype):
    return model(inp["x"].to(dtype), inp["t"], inp["context"].to(dtype), return_dict=False)[0]


def timed(fn, model, inp, dtype, mode) -> tuple[float, torch.Tensor | None]:
    """One call; returns (seconds, output or None)."""
    if mode == "fwd":
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn(model, inp, dtype)
        return time.perf_counter() - t0, out
    for p in model.parameters():
        p.grad = None
    t0 = time.perf_counter()
    out = fn(model, inp, dtype)
    out.float().square().mean().backward()
    return time.perf_counter() - t0, None


def bench_pair(ours, ref, inp, dtype, mode, warmup, reps):
    grad = mode == "fwdbwd"
    ours.requires_grad_(grad)  # load_dit returns frozen parameters
    ref.requires_grad_(grad)
    for _ in range(warmup):
        timed(run_ours, ours, inp, dtype, mode)
        timed(run_diffusers, ref, inp, dtype, mode)
    t_ours, t_ref = [], []
    for i in range(reps):
        # alternate who goes first, so neither always runs on a "hot" or "cold" machine
        order = [(run_ours, ours, t_ours), (run_diffusers, ref, t_ref)]
        for fn, m, acc in order if i % 2 == 0 else order[::-1]:
            acc.append(timed(fn, m, inp, dtype, mode)[0])
    for m in (ours, ref):
        m.requires_grad_(False)
        for p in m.parameters():
            p.grad = None
    return statistics.median(t_ours), statistics.median(t_ref), t_ours, t_ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16")
    ap.add_argument("--modes", default="fwd,fwdbwd", help="comma list of fwd (no_grad forward), fwdbwd")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per model (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="current", help="key under which results are stored in the JSON")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dit_cpu.json"))
    args = ap.parse_args()

    from wan_core import load_dit

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inp = make_inputs()
    rows, numerics = [], {}
    out = Path(args.out)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(out.read_text()) if out.exists() else {}
        data[args.tag] = dict(
            machine=dict(cpu=platform.processor() or platform.machine(), threads=args.threads, torch=torch.__version__),
            latent=LATENT, text_len=TEXT_LEN, reps=args.reps, warmup=args.warmup, rows=rows, numerics=numerics)
        out.write_text(json.dumps(data, indent=1))

    for cname in args.configs.split(","):
        ref32 = build_diffusers(cname)
        with tempfile.TemporaryDirectory() as tmp:
            ref32.save_pretrained(tmp)
            loaded = {d: load_dit(tmp, dtype=DTYPES[d]) for d in args.dtypes.split(",")}
        with torch.no_grad():
            gold = run_diffusers(ref32, inp, torch.float32)
        for dname, ours in loaded.items():
            dtype = DTYPES[dname]
            ref = ref32 if dtype == torch.float32 else copy.deepcopy(ref32).to(dtype)
            with torch.no_grad():
                o = run_ours(ours, inp, dtype).float()
                r = run_diffusers(ref, inp, dtype).float()
            cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
            numerics[f"{cname}/{dname}"] = dict(
                max_abs_diff_vs_diffusers=(o - r).abs().max().item(), out_absmax=r.abs().max().item(),
                cosine_vs_diffusers=cos(o, r), cosine_ours_vs_fp32=cos(o, gold), cosine_diffusers_vs_fp32=cos(r, gold))
            for mode in args.modes.split(","):
                mo, mr, all_o, all_r = bench_pair(ours, ref, inp, dtype, mode, args.warmup, args.reps)
                row = dict(config=cname, dtype=dname, mode=mode, ours_s=mo, diffusers_s=mr, ratio=mo / mr,
                           ratio_of_min=min(all_o) / min(all_r), ours_all=all_o, diffusers_all=all_r)
                rows.append(row)
                print(f"{cname:12s} {dname:5s} {mode:7s} ours {mo:7.3f}s  diffusers {mr:7.3f}s  ratio {mo / mr:.3f} (of min {row['ratio_of_min']:.3f})",
                      flush=True)
                save()
            if ref is not ref32:
                del ref
        del ref32, loaded

    print("\n| config | dtype | mode | ours (s, median) | diffusers (s, median) | ours/diffusers | ratio of minima |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['dtype']} | {r['mode']} | {r['ours_s']:.3f} | {r['diffusers_s']:.3f} | {r['ratio']:.3f} | {r['ratio_of_min']:.3f} |")
    print("\n| config/dtype | max abs diff vs diffusers | cosine vs diffusers | cosine ours vs fp32 ref | cosine diffusers vs fp32 ref |")
    print("|---|---:|---:|---:|---:|")
    for k, v in numerics.items():
        print(f"| {k} | {v['max_abs_diff_vs_diffusers']:.2e} | {v['cosine_vs_diffusers']:.6f} | "
              f"{v['cosine_ours_vs_fp32']:.6f} | {v['cosine_diffusers_vs_fp32']:.6f} |")

    save()
    print(f"\nwrote {out} [{args.tag}]")


if __name__ == "__main__":
    main()
