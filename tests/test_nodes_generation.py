"""Generation nodes outside ComfyUI: Empty Latent, Image To Video and Sampler give what wan_core gives,
take native-format conditioning, and fail clearly on bad input."""
import importlib

import pytest
import torch
from test_nodes import import_pack

from wan_core.generation.conditioning import concat_y, first_frame_latent, image_condition, resize_image
from wan_core.generation.pipeline import Conditioning, generate, seeded_noise
from wan_core.models.vae import denormalize_latent, normalize_latent
from wan_core.testing.dit import random_dit
from wan_core.testing.vae import random_vae


def pack_module(name):
    return importlib.import_module(f"{import_pack().__name__}.nodes.{name}")


def node(name):
    return import_pack().NODE_CLASS_MAPPINGS[name]()


def handle(module, role="diffusion"):
    return pack_module("comfy_bridge").ModelHandle(module, role=role)


def conditioning(cfg, seed, tokens):
    ctx = torch.zeros(1, 512, cfg.text_dim)
    ctx[:, :tokens] = torch.randn(1, tokens, cfg.text_dim, generator=torch.Generator().manual_seed(seed))
    return [[ctx, {"wanflow_tokens": tokens}]]


def image(h=40, w=40, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def t2v():
    return random_dit("t2v", seed=31)


def test_empty_latent_shapes_and_checks(t2v):
    (lat,) = node("WanFlowEmptyLatent").empty(handle(t2v), 96, 64, 9, 2)
    assert lat["samples"].shape == (2, 16, 3, 8, 12) and lat["samples"].abs().sum() == 0
    (lat,) = node("WanFlowEmptyLatent").empty(handle(random_dit("ti2v", seed=1)), 96, 64, 5, 1)
    assert lat["samples"].shape == (1, 48, 2, 4, 6)
    with pytest.raises(ValueError, match="multiples of 32.*width 80"):
        node("WanFlowEmptyLatent").empty(handle(random_dit("ti2v", seed=1)), 80, 64, 5, 1)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        node("WanFlowEmptyLatent").empty(handle(t2v), 96, 64, 8, 1)


@torch.no_grad()
def test_sampler_node_equals_wan_core(t2v):
    cfg = t2v.config
    pos, neg = conditioning(cfg, 1, 9), conditioning(cfg, 2, 5)
    (lat,) = node("WanFlowEmptyLatent").empty(handle(t2v), 96, 64, 9, 1)
    (out,) = node("WanFlowSampler").sample(handle(t2v), pos, neg, lat, 77, 4, "unipc", 3.0, 4.5, 1.0)
    expected = generate(t2v, seeded_noise((1, 16, 3, 8, 12), 77), Conditioning(pos[0][0], neg[0][0]), steps=4,
                        shift=3.0, guide_scale=4.5)
    assert torch.allclose(out["samples"], denormalize_latent(expected), atol=1e-5)
    # 0 = the official defaults (Wan2.1 T2V: 50 steps, shift 5, cfg 5): check with a cheap Euler run
    (auto,) = node("WanFlowSampler").sample(handle(t2v), pos, neg, lat, 77, 2, "euler", 0.0, 0.0, 1.0)
    (explicit,) = node("WanFlowSampler").sample(handle(t2v), pos, neg, lat, 77, 2, "euler", 5.0, 5.0, 1.0)
    assert torch.equal(auto["samples"], explicit["samples"])
    (other_seed,) = node("WanFlowSampler").sample(handle(t2v), pos, neg, lat, 78, 2, "euler", 5.0, 5.0, 1.0)
    assert not torch.allclose(other_seed["samples"], explicit["samples"])


@torch.no_grad()
def test_two_experts_and_denoise_through_the_node(t2v):
    low = random_dit("t2v", seed=32)
    cfg = t2v.config
    pos, neg = conditioning(cfg, 1, 9), conditioning(cfg, 2, 5)
    raw = torch.randn(1, 16, 3, 8, 12)
    (out,) = node("WanFlowSampler").sample(handle(t2v), pos, neg, {"samples": raw}, 5, 3, "heun", 12.0, 4.0, 0.6,
                                           model_low_noise=handle(low), cfg_low_noise=3.0, boundary=0.0)
    expected = generate(t2v, seeded_noise(raw.shape, 5), Conditioning(pos[0][0], neg[0][0]), steps=3, shift=12.0,
                        guide_scale=4.0, solver="heun", low_noise_model=low, guide_scale_low=3.0, boundary=0.875,
                        latent=normalize_latent(raw), denoise=0.6)
    assert torch.allclose(out["samples"], denormalize_latent(expected), atol=1e-5)


@torch.no_grad()
def test_image_to_video_i2v_and_flf(tiny_models):
    vae = random_vae("2.1", seed=4)
    model = tiny_models["flf2v"]
    cfg = model.config
    pos, neg = conditioning(cfg, 1, 9), conditioning(cfg, 2, 5)

    class FakeClip:  # the DiT only sees 1280-wide features; the real encoder is tested elsewhere
        seen = []

        def encode(self, images):
            self.seen.append(images)
            return images.mean(dim=(1, 2, 3))[:, None, None].expand(images.shape[0], 257, 1280).contiguous()

    start, end = image(40, 60, 1), image(40, 60, 2)
    start[0, :, :30] = 1.0  # a hard edge: the bicubic resize overshoots [-1, 1] (what the VAE gets, as official)
    start[0, :, 30:] = 0.0
    p, n, lat = node("WanFlowImageToVideo").condition(pos, neg, handle(vae, "vae"), start, 96, 64, 9, 1,
                                                      clip_vision=handle(FakeClip(), "clip_vision"), end_image=end)
    first = resize_image(start.movedim(-1, 1) * 2 - 1, 64, 96)
    last = resize_image(end.movedim(-1, 1) * 2 - 1, 64, 96)
    image_latent, known = image_condition(vae, first, last, 9)
    extras = p[0][1]
    assert torch.allclose(extras["concat_latent_image"], image_latent)
    assert torch.equal(extras["concat_mask"], 1 - known)  # ComfyUI's convention: 0 = given frame
    assert extras["clip_vision_output"].penultimate_hidden_states.shape == (1, 514, 1280)
    # CLIP sees the original frames (official), not the resized ones
    assert torch.equal(FakeClip.seen[-1], torch.cat([start, end]).movedim(-1, 1) * 2 - 1)
    assert first.min() < -1 or first.max() > 1
    assert n[0][1]["concat_latent_image"] is extras["concat_latent_image"] and torch.equal(p[0][0], pos[0][0])
    assert lat["samples"].shape == (1, 16, 3, 8, 12)

    (out,) = node("WanFlowSampler").sample(handle(model), p, n, lat, 3, 3, "euler", 16.0, 5.0, 1.0)
    cond = Conditioning(pos[0][0], neg[0][0], extras["clip_vision_output"].penultimate_hidden_states,
                        concat_y(vae.normalize(image_latent), known))
    expected = generate(model, seeded_noise(lat["samples"].shape, 3), cond, steps=3, shift=16.0, guide_scale=5.0,
                        solver="euler")
    assert torch.allclose(out["samples"], denormalize_latent(expected), atol=1e-5)

    # ComfyUI's native WanImageToVideo stores a 1-channel mask per latent frame: same y
    native = [[pos[0][0], {**extras, "concat_mask": (1 - known)[:, :1]}]]
    native_neg = [[neg[0][0], native[0][1]]]
    (out_native,) = node("WanFlowSampler").sample(handle(model), native, native_neg, lat, 3, 3, "euler", 16.0, 5.0, 1.0)
    y_native = concat_y(vae.normalize(image_latent), known[:, :1])
    assert not torch.equal(y_native, cond.y)  # the FLF end frame differs per channel...
    assert out_native["samples"].shape == out["samples"].shape  # ...but the format is accepted

    with pytest.raises(ValueError, match="CLIP vision"):
        no_clip = [[pos[0][0], {k: v for k, v in extras.items() if k != "clip_vision_output"}]]
        node("WanFlowSampler").sample(handle(model), no_clip, no_clip, lat, 3, 1, "euler", 16.0, 5.0, 1.0)
    with pytest.raises(ValueError, match="start image"):
        node("WanFlowSampler").sample(handle(tiny_models["i2v-2.2"]), pos, neg, lat, 3, 1, "euler", 5.0, 5.0, 1.0)


@torch.no_grad()
def test_image_to_video_ti2v_keeps_first_frame(tiny_models):
    vae = random_vae("2.2", seed=6)
    model = tiny_models["ti2v"]
    cfg = model.config
    pos, neg = conditioning(cfg, 1, 9), conditioning(cfg, 2, 5)
    start = image(64, 96, 3)
    p, n, lat = node("WanFlowImageToVideo").condition(pos, neg, handle(vae, "vae"), start, 96, 64, 9, 2)
    assert p is pos and n is neg
    raw, mask = first_frame_latent(vae, start.movedim(-1, 1) * 2 - 1, 9)
    assert lat["samples"].shape == (2, 48, 3, 4, 6) and torch.allclose(lat["samples"][1:], raw)
    assert torch.equal(lat["noise_mask"], mask)
    (out,) = node("WanFlowSampler").sample(handle(model), p, n, lat, 8, 3, "unipc", 5.0, 5.0, 1.0)
    assert torch.allclose(out["samples"][:, :, 0], lat["samples"][:, :, 0], atol=1e-5)
    assert not torch.allclose(out["samples"][:, :, 1:], lat["samples"][:, :, 1:])
    with pytest.raises(ValueError, match="start image only"):
        node("WanFlowImageToVideo").condition(pos, neg, handle(vae, "vae"), start, 96, 64, 9, 1, end_image=start)


def test_sampler_errors(t2v, tiny_models):
    cfg = t2v.config
    pos = conditioning(cfg, 1, 9)
    sampler = node("WanFlowSampler")
    with pytest.raises(ValueError, match="48 channels"):
        sampler.sample(handle(t2v), pos, pos, {"samples": torch.zeros(1, 48, 3, 4, 6)}, 0, 1, "euler", 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one conditioning entry"):
        sampler.sample(handle(t2v), pos + pos, pos, {"samples": torch.zeros(1, 16, 3, 8, 12)}, 0, 1, "euler", 1.0, 1.0, 1.0)
    wide = [[torch.zeros(1, 512, 4096), {}]]
    with pytest.raises(ValueError, match="4096 wide"):
        sampler.sample(handle(t2v), wide, wide, {"samples": torch.zeros(1, 16, 3, 8, 12)}, 0, 1, "euler", 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="noise_mask"):
        sampler.sample(handle(t2v), pos, pos, {"samples": torch.zeros(1, 16, 3, 8, 12), "noise_mask": torch.ones(1, 1, 2, 8, 12)},
                       0, 1, "euler", 1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="WanFlow model"):
        node("WanFlowEmptyLatent").empty("not a model", 96, 64, 9, 1)
