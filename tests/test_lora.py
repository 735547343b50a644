"""wan_core.lora: trainable adapters (hooks, merge, autocast, checkpointing, native save) and loading
LoRA files of every common key style onto tiny Wan DiTs."""
import copy
import functools
import re

import pytest
import torch
from conftest import assert_close, example_inputs, run
from torch.utils.checkpoint import checkpoint

from wan_core.io.dtypes import quantize_fp8
from wan_core.lora.adapters import LORA_TARGET_PRESETS, add_lora, read_lora_metadata, save_lora
from wan_core.lora.keys import ParsedLora, parse_lora, to_comfy_state_dict
from wan_core.lora.merge import applied_loras, apply_lora, check_lora, lora_deltas, set_applied_loras
from wan_core.testing.dit import random_dit

BLOCK_LINEARS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2"]
OTHER_LINEARS = ["head.head", "text_embedding.0", "time_projection.1", "img_emb.proj.1"]


@pytest.fixture(scope="module")
def i2v():
    return random_dit("i2v", seed=3)


@pytest.fixture(scope="module")
def t2v():
    return random_dit("t2v", seed=4)


def fresh(model):
    return copy.deepcopy(model)


def randomize_up(net, seed=7, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in net.adapters.values():
            a.up.copy_(torch.randn(a.up.shape, generator=gen) * std)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after):
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


# --------------------------------------------------------------------------------------------
# Trainable adapters
# --------------------------------------------------------------------------------------------


def test_targets_presets_and_globs(i2v, t2v):
    m = fresh(t2v)
    net = add_lora(m, targets="attention")
    assert len(net.targets) == 8 * 2 and "blocks.1.cross_attn.o" in net.targets
    net.remove()
    net = add_lora(fresh(i2v), targets="attention+ffn")
    assert sorted(net.targets) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_LINEARS)
    assert len(add_lora(fresh(i2v), targets="cross_attention").targets) == 12
    ffn = add_lora(fresh(t2v), targets="ffn").targets
    assert ffn == ["blocks.0.ffn.0", "blocks.0.ffn.2", "blocks.1.ffn.0", "blocks.1.ffn.2"]
    net = add_lora(fresh(t2v), targets="blocks.*.self_attn.q, blocks.1.ffn.0")
    assert net.targets == ["blocks.0.self_attn.q", "blocks.1.self_attn.q", "blocks.1.ffn.0"]
    assert set(LORA_TARGET_PRESETS) == {"attention", "attention+ffn", "self_attention", "cross_attention", "ffn"}
    with pytest.raises(ValueError, match=r"matched no Linear.*blocks\.0\.self_attn\.q"):
        add_lora(fresh(t2v), targets="blocks.*.attn1.to_q")
    with pytest.raises(ValueError, match=r"\['blocks\.\*\.typo'\]"):  # one bad pattern among good ones
        add_lora(fresh(t2v), targets="blocks.*.self_attn.q, blocks.*.typo")
    with pytest.raises(ValueError, match="rank"):
        add_lora(fresh(t2v), rank=0)
    with pytest.raises(ValueError, match="already carries"):
        add_lora(m, targets="ffn")
        add_lora(m, targets="ffn")


def test_zero_up_keeps_outputs_and_state_dict_keys(i2v):
    m = fresh(i2v)
    inputs = example_inputs(m.config)
    keys, expected = list(m.state_dict()), run(m, inputs)
    net = add_lora(m, rank=4, alpha=8.0)
    assert torch.equal(run(m, inputs), expected)
    assert list(m.state_dict()) == keys  # hooks, not submodules: the official keys only
    assert all(k.startswith("adapters.") for k in net.state_dict())
    a = net.adapter("blocks.0.self_attn.q")
    assert a.down.dtype == torch.float32 and a.up.abs().sum() == 0 and a.scale == 2.0
    bound = 1 / m.config.dim ** 0.5  # kaiming-uniform a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert a.down.abs().max() <= bound and a.down.abs().max() > 0.9 * bound
    again = add_lora(fresh(i2v), rank=4, alpha=8.0, seed=0).adapter("blocks.0.self_attn.q")
    assert torch.equal(again.down, a.down)  # seeded


def test_hooked_equals_merged_and_manual(i2v):
    m = fresh(i2v)
    inputs = example_inputs(m.config)
    base = run(m, inputs)
    net = add_lora(m, rank=4, alpha=2.0)
    randomize_up(net)
    hooked = run(m, inputs)
    assert (hooked - base).abs().max() > 1e-3  # the LoRA does something
    a = net.adapter("blocks.1.ffn.2")
    manual = (i2v.blocks[1].ffn[2].weight.double() + 0.5 * a.up.double() @ a.down.double()).float()
    net.merge_into_model()
    net.remove()  # idempotent
    assert_close(run(m, inputs), hooked, 2e-5, "merged vs hooked")
    assert_close(m.blocks[1].ffn[2].weight, manual, 1e-6, "merged weight vs W + (a/r) B A")
    assert torch.equal(m.blocks[1].ffn[2].bias, i2v.blocks[1].ffn[2].bias)


def test_gradients_reach_only_the_adapters(t2v):
    m = fresh(t2v)
    inputs = example_inputs(m.config)
    net = add_lora(m, rank=2)
    m(**inputs).square().mean().backward()
    a = net.adapter("blocks.0.cross_attn.v")
    assert a.up.grad.abs().sum() > 0 and a.down.grad.abs().sum() == 0  # up = 0: nothing flows to down yet
    randomize_up(net)
    net.zero_grad()
    m(**inputs).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is None and not p.requires_grad for p in m.parameters())


def test_bf16_autocast_and_bf16_base_model(t2v):
    m = fresh(t2v)
    inputs = example_inputs(m.config)
    net = add_lora(m, rank=4)
    randomize_up(net)
    reference = run(m, inputs)  # fp32 everywhere
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(**inputs)
    out.square().mean().backward()
    assert net.adapter("blocks.0.self_attn.q").up.grad.dtype == torch.float32
    # measured max |Δ| 1.5e-2 (bf16 autocast, outputs up to ~3.8); bound ~3x. assert_close's rtol would add
    # up to 0.4 more, so the bound is on the absolute difference alone
    err = (out.float() - reference).abs().max().item()
    assert 0 < err < 0.05, f"bf16 autocast vs fp32: max abs diff {err:.3e}"
    # a bf16 base model without autocast: the adapter computes in fp32, its result is cast to bf16
    m16 = m.to(torch.bfloat16)
    net_dtype = {p.dtype for p in net.parameters()}
    assert net_dtype == {torch.float32}
    out16 = run(m16, inputs)
    err = (out16 - reference).abs().max().item()
    assert 0 < err < 0.05, f"bf16 weights vs fp32: max abs diff {err:.3e}"  # measured 1.3e-2; bound ~4x
    net.remove()
    assert (run(m16, inputs) - out16).abs().max() > 1e-3  # the adapter contributed


def test_gradient_checkpointing_gives_the_same_gradients(t2v):
    def grads(use_checkpoint):
        m = fresh(t2v)
        net = add_lora(m, rank=3, dropout=0.25)
        randomize_up(net)
        net.train()
        if use_checkpoint:
            for block in m.blocks:
                block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        torch.manual_seed(5)
        m(**example_inputs(m.config)).square().mean().backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for k in plain:
        assert_close(checkpointed[k], plain[k], 1e-6, k)


def test_save_apply_round_trip_and_resume(i2v, tmp_path):
    m = fresh(i2v)
    inputs = example_inputs(m.config)
    net = add_lora(m, rank=4, alpha=3.0)
    randomize_up(net)
    hooked = run(m, inputs)
    path = save_lora(tmp_path / "loras" / "mine.safetensors", net,
                     {"wanflow.base_model": "tiny.safetensors", "wanflow.variant": "tiny-i2v", "wanflow.steps": 100})
    meta = read_lora_metadata(path)
    assert meta["wanflow.steps"] == "100" and meta["wanflow.rank"] == "4" and meta["wanflow.alpha"] == "3.0"
    assert meta["ss_network_dim"] == "4" and meta["wanflow.format_version"] == "1"
    sd = parse_lora(str(path))
    assert not sd.unrecognized and len(sd.entries) == 24
    native = re.compile(r"^diffusion_model\.blocks\.[01]\.(self_attn|cross_attn|ffn)\.(q|k|v|o|k_img|v_img|0|2)"
                        r"\.(lora_up\.weight|lora_down\.weight|alpha)$")
    file_sd = net.comfy_state_dict()
    assert len(file_sd) == 72 and all(native.match(k) for k in file_sd)
    assert file_sd["diffusion_model.blocks.0.ffn.0.lora_down.weight"].shape == (4, 256)
    assert file_sd["diffusion_model.blocks.0.ffn.0.lora_up.weight"].shape == (96, 4)
    assert file_sd["diffusion_model.blocks.0.ffn.0.alpha"].ndim == 0

    other = fresh(i2v)
    report = apply_lora(other, str(path))
    assert report.matched_count == 24 and not report.unmatched and not report.warnings
    assert_close(run(other, inputs), hooked, 2e-5, "applied file vs hooked network")

    up = net.adapter("blocks.0.ffn.0").up
    kept = up.detach().clone()
    with torch.no_grad():
        up.add_(1.0)  # the state dict is a snapshot, not a view
    assert torch.equal(file_sd["diffusion_model.blocks.0.ffn.0.lora_up.weight"], kept)
    with torch.no_grad():
        up.copy_(kept)

    resumed = add_lora(fresh(i2v), rank=4, alpha=3.0, seed=99)
    resumed.load_comfy_state_dict(file_sd)
    for k, p in net.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], p), k
    with pytest.raises(ValueError, match="alpha"):
        add_lora(fresh(i2v), rank=4, alpha=1.0).load_comfy_state_dict(file_sd)
    with pytest.raises(ValueError, match="not targeted"):
        add_lora(fresh(i2v), rank=4, alpha=3.0, targets="ffn").load_comfy_state_dict(file_sd)


# --------------------------------------------------------------------------------------------
# Every key style gives the same weights
# --------------------------------------------------------------------------------------------

# official path -> diffusers path, written out here independently of the loader's table
DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
             "cross_attn.v_img": "attn2.add_v_proj", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
             "head.head": "proj_out", "text_embedding.0": "condition_embedder.text_embedder.linear_1",
             "time_projection.1": "condition_embedder.time_proj",
             "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj"}


def diffusers_path(path):
    m = re.match(r"^(blocks\.\d+)\.(.+)$", path)
    return f"{m.group(1)}.{DIFFUSERS[m.group(2)]}" if m else DIFFUSERS[path]


def suffixes(up, down, alpha=".alpha"):
    return {"up": up, "down": down, "alpha": alpha}


UP_DOWN = suffixes(".lora_up.weight", ".lora_down.weight")
B_A = suffixes(".lora_B.weight", ".lora_A.weight")
# style -> (the name a module path gets, the suffix of each part)
FORMATS = {
    "native": (lambda p: f"diffusion_model.{p}", UP_DOWN),
    "comfy_checkpoint_prefix": (lambda p: f"model.diffusion_model.{p}", UP_DOWN),
    "lora_AB": (lambda p: f"diffusion_model.{p}", B_A),
    "lora_AB_default": (lambda p: f"diffusion_model.{p}", suffixes(".lora_B.default.weight", ".lora_A.default.weight")),
    "lora_AB_no_weight": (lambda p: f"diffusion_model.{p}", suffixes(".lora_B", ".lora_A")),
    "lora_dot_up": (lambda p: f"diffusion_model.{p}", suffixes(".lora.up.weight", ".lora.down.weight")),
    "lora_underscore_up": (lambda p: f"diffusion_model.{p}", suffixes("_lora.up.weight", "_lora.down.weight")),
    "lora_linear_layer": (lambda p: f"diffusion_model.{p}",
                          suffixes(".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight")),
    "kohya_musubi": (lambda p: f"lora_unet_{p.replace('.', '_')}", UP_DOWN),
    "wan_fun": (lambda p: f"lora_unet__{p.replace('.', '_')}", UP_DOWN),
    "diffusers": (lambda p: f"transformer.{diffusers_path(p)}", B_A),
    "peft_base_model": (lambda p: f"base_model.model.{diffusers_path(p)}", B_A),
    "diffsynth": (lambda p: p, suffixes(".lora_B.default.weight", ".lora_A.default.weight")),
    "diffsynth_pipe_dit": (lambda p: f"pipe.dit.{p}", B_A),
    "diffsynth_model": (lambda p: f"model.{p}", B_A),
}


def key(style, path, part):
    name, parts = FORMATS[style]
    return name(path) + parts[part]


PATHS = [f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_LINEARS] + OTHER_LINEARS


def make_lora(model, paths=PATHS, rank=3, alpha=1.5, seed=11, style="native", alpha_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for p in paths:
        w = model.get_submodule(p).weight
        sd[key(style, p, "up")] = torch.randn(w.shape[0], rank, generator=gen) * 0.1
        sd[key(style, p, "down")] = torch.randn(rank, w.shape[1], generator=gen) * 0.1
        if alpha is not None:
            sd[key(style, p, "alpha")] = torch.tensor(alpha, dtype=alpha_dtype)
    return sd


@pytest.fixture(scope="module")
def native_result(i2v):
    m = fresh(i2v)
    report = apply_lora(m, make_lora(i2v), strength=0.8)
    assert report.matched_count == len(PATHS) and not report.unmatched
    return weights(m)


@pytest.mark.parametrize("style", [s for s in FORMATS if s != "native"])
def test_every_key_style_gives_the_native_weights(i2v, native_result, style):
    m = fresh(i2v)
    report = apply_lora(m, make_lora(i2v, style=style), strength=0.8)
    assert report.matched_count == len(PATHS), str(report)
    assert not report.unmatched and not report.warnings, str(report)
    after = weights(m)
    for k in native_result:
        assert torch.equal(after[k], native_result[k]), f"{style}: {k}"


def test_files_safetensors_and_pt(i2v, native_result, tmp_path):
    from safetensors.torch import save_file

    sd = make_lora(i2v, style="kohya_musubi")
    save_file({k: v.to(torch.bfloat16) if v.ndim else v for k, v in sd.items()}, tmp_path / "bf16.safetensors")
    torch.save(sd, tmp_path / "lora.pt")
    m = fresh(i2v)
    apply_lora(m, str(tmp_path / "lora.pt"), strength=0.8)
    assert all(torch.equal(weights(m)[k], v) for k, v in native_result.items())
    m = fresh(i2v)
    report = apply_lora(m, tmp_path / "bf16.safetensors", strength=0.8)
    assert report.source == "bf16.safetensors"
    # bf16 factors: close to the fp32 result, not equal
    assert_close(m.blocks[0].self_attn.q.weight, native_result["blocks.0.self_attn.q.weight"], 2e-3, "bf16 file")


def test_native_weights_are_w_plus_scaled_up_down(i2v, native_result):
    sd = make_lora(i2v)
    up = sd["diffusion_model.blocks.1.cross_attn.k_img.lora_up.weight"].double()
    down = sd["diffusion_model.blocks.1.cross_attn.k_img.lora_down.weight"].double()
    expected = i2v.blocks[1].cross_attn.k_img.weight.double() + 0.8 * (1.5 / 3) * up @ down
    assert_close(native_result["blocks.1.cross_attn.k_img.weight"].double(), expected, 1e-6, "W + s a/r BA")
    assert torch.equal(native_result["blocks.0.norm3.weight"], i2v.blocks[0].norm3.weight)


def test_int64_alpha_and_missing_alpha(t2v):
    paths = ["blocks.0.self_attn.q", "blocks.1.ffn.0"]
    float_alpha, int_alpha = fresh(t2v), fresh(t2v)
    apply_lora(float_alpha, make_lora(t2v, paths, rank=3, alpha=6.0))
    apply_lora(int_alpha, make_lora(t2v, paths, rank=3, alpha=6, alpha_dtype=torch.int64))
    assert all(torch.equal(a, b) for a, b in zip(float_alpha.parameters(), int_alpha.parameters()))
    assert parse_lora(make_lora(t2v, paths, alpha=6, alpha_dtype=torch.int64)).entries[paths[0]].alpha == 6.0

    sd = make_lora(t2v, paths, rank=3, alpha=None)
    m = fresh(t2v)
    apply_lora(m, sd, strength=0.5)
    up, down = sd["diffusion_model.blocks.1.ffn.0.lora_up.weight"], sd["diffusion_model.blocks.1.ffn.0.lora_down.weight"]
    assert_close(m.blocks[1].ffn[0].weight - t2v.blocks[1].ffn[0].weight, 0.5 * up @ down, 1e-6, "no alpha = scale 1")
    # the explicit-alpha result differs from the scale-1 one by the factor alpha / rank = 2
    delta_alpha = float_alpha.blocks[1].ffn[0].weight - t2v.blocks[1].ffn[0].weight
    assert_close(delta_alpha, 2.0 * up @ down, 1e-6, "alpha 6, rank 3")


def test_diff_and_diff_b(t2v):
    gen = torch.Generator().manual_seed(2)
    q = t2v.blocks[0].self_attn.q
    sd = {
        "diffusion_model.blocks.0.self_attn.q.diff": torch.randn(q.weight.shape, generator=gen) * 0.01,
        "diffusion_model.blocks.0.self_attn.q.diff_b": torch.randn(q.bias.shape, generator=gen) * 0.01,
        "diffusion_model.blocks.1.modulation.diff": torch.randn(1, 6, 256, generator=gen) * 0.01,
        "diffusion_model.blocks.1.norm3.diff": torch.randn(256, generator=gen) * 0.01,
        "diffusion_model.blocks.1.norm3.diff_b": torch.randn(256, generator=gen) * 0.01,
    }
    m = fresh(t2v)
    report = apply_lora(m, sd)
    assert report.matched == ["blocks.0.self_attn.q", "blocks.1.modulation", "blocks.1.norm3"]
    assert torch.equal(m.blocks[0].self_attn.q.weight, q.weight + sd["diffusion_model.blocks.0.self_attn.q.diff"])
    assert torch.equal(m.blocks[0].self_attn.q.bias, q.bias + sd["diffusion_model.blocks.0.self_attn.q.diff_b"])
    assert torch.equal(m.blocks[1].modulation, t2v.blocks[1].modulation + sd["diffusion_model.blocks.1.modulation.diff"])
    assert torch.equal(m.blocks[1].norm3.bias, t2v.blocks[1].norm3.bias + sd["diffusion_model.blocks.1.norm3.diff_b"])
    native = to_comfy_state_dict(parse_lora(sd))
    assert set(native) == set(sd)


def test_i2v_keys_on_a_t2v_model_warn(i2v, t2v):
    m = fresh(t2v)
    report = apply_lora(m, make_lora(i2v, style="kohya_musubi"))
    assert any("image branch" in w and "k_img" in w for w in report.warnings), report.warnings
    skipped = {k for k in report.unmatched if "img" in k}
    assert "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight" in skipped
    assert "lora_unet_img_emb_proj_1.alpha" in skipped
    assert report.matched_count == len(PATHS) - 4 - 1  # 2 blocks x (k_img, v_img), img_emb.proj.1
    assert "blocks.0.cross_attn.k_img" not in report.matched and "blocks.1.ffn.2" in report.matched


def test_lora_for_another_width(t2v):
    gen = torch.Generator().manual_seed(0)
    wide = {}  # rank 1 at the 14B width: cheap to build
    for p in ("blocks.0.self_attn.q", "blocks.0.self_attn.k"):
        wide[f"diffusion_model.{p}.lora_up.weight"] = torch.randn(5120, 1, generator=gen)
        wide[f"diffusion_model.{p}.lora_down.weight"] = torch.randn(1, 5120, generator=gen)
    before = weights(t2v)
    with pytest.raises(ValueError, match=r"width 5120 = Wan 14B.*this model has dim 256"):
        apply_lora(t2v, wide)
    assert not changed(before, weights(t2v))  # nothing applied before the error
    mixed = {**wide, **make_lora(t2v, ["blocks.1.ffn.0"])}
    report = check_lora(t2v, mixed)
    assert report.matched == ["blocks.1.ffn.0"]
    assert any("5120" in w and "256" in w for w in report.warnings), report.warnings
    assert "shape mismatch" in report.unmatched["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    deep = make_lora(t2v, ["blocks.1.ffn.0"], style="kohya_musubi")
    deep = {k.replace("blocks_1", "blocks_35"): v for k, v in deep.items()} | make_lora(t2v, ["blocks.0.ffn.0"])
    assert any("beyond the model's 2" in w for w in check_lora(t2v, deep).warnings)


def test_unknown_keys_are_listed(t2v):
    sd = make_lora(t2v, ["blocks.0.ffn.0"]) | {
        "diffusion_model.blocks.0.self_attn.zz.lora_up.weight": torch.zeros(4, 1),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 1),
        "lora_unet_blocks_0_attn_nope.lora_down.weight": torch.zeros(1, 4),
        "diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.zeros(4, 1),
        "diffusion_model.blocks.0.self_attn.k.lora_up.weight": torch.zeros(256, 2),  # no down
        "random_tensor": torch.zeros(1),
    }
    report = check_lora(t2v, sd)
    why = report.unmatched
    assert "unknown module name" in why["diffusion_model.blocks.0.self_attn.zz.lora_up.weight"]
    assert "unknown module name" in why["lora_unet_blocks_0_attn_nope.lora_down.weight"]
    assert "text-encoder" in why["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"]
    assert "LoHa" in why["diffusion_model.blocks.0.self_attn.q.hada_w1_a"]
    assert "without its partner" in why["diffusion_model.blocks.0.self_attn.k.lora_up.weight"]
    assert "not a LoRA tensor name" in why["random_tensor"]
    text = str(report)
    assert "1 module(s) changed" in text and "6 file key(s) not used" in text and "random_tensor" in text
    with pytest.raises(ValueError, match="nothing in it fits"):
        check_lora(t2v, {"random_tensor": torch.zeros(1)})


def test_metadata_variant_warnings(t2v, tmp_path):
    m = fresh(t2v)
    m.config.variant = "wan2.1-t2v-1.3b"
    path = save_lora(tmp_path / "l.safetensors", make_lora(t2v, ["blocks.0.ffn.0"]),
                     {"wanflow.variant": "wan2.1-t2v-14b", "modelspec.architecture": "wan2.1-i2v-14b"})
    warnings = check_lora(m, str(path)).warnings
    assert any("trained on wan2.1-t2v-14b; this model is wan2.1-t2v-1.3b" in w for w in warnings), warnings
    assert any("modelspec.architecture" in w for w in warnings), warnings
    same = save_lora(tmp_path / "same.safetensors", make_lora(t2v, ["blocks.0.ffn.0"]),
                     {"wanflow.variant": "wan2.1-t2v-1.3b", "modelspec.architecture": "Wan 2.1 T2V 1.3B"})
    assert check_lora(m, str(same)).warnings == []


def test_fp8_weight_with_scale(t2v):
    m = fresh(t2v)
    q = m.blocks[0].self_attn.q
    w8, scale = quantize_fp8(q.weight.detach())
    q.weight = torch.nn.Parameter(w8, requires_grad=False)
    q.weight_scale = scale
    sd = make_lora(t2v, ["blocks.0.self_attn.q"], rank=2, alpha=2.0)
    up, down = (sd[f"diffusion_model.blocks.0.self_attn.q.lora_{part}.weight"] for part in ("up", "down"))
    apply_lora(m, sd)
    assert q.weight.dtype == torch.bfloat16 and q.weight_scale is None
    assert torch.equal(q.weight, (w8.float() * scale + up @ down).to(torch.bfloat16))
    out = run(m, example_inputs(m.config))  # still runs, now from the bf16 weight
    assert torch.isfinite(out).all()


def test_deltas_without_mutation_and_comfy_conversion(i2v):
    sd = make_lora(i2v, style="diffusers")
    before = weights(i2v)
    deltas = lora_deltas(i2v, sd, strength=0.8)
    assert not changed(before, weights(i2v))
    assert set(deltas) == {p + ".weight" for p in PATHS}
    m = fresh(i2v)
    apply_lora(m, sd, strength=0.8)
    for name, d in deltas.items():
        assert_close(weights(m)[name], before[name] + d, 1e-6, name)
    native = to_comfy_state_dict(parse_lora(sd))
    assert all(k.startswith("diffusion_model.") for k in native) and len(native) == 3 * len(PATHS)
    assert "diffusion_model.blocks.1.cross_attn.v_img.lora_up.weight" in native
    assert isinstance(parse_lora(native), ParsedLora) and set(parse_lora(native).entries) == set(PATHS)


def test_set_applied_loras_restores_exactly(t2v):
    m = fresh(t2v)
    q = m.blocks[1].self_attn.q
    w8, scale = quantize_fp8(q.weight.detach())
    q.weight = torch.nn.Parameter(w8, requires_grad=False)
    q.weight_scale = scale
    original = weights(m)
    a = parse_lora(make_lora(t2v, ["blocks.0.ffn.0", "blocks.1.self_attn.q"], seed=1))
    b = parse_lora(make_lora(t2v, ["blocks.0.ffn.0", "blocks.1.ffn.2"], seed=2))

    set_applied_loras(m, [(a, 1.0)])
    only_a = fresh(t2v)
    only_a.blocks[1].self_attn.q.weight = torch.nn.Parameter(w8, requires_grad=False)
    only_a.blocks[1].self_attn.q.weight_scale = scale
    apply_lora(only_a, a)
    assert all(torch.equal(x, y) for x, y in zip(m.parameters(), only_a.parameters()))
    assert q.weight.dtype == torch.bfloat16

    set_applied_loras(m, [(a, 1.0), (b, 0.5)])  # extends: only b is added
    apply_lora(only_a, b, strength=0.5)
    assert all(torch.equal(x, y) for x, y in zip(m.parameters(), only_a.parameters()))
    assert len(applied_loras(m)) == 2

    set_applied_loras(m, [(b, 0.5)])  # another list: restore, then apply
    only_b = fresh(t2v)
    apply_lora(only_b, b, strength=0.5)
    assert torch.equal(m.blocks[1].ffn[2].weight, only_b.blocks[1].ffn[2].weight)
    assert q.weight.dtype == torch.float8_e4m3fn and torch.equal(q.weight_scale, scale)  # restored fp8

    set_applied_loras(m, [])
    assert not changed(original, weights(m)) and applied_loras(m) == []
