"""Training across processes (torchrun) with torch.distributed.

The trainer (`wan_core.training`) draws the same global batch, σ and noise on every rank and each
rank computes its slice; this module makes the gradients the global batch's gradients. Single
process: everything here is a no-op pass-through.
"""
from __future__ import annotations

import torch


def world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_for_training(model, network, config):
    raise NotImplementedError("multi-process training is not wired yet")


def full_named_parameters(trainer):
    """(name, full tensor) of every trainable parameter, gathered when sharded."""
    return list(trainer.named_params)


def optimizer_state(trainer) -> dict:
    return trainer.optimizer.state_dict()


def load_optimizer_state(trainer, state: dict) -> None:
    trainer.optimizer.load_state_dict(state)
