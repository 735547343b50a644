"""Training across processes (torchrun) with torch.distributed and FSDP2.

Launch (one process per GPU; on CPU the gloo backend is used):

    torchrun --nproc_per_node N -m wan_core train --model DIT --latents CACHE --out DIR ...

The trainer (`wan_core.training`) draws the same global batch, σ and noise on every rank and each
rank computes its slice of `batch_size` samples; this module makes the update the one of the global
batch, so N ranks × batch_size b train exactly like 1 rank × batch_size N·b:

* sharding: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every transformer block, then on the
  root for the embeddings and head. FSDP2 rather than FSDP1: its parameters stay ordinary
  per-parameter DTensors (names, optimizer and clipping work unchanged), it works on CPU with gloo,
  and it composes with the DiT's per-block gradient checkpointing (the checkpointed block's
  recomputation re-gathers its weights through the same hooks). The whole model is sharded in both
  modes, the frozen base included (fp8-stored weights too), so no rank holds a full copy;
* full fine-tune: FSDP reduce-scatters the gradients as the mean over ranks; the optimizer,
  clipping and EMA act on the local shards;
* LoRA: the adapters live in their own `LoRANetwork`, outside the model FSDP manages, so each rank
  keeps a full replica and `sync_gradients` averages their gradients with one all-reduce per
  optimizer step (after all accumulation micro-steps, like DDP's `no_sync`); identical initial
  weights and identical updates keep the replicas equal.

Saving: `full_named_parameters`, `full_tensor` and `full_model_state_dict` gather sharded tensors
(collectives: every rank must call them, in the same order) into full CPU tensors. The optimizer
state is saved gathered too, with the number of processes that wrote it: a resume must use the same
number (the global batch, and so the data position, depends on it) and says so clearly otherwise.

Single process: everything here is a pass-through.
"""
from __future__ import annotations

import torch


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


# --------------------------------------------------------------------------------------------
# Wrapping
# --------------------------------------------------------------------------------------------


def wrap_for_training(model, network, config):
    """Shard `model` with FSDP2 in place (blocks, then root) and return the module to run forward.

    Call it after the trainable parameters have requires_grad set and before the optimizer is
    built: sharding replaces the model's parameters by DTensor parameters. `network` (LoRA) is left
    replicated; its gradients are averaged by `sync_gradients`.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _, size = world()
    if size == 1:
        return model
    if not hasattr(model, "blocks"):
        raise TypeError(f"wrap_for_training expects a WanDiT (with .blocks), found {type(model).__name__}")
    device = next(model.parameters()).device
    if device.type == "meta":
        raise ValueError("the model is on the meta device: load its weights before training")
    mesh = init_device_mesh(device.type, (size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def sync_gradients(trainer) -> None:
    """Average the LoRA adapters' gradients over ranks (FSDP already does it for a full fine-tune)."""
    if trainer.network is None:
        return
    average_gradients([p for _, p in trainer.named_params])


def average_gradients(params) -> None:
    """Average the gradients of replicated parameters over ranks, in place (no-op on one rank).

    One all-reduce over all gradients flattened together. A parameter without a gradient counts as
    zero, so every rank sends the same layout.
    """
    _, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_kind: dict = {}
    for p in params:
        by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# --------------------------------------------------------------------------------------------
# Full tensors for saving, shards for loading
# --------------------------------------------------------------------------------------------


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) tensor gathered into a full CPU tensor (collective); others unchanged."""
    if _is_dtensor(t):
        return t.detach().full_tensor().cpu()
    return t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut into this rank's shard the way `like` is sharded (collective when `like` is a
    DTensor), with like's dtype and device; a plain copy target otherwise."""
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"expected a tensor of shape {tuple(like.shape)}, found {tuple(full.shape)}")
    if _is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        local_device = like.to_local().device
        # every rank holds the same full tensor (read from the same file): cut locally, no scatter
        return distribute_tensor(full.to(local_device, like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)
    return full.to(like.device, like.dtype)


def full_named_parameters(trainer) -> list:
    """(name, full tensor) of every trainable parameter, gathered to the CPU when sharded (every
    rank must call it); unsharded parameters are returned as they are."""
    return [(name, full_tensor(p)) for name, p in trainer.named_params]


def load_full_parameters(trainer, tensors: dict) -> None:
    """Copy full tensors {name: tensor} into the (possibly sharded) trainable parameters."""
    with torch.no_grad():
        for name, p in trainer.named_params:
            p.copy_(shard_like(tensors[name], p))


def full_model_state_dict(model) -> dict:
    """The model's state dict with every sharded tensor gathered to the CPU (every rank must call it)."""
    return {name: full_tensor(t) for name, t in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Optimizer state
# --------------------------------------------------------------------------------------------


def optimizer_state(trainer) -> dict:
    """The optimizer's state with sharded moments gathered (every rank must call it), and the
    number of processes, which a resume must match."""
    state = trainer.optimizer.state_dict()
    gathered = {index: {key: full_tensor(value) for key, value in entry.items()}
                for index, entry in sorted(state["state"].items())}
    return {"world_size": world()[1], "state": gathered, "param_groups": state["param_groups"]}


def load_optimizer_state(trainer, saved: dict) -> None:
    """Load what `optimizer_state` saved, re-sharding the moments like their parameters."""
    size = world()[1]
    if not isinstance(saved, dict) or "world_size" not in saved:
        raise ValueError("the saved optimizer state has no process count: it was written by another "
                         "version; start a new run (another output folder)")
    if saved["world_size"] != size:
        raise ValueError(f"the training state was saved by {saved['world_size']} process(es), this run has "
                         f"{size}: resume with the same number of processes (the global batch is batch_size × "
                         "processes), or start a new run")
    params = [p for _, p in trainer.named_params]
    state = {}
    for index, entry in saved["state"].items():
        p = params[index]
        # moments have the parameter's shape and follow its sharding; "step" is a scalar
        state[index] = {key: shard_like(value, p) if torch.is_tensor(value) and value.shape == p.shape else value
                        for key, value in entry.items()}
    trainer.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
