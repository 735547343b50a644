"""Tiny CLIP rewards for tests and the e2e fixture (no downloads): a random `CLIPModel`, a small
byte-level BPE tokenizer learnt here from a handful of words, and writers for the two on-disk layouts
the reward loader reads (an open_clip checkpoint such as HPS v2.1's, and a Hugging Face folder such
as PickScore_v1's).

The tokenizer's vocabulary is laid out as CLIP's is (the 256 byte symbols, the same with the
end-of-word mark `</w>`, one entry per merge, then <|startoftext|> and <|endoftext|>), so the ids
are the ones open_clip's own tokenizer gives for the same merges, and end-of-text is the largest id.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import torch

from ..io.tensor_files import is_safetensors
from ..io.write import atomic_write, save_safetensors
from ..rewards.clip import EOT_TOKEN, SOT_TOKEN, CLIPReward, load_clip_tokenizer
from .dit import randomize_

# small but with everything that matters: 2 heads per tower, 2 blocks, a real 77-token context
TINY_VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                   patch_size=8, image_size=32)
TINY_TEXT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=77)
TINY_EMBED = 64
TINY_LOGIT_SCALE = math.log(60.0)  # exp() = 60 -> score_scale 3 for PickScore / CLIP
TINY_MERGES = 80
_CORPUS = ("a photo of a red square moving left right up down on a blue green yellow background high quality "
           "realistic detailed painting of the cat and dog with natural lighting sharp focus beautiful scene "
           "video frame colour colorful bright dark image picture art style").split()


def byte_symbols() -> dict[int, str]:
    """Byte-level BPE alphabet: every byte as one printable character. Printable Latin-1 bytes stand
    for themselves; the rest take the characters from 256 upward, in byte order (GPT-2 / CLIP's
    convention, which the `tokenizers` ByteLevel pre-tokenizer also uses). Insertion order: the
    printable ones first, as CLIP's vocabulary lists them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def learn_merges(words, count: int) -> list[tuple[str, str]]:
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties: the smallest pair)."""
    split = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
    merges = []
    for _ in range(count):
        pairs = Counter()
        for symbols, n in split.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for symbols, n in split.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += n
        split = merged
    return merges


def tiny_bpe(merge_count: int = TINY_MERGES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab {token: id}, merges) laid out as CLIP's."""
    merges = learn_merges(_CORPUS, merge_count)
    symbols = list(byte_symbols().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tiny_clip_tokenizer(folder: str | Path) -> Path:
    """vocab.json + merges.txt of the tiny BPE in `folder` (what ComfyUI's sd1_tokenizer holds for the real one)."""
    folder = Path(folder)
    vocab, merges = tiny_bpe()
    atomic_write(folder / "vocab.json", lambda tmp: Path(tmp).write_text(json.dumps(vocab, ensure_ascii=False)))
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    atomic_write(folder / "merges.txt", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def tiny_clip_config(vocab_size: int | None = None, hidden_act: str = "gelu", **vision_overrides):
    from transformers import CLIPConfig

    vocab_size = vocab_size or len(tiny_bpe()[0])
    text = dict(TINY_TEXT, vocab_size=vocab_size, hidden_act=hidden_act, projection_dim=TINY_EMBED,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=0)
    vision = dict(TINY_VISION, hidden_act=hidden_act, projection_dim=TINY_EMBED, **vision_overrides)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_EMBED)


def random_clip_model(seed: int = 0, std: float = 0.05, hidden_act: str = "gelu", **vision_overrides):
    """A tiny fp32 CLIPModel with every weight random (norm weights around 1), logit scale log(60)."""
    from transformers import CLIPModel

    model = randomize_(CLIPModel(tiny_clip_config(hidden_act=hidden_act, **vision_overrides)), seed, std)
    with torch.no_grad():
        model.logit_scale.fill_(TINY_LOGIT_SCALE)
    return model.eval()


def _hf_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def open_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """The CLIPModel's weights under open_clip's names (fused in_proj, x @ P projections)."""
    sd = _hf_weights(model)
    out = {
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    for hf, oc in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"visual.{oc}.{p}"] = sd[f"vision_model.{hf}.{p}"]
    for p in ("weight", "bias"):
        out[f"ln_final.{p}"] = sd[f"text_model.final_layer_norm.{p}"]
    towers = (("vision_model", "visual.transformer", model.config.vision_config.num_hidden_layers),
              ("text_model", "transformer", model.config.text_config.num_hidden_layers))
    for hf_tower, oc_tower, layers in towers:
        for i in range(layers):
            src, dst = f"{hf_tower}.encoder.layers.{i}.", f"{oc_tower}.resblocks.{i}."
            for p in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
                out[f"{dst}attn.out_proj.{p}"] = sd[f"{src}self_attn.out_proj.{p}"]
                out[f"{dst}ln_1.{p}"] = sd[f"{src}layer_norm1.{p}"]
                out[f"{dst}ln_2.{p}"] = sd[f"{src}layer_norm2.{p}"]
                out[f"{dst}mlp.c_fc.{p}"] = sd[f"{src}mlp.fc1.{p}"]
                out[f"{dst}mlp.c_proj.{p}"] = sd[f"{src}mlp.fc2.{p}"]
    return out


def save_open_clip_checkpoint(model, path: str | Path, *, wrap: bool = True, module_prefix: bool = False,
                              dtype: torch.dtype | None = None) -> Path:
    """Write the model in open_clip's layout: a .pt/.pth ({"state_dict": ...} when `wrap`, keys under
    'module.' when `module_prefix`, as HPS v2.1's file) or a .safetensors (flat)."""
    path = Path(path)
    sd = open_clip_state_dict(model)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    if is_safetensors(path):
        return save_safetensors(sd, path)
    obj = {"state_dict": sd, "epoch": torch.tensor(1)} if wrap else sd
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_hf_clip_folder(model, folder: str | Path, *, tokenizer: bool = True) -> Path:
    """A Hugging Face CLIPModel folder: config.json + model.safetensors (+ the tiny tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    save_safetensors(_hf_weights(model), folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer:
        write_tiny_clip_tokenizer(folder)
    return folder


def tiny_clip_reward(kind: str = "clip", seed: int = 0, folder: str | Path | None = None) -> CLIPReward:
    """A frozen tiny CLIPReward held in memory (its tokenizer written to `folder`, or a temporary one)."""
    model = random_clip_model(seed)
    if folder is not None:
        return CLIPReward(model, load_clip_tokenizer(write_tiny_clip_tokenizer(folder)), kind, name=f"tiny {kind}")
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPReward(model, load_clip_tokenizer(write_tiny_clip_tokenizer(tmp)), kind, name=f"tiny {kind}")


def write_tiny_reward_models(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tiny rewards as users lay them out under models/reward_models: an HPS-style open_clip .pt
    ({"state_dict"}, 'module.' keys) with its tokenizer in reward_models/tokenizer/, and a
    PickScore-style Hugging Face folder. Returns {"hps": file, "pickscore": folder}."""
    root = Path(models_dir) / "reward_models"
    hps = save_open_clip_checkpoint(random_clip_model(seed), root / "tiny_HPS_v2.1_compressed.pt", module_prefix=True)
    write_tiny_clip_tokenizer(root / "tokenizer")
    pick = save_hf_clip_folder(random_clip_model(seed + 1), root / "tiny_PickScore_v1")
    return {"hps": hps, "pickscore": pick}


__all__ = ["byte_symbols", "learn_merges", "tiny_bpe", "write_tiny_clip_tokenizer", "tiny_clip_config",
           "random_clip_model", "open_clip_state_dict", "save_open_clip_checkpoint", "save_hf_clip_folder",
           "tiny_clip_reward", "write_tiny_reward_models", "TINY_LOGIT_SCALE"]
