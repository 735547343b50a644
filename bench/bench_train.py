"""LoRA training step: our trainer vs diffusers' WanTransformer3DModel + peft LoRA, same config.

Both models hold the same random weights and get the same LoRA (rank, alpha, targets: self- and
cross-attention q/k/v/o and both FFN linears; the adapters start identical: same `down`/`lora_A`,
zero `up`/`lora_B`). Both are driven by the same `wan_core.training.Trainer`, so batches, σ, noise,
the flow-matching loss, bf16 autocast, gradient clipping and AdamW are literally the same code;
only the model and the LoRA implementation differ:
  * ours: `WanDiT` with `wan_core.lora.add_lora` and the model's own per-block gradient checkpointing;
  * reference: diffusers' model with `add_adapter(peft LoraConfig)` (what diffusers' training scripts
    do), LoRA weights in fp32, `enable_gradient_checkpointing()`, behind a thin adapter giving it our
    calling convention.
The frozen base weights are stored in `--base-dtype` (bf16 by default, as LoRA training usually
does; both models) and the adapters in fp32; everything computes under bf16 autocast.

Time: median seconds per optimizer step over `--steps` steps after `--warmup`, the two trainers
stepping in alternation (ABBA order) so that drift of the machine hits both alike. Process CPU time
is recorded too. CPU runs use one thread by default (`--threads`): on a shared VM two threads spend
much of a step waiting for a descheduled sibling at OpenMP barriers.

Peak memory of one step (one extra step each, after the timed ones):
  * CUDA: `torch.cuda.max_memory_allocated` during the step minus what was allocated when it began;
  * CPU: the same quantity from the CPU allocator's own record: `torch.profiler` with
    `profile_memory=True` logs every allocation and free (bytes, time) made during the step; the
    running sum of those events peaks at the step's transient high-water mark.
  Reported peak = that transient + the bytes the trainer holds when the step begins (base weights,
  adapters, their gradients and AdamW state, counted once per storage). This is the CUDA notion of
  "allocated" (tensor memory, no allocator cache, no Python heap) on both devices, and it excludes
  the other model living in the same process. Resident set size cannot separate two models in one
  process, and glibc keeps freed pages, so it is not used.
Checks that both sides do the same work: equal trainable parameter counts and LoRA targets, losses
that agree step by step (same weights, data, σ and noise), and a step that leaves exactly its new
gradients allocated (a check of the memory accounting).

    PYTHONPATH=. .venv/bin/python bench/bench_train.py                          # small, CPU, ~1.5 min
    PYTHONPATH=. .venv/bin/python bench/bench_train.py --device cuda --preset 1.3b  # GPU figure

Goal (issue): ours ≤ 0.8x the reference's step time and ≤ 0.7x its peak memory, checkpointing on.
Results: a table on stdout and JSON in bench/results/train_<device>.json (merged under --tag).
Needs diffusers and peft (`pip install peft`; not a dependency of the pack): without them only our
side runs, and the script says so.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from wan_core.models.dit import WanConfig, WanDiT
from wan_core.testing.dit import randomize_
from wan_core.training.flow_matching import TrainConfig, Trainer

PRESETS = {
    # a small DiT with the released head width (128); the other benches' latent (1950 tokens)
    "small": dict(model=dict(dim=768, num_heads=6, ffn_dim=3072, num_layers=4), latent=(16, 5, 30, 52)),
    # Wan2.1 T2V-1.3B (all 30 blocks) on 81 frames at 832x480: 21x60x104 latent, 32760 tokens
    "1.3b": dict(model=dict(dim=1536, num_heads=12, ffn_dim=8960, num_layers=30), latent=(16, 21, 60, 104)),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PEFT_TARGETS = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"
PROMPT_TOKENS = 120  # a typical prompt; padded with zeros to text_len (512) like at inference


class OneClip:
    """The trainer's dataset protocol over one fixed random latent and prompt embedding."""

    def __init__(self, latent_shape, text_dim, seed=1):
        gen = torch.Generator().manual_seed(seed)
        self.item = {"latent": torch.randn(*latent_shape, generator=gen),
                     "context": torch.randn(PROMPT_TOKENS, text_dim, generator=gen)}

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.item

    def bucket_of(self, i):
        return 0


class DiffusersAsWan(torch.nn.Module):
    """diffusers' WanTransformer3DModel behind our calling convention, so our Trainer can drive it."""

    def __init__(self, inner, config: WanConfig):
        super().__init__()
        self.inner, self.config = inner, config

    @property
    def gradient_checkpointing(self) -> bool:
        return self.inner.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        # the Trainer switches checkpointing through this attribute; diffusers' own switch does the work
        if on:
            self.inner.enable_gradient_checkpointing()
        else:
            self.inner.disable_gradient_checkpointing()

    def forward(self, x, timestep, context, clip_fea=None, y=None):
        return self.inner(x, timestep, context, return_dict=False)[0]


class ParamsOnly(torch.nn.Module):
    """Holds the peft LoRA parameters (and nothing else) for the Trainer's `network=` argument."""

    def __init__(self, named):
        super().__init__()
        self.names = [n for n, _ in named]
        self.params = torch.nn.ParameterList([p for _, p in named])


def peft_missing() -> str | None:
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install peft diffusers): the reference run is skipped"
    return None


def build_ours(cfg: WanConfig, base_dtype, device, seed=0) -> WanDiT:
    return randomize_(WanDiT(cfg), seed=seed, std=0.02).to(device=device, dtype=base_dtype)


def build_reference(ours: WanDiT, rank: int, alpha: float, base_dtype, device):
    """diffusers' model with our weights and a peft LoRA on the same linears, in fp32 adapters."""
    from peft import LoraConfig

    from wan_core.testing.diffusers_reference import diffusers_model

    state = {k: v.float().cpu() for k, v in ours.state_dict().items()}
    inner = diffusers_model(ours.config, state).to(device)
    # as diffusers' from_pretrained(torch_dtype=...) stores it: its _keep_in_fp32_modules stay fp32
    keep = set(getattr(inner, "_keep_in_fp32_modules", None) or ())
    for name, t in list(inner.named_parameters()) + list(inner.named_buffers()):
        if t.is_floating_point() and not keep.intersection(name.split(".")):
            t.data = t.data.to(base_dtype)
    inner.requires_grad_(False)
    inner.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True,
                                 target_modules=PEFT_TARGETS))
    lora = [(n, p) for n, p in inner.named_parameters() if "lora_" in n]
    for _, p in lora:  # diffusers' scripts: cast_training_params(..., torch.float32)
        p.data = p.data.float()
    return DiffusersAsWan(inner, ours.config).train(), ParamsOnly(lora)


def copy_adapters(ours_net, ref_params: ParamsOnly) -> int:
    """Start peft's adapters from our adapters' values (lora_A = down, lora_B = up = 0): both runs then
    train the same function from the same point. Returns how many modules were matched."""
    from wan_core.formats.dit import diffusers_to_official_name

    mine = {path: ours_net.adapter(path) for path in ours_net.targets}
    matched = set()
    with torch.no_grad():
        for name, p in zip(ref_params.names, ref_params.params):
            # inner.blocks.0.attn1.to_q.lora_A.default.weight -> blocks.0.self_attn.q
            module, _, rest = name.partition(".lora_")
            path = diffusers_to_official_name(module + ".weight").removesuffix(".weight")
            part = "down" if rest.startswith("A.") else "up"
            p.copy_(getattr(mine[path], part))
            matched.add(path)
    if matched != set(mine):
        raise RuntimeError(f"LoRA targets differ: ours only {sorted(set(mine) - matched)[:4]}, "
                           f"reference only {sorted(matched - set(mine))[:4]}")
    return len(matched)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(trainer, device) -> tuple[float, float, float]:
    """-> (wall seconds, process CPU seconds, loss). CPU seconds are a second opinion on a shared
    machine: other jobs stretch the wall time of a step more than the work this process does."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = trainer.train_step().loss
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, loss


def held_bytes(trainer) -> dict:
    """Bytes the trainer keeps between steps, one count per storage: base weights (frozen), trainable
    parameters, their gradients, optimizer state."""
    seen: set = set()

    def total(tensors):
        n = 0
        for t in tensors:
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                n += s.nbytes()
        return n

    trainable = [p for _, p in trainer.named_params]
    out = {"trainable": total(trainable),
           "grads": total(p.grad for p in trainable if p.grad is not None),
           "optimizer": total(v for st in trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v))}
    out["base"] = total(trainer.model.parameters()) + total(trainer.model.buffers())
    out["total"] = sum(out.values())
    return out


def step_memory(trainer, device) -> tuple[int, int]:
    """Tensor memory of one train_step relative to its start: (high-water mark, level at the end).
    The end level is what the step leaves allocated: the new gradients (a check of the accounting)."""
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start, torch.cuda.memory_allocated(device) - start
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
    # every allocation (+bytes) and free (-bytes) the CPU allocator made during the step, in time order
    # (the profiler's raw event tree: the public FunctionEvents fold allocations into their ops)
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    level = peak = 0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return peak, level


def mib(n: float) -> float:
    return n / 2**20


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--latent", help="C,F,H,W latent shape instead of the preset's (e.g. 16,5,30,52)")
    ap.add_argument("--layers", type=int, help="number of blocks instead of the preset's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--base-dtype", choices=sorted(DTYPES), default="bf16", help="storage of the frozen weights")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per model (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (CPU runs). 1 by default: on a shared VM two threads wait at every OpenMP "
                         "barrier for a descheduled sibling (steps 1.5-3x slower and noisy, see bench/README.md)")
    ap.add_argument("--no-checkpointing", action="store_true", help="both sides without gradient checkpointing")
    ap.add_argument("--tag", help="key under which results are stored in the JSON (default: from the settings)")
    ap.add_argument("--out", help="JSON file (default bench/results/train_<device type>.json)")
    args = ap.parse_args()

    if args.steps < 1 or args.warmup < 0:
        ap.error(f"--steps must be >= 1 and --warmup >= 0; found {args.steps}, {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    latent = tuple(int(v) for v in args.latent.split(",")) if args.latent else preset["latent"]
    model_kw = dict(preset["model"], **({"num_layers": args.layers} if args.layers else {}))
    cfg = WanConfig(**model_kw)
    if len(latent) != 4 or latent[0] != cfg.in_dim or latent[2] % 2 or latent[3] % 2:
        ap.error(f"--latent must be C,F,H,W with C = {cfg.in_dim} and even H, W; found {args.latent}")
    base_dtype = DTYPES[args.base_dtype]
    checkpointing = not args.no_checkpointing
    train_cfg = TrainConfig(mode="lora", steps=10**6, learning_rate=1e-4, lr_schedule="constant", batch_size=1,
                            lora_rank=args.rank, lora_alpha=args.alpha, lora_targets="attention+ffn",
                            precision="bf16", gradient_checkpointing=checkpointing, max_grad_norm=1.0, seed=0)
    dataset = OneClip(latent, cfg.text_dim)
    tokens = latent[1] * (latent[2] // 2) * (latent[3] // 2)
    print(f"preset {args.preset}: dim {cfg.dim}, {cfg.num_heads} heads, ffn {cfg.ffn_dim}, {cfg.num_layers} blocks; "
          f"latent {latent} = {tokens} tokens, text {cfg.text_len}; base {args.base_dtype}, LoRA rank {args.rank}, "
          f"{'checkpointing' if checkpointing else 'no checkpointing'}, {device}", flush=True)

    torch.manual_seed(0)
    model = build_ours(cfg, base_dtype, device)
    ours = Trainer(model, dataset, train_cfg)
    model.train()
    trainers = {"ours": ours}
    skipped = peft_missing()
    if skipped:
        print(skipped, flush=True)
    else:
        wrapped, params = build_reference(model, args.rank, args.alpha, base_dtype, device)
        matched = copy_adapters(ours.network, params)
        trainers["reference"] = Trainer(wrapped, dataset, train_cfg, network=params)
        n_ours = sum(p.numel() for _, p in ours.named_params)
        n_ref = sum(p.numel() for _, p in trainers["reference"].named_params)
        if n_ours != n_ref:
            raise RuntimeError(f"trainable parameters differ: ours {n_ours}, reference {n_ref}")
        print(f"LoRA on {matched} linears, {n_ours / 1e6:.2f} M trainable parameters on each side", flush=True)

    times = {k: [] for k in trainers}
    cpu_times = {k: [] for k in trainers}
    losses = {k: [] for k in trainers}
    names = list(trainers)
    for i in range(args.warmup + args.steps):
        for name in names if i % 2 == 0 else names[::-1]:  # ABBA: neither side always runs first
            seconds, cpu_seconds, loss = timed_step(trainers[name], device)
            losses[name].append(loss)
            if i >= args.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
            print(f"  step {i + 1} {name:9s} {seconds:7.3f} s (process CPU {cpu_seconds:7.3f} s)  loss {loss:.5f}",
                  flush=True)

    memory = {}
    for name, trainer in trainers.items():
        # drop last step's gradients first: the step would free them anyway, and on the CPU the profiler
        # cannot see frees of blocks allocated before it started (the transient would count them twice)
        trainer.optimizer.zero_grad(set_to_none=True)
        held = held_bytes(trainer)
        transient, end = step_memory(trainer, device)
        grads = held_bytes(trainer)["grads"]
        memory[name] = dict(held_mib={k: mib(v) for k, v in held.items()}, step_transient_mib=mib(transient),
                            peak_mib=mib(held["total"] + transient), step_end_mib=mib(end), grads_after_mib=mib(grads))

    result = dict(
        machine=dict(device=str(device), cpu=platform.processor() or platform.machine(),
                     gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                     threads=torch.get_num_threads(), torch=torch.__version__),
        preset=args.preset, model=model_kw, latent=latent, tokens=tokens, text_len=cfg.text_len,
        base_dtype=args.base_dtype, lora_rank=args.rank, lora_alpha=args.alpha, checkpointing=checkpointing,
        steps=args.steps, warmup=args.warmup, reference=None if skipped else "diffusers + peft",
        skipped=skipped, times_s=times, cpu_times_s=cpu_times, losses=losses, memory=memory,
        median_s={k: statistics.median(v) for k, v in times.items()},
        median_cpu_s={k: statistics.median(v) for k, v in cpu_times.items()},
    )
    print("\n| side | median step (s) | min (s) | median process CPU (s) | held (MiB) | step transient (MiB) | peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in trainers:
        m = memory[name]
        print(f"| {name} | {result['median_s'][name]:.3f} | {min(times[name]):.3f} | {result['median_cpu_s'][name]:.3f} | "
              f"{m['held_mib']['total']:.0f} | {m['step_transient_mib']:.0f} | {m['peak_mib']:.0f} |")
    for name, m in memory.items():  # what a step leaves allocated must be exactly its new gradients
        print(f"{name}: step ends {m['step_end_mib']:.2f} MiB above its start, new gradients {m['grads_after_mib']:.2f} MiB")
    if not skipped:
        first = abs(losses["ours"][0] - losses["reference"][0]) / abs(losses["reference"][0])
        result["first_loss_rel_diff"] = first
        result["time_ratio"] = result["median_s"]["ours"] / result["median_s"]["reference"]
        result["time_ratio_of_min"] = min(times["ours"]) / min(times["reference"])
        result["cpu_time_ratio"] = result["median_cpu_s"]["ours"] / result["median_cpu_s"]["reference"]
        result["max_loss_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(losses["ours"], losses["reference"]))
        result["peak_ratio"] = memory["ours"]["peak_mib"] / memory["reference"]["peak_mib"]
        result["transient_ratio"] = memory["ours"]["step_transient_mib"] / max(memory["reference"]["step_transient_mib"], 1e-9)
        result["goals"] = dict(time_le_0_8=result["time_ratio"] <= 0.8, peak_le_0_7=result["peak_ratio"] <= 0.7)
        print(f"\nours/reference: time {result['time_ratio']:.3f} (of minima {result['time_ratio_of_min']:.3f}, "
              f"process CPU {result['cpu_time_ratio']:.3f}; goal <= 0.8), "
              f"peak memory {result['peak_ratio']:.3f} (goal <= 0.7), step transient {result['transient_ratio']:.3f}; "
              f"loss relative difference: first step {first:.1e}, worst step {result['max_loss_rel_diff']:.1e}")

    out = Path(args.out or Path(__file__).parent / "results" / f"train_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out.read_text()) if out.exists() else {}
    tag = args.tag or "-".join([args.preset] + ([f"{cfg.num_layers}blocks"] if args.layers else []) +
                               ([f"latent{'x'.join(map(str, latent))}"] if args.latent else []) +
                               ([args.base_dtype + "-base"] if args.base_dtype != "bf16" else []) +
                               ([] if checkpointing else ["no-checkpointing"]))
    data[tag] = result
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out} [{tag}]")


if __name__ == "__main__":
    main()
