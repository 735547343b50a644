"""Layout and variant detection, sources (file, shards, folders), config overrides."""
import json

import pytest
import torch
from conftest import run

from wan_core import load_dit, load_dit_config
from wan_core.formats.dit import save_official
from wan_core.io.write import save_safetensors
from wan_core.testing.dit import example_inputs, random_dit


@pytest.mark.parametrize("kind,model_type,variant", [
    ("t2v", "t2v", "wan2.1-t2v-dim256"),
    ("i2v", "i2v", "wan2.1-i2v-14b"),
    ("flf2v", "flf2v", "wan2.1-flf2v-14b"),
    ("ti2v", "ti2v", "wan2.2-ti2v-5b"),
    ("i2v-2.2", "i2v", "wan2.2-i2v-a14b"),
])
def test_variant_detection(tmp_path, tiny_models, kind, model_type, variant):
    model = tiny_models[kind]
    path = save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    cfg = load_dit_config(path)
    assert (cfg.model_type, cfg.variant) == (model_type, variant)
    assert (cfg.in_dim, cfg.out_dim, cfg.dim, cfg.num_heads, cfg.num_layers, cfg.ffn_dim, cfg.text_dim) == (
        model.config.in_dim, model.config.out_dim, 256, 2, 2, 96, 64)


def test_expert_from_file_name(tmp_path, tiny_models):
    model = tiny_models["i2v-2.2"]
    path = save_safetensors(model.state_dict(), tmp_path / "wan2.2_i2v_low_noise_14B_fp16.safetensors")
    assert load_dit_config(path).extras["expert"] == "low"
    path = save_safetensors(model.state_dict(), tmp_path / "high_noise_model" / "diffusion_pytorch_model.safetensors")
    assert load_dit(path.parent).config.extras["expert"] == "high"


def test_list_of_shards_and_pipeline_root(tmp_path, tiny_models):
    model = tiny_models["t2v"]
    folder = save_official(model.state_dict(), model.config, tmp_path / "transformer", shards=2)
    shards = sorted(folder.glob("*-of-*.safetensors"))
    inputs = example_inputs(model.config)
    assert torch.equal(run(load_dit(shards), inputs), run(model, inputs))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert torch.equal(run(load_dit(tmp_path), inputs), run(model, inputs))


def test_num_heads_from_config_json_and_override(tmp_path):
    model = random_dit("t2v", dim=192, num_heads=3, ffn_dim=64)  # head_dim 64: dim // 128 would be wrong
    folder = save_official(model.state_dict(), model.config, tmp_path / "m")
    inputs = example_inputs(model.config)
    assert load_dit(folder).config.num_heads == 3
    single = tmp_path / "single.safetensors"
    save_safetensors(model.state_dict(), single)
    with pytest.raises(ValueError, match="num_heads"):
        load_dit(single)
    overridden = load_dit(single, config={"num_heads": 3})
    assert torch.equal(run(overridden, inputs), run(model, inputs))
    assert overridden.config["num_heads"] == 3  # dict-style access, like the official config


def test_config_override_text_len(tmp_path, tiny_models):
    model = tiny_models["t2v"]
    path = save_safetensors(model.state_dict(), tmp_path / "m.safetensors")
    short = load_dit(path, config={"text_len": 64})
    inputs = example_inputs(model.config)
    assert short.config.text_len == 64
    assert not torch.allclose(run(short, inputs), run(model, inputs), atol=1e-4)  # fewer padding rows attended
