"""CLIP-family rewards (HPS v2.1, PickScore, CLIP): loading open_clip checkpoints and HF folders, exactness
against an independent forward written here in open_clip's layout, ViT-H-14's published parameter counts,
differentiable preprocessing equal to PIL's resampler (what HPS's own pipeline runs on), the score formulas, clear
errors. open_clip and torchvision are not used: neither imports beside the CPU torch build these machines carry."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wan_core.io.tensor_files import CheckpointError
from wan_core.rewards.clip import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPReward,
    clip_resize_crop,
    load_clip_tokenizer,
    load_reward_model,
)
from wan_core.testing.reward import (
    TINY_LOGIT_SCALE,
    random_clip_model,
    save_hf_clip_folder,
    save_open_clip_checkpoint,
    write_tiny_clip_tokenizer,
)

PROMPTS = ["a red square moving left", "A photo of a CAT,   high quality!!", "dog"]
LONG = " ".join(["a beautiful detailed painting of a green dog"] * 12)  # > 77 tokens: truncated
SMALL = dict(v_width=128, v_layers=2, patch=8, image=32, t_width=192, t_layers=3, embed=48)
VIT_H_WIDTH = dict(v_width=1280, v_layers=1, patch=14, image=28, t_width=64, t_layers=1, embed=32)  # 16 heads of 80


# --------------------------------------------------------------------------------------------
# An open_clip-layout state dict and open_clip's forward, written independently of the loader
# --------------------------------------------------------------------------------------------

def random_open_clip(seed, *, v_width, v_layers, patch, image, t_width, t_layers, embed, vocab=600, ctx=77,
                     meta=False):
    """open_clip's CLIP state dict (visual tower, text tower, projections, logit_scale); `meta=True` gives the
    shapes only, for full-size layouts."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.05):
        return torch.empty(shape, device="meta") if meta else torch.randn(shape, generator=gen) * std

    def ln(prefix, width):
        return {f"{prefix}.weight": 1 + rnd(width, std=0.1), f"{prefix}.bias": rnd(width)}

    def blocks(prefix, width, layers):
        sd = {}
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}."
            sd.update({p + "attn.in_proj_weight": rnd(3 * width, width), p + "attn.in_proj_bias": rnd(3 * width),
                       p + "attn.out_proj.weight": rnd(width, width), p + "attn.out_proj.bias": rnd(width),
                       p + "mlp.c_fc.weight": rnd(4 * width, width), p + "mlp.c_fc.bias": rnd(4 * width),
                       p + "mlp.c_proj.weight": rnd(width, 4 * width), p + "mlp.c_proj.bias": rnd(width),
                       **ln(p + "ln_1", width), **ln(p + "ln_2", width)})
        return sd

    grid = image // patch
    return {
        "visual.class_embedding": rnd(v_width, std=0.5), "visual.positional_embedding": rnd(1 + grid * grid, v_width),
        "visual.conv1.weight": rnd(v_width, 3, patch, patch), "visual.proj": rnd(v_width, embed, std=0.2),
        **ln("visual.ln_pre", v_width), **ln("visual.ln_post", v_width), **blocks("visual.transformer", v_width, v_layers),
        "token_embedding.weight": rnd(vocab, t_width, std=0.5), "positional_embedding": rnd(ctx, t_width),
        "text_projection": rnd(t_width, embed, std=0.2), "logit_scale": rnd() if meta else torch.tensor(math.log(100.0)),
        **ln("ln_final", t_width), **blocks("transformer", t_width, t_layers),
    }


def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-5)


def _residual_block(x, sd, prefix, heads, mask, act):
    width = x.shape[-1]
    attn = nn.MultiheadAttention(width, heads, batch_first=True)
    attn.load_state_dict({"in_proj_weight": sd[prefix + "attn.in_proj_weight"],
                          "in_proj_bias": sd[prefix + "attn.in_proj_bias"],
                          "out_proj.weight": sd[prefix + "attn.out_proj.weight"],
                          "out_proj.bias": sd[prefix + "attn.out_proj.bias"]})
    h = _layer_norm(x, sd, prefix + "ln_1")
    x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = F.linear(_layer_norm(x, sd, prefix + "ln_2"), sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"])
    return x + F.linear(act(h), sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"])


def _n_blocks(sd, prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


@torch.no_grad()
def reference_image(sd, pixels, heads, act=F.gelu):
    """open_clip VisionTransformer: patches + class token + positions, ln_pre, blocks, ln_post(class) @ proj."""
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = _layer_norm(torch.cat([cls, x], 1) + sd["visual.positional_embedding"], sd, "visual.ln_pre")
    for i in range(_n_blocks(sd, "visual.transformer.resblocks.")):
        x = _residual_block(x, sd, f"visual.transformer.resblocks.{i}.", heads, None, act)
    return F.normalize(_layer_norm(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"], dim=-1)


@torch.no_grad()
def reference_text(sd, ids, heads, act=F.gelu):
    """open_clip text tower: causal blocks, ln_final, the argmax token (EOT, the largest id) @ text_projection."""
    n = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(_n_blocks(sd, "transformer.resblocks.")):
        x = _residual_block(x, sd, f"transformer.resblocks.{i}.", heads, mask, act)
    x = _layer_norm(x, sd, "ln_final")
    return F.normalize(x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"], dim=-1)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def normalized(pixels):
    return (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    write_tiny_clip_tokenizer(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def small(tmp):
    """The small open_clip state dict, written as HPS v2.1 ships it: .pt, {"state_dict"}, 'module.' keys."""
    sd = random_open_clip(1, **SMALL)
    path = tmp / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return sd, path


# --------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------

def test_open_clip_checkpoint_matches_reference_forward(small):
    sd, path = small
    reward = load_reward_model(path)
    assert reward.kind == "hps_v2.1" and reward.image_size == 32 and reward.context_length == 77
    cfg = reward.model.config
    assert (cfg.vision_config.num_attention_heads, cfg.text_config.num_attention_heads) == (2, 3)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    img = reward.image_features(pixels)
    ref_img = reference_image(sd, normalized(pixels), heads=2)
    texts = PROMPTS + [LONG]
    ids = reward.tokenize(texts)
    assert ids[-1, -1] == reward.eot_id and (ids[-1] == reward.eot_id).sum() == 1  # truncated, EOT kept last
    txt = reward.text_features(texts)
    ref_txt = reference_text(sd, ids, heads=3)
    d_img, d_txt = (img - ref_img).abs().max().item(), (txt - ref_txt).abs().max().item()
    print(f"max |ours - reference|: image {d_img:.2e}, text {d_txt:.2e}")
    assert d_img < 1e-5 and d_txt < 1e-5
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (txt[0] - txt[1]).abs().max() > 1e-3  # distinct prompts, distinct features


def test_vit_h_wide_heads_and_quick_gelu(tmp):
    """Vision width 1280 is ViT-H/14 (16 heads of 80, not 20 of 64); quick_gelu is honoured when asked."""
    sd = random_open_clip(2, **VIT_H_WIDTH)
    path = tmp / "vit_h_like.safetensors"
    from safetensors.torch import save_file
    save_file(sd, str(path))
    pixels = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    reward = load_reward_model(path, tokenizer_dir=tmp / "tokenizer")
    assert reward.model.config.vision_config.num_attention_heads == 16
    assert (reward.image_features(pixels) - reference_image(sd, normalized(pixels), heads=16)).abs().max() < 1e-5
    assert (reward.image_features(pixels) - reference_image(sd, normalized(pixels), heads=20)).abs().max() > 1e-4
    quick = load_reward_model(path, tokenizer_dir=tmp / "tokenizer", hidden_act="quick_gelu")
    ids = quick.tokenize(PROMPTS)
    assert (quick.text_features(PROMPTS) - reference_text(sd, ids, heads=1, act=quick_gelu)).abs().max() < 1e-5
    assert (quick.image_features(pixels) - reference_image(sd, normalized(pixels), 16, quick_gelu)).abs().max() < 1e-5
    assert (quick.image_features(pixels) - reward.image_features(pixels)).abs().max() > 1e-5


# open_clip's published sizes of ViT-H-14 (HPS v2.1's architecture), in millions of parameters
# (mlfoundations/open_clip, docs/model_profile.csv: mparams, image_mparams, text_mparams)
VIT_H_14_MPARAMS = {"total": 986.11, "image": 632.08, "text": 354.03}


def test_open_clip_vit_h_14_maps_onto_the_hps_architecture():
    """open_clip's ViT-H-14 layout at full size (shapes only): its parameter counts are open_clip's published
    ones, and every tensor maps onto a CLIPModel of the right shape, with 16 heads of 80 in the vision tower."""
    from transformers import CLIPModel

    from wan_core.rewards.clip import _mapped_shape, open_clip_config, open_clip_name_map

    sd = random_open_clip(0, v_width=1280, v_layers=32, patch=14, image=224, t_width=1024, t_layers=24, embed=1024,
                          vocab=49408, meta=True)
    image = sum(t.numel() for k, t in sd.items() if k.startswith("visual."))
    total = sum(t.numel() for t in sd.values())
    counts = {"total": round(total / 1e6, 2), "image": round(image / 1e6, 2), "text": round((total - image) / 1e6, 2)}
    assert counts == VIT_H_14_MPARAMS
    names = open_clip_name_map(sd.keys(), "ViT-H-14")
    shapes = {hf: _mapped_shape(tuple(sd[key].shape), op) for hf, (key, op) in names.items()}
    cfg = open_clip_config(shapes, "ViT-H-14")
    v, t = cfg.vision_config, cfg.text_config
    vision = (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.image_size, v.patch_size)
    text = (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.vocab_size, cfg.projection_dim)
    assert vision == (1280, 32, 16, 224, 14) and text == (1024, 24, 16, 49408, 1024)
    with torch.device("meta"):
        params = dict(CLIPModel(cfg).named_parameters())
    assert set(params) == set(names) and all(tuple(params[n].shape) == shapes[n] for n in params)


@pytest.mark.comfyui
def test_comfyui_bundled_tokenizer_gives_clip_ids():
    """ComfyUI's comfy/sd1_tokenizer (the tokenizer the node falls back to) is CLIP's BPE: the ids CLIP's
    tokenizer gives (start 49406, end 49407, vocabulary 49408), truncation to 77 with the end token kept.
    Runs where COMFYUI_DIR is set (scripts/e2e.sh runs the tests marked `comfyui`)."""
    folder = Path(os.environ.get("COMFYUI_DIR", "/nonexistent")) / "comfy" / "sd1_tokenizer"
    if not folder.is_dir():
        if os.environ.get("WANFLOW_E2E_STRICT") == "1":
            pytest.fail(f"COMFYUI_DIR has no comfy/sd1_tokenizer: {folder}")
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to check its bundled CLIP tokenizer")
    tok = load_clip_tokenizer(folder)
    ids = tok(["a photo of a cat"])["input_ids"][0]
    assert list(ids) == [49406, 320, 1125, 539, 320, 2368, 49407] and len(tok) == 49408
    long = tok([LONG], padding="max_length", max_length=77, truncation=True)["input_ids"][0]
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407 and 49407 not in long[:-1]


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------

SIZES = [(40, 50), (50, 40), (32, 32), (100, 37), (33, 97), (16, 24)]


def pil_resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The reference: PIL's antialiased bicubic resampler on float images (mode "F"), the resampler HPS's own
    pipeline runs (torchvision's Resize on a PIL image calls it), then the centre crop torchvision takes."""
    from PIL import Image

    h, w = images.shape[-2:]
    long = int(size * max(h, w) / min(h, w))
    new_h, new_w = (size, long) if h <= w else (long, size)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    planes = []
    for plane in images.reshape(-1, h, w).numpy().astype("float32"):
        picture = Image.fromarray(plane)
        if (new_h, new_w) != (h, w):
            picture = picture.resize((new_w, new_h), Image.BICUBIC)
        planes.append(torch.from_numpy(np.asarray(picture)[top:top + size, left:left + size].copy()))
    return torch.stack(planes).reshape(*images.shape[:-2], size, size)


@pytest.mark.parametrize("hw", SIZES + [(720, 1280)])
def test_preprocess_equals_pil(hw):
    size = 224 if max(hw) > 200 else 32
    images = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(sum(hw)))
    ours = clip_resize_crop(images, size)
    assert ours.shape == (2, 3, size, size)
    # measured at most 1.0e-5 (720x1280) and 4.5e-6 (33x97): float32 accumulation order; 3x margin
    assert (ours - pil_resize_crop(images, size)).abs().max() < 3e-5
    reward = _tiny_in_memory()  # then CLIP's normalisation with its published mean and std
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    if size == 32:
        assert (reward.preprocess(images) - (pil_resize_crop(images, 32) - mean) / std).abs().max() < 1e-4


def test_clip_normalisation_constants():
    """CLIP's published preprocessing statistics (openai/CLIP clip.py, _transform)."""
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_preprocess_geometry():
    images = torch.rand(1, 3, 32, 48)
    out = clip_resize_crop(images, 32)  # short side already 32: no resampling, centre columns 8..39
    assert torch.equal(out, images[..., :, 8:40])
    out = clip_resize_crop(torch.rand(1, 3, 64, 90), 32)  # -> 32 x int(32 * 90 / 64) = 45, crop offset round(6.5)
    assert out.shape == (1, 3, 32, 32)
    flat = clip_resize_crop(torch.full((1, 3, 70, 50), 0.3), 32)  # resampling keeps a constant image constant
    assert torch.allclose(flat, torch.full_like(flat, 0.3), atol=1e-6)


def test_gradients_reach_the_pixels(small):
    reward = load_reward_model(small[1])
    images = torch.rand(2, 3, 45, 60, requires_grad=True)
    reward.score(images, PROMPTS[:2]).sum().backward()
    grad = images.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.parameters())
    assert all(p.grad is None for p in reward.parameters())


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------

def _tiny_in_memory(kind="clip"):
    from wan_core.testing.reward import tiny_clip_reward
    return tiny_clip_reward(kind, seed=0)


@pytest.fixture(scope="module")
def three_kinds(small, tmp):
    pick = save_hf_clip_folder(random_clip_model(seed=4), tmp / "PickScore_v1")
    plain = save_hf_clip_folder(random_clip_model(seed=5), tmp / "clip-vit-tiny")
    return {"hps_v2.1": load_reward_model(small[1]), "pickscore": load_reward_model(pick),
            "clip": load_reward_model(plain)}


@pytest.mark.parametrize("kind", ["hps_v2.1", "pickscore", "clip"])
def test_score_and_preference_formulas(three_kinds, kind):
    reward = three_kinds[kind]
    assert reward.kind == kind  # auto: .pt -> HPS, folder named PickScore -> PickScore, other folder -> CLIP
    logit_scale = reward.model.logit_scale.item()
    expected_scale = 1.0 if kind == "hps_v2.1" else math.exp(logit_scale) / 20
    assert reward.score_scale == pytest.approx(expected_scale, rel=1e-6)
    if kind != "hps_v2.1":
        assert logit_scale == pytest.approx(TINY_LOGIT_SCALE) and reward.score_scale == pytest.approx(3.0, rel=1e-5)
    images = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(3))
    texts, rejected = ["a red cat", "a blue dog"], ["a red cat, painting", "a blue dog, painting"]
    f_img, f_a, f_b = reward.image_features(images), reward.text_features(texts), reward.text_features(rejected)
    manual = expected_scale * (f_img * f_a).sum(-1)
    assert torch.allclose(reward.score(images, texts), manual, atol=1e-6)
    for k in (0.0, 0.7):
        manual_pref = expected_scale * (f_img * ((1 + k) * f_a - f_b)).sum(-1)
        assert torch.allclose(reward.preference_score(images, texts, rejected, k), manual_pref, atol=1e-6)


def test_text_features_are_cached_and_moved_with_the_model(monkeypatch):
    reward = _tiny_in_memory()
    calls = []
    encode = reward._encode_text
    monkeypatch.setattr(reward, "_encode_text", lambda texts: calls.append(list(texts)) or encode(texts))
    first = reward.text_features(["a cat", "a dog", "a cat"])
    again = reward.text_features(["a dog", "a cat"])
    assert calls == [["a cat", "a dog"]]  # each string encoded once
    assert torch.equal(first[0], first[2]) and torch.equal(again[1], first[0]) and not first.requires_grad
    reward.to(torch.float64)  # the cache follows the model
    assert reward.text_features(["a cat"]).dtype == torch.float32 and len(calls) == 2


def test_hf_folder_and_safetensors_load_the_same_model(tmp):
    model = random_clip_model(seed=9)
    reward_mem = CLIPReward(model, load_clip_tokenizer(tmp / "tokenizer"), "clip")
    folder = save_hf_clip_folder(model, tmp / "same_model")
    flat = save_open_clip_checkpoint(model, tmp / "same_model_open_clip.safetensors")
    plain_pt = save_open_clip_checkpoint(model, tmp / "same_model_plain.pth", wrap=False)
    images = torch.rand(2, 3, 32, 32)
    expected_img, expected_txt = reward_mem.image_features(images), reward_mem.text_features(PROMPTS)
    for source in (folder, folder / "model.safetensors", flat, plain_pt):
        loaded = load_reward_model(source, kind="clip", tokenizer_dir=tmp / "tokenizer")
        assert (loaded.image_features(images) - expected_img).abs().max() < 1e-6, source
        assert (loaded.text_features(PROMPTS) - expected_txt).abs().max() < 1e-6, source
        assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())


def test_dtype_and_frozen(small):
    reward = load_reward_model(small[1], dtype="bf16")
    assert {p.dtype for p in reward.parameters()} == {torch.bfloat16}
    reference = load_reward_model(small[1])
    images = torch.rand(2, 3, 32, 32)
    low, full = reward.image_features(images), reference.image_features(images)
    # bf16 weights: measured 1 - cos 1.6e-5 per image; bound ~6x
    assert low.dtype == torch.float32 and (1 - F.cosine_similarity(low, full)).max() < 1e-4
    assert not torch.equal(low, full)
    assert torch.equal(reward.preprocess(images), reference.preprocess(images))  # normalization stays fp32
    reward.train()
    assert not reward.training and not reward.model.training


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_missing_path(tmp):
    with pytest.raises(FileNotFoundError, match="no such reward model"):
        load_reward_model(tmp / "nope.pt")


def test_not_a_clip_checkpoint(tmp):
    from safetensors.torch import save_file
    path = tmp / "a_vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4), "encoder.conv_out.bias": torch.zeros(4)}, str(path))
    with pytest.raises(CheckpointError, match=r"not an open_clip CLIP checkpoint.*visual\.conv1\.weight.*decoder\.conv_in"):
        load_reward_model(path, tokenizer_dir=tmp / "tokenizer")


def test_unsupported_open_clip_variant(tmp, small):
    sd = dict(small[0], **{"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(SMALL["v_width"])})
    path = tmp / "layer_scale.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"ls_1\.gamma"):
        load_reward_model(path, tokenizer_dir=tmp / "tokenizer")


def test_unknown_kind(small):
    with pytest.raises(ValueError, match="unknown reward kind 'aesthetic'"):
        load_reward_model(small[1], kind="aesthetic")


def test_missing_tokenizer_names_comfyui_copy(tmp_path, small):
    lonely = tmp_path / "HPS_v2.1_compressed.pt"
    lonely.write_bytes(small[1].read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no CLIP tokenizer found.*comfy/sd1_tokenizer"):
        load_reward_model(lonely)


def test_tokenizer_too_large_for_the_model(tmp, small):
    sd = dict(small[0], **{"token_embedding.weight": small[0]["token_embedding.weight"][:300]})
    path = tmp / "small_vocab.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"tokenizer has 594 tokens but the model's token embedding has only 300"):
        load_reward_model(path, tokenizer_dir=tmp / "tokenizer")


def test_hf_folder_of_another_model(tmp):
    folder = tmp / "not_clip"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "siglip"}')
    with pytest.raises(CheckpointError, match="model_type 'siglip'; expected 'clip'"):
        load_reward_model(folder)
