"""Trainable LoRA adapters for the Wan DiT, and their file (loading other formats: `keys`, merging: `merge`).

Training side: `add_lora(model, ...)` attaches low-rank adapters to chosen Linear layers through
forward hooks, so the model's own `state_dict()` keeps exactly its official keys. `save_lora` writes
them in ComfyUI's native keys (`diffusion_model.<module>.lora_up/lora_down.weight` + `.alpha`), which
ComfyUI's LoraLoaderModelOnly reads as is (docs/formats.md §10).
"""
from __future__ import annotations

import json
import math
from fnmatch import fnmatchcase
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.tensor_files import SafetensorsFile, is_safetensors
from ..io.write import save_safetensors
from ..models.dit import WanDiT
from .keys import NATIVE_PREFIX, parse_lora
from .merge import add_to_parameter
from .metadata import ALPHA, FORMAT_VERSION, LORA_FORMAT, RANK

# --------------------------------------------------------------------------------------------
# Trainable adapters
# --------------------------------------------------------------------------------------------

_SELF_ATTENTION = tuple(f"blocks.*.self_attn.{p}" for p in ("q", "k", "v", "o"))
_CROSS_ATTENTION = tuple(f"blocks.*.cross_attn.{p}" for p in ("q", "k", "v", "o", "k_img", "v_img"))
_FFN = ("blocks.*.ffn.0", "blocks.*.ffn.2")
# Presets may name modules a variant lacks (k_img/v_img exist only in Wan2.1 I2V/FLF2V).
LORA_TARGET_PRESETS = {
    "attention": _SELF_ATTENTION + _CROSS_ATTENTION,
    "attention+ffn": _SELF_ATTENTION + _CROSS_ATTENTION + _FFN,
    "self_attention": _SELF_ATTENTION,
    "cross_attention": _CROSS_ATTENTION,
    "ffn": _FFN,
}


def resolve_targets(model: nn.Module, targets: str) -> list[str]:
    """Module paths of the Linear layers `targets` names: a preset, or comma-separated glob patterns
    (fnmatch: `*` matches any characters, dots included)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    preset = LORA_TARGET_PRESETS.get(targets.strip())
    patterns = preset or tuple(p.strip() for p in targets.split(",") if p.strip())
    if not patterns:
        raise ValueError(f"LoRA targets: expected a preset {sorted(LORA_TARGET_PRESETS)} or glob patterns, found {targets!r}")
    chosen = [name for name in linears if any(fnmatchcase(name, p) for p in patterns)]
    unmatched = [] if preset else [p for p in patterns if not any(fnmatchcase(n, p) for n in linears)]
    if unmatched or not chosen:
        raise ValueError(
            f"LoRA targets {targets!r}: {'pattern(s) ' + str(unmatched) if unmatched else 'nothing'} matched no "
            f"Linear layer. Presets: {sorted(LORA_TARGET_PRESETS)}. Linear layers of this model: "
            f"{_describe_linears(linears)}"
        )
    return chosen


def _describe_linears(linears: list[str]) -> str:
    blocks = sorted({int(n.split(".")[1]) for n in linears if n.startswith("blocks.")})
    in_block0 = [n for n in linears if n.startswith("blocks.0.")]
    others = [n for n in linears if not n.startswith("blocks.")]
    text = ", ".join(in_block0)
    if blocks:
        text += f" (the same in blocks 0..{blocks[-1]})"
    return text + ("; outside the blocks: " + ", ".join(others) if others else "")


class LoRAAdapter(nn.Module):
    """scale · up(down(dropout(x))) with fp32 master weights; `up` starts at zero so the adapted
    model starts equal to the base model."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator, device=None):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        # kaiming-uniform with a = sqrt(5) (nn.Linear's default init), from the network's own generator
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.to(device)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # without autocast: compute in the adapter's fp32; under autocast F.linear casts by itself, and an
        # fp32 copy of x here would only be cast back (and kept for backward: measured +30% step memory)
        h = x if torch.is_autocast_enabled(x.device.type) else x.to(self.down.dtype)
        h = self.dropout(h)
        return F.linear(F.linear(h, self.down), self.up) * self.scale


class _AdapterHook:
    """Forward hook adding an adapter's output to its module's output (kept as a class so a second
    network on the same module can be detected)."""

    def __init__(self, adapter: LoRAAdapter):
        self.adapter = adapter

    def __call__(self, module, args, output):
        return output + self.adapter(args[0]).to(output.dtype)


def _safe_key(path: str) -> str:
    return path.replace(".", "__")  # ModuleDict keys cannot contain dots; module paths contain no "__"


class LoRANetwork(nn.Module):
    """The adapters of one LoRA, attached to a model's Linear layers by forward hooks.

    Its own parameters are only the adapters (`adapters.<path with __>.down/up`); the model is not a
    submodule. `train()` / `eval()` on the network switch the adapter dropout. Not callable itself:
    run the model.
    """

    def __init__(self, model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float, seed: int):
        super().__init__()
        self.__dict__["model"] = model  # a plain reference: registering it would add the base weights
        self.rank, self.alpha, self.targets = rank, float(alpha), list(targets)
        gen = torch.Generator().manual_seed(seed)
        self.adapters = nn.ModuleDict()
        for path in self.targets:
            layer = model.get_submodule(path)
            if any(isinstance(h, _AdapterHook) for h in layer._forward_hooks.values()):
                raise ValueError(f"{path} already carries a LoRA adapter: call .remove() on the other network first")
            self.adapters[_safe_key(path)] = LoRAAdapter(layer.in_features, layer.out_features, rank, alpha,
                                                         dropout, gen, device=layer.weight.device)
        self._handles = [model.get_submodule(p).register_forward_hook(_AdapterHook(self.adapter(p))) for p in self.targets]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def adapter(self, path: str) -> LoRAAdapter:
        return self.adapters[_safe_key(path)]

    def remove(self) -> None:
        """Detach the hooks (the model computes without the adapters again). Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def merge_into_model(self, strength: float = 1.0) -> None:
        """Add strength · scale · up @ down into the base weights, then detach the hooks."""
        for path in self.targets:
            a = self.adapter(path)
            delta = (a.up.float() @ a.down.float()) * (strength * self.scale)
            add_to_parameter(self.model, path + ".weight", delta)
        self.remove()

    def comfy_state_dict(self, dtype: torch.dtype = torch.float32) -> dict:
        """ComfyUI's native LoRA keys: diffusion_model.<path>.lora_down.weight [r, in],
        .lora_up.weight [out, r], .alpha (fp32 scalar)."""
        out = {}
        for path in self.targets:
            a, base = self.adapter(path), NATIVE_PREFIX + path
            # copies: a snapshot that later training steps do not change
            out[base + ".lora_down.weight"] = a.down.detach().to("cpu", dtype, copy=True).contiguous()
            out[base + ".lora_up.weight"] = a.up.detach().to("cpu", dtype, copy=True).contiguous()
            out[base + ".alpha"] = torch.tensor(self.alpha, dtype=torch.float32)
        return out

    @torch.no_grad()
    def load_comfy_state_dict(self, state_dict) -> None:
        """Load adapter weights saved by `comfy_state_dict` / `save_lora` (resuming training). Any format
        `parse_lora` reads is accepted; the targets, rank and alpha must be this network's."""
        parsed = parse_lora(state_dict)
        problems = [f"{k}: {why}" for k, why in parsed.unrecognized.items()]
        missing = [p for p in self.targets if p not in parsed.entries or parsed.entries[p].up is None]
        extra = sorted(set(parsed.entries) - set(self.targets))
        if missing or extra or problems:
            raise ValueError(f"LoRA state dict does not fit this network: missing {missing[:6]}, not targeted "
                             f"{extra[:6]}, unreadable {problems[:6]} (network targets: {len(self.targets)} modules)")
        for path in self.targets:
            entry, a = parsed.entries[path], self.adapter(path)
            alpha = entry.rank if entry.alpha is None else entry.alpha
            same_alpha = math.isclose(alpha, self.alpha, rel_tol=1e-6)
            if entry.up.shape != a.up.shape or entry.down.shape != a.down.shape or not same_alpha:
                raise ValueError(f"{path}: expected up {tuple(a.up.shape)}, down {tuple(a.down.shape)}, alpha "
                                 f"{self.alpha}; found up {tuple(entry.up.shape)}, down {tuple(entry.down.shape)}, "
                                 f"alpha {alpha}")
            a.up.copy_(entry.up)
            a.down.copy_(entry.down)


def add_lora(model: WanDiT, rank: int = 16, alpha: float = 16.0, dropout: float = 0.0,
             targets: str = "attention+ffn", seed: int = 0) -> LoRANetwork:
    """Attach trainable LoRA adapters to `model` (frozen: requires_grad False on its own weights).

    targets: a key of LORA_TARGET_PRESETS or comma-separated glob patterns over module paths, e.g.
    "blocks.*.self_attn.q, blocks.*.ffn.0". down is kaiming-uniform from `seed`, up is zero.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, found {rank!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, found {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), found {dropout!r}")
    paths = resolve_targets(model, targets)
    model.requires_grad_(False)
    return LoRANetwork(model, paths, rank, alpha, dropout, seed)


def save_lora(path, lora, metadata: dict | None = None) -> Path:
    """Write a LoRANetwork (native ComfyUI keys) or a LoRA state dict to a safetensors file, atomically.

    Metadata values are stored as strings (JSON for non-strings). A network adds wanflow.rank,
    wanflow.alpha and the kohya-style ss_network_dim / ss_network_alpha; wanflow.format_version always.
    """
    defaults = {FORMAT_VERSION: LORA_FORMAT}
    if isinstance(lora, LoRANetwork):
        tensors = lora.comfy_state_dict()
        defaults.update({RANK: str(lora.rank), ALPHA: str(lora.alpha),
                         "ss_network_dim": str(lora.rank), "ss_network_alpha": str(lora.alpha),
                         "ss_network_module": "networks.lora"})
    elif isinstance(lora, dict) and lora and all(isinstance(k, str) and torch.is_tensor(v) for k, v in lora.items()):
        tensors = lora
    else:
        raise TypeError(f"save_lora: expected a LoRANetwork or a non-empty {{name: tensor}} dict, found {type(lora).__name__}")
    text = {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    return save_safetensors(tensors, path, metadata={**defaults, **text})


def read_lora_metadata(path) -> dict:
    """The string metadata of a safetensors LoRA file ({} for other file types)."""
    if not is_safetensors(path):
        return {}
    return dict(SafetensorsFile(path).metadata)


# --------------------------------------------------------------------------------------------
# Reading LoRA files of any common format
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Matching a LoRA against a model, deltas, merging
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Several LoRA lists on one shared module (restorable)
# --------------------------------------------------------------------------------------------


