"""Our DiT vs diffusers' WanTransformer3DModel on the same tiny random weights, in every layout.

Tolerance: fp32, atol = rtol = 1e-4 (observed ~1e-5: diffusers computes the sinusoid in fp32,
the official code - and ours - in float64).
"""
import pytest
import torch
from conftest import KINDS, assert_close, run

from wan_core import load_dit
from wan_core.formats.dit import comfyui_state_dict, save_official
from wan_core.io.write import save_pth, save_safetensors
from wan_core.testing.diffusers_reference import diffusers_forward, diffusers_model
from wan_core.testing.dit import dequantized_reference, example_inputs, random_dit

# diffusers is a test requirement (requirements-test.txt): without it these tests fail on the import inside
# diffusers_model instead of skipping the whole parity file silently


def reference_output(model_cfg, state, inputs):
    ref = diffusers_model(model_cfg, state)
    return diffusers_forward(ref, model_cfg, **inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_in_memory_model_matches_diffusers(tiny_models, kind):
    model = tiny_models[kind]
    inputs = example_inputs(model.config, batch=2)
    inputs["context"][1, 12:] = 0  # second prompt shorter: zero rows, as the text encoder delivers
    ours = run(model, inputs)
    ref = reference_output(model.config, model.state_dict(), inputs)
    assert ours.shape == ref.shape == (2, model.config.out_dim, 3, 8, 12)
    assert ref.abs().max() > 0.5  # the comparison is not between near-zero outputs
    assert_close(ours, ref, what=kind)


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_folder_loads_and_matches(tmp_path, tiny_models, kind):
    model = tiny_models[kind]
    ref = diffusers_model(model.config, model.state_dict())
    ref.save_pretrained(tmp_path / "transformer", max_shard_size="300KB")  # sharded + index json
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    loaded = load_dit(tmp_path / "transformer", dtype=torch.float32)
    assert loaded.config.extras["layout"] == "diffusers"
    assert loaded.config.model_type == model.config.model_type
    assert loaded.config.image_branch == model.config.image_branch
    for name, tensor in model.state_dict().items():  # every weight lands under its official name
        assert torch.equal(loaded.state_dict()[name], tensor), name
    inputs = example_inputs(model.config)
    assert_close(run(loaded, inputs), diffusers_forward(ref, model.config, **inputs), what=kind)


@pytest.mark.parametrize("kind", ["t2v", "i2v", "flf2v", "ti2v"])
def test_official_single_and_sharded(tmp_path, tiny_models, kind):
    model = tiny_models[kind]
    state = model.state_dict()
    inputs = example_inputs(model.config)
    expected = run(model, inputs)
    for shards in (1, 3):
        folder = save_official(state, model.config, tmp_path / f"official{shards}", shards=shards)
        loaded = load_dit(folder)
        assert loaded.config.extras["layout"] == "official"
        assert loaded.load_state_dict(state, strict=True)  # official names, strict
        assert torch.equal(run(loaded, inputs), expected)
    single = load_dit(tmp_path / "official1" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(run(single, inputs), expected)


def test_eleven_layers_sorted_numerically(tmp_path):
    """blocks.10 sorts before blocks.2 lexicographically; the loader must not mix them up."""
    model = random_dit("t2v", seed=3, num_layers=11, dim=128, num_heads=1, ffn_dim=32)
    folder = save_official(model.state_dict(), model.config, tmp_path / "m", shards=4)
    loaded = load_dit(folder)
    assert loaded.config.num_layers == 11
    inputs = example_inputs(model.config)
    assert torch.equal(run(loaded, inputs), run(model, inputs))
    ref = reference_output(model.config, model.state_dict(), inputs)
    assert_close(run(loaded, inputs), ref, what="11 layers")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_comfyui_16bit_files(tmp_path, tiny_models, prefix, dtype):
    model = tiny_models["i2v"]
    tensors = comfyui_state_dict(model.state_dict(), dtype=dtype, prefix=prefix)
    path = save_safetensors(tensors, tmp_path / "wan2.1_i2v_480p_14B_fp16.safetensors")
    loaded = load_dit(path, dtype=torch.float32)
    expected_state = dequantized_reference(tensors, prefix)
    for name, tensor in loaded.state_dict().items():  # bit-exact upcast of the stored values
        assert torch.equal(tensor, expected_state[name]), name
    inputs = example_inputs(model.config)
    ref = reference_output(model.config, expected_state, inputs)
    assert_close(run(loaded, inputs), ref, what=f"{dtype} {prefix!r}")
    assert load_dit(path).compute_dtype == dtype  # default compute dtype = the file's


@pytest.mark.parametrize("fp8", ["e4m3fn", "e5m2", "scaled"])
def test_comfyui_fp8_files(tmp_path, tiny_models, fp8):
    model = tiny_models["t2v"]
    tensors = comfyui_state_dict(model.state_dict(), dtype=torch.float16, fp8=fp8, prefix="model.diffusion_model.")
    path = save_safetensors(tensors, tmp_path / f"wan_{fp8}.safetensors")
    expected_state = dequantized_reference(tensors, "model.diffusion_model.")
    q = "blocks.0.self_attn.q.weight"
    if fp8 == "scaled":  # the scale matters: without it the weights would be off by ~100x
        assert not torch.allclose(tensors["model.diffusion_model." + q].float(), expected_state[q])
    loaded = load_dit(path, dtype=torch.float32)
    for name, tensor in loaded.state_dict().items():  # exact dequantization
        assert torch.equal(tensor, expected_state[name]), name
    inputs = example_inputs(model.config)
    assert_close(run(loaded, inputs), reference_output(model.config, expected_state, inputs), what=fp8)


def test_pth_file(tmp_path, tiny_models):
    model = tiny_models["flf2v"]
    path = save_pth({"model." + k: v for k, v in model.state_dict().items()}, tmp_path / "wan.pth")
    loaded = load_dit(path)
    assert loaded.config.model_type == "flf2v"
    inputs = example_inputs(model.config)
    assert torch.equal(run(loaded, inputs), run(model, inputs))
