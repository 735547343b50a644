"""LoRA key formats (docs/formats.md §10): `parse_lora(file or state dict)` maps the key styles found
in the wild (ComfyUI, kohya / musubi, Wan-Fun, diffusers / PEFT, DiffSynth; lora_up/down, lora_A/B,
alpha, diff, diff_b) onto the official module paths of the Wan DiT, and `to_comfy_state_dict` writes
a parsed LoRA back in ComfyUI's native keys."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ..formats.dit import diffusers_to_official_name
from ..io.tensor_files import count_non_finite, open_tensor_file
from ..models.dit import WanConfig, WanDiT

# (file key suffix, part): the first suffix a key ends with decides
NATIVE_PREFIX = "diffusion_model."  # ComfyUI's native LoRA keys: diffusion_model.<module>.lora_*

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
    for entry in entries.values():
        _check_entry_values(entry, name)
    return ParsedLora(entries, unrecognized, metadata, name)


def _check_entry_values(entry: LoraEntry, name: str) -> None:
    """Refuse what would merge as garbage: a rank-0 pair, NaN/Inf in alpha or in any tensor used."""
    if entry.down is not None and entry.rank == 0:
        raise ValueError(f"{name}: {entry.keys['down']!r} has rank 0 (shape {tuple(entry.down.shape)}); expected a "
                         f"lora_down of r >= 1 rows [r, in] - the file is broken")
    if entry.alpha is not None and not math.isfinite(entry.alpha):
        raise ValueError(f"{name}: {entry.keys['alpha']!r} is {entry.alpha}; expected a finite alpha - the LoRA is "
                         f"refused (merging it would fill the model's weights with NaN)")
    for part in ("up", "down", "diff", "diff_b"):
        tensor = getattr(entry, part)
        bad = 0 if tensor is None else count_non_finite(tensor)
        if bad:
            raise ValueError(f"{name}: {entry.keys[part]!r} holds {bad} NaN/Inf value(s) of {tensor.numel()}; "
                             f"expected finite weights - the LoRA is refused (merging it would fill the model's "
                             f"weights with NaN)")


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
