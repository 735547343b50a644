"""Demo nodes outside ComfyUI: the demo models go through the pack's own Text Encode, Empty Latent,
Sampler, VAE Encode and VAE Decode nodes, and the Demo Dataset node feeds the trainer's protocol."""
import importlib

import pytest
import torch
from test_nodes import import_pack

from wan_core.demo import data as dd
from wan_core.generation.pipeline import Conditioning, generate, seeded_noise
from wan_core.models.text_encoder import pad_context
from wan_core.models.vae import denormalize_latent
from wan_core.testing.vae import random_vae


def pack_module(name):
    return importlib.import_module(f"{import_pack().__name__}.nodes.{name}")


def node(name):
    module = "demo" if name.startswith("WanFlowDemo") else None
    if module:
        return getattr(pack_module(module), name)()
    return import_pack().NODE_CLASS_MAPPINGS[name]()


@pytest.fixture(scope="module")
def demo_models():
    return node("WanFlowDemoModels").make(7)


@pytest.mark.parametrize("name", ["WanFlowDemoModels", "WanFlowDemoDataset"])
def test_v1_contract(name):
    cls = getattr(pack_module("demo"), name)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional"} and spec["required"]
    for key, (kind, options) in spec["required"].items():
        assert isinstance(kind, (str, list)) and options.get("tooltip"), key
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert callable(getattr(cls, cls.FUNCTION)) and cls.CATEGORY.startswith("WanFlow/") and cls.DESCRIPTION


def test_demo_models_are_handles_with_roles(demo_models):
    model, vae, words = demo_models
    assert (model.role, vae.role, words.role) == ("diffusion", "vae", "text_encoder")
    cfg = model.config
    assert (cfg.model_type, cfg.in_dim, cfg.out_dim, cfg.text_len) == ("t2v", 16, 16, 16)
    again = node("WanFlowDemoModels").make(7)[0]
    assert all(torch.equal(a, b) for a, b in zip(model.module.state_dict().values(), again.module.state_dict().values()))


@torch.no_grad()
def test_generation_chain_through_the_packs_nodes(demo_models):
    model, vae, words = demo_models
    prompt = dd.held_out_prompts()[0]
    pos, neg = node("WanFlowTextEncode").encode(words, prompt, "", "wan2.1-t2v")
    assert pos[0][0].shape == (1, 512, model.config.text_dim) and pos[0][1]["wanflow_tokens"] == 6
    assert neg[0][1]["wanflow_tokens"] > 6  # the empty negative became the official default negative prompt
    (latent,) = node("WanFlowEmptyLatent").empty(model, dd.WIDTH, dd.HEIGHT, dd.FRAMES, 1)
    assert latent["samples"].shape == (1, 16, 5, 8, 8)
    (sampled,) = node("WanFlowSampler").sample(model, pos, neg, latent, 11, 3, "euler", 3.0, 1.0, 1.0)
    context = pad_context(words.module.encode([prompt]))
    expected = generate(model.module, seeded_noise((1, 16, 5, 8, 8), 11), Conditioning(context), steps=3, shift=3.0,
                        guide_scale=1.0, solver="euler")
    assert torch.allclose(sampled["samples"], denormalize_latent(expected), atol=1e-5)
    (images,) = node("WanFlowVAEDecode").decode(sampled, vae)
    assert images.shape == (dd.FRAMES, dd.HEIGHT, dd.WIDTH, 3) and 0 <= images.min() and images.max() <= 1
    direct = dd.to_frames(vae.module.decode(expected)[0])
    assert torch.allclose(images, direct, atol=1e-5)


@torch.no_grad()
def test_vae_nodes_round_trip_a_ground_truth_clip(demo_models):
    _, vae, _ = demo_models
    clip = dd.render_clip("green", "up", dd.Motion(x=30.0, y=46.0, size=16.0, speed=2.0))
    (latent,) = node("WanFlowVAEEncode").encode(clip, vae)
    assert latent["samples"].shape == (1, 16, 5, 8, 8)
    assert torch.allclose(latent["samples"], vae.module.encode(dd.to_video(clip), normalized=False), atol=1e-6)
    (images,) = node("WanFlowVAEDecode").decode(latent, vae)
    assert dd.score_clip(images, dd.caption("green", "up"))
    assert (images - clip).abs().mean() < 0.02  # block averaging blurs only the square's edges
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        node("WanFlowVAEEncode").encode(clip[:16], vae)


def test_demo_dataset_node(demo_models):
    _, vae, words = demo_models
    dataset, held_out = node("WanFlowDemoDataset").make(vae, words, 2, 5)
    assert held_out.splitlines() == dd.held_out_prompts()
    assert len(dataset) == 2 * len(dd.TRAIN) and dataset.skipped == []
    item = dataset[0]
    assert item["latent"].shape == (16, 5, 8, 8) and item["context"].shape == (6, 32)
    assert dataset.bucket_of(0) == (16, 5, 8, 8)
    reference = dd.make_dataset(vae.module, words.module, clips_per_combo=2, seed=5)
    assert torch.equal(dataset.latents, reference.latents)


def test_demo_dataset_refuses_other_models(demo_models):
    _, vae, words = demo_models
    real_vae = pack_module("comfy_bridge").ModelHandle(random_vae("2.1", seed=0), role="vae")
    with pytest.raises(ValueError, match="demo codec and word encoder"):
        node("WanFlowDemoDataset").make(real_vae, words, 1, 0)
    with pytest.raises(ValueError, match="demo codec and word encoder"):
        node("WanFlowDemoDataset").make(vae, "not an encoder", 1, 0)
