"""Training nodes outside ComfyUI: files land in the model folders, the input model is untouched, the
returned model carries the training, interrupts resume, A14B writes two tagged LoRAs."""
from __future__ import annotations

import importlib

import pytest
import torch
from safetensors import safe_open
from test_nodes import import_pack
from test_training import ToyLatents

from wan_core.formats.dit import load_dit as load_dit_file
from wan_core.lora.merge import apply_lora
from wan_core.testing.dit import random_dit
from wan_core.testing.vae import random_vae


def pack_module(name):
    return importlib.import_module(f"{import_pack().__name__}.nodes.{name}")


training_nodes = pack_module("training")
ModelHandle = pack_module("comfy_bridge").ModelHandle
WanFlowTrainLoRA, WanFlowTrainFull = training_nodes.WanFlowTrainLoRA, training_nodes.WanFlowTrainFull


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("WANFLOW_OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path


def handle(seed=0, **kw):
    return ModelHandle(random_dit("t2v", seed, text_len=8, **kw), name=f"tiny{seed}.safetensors")


COMMON = dict(steps=4, learning_rate=1e-3, batch_size=2, grad_accum=1, sigma_sampling="shift", shift=5.0,
              precision="fp32", gradient_checkpointing=True, seed=0)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_train_lora_saves_a_native_lora_and_returns_the_model_with_it(folders):
    model = handle()
    base = weights(model.module)
    out = WanFlowTrainLoRA().run(model, ToyLatents(), "wanflow/test_lora", rank=4, alpha=4.0,
                                 targets="attention+ffn", **COMMON)
    trained, low, path, curve, validation = out["result"]
    assert low is None
    assert path == str((folders / "models/loras/wanflow/test_lora.safetensors").resolve())
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in keys
    assert "diffusion_model.blocks.1.ffn.2.lora_up.weight" in keys
    assert meta["wanflow.steps"] == "4" and meta["wanflow.rank"] == "4"
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.std() > 0
    assert validation.shape == (1, 64, 64, 3)

    # the returned model = base + the saved LoRA; the input model still gives the base weights
    expected = random_dit("t2v", 0, text_len=8)
    apply_lora(expected, path)
    merged = weights(trained.load())
    changed = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert changed and all(".self_attn." in k or ".cross_attn." in k or ".ffn." in k for k in changed)
    for k, v in expected.state_dict().items():
        torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6, msg=k)
    for k, v in weights(model.load()).items():
        assert torch.equal(v, base[k]), k
    assert not model.module._forward_hooks and all(not m._forward_hooks for m in model.module.modules())


def test_interrupted_lora_training_resumes_to_the_same_file(folders, monkeypatch):
    straight = WanFlowTrainLoRA().run(handle(), ToyLatents(), "straight", rank=4, alpha=4.0, targets="attention",
                                      **COMMON)["result"][2]

    real = training_nodes.TrainingRun.on_step

    class Interrupted(Exception):
        pass

    def stop_at_2(self, step, total, metrics):
        real(self, step, total, metrics)
        if step == 2:
            raise Interrupted()
    monkeypatch.setattr(training_nodes.TrainingRun, "on_step", stop_at_2)
    with pytest.raises(Interrupted):
        WanFlowTrainLoRA().run(handle(), ToyLatents(), "resumed", rank=4, alpha=4.0, targets="attention", **COMMON)
    assert (folders / "output/wanflow_training/resumed/train_state.pt").is_file()
    assert not (folders / "models/loras/resumed.safetensors").exists()
    monkeypatch.setattr(training_nodes.TrainingRun, "on_step", real)
    resumed = WanFlowTrainLoRA().run(handle(), ToyLatents(), "resumed", rank=4, alpha=4.0, targets="attention",
                                     **COMMON)["result"][2]
    with safe_open(straight, "pt") as a, safe_open(resumed, "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_two_experts_train_on_their_own_noise_ranges_and_save_tagged_loras(folders):
    """Each expert's model records the noise levels it was actually trained at (timestep / 1000 of every
    forward): the high-noise expert only σ >= boundary, the low-noise one only σ < boundary. The saved
    metadata is checked too, but it is only the label."""
    high, low = handle(0), handle(1)
    seen = {"high": [], "low": []}

    def recorder(name):
        def hook(module, args, kwargs):
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            seen[name].extend((timestep.detach().flatten().double() / 1000).tolist())
        return hook
    hooks = [high.module.register_forward_pre_hook(recorder("high"), with_kwargs=True),
             low.module.register_forward_pre_hook(recorder("low"), with_kwargs=True)]
    try:
        out = WanFlowTrainLoRA().run(high, ToyLatents(), "a14b", rank=2, alpha=2.0, targets="self_attention",
                                     model_low_noise=low, boundary=0.875, **COMMON)["result"]
    finally:
        for h in hooks:
            h.remove()
    # 4 steps x batch 2 per expert, one forward per micro-batch (no validation connected)
    assert len(seen["high"]) == len(seen["low"]) == COMMON["steps"] * COMMON["batch_size"], seen
    assert all(0.875 <= s <= 1.0 for s in seen["high"]), seen["high"]
    assert all(0.0 <= s < 0.875 for s in seen["low"]), seen["low"]
    # not a degenerate draw: the shifted sampler spreads σ inside each range
    assert max(seen["high"]) - min(seen["high"]) > 0.01 and max(seen["low"]) - min(seen["low"]) > 0.05
    paths = out[2].splitlines()
    assert [p.rsplit("/", 1)[1] for p in paths] == ["a14b_high_noise.safetensors", "a14b_low_noise.safetensors"]
    ranges = []
    for p in paths:
        with safe_open(p, "pt") as f:
            ranges.append(f.metadata()["wanflow.sigma_range"])
    assert ranges == ["0.875,1.0", "0.0,0.875"]
    assert out[1] is not None and out[1].module is low.module


def test_validation_samples_are_decoded_frames(folders):
    model = handle()
    context = torch.randn(1, 5, 64)
    positive = [[context, {}]]
    vae = ModelHandle(random_vae("2.1", 0), role="vae")
    out = WanFlowTrainLoRA().run(model, ToyLatents(), "val", rank=2, alpha=2.0, targets="attention",
                                 validation_positive=positive, validation_vae=vae, validate_every=2,
                                 validation_steps=2, **COMMON)["result"]
    frames = out[4]
    # latent [16, 2, 4, 4] decodes to 5 frames of 32x32; validations at steps 2 and 4
    assert frames.shape == (10, 32, 32, 3)
    assert frames.min() >= 0 and frames.max() <= 1 and frames.std() > 0
    assert not torch.equal(frames[:5], frames[5:])  # the LoRA changed between the two samples


def test_train_full_saves_the_model_and_leaves_the_input_alone(folders):
    model = handle()
    base = weights(model.module)
    out = WanFlowTrainFull().run(model, ToyLatents(), "wanflow/ft", save_dtype="fp32", **COMMON)["result"]
    trained, path, curve, _ = out
    for k, v in weights(model.module).items():
        assert torch.equal(v, base[k]), k
    reloaded = load_dit_file(path)
    assert reloaded.config.dim == model.config.dim
    changed = 0
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, trained.module.state_dict()[k]), k
        changed += not torch.equal(v, base[k])
    assert changed > len(base) // 2


def test_bad_inputs_are_named(folders):
    with pytest.raises(ValueError, match="channels"):
        WanFlowTrainLoRA().run(ModelHandle(random_dit("ti2v", 0, text_len=8)), ToyLatents(), "x", rank=2, alpha=2.0,
                               targets="attention", **COMMON)
    with pytest.raises(ValueError, match="relative name"):
        WanFlowTrainLoRA().run(handle(), ToyLatents(), "../escape", rank=2, alpha=2.0, targets="attention", **COMMON)
    with pytest.raises(ValueError, match="text embeddings"):
        WanFlowTrainFull().run(handle(), ToyLatents(text_dim=32), "y", save_dtype="bf16", **COMMON)
