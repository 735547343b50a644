"""Loading the UMT5-XXL text encoder from the files users have (docs/formats.md §8): the official
`.pth` (official names, weights-only), ComfyUI single files (HF names, 16-bit or fp8 / scaled fp8, an
embedded `spiece_model`), HF / diffusers folders. The `UMT5Config` is inferred from the shapes, the
model is built on the meta device and filled one tensor at a time (fp8 dequantized exactly), and the
tokenizer is found next to the weights or inside them."""
from __future__ import annotations

import math
import re
import types
from pathlib import Path

import torch
import torch.nn as nn

from ..io.dtypes import FP8_DTYPES, quantize_fp8, read_fp8_scale, resolve_dtype
from ..io.keys import numeric_order
from ..io.tensor_files import (
    CheckpointError,
    MultiFile,
    NonFiniteCheck,
    open_tensor_file,
    open_weights_folder,
    read_json,
)
from ..models.layers import ScaledCastLinear
from ..models.text_encoder import WanTextEncoder, _gated_ff_forward
from ..models.tokenizer import SentencePieceTokenizer, is_tokenizer_folder, load_tokenizer, tokenizer_candidates

ALL_IN_ONE_PREFIX = "text_encoders.umt5xxl.transformer."  # ComfyUI checkpoints holding DiT + VAE + T5


PREFIXES = ("umt5xxl.transformer.", "text_encoder.", "transformer.", "model.", "module.")


MARKERS = ("scaled_fp8", "spiece_model")


# Official wan/modules/t5.py names -> HF UMT5EncoderModel names (docs/formats.md §8).
_OFFICIAL_TO_HF = [(re.compile(p), r) for p, r in [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),  # the GELU branch
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),  # the linear branch
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
]]


# Keys that identify other Wan components (checked in this order), for a clear error.
_OTHER_COMPONENTS = [
    ("vision_model.embeddings.patch_embedding.weight", "a CLIP vision model"),
    ("visual.patch_embedding.weight", "a CLIP model (official .pth layout)"),
    ("head.modulation", "a Wan diffusion model (DiT)"),
    ("scale_shift_table", "a Wan diffusion model (DiT, diffusers layout)"),
    ("decoder.middle.0.residual.0.gamma", "a Wan VAE"),
    ("decoder.mid_block.resnets.0.norm1.gamma", "a Wan VAE (diffusers layout)"),
]


_ATTN = "encoder.block.{}.layer.0.SelfAttention."


_FFN = "encoder.block.{}.layer.1.DenseReluDense."


def official_to_hf_name(key: str) -> str:
    for pattern, repl in _OFFICIAL_TO_HF:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def text_encoder_key_map(keys, path) -> tuple[dict, str, dict]:
    """-> ({HF name: stored key}, layout 'official' | 'hf', {marker: stored key} for scaled_fp8/spiece_model)."""
    keys = [k for k in keys if not k.endswith(".scale_input")]  # activation scales: fp8 matmul only
    if any(k.startswith(ALL_IN_ONE_PREFIX) for k in keys):
        prefix = ALL_IN_ONE_PREFIX
    else:
        prefix = next((p for p in PREFIXES if sum(k.startswith(p) for k in keys) > len(keys) // 2), "")
    stripped = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    markers = {m: next((k for k in keys if k == m or k.endswith("." + m)), None) for m in MARKERS}
    for m in MARKERS:
        stripped.pop(m, None)
    if "token_embedding.weight" in stripped or "blocks.0.attn.q.weight" in stripped:
        return {official_to_hf_name(k): v for k, v in stripped.items()}, "official", markers
    if {"shared.weight", "encoder.embed_tokens.weight", _ATTN.format(0) + "q.weight"} & stripped.keys():
        if "encoder.embed_tokens.weight" in stripped:  # tied copy of shared.weight: use one of them
            embed = stripped.pop("encoder.embed_tokens.weight")
            stripped.setdefault("shared.weight", embed)
        return stripped, "hf", markers
    for key, what in _OTHER_COMPONENTS:
        if any(k == key or k.endswith("." + key) for k in keys):
            raise CheckpointError(f"{path}: this file looks like {what}, not a UMT5 text encoder; expected keys "
                                  f"such as 'shared.weight' (HF/ComfyUI) or 'token_embedding.weight' (official)")
    raise CheckpointError(f"{path}: unknown layout - expected a UMT5 text encoder with 'shared.weight' or "
                          f"'token_embedding.weight'; found {len(keys)} keys such as {sorted(keys)[:5]}")


def infer_umt5_config(shape_of, names: set, config_json: dict | None, path):
    """UMT5Config from the shapes (HF names); config.json may add eps and max_distance."""
    from transformers import UMT5Config

    layers = sorted({int(m.group(1)) for k in names if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{path}: encoder block indices should run from 0 without gaps, found {layers[:10]}")
    bias = "relative_attention_bias.weight"
    if len(layers) > 1 and _ATTN.format(0) + bias in names and _ATTN.format(1) + bias not in names:
        raise CheckpointError(f"{path}: only block 0 has a relative position bias - this is a T5 v1.1 encoder "
                              f"(e.g. t5xxl for Flux/SD3), not UMT5; Wan needs umt5-xxl")
    if _FFN.format(0) + "wi.weight" in names:
        raise CheckpointError(f"{path}: the feed-forward is not gated (DenseReluDense.wi); UMT5 has wi_0/wi_1")
    required = ["shared.weight", _ATTN.format(0) + "q.weight", _ATTN.format(0) + bias, _FFN.format(0) + "wi_0.weight"]
    missing = [k for k in required if k not in names]
    if missing:
        raise CheckpointError(f"{path}: incomplete UMT5 text encoder - missing {missing}")
    vocab, d_model = shape_of("shared.weight")
    buckets, heads = shape_of(_ATTN.format(0) + bias)
    inner = shape_of(_ATTN.format(0) + "q.weight")[0]
    if inner % heads:
        raise CheckpointError(f"{path}: attention width {inner} is not divisible by {heads} heads "
                              f"(relative_attention_bias shape {(buckets, heads)})")
    cj = config_json or {}
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, num_heads=heads, d_kv=inner // heads,
        d_ff=shape_of(_FFN.format(0) + "wi_0.weight")[0], num_layers=len(layers), relative_attention_num_buckets=buckets,
        relative_attention_max_distance=cj.get("relative_attention_max_distance", 128),
        feed_forward_proj=cj.get("feed_forward_proj", "gated-gelu"),
        layer_norm_epsilon=cj.get("layer_norm_epsilon", 1e-6), is_encoder_decoder=False, use_cache=False,
    )


def _open_source(source):
    """-> (tensor source, config.json dict or None, path of the file or folder actually read)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise CheckpointError("load_text_encoder: empty list of shard files")
        paths = [Path(p) for p in source]
        return MultiFile([open_tensor_file(p) for p in paths]), read_json(paths[0].parent / "config.json"), paths[0]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "text_encoder").is_dir():
        path = path / "text_encoder"  # a diffusers pipeline root
    elif path.is_dir() and sorted(path.glob("models_t5*.pth")):
        path = sorted(path.glob("models_t5*.pth"))[0]  # an official Wan checkpoint folder
    if not path.is_dir():
        return open_tensor_file(path), None, path
    files = open_weights_folder(path, "a UMT5 encoder (model.safetensors, shards with an index json, or a .pth)")
    return files, read_json(path / "config.json"), path


def _find_tokenizer(tokenizer, tensors, markers: dict, path: Path):
    """-> (TextTokenizer or None, the places looked at)."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer), []
    if markers["spiece_model"]:
        proto = tensors.read(markers["spiece_model"]).contiguous().numpy().tobytes()
        return SentencePieceTokenizer(proto, f"{path}:{markers['spiece_model']}"), []
    folders = tokenizer_candidates(path)
    for folder in folders:
        if is_tokenizer_folder(folder):
            return load_tokenizer(folder), []
    return None, [f"an embedded 'spiece_model' tensor in {path}",
                  f"tokenizer.json or spiece.model in {', '.join(map(str, folders))}"]


def _convert(raw, scale, compute, storage, small: bool):
    """-> (tensor to store, scale kept for call-time dequantization or None)."""
    if raw.dtype in FP8_DTYPES:
        if small and storage == "file":
            return raw, scale
        raw = raw.float() * scale if scale is not None else raw.float()
    if small and storage == "file":
        return raw, None
    if small and storage in FP8_DTYPES:
        return quantize_fp8(raw, storage)
    if small and storage is not None:
        return raw.to(storage), None
    return raw.to(compute), None


def load_text_encoder(source, *, tokenizer=None, dtype=None, device=None, weight_dtype=None) -> WanTextEncoder:
    """Load the UMT5 text encoder from any supported layout (see the module docstring).

    tokenizer: a tokenizer folder, a spiece.model file or its bytes, or a TextTokenizer. Default: the
        `spiece_model` embedded in a ComfyUI file, else a `google/umt5-xxl/` or `tokenizer/` folder
        next to the weights; without one, `encode()` explains where it looked.
    dtype: compute dtype (fp32, bf16, fp16). Default: fp32 for fp32 files, else bf16 - the official
        encoder runs in bf16, the fp16/fp8 files are conversions of it, and T5 activations overflow fp16.
    device: where the weights go (default CPU, where the 5.7 B encoder usually belongs).
    weight_dtype: None = same as dtype; "file" keeps the Linear weights as stored (fp8 with scales);
        an fp8 (or 16-bit) dtype converts them on load. They are upcast one layer at a time per call.
    """
    from transformers import UMT5EncoderModel

    tensors, config_json, path = _open_source(source)
    name_map, layout, markers = text_encoder_key_map(tensors.keys(), path)
    names = {k for k in name_map if not k.endswith((".scale_weight", ".weight_scale"))}
    config = infer_umt5_config(lambda k: tuple(tensors.shape(name_map[k])), names, config_json, path)
    # the tokenizer is small: check that it fits before reading gigabytes of weights
    tok, searched = _find_tokenizer(tokenizer, tensors, markers, path)
    if tok is not None:
        tok.check_fits(config.vocab_size, str(path))
    first = tensors.dtype(name_map[_ATTN.format(0) + "q.weight"])
    compute = resolve_dtype(dtype) or (torch.float32 if first == torch.float32 else torch.bfloat16)
    if compute not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"compute dtype must be fp32, bf16 or fp16, got {compute}")
    storage = weight_dtype if weight_dtype in (None, "file") else resolve_dtype(weight_dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")

    with torch.device("meta"):
        model = UMT5EncoderModel(config)
        if storage is not None:  # Linear weights in a storage dtype, cast per call
            for parent in list(model.modules()):
                for child_name, child in list(parent.named_children()):
                    if type(child) is nn.Linear:
                        setattr(parent, child_name, ScaledCastLinear(child.in_features, child.out_features, bias=False))
                if hasattr(parent, "wi_0"):
                    parent.forward = types.MethodType(_gated_ff_forward, parent)
    params = dict(model.named_parameters())
    missing = sorted(params.keys() - names, key=numeric_order)
    unexpected = sorted(names - params.keys(), key=numeric_order)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the {layout}-layout weights do not match a UMT5 encoder with {config.num_layers} blocks - "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {[name_map[k] for k in unexpected[:8]]}{' ...' if len(unexpected) > 8 else ''}")

    scratch = torch.empty(max(math.prod(tensors.shape(name_map[n])) * tensors.dtype(name_map[n]).itemsize
                              for n in names), dtype=torch.uint8)  # one reused read buffer
    non_finite = NonFiniteCheck(path, "text encoder")
    for name in sorted(names, key=numeric_order):
        raw = tensors.read(name_map[name], scratch)
        if tuple(raw.shape) != tuple(params[name].shape):
            raise CheckpointError(f"{path}: tensor {name_map[name]!r} has shape {tuple(raw.shape)}, expected "
                                  f"{tuple(params[name].shape)} for the encoder its other tensors describe")
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        tensor, scale = _convert(raw, read_fp8_scale(tensors, name_map, name), compute, storage,
                                 small=isinstance(module, ScaledCastLinear))
        non_finite.check(name_map[name], tensor)  # as stored (a value too large for fp16 becomes Inf)
        non_finite.check(name_map[name] + " (fp8 scale)", scale)
        if tensor.untyped_storage().data_ptr() == scratch.untyped_storage().data_ptr():
            tensor = tensor.clone()  # still in the scratch buffer: give it memory of its own
        setattr(module, attr, nn.Parameter(tensor.to(device), requires_grad=False))
        if scale is not None:
            module.weight_scale = scale.to(device)
    del scratch
    non_finite.warn()
    model.encoder.embed_tokens.weight = model.shared.weight  # re-tie the input embedding
    model.eval().requires_grad_(False)
    return WanTextEncoder(model, tok, tokenizer_searched=searched, source=str(path))
