"""Merging LoRA files into a model: `check_lora` matches a parsed LoRA against a model (shapes, I2V-only
modules, another model width, metadata), `lora_deltas` gives the weight deltas without touching the
model, `apply_lora` merges them in place: W += strength · (alpha / rank) · up @ down, in fp32, rounded
once to the weight's dtype. fp8 weights are dequantized, updated and stored in bf16 with the scale
cleared (re-quantizing the sum would lose most of a small delta). `set_applied_loras` keeps CPU
backups of what it changed, so another list of LoRAs, or none, can be set later."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..io.dtypes import FP8_DTYPES
from .keys import _BLOCK, _IMAGE_BRANCH, _KNOWN_WIDTHS, LoraEntry, ParsedLora, parse_lora
from .metadata import VARIANT


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
    trained = metadata.get(VARIANT)
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


def check_strength(strength, what: str = "LoRA strength") -> float:
    """The strength as a float: a clear ValueError for NaN, Inf or a non-number."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number, found {strength!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, found {value}")
    return value


def iter_lora_deltas(model: nn.Module, source, strength: float = 1.0):
    """Yield (parameter name, fp32 delta on the parameter's device), one at a time (bounded memory)."""
    strength = check_strength(strength)
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
    strength = check_strength(strength)
    parsed = parse_lora(source)
    changes, report = _plan(model, parsed)
    report.strength = strength
    params = dict(model.named_parameters())
    for c in changes:
        add_to_parameter(model, c.param, _delta(parsed.entries[c.path], c.kind, params[c.param], strength))
    return report


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
    loras = [(parse_lora(src), check_strength(s)) for src, s in loras]
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
