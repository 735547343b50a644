"""WanFlow SRPO Train outside ComfyUI: a LoRA lands in models/loras with its SRPO summary, the input
model is untouched, the returned model carries the LoRA, the reward curve and held-out images are
IMAGEs, and a second queue with the same settings resumes instead of retraining."""
from __future__ import annotations

import importlib

import pytest
import torch
from safetensors import safe_open
from test_nodes import import_pack

from wan_core.demo.codec import DemoCodec
from wan_core.demo.text import DemoTextEncoder
from wan_core.rewards.base import ColourReward
from wan_core.testing.dit import random_dit


def pack_module(name):
    return importlib.import_module(f"{import_pack().__name__}.nodes.{name}")


ModelHandle = pack_module("comfy_bridge").ModelHandle
WanFlowSRPOTrain = pack_module("srpo").WanFlowSRPOTrain


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("WANFLOW_OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path


def inputs(**kw):
    base = dict(model=ModelHandle(random_dit("t2v", 0, text_len=8, text_dim=32), name="tiny.safetensors"),
                vae=ModelHandle(DemoCodec(), name="codec", role="vae"),
                text_encoder=ModelHandle(DemoTextEncoder(32), name="words", role="text_encoder", on_cpu=True),
                reward=ColourReward(), prompts="a red square\n\na blue square\n", heldout_prompts="a green square",
                output_name="wanflow/test_srpo", steps=3, learning_rate=1e-3, lora_rank=4, width=32, height=32,
                sigma_low=0.5, sigma_high=0.85, positive_words="Real, Detailed", negative_words="Painting",
                discount_denoise_low=0.1, discount_denoise_high=0.25, discount_inversion_low=0.3,
                discount_inversion_high=0.01, seed=0, rollout_steps=3, guidance=2.0, eval_every=2, precision="fp32",
                keep="last")  # a random DiT's held-out reward need not improve in 3 steps: keep what was trained
    base.update(kw)
    return base


def test_srpo_node_saves_a_lora_and_returns_model_curve_and_images(folders):
    args = inputs()
    before = {k: v.clone() for k, v in args["model"].module.state_dict().items()}
    out = WanFlowSRPOTrain().run(**args)
    model, path, curve, images = out["result"]
    assert path == str((folders / "models/loras/wanflow/test_srpo.safetensors").resolve())
    with safe_open(path, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        ups = [f.get_tensor(k) for k in keys if k.endswith("lora_up.weight")]
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in keys
    assert max(float(u.abs().max()) for u in ups) > 0  # trained (the up-projections start at zero)
    assert meta["wanflow.steps"] == "3" and "held-out reward" in meta["wanflow.srpo.summary"]
    assert out["ui"]["text"][0].startswith(path)
    # the input model is untouched (no hooks left, same weights); the output carries the LoRA
    assert all(torch.equal(before[k], v) for k, v in args["model"].module.state_dict().items())
    x = torch.randn(1, 16, 1, 4, 4)
    t, ctx = torch.tensor([500.0]), torch.randn(1, 8, 32)
    with torch.no_grad():
        assert not torch.allclose(model.load()(x, t, ctx), args["model"].load()(x, t, ctx))
    assert curve.shape == (1, 480, 640, 3) and 0 <= float(curve.min()) and float(curve.max()) <= 1
    assert images.shape == (1, 32, 32, 3)  # one held-out prompt
    assert (folders / "output/wanflow_training/wanflow/test_srpo_srpo/srpo_state.pt").is_file()

    # queued again with the same settings: the run is already complete, nothing retrains, same file
    again = WanFlowSRPOTrain().run(**inputs())
    with safe_open(again["result"][1], "pt") as f:
        assert all(torch.equal(f.get_tensor(k), u) for k, u in
                   zip([k for k in keys if k.endswith("lora_up.weight")], ups))


def test_srpo_node_clear_errors():
    with pytest.raises(ValueError, match="held-out prompt"):
        WanFlowSRPOTrain().run(**inputs(heldout_prompts="  \n"))
    with pytest.raises(ValueError, match="WANFLOW_REWARD"):
        WanFlowSRPOTrain().run(**inputs(reward="HPS"))
    with pytest.raises(ValueError, match="needs SRP"):
        WanFlowSRPOTrain().run(**inputs(srp=False))


def test_srpo_node_runs_on_models_made_under_inference_mode(folders):
    """ComfyUI loads models and runs nodes under torch.inference_mode: the VAE the reward backpropagates
    through (a real Wan VAE here) and the DiT must still work, and the demo model's missing default
    negative prompt must not matter."""
    from wan_core.testing.vae import random_vae

    with torch.inference_mode():
        args = inputs(vae=ModelHandle(random_vae("2.1", 0), name="tiny vae", role="vae"),
                      model=ModelHandle(random_dit("t2v", 0, text_len=8, text_dim=32), name="wanflow-demo"),
                      reward=ColourReward(), steps=2, eval_every=0, guidance=2.0, negative_prompt="")
        args["model"].module.config.variant = "wanflow-demo"  # not a Wan release: no default negative prompt
        out = WanFlowSRPOTrain().run(**args)
    with safe_open(out["result"][1], "pt") as f:
        assert f.metadata()["wanflow.steps"] == "2"
