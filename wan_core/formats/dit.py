"""Loading a Wan DiT from the files users have: official, ComfyUI, diffusers; any storage dtype.

`load_dit(source)` accepts a .safetensors file, a list of shards, a folder (official shards with
their index json, a diffusers `transformer/` folder with config.json, or a diffusers pipeline root)
or a weights-only .pth/.pt. It
  1. opens the tensors lazily (`tensor_files`),
  2. maps every key to the official name (prefix stripping, diffusers renames),
  3. infers the architecture from shapes (config.json, then the caller's `config`, win),
  4. builds the model without memory (meta device) and fills it one tensor at a time, dequantizing
     fp8 / ComfyUI "scaled fp8" weights, so the weights are never held twice.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..io.dtypes import FP8_DTYPES, quantize_fp8, read_fp8_scale, resolve_dtype
from ..io.keys import _check_keys, numeric_order
from ..io.tensor_files import (
    CheckpointError,
    MultiFile,
    NonFiniteCheck,
    open_tensor_file,
    open_weights_folder,
    read_json,
)
from ..io.write import atomic_write, save_safetensors
from ..models.dit import MODEL_TYPES, WanConfig, WanDiT
from ..models.layers import CastConv3d, CastLinear

# Prefixes under which Wan DiT weights are found (ComfyUI checkpoints, DDP, LoRA-style exports).
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.", "transformer.")
# Tensors that are not weights of the module.
NON_WEIGHT_KEYS = ("scaled_fp8", "spiece_model")
# Kept in high precision when the caller asks for fp8 storage (as ComfyUI/Kijai exports do).
HIGH_PRECISION_PATTERNS = ("norm", "head", "bias", "time_", "patch_embedding", "img_emb", "modulation", "text_embedding")

# diffusers WanTransformer3DModel -> official WanModel names (order matters: first match wins)
_DIFFUSERS_RENAMES = [
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^condition_embedder\.image_embedder\.pos_embed$", "img_emb.emb_pos"),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.add_k_proj\.", r"\1.cross_attn.k_img."),
    (r"^(blocks\.\d+)\.attn2\.add_v_proj\.", r"\1.cross_attn.v_img."),
    (r"^(blocks\.\d+)\.attn2\.norm_added_k\.", r"\1.cross_attn.norm_k_img."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' norm2 is the affine cross-attn norm
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
]
_DIFFUSERS_RENAMES = [(re.compile(p), r) for p, r in _DIFFUSERS_RENAMES]
_DIFFUSERS_IGNORED = re.compile(r"^blocks\.\d+\.attn2\.norm_added_q\.")

# Keys that identify other Wan components or unsupported DiT add-ons, for clear errors.
_OTHER_COMPONENTS = [
    ("decoder.middle.0.residual.0.gamma", "a Wan VAE (official/ComfyUI layout)"),
    ("decoder.mid_block.resnets.0.norm1.gamma", "a Wan VAE (diffusers layout)"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5/UMT5 text encoder"),
    ("blocks.0.attn.q.weight", "a UMT5 text encoder (official .pth layout)"),
    ("token_embedding.weight", "a UMT5 text encoder (official .pth layout)"),
    ("shared.weight", "a T5/UMT5 text encoder"),
    ("vision_model.embeddings.patch_embedding.weight", "a CLIP vision model"),
    ("visual.patch_embedding.weight", "a CLIP model (official .pth layout)"),
]
_UNSUPPORTED_ADDONS = [
    ("vace_patch_embedding.weight", "Wan VACE"),
    ("control_adapter.conv.weight", "Wan Fun camera control"),
    ("casual_audio_encoder.encoder.final_linear.weight", "Wan 2.2 S2V"),
    ("audio_proj.audio_proj_glob_1.layer.bias", "HuMo"),
    ("face_adapter.fuser_blocks.0.k_norm.weight", "Wan Animate"),
]


# --------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------


def open_dit_source(source):
    """-> (tensor source, config.json dict or None, name hints for variant detection)."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        if not paths:
            raise CheckpointError("load_dit: empty list of shard files")
        return MultiFile([open_tensor_file(p) for p in paths]), _read_config(paths[0].parent), _hints(paths[0])
    path = Path(source)
    if path.is_dir():
        return _open_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return open_tensor_file(path), None, _hints(path)


def _open_folder(folder: Path):
    for expert in ("high_noise_model", "low_noise_model"):
        if (folder / expert).is_dir() and not list(folder.glob("*.safetensors")):
            raise CheckpointError(
                f"{folder}: this is a Wan2.2 A14B folder with two experts; pass one of "
                f"{folder / 'high_noise_model'} or {folder / 'low_noise_model'}"
            )
    if (folder / "model_index.json").exists() and (folder / "transformer").is_dir():
        # a diffusers pipeline root: the transformer (for Wan2.2 A14B: the high-noise expert)
        return _open_folder(folder / "transformer")
    files = open_weights_folder(folder, "a Wan DiT (.safetensors shards with an index json, or a .pth)")
    return files, _read_config(folder), _hints(folder)


def _read_config(folder: Path):
    return read_json(folder / "config.json")


def _hints(path: Path) -> str:
    """Lower-cased path text, used to tell shape-identical releases apart (wan2.2, high/low noise)."""
    return str(path).lower().replace("\\", "/")


# --------------------------------------------------------------------------------------------
# Key normalization
# --------------------------------------------------------------------------------------------


def official_key_map(keys, path) -> tuple[dict, str]:
    """Map official names -> stored names; returns (map, layout) with layout 'official' | 'diffusers'."""
    keys = [k for k in keys if k.rsplit(".", 1)[-1] not in ("scale_input",)]
    prefix = _common_prefix(keys)
    stripped = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    for marker in NON_WEIGHT_KEYS:
        stripped.pop(marker, None)
    if "head.modulation" in stripped or "blocks.0.self_attn.q.weight" in stripped:
        return stripped, "official"
    if "scale_shift_table" in stripped or "blocks.0.attn1.to_q.weight" in stripped:
        renamed = {}
        for k, orig in stripped.items():
            if _DIFFUSERS_IGNORED.match(k):
                continue
            renamed[diffusers_to_official_name(k)] = orig
        return renamed, "diffusers"
    _raise_not_a_dit(stripped, path)


def _common_prefix(keys) -> str:
    for p in PREFIXES:
        if sum(k.startswith(p) for k in keys) > max(5, len(keys) // 2):
            return p
    return ""


def diffusers_to_official_name(key: str) -> str:
    for pattern, repl in _DIFFUSERS_RENAMES:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def _raise_not_a_dit(keys, path):
    for key, what in _OTHER_COMPONENTS:
        if key in keys or any(k.endswith("." + key) for k in keys):
            raise CheckpointError(
                f"{path}: this file looks like {what}, not a Wan diffusion model (DiT); "
                f"expected keys such as 'head.modulation' and 'blocks.0.self_attn.q.weight'"
            )
    sample = sorted(keys)[:5]
    raise CheckpointError(
        f"{path}: unknown layout - expected a Wan DiT with 'head.modulation' (official/ComfyUI) or "
        f"'scale_shift_table' (diffusers); found {len(keys)} keys such as {sample}"
    )


# --------------------------------------------------------------------------------------------
# Architecture detection
# --------------------------------------------------------------------------------------------


# config.json (official and diffusers names) and `config=` fields: what each must be
_POSITIVE_INT_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim",
                        "text_len", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels")
# config.json field -> WanConfig field it declares, checked against the weights' shapes
_DECLARED_BY_CONFIG_JSON = {"dim": "dim", "ffn_dim": "ffn_dim", "num_layers": "num_layers", "in_dim": "in_dim",
                            "in_channels": "in_dim", "out_dim": "out_dim", "out_channels": "out_dim",
                            "text_dim": "text_dim", "freq_dim": "freq_dim"}


def check_config_values(values, where: str, error=CheckpointError) -> None:
    """A clear `error` (naming `where`: the config.json, or the caller's config=) for a field of the
    wrong type or an impossible value, before anything is built: sizes are positive integers, eps a
    positive finite number, num_heads divides dim into heads of even width, model_type a known name."""
    if not isinstance(values, Mapping):
        raise error(f"{where}: expected a dict of Wan config fields, found {type(values).__name__}")

    def bad(name, expected):
        return error(f"{where}: {name} must be {expected}; found {values[name]!r}")

    for name, value in values.items():
        if name in _POSITIVE_INT_FIELDS and not (type(value) is int and value >= 1):
            raise bad(name, "a positive integer")
        if name == "eps" and not (type(value) in (int, float) and math.isfinite(value) and value > 0):
            raise bad(name, "a positive finite number")
        if name == "flf_pos_tokens" and not (type(value) is int and value >= 0):
            raise bad(name, "an integer >= 0")
        if name == "image_branch" and not isinstance(value, bool):
            raise bad(name, "true or false")
        if name == "patch_size" and not (isinstance(value, (list, tuple)) and len(value) == 3
                                         and all(type(v) is int and v >= 1 for v in value)):
            raise bad(name, "3 positive integers (frames, height, width)")
        if name == "model_type" and not isinstance(value, str):
            raise bad(name, f"one of {MODEL_TYPES}")
        if name in ("variant",) and not isinstance(value, str):
            raise bad(name, "a string")
        if name == "extras" and not isinstance(value, dict):
            raise bad(name, "a dict")
    heads = values.get("num_heads", values.get("num_attention_heads"))
    dim = values.get("dim")
    if dim is None and heads is not None and values.get("attention_head_dim") is not None:
        dim = heads * values["attention_head_dim"]
    if dim is not None and heads is not None and (dim % heads or (dim // heads) % 2):
        raise error(f"{where}: num_heads {heads} must divide dim {dim} into heads of even width "
                    f"(head_dim = {dim / heads:g})")


def _check_config_json(config_json: dict, cfg: dict, path) -> None:
    """The sizes a config.json declares must be the ones the weights have (else it is another model's)."""
    declared = {field: config_json[name] for name, field in _DECLARED_BY_CONFIG_JSON.items() if name in config_json}
    if "num_attention_heads" in config_json and "attention_head_dim" in config_json:
        declared["dim"] = config_json["num_attention_heads"] * config_json["attention_head_dim"]
    wrong = [f"{field} {value} (the weights have {cfg[field]})" for field, value in declared.items()
             if value != cfg[field]]
    if wrong:
        raise CheckpointError(f"{path}: does not describe the weights next to it: it says {', '.join(wrong)}")


def detect_config(shape_of, keys, config_json, hints: str, path, overrides: dict | None = None) -> WanConfig:
    """Infer the WanConfig from tensor shapes (official names); config.json, then the caller's
    overrides, fill what shapes cannot tell (num_heads, text_len, eps, model_type)."""
    for key, what in _UNSUPPORTED_ADDONS:
        if key in keys:
            raise CheckpointError(f"{path}: {what} checkpoints are not supported by wan-flow yet (found {key!r})")
    required = ("patch_embedding.weight", "head.head.weight", "head.modulation", "blocks.0.ffn.0.weight",
                "text_embedding.0.weight", "time_embedding.0.weight")
    missing = [k for k in required if k not in keys]
    if missing:
        raise CheckpointError(f"{path}: incomplete Wan DiT - missing {missing}")
    pe = shape_of("patch_embedding.weight")  # (dim, in_dim, pt, ph, pw)
    if len(pe) != 5:
        raise CheckpointError(f"{path}: patch_embedding.weight should be a 5-D Conv3d kernel, found shape {pe}")
    dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
    out_dim = shape_of("head.head.weight")[0] // (patch[0] * patch[1] * patch[2])
    layers = sorted({int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{path}: block indices are not contiguous from 0: {layers[:10]}...")
    image_branch = "blocks.0.cross_attn.k_img.weight" in keys or "img_emb.proj.0.weight" in keys
    flf_tokens = shape_of("img_emb.emb_pos")[1] if "img_emb.emb_pos" in keys else 0

    config_path = Path(str(path)).parent / "config.json"  # read from the weights' folder
    if config_json:
        check_config_values(config_json, str(config_path))
    if overrides:
        check_config_values(overrides, "load_dit config=", ValueError)
    cj = dict(_config_json_fields(config_json or {}), **(overrides or {}))
    num_heads = cj.get("num_heads") or (dim // 128 if dim % 128 == 0 else None)
    if num_heads is None:
        raise CheckpointError(
            f"{path}: dim {dim} is not a multiple of 128 and no config.json gives num_heads; "
            f"pass config={{'num_heads': ...}}"
        )
    if image_branch:
        model_type = "flf2v" if flf_tokens else "i2v"
    elif in_dim == 48 and out_dim == 48:
        model_type = "ti2v"
    elif in_dim == 16:
        model_type = "t2v"
    elif in_dim == 36:
        model_type = "i2v"  # Wan2.2 I2V-A14B expert: concat conditioning without CLIP
    else:
        raise CheckpointError(
            f"{path}: shapes fit no released Wan variant: in_dim {in_dim}, out_dim {out_dim}, "
            f"image branch {image_branch} (expected in/out 16/16 t2v, 36/16 i2v, 48/48 ti2v)"
        )
    if out_dim not in (16, 48) or (model_type == "ti2v") != (out_dim == 48):
        raise CheckpointError(f"{path}: out_dim {out_dim} does not fit a {model_type} Wan model (expected 16, or 48 for TI2V)")
    cfg = dict(
        model_type=cj.get("model_type", model_type) if cj.get("model_type") in ("t2v", "i2v", "flf2v", "ti2v") else model_type,
        dim=dim, in_dim=in_dim, out_dim=out_dim, patch_size=patch,
        ffn_dim=shape_of("blocks.0.ffn.0.weight")[0],
        num_heads=num_heads, num_layers=len(layers),
        text_dim=shape_of("text_embedding.0.weight")[1],
        freq_dim=shape_of("time_embedding.0.weight")[1],
        text_len=cj.get("text_len", 512), eps=cj.get("eps", 1e-6),
        image_branch=image_branch, flf_pos_tokens=flf_tokens,
    )
    if config_json:
        _check_config_json(config_json, cfg, config_path)
    if num_heads and (dim % num_heads or (dim // num_heads) % 2):
        raise CheckpointError(f"{path}: num_heads {num_heads} does not divide the weights' dim {dim} into heads of "
                              f"even width (head_dim = {dim / num_heads:g}); pass config={{'num_heads': ...}}")
    cfg["variant"], expert = _variant_name(cfg, hints)
    cfg["extras"] = {"expert": expert} if expert else {}
    return WanConfig(**cfg)


def _config_json_fields(cj: dict) -> dict:
    """Official config.json fields, or diffusers' translated to them."""
    out = {k: cj[k] for k in ("num_heads", "text_len", "eps", "model_type") if k in cj}
    if "num_attention_heads" in cj:
        out["num_heads"] = cj["num_attention_heads"]
    return out


def _variant_name(cfg: dict, hints: str) -> tuple[str, str | None]:
    expert = "high" if "high_noise" in hints else "low" if "low_noise" in hints else None
    if "transformer_2" in hints:
        expert = "low"
    wan22 = "wan2.2" in hints or "wan2_2" in hints or "wan22" in hints or expert is not None
    t, dim = cfg["model_type"], cfg["dim"]
    if t == "ti2v":
        return "wan2.2-ti2v-5b", None
    if t == "flf2v":
        return "wan2.1-flf2v-14b", None
    if t == "i2v" and cfg["image_branch"]:
        return "wan2.1-i2v-14b", None
    if t == "i2v":
        return "wan2.2-i2v-a14b", expert
    size = {1536: "1.3b", 5120: "14b"}.get(dim, f"dim{dim}")
    if wan22 and dim == 5120:
        return "wan2.2-t2v-a14b", expert
    return f"wan2.1-t2v-{size}", None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dit(
    source,
    *,
    config: dict | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    weight_dtype: torch.dtype | str | None = None,
) -> WanDiT:
    """Load a Wan DiT from any supported layout. See the module docstring.

    dtype: compute dtype (fp32, bf16, fp16). Default: the file's floating dtype (fp8 files -> bf16).
    weight_dtype: storage dtype of the large block Linear weights. Default: same as `dtype`.
        "file" keeps what the file stores (fp8 stays fp8, scaled fp8 keeps its scales); an fp8
        dtype quantizes on load. Weights stored in a smaller dtype than `dtype` are upcast per layer
        at call time (low-memory mode).
    config: overrides for what the weights cannot tell (num_heads, text_len, model_type, variant...).
    """
    tensors, name_map, cfg, path = _inspect(source, config)
    compute_dtype = resolve_dtype(dtype) or _default_compute_dtype(tensors, name_map)
    storage = weight_dtype
    if storage is not None and storage != "file":
        storage = resolve_dtype(storage)
    device = torch.device(device) if device is not None else torch.device("cpu")

    with torch.device("meta"):
        model = WanDiT(cfg)
    expected = {k for k in model.state_dict()}
    _check_keys(expected, _weight_names(name_map), path)

    scaled_file = "scaled_fp8" in {k.rsplit(".", 1)[-1] if "." in k else k for k in tensors.keys()}
    params = dict(model.named_parameters())
    # Tensors are read into one reused scratch buffer and copied/converted into their final memory:
    # freeing a fresh read buffer per tensor would leave the heap fragmented (RSS stays high).
    largest = max(math.prod(tensors.shape(name_map[n])) * tensors.dtype(name_map[n]).itemsize for n in expected)
    scratch = torch.empty(largest, dtype=torch.uint8)
    non_finite = NonFiniteCheck(path, "diffusion model")
    for name in sorted(expected, key=numeric_order):
        raw = tensors.read(name_map[name], scratch)
        if tuple(raw.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(raw.shape)}, expected {tuple(params[name].shape)} "
                f"for the detected {cfg.variant} config"
            )
        scale = read_fp8_scale(tensors, name_map, name)
        castable = isinstance(model.get_submodule(name.rpartition(".")[0]), (CastLinear, CastConv3d))
        tensor, kept_scale = _convert(name, raw, scale, compute_dtype, storage, scaled_file, castable)
        non_finite.check(name_map[name], tensor)  # as stored (a value too large for fp16 becomes Inf)
        non_finite.check(name_map[name] + " (fp8 scale)", kept_scale)
        if tensor.untyped_storage().data_ptr() == scratch.untyped_storage().data_ptr():
            tensor = tensor.clone()  # still in the scratch buffer: give it memory of its own
        _assign(model, name, tensor.to(device), kept_scale.to(device) if kept_scale is not None else None)
        del raw
    del scratch
    non_finite.warn()
    if model.patch_embedding.weight.dtype != compute_dtype:
        # weights kept in a storage dtype (fp8 file): pin the compute dtype. Otherwise leave it
        # derived from the weights, so a later model.to(dtype) changes it as expected.
        model.compute_dtype_override = compute_dtype
    model.eval().requires_grad_(False)
    return model


def is_block_linear_weight(name: str, tensor: torch.Tensor) -> bool:
    """The large Linear weights that fp8 files quantize; norms, biases, embeddings, head stay high precision."""
    return name.endswith(".weight") and tensor.ndim == 2 and not any(p in name for p in HIGH_PRECISION_PATTERNS)


def _convert(name, raw, scale, compute_dtype, storage, scaled_file, castable):
    """-> (tensor to store, scale to keep for call-time dequantization or None).

    `castable`: the owning module casts its weight at call time (CastLinear / CastConv3d), so the
    weight may stay in a storage dtype other than the compute dtype. Only the large block Linear
    weights ("small" below) take the storage dtype; norms, biases, embeddings stay in compute dtype.
    """
    small = castable and is_block_linear_weight(name, raw)
    if raw.dtype in FP8_DTYPES:
        if scaled_file and scale is None:
            scale = torch.ones(())  # a Linear without scale in a scaled file uses 1.0
        if storage == "file" and castable:
            return raw, scale  # stays fp8; dequantized per call
        value = raw.float() * scale if scale is not None else raw.float()
    else:
        value = raw
    if small and storage == "file":
        return value, None
    if small and isinstance(storage, torch.dtype):
        if storage in FP8_DTYPES:  # quantize on load with a per-tensor scale
            return quantize_fp8(value, storage)
        return value.to(storage), None
    return (value if value.dtype == compute_dtype else value.to(compute_dtype)), None


def _assign(model, name, tensor, scale):
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))
    if scale is not None:
        module.weight_scale = scale


def _default_compute_dtype(tensors, name_map):
    dt = tensors.dtype(name_map["patch_embedding.weight"])
    if dt in (torch.float32, torch.float16, torch.bfloat16):
        return dt
    return torch.bfloat16


def load_dit_config(source, config: dict | None = None) -> WanConfig:
    """Detect the architecture of a checkpoint without reading its weights."""
    return _inspect(source, config)[2]


def _inspect(source, config: dict | None):
    """Open a source and resolve its architecture: -> (tensors, official->stored name map, config, path)."""
    tensors, config_json, hints = open_dit_source(source)
    path = getattr(tensors, "path", source)
    name_map, layout = official_key_map(tensors.keys(), path)
    shape_of = lambda k: tuple(tensors.shape(name_map[k]))  # noqa: E731
    cfg = detect_config(shape_of, _weight_names(name_map), config_json, hints, path, config)
    if config:
        cfg = WanConfig.from_dict({**cfg.as_dict(), **config})
    cfg.extras = dict(cfg.extras, layout=layout)
    return tensors, name_map, cfg, path


def _weight_names(name_map) -> set:
    """Official names of the module's own tensors (fp8 scales ride along with their weights)."""
    return {k for k in name_map if not k.endswith((".scale_weight", ".weight_scale"))}


def official_config_json(cfg: WanConfig) -> dict:
    """config.json as the official releases ship it."""
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0",
        "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim,
        "in_dim": cfg.in_dim, "model_type": cfg.model_type, "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers, "out_dim": cfg.out_dim, "text_len": cfg.text_len,
    }


def save_official(state_dict: dict, cfg: WanConfig, folder, *, shards: int = 1) -> Path:
    """Official layout: config.json + diffusion_pytorch_model.safetensors (or N shards + index json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(official_config_json(cfg), indent=2)))
    if shards <= 1:
        save_safetensors(state_dict, folder / "diffusion_pytorch_model.safetensors")
        return folder
    keys = list(state_dict)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = keys[i * per:(i + 1) * per]
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors({k: state_dict[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
        total += sum(state_dict[k].numel() * state_dict[k].element_size() for k in part)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    atomic_write(folder / "diffusion_pytorch_model.safetensors.index.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    return folder


def comfyui_state_dict(state_dict: dict, *, dtype=torch.float16, fp8: str | None = None, prefix: str = "") -> dict:
    """ComfyUI single-file tensors: 16-bit, or fp8 block Linear weights (fp8='e4m3fn' | 'e5m2' | 'scaled').

    'scaled' follows ComfyUI's fp8_scaled files: W/s in float8_e4m3fn with s = max|W|/448 stored as
    `<layer>.scale_weight`, plus an empty top-level `scaled_fp8` marker tensor.
    """
    out = {}
    for name, w in state_dict.items():
        if not (fp8 and is_block_linear_weight(name, w)):
            out[prefix + name] = w.to(dtype)
        elif fp8 == "scaled":
            out[prefix + name], out[prefix + name[: -len("weight")] + "scale_weight"] = quantize_fp8(w)
        else:
            out[prefix + name] = w.to({"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fp8])
    if fp8 == "scaled":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out
