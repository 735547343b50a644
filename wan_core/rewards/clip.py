"""CLIP-family rewards: HPS v2.1, PickScore and plain CLIP, as `RewardModel`s for SRPO.

All three are a CLIP dual encoder; they differ in their weights and in how a cosine becomes a score:

* HPS v2.1 (`HPS_v2.1_compressed.pt`): an open_clip ViT-H-14 fine-tuned on human preferences. Its
  score is the plain cosine, so `score_scale = 1`.
* PickScore (`yuvalkirstain/PickScore_v1`, a Hugging Face folder) and plain CLIP: the score is a
  CLIP logit, `logit_scale.exp() * cosine`. The official SRPO divides CLIP-style logits by 20 to put
  them on HPS's scale, so `score_scale = logit_scale.exp() / 20`.

The model always runs as transformers' `CLIPModel`. Loading (`load_reward_model`) accepts:

* an open_clip checkpoint file (.pt/.pth read with `torch.load(weights_only=True)`, or .safetensors),
  possibly wrapped as {"state_dict": ...} and with DDP's "module." prefixes. The architecture is read
  from the tensor shapes; the names are mapped onto `CLIPModel`'s (open_clip's fused `in_proj` split
  into q/k/v, `visual.proj` / `text_projection` transposed into Linear weights, ...). What shapes
  cannot tell: the head counts (text: width / 64; vision: 16 for the released ViT-H/g/bigG/e towers
  whose heads are wider than 64, else width / 64; `vision_heads=` / `text_heads=` override) and the
  activation (exact GELU as in ViT-H-14; `hidden_act="quick_gelu"` for OpenAI-trained weights);
* a Hugging Face CLIP folder (config.json + model.safetensors or pytorch_model.bin), read the same
  way: tensor by tensor into a model built on the meta device, strictly (nothing missing or left over);
* the tokenizer (CLIP's byte-level BPE, the same one open_clip ships) comes from a folder with
  tokenizer.json or vocab.json + merges.txt: `tokenizer_dir`, else the model folder or one next to
  the weights file.

Images are preprocessed differentiably as open_clip's eval transform does on tensors: bicubic
antialiased resize of the shorter side to the model's image size, center crop, CLIP mean/std. Text
features pool the first end-of-text token (open_clip takes the argmax of the token ids, which is the
first EOT because EOT is the largest id), and are cached per string: the reward is frozen and text
never needs gradients.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..io.dtypes import resolve_dtype
from ..io.keys import numeric_order
from ..io.tensor_files import CheckpointError, open_tensor_file, open_weights_folder, read_json
from .base import RewardModel, check_images

if TYPE_CHECKING:  # transformers is imported lazily: importing wan_core stays cheap
    from transformers import CLIPConfig, CLIPModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINDS = ("hps_v2.1", "pickscore", "clip")
_KIND_ALIASES = {"hps": "hps_v2.1", "hpsv2": "hps_v2.1", "hps_v2": "hps_v2.1", "hpsv2.1": "hps_v2.1",
                 "hps v2.1": "hps_v2.1", "hps_v2.1": "hps_v2.1", "pickscore": "pickscore", "clip": "clip"}
KIND_LABELS = {"hps_v2.1": "HPS v2.1", "pickscore": "PickScore", "clip": "CLIP"}
SRPO_LOGIT_DIVISOR = 20.0  # the official SRPO divides CLIP-style logits by 20 (comparable with HPS cosines)
EOT_TOKEN, SOT_TOKEN = "<|endoftext|>", "<|startoftext|>"
# Released open_clip vision towers whose heads are not 64 wide (ViT-H/14: 1280 = 16 x 80, g, bigG, e).
WIDE_HEAD_VISION = {1280: 16, 1408: 16, 1664: 16, 1792: 16}
TEXT_CACHE_SIZE = 8192  # prompts whose text features are kept


class CLIPReward(RewardModel):
    """A frozen transformers `CLIPModel` + CLIP tokenizer scoring images in [0, 1] against texts."""

    def __init__(self, model: "CLIPModel", tokenizer, kind: str = "clip", *, name: str | None = None,
                 source: str | None = None, tokenizer_source: str | None = None):
        super().__init__()
        self.kind = normalize_kind(kind)
        self.model = model
        self.tokenizer = tokenizer
        self.source, self.tokenizer_source = source, tokenizer_source
        self.name = name or f"{KIND_LABELS[self.kind]} ({Path(source).name if source else 'in memory'})"
        vision, text = model.config.vision_config, model.config.text_config
        self.image_size = int(vision.image_size)
        self.context_length = int(text.max_position_embeddings)
        self.eot_id = _special_id(tokenizer, EOT_TOKEN)
        _special_id(tokenizer, SOT_TOKEN)
        check_tokenizer_fits(tokenizer, int(text.vocab_size), source or "the model")
        text.eos_token_id = self.eot_id  # pooling below takes this token; keep the config saying so
        # a Python float fixed at load time (the reward is frozen): no device sync per score
        self.score_scale = score_scale_for(self.kind, float(model.logit_scale.detach().float()))
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.freeze()

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def _apply(self, fn, *args, **kwargs):
        self._text_cache.clear()  # cached features follow the model's device / dtype
        return super()._apply(fn, *args, **kwargs)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalized [B, 3, S, S] pixels (fp32), differentiable."""
        x = clip_resize_crop(images.float(), self.image_size)
        # fp32 constants, not buffers: a reward moved to bf16 must not round the normalization
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # post-LayerNorm class token
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """[B, context_length] token ids: start, BPE tokens, end-of-text, padding; truncated as open_clip."""
        out = self.tokenizer(list(texts), padding="max_length", max_length=self.context_length, truncation=True,
                             return_tensors="pt")
        ids = out["input_ids"].long()
        if ids.shape[1] != self.context_length or not bool((ids == self.eot_id).any(dim=1).all()):
            raise ValueError(f"the tokenizer gave ids of shape {tuple(ids.shape)} without an end-of-text token in "
                             f"every row; expected [B, {self.context_length}] each ending with {EOT_TOKEN}")
        return ids

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise ValueError("text_features takes a list of strings, found one string")
        todo = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if todo:
            # outside any inference mode: cached features may later meet pixels that need gradients
            with torch.inference_mode(False), torch.no_grad():
                feats = self._encode_text(todo)
            for text, f in zip(todo, feats):
                self._text_cache[text] = f
        for text in texts:
            self._text_cache.move_to_end(text)
        out = torch.stack([self._text_cache[t] for t in texts])
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return out

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenize(texts).to(self.device)
        hidden = self.model.text_model(input_ids=ids).last_hidden_state  # after the final LayerNorm
        first_eot = (ids == self.eot_id).int().argmax(dim=1)
        pooled = hidden[torch.arange(ids.shape[0], device=ids.device), first_eot]
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, image_size={self.image_size}, score_scale={self.score_scale:.4g}"


def normalize_kind(kind: str) -> str:
    key = str(kind).strip().lower()
    if key not in _KIND_ALIASES:
        raise ValueError(f"unknown reward kind {kind!r}; expected 'auto' or one of {list(KINDS)}")
    return _KIND_ALIASES[key]


def clip_resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's Resize(size, bicubic, antialias=True) + CenterCrop(size) on tensors, differentiable:
    the shorter side becomes `size` (the longer one int(size * long / short)), then the middle
    size x size square is kept (offsets rounded as torchvision rounds them). No clamping (as torchvision
    for float images)."""
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    long_new = int(size * long / short)
    new_h, new_w = (size, long_new) if h <= w else (long_new, size)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return images[..., top:top + size, left:left + size]


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

COMFY_TOKENIZER_HINT = ("ComfyUI ships this tokenizer in ComfyUI/comfy/sd1_tokenizer (the same CLIP BPE open_clip "
                        "uses): pass tokenizer_dir=<that folder>, or copy vocab.json and merges.txt next to the "
                        "weights")


def is_clip_tokenizer_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "tokenizer.json").is_file()
                              or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()))


def tokenizer_candidates(weights: Path) -> list[Path]:
    """Where a CLIP tokenizer belonging to a weights file or folder may be, in order of preference."""
    weights = Path(weights)
    if weights.is_dir():
        return [weights, weights / "tokenizer"]
    parent = weights.parent
    named = [parent, parent / "tokenizer", parent / weights.stem, parent / f"{weights.stem}_tokenizer"]
    # any other folder beside the file: every CLIP-family reward uses the same BPE (the vocabulary-size
    # check catches a tokenizer that does not fit)
    siblings = sorted(p for p in parent.iterdir() if p.is_dir() and p not in named) if parent.is_dir() else []
    return named + siblings


def find_clip_tokenizer(weights: str | Path) -> Path | None:
    """The first tokenizer folder that belongs to `weights` (see tokenizer_candidates), or None."""
    return next((p for p in tokenizer_candidates(Path(weights)) if is_clip_tokenizer_folder(p)), None)


def load_clip_tokenizer(folder: str | Path):
    """A CLIP BPE tokenizer from a local folder (tokenizer.json, or vocab.json + merges.txt); never the network."""
    from transformers import CLIPTokenizerFast

    folder = Path(folder)
    if not is_clip_tokenizer_folder(folder):
        found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else "no such folder"
        raise FileNotFoundError(f"{folder}: expected a CLIP tokenizer folder (tokenizer.json, or vocab.json + "
                                f"merges.txt); found {found}. {COMFY_TOKENIZER_HINT}")
    try:
        tok = CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ValueError(f"{folder}: cannot load a CLIP tokenizer ({type(exc).__name__}: {exc})") from None
    _special_id(tok, EOT_TOKEN)
    _special_id(tok, SOT_TOKEN)
    return tok


def _special_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)  # an unknown token gives the unk id, whose token differs
    if tid is None or tokenizer.convert_ids_to_tokens(tid) != token:
        raise ValueError(f"the tokenizer has no {token} token; expected a CLIP BPE tokenizer")
    return int(tid)


def check_tokenizer_fits(tokenizer, vocab_rows: int, where: str) -> None:
    size = len(tokenizer)
    if size > vocab_rows:
        raise ValueError(f"{where}: the tokenizer has {size} tokens but the model's token embedding has only "
                         f"{vocab_rows} rows; expected the model's own tokenizer (CLIP BPE: 49408 tokens)")


# --------------------------------------------------------------------------------------------
# open_clip names -> transformers CLIPModel names
# --------------------------------------------------------------------------------------------

# (open_clip pattern, CLIPModel name, op): op None = as is, "T" = transposed (open_clip keeps
# projections as x @ P matrices, HF as Linear weights), 0/1/2 = q/k/v third of the fused in_proj.
_BLOCK = r"(\d+)\.{}"
_OPEN_CLIP_RULES = [
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding", None),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight", None),
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight", None),
    (r"visual\.ln_pre\.(weight|bias)", "vision_model.pre_layrnorm.{0}", None),
    (r"visual\.ln_post\.(weight|bias)", "vision_model.post_layernorm.{0}", None),
    (r"visual\.proj", "visual_projection.weight", "T"),
    (r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight", None),
    (r"positional_embedding", "text_model.embeddings.position_embedding.weight", None),
    (r"ln_final\.(weight|bias)", "text_model.final_layer_norm.{0}", None),
    (r"text_projection", "text_projection.weight", "T"),
    (r"logit_scale", "logit_scale", None),
]
_BLOCK_RULES = [  # inside visual.transformer.resblocks.N / transformer.resblocks.N
    (r"ln_1\.(weight|bias)", "layer_norm1.{0}", None),
    (r"ln_2\.(weight|bias)", "layer_norm2.{0}", None),
    (r"attn\.out_proj\.(weight|bias)", "self_attn.out_proj.{0}", None),
    (r"mlp\.c_fc\.(weight|bias)", "mlp.fc1.{0}", None),
    (r"mlp\.c_proj\.(weight|bias)", "mlp.fc2.{0}", None),
]
_TOWERS = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("transformer.resblocks.", "text_model.encoder.layers."))
# buffers and bookkeeping integers some open_clip / OpenAI state dicts carry; not weights
_IGNORED = re.compile(r"^(attn_mask|visual\.attn_mask|input_resolution|context_length|vocab_size)$")
OPEN_CLIP_MARKERS = ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection")


def open_clip_name_map(keys, path) -> dict[str, tuple[str, object]]:
    """{CLIPModel name: (open_clip key, op)} for an open_clip state dict's keys. Keys it cannot place
    are a CheckpointError naming them (layer scale, attention pooling, ... are not supported)."""
    out, unknown = {}, []
    for key in keys:
        if _IGNORED.match(key):
            continue
        target = _map_open_clip_key(key)
        if target is None:
            unknown.append(key)
        else:
            for name, op in target:
                out[name] = (key, op)
    if unknown:
        unknown.sort(key=numeric_order)
        raise CheckpointError(f"{path}: open_clip keys this loader does not know (a CLIP variant with layer scale, "
                              f"attention pooling or a timm / HF tower?): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def _map_open_clip_key(key: str):
    for pattern, target, op in _OPEN_CLIP_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return [(target.format(*m.groups()), op)]
    for prefix, hf_prefix in _TOWERS:
        if not key.startswith(prefix):
            continue
        m = re.fullmatch(r"(\d+)\.(.+)", key[len(prefix):])
        if not m:
            return None
        index, rest = m.groups()
        base = f"{hf_prefix}{index}."
        fused = re.fullmatch(r"attn\.in_proj_(weight|bias)", rest)
        if fused:
            return [(f"{base}self_attn.{p}_proj.{fused.group(1)}", i) for i, p in enumerate("qkv")]
        for pattern, target, op in _BLOCK_RULES:
            mb = re.fullmatch(pattern, rest)
            if mb:
                return [(base + target.format(*mb.groups()), op)]
        return None
    return None


def _apply_op(value: torch.Tensor, op) -> torch.Tensor:
    if op is None:
        return value
    if op == "T":
        return value.t()
    third = value.shape[0] // 3
    return value[op * third:(op + 1) * third]


def _mapped_shape(shape: tuple, op) -> tuple:
    if op == "T":
        return tuple(reversed(shape))
    if isinstance(op, int):
        return (shape[0] // 3, *shape[1:])
    return shape


def vision_heads_for(width: int) -> int:
    return WIDE_HEAD_VISION.get(width, max(1, width // 64))


def open_clip_config(shapes: Mapping[str, tuple], path, *, hidden_act: str = "gelu", vision_heads: int | None = None,
                     text_heads: int | None = None) -> "CLIPConfig":
    """The CLIPConfig an open_clip state dict describes (shapes by CLIPModel name)."""
    from transformers import CLIPConfig

    def layers(prefix):
        return 1 + max((int(n[len(prefix):].split(".")[0]) for n in shapes if n.startswith(prefix)), default=-1)

    v_width, _, patch, _ = shapes["vision_model.embeddings.patch_embedding.weight"]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"{path}: visual.positional_embedding has {positions} rows; expected 1 + a square "
                              f"number of patches (a non-square image size is not supported)")
    vocab, t_width = shapes["text_model.embeddings.token_embedding.weight"]
    context = shapes["text_model.embeddings.position_embedding.weight"][0]
    embed = shapes["visual_projection.weight"][0]
    if shapes["text_projection.weight"][0] != embed:
        raise CheckpointError(f"{path}: visual.proj projects to {embed} dims but text_projection to "
                              f"{shapes['text_projection.weight'][0]}; expected one shared embedding size")
    v_layers, t_layers = layers("vision_model.encoder.layers."), layers("text_model.encoder.layers.")
    if not v_layers or not t_layers:
        raise CheckpointError(f"{path}: found {v_layers} vision and {t_layers} text transformer blocks; expected both")
    vision_heads = vision_heads or vision_heads_for(v_width)
    text_heads = text_heads or max(1, t_width // 64)
    for what, width, heads in (("vision", v_width, vision_heads), ("text", t_width, text_heads)):
        if width % heads:
            raise CheckpointError(f"{path}: {what} width {width} is not divisible by {heads} heads; pass {what}_heads=")
    return CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=t_width, num_hidden_layers=t_layers,
                         intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
                         num_attention_heads=text_heads, max_position_embeddings=context, hidden_act=hidden_act,
                         layer_norm_eps=1e-5, projection_dim=embed, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                         pad_token_id=0),
        vision_config=dict(hidden_size=v_width, num_hidden_layers=v_layers, patch_size=patch, image_size=grid * patch,
                           intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
                           num_attention_heads=vision_heads, hidden_act=hidden_act, layer_norm_eps=1e-5,
                           projection_dim=embed),
        projection_dim=embed)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

HF_MARKER = "text_model.embeddings.token_embedding.weight"


def load_reward_model(path: str | Path, kind: str = "auto", *, tokenizer_dir: str | Path | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
                      hidden_act: str = "gelu", vision_heads: int | None = None,
                      text_heads: int | None = None) -> CLIPReward:
    """A frozen CLIPReward from an open_clip checkpoint file (HPS v2.1) or a Hugging Face CLIP folder
    (PickScore, CLIP).

    kind: "auto" (open_clip file -> "hps_v2.1" unless its name says pickscore; HF folder -> "pickscore"
        when its name contains "pickscore", else "clip"), "hps_v2.1", "pickscore" or "clip".
    tokenizer_dir: a folder with tokenizer.json or vocab.json + merges.txt; default: the model folder,
        or a folder next to the weights file (see tokenizer_candidates).
    hidden_act, vision_heads, text_heads: for open_clip files only, what the shapes cannot tell.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such reward model file or folder (expected an open_clip checkpoint "
                                f"such as HPS_v2.1_compressed.pt, or a Hugging Face CLIP folder such as PickScore_v1)")
    dtype = resolve_dtype(dtype) or torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"reward model dtype must be fp32, fp16 or bf16, got {dtype}")
    kind_given = None if str(kind).strip().lower() == "auto" else normalize_kind(kind)
    device = torch.device(device)

    # weights made outside any inference mode: gradients must flow through them to the pixels
    with torch.inference_mode(False):
        if path.is_file() and (path.parent / "config.json").is_file() and _has_hf_keys(path):
            path = path.parent  # a CLIPModel weights file inside its HF folder: load the folder
        if path.is_dir():
            layout = "hf"
            config, tensors_for, keys_path = _hf_source(path)
            auto_kind = "pickscore" if "pickscore" in path.name.lower() else "clip"
        else:
            layout = "open_clip"
            config, tensors_for, keys_path = _open_clip_source(path, hidden_act, vision_heads, text_heads)
            auto_kind = "pickscore" if "pickscore" in path.name.lower() else "hps_v2.1"

        tok_folder = Path(tokenizer_dir) if tokenizer_dir is not None else find_clip_tokenizer(path)
        if tok_folder is None:
            looked = [str(p) for p in tokenizer_candidates(path)][:6]
            raise FileNotFoundError(f"{path}: no CLIP tokenizer found (looked for tokenizer.json or vocab.json + "
                                    f"merges.txt in {looked}). {COMFY_TOKENIZER_HINT}")
        tokenizer = load_clip_tokenizer(tok_folder)
        check_tokenizer_fits(tokenizer, config.text_config.vocab_size, str(path))  # before reading the weights

        model = _materialise(config, tensors_for, keys_path, layout, device, dtype)
        return CLIPReward(model, tokenizer, kind_given or auto_kind, source=str(path), tokenizer_source=str(tok_folder))


def _has_hf_keys(path: Path) -> bool:
    try:
        return HF_MARKER in open_tensor_file(path).keys()
    except CheckpointError:
        return False


def _strip_module(keys) -> dict[str, str]:
    """{name without DDP's 'module.' prefix: stored key}."""
    return {k[len("module."):] if k.startswith("module.") else k: k for k in keys}


def _open_clip_source(path: Path, hidden_act, vision_heads, text_heads):
    tensors = open_tensor_file(path)
    stored = _strip_module(tensors.keys())
    missing = [m for m in OPEN_CLIP_MARKERS if m not in stored]
    if missing:
        found = sorted(stored, key=numeric_order)[:6]
        hint = (" (a Hugging Face CLIP weights file: pass its folder, with config.json)" if HF_MARKER in stored else "")
        raise CheckpointError(f"{path}: not an open_clip CLIP checkpoint{hint} - expected keys {list(OPEN_CLIP_MARKERS)} "
                              f"(optionally under 'module.' or a 'state_dict' wrapper), missing {missing}; found "
                              f"{found}{' ...' if len(stored) > 6 else ''} ({len(stored)} keys)")
    name_map = {hf: (stored[key], op) for hf, (key, op) in open_clip_name_map(stored, path).items()}
    shapes = {hf: _mapped_shape(tuple(tensors.shape(key)), op) for hf, (key, op) in name_map.items()}
    config = open_clip_config(shapes, path, hidden_act=hidden_act, vision_heads=vision_heads, text_heads=text_heads)

    last = {}  # the fused in_proj is read once for its three targets

    def read(name):
        key, op = name_map[name]
        if key not in last:
            last.clear()
            last[key] = tensors.read(key)
        return _apply_op(last[key], op)

    return config, (set(name_map), read), path


def _hf_source(folder: Path):
    from transformers import CLIPConfig

    config_json = read_json(folder / "config.json")
    if config_json is None:
        raise CheckpointError(f"{folder}: expected a Hugging Face CLIP folder with config.json; found "
                              f"{sorted(p.name for p in folder.iterdir())[:10]}")
    if config_json.get("model_type") != "clip":
        raise CheckpointError(f"{folder}/config.json: model_type {config_json.get('model_type')!r}; expected 'clip' "
                              f"(a CLIPModel: PickScore_v1, openai/laion CLIP)")
    config = CLIPConfig.from_dict(config_json)
    tensors = open_weights_folder(folder, "CLIPModel weights (model.safetensors or pytorch_model.bin)",
                                  prefer="model.safetensors")
    keys = {k for k in tensors.keys() if not k.endswith("position_ids")}  # old files saved this buffer
    return config, (keys, lambda name: tensors.read(name)), folder


def _materialise(config, tensors_for, path, layout: str, device, dtype) -> "CLIPModel":
    """A CLIPModel built on the meta device, filled tensor by tensor (strict: nothing missing or extra)."""
    from transformers import CLIPModel

    names, read = tensors_for
    with torch.device("meta"):
        model = CLIPModel(config)
    params = dict(model.named_parameters())
    missing = sorted(params.keys() - names, key=numeric_order)
    unexpected = sorted(names - params.keys(), key=numeric_order)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: {layout} weights do not match the CLIP model they describe (vision width "
            f"{config.vision_config.hidden_size} x {config.vision_config.num_hidden_layers} layers, text width "
            f"{config.text_config.hidden_size} x {config.text_config.num_hidden_layers}) - missing (CLIPModel names) "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}")
    for name in sorted(params, key=numeric_order):
        value = read(name)
        if tuple(value.shape) != tuple(params[name].shape):
            raise CheckpointError(f"{path}: the tensor for {name} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(params[name].shape)}")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: the tensor for {name} is {value.dtype}; expected floating-point weights")
        value = value.to(device=device, dtype=dtype, copy=True).contiguous()  # own memory, not the file's
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name) if module_name else model, attr, nn.Parameter(value, requires_grad=False))
    for module_name, module in model.named_modules():  # the only buffers: position ids (non-persistent)
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if buf_name != "position_ids":
                raise RuntimeError(f"unexpected buffer {module_name}.{buf_name} in transformers' CLIPModel; this "
                                   f"transformers version is not supported by the reward loader")
            setattr(module, buf_name, torch.arange(buf.shape[-1], device=device).expand(1, -1))
    return model.eval()


def score_scale_for(kind: str, logit_scale: float) -> float:
    """The factor a cosine is multiplied by for each kind (HPS: 1; PickScore / CLIP: exp(logit_scale) / 20)."""
    return 1.0 if normalize_kind(kind) == "hps_v2.1" else math.exp(logit_scale) / SRPO_LOGIT_DIVISOR


__all__ = ["CLIPReward", "load_reward_model", "clip_resize_crop", "find_clip_tokenizer", "load_clip_tokenizer",
           "open_clip_name_map", "open_clip_config", "KINDS", "KIND_LABELS", "CLIP_MEAN", "CLIP_STD",
           "SRPO_LOGIT_DIVISOR", "score_scale_for", "normalize_kind", "is_clip_tokenizer_folder"]
