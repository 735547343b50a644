"""Multi-process training: 2 CPU ranks (gloo, FSDP2) train like 1 rank with the same global batch;
the `python -m wan_core train` command line, alone and under 2 ranks."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from wan_core.__main__ import main as wan_core_main
from wan_core.formats.dit import load_dit, save_official
from wan_core.io.write import save_safetensors
from wan_core.lora.keys import parse_lora
from wan_core.testing.dit import random_dit
from wan_core.training.flow_matching import STATE_FILE, TrainConfig, Trainer, train
from wan_core.training.latent_cache import CacheEntry, write_index

LATENT = (16, 2, 4, 4)
GLOBAL_BATCH = 2
LR = 1e-3
# fp32 throughout; 2 ranks differ from 1 only in summation order (a batch of 2 vs 2 × 1 averaged by a
# collective), so the first gradients agree to float roundoff (measured: 3e-8 absolute, gradients up
# to 0.09). Adam then divides every gradient element by its own RMS: for the few elements whose
# gradient is itself ~1e-7 (492 of 1.8M here) that roundoff becomes a few percent of one step's
# update lr (measured after 4 steps: 4e-5 with lr 1e-3). Weights are compared at 5% of lr.
GRAD_TOL = 1e-7
WEIGHT_TOL = 0.05 * LR


class ToyLatents:
    """The trainer's dataset protocol over random latents (one bucket)."""

    def __init__(self, n=6, seed=1, text_dim=64):
        g = torch.Generator().manual_seed(seed)
        self.items = [{"latent": torch.randn(*LATENT, generator=g), "context": torch.randn(3 + i % 3, text_dim, generator=g)}
                      for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def bucket_of(self, i):
        return LATENT


def small_model():
    return random_dit("t2v", 0, text_len=8)


def settings(mode: str, world: int, **kw) -> TrainConfig:
    """The same global batch of 2 for any number of ranks."""
    base = dict(mode=mode, steps=4, learning_rate=LR, batch_size=GLOBAL_BATCH // world, precision="fp32",
                gradient_checkpointing=True, sigma_sampling="uniform", lr_schedule="constant", lora_rank=4)
    base.update(kw)
    return TrainConfig(**base)


def first_gradients(mode: str, world: int) -> dict:
    """The trainable parameters' full gradients for the first global batch, as the optimizer sees them."""
    from wan_core.training.distributed import full_tensor, sync_gradients

    model = small_model()
    trainer = Trainer(model, ToyLatents(), settings(mode, world))
    model.train()
    trainer.loss(trainer.micro_batch()).backward()
    sync_gradients(trainer)
    return {name: full_tensor(p.grad) for name, p in trainer.named_params}


def run_scenarios(world: int, folder: Path) -> dict:
    """Every run the test compares, on this rank (world 1: in the test process)."""
    from wan_core.training.distributed import full_model_state_dict

    out = {"grads": {mode: first_gradients(mode, world) for mode in ("full", "lora")}}
    # full fine-tune with an EMA, stopped after 1 step and resumed to 3: sharded parameters and
    # the gathered / re-sharded parameters, optimizer moments and EMA of a resume
    state_dir = folder / f"full-state-{world}"
    model = small_model()
    train(model, ToyLatents(), settings("full", world, steps=1, ema_decay=0.5), state_dir=state_dir)
    model = small_model()
    result = train(model, ToyLatents(), settings("full", world, steps=3, ema_decay=0.5), state_dir=state_dir)
    out["full"] = {"weights": full_model_state_dict(model), "losses": torch.tensor(result.losses)}
    # LoRA with gradient accumulation: the adapters' gradients are synchronised after both micro-steps
    model = small_model()
    result = train(model, ToyLatents(), settings("lora", world, grad_accum=2, steps=3))
    out["lora"] = {"weights": result.network.comfy_state_dict(), "losses": torch.tensor(result.losses)}
    return out


def _rank_main(rank: int, world: int, port: int, folder: str, cli_args: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=90))
    try:
        results = run_scenarios(world, Path(folder))
        assert wan_core_main(cli_args) == 0
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, *args):
    """Start _rank_main on `world` processes; wait for them with `wait`."""
    return mp.spawn(_rank_main, args=(world, _free_port(), *args), nprocs=world, join=False)


def wait(context, timeout: float = 150.0) -> None:
    """Join the ranks; a hang fails the test instead of blocking it (a rank's error is re-raised)."""
    deadline = time.monotonic() + timeout
    while not context.join(timeout=0.2):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the ranks did not finish within {timeout} s")


# ---- tiny inputs for the command line ---------------------------------------------------------

def write_model(folder: Path) -> Path:
    model = small_model()
    return save_official(model.state_dict(), model.config, folder / "base")


def write_cache(folder: Path, dataset: ToyLatents) -> Path:
    """A latent cache as wan_core.latent_cache writes it: index.json + one latent and one text file per clip."""
    entries = []
    for i, item in enumerate(dataset.items):
        latent, text = f"latent-{i}.safetensors", f"text-{i}.safetensors"
        save_safetensors({"latent": item["latent"]}, folder / latent)
        save_safetensors({"context": item["context"]}, folder / text)
        entries.append(CacheEntry(latent, text, (32, 32, 5), f"clip {i}", f"clip{i}.mp4"))
    write_index(folder, entries, [])
    return folder


def cli(model: Path, cache: Path, out: Path, *extra) -> list:
    return ["train", "--model", str(model), "--latents", str(cache), "--out", str(out), "--learning-rate", str(LR),
            "--precision", "fp32", "--sigma-sampling", "uniform", "--lr-schedule", "constant", "--lora-rank", "4",
            "--log-every", "1", *extra]


def assert_same(actual: dict, expected: dict, tol: float, what: str) -> None:
    assert set(actual) == set(expected), what
    worst = max((actual[k].float() - expected[k].float()).abs().max().item() for k in expected)
    assert worst <= tol, f"{what}: max abs difference {worst:.3e} > {tol}"


# ---- tests --------------------------------------------------------------------------------------

def test_two_ranks_train_like_one_rank_with_the_same_global_batch(tmp_path):
    model_dir, cache = write_model(tmp_path), write_cache(tmp_path / "cache", ToyLatents())
    cli_full = cli(model_dir, cache, tmp_path / "cli-2", "--mode", "full", "--steps", "2",
                   "--batch-size", "1", "--name", "tuned")
    ranks = spawn(2, str(tmp_path), cli_full)
    # meanwhile, the same runs and command line in this process, with the global batch in one rank
    single = run_scenarios(1, tmp_path)
    assert wan_core_main(cli(model_dir, cache, tmp_path / "cli-1", "--mode", "full", "--steps", "2",
                             "--batch-size", "2", "--name", "tuned")) == 0
    wait(ranks)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for mode in ("full", "lora"):
        assert_same(ranks[0]["grads"][mode], single["grads"][mode], GRAD_TOL, f"{mode}: first gradients, 2 ranks vs 1")
        assert max(g.abs().max().item() for g in single["grads"][mode].values()) > 1e-2  # not vacuous
        # the replicas (LoRA) and the gathered shards (full) are the same on both ranks
        assert_same(ranks[1][mode]["weights"], ranks[0][mode]["weights"], 0.0, f"{mode}: rank 1 vs rank 0")
        assert_same(ranks[0][mode]["weights"], single[mode]["weights"], WEIGHT_TOL, f"{mode}: 2 ranks vs 1 rank")
        torch.testing.assert_close(ranks[0][mode]["losses"], single[mode]["losses"], rtol=1e-6, atol=1e-7)
        # training moved the weights: the comparison is not between two untouched models
        start = small_model().state_dict() if mode == "full" else None
        if start is not None:
            assert max((single[mode]["weights"][k] - start[k]).abs().max().item() for k in start) > 1e-3
        else:
            assert max(t.abs().max().item() for k, t in single[mode]["weights"].items() if "lora_up" in k) > 1e-4
    assert len(single["full"]["losses"]) == 3 and len(single["lora"]["losses"]) == 3

    # the command line under 2 ranks wrote (from rank 0) what one process writes with the same global batch
    two, one = load_dit(tmp_path / "cli-2" / "tuned"), load_dit(tmp_path / "cli-1" / "tuned")
    assert_same(two.state_dict(), one.state_dict(), WEIGHT_TOL, "command line, 2 ranks vs 1")

    # a state saved by 2 processes is not resumed by 1 (the global batch would change)
    with pytest.raises(ValueError, match="saved by 2 process"):
        train(small_model(), ToyLatents(), settings("full", 2, ema_decay=0.5), state_dir=tmp_path / "full-state-2")


def test_command_line_trains_a_lora_and_resumes(tmp_path, capsys):
    model_dir, cache = write_model(tmp_path), write_cache(tmp_path / "cache", ToyLatents())
    out = tmp_path / "run"
    assert wan_core_main(cli(model_dir, cache, out, "--mode", "lora", "--steps", "2", "--batch-size", "2")) == 0
    first = load_file(out / "run.safetensors")
    assert (out / STATE_FILE).is_file()
    # native ComfyUI keys, readable by the LoRA parser, equal to training in-process
    assert all(k.startswith("diffusion_model.blocks.") for k in first)
    assert parse_lora(out / "run.safetensors").entries
    model = small_model()
    direct = train(model, ToyLatents(), settings("lora", 1, steps=2, gradient_checkpointing=True))
    assert_same(first, direct.network.comfy_state_dict(), 1e-6, "command line vs train()")
    assert "step 2/2" in capsys.readouterr().out

    # the same command with more steps continues from the saved state, like an uninterrupted run
    assert wan_core_main(cli(model_dir, cache, out, "--mode", "lora", "--steps", "3", "--batch-size", "2")) == 0
    assert "resuming" in capsys.readouterr().out
    model = small_model()
    direct = train(model, ToyLatents(), settings("lora", 1, steps=3))
    assert_same(load_file(out / "run.safetensors"), direct.network.comfy_state_dict(), 1e-6, "resumed vs 3 steps")
    metadata = json.loads(parse_lora(out / "run.safetensors").metadata["wanflow.train_config"])
    assert metadata["steps"] == 3 and metadata["mode"] == "lora"

    # settings that shape the run cannot change on resume: a clear error, exit code 2
    assert wan_core_main(cli(model_dir, cache, out, "--mode", "lora", "--steps", "4", "--batch-size", "1")) == 2
    assert "other settings" in capsys.readouterr().err


def test_command_line_full_fine_tune_as_one_comfyui_file(tmp_path):
    model_dir, cache = write_model(tmp_path), write_cache(tmp_path / "cache", ToyLatents())
    out = tmp_path / "full"
    assert wan_core_main(cli(model_dir, cache, out, "--mode", "full", "--steps", "1", "--batch-size", "2",
                             "--full-format", "comfyui", "--name", "tuned")) == 0
    tuned = load_dit(out / "tuned.safetensors", config={"text_len": 8})
    model = small_model()
    train(model, ToyLatents(), settings("full", 1, steps=1))
    assert tuned.patch_embedding.weight.dtype == torch.bfloat16
    rounded = {k: v.bfloat16() for k, v in model.state_dict().items()}  # same run, then rounded once
    assert_same(tuned.state_dict(), rounded, 0.0, "bf16 file vs training in-process")


def test_bad_command_line_input_is_named(tmp_path, capsys):
    model_dir = write_model(tmp_path)
    assert wan_core_main(cli(model_dir, tmp_path / "nowhere", tmp_path / "out", "--steps", "1")) == 2
    assert "index.json" in capsys.readouterr().err
    cache = write_cache(tmp_path / "cache", ToyLatents())
    assert wan_core_main(cli(model_dir, cache, tmp_path / "out", "--sigma-range", "0.9", "0.2")) == 2
    assert "sigma_range" in capsys.readouterr().err
