"""Tiny random UMT5 text encoders and a tiny sentencepiece tokenizer, for tests, the self-check and demos.

Nothing is downloaded: the tokenizer is a unigram sentencepiece model trained in memory on a few
sentences (with the umt5 special ids: <pad> 0, </s> 1, <s> 2, <unk> 3, and byte fallback), and the
encoder is a `transformers.UMT5EncoderModel` with random weights. The writers store the same weights in
every layout users have on disk:

* official: `models_t5_umt5-xxl-enc-bf16.pth` with official key names (§5.2 of the spec) next to a
  `google/umt5-xxl/` tokenizer folder,
* ComfyUI: one safetensors file with HF key names, 16-bit or fp8 (plain or "scaled"), carrying the
  serialized sentencepiece model as a `spiece_model` uint8 tensor,
* HF / diffusers: `save_pretrained` folders (optionally sharded), a `tokenizer/` folder, a pipeline root.
"""
from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

import torch

from ..generation.defaults import NEGATIVE_BASE
from ..io.dtypes import quantize_fp8
from ..io.write import atomic_write, save_pth, save_safetensors

TINY_UMT5 = dict(d_model=64, num_heads=4, d_kv=16, d_ff=96, num_layers=2)
EXTRA_IDS = 16  # sentinel tokens <extra_id_*> appended by the HF tokenizer (umt5-xxl has 300)

# A few prompts in the languages Wan users write in.
CORPUS = [
    "A cat walks on the grass, realistic style, golden hour light.",
    "Two anthropomorphic cats in comfy boxing gear fight on a spotlighted stage.",
    "A drone shot over a snowy mountain village at dawn, cinematic, 4K.",
    "The quick brown fox jumps over the lazy dog 0123456789!",
    "Der Hund läuft über die Straße. Un chien court dans le parc à midi, café crème.",
    "一只猫在草地上行走，写实风格。",
    NEGATIVE_BASE,  # the official default negative prompt
]

# HF name -> official name (docs/formats.md §8), written here independently of the loader's own mapping.
_HF_TO_OFFICIAL = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def tiny_spiece_model(vocab_size: int = 448, special_ids: tuple = (0, 1, 2, 3)) -> bytes:
    """A serialized sentencepiece unigram model, trained in memory once per argument set.

    special_ids = (pad, eos, bos, unk): umt5's (0, 1, 2, 3) by default. 448 pieces: 256 byte-fallback
    pieces, the corpus' characters and some merges."""
    import sentencepiece as spm

    out = io.BytesIO()
    pad_id, eos_id, bos_id, unk_id = special_ids
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=out, vocab_size=vocab_size, model_type="unigram",
        pad_id=pad_id, eos_id=eos_id, bos_id=bos_id, unk_id=unk_id, character_coverage=1.0,
        byte_fallback=True, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    return out.getvalue()


def spiece_tensor(model_proto: bytes) -> torch.Tensor:
    """The `spiece_model` uint8 tensor ComfyUI stores in its umt5 files."""
    return torch.frombuffer(bytearray(model_proto), dtype=torch.uint8)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _proto_fields(buf: bytes):
    """(field number, payload) of a protobuf message; enough to read a sentencepiece ModelProto
    without the protobuf package."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def precompiled_charsmap(model_proto: bytes) -> bytes:
    """ModelProto.normalizer_spec (field 3).precompiled_charsmap (field 2): the normalization table."""
    for field, value in _proto_fields(model_proto):
        if field == 3:
            return next((v for f, v in _proto_fields(value) if f == 2), b"")
    return b""


def save_tokenizer_folder(model_proto: bytes, folder, extra_ids: int = EXTRA_IDS) -> Path:
    """An HF tokenizer folder like google/umt5-xxl: spiece.model, tokenizer.json (built with the
    `tokenizers` library from the same pieces and normalization table), tokenizer_config.json and
    special_tokens_map.json. </s> is appended by the post-processor; <extra_id_i> come after the pieces."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    n = sp.get_piece_size()
    vocab = [(sp.id_to_piece(i), 0.0 if sp.is_control(i) or sp.is_byte(i) else sp.get_score(i)) for i in range(n)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=any(sp.is_byte(i) for i in range(n))))
    tok.normalizer = normalizers.Precompiled(precompiled_charsmap(model_proto))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    eos, pad, unk = sp.id_to_piece(sp.eos_id()), sp.id_to_piece(sp.pad_id()), sp.id_to_piece(sp.unk_id())
    extras = [f"<extra_id_{i}>" for i in range(extra_ids)][::-1]  # T5 convention: <extra_id_0> is the last id
    tok.add_special_tokens([pad, eos, unk] + extras)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, sp.eos_id())])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "spiece.model").write_bytes(model_proto)
    special = {"eos_token": eos, "pad_token": pad, "unk_token": unk, "additional_special_tokens": extras[::-1]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = dict(special, tokenizer_class="T5Tokenizer", extra_ids=extra_ids, model_max_length=512)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def tokenizer_size(model_proto: bytes, extra_ids: int = EXTRA_IDS) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model_proto).get_piece_size() + extra_ids


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def tiny_umt5_config(vocab_size: int | None = None, **overrides):
    """UMT5Config of the tiny encoder. Default vocab: the tiny tokenizer's ids rounded up to a
    multiple of 64 (umt5-xxl likewise has 256384 embedding rows for 256300 ids)."""
    from transformers import UMT5Config

    if vocab_size is None:
        vocab_size = -(-tokenizer_size(tiny_spiece_model()) // 64) * 64
    cfg = dict(TINY_UMT5, vocab_size=vocab_size, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
               relative_attention_num_buckets=32, relative_attention_max_distance=128)
    cfg.update(overrides)
    return UMT5Config(**cfg)


def random_umt5(seed: int = 0, vocab_size: int | None = None, **overrides):
    """A transformers UMT5EncoderModel with every parameter random (fp32, eval mode).

    Scales resemble a trained T5: unit-variance embeddings, norm weights near 1, position biases of
    order 1 (so a wrong bias mapping shows), small projections."""
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel(tiny_umt5_config(vocab_size, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name == "shared.weight":
                p.copy_(noise)
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise * p.shape[1] ** -0.5)
    return model


def hf_state_dict(model) -> dict:
    """HF names, without the tied duplicate `encoder.embed_tokens.weight`."""
    return {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def official_state_dict(hf_state: dict) -> dict:
    """HF names -> official `wan/modules/t5.py` names (docs/formats.md §8)."""
    out = {}
    for name, w in hf_state.items():
        if name in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = w
        elif name == "encoder.final_layer_norm.weight":
            out["norm.weight"] = w
        else:
            m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", name)
            out[f"blocks.{m.group(1)}.{_HF_TO_OFFICIAL[m.group(2)]}"] = w
    return out


def is_quantized_linear(name: str) -> bool:
    """The Linear weights ComfyUI's fp8 umt5 files store in fp8 (attention and feed-forward)."""
    return re.search(r"\.(SelfAttention\.[qkvo]|DenseReluDense\.w\w+)\.weight$", name) is not None


def comfyui_state_dict(hf_state: dict, *, dtype=torch.float16, fp8: str | None = None,
                       spiece: bytes | None = None, prefix: str = "", embed_tokens: bool = False) -> dict:
    """ComfyUI single-file tensors: HF names (+ optional prefix), 16-bit, or fp8 Linear weights
    (fp8='e4m3fn': plain cast; 'scaled': W/s in e4m3fn + `<layer>.scale_weight` + `scaled_fp8` marker),
    the sentencepiece model as `spiece_model`, and optionally the tied `encoder.embed_tokens.weight`."""
    out = {}
    for name, w in hf_state.items():
        if fp8 == "scaled" and is_quantized_linear(name):
            out[prefix + name], out[prefix + name[: -len("weight")] + "scale_weight"] = quantize_fp8(w)
        elif fp8 == "e4m3fn" and is_quantized_linear(name):
            out[prefix + name] = w.to(torch.float8_e4m3fn)
        else:
            out[prefix + name] = w.to(dtype)
    if embed_tokens:
        out[prefix + "encoder.embed_tokens.weight"] = out[prefix + "shared.weight"].clone()
    if fp8 == "scaled":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    if spiece is not None:
        out["spiece_model"] = spiece_tensor(spiece)
    return out


def dequantized_reference(tensors: dict, prefix: str = "") -> dict:
    """The fp32 HF-name weights a correct loader must produce from comfyui_state_dict() output."""
    out = {}
    for name, w in tensors.items():
        if not name.startswith(prefix) or name.endswith(("scale_weight", "scaled_fp8", "spiece_model")):
            continue
        key = name[len(prefix):]
        if key == "encoder.embed_tokens.weight":
            continue
        scale = tensors.get(name[: -len("weight")] + "scale_weight")
        out[key] = w.float() * scale if scale is not None else w.float()
    return out


def reference_model(hf_state: dict, config):
    """A plain transformers UMT5EncoderModel (fp32) holding the given HF-name weights."""
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel(config).eval()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}, (missing, unexpected)
    return model


# --------------------------------------------------------------------------------------------
# Layouts on disk
# --------------------------------------------------------------------------------------------


def save_official_layout(model, folder, *, dtype=torch.bfloat16, model_proto: bytes | None = None) -> Path:
    """Official Wan checkpoint folder: models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/ tokenizer."""
    folder = Path(folder)
    path = save_pth({k: v.to(dtype) for k, v in official_state_dict(hf_state_dict(model)).items()},
                    folder / "models_t5_umt5-xxl-enc-bf16.pth")
    save_tokenizer_folder(model_proto or tiny_spiece_model(), folder / "google" / "umt5-xxl")
    return path


def save_comfyui_file(model, path, **kwargs) -> Path:
    """ComfyUI umt5 file with the tiny tokenizer embedded (kwargs: see comfyui_state_dict)."""
    kwargs.setdefault("spiece", tiny_spiece_model())
    return save_safetensors(comfyui_state_dict(hf_state_dict(model), **kwargs), path)


def save_hf_folder(model, folder, *, shards: bool = False, dtype=None) -> Path:
    """save_pretrained folder (config.json + model.safetensors, or shards + model.safetensors.index.json)."""
    folder = Path(folder)
    if dtype is not None:
        import copy

        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(folder, max_shard_size="40KB" if shards else "50GB")
    return folder


def save_pipeline(model, root, *, model_proto: bytes | None = None) -> Path:
    """Diffusers pipeline root: model_index.json, text_encoder/ (sharded), tokenizer/."""
    root = Path(root)
    save_hf_folder(model, root / "text_encoder", shards=True)
    save_tokenizer_folder(model_proto or tiny_spiece_model(), root / "tokenizer")
    index = {"_class_name": "WanPipeline", "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5TokenizerFast"]}
    atomic_write(root / "model_index.json", lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    return root
