"""Peak resident memory while loading a realistic-size Wan DiT checkpoint with `wan_core.load_dit`.

For each case a random checkpoint of the 1.3B architecture is written tensor by tensor (never the
whole state dict in memory) by one subprocess, then loaded by a fresh subprocess that samples its
own RSS every ~5 ms (psutil thread; getrusage ru_maxrss as a cross-check). Reported: peak RSS during
`load_dit` minus the RSS right before it (after importing torch + wan_core), divided by the size of
what is being loaded (the file for same-dtype loads, the resulting model otherwise).

    PYTHONPATH=. .venv/bin/python bench/load_rss.py                 # 30 layers (2.8 GB fp16 file)
    PYTHONPATH=. .venv/bin/python bench/load_rss.py --layers 12 --cases fp16   # quicker

Files go to --tmp (default /tmp) and are deleted afterwards. Writes bench/results/load_rss.json.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (file dtype, load_dit kwargs as text, what the ratio is taken against)
    "fp16": ("fp16", dict(dtype="fp16"), "file"),
    "fp32->bf16": ("fp32", dict(dtype="bf16"), "model"),
    "fp8_scaled(file)": ("fp8_scaled", dict(weight_dtype="file"), "model"),
}
ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3"}


def write_checkpoint(path: str, layers: int, file_dtype: str, seed: int = 0):
    """Stream a random official-layout (ComfyUI-style for fp8_scaled) safetensors file to disk."""
    import torch

    from wan_core.formats.dit import comfyui_state_dict
    from wan_core.models.dit import WanConfig, WanDiT

    cfg = WanConfig(dim=1536, num_heads=12, ffn_dim=8960, num_layers=layers)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}

    def convert(name, w):  # per-tensor conversion; on meta tensors it yields just names/dtypes/shapes
        if file_dtype == "fp8_scaled":
            return comfyui_state_dict({name: w}, dtype=torch.bfloat16, fp8="scaled")
        return {name: w.to({"fp32": torch.float32, "fp16": torch.float16}[file_dtype])}

    header, offset = {}, 0
    for name, shape in shapes.items():
        for k, t in convert(name, torch.empty(shape, device="meta")).items():
            if k.endswith("scaled_fp8"):
                continue
            n = t.numel() * t.element_size()
            header[k] = {"dtype": ST_DTYPES[str(t.dtype).split(".")[1]], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
            offset += n
    if file_dtype == "fp8_scaled":
        header["scaled_fp8"] = {"dtype": "F8_E4M3", "shape": [0], "data_offsets": [offset, offset]}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            w = torch.randn(shape, generator=gen) * 0.02 + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            for k, t in convert(name, w).items():
                if not k.endswith("scaled_fp8"):
                    f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
            del w
    return os.path.getsize(path)


def measure_load(path: str, kwargs: dict) -> dict:
    """Runs in a fresh process: RSS before/peak/after `load_dit`."""
    import gc
    import resource
    import threading

    import psutil

    import wan_core

    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    model = wan_core.load_dit(path, **kwargs)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    after = proc.memory_info().rss
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    del model
    return dict(base=base, peak_sampled=peak[0], peak_maxrss=max(maxrss, peak[0]) if maxrss > maxrss_before else peak[0],
                after=after, model_bytes=model_bytes, seconds=seconds, param_dtypes=dtypes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of " + ",".join(CASES))
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "load_rss.json"))
    ap.add_argument("--_write", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._write:
        print(json.dumps(write_checkpoint(args._write[0], int(args._write[1]), args._write[2])))
        return
    if args._measure:
        print(json.dumps(measure_load(args._measure[0], json.loads(args._measure[1]))))
        return

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    me = [sys.executable, str(Path(__file__).resolve())]
    rows = []
    for case in args.cases.split(","):
        file_dtype, kwargs, against = CASES[case]
        path = os.path.join(args.tmp, f"wanflow_rss_{file_dtype}_{os.getpid()}.safetensors")
        try:
            t0 = time.perf_counter()
            size = json.loads(subprocess.run(me + ["--_write", path, str(args.layers), file_dtype], env=env,
                                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            write_s = time.perf_counter() - t0
            r = json.loads(subprocess.run(me + ["--_measure", path, json.dumps(kwargs)], env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
        finally:
            Path(path).unlink(missing_ok=True)
        ref = size if against == "file" else r["model_bytes"]
        row = dict(case=case, layers=args.layers, load_kwargs=kwargs, file_bytes=size, write_s=write_s, **r,
                   ratio_against=against, peak_over_base=r["peak_sampled"] - r["base"],
                   ratio=(r["peak_sampled"] - r["base"]) / ref, ratio_maxrss=(r["peak_maxrss"] - r["base"]) / ref,
                   held_after=(r["after"] - r["base"]) / ref)
        rows.append(row)
        print(f"{case}: file {size / 2**30:.2f} GiB, model {r['model_bytes'] / 2**30:.2f} GiB, peak-base "
              f"{row['peak_over_base'] / 2**30:.2f} GiB -> {row['ratio']:.3f}x {against} (maxrss {row['ratio_maxrss']:.3f}x), "
              f"load {r['seconds']:.1f}s", flush=True)

    print("\n| case | layers | file (GiB) | model (GiB) | peak − baseline (GiB) | ratio | vs | ru_maxrss ratio | load (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['layers']} | {r['file_bytes'] / 2**30:.2f} | {r['model_bytes'] / 2**30:.2f} | "
              f"{r['peak_over_base'] / 2**30:.2f} | {r['ratio']:.3f} | {r['ratio_against']} | {r['ratio_maxrss']:.3f} | {r['seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    out.write_text(json.dumps({"meta": {"torch": torch.__version__, "sample_interval_ms": 5}, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
