"""`python -m wan_core train`: LoRA or full fine-tune of a Wan DiT on a latent cache, from the shell.

One process (CPU, or the first GPU):

    python -m wan_core train --model wan2.1_t2v_1.3B_bf16.safetensors --latents cache/ --out runs/cats \\
        --mode lora --steps 2000 --learning-rate 1e-4 --lora-rank 32

Several GPUs, one process each (FSDP2 sharding, see `wan_core.distributed`); --batch-size is per
process, so the global batch is batch_size × processes:

    torchrun --nproc_per_node 4 -m wan_core train --model ... --latents cache/ --out runs/cats --mode full

--model: any layout `wan_core.load_dit` reads (official folder, diffusers folder, ComfyUI single
file, fp8 files). --latents: a cache folder written by `wan_core.latent_cache.build_latent_cache`
(its index.json and safetensors files). Every `TrainConfig` field is a flag (`--sigma-range 0.875 1`,
`--no-gradient-checkpointing`, ...); unset flags keep TrainConfig's defaults.

Written in --out (rank 0 only, each file atomically):
  * LoRA: `<name>.safetensors`, ComfyUI native keys (LoraLoaderModelOnly reads it as is);
  * full: `<name>/` in the official layout (config.json + diffusion_pytorch_model.safetensors), or
    with --full-format comfyui one `<name>.safetensors` in bf16 (ComfyUI's Load Diffusion Model);
  * `train_state.pt`: the resumable state. Running the same command again continues from it (a
    larger --steps extends the run; settings that shape the run must stay the same, and so must the
    number of processes).
<name> defaults to the name of the --out folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..lora import metadata as meta
from .flow_matching import STATE_FILE, TrainConfig, train
from .settings import default_of, documented_fields

FULL_FORMATS = ("official", "comfyui")
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="the DiT to train: a file or folder load_dit reads")
    parser.add_argument("--latents", required=True, help="latent cache folder (build_latent_cache's index.json + files)")
    parser.add_argument("--out", required=True, help="output folder: the result and the resumable state")
    parser.add_argument("--name", help="output name (default: the --out folder's name)")
    parser.add_argument("--full-format", choices=FULL_FORMATS, default="official",
                        help="full mode: official folder, or one ComfyUI bf16 file (default: official)")
    parser.add_argument("--base-dtype", choices=("fp32", "bf16", "fp16"),
                        help="LoRA mode: dtype of the frozen base weights (default: bf16 on a GPU, fp32 on the CPU); "
                             "full mode always trains fp32 master weights")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when a GPU is present, else cpu")
    parser.add_argument("--log-every", type=int, default=10, help="print the loss every N steps (rank 0)")
    group = parser.add_argument_group("training settings (TrainConfig)")
    for f in documented_fields(TrainConfig):  # help, choices and defaults declared once, on the field
        default, meta = default_of(f), f.metadata
        flags = ["--" + f.name.replace("_", "-")] + (["--lr"] if f.name == "learning_rate" else [])
        help_text = f"{meta['help']} (default: {' '.join(map(str, default)) if isinstance(default, tuple) else default})"
        if isinstance(default, bool):
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(*flags, dest=f.name, type=type(default[0]), nargs=len(default), default=None,
                               metavar=("LO", "HI") if f.name == "sigma_range" else None, help=help_text)
        else:
            group.add_argument(*flags, dest=f.name, type=type(default), choices=meta["choices"], default=None,
                               help=help_text)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the flags that were given (the others keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in documented_fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    """Train as the flags say; 0 on success, 1 when training stopped on a non-finite loss, 2 on bad input."""
    from ..io.tensor_files import CheckpointError
    from .dataset import DatasetError
    from .distributed import world

    created_group = _init_process_group(args.device)
    rank, size = world()
    try:
        config = config_from_args(args)
        return _train(args, config, rank, size)
    except (ValueError, CheckpointError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _train(args, config: TrainConfig, rank: int, size: int) -> int:
    from ..formats.dit import load_dit
    from ..io.write import check_writable
    from .latent_cache import check_latents_fit_model, load_latent_cache

    log = print if rank == 0 else (lambda *a, **k: None)
    device = _device(args.device)
    out = Path(args.out)
    name = args.name or out.resolve().name
    dataset = load_latent_cache(args.latents)
    dtype = "fp32" if config.mode == "full" else args.base_dtype or ("bf16" if device.type == "cuda" else "fp32")
    model = load_dit(args.model, dtype=dtype, device=device)
    check_latents_fit_model(dataset, model.config)  # before any training: the cache was made for this model
    check_writable(out / (name if config.mode == "full" and args.full_format == "official" else f"{name}.safetensors"),
                   "result")
    log(f"{model.config.variant or 'Wan DiT'} from {args.model}: {config.mode} training on {len(dataset)} clips, "
        f"{size} process(es) × batch {config.batch_size} × accumulation {config.grad_accum}")
    if (out / STATE_FILE).is_file():
        log(f"resuming from the training state in {out}")

    started, first_step = time.perf_counter(), []

    def progress(step, total, metrics):
        first_step[:] = first_step or [step]  # a resumed run starts past 1
        if step % max(args.log_every, 1) == 0 or step == total:
            per_step = (time.perf_counter() - started) / (step - first_step[0] + 1)
            log(f"step {step}/{total}  loss {metrics.loss:.5f}  grad norm {metrics.grad_norm:.3g}  "
                f"lr {metrics.learning_rate:.3g}  ({per_step:.2f} s/step)", flush=True)

    result = train(model, dataset, config, state_dir=out, callback=progress)
    saved = save_result(model, result, config, out, name, args.full_format, source=args.model)
    if size > 1:
        torch.distributed.barrier()  # every rank returns once the result is on disk
    if result.stopped:
        log(f"stopped: {result.stopped}", file=sys.stderr)
    log(f"{result.steps_done} steps; wrote {saved} and the resumable state {out / STATE_FILE}")
    return 1 if result.stopped else 0


def save_result(model, result, config: TrainConfig, out: Path, name: str, full_format: str = "official",
                *, source: str = "") -> Path:
    """Write the trained LoRA or model from rank 0 (every rank must call it: a full model is gathered)."""
    from .distributed import full_model_state_dict, world

    rank, _ = world()
    metadata = {meta.VARIANT: model.config.variant or "", meta.BASE_MODEL: Path(source).name,
                meta.STEPS: result.steps_done, meta.TRAIN_CONFIG: asdict(config)}
    if config.mode == "lora":
        from ..lora.adapters import save_lora

        path = out / f"{name}.safetensors"
        return save_lora(path, result.network, metadata) if rank == 0 else path
    state = full_model_state_dict(model)  # collective: gathered on every rank
    if rank != 0:
        return out / (name if full_format == "official" else f"{name}.safetensors")
    if full_format == "official":
        from ..formats.dit import save_official

        return save_official(state, model.config, out / name)
    from ..formats.dit import comfyui_state_dict
    from ..io.write import save_safetensors

    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return save_safetensors(comfyui_state_dict(state, dtype=torch.bfloat16), out / f"{name}.safetensors", text)


def _device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _init_process_group(requested_device: str | None) -> bool:
    """Under torchrun (WORLD_SIZE > 1) start the process group unless the caller already did; True
    when this call started it (and must end it)."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    device = _device(requested_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m wan_core train", description=__doc__.split("\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
