"""SRPO under torch.distributed (2 CPU ranks, gloo): every rank rolls out from the same ε, ranks take
different prompts, and the averaged gradients keep the LoRA replicas identical."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import _free_port, wait

from wan_core.demo.codec import DemoCodec
from wan_core.demo.text import DemoTextEncoder
from wan_core.rewards.base import ColourReward
from wan_core.rewards.srpo import HeldOut, Prompt, Rollout, SRPOConfig, SRPOTrainer
from wan_core.testing.dit import random_dit

TEXTS = ("a red square", "a blue square")


def _setup():
    words = DemoTextEncoder(32)
    prompts = [Prompt(t, words.encode([t])[0]) for t in TEXTS]
    config = SRPOConfig(steps=2, width=32, height=32, rollout_steps=2, guidance=1.0, precision="fp32", lora_rank=4,
                        grid_points=100, learning_rate=1e-2, eval_every=0)
    rollout = Rollout(random_dit("t2v", 0, text_len=8, text_dim=32), DemoCodec())
    heldout = HeldOut(prompts[:1], rollout, ColourReward(), config)
    return SRPOTrainer(rollout, ColourReward(), prompts, config, heldout)


def _rank_main(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=90))
    try:
        trainer = _setup()
        noises, prompts = [], []
        original = trainer.rollout.sample
        trainer.rollout.sample = lambda p, n, c: (noises.append(n.clone()), prompts.append(p.text), original(p, n, c))[2]
        for _ in range(2):
            trainer.train_step()
        torch.save({"noises": noises, "prompts": prompts, "weights": trainer.trainable_weights()},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_noise_and_keep_identical_replicas(tmp_path):
    ranks = mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    wait(ranks)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for a, b in zip(r0["noises"], r1["noises"]):
        assert torch.equal(a, b)  # one ε per step for every rank
    assert r0["prompts"][0] != r1["prompts"][0]  # but each rank its own prompt
    assert set(r0["prompts"] + r1["prompts"]) == set(TEXTS)
    ups = [k for k in r0["weights"] if "up" in k]
    assert max(float(r0["weights"][k].abs().max()) for k in ups) > 0  # trained
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k  # averaged gradients: identical replicas
    # one rank alone (its own prompt only) ends elsewhere: the average used the other rank's gradient
    single = _setup()
    for _ in range(2):
        single.train_step()
    assert any(not torch.allclose(single.trainable_weights()[k], r0["weights"][k]) for k in ups)
