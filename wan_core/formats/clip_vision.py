"""Loading CLIP vision (ViT-H/14) from the files users have (docs/formats.md §9): the official open-clip
`.pth` (fused qkv split, squeezed embeddings), ComfyUI `clip_vision_h.safetensors` (HF names), HF
folders. The config is inferred from shapes (config.json or metadata win), the tower is built on the
meta device and filled one tensor at a time."""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..io.dtypes import resolve_dtype
from ..io.keys import numeric_order
from ..io.tensor_files import (
    CheckpointError,
    MultiFile,
    NonFiniteCheck,
    open_tensor_file,
    open_weights_folder,
    read_json,
)
from ..models.clip_vision import WanClipVision, vision_tower

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig


HEADS_METADATA_KEY = "num_attention_heads"


# Head counts of released CLIP vision towers by width (ViT-B, ViT-L, ViT-H, ViT-g, ViT-bigG).
KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "image_size", "patch_size", "num_channels", "hidden_act", "layer_norm_eps")


# Keys outside the vision tower that a CLIP file may carry and we leave alone.
_IGNORED_OFFICIAL = re.compile(r"^(textual\..*|log_scale|visual\.head)$")


_IGNORED_HF = re.compile(r"^(visual_projection\.weight|text_projection\.weight|logit_scale|text_model\..*"
                         r"|(vision_model\.)?embeddings\.position_ids)$")


# Official (`visual.` stripped) -> HF CLIPVisionModel names; q/k/v come from one fused tensor.
_OFFICIAL_RENAMES = [
    (r"^pre_norm\.", "pre_layrnorm."),
    (r"^post_norm\.", "post_layernorm."),
    (r"^patch_embedding\.weight$", "embeddings.patch_embedding.weight"),
    (r"^transformer\.(\d+)\.norm([12])\.", r"encoder.layers.\1.layer_norm\2."),
    (r"^transformer\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^transformer\.(\d+)\.mlp\.0\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^transformer\.(\d+)\.mlp\.2\.", r"encoder.layers.\1.mlp.fc2."),
]


_OFFICIAL_RENAMES = [(re.compile(p), r) for p, r in _OFFICIAL_RENAMES]


_QKV = re.compile(r"^transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)$")


# Marker keys of other model kinds, for a clear error when one is passed here.
_OTHER_KINDS = [  # most specific first: markers match a key or a key's dotted suffix
    ("visual.conv1.weight", "an open_clip checkpoint in open_clip's native layout (not supported: use the "
                            "official Wan .pth, ComfyUI's clip_vision_h.safetensors or an HF folder)"),
    ("textual.token_embedding.weight", "only the XLM-RoBERTa text tower of the CLIP model (no `visual.*`)"),
    ("text_model.embeddings.token_embedding.weight", "a CLIP text model (no vision tower)"),
    ("head.modulation", "a Wan diffusion model (DiT)"),
    ("blocks.0.self_attn.q.weight", "a Wan diffusion model (DiT)"),
    ("scale_shift_table", "a Wan diffusion model (DiT, diffusers layout)"),
    ("decoder.middle.0.residual.0.gamma", "a Wan VAE"),
    ("decoder.mid_block.resnets.0.norm1.gamma", "a Wan VAE (diffusers layout)"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5/UMT5 text encoder"),
    ("token_embedding.weight", "a UMT5 text encoder (official layout)"),
    ("shared.weight", "a T5/UMT5 text encoder"),
]


def clip_key_map(keys, path) -> tuple[dict[str, tuple[str, str]], str, list[str]]:
    """-> ({hf_name: (stored_key, op)}, layout, ignored keys). Unknown keys are kept under their
    stored name so that the strict check reports them as unexpected."""
    keys = list(keys)
    keyset = set(keys)
    if "visual.patch_embedding.weight" in keyset and "visual.pre_norm.weight" in keyset:
        return _official_map(keys)
    for prefix in ("vision_model.", ""):
        if prefix + "embeddings.patch_embedding.weight" in keyset and prefix + "pre_layrnorm.weight" in keyset:
            name_map, ignored = {}, []
            for k in keys:
                if _IGNORED_HF.match(k):
                    ignored.append(k)
                else:
                    name_map[k[len(prefix):] if k.startswith(prefix) else k] = (k, "")
            return name_map, "hf-names", ignored
    _raise_not_clip(keyset, path)


def _official_map(keys):
    name_map, ignored = {}, []
    for k in keys:
        if _IGNORED_OFFICIAL.match(k):
            ignored.append(k)
            continue
        if not k.startswith("visual."):
            name_map[k] = (k, "")  # unexpected
            continue
        name = k[len("visual."):]
        if name == "cls_embedding":
            name_map["embeddings.class_embedding"] = (k, "flatten")
        elif name == "pos_embedding":
            name_map["embeddings.position_embedding.weight"] = (k, "squeeze0")
        elif m := _QKV.match(name):
            for part in "qkv":
                name_map[f"encoder.layers.{m[1]}.self_attn.{part}_proj.{m[2]}"] = (k, part)
        else:
            for pattern, repl in _OFFICIAL_RENAMES:
                new, n = pattern.subn(repl, name)
                if n:
                    name_map[new] = (k, "")
                    break
            else:
                name_map[k] = (k, "")  # unexpected, reported under its stored name
    return name_map, "official", ignored


def _stored_name(hf_name: str, layout: str, prefix: str) -> str:
    """The name a missing HF parameter has in the file's own layout (for error messages)."""
    if layout != "official":
        return prefix + hf_name
    fixed = {"embeddings.class_embedding": "cls_embedding", "embeddings.position_embedding.weight": "pos_embedding",
             "embeddings.patch_embedding.weight": "patch_embedding.weight"}
    name = fixed.get(hf_name, hf_name)
    for pattern, repl in [(r"^pre_layrnorm\.", "pre_norm."), (r"^post_layernorm\.", "post_norm."),
                          (r"^encoder\.layers\.(\d+)\.", r"transformer.\1."), (r"layer_norm([12])\.", r"norm\1."),
                          (r"self_attn\.[qkv]_proj\.", "attn.to_qkv."), (r"self_attn\.out_proj\.", "attn.proj."),
                          (r"mlp\.fc1\.", "mlp.0."), (r"mlp\.fc2\.", "mlp.2.")]:
        name = re.sub(pattern, repl, name)
    return "visual." + name


def _raise_not_clip(keys: set, path):
    for marker, what in _OTHER_KINDS:
        if any(k == marker or k.endswith("." + marker) for k in keys):
            raise CheckpointError(
                f"{path}: this file looks like {what}, not a CLIP vision model; expected the Wan CLIP .pth "
                f"('visual.patch_embedding.weight') or clip_vision_h ('vision_model.embeddings.patch_embedding.weight')"
            )
    raise CheckpointError(
        f"{path}: unknown layout - expected a CLIP vision tower with 'visual.patch_embedding.weight' (official "
        f"Wan .pth) or 'vision_model.embeddings.patch_embedding.weight' (ComfyUI/HF); found {len(keys)} keys "
        f"such as {sorted(keys)[:5]}"
    )


def _mapped_shape(shape: tuple, op: str) -> tuple:
    if op in ("q", "k", "v"):
        return (shape[0] // 3, *shape[1:])
    if op == "flatten":
        return (math.prod(shape),)
    if op == "squeeze0":
        return tuple(shape[1:]) if len(shape) == 3 and shape[0] == 1 else tuple(shape)
    return tuple(shape)


def _apply_op(raw: torch.Tensor, op: str) -> torch.Tensor:
    if op in ("q", "k", "v"):
        return raw.chunk(3, dim=0)["qkv".index(op)]  # q first, as the official attention splits it
    if op == "flatten":
        return raw.reshape(-1)
    if op == "squeeze0":
        return raw.squeeze(0) if raw.ndim == 3 else raw
    return raw


def infer_clip_config(shape_of: Mapping[str, tuple], *, path=None, config_json: dict | None = None,
                      metadata: Mapping[str, str] | None = None, overrides: Mapping | None = None) -> "CLIPVisionConfig":
    """Build a `CLIPVisionConfig` from HF-named tensor shapes. config.json (HF semantics) and the
    caller's `overrides` may set heads, activation and eps; shape-given fields must agree with them."""
    from transformers import CLIPVisionConfig

    def shape(name):
        if name not in shape_of:
            raise CheckpointError(f"{path}: incomplete CLIP vision tower - missing {name!r}")
        return tuple(shape_of[name])

    pe = shape("embeddings.patch_embedding.weight")
    if len(pe) != 4 or pe[2] != pe[3]:
        raise CheckpointError(f"{path}: patch_embedding.weight should be a square Conv2d kernel (W, 3, p, p), found {pe}")
    width, channels, patch = pe[0], pe[1], pe[2]
    positions = shape("embeddings.position_embedding.weight")
    grid = math.isqrt(max(positions[0] - 1, 0))
    if len(positions) != 2 or positions[1] != width or grid * grid != positions[0] - 1 or grid == 0:
        raise CheckpointError(
            f"{path}: position embedding {positions} should be (1 + g*g, {width}) for a square grid of patches")
    layers = sorted({int(m[1]) for k in shape_of if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{path}: encoder layer indices are not contiguous from 0: {layers[:10]}")
    found = dict(hidden_size=width, num_channels=channels, patch_size=patch, image_size=grid * patch,
                 num_hidden_layers=len(layers), intermediate_size=shape("encoder.layers.0.mlp.fc1.weight")[0])

    unknown = set(overrides or {}) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown CLIP config override(s) {sorted(unknown)}; allowed: {list(CONFIG_FIELDS)}")
    given: dict = {}
    if config_json is not None:
        given.update({k: v for k, v in config_json.items() if k in CONFIG_FIELDS})
        # an HF folder without hidden_act runs transformers' default (quick_gelu): keep its meaning
        given.setdefault("hidden_act", CLIPVisionConfig().hidden_act)
    given.update(dict(overrides or {}))
    for k, v in found.items():
        if k in given and given[k] != v:
            src = "config" if overrides and k in overrides else "config.json"
            raise CheckpointError(f"{path}: {src} says {k}={given[k]} but the weights have {k}={v}")
    heads = given.get("num_attention_heads")
    if heads is None and metadata and HEADS_METADATA_KEY in metadata:
        heads = int(metadata[HEADS_METADATA_KEY])
    if heads is None:
        heads = KNOWN_HEADS.get(width)
    if heads is None:
        raise CheckpointError(
            f"{path}: cannot tell the number of attention heads of a width-{width} CLIP tower (not a released "
            f"size); pass config={{'num_attention_heads': n}}")
    if width % heads:
        raise CheckpointError(f"{path}: width {width} is not divisible by num_attention_heads={heads}")
    fields = dict(hidden_act="gelu", layer_norm_eps=1e-5)
    fields.update({k: v for k, v in given.items() if k in CONFIG_FIELDS})
    fields.update(found, num_attention_heads=heads)
    return CLIPVisionConfig(**fields)


def detect_clip_config(stored_shapes: Mapping[str, tuple], *, path="<shapes>", config_json: dict | None = None,
                       metadata: Mapping[str, str] | None = None, config: Mapping | None = None):
    """Stored name -> shape (any supported layout) -> (CLIPVisionConfig, layout), reading no weights."""
    name_map, layout, _ = clip_key_map(stored_shapes.keys(), path)
    shapes = {n: _mapped_shape(tuple(stored_shapes[k]), op) for n, (k, op) in name_map.items()}
    return infer_clip_config(shapes, path=path, config_json=config_json, metadata=metadata, overrides=config), layout


def _open_source(source):
    """-> (tensor source, config.json dict or None, path for messages)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise CheckpointError("load_clip_vision: empty list of files")
        paths = [Path(p) for p in source]
        return MultiFile([open_tensor_file(p) for p in paths]), _read_config(paths[0].parent), paths[0]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not path.is_dir():
        return open_tensor_file(path), None, path
    # HF's own file name first: hub folders may also hold open_clip copies of the same weights
    files = open_weights_folder(path, "an HF CLIP folder (config.json + model.safetensors)", prefer="model.safetensors")
    return files, _read_config(path), path


def _read_config(folder: Path) -> dict | None:
    cfg = folder / "config.json"
    data = read_json(cfg)
    if data is None:
        return None
    kind = data.get("model_type")
    if kind == "clip" and isinstance(data.get("vision_config"), dict):
        return data["vision_config"]
    if kind not in (None, "clip_vision_model"):
        raise CheckpointError(f"{cfg}: describes a {kind!r} model, expected a CLIP vision model "
                              f"(model_type 'clip_vision_model' or 'clip')")
    return data


def load_clip_vision(source, *, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                     config: Mapping | None = None) -> WanClipVision:
    """Load the CLIP vision tower from an official .pth, a ComfyUI safetensors, an HF folder, or a
    list of shards.

    dtype: module dtype (fp32, fp16, bf16). Default: the file's dtype. config: CLIPVisionConfig fields
    the shapes cannot tell (num_attention_heads, hidden_act, layer_norm_eps). Loading is strict: a
    missing or unexpected tensor is a CheckpointError. Tensors are read one at a time into a model
    built on the meta device, so the weights are never held twice.
    """
    from transformers import CLIPVisionModel

    tensors, config_json, path = _open_source(source)
    name_map, layout, _ = clip_key_map(tensors.keys(), path)
    shapes = {n: _mapped_shape(tuple(tensors.shape(k)), op) for n, (k, op) in name_map.items()}
    cfg = infer_clip_config(shapes, path=path, config_json=config_json,
                            metadata=getattr(tensors, "metadata", None), overrides=config)
    if layout != "official":
        layout = "hf" if config_json is not None else "comfyui"
    file_dtype = tensors.dtype(name_map["embeddings.patch_embedding.weight"][0])
    dtype = resolve_dtype(dtype) or (file_dtype if file_dtype in (torch.float16, torch.bfloat16) else torch.float32)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"load_clip_vision: dtype must be fp32, fp16 or bf16, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")

    with torch.device("meta"):
        vision = CLIPVisionModel(cfg)
    tower = vision_tower(vision)
    params = dict(tower.named_parameters())
    prefix = "vision_model." if any(k.startswith("vision_model.") for k, _ in name_map.values()) else ""
    missing = sorted({_stored_name(n, layout, prefix) for n in set(params) - set(name_map)}, key=numeric_order)
    unexpected = sorted({name_map[n][0] for n in set(name_map) - set(params)}, key=numeric_order)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the CLIP vision tower they describe ({layout} layout, "
            f"width {cfg.hidden_size}, {cfg.num_hidden_layers} layers) - "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")

    by_stored = defaultdict(list)  # a fused qkv is read once for its three targets
    for name in params:
        by_stored[name_map[name][0]].append(name)
    non_finite = NonFiniteCheck(path, "CLIP vision model")
    for stored in sorted(by_stored, key=numeric_order):
        raw = tensors.read(stored)
        for name in by_stored[stored]:
            value = _apply_op(raw, name_map[name][1])
            if tuple(value.shape) != tuple(params[name].shape):
                raise CheckpointError(f"{path}: tensor {stored!r} gives {name} of shape {tuple(value.shape)}, "
                                      f"expected {tuple(params[name].shape)}")
            value = value.to(device=device, dtype=dtype)
            non_finite.check(stored if len(by_stored[stored]) == 1 else f"{stored} ({name})", value)
            if value.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr():
                value = value.clone()  # own memory, not a view of the file's (fused / mapped) tensor
            module_name, _, attr = name.rpartition(".")
            setattr(tower.get_submodule(module_name), attr, nn.Parameter(value, requires_grad=False))
        del raw
    non_finite.warn()
    emb = tower.embeddings  # the one buffer (non-persistent): rebuilt, it was created on meta
    emb.position_ids = torch.arange(emb.num_positions, device=device).expand(1, -1)
    return WanClipVision(vision, layout=layout, source=str(path)).eval()
