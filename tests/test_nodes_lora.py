"""WanFlow Load LoRA outside ComfyUI: the output handle merges the LoRA when loaded, the input handle
gets the original weights back, strength scales the delta; a native MODEL goes through ComfyUI's own
LoRA loader (stubbed here) with native keys."""
import copy
import importlib
import types

import pytest
import torch
from test_nodes import import_pack

from wan_core.lora.adapters import add_lora, save_lora
from wan_core.lora.merge import apply_lora
from wan_core.models.dit import WanDiT
from wan_core.testing.dit import random_dit, tiny_config


def pack_module(name):
    return importlib.import_module(f"{import_pack().__name__}.nodes.{name}")


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def holds(model, expected) -> bool:
    now = model.state_dict()
    return now.keys() == expected.keys() and all(torch.equal(now[k], v) for k, v in expected.items())


def trained_lora(base, path, seed, targets="attention+ffn"):
    """A saved LoRA with non-zero up weights, made on a copy of `base`."""
    net = add_lora(copy.deepcopy(base), rank=2, alpha=1.0, targets=targets, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in net.adapters.values():
            a.up.copy_(torch.randn(a.up.shape, generator=gen) * 0.05)
    return save_lora(path, net, {"wanflow.variant": base.config.variant})


@pytest.fixture(scope="module")
def pristine():
    return random_dit("t2v", seed=0)


@pytest.fixture(scope="module")
def models_dir(pristine, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    trained_lora(pristine, root / "loras" / "style.safetensors", seed=1)
    trained_lora(pristine, root / "loras" / "sub" / "motion.safetensors", seed=2, targets="ffn")
    return root


@pytest.fixture()
def setup(pristine, models_dir, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(models_dir))
    return copy.deepcopy(pristine), models_dir / "loras"


def expected_weights(original, *loras):
    """The weights apply_lora gives on a separate model holding `original`."""
    m = WanDiT(tiny_config("t2v"))
    m.load_state_dict(original)
    for path, strength in loras:
        apply_lora(m, str(path), strength)
    return weights(m)


def test_contract_and_dropdown(setup):
    cls = pack_module("lora").WanFlowLoadLoRA
    spec = cls.INPUT_TYPES()["required"]
    assert spec["lora_name"][0] == ["style.safetensors", "sub/motion.safetensors"]
    assert spec["model"][0] == "WANFLOW_MODEL,MODEL" and cls.RETURN_TYPES == ("WANFLOW_MODEL,MODEL", "STRING")
    assert spec["strength_model"][1]["default"] == 1.0 and spec["strength_model"][1]["min"] == -10.0
    assert all(options.get("tooltip") for _, options in spec.values())
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_NAMES) == 2
    assert cls.CATEGORY.startswith("WanFlow/") and cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))


def test_handle_gets_the_lora_and_the_input_handle_restores(setup):
    base, folder = setup
    ModelHandle = pack_module("comfy_bridge").ModelHandle
    node = pack_module("lora").WanFlowLoadLoRA()
    original = weights(base)
    handle = ModelHandle(base, name="tiny")

    result = node.load(handle, "style.safetensors", 1.0)
    out, text = result["result"]
    assert result["ui"]["text"] == [text] and "20 module(s) changed at strength 1" in text
    assert out is not handle and out.module is base and out.patcher is handle.patcher and handle.loras == ()
    assert holds(base, original)  # nothing merged before load

    assert out.load() is base
    full = expected_weights(original, (folder / "style.safetensors", 1.0))
    assert holds(base, full)
    assert not torch.equal(full["blocks.0.self_attn.q.weight"], original["blocks.0.self_attn.q.weight"])

    handle.load()  # the input handle: original weights again, bit for bit
    assert holds(base, original)

    half, _ = node.load(handle, "style.safetensors", 0.5)["result"]
    half.load()
    now = weights(base)
    for name in ("blocks.0.self_attn.q.weight", "blocks.1.ffn.2.weight"):
        delta_full = full[name] - original[name]
        delta_half = now[name] - original[name]
        assert (delta_full.abs().max() > 1e-3) and torch.allclose(delta_half, 0.5 * delta_full, atol=1e-6, rtol=0)

    # chaining: the second loader adds to the first one's list; loading gives both, in order
    chained, _ = node.load(out, "sub/motion.safetensors", -0.7)["result"]
    assert len(chained.loras) == 2
    chained.load()
    both = expected_weights(original, (folder / "style.safetensors", 1.0), (folder / "sub/motion.safetensors", -0.7))
    assert holds(base, both)
    handle.load()
    assert holds(base, original)


def test_model_with_lora_from_a_state_dict(setup):
    base, folder = setup
    original = weights(base)
    net = add_lora(copy.deepcopy(base), rank=2, targets="self_attention", seed=3)
    with torch.no_grad():
        net.adapter("blocks.1.self_attn.v").up.fill_(0.01)
    handle = pack_module("comfy_bridge").ModelHandle(base)
    out, report = pack_module("lora").model_with_lora(handle, net.comfy_state_dict(), 2.0)
    assert report.matched == ["blocks.0.self_attn.k", "blocks.0.self_attn.o", "blocks.0.self_attn.q",
                              "blocks.0.self_attn.v", "blocks.1.self_attn.k", "blocks.1.self_attn.o",
                              "blocks.1.self_attn.q", "blocks.1.self_attn.v"]
    out.load()
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, original[k])]
    assert changed == ["blocks.1.self_attn.v.weight"]  # the only adapter with a non-zero up
    with pytest.raises(TypeError, match="WanFlow"):
        pack_module("lora").model_with_lora(object(), net.comfy_state_dict())


def test_strength_zero_and_bad_lora(setup, tmp_path, monkeypatch):
    base, _ = setup
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path))
    save_lora(tmp_path / "loras" / "wide.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 1),
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(1, 5120)})
    handle = pack_module("comfy_bridge").ModelHandle(base)
    node = pack_module("lora").WanFlowLoadLoRA()
    out, text = node.load(handle, "wide.safetensors", 0.0)["result"]
    assert out is handle and "not applied" in text
    with pytest.raises(ValueError, match="width 5120.*dim 256"):
        node.load(handle, "wide.safetensors", 1.0)
    with pytest.raises(FileNotFoundError):
        node.load(handle, "missing.safetensors", 1.0)


class FakePatcher:
    """Just enough of a ComfyUI ModelPatcher for `is_native` and our native path."""

    def __init__(self, dit):
        self.model = types.SimpleNamespace(diffusion_model=dit)


def test_native_model_goes_through_comfy_loader(setup, monkeypatch):
    base, folder = setup
    lora_module = pack_module("lora")
    calls = {}

    def model_lora_keys_unet(model, key_map):  # ComfyUI's rule for Wan: diffusion_model.<module path>
        for k in model.diffusion_model.state_dict():
            if k.endswith(".weight"):
                key_map["diffusion_model." + k[: -len(".weight")]] = k
        return key_map

    def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
        calls.update(model=model, clip=clip, lora=lora, strength=strength_model, strength_clip=strength_clip)
        return "patched clone", None

    stubs = {"comfy.lora": types.SimpleNamespace(model_lora_keys_unet=model_lora_keys_unet),
             "comfy.sd": types.SimpleNamespace(load_lora_for_models=load_lora_for_models)}
    monkeypatch.setattr(lora_module, "_comfy", stubs.get)
    native = FakePatcher(base)
    before = weights(base)
    out, text = lora_module.WanFlowLoadLoRA().load(native, "style.safetensors", 0.8)["result"]
    assert out == "patched clone" and calls["model"] is native and calls["clip"] is None
    assert calls["strength"] == 0.8 and calls["strength_clip"] == 0
    assert len(calls["lora"]) == 60 and all(k.startswith("diffusion_model.blocks.") for k in calls["lora"])
    assert "ComfyUI mapped 20 of 20" in text and "20 module(s) changed" in text
    assert holds(base, before)  # ComfyUI patches, not us
