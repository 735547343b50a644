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


def assert_cosine_gap(a, b, bound, what):
    """1 − cos(a, b) below `bound`. Each bound is set from the gap measured on these tiny models (CPU, torch 2.13),
    with the margin stated where it is used: a regression of several times the rounding error fails."""
    gap = 1 - cosine(a, b)
    assert gap < bound, f"{what}: 1 - cos = {gap:.3e} > {bound:.1e}"
    return gap


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_compute_agrees_with_fp32(tmp_path, tiny_models, kind):
    model = tiny_models[kind]
    folder = save_official(model.state_dict(), model.config, tmp_path / "m")
    bf16 = load_dit(folder, dtype=torch.bfloat16)
    assert bf16.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    inputs = example_inputs(model.config)
    out32, out16 = run(model, inputs), run(bf16, inputs)
    assert out16.dtype == torch.float32  # the output is fp32 whatever the compute dtype
    # measured 1 - cos: 5.7e-6 .. 6.3e-6 over the five variants; bound ~8x that
    assert_cosine_gap(out16, out32, 5e-5, f"bf16 compute {kind}")
    assert not torch.equal(out16, out32)  # it really computed in bf16


def test_fp16_compute_agrees_with_fp32(tmp_path, tiny_models):
    model = tiny_models["t2v"]
    folder = save_official(model.state_dict(), model.config, tmp_path / "m")
    out16 = run(load_dit(folder, dtype="fp16"), example_inputs(model.config))
    out32 = run(model, example_inputs(model.config))
    assert_cosine_gap(out16, out32, 1e-6, "fp16 compute")  # measured 9.6e-8; bound ~10x
    assert not torch.equal(out16, out32)


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
    # per-tensor fp8 keeps ~2-3 significant bits: close in direction, not in value. Measured 1 - cos:
    # e4m3fn 3.7e-5, e5m2 1.6e-4 (one mantissa bit fewer), bf16 storage 9.8e-8; bounds 6-10x those
    bound = {"fp8_e4m3fn": 3e-4, "fp8_e5m2": 1e-3, "bf16": 1e-6}[storage]
    out = run(low, inputs)
    assert_cosine_gap(out, ref, bound, f"{storage} storage")
    assert not torch.equal(out, ref)  # the weights really were rounded


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
    inputs = example_inputs(model.config)
    out32 = run(model, inputs)
    assert torch.equal(run(loaded, inputs), out32)  # fp32 file, fp32 compute: the same numbers
    assert loaded.to(torch.bfloat16).compute_dtype == torch.bfloat16  # Module.to works in place
    out16 = run(loaded, inputs)
    assert_cosine_gap(out16, out32, 5e-5, "after .to(bf16)")  # bf16 compute: measured 6.3e-6, bound ~8x
    assert not torch.equal(out16, out32)


def test_rope_is_float64_in_fp32_mode_and_fp32_in_16_bit_modes(tiny_models, monkeypatch):
    """models/dit.py WanDiT._rope: fp32 compute rotates q and k in float64 (upstream's complex128 RoPE);
    bf16 / fp16 compute rotate in fp32 (float64 would buy nothing there). Checked on the tables the
    attention actually receives, not on rope_tables' default."""
    import copy

    import wan_core.models.dit as dit

    seen = []
    real = dit.apply_rope

    def spy(x, tables):
        seen.append((x.dtype, tables[0].dtype, tables[1].dtype))
        out = real(x, tables)
        assert out.dtype == x.dtype
        return out

    monkeypatch.setattr(dit, "apply_rope", spy)
    model = tiny_models["t2v"]
    inputs = example_inputs(model.config)
    run(model, inputs)
    assert len(seen) == 2 * model.config.num_layers  # q and k of every block
    assert set(seen) == {(torch.float32, torch.float64, torch.float64)}, set(seen)
    for dtype in (torch.bfloat16, torch.float16):
        seen.clear()
        run(copy.deepcopy(model).to(dtype), inputs)
        assert len(seen) == 2 * model.config.num_layers
        assert {t[1:] for t in seen} == {(torch.float32, torch.float32)}, (dtype, set(seen))
