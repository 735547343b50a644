"""WanFlow Load Reward Model outside ComfyUI: it lists the reward files and HF folders of
models/reward_models, loads them as the wan_core loader does, offers the colour demo reward without
files, falls back to ComfyUI's bundled CLIP tokenizer, and reports bad files clearly."""
import importlib
import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from test_nodes import import_pack

from wan_core.rewards.clip import load_reward_model
from wan_core.testing.reward import (
    random_clip_model,
    save_open_clip_checkpoint,
    write_tiny_clip_tokenizer,
    write_tiny_reward_models,
)

TEXTS = ["a red square", "a blue dog"]


def pack_module(name, package="nodes"):
    return importlib.import_module(f"{import_pack().__name__}.{package}.{name}")


def pack_class(module, name):
    """A wan_core class as the pack sees it (the pack imports its own copy of wan_core)."""
    return getattr(pack_module(module, "wan_core"), name)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = write_tiny_reward_models(root)
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(root / "reward_models" / "broken.safetensors"))
    return root, paths


@pytest.fixture()
def node(models_dir, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(models_dir[0]))
    return pack_module("reward").WanFlowLoadRewardModel()


def _images():
    return torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))


def test_registered_with_display_name():
    pack = import_pack()
    assert pack.NODE_CLASS_MAPPINGS["WanFlowLoadRewardModel"] is pack_module("reward").WanFlowLoadRewardModel
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["WanFlowLoadRewardModel"] == "WanFlow Load Reward Model"


def test_lists_files_folders_and_the_colour_entry(node):
    mod = pack_module("reward")
    inputs = type(node).INPUT_TYPES()["required"]
    entries = inputs["reward"][0]
    assert entries == ["broken.safetensors", "tiny_HPS_v2.1_compressed.pt", "tiny_PickScore_v1", mod.COLOUR_ENTRY]
    assert inputs["kind"][0] == ["auto", "HPS v2.1", "PickScore", "CLIP"]
    assert inputs["tokenizer"][0] == [mod.AUTO_TOKENIZER, mod.COMFY_TOKENIZER, "tokenizer"]
    assert list(inputs) == ["reward", "kind", "tokenizer", "dtype", "device"]
    assert all("tooltip" in opts for _, opts in inputs.values())
    assert type(node).RETURN_TYPES == ("WANFLOW_REWARD",) and type(node).CATEGORY == "WanFlow/loaders"


@pytest.mark.parametrize("entry, key, kind", [("tiny_HPS_v2.1_compressed.pt", "hps", "hps_v2.1"),
                                              ("tiny_PickScore_v1", "pickscore", "pickscore")])
def test_loads_like_the_wan_core_loader(node, models_dir, entry, key, kind):
    (reward,) = node.load(entry, "auto", pack_module("reward").AUTO_TOKENIZER, "fp32", "cpu")
    direct = load_reward_model(models_dir[1][key])
    assert isinstance(reward, pack_class("rewards.clip", "CLIPReward")) and reward.kind == kind == direct.kind
    assert reward.score_scale == pytest.approx(direct.score_scale)
    ours, theirs = reward.score(_images(), TEXTS), direct.score(_images(), TEXTS)
    assert torch.allclose(ours, theirs, atol=1e-6) and (ours[0] - ours[1]).abs() > 0


def test_kind_dtype_and_explicit_tokenizer(node, models_dir):
    (reward,) = node.load("tiny_PickScore_v1", "HPS v2.1", "tokenizer", "bf16", "cpu")
    assert reward.kind == "hps_v2.1" and reward.score_scale == 1.0
    assert {p.dtype for p in reward.parameters()} == {torch.bfloat16}
    assert reward.tokenizer_source.endswith("tokenizer")


def test_loaded_outside_inference_mode(node):
    """ComfyUI runs nodes under torch.inference_mode; SRPO then needs gradients through the reward."""
    with torch.inference_mode():
        (reward,) = node.load("tiny_HPS_v2.1_compressed.pt", "auto", pack_module("reward").AUTO_TOKENIZER, "fp32", "cpu")
        reward.text_features(TEXTS)  # cached while in inference mode, used with gradients below
    images = _images().requires_grad_(True)
    reward.score(images, TEXTS).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_colour_entry_needs_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path / "empty"))
    mod = pack_module("reward")
    assert mod.WanFlowLoadRewardModel.INPUT_TYPES()["required"]["reward"][0] == [mod.COLOUR_ENTRY]
    (reward,) = mod.WanFlowLoadRewardModel().load(mod.COLOUR_ENTRY, "auto", mod.AUTO_TOKENIZER, "fp32", "cpu")
    assert isinstance(reward, pack_class("rewards.base", "ColourReward"))
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    assert reward.score(red, ["a red square"]) > reward.score(red, ["a blue square"])


def test_bad_file_gives_a_clear_error(node):
    expected = r"broken\.safetensors: not an open_clip CLIP checkpoint.*decoder\.conv_in"
    with pytest.raises(pack_class("io.tensor_files", "CheckpointError"), match=expected):
        node.load("broken.safetensors", "auto", pack_module("reward").AUTO_TOKENIZER, "fp32", "cpu")


def test_comfy_tokenizer_choice_outside_comfyui(node):
    with pytest.raises(FileNotFoundError, match="only available inside ComfyUI"):
        node.load("tiny_HPS_v2.1_compressed.pt", "auto", pack_module("reward").COMFY_TOKENIZER, "fp32", "cpu")


def test_auto_tokenizer_falls_back_to_comfyui_bundled_one(monkeypatch, tmp_path):
    """A lone .pt (HPS v2.1 as downloaded) takes the tokenizer ComfyUI ships in comfy/sd1_tokenizer."""
    lone = save_open_clip_checkpoint(random_clip_model(seed=3), tmp_path / "models" / "reward_models" / "hps.pt")
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path / "models"))
    mod = pack_module("reward")
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer found"):
        mod.WanFlowLoadRewardModel().load("hps.pt", "auto", mod.AUTO_TOKENIZER, "fp32", "cpu")
    fake_comfy = types.ModuleType("comfy")  # ComfyUI's `comfy` is a namespace package
    fake_comfy.__path__ = [str(tmp_path / "ComfyUI" / "comfy")]
    write_tiny_clip_tokenizer(tmp_path / "ComfyUI" / "comfy" / "sd1_tokenizer")
    monkeypatch.setitem(sys.modules, "comfy", fake_comfy)
    (reward,) = mod.WanFlowLoadRewardModel().load("hps.pt", "auto", mod.AUTO_TOKENIZER, "fp32", "cpu")
    assert reward.tokenizer_source.endswith("sd1_tokenizer")
    assert torch.allclose(reward.score(_images(), TEXTS),
                          load_reward_model(lone, tokenizer_dir=tmp_path / "ComfyUI" / "comfy" / "sd1_tokenizer")
                          .score(_images(), TEXTS), atol=1e-6)


def test_reward_models_category_registered_once(monkeypatch, tmp_path):
    bridge = pack_module("comfy_bridge")
    fake = types.ModuleType("folder_paths")
    fake.models_dir, fake.supported_pt_extensions = str(tmp_path), {".pt", ".safetensors"}
    fake.folder_names_and_paths = {}
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    bridge.register_model_category("reward_models")
    assert fake.folder_names_and_paths["reward_models"] == ([str(tmp_path / "reward_models")], {".pt", ".safetensors"})
    fake.folder_names_and_paths["reward_models"] = (["/elsewhere"], set())  # e.g. from extra_model_paths.yaml
    bridge.register_model_category("reward_models")
    assert fake.folder_names_and_paths["reward_models"] == (["/elsewhere"], set())
