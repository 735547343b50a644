"""CLIP vision tower (Wan I2V/FLF2V image features): every layout loads the same weights, `encode`
matches transformers' CLIPVisionModel hidden_states[-2] and an independent open-clip style forward
written from the spec, the preprocessing matches a hand-written bicubic, and bad input is refused."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from wan_core import CheckpointError
from wan_core.formats.clip_vision import detect_clip_config, load_clip_vision
from wan_core.io.write import save_safetensors
from wan_core.models.clip_vision import CLIP_MEAN, CLIP_STD, official_preprocess, vision_tower
from wan_core.testing.clip_vision import (
    TINY_CLIP_OVERRIDES,
    comfy_state_dict,
    hf_state_dict,
    official_state_dict,
    random_clip_vision,
    save_comfy_safetensors,
    save_hf_folder,
    save_official_pth,
)
from wan_core.testing.dit import random_dit

HEADS, LAYERS, WIDTH, TOKENS = 4, 3, 64, 17  # tiny tower: image 56 / patch 14 -> 1 + 4*4 tokens


@pytest.fixture(scope="module")
def tower():
    return random_clip_vision(seed=3)


@pytest.fixture(scope="module")
def files(tower, tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    pretrained = d / "pretrained"
    tower.vision.save_pretrained(pretrained)  # transformers' own writer (names without a prefix)
    return {
        "official": save_official_pth(tower, d / "models_clip_tiny.pth"),
        "comfy16": save_comfy_safetensors(tower, d / "clip_vision_fp16.safetensors", torch.float16),
        "comfy32": save_comfy_safetensors(tower, d / "clip_vision_fp32.safetensors", torch.float32),
        "comfy32_nometa": save_comfy_safetensors(tower, d / "clip_vision_nometa.safetensors", torch.float32,
                                                 heads_metadata=False),
        "hf": save_hf_folder(tower, d / "hf"),
        "pretrained": pretrained,
    }


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 40, 70, generator=gen) * 2 - 1  # non-square, not the tower's size


def hf_penultimate(state_dict: dict, config, pixels: torch.Tensor) -> torch.Tensor:
    """The reference: transformers' CLIPVisionModel (eager attention) run as a whole, hidden_states[-2]."""
    config = config.__class__.from_dict(config.to_dict())
    config._attn_implementation = "eager"
    model = CLIPVisionModel(config).eval()
    vision_tower(model).load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


def openclip_forward(sd: dict, pixels: torch.Tensor, heads: int, blocks: int) -> torch.Tensor:
    """The official VisionTransformer written from the spec (§6.6) on official `visual.*` names."""
    v = {k[len("visual."):]: t.float() for k, t in sd.items() if k.startswith("visual.")}
    width, patch = v["patch_embedding.weight"].shape[0], v["patch_embedding.weight"].shape[-1]
    n, d = pixels.shape[0], width // heads
    x = F.conv2d(pixels, v["patch_embedding.weight"], stride=patch).flatten(2).transpose(1, 2)  # no bias
    x = torch.cat([v["cls_embedding"].expand(n, -1, -1), x], dim=1) + v["pos_embedding"]
    x = F.layer_norm(x, (width,), v["pre_norm.weight"], v["pre_norm.bias"], 1e-5)
    for i in range(blocks):
        p = lambda name: (v[f"transformer.{i}.{name}.weight"], v[f"transformer.{i}.{name}.bias"])  # noqa: E731
        h = F.layer_norm(x, (width,), *p("norm1"), 1e-5)
        q, k, val = F.linear(h, *p("attn.to_qkv")).view(n, -1, 3, heads, d).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ val
        x = x + F.linear(attn.transpose(1, 2).reshape(n, -1, width), *p("attn.proj"))
        h = F.layer_norm(x, (width,), *p("norm2"), 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, *p("mlp.0"))), *p("mlp.2"))  # exact (erf) GELU
    return x


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> torch.Tensor:
    """Keys cubic convolution, half-pixel centres, clamped borders, no antialias: [n_out, n_in]."""
    def cubic(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        f = math.floor(src)
        for j in range(f - 1, f + 3):
            m[i, min(max(j, 0), n_in - 1)] += cubic(src - j)
    return m


def formula_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    x = images.double()
    x = bicubic_matrix(x.shape[2], size) @ x @ bicubic_matrix(x.shape[3], size).T
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x * 0.5 + 0.5) - mean) / std


# --------------------------------------------------------------------------------------------
# Loading every layout
# --------------------------------------------------------------------------------------------

LAYOUTS = [  # (file, load kwargs, expected layout, weights rounded through fp16)
    ("official", {"config": TINY_CLIP_OVERRIDES}, "official", False),
    ("comfy32", {}, "comfyui", False),
    ("comfy32_nometa", {"config": TINY_CLIP_OVERRIDES}, "comfyui", False),
    ("comfy16", {"dtype": torch.float32}, "comfyui", True),
    ("hf", {}, "hf", False),
    ("pretrained", {}, "hf", False),
]


@pytest.mark.parametrize("name,kwargs,layout,fp16", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_layouts_match_transformers(tower, files, images, name, kwargs, layout, fp16):
    model = load_clip_vision(files[name], **kwargs)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (WIDTH, HEADS, LAYERS)
    assert (cfg.image_size, cfg.patch_size, cfg.intermediate_size) == (56, 14, 128)
    assert (cfg.hidden_act, cfg.layer_norm_eps, model.layout, model.dtype) == ("gelu", 1e-5, layout, torch.float32)
    out = model.encode(images)
    assert out.shape == (2, TOKENS, WIDTH)
    sd = hf_state_dict(tower)
    if fp16:
        sd = {k: v.half().float() for k, v in sd.items()}
    ref = hf_penultimate(sd, tower.config, official_preprocess(images, 56))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # every weight equals the tower's own (bit-exact, fp16 layouts after rounding)
    got = vision_tower(model.vision).state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_official_mapping_against_spec_forward(tower, files, images):
    """The .pth read back and run by a plain open-clip forward (independent of transformers)."""
    sd = torch.load(files["official"], weights_only=True)
    pixels = official_preprocess(images, 56)
    ref = openclip_forward(sd, pixels, HEADS, LAYERS - 1)  # stop after the penultimate block
    out = load_clip_vision(files["official"], config=TINY_CLIP_OVERRIDES).encode(images)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # the comparison is sensitive: all blocks, or q and k swapped, give clearly different features
    assert (openclip_forward(sd, pixels, HEADS, LAYERS) - out).abs().max() > 1e-2
    swapped = dict(sd)
    for i in range(LAYERS):
        for p in ("weight", "bias"):
            q, k, v = sd[f"visual.transformer.{i}.attn.to_qkv.{p}"].chunk(3)
            swapped[f"visual.transformer.{i}.attn.to_qkv.{p}"] = torch.cat([k, q, v])
    assert (openclip_forward(swapped, pixels, HEADS, LAYERS - 1) - out).abs().max() > 1e-3


def test_official_file_holds_ignored_extras(files):
    keys = set(torch.load(files["official"], weights_only=True))
    assert {"log_scale", "visual.head", "textual.token_embedding.weight"} <= keys
    assert "visual_projection.weight" in comfy_state_dict(random_clip_vision(seed=1))


def test_fp16_file_default_dtype(tower, files, images):
    model = load_clip_vision(files["comfy16"])
    assert model.dtype == torch.float16
    out = model.encode(images)
    assert out.dtype == torch.float16 and out.shape == (2, TOKENS, WIDTH)
    ref = load_clip_vision(files["comfy16"], dtype="fp32").encode(images)
    err = (out.float() - ref).abs().max().item()
    assert 0 < err < 1.5e-2, err  # fp16 compute: measured max |Δ| 3.7e-3 (features up to ~5); bound 4x
    assert load_clip_vision(files["comfy32"], dtype="bf16").dtype == torch.bfloat16


def test_loaded_weights_own_their_memory(files, images):
    """No parameter is a view of a file tensor (fused qkv, memory-mapped .pth): nothing held twice."""
    model = load_clip_vision(files["official"], config=TINY_CLIP_OVERRIDES)
    tensors = list(model.parameters()) + list(model.buffers())
    assert not any(t.is_meta for t in tensors)
    params = list(model.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params)
    assert not any(p.requires_grad for p in params) and not model.training


# --------------------------------------------------------------------------------------------
# Encoding semantics
# --------------------------------------------------------------------------------------------


def test_encode_is_penultimate_and_batch_friendly(tower, images):
    out = tower.encode(images)
    single = torch.cat([tower.encode(images[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-5)  # FLF2V: first + last as one batch
    with torch.no_grad():
        hs = tower.vision(pixel_values=official_preprocess(images, 56), output_hidden_states=True).hidden_states
    assert len(hs) == LAYERS + 1
    torch.testing.assert_close(out, hs[-2], atol=1e-5, rtol=1e-5)
    assert (out - hs[-1]).abs().max() > 1e-2  # not the last block


def test_resize_target_is_the_config_image_size(images):
    small = random_clip_vision(seed=5, image_size=28)  # 1 + 2*2 tokens whatever the input size
    assert small.encode(images).shape == (2, 5, WIDTH)
    assert small.encode(torch.zeros(1, 3, 300, 17)).shape == (1, 5, WIDTH)


def test_encode_comfy_image(tower, images):
    comfy = (images.permute(0, 2, 3, 1) + 1) / 2  # [N, H, W, 3] in 0..1
    torch.testing.assert_close(tower.encode_comfy_image(comfy), tower.encode(images), atol=1e-6, rtol=1e-6)


def test_preprocess_matches_formula(images):
    for size in (56, 224, 28):  # up- and downscaling, non-square input, no antialias
        # fp32 vs the fp64 formula, amplified by 1/std ~ 3.8 (a kernel with a=-0.5 is off by ~0.3)
        torch.testing.assert_close(official_preprocess(images, size).double(), formula_preprocess(images, size),
                                   atol=5e-5, rtol=1e-5)
    # antialiasing would differ noticeably when downscaling
    aa = F.interpolate(images, size=(28, 28), mode="bicubic", align_corners=False, antialias=True)
    assert ((official_preprocess(images, 28) - ((aa * 0.5 + 0.5) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
             / torch.tensor(CLIP_STD).view(1, 3, 1, 1)).abs().max() > 1e-2)
    # a constant image maps to the normalized constant exactly
    grey = official_preprocess(torch.full((1, 3, 30, 50), 0.2), 224)
    expected = (0.6 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(grey[0, :, 100, 17], expected)


def test_real_vit_h_config_from_shapes():
    """The official ViT-H/14 names and shapes -> 32 layers, 16 heads (head_dim 80), image 224."""
    w = 1280
    shapes = {"visual.patch_embedding.weight": (w, 3, 14, 14), "visual.cls_embedding": (1, 1, w),
              "visual.pos_embedding": (1, 257, w), "visual.head": (w, 1024), "log_scale": (),
              "textual.token_embedding.weight": (514, 1024)}
    shapes |= {f"visual.{n}.{p}": (w,) for n in ("pre_norm", "post_norm") for p in ("weight", "bias")}
    for i in range(32):
        b = f"visual.transformer.{i}."
        shapes |= {b + "attn.to_qkv.weight": (3 * w, w), b + "attn.to_qkv.bias": (3 * w,),
                   b + "mlp.0.weight": (5120, w), b + "mlp.2.weight": (w, 5120)}
    cfg, layout = detect_clip_config(shapes)
    assert layout == "official"
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (1280, 16, 32)
    assert (cfg.image_size, cfg.patch_size, cfg.intermediate_size) == (224, 14, 5120)
    assert (cfg.hidden_act, cfg.layer_norm_eps) == ("gelu", 1e-5)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_other_model_kinds_are_refused(tmp_path):
    dit = save_safetensors(random_dit("t2v").state_dict(), tmp_path / "wan_dit.safetensors")
    with pytest.raises(CheckpointError, match=r"wan_dit.safetensors: this file looks like a Wan diffusion model"):
        load_clip_vision(dit)
    for name, keys, what in [
        ("vae", ["decoder.middle.0.residual.0.gamma", "encoder.conv1.weight"], "Wan VAE"),
        ("t5", ["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"], "T5/UMT5"),
        ("text_only", ["textual.token_embedding.weight", "log_scale"], "XLM-RoBERTa text tower"),
        ("openclip", ["visual.conv1.weight", "visual.ln_pre.weight"], "open_clip's native layout"),
        ("random", ["foo.weight"], "unknown layout"),
    ]:
        path = save_safetensors({k: torch.zeros(2) for k in keys}, tmp_path / f"{name}.safetensors")
        with pytest.raises(CheckpointError, match=f"{name}.safetensors: .*{what}"):
            load_clip_vision(path)


def test_missing_unexpected_and_gapped_tensors(tower, tmp_path):
    sd = comfy_state_dict(tower, torch.float32)
    for name, change, match in [
        ("missing", lambda s: s.pop("vision_model.encoder.layers.1.mlp.fc2.weight"),
         r"missing.safetensors: weights do not match .*missing \['vision_model.encoder.layers.1.mlp.fc2.weight'\], "
         r"unexpected \[\]"),
        ("extra", lambda s: s.update({"vision_model.encoder.layers.0.extra.weight": torch.zeros(1)}),
         r"missing \[\], unexpected \['vision_model.encoder.layers.0.extra.weight'\]"),
        ("gap", lambda s: [s.pop(k) for k in list(s) if ".layers.1." in k],
         r"gap.safetensors: encoder layer indices are not contiguous from 0: \[0, 2\]"),
        ("badpos", lambda s: s.update({"vision_model.embeddings.position_embedding.weight": torch.zeros(18, WIDTH)}),
         r"position embedding \(18, 64\) should be"),
    ]:
        bad = dict(sd)
        change(bad)
        path = save_safetensors(bad, tmp_path / f"{name}.safetensors",
                                metadata={"num_attention_heads": str(HEADS)})
        with pytest.raises(CheckpointError, match=match):
            load_clip_vision(path)


def test_official_missing_qkv_and_heads(tower, tmp_path):
    sd = official_state_dict(tower)
    sd.pop("visual.transformer.2.attn.to_qkv.bias")
    path = tmp_path / "clip.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"clip.pth: .*missing \['visual.transformer.2.attn.to_qkv.bias'\], "
                                              r"unexpected \[\]"):
        load_clip_vision(path, config=TINY_CLIP_OVERRIDES)
    # the head count of an unreleased width cannot be guessed
    good = save_official_pth(tower, tmp_path / "good.pth")
    with pytest.raises(CheckpointError, match=r"good.pth: cannot tell the number of attention heads .*width-64"):
        load_clip_vision(good)
    with pytest.raises(CheckpointError, match="not divisible by num_attention_heads=5"):
        load_clip_vision(good, config={"num_attention_heads": 5})
    with pytest.raises(ValueError, match="unknown CLIP config override"):
        load_clip_vision(good, config={"heads": 4})
    with pytest.raises(ValueError, match="dtype must be fp32, fp16 or bf16"):
        load_clip_vision(good, config=TINY_CLIP_OVERRIDES, dtype="fp8_e4m3fn")


def test_hf_folder_config_checked(tower, tmp_path):
    folder = save_hf_folder(tower, tmp_path / "hf")
    # hub folders also hold open_clip copies of the weights: model.safetensors is the one read
    save_safetensors({"visual.conv1.weight": torch.zeros(2)}, folder / "open_clip_model.safetensors")
    assert load_clip_vision(folder).config.num_hidden_layers == LAYERS
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"num_hidden_layers": 3', '"num_hidden_layers": 4'))
    with pytest.raises(CheckpointError, match="config.json says num_hidden_layers=4 but the weights have"):
        load_clip_vision(folder)
    (folder / "config.json").write_text('{"model_type": "t5", "d_model": 64}')
    with pytest.raises(CheckpointError, match=r"config.json: describes a 't5' model"):
        load_clip_vision(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="found no weights"):
        load_clip_vision(empty)


def test_bad_images(tower):
    nchw = torch.zeros(1, 3, 32, 32)
    for bad, match in [
        (torch.zeros(1, 32, 32, 3), r"looks like a ComfyUI IMAGE \[N, H, W, C\]; use encode_comfy_image"),
        (torch.zeros(1, 4, 32, 32), r"3 \(RGB\) channels, got 4"),
        (torch.zeros(3, 32, 32), r"got a 3-D tensor"),
        (torch.full((1, 3, 32, 32), 200.0), r"values in \[200, 200\].*0\.\.255: x/127.5-1"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "as a floating tensor, got torch.uint8"),
    ]:
        with pytest.raises(ValueError, match=match):
            tower.encode(bad)
    for bad, match in [
        (nchw, r"this looks like \[N, 3, H, W\]; use encode\(\)"),
        (torch.full((1, 32, 32, 3), 255.0), r"divide by 255"),
    ]:
        with pytest.raises(ValueError, match=match):
            tower.encode_comfy_image(bad)
    with pytest.raises(TypeError, match="as a torch.Tensor"):
        tower.encode([nchw])
    assert tower.encode(nchw).shape == (1, TOKENS, WIDTH)  # the valid twin passes
