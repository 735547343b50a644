"""Compute dtypes, storage dtypes and low-memory mode."""
import pytest
import torch
import torch.nn.functional as F
from conftest import KINDS, assert_close, run

from wan_core import load_dit
from wan_core.formats.dit import comfyui_state_dict, save_official
from wan_core.io.write import save_safetensors
from wan_core.testing.dit import example_inputs


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_compute_agrees_with_fp32(tmp_path, tiny_models, kind):
    model = tiny_models[kind]
    folder = save_official(model.state_dict(), model.config, tmp_path / "m")
    bf16 = load_dit(folder, dtype=torch.bfloat16)
    assert bf16.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    inputs = example_inputs(model.config)
    out32, out16 = run(model, inputs), run(bf16, inputs)
    assert out16.dtype == torch.float32  # the output is fp32 whatever the compute dtype
    assert cosine(out16, out32) > 0.999
    assert not torch.equal(out16, out32)  # it really computed in bf16


def test_fp16_compute_agrees_with_fp32(tmp_path, tiny_models):
    model = tiny_models["t2v"]
    folder = save_official(model.state_dict(), model.config, tmp_path / "m")
    out16 = run(load_dit(folder, dtype="fp16"), example_inputs(model.config))
    assert cosine(out16, run(model, example_inputs(model.config))) > 0.999


def test_low_memory_keeps_fp8_and_matches_dequantized(tmp_path, tiny_models):
    model = tiny_models["i2v"]
    tensors = comfyui_state_dict(model.state_dict(), fp8="scaled")
    path = save_safetensors(tensors, tmp_path / "scaled.safetensors")
    full = load_dit(path, dtype=torch.float32)
    low = load_dit(path, dtype=torch.float32, weight_dtype="file")
    q = low.blocks[1].self_attn.q
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale is not None
    assert low.blocks[1].norm3.weight.dtype == torch.float32  # only block Linear weights stay fp8
    bytes_low = sum(p.numel() * p.element_size() for p in low.parameters())
    bytes_full = sum(p.numel() * p.element_size() for p in full.parameters())
    assert bytes_low < 0.75 * bytes_full
    inputs = example_inputs(model.config)
    assert_close(run(low, inputs), run(full, inputs), tol=1e-6, what="fp8 low-memory vs dequantized")


@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "fp8_e5m2", "bf16"])
def test_quantize_on_load(tmp_path, tiny_models, storage):
    model = tiny_models["t2v"]
    folder = save_official(model.state_dict(), model.config, tmp_path / "m")
    low = load_dit(folder, dtype=torch.float32, weight_dtype=storage)
    assert str(low.blocks[0].ffn[0].weight.dtype).endswith(storage.replace("fp8_", "float8_").replace("bf16", "bfloat16"))
    assert low.patch_embedding.weight.dtype == torch.float32
    inputs = example_inputs(model.config)
    ref = run(model, inputs)
    # per-tensor fp8 keeps ~2-3 significant bits: close in direction, not in value
    assert cosine(run(low, inputs), ref) > (0.995 if storage == "bf16" else 0.97)


def test_per_token_timestep_equals_scalar_when_uniform(tiny_models):
    model = tiny_models["ti2v"]
    inputs = example_inputs(model.config)
    per_token = dict(inputs, timestep=torch.full_like(inputs["timestep"], 321.0))
    scalar = dict(inputs, timestep=torch.tensor([321.0]))
    assert_close(run(model, per_token), run(model, scalar), tol=1e-6, what="uniform per-token t")
    assert not torch.allclose(run(model, inputs), run(model, scalar), atol=1e-3)


def test_compute_dtype_follows_model_to(tmp_path, tiny_models):
    model = tiny_models["t2v"]
    loaded = load_dit(save_official(model.state_dict(), model.config, tmp_path / "m"))
    assert loaded.compute_dtype == torch.float32
    assert loaded.to(torch.bfloat16).compute_dtype == torch.bfloat16
    inputs = example_inputs(model.config)
    assert cosine(run(loaded, inputs), run(model, inputs)) > 0.999
