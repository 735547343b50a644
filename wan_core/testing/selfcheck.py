"""Self-check: build tiny random Wan DiTs and VAEs, write them in every checkpoint layout, reload
them with `load_dit` / `load_vae` and print how closely each reproduces the reference numbers.

For every variant and layout the reloaded model's output is compared with
  * our in-memory model holding exactly the stored (dequantized) weights - must be identical up to
    float noise, and
  * diffusers' WanTransformer3DModel / AutoencoderKLWan on the same weights, when diffusers is
    installed (the test setup installs it) - must agree within 1e-4 (fp32; VAE rows compare the
    encoded latent and the decoded video together).
Finally the bf16 compute path is compared with fp32 by cosine similarity (> 0.999).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..formats.dit import comfyui_state_dict, load_dit, save_official
from ..io.write import save_pth, save_safetensors
from ..models.dit import WanDiT
from .diffusers_reference import diffusers_available, diffusers_forward, diffusers_model
from .dit import dequantized_reference, example_inputs, random_dit

KINDS = ("t2v", "i2v", "flf2v", "ti2v", "i2v-2.2")
TOLERANCE = 1e-4
PREFIX = "model.diffusion_model."


def write_layouts(model: WanDiT, folder: Path) -> dict:
    """-> {layout name: (source for load_dit, the fp32 weights a correct loader must produce)}."""
    state, cfg = model.state_dict(), model.config
    exact = {k: v.float() for k, v in state.items()}
    layouts = {
        "official": (save_official(state, cfg, folder / "official"), exact),
        "official sharded": (save_official(state, cfg, folder / "sharded", shards=3), exact),
        "official .pth": (save_pth(state, folder / "model.pth"), exact),
    }
    for name, kwargs in {
        "comfyui fp16": dict(dtype=torch.float16),
        "comfyui bf16 prefixed": dict(dtype=torch.bfloat16, prefix=PREFIX),
        "comfyui fp8_e4m3fn": dict(fp8="e4m3fn"),
        "comfyui fp8_e5m2": dict(fp8="e5m2"),
        "comfyui fp8_scaled prefixed": dict(fp8="scaled", prefix=PREFIX),
    }.items():
        tensors = comfyui_state_dict(state, **kwargs)
        path = save_safetensors(tensors, folder / (name.replace(" ", "_") + ".safetensors"))
        layouts[name] = (path, dequantized_reference(tensors, kwargs.get("prefix", "")))
    if diffusers_available():
        diffusers_model(cfg, state).save_pretrained(folder / "diffusers" / "transformer", max_shard_size="300KB")
        layouts["diffusers"] = (folder / "diffusers" / "transformer", exact)
    return layouts


def check_variant(kind: str, seed: int, workdir: Path) -> list[dict]:
    model = random_dit(kind, seed=seed)
    inputs = example_inputs(model.config)
    rows = []
    for layout, (source, weights) in write_layouts(model, workdir / kind).items():
        loaded = load_dit(source, dtype=torch.float32)
        reference = WanDiT(model.config).eval()
        reference.load_state_dict(weights, strict=True)
        with torch.no_grad():
            out = loaded(**inputs)
            row = {
                "variant": kind, "layout": layout, "detected": loaded.config.variant,
                "vs_reference": (out - reference(**inputs)).abs().max().item(),
            }
        if diffusers_available():
            ref_model = diffusers_model(model.config, weights)
            row["vs_diffusers"] = (out - diffusers_forward(ref_model, model.config, **inputs)).abs().max().item()
        rows.append(row)
    bf16 = load_dit(workdir / kind / "official", dtype=torch.bfloat16)
    with torch.no_grad():
        cos = F.cosine_similarity(bf16(**inputs).flatten().double(), model(**inputs).flatten().double(), dim=0).item()
    rows.append({"variant": kind, "layout": "official, bf16 compute", "detected": bf16.config.variant, "cosine_vs_fp32": cos})
    return rows


def check_vae(version: str, seed: int, workdir: Path) -> list[dict]:
    """One tiny VAE in each layout: encode + decode of a short clip vs the in-memory model and diffusers."""
    from ..formats.vae import load_vae
    from .diffusers_reference import diffusers_vae
    from .vae import random_vae

    vae = random_vae(version, seed=seed)
    s = vae.config.stride[1]
    video = torch.rand(1, 3, 5, 4 * s, 4 * s, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    folder = workdir / f"vae{version}"
    layouts = {"official .pth": save_pth(vae.state_dict(), folder / "vae.pth"),
               "comfyui safetensors": save_safetensors(vae.state_dict(), folder / "vae.safetensors")}
    ref = diffusers_vae(vae) if diffusers_available() else None
    if ref is not None:
        ref.save_pretrained(folder / "pipeline" / "vae")
        layouts["diffusers"] = folder / "pipeline" / "vae"

    def roundtrip(encode, decode):
        mu = encode(video)
        return torch.cat([mu.flatten(), decode(mu).flatten()])

    expected = roundtrip(lambda v: vae.encode(v, normalized=False), lambda z: vae.decode(z, normalized=False))
    if ref is not None:
        with torch.no_grad():
            theirs = roundtrip(lambda v: ref.encode(v).latent_dist.mode(), lambda z: ref.decode(z).sample)
    rows = []
    for layout, source in layouts.items():
        loaded = load_vae(source)
        out = roundtrip(lambda v: loaded.encode(v, normalized=False), lambda z: loaded.decode(z, normalized=False))
        row = {"variant": f"vae{version}", "layout": layout, "detected": f"wan{loaded.config.version} vae",
               "vs_reference": (out - expected).abs().max().item()}
        if ref is not None:
            row["vs_diffusers"] = (out - theirs).abs().max().item()
        rows.append(row)
    return rows


def row_ok(row: dict) -> bool:
    if "cosine_vs_fp32" in row:
        return row["cosine_vs_fp32"] > 0.999
    return row["vs_reference"] <= TOLERANCE and row.get("vs_diffusers", 0.0) <= TOLERANCE


def run_selfcheck(out_dir: str | None = None) -> int:
    torch.manual_seed(0)
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="wanflow-selfcheck-") as tmp:
        for seed, kind in enumerate(KINDS):
            rows += check_variant(kind, seed, Path(tmp))
        for seed, version in enumerate(("2.1", "2.2")):
            rows += check_vae(version, seed, Path(tmp))
    print(f"{'variant':8} {'layout':28} {'detected as':18} {'vs ours(ref)':>13} {'vs diffusers':>13}  ok")
    for r in rows:
        if "cosine_vs_fp32" in r:
            figures = f"{'cos ' + format(r['cosine_vs_fp32'], '.6f'):>27}"
        else:
            diff = r.get("vs_diffusers")
            figures = f"{r['vs_reference']:13.2e} {('%13.2e' % diff) if diff is not None else '  (no diffusers)'}"
        print(f"{r['variant']:8} {r['layout']:28} {r['detected']:18} {figures}  {'yes' if row_ok(r) else 'NO'}")
    failed = [r for r in rows if not row_ok(r)]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks within tolerance (max abs diff <= {TOLERANCE}, "
          f"bf16 cosine > 0.999) in {time.time() - start:.1f} s"
          + ("" if diffusers_available() else "; install diffusers (scripts/setup.sh --test) for the diffusers column"))
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "selfcheck.json").write_text(json.dumps(rows, indent=2))
        print(f"report: {out / 'selfcheck.json'}")
    return 1 if failed else 0
