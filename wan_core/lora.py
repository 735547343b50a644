"""LoRA for the Wan DiT: trainable adapters, and loading LoRA files of every common format.

Training side: `add_lora(model, ...)` attaches low-rank adapters to chosen Linear layers through
forward hooks, so the model's own `state_dict()` keeps exactly its official keys. `save_lora` writes
them in ComfyUI's native keys (`diffusion_model.<module>.lora_up/lora_down.weight` + `.alpha`), which
ComfyUI's LoraLoaderModelOnly reads as is (../shared/spec/comfyui.md §10).

Loading side: `parse_lora(file or state dict)` normalizes the key styles found in the wild to the
official module paths:
  * ComfyUI / diffusion-pipe: `diffusion_model.<path>` + `lora_up/lora_down`, `lora_A/lora_B` (with or
    without `.weight`, with `.default`), `lora.up/lora.down`, `_lora.up/down`, `lora_linear_layer.up/down`;
  * sd-scripts / musubi-tuner: `lora_unet_<path with _>` (Wan-Fun: `lora_unet__...`); the underscores
    are mapped back against the module names of the Wan DiT itself, never by blind replacement;
  * diffusers / PEFT: `transformer.<diffusers path>` (attn1/attn2, to_q..to_out.0, add_k_proj, ffn.net...);
  * DiffSynth-Studio: bare official paths, maybe prefixed `pipe.dit.` / `model.`, with `lora_A.default`;
  * `.alpha` as a float or int64 scalar (absent: scale 1, as ComfyUI does), `.diff` / `.diff_b` deltas.
`check_lora` matches a parsed LoRA against a model (shapes, I2V-only modules, another model width),
`lora_deltas` gives the weight deltas without touching the model, `apply_lora` merges them in place:
W += strength · (alpha / rank) · up @ down, computed in fp32 and rounded once to the weight's dtype.
fp8 weights (low-memory mode, optionally with a `weight_scale`) are dequantized, updated and stored
in bf16 with the scale cleared: re-quantizing the sum would lose most of a small LoRA delta.

Conv weights (patch_embedding) take LoRAs whose down is [r, in, k...] or flattened [r, in·k...].

`set_applied_loras(model, [(parsed, strength), ...])` makes a model's weights equal to its original
weights plus those LoRAs, keeping CPU backups of what it changed (one copy of each changed weight) so
that another list, or none, can be set later: one module shared by users wanting different LoRAs.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dit_checkpoint import FP8_DTYPES, diffusers_to_official_name
from .dit_export import save_safetensors
from .model import WanConfig, WanDiT
from .tensor_files import SafetensorsFile, open_tensor_file

FORMAT_VERSION = "1"
NATIVE_PREFIX = "diffusion_model."

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
    defaults = {"wanflow.format_version": FORMAT_VERSION}
    if isinstance(lora, LoRANetwork):
        tensors = lora.comfy_state_dict()
        defaults.update({"wanflow.rank": str(lora.rank), "wanflow.alpha": str(lora.alpha),
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
    if Path(path).suffix.lower() not in (".safetensors", ".sft"):
        return {}
    return dict(SafetensorsFile(path).metadata)


# --------------------------------------------------------------------------------------------
# Reading LoRA files of any common format
# --------------------------------------------------------------------------------------------

# (file key suffix, part): the first suffix a key ends with decides
_PART_SUFFIXES = (
    (".lora_up.weight", "up"), (".lora_down.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".lora_B.default", "up"), (".lora_A.default", "down"),
    (".lora_B", "up"), (".lora_A", "down"), (".lora_up", "up"), (".lora_down", "down"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
)
_UNSUPPORTED_PARTS = (
    ("lora_mid", "LoCon mid weight"), ("dora_scale", "DoRA"), ("hada_", "LoHa"), ("lokr_", "LoKr"),
    ("oft_", "OFT"), (".w_norm", "norm weight"), (".b_norm", "norm bias"), (".set_weight", "weight replacement"),
    (".reshape_weight", "reshape"),
)
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoders.")
# wrappers in front of official or diffusers paths (stripped repeatedly: model.diffusion_model. ...)
_PATH_PREFIXES = ("diffusion_model.", "base_model.model.", "transformer.", "pipe.dit.", "dit.", "model.", "module.")
_IMAGE_BRANCH = re.compile(r"(^|\.)(k_img|v_img|norm_k_img|img_emb)(\.|$)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_DIFFUSERS_MARKER = re.compile(r"\.attn[12]\.|condition_embedder\.|\.ffn\.net\.|(^|\.)proj_out\.")
_KNOWN_WIDTHS = {1536: "Wan2.1 T2V 1.3B", 3072: "Wan2.2 TI2V 5B", 5120: "Wan 14B (2.1 or 2.2 A14B)"}


@dataclass
class LoraEntry:
    """What a LoRA holds for one module (or parameter) path. Tensors are as stored in the file."""

    up: torch.Tensor | None = None  # [out, r] (conv: [out, r, 1, ...])
    down: torch.Tensor | None = None  # [r, in] (conv: [r, in, k...])
    alpha: float | None = None  # None: scale 1 (ComfyUI's rule)
    diff: torch.Tensor | None = None  # full delta of the weight (or of the parameter itself)
    diff_b: torch.Tensor | None = None  # delta of the bias
    keys: dict = field(default_factory=dict)  # part -> the file key it came from

    @property
    def rank(self) -> int | None:
        return None if self.down is None else self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class ParsedLora:
    """A LoRA normalized to official Wan module paths."""

    entries: dict  # module or parameter path -> LoraEntry
    unrecognized: dict  # file key -> why it is not used
    metadata: dict
    source: str = "state dict"

    @property
    def name(self) -> str:
        return Path(self.source).name if self.source != "state dict" else self.source


@lru_cache(maxsize=1)
def _wan_names() -> tuple[frozenset, dict, dict]:
    """(every module/parameter path of block 0 and outside blocks, their underscore spellings -> path)
    read from the DiT itself, built on the meta device with every optional branch present."""
    cfg = WanConfig(model_type="flf2v", dim=256, num_heads=2, ffn_dim=64, num_layers=1, text_dim=64, in_dim=36,
                    image_branch=True, flf_pos_tokens=2)
    with torch.device("meta"):
        dit = WanDiT(cfg)
    names = {n for n, _ in dit.named_modules() if n} | {n for n, _ in dit.named_parameters()}
    block, top = {}, {}
    for name in names:
        m = _BLOCK.match(name)
        table, rest = (block, m.group(2)) if m else (top, name)
        flat = rest.replace(".", "_")
        assert table.get(flat, rest) == rest, f"ambiguous underscore name {flat}"  # never for Wan
        table[flat] = rest
    return frozenset(names), block, top


def is_wan_path(path: str) -> bool:
    names, _, _ = _wan_names()
    m = _BLOCK.match(path)
    return (f"blocks.0.{m.group(2)}" if m else path) in names


def _from_underscores(flat: str) -> str | None:
    """'blocks_0_self_attn_q' -> 'blocks.0.self_attn.q', by looking the name up among the DiT's own."""
    _, block, top = _wan_names()
    flat = flat.lstrip("_")  # Wan-Fun: lora_unet__blocks_...
    if flat.startswith("diffusion_model_"):
        flat = flat[len("diffusion_model_"):]
    m = re.match(r"^blocks_(\d+)_(.+)$", flat)
    if m:
        rest = block.get(m.group(2))
        return f"blocks.{m.group(1)}.{rest}" if rest else None
    return top.get(flat)


def official_path(base: str, diffusers_first: bool = False) -> str | None:
    """The official module (or parameter) path a LoRA base name addresses, or None.

    diffusers_first: read dotted names as diffusers names first (a file in diffusers style), which
    matters where both spellings exist with different meanings (diffusers' blocks.N.norm2 is the
    official norm3)."""
    if base.startswith("lora_unet_"):
        return _from_underscores(base[len("lora_unet_"):])
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PATH_PREFIXES:
            if base.startswith(prefix):
                base, stripped = base[len(prefix):], True
    converted = _from_diffusers(base)
    if diffusers_first and converted:
        return converted
    return base if is_wan_path(base) else converted


def _from_diffusers(name: str) -> str | None:
    # the renames work on parameter keys: try the name as a module path and as a parameter
    for key, suffix in ((name + ".weight", ".weight"), (name, "")):
        new = diffusers_to_official_name(key)
        if new != key and new.endswith(suffix):
            path = new[: len(new) - len(suffix)] if suffix else new
            if is_wan_path(path):
                return path
    return None


def _split_key(key: str) -> tuple[str | None, str | None]:
    for suffix, part in _PART_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], part
    return None, None


def _read_source(source) -> tuple[dict, dict, str]:
    if isinstance(source, dict):
        bad = [k for k, v in source.items() if not torch.is_tensor(v)]
        if bad:
            raise TypeError(f"LoRA state dict: expected tensors, found {type(source[bad[0]]).__name__} at {bad[0]!r}")
        return source, {}, "state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"LoRA source: expected a file path or a state dict, found {type(source).__name__}")
    f = open_tensor_file(source)  # .pth/.pt/.bin only through torch.load(weights_only=True)
    return {k: f.read(k) for k in f.keys()}, dict(f.metadata), str(source)


def parse_lora(source) -> ParsedLora:
    """Read a LoRA (path or state dict; a ParsedLora is returned as is) into official module paths."""
    if isinstance(source, ParsedLora):
        return source
    tensors, metadata, name = _read_source(source)
    diffusers_style = any(_DIFFUSERS_MARKER.search(k) for k in tensors)
    unrecognized, parts = {}, {}
    for key, tensor in tensors.items():
        why = _unsupported(key)
        base, part = _split_key(key) if why is None else (None, None)
        path = official_path(base, diffusers_style) if base is not None else None
        if why is None and base is None:
            why = "not a LoRA tensor name (expected lora_up/lora_down, lora_A/lora_B, alpha, diff or diff_b)"
        elif why is None and path is None:
            why = f"unknown module name {base!r}"
        elif why is None and part in parts.get(path, {}):
            why = f"duplicate: {parts[path][part][0]!r} already gives {part} of {path}"
        if why:
            unrecognized[key] = why
        else:
            parts.setdefault(path, {})[part] = (key, tensor)
    entries = {}
    for path, found in parts.items():
        entry, problem = _make_entry(found)
        if problem:
            unrecognized.update({key: problem for key, _ in found.values()})
        else:
            entries[path] = entry
    if not entries and not unrecognized:
        raise ValueError(f"{name}: the LoRA is empty (no tensors)")
    return ParsedLora(entries, unrecognized, metadata, name)


def _unsupported(key: str) -> str | None:
    if key.startswith(_TEXT_ENCODER_PREFIXES):
        return "text-encoder LoRA key (this loader adapts the diffusion model only)"
    for marker, what in _UNSUPPORTED_PARTS:
        if marker in key:
            return f"unsupported adapter part ({what})"
    return None


def _make_entry(found: dict) -> tuple[LoraEntry | None, str | None]:
    get = lambda part: found[part][1] if part in found else None  # noqa: E731
    entry = LoraEntry(up=get("up"), down=get("down"), diff=get("diff"), diff_b=get("diff_b"),
                      keys={part: key for part, (key, _) in found.items()})
    if (entry.up is None) != (entry.down is None):
        return None, f"{'lora_up' if entry.down is None else 'lora_down'} without its partner"
    if entry.up is not None:
        if entry.up.ndim < 2 or entry.down.ndim < 2 or entry.up.shape[1] != entry.down.shape[0]:
            return None, (f"up {tuple(entry.up.shape)} and down {tuple(entry.down.shape)} are not a rank-r pair "
                          "([out, r] and [r, in])")
    alpha = get("alpha")
    if alpha is not None:
        if entry.up is None:
            return None, "alpha without lora_up / lora_down"
        if alpha.numel() != 1:
            return None, f"alpha must be a scalar, found shape {tuple(alpha.shape)}"
        entry.alpha = float(alpha.reshape(()).item())  # float or int64 in files
    return entry, None


def to_comfy_state_dict(parsed: ParsedLora) -> dict:
    """The LoRA in ComfyUI's native keys (diffusion_model.<path>.lora_up/lora_down.weight, .alpha,
    .diff, .diff_b), for handing to ComfyUI's own loader. No alpha stays no alpha (scale 1)."""
    out = {}
    for path, e in parse_lora(parsed).entries.items():
        base = NATIVE_PREFIX + path
        if e.up is not None:
            out[base + ".lora_up.weight"] = e.up.contiguous()
            out[base + ".lora_down.weight"] = e.down.contiguous()
            if e.alpha is not None:
                out[base + ".alpha"] = torch.tensor(e.alpha, dtype=torch.float32)
        if e.diff is not None:
            out[base + ".diff"] = e.diff.contiguous()
        if e.diff_b is not None:
            out[base + ".diff_b"] = e.diff_b.contiguous()
    return out


# --------------------------------------------------------------------------------------------
# Matching a LoRA against a model, deltas, merging
# --------------------------------------------------------------------------------------------


@dataclass
class LoraReport:
    """What a LoRA did (or would do) to a model."""

    source: str
    strength: float
    matched: list = field(default_factory=list)  # module/parameter paths that change
    unmatched: dict = field(default_factory=dict)  # file key -> why it is not used
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # extra lines for the summary (e.g. from ComfyUI)

    @property
    def matched_count(self) -> int:
        return len(self.matched)

    def __str__(self) -> str:
        lines = [f"LoRA {self.source}: {self.matched_count} module(s) changed at strength {self.strength:g}"]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += self.notes
        if self.unmatched:
            lines.append(f"{len(self.unmatched)} file key(s) not used:")
            items = sorted(self.unmatched.items())
            lines += [f"  {k}: {why}" for k, why in items[:20]]
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more")
        return "\n".join(lines)


@dataclass
class _Change:
    param: str  # parameter of the model that changes
    path: str  # LoRA entry it comes from
    kind: str  # "lora" | "diff" | "diff_b"


def _entry_parts(entry: LoraEntry) -> dict:
    """kind -> file keys of an entry."""
    parts = {}
    if entry.up is not None:
        parts["lora"] = [entry.keys[p] for p in ("up", "down", "alpha") if p in entry.keys]
    for kind in ("diff", "diff_b"):
        if getattr(entry, kind) is not None:
            parts[kind] = [entry.keys[kind]]
    return parts


def _delta_shape(entry: LoraEntry, kind: str) -> tuple:
    if kind == "lora":
        return entry.up.shape[0], entry.down[0].numel()
    return tuple(getattr(entry, kind).shape)


def _fits(param: torch.Tensor, entry: LoraEntry, kind: str) -> bool:
    if kind == "lora":  # Linear [out, in] or Conv [out, in, k...] against up @ down.flatten(1)
        return param.ndim >= 2 and (param.shape[0], param[0].numel()) == _delta_shape(entry, kind)
    return tuple(param.shape) == _delta_shape(entry, kind)


def _target_param(params: dict, path: str, kind: str) -> str | None:
    if kind == "diff_b":
        return path + ".bias" if path + ".bias" in params else None
    if path + ".weight" in params:
        return path + ".weight"
    return path if path in params else None


def _model_dim(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "dim", None)


def _lora_dim(parsed: ParsedLora) -> int | None:
    """The model width a LoRA was made for, read from an attention projection (dim x dim)."""
    for path, e in parsed.entries.items():
        if re.search(r"\.(self_attn|cross_attn)\.(q|k|v|o)$", path):
            if e.up is not None:
                return e.up.shape[0]
            if e.diff is not None:
                return e.diff.shape[0]
    return None


def _width_name(dim: int | None) -> str:
    return f"{dim} = {_KNOWN_WIDTHS[dim]}" if dim in _KNOWN_WIDTHS else str(dim)


def _plan(model: nn.Module, parsed: ParsedLora) -> tuple[list, LoraReport]:
    report = LoraReport(parsed.name, 1.0, unmatched=dict(parsed.unrecognized))
    params = dict(model.named_parameters())
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_layers", None)
    changes, image_keys, shape_keys, block_keys = [], [], [], []
    for path, entry in parsed.entries.items():
        for kind, keys in _entry_parts(entry).items():
            param = _target_param(params, path, kind)
            block = _BLOCK.match(path)
            if param is None:
                if _IMAGE_BRANCH.search(path):
                    why = "Wan2.1 I2V/FLF2V image-branch module, not in this model"
                    image_keys += keys
                elif block and layers is not None and int(block.group(1)) >= layers:
                    why = f"block {block.group(1)} does not exist (the model has {layers} blocks)"
                    block_keys += keys
                else:
                    why = f"{path} has no {'bias' if kind == 'diff_b' else 'weight'} in this model"
                report.unmatched.update({k: why for k in keys})
            elif not _fits(params[param], entry, kind):
                why = (f"shape mismatch: the LoRA changes a {list(_delta_shape(entry, kind))} weight, {param} is "
                       f"{list(params[param].shape)}")
                report.unmatched.update({k: why for k in keys})
                shape_keys += keys
            else:
                changes.append(_Change(param, path, kind))
    report.matched = sorted({c.path for c in changes}, key=_natural_order)
    model_dim, lora_dim = _model_dim(model), _lora_dim(parsed)
    width_msg = None
    if lora_dim is not None and model_dim is not None and lora_dim != model_dim:
        width_msg = (f"this LoRA was made for a model of width {_width_name(lora_dim)}, but this model has dim "
                     f"{_width_name(model_dim)}")
    if width_msg and shape_keys:
        report.warnings.append(f"{width_msg}; {len(shape_keys)} key(s) skipped")
    elif shape_keys:
        report.warnings.append(f"{len(shape_keys)} key(s) skipped for a shape mismatch (a LoRA for another variant?)")
    if image_keys:
        variant = getattr(cfg, "variant", "") or getattr(cfg, "model_type", "this model")
        report.warnings.append(f"{len(image_keys)} key(s) are for the Wan2.1 I2V/FLF2V image branch (k_img, v_img, "
                               f"img_emb), which {variant} does not have: skipped (a LoRA trained for I2V?)")
    if block_keys:
        report.warnings.append(f"{len(block_keys)} key(s) address blocks beyond the model's {layers} (a LoRA for a "
                               "deeper model, e.g. 14B with 40 blocks?)")
    report.warnings += _metadata_warnings(parsed.metadata, cfg)
    if not changes:
        reasons = sorted(set(report.unmatched.values()))
        raise ValueError(
            f"LoRA {parsed.name}: nothing in it fits this model"
            + (f" - {width_msg}" if width_msg else "") + ". "
            + (f"Reasons: {'; '.join(reasons[:5])}" if reasons else "It has no entries.")
        )
    return changes, report


def _natural_order(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _tokens(text: str) -> tuple[str | None, str | None]:
    """(size like '1.3' / '14', task like 't2v') named in a variant string, when present."""
    text = text.lower()
    size = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)b(?![a-z])", text)
    task = re.search(r"(ti2v|flf2v|i2v|t2v)", text)
    return (size.group(1) if size else None), (task.group(1) if task else None)


def _metadata_warnings(metadata: dict, cfg) -> list:
    variant = getattr(cfg, "variant", "") or ""
    if not variant:
        return []
    warnings = []
    trained = metadata.get("wanflow.variant")
    if trained and trained != variant:
        warnings.append(f"the LoRA's metadata says it was trained on {trained}; this model is {variant}")
    size, task = _tokens(variant)
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key)
        if not value:
            continue
        other_size, other_task = _tokens(value)
        if (size and other_size and size != other_size) or (task and other_task and task != other_task):
            warnings.append(f"the LoRA's metadata {key} = {value!r}; this model is {variant}")
    return warnings


def check_lora(model: nn.Module, source) -> LoraReport:
    """Match a LoRA against a model without changing it (raises when nothing fits)."""
    return _plan(model, parse_lora(source))[1]


def iter_lora_deltas(model: nn.Module, source, strength: float = 1.0):
    """Yield (parameter name, fp32 delta on the parameter's device), one at a time (bounded memory)."""
    parsed = parse_lora(source)
    changes, _ = _plan(model, parsed)
    params = dict(model.named_parameters())
    for c in changes:
        yield c.param, _delta(parsed.entries[c.path], c.kind, params[c.param], strength)


def lora_deltas(model: nn.Module, source, strength: float = 1.0) -> dict:
    """{parameter name: fp32 delta} the LoRA adds at `strength` (several entries on one parameter summed)."""
    out = {}
    for name, delta in iter_lora_deltas(model, source, strength):
        out[name] = out[name] + delta if name in out else delta
    return out


def _delta(entry: LoraEntry, kind: str, param: torch.Tensor, strength: float) -> torch.Tensor:
    device = param.device
    if kind == "lora":
        up = entry.up.to(device, torch.float32).flatten(1)
        down = entry.down.to(device, torch.float32).flatten(1)
        return ((up @ down) * (strength * entry.scale)).reshape(param.shape)
    return getattr(entry, kind).to(device, torch.float32) * strength


@torch.no_grad()
def add_to_parameter(model: nn.Module, name: str, delta: torch.Tensor) -> None:
    """param += delta, computed in fp32 and rounded once to the parameter's dtype. An fp8 weight (with
    or without a `weight_scale`) is dequantized and the sum stored in bf16 with the scale cleared."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    param = getattr(module, attr)
    scale = getattr(module, "weight_scale", None) if attr == "weight" else None
    delta = delta.to(param.device, torch.float32)
    if param.dtype in FP8_DTYPES or scale is not None:
        base = param.float() * scale.float() if scale is not None else param.float()
        param.data = (base + delta).to(torch.bfloat16 if param.dtype in FP8_DTYPES else param.dtype)
        module.weight_scale = None
    else:
        param.copy_(param.float() + delta)


def apply_lora(model: nn.Module, source, strength: float = 1.0) -> LoraReport:
    """Merge a LoRA into the model's weights in place (see the module docstring); returns the report."""
    parsed = parse_lora(source)
    changes, report = _plan(model, parsed)
    report.strength = strength
    params = dict(model.named_parameters())
    for c in changes:
        add_to_parameter(model, c.param, _delta(parsed.entries[c.path], c.kind, params[c.param], strength))
    return report


# --------------------------------------------------------------------------------------------
# Several LoRA lists on one shared module (restorable)
# --------------------------------------------------------------------------------------------

_RECORD = "_wanflow_applied_loras"


@dataclass
class _AppliedLoras:
    loras: list  # [(ParsedLora, strength)] in the order applied
    backups: dict  # parameter name -> (original tensor on the CPU, original weight_scale or None)


def applied_loras(model: nn.Module) -> list:
    """The [(ParsedLora, strength)] list currently merged into the model by set_applied_loras."""
    record = model.__dict__.get(_RECORD)
    return list(record.loras) if record else []


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(pa is pb and sa == sb for (pa, sa), (pb, sb) in zip(a, b))


@torch.no_grad()
def set_applied_loras(model: nn.Module, loras) -> None:
    """Make the weights equal the original weights plus `loras` [(ParsedLora or source, strength)].

    Original values of every changed parameter are kept on the CPU the first time it changes, so a
    later call with another list (or an empty one) restores them exactly. When the wanted list extends
    the applied one, only the new LoRAs are added. LoRAs are compared by identity: pass the same
    ParsedLora objects to avoid re-applying.
    """
    loras = [(parse_lora(src), float(s)) for src, s in loras]
    record = model.__dict__.get(_RECORD) or _AppliedLoras([], {})
    if _same(record.loras, loras):
        return
    if _same(record.loras, loras[: len(record.loras)]):
        todo = loras[len(record.loras):]
    else:
        _restore(model, record)
        record, todo = _AppliedLoras([], {}), loras
    for parsed, strength in todo:
        for name, delta in iter_lora_deltas(model, parsed, strength):
            if name not in record.backups:
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                scale = getattr(module, "weight_scale", None) if attr == "weight" else None
                record.backups[name] = (getattr(module, attr).detach().to("cpu", copy=True), scale)
            add_to_parameter(model, name, delta)
    record.loras = loras
    if loras:
        model.__dict__[_RECORD] = record
    else:
        model.__dict__.pop(_RECORD, None)


def _restore(model: nn.Module, record: _AppliedLoras) -> None:
    for name, (original, scale) in record.backups.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        param = getattr(module, attr)
        if param.dtype == original.dtype:
            param.copy_(original)
        else:  # an fp8 weight that was stored in bf16 while merged
            param.data = original.to(param.device)
        if attr == "weight" and hasattr(module, "weight_scale"):
            module.weight_scale = None if scale is None else scale.to(param.device)
    model.__dict__.pop(_RECORD, None)
