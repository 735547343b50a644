"""Node classes honour ComfyUI's V1 contract and work outside ComfyUI (fallback model folder)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from wan_core.formats.dit import comfyui_state_dict
from wan_core.io.write import save_safetensors

PACK_DIR = Path(__file__).resolve().parents[1]


def import_pack(name="wanflow_pack_under_test"):
    """Import the pack the way ComfyUI does: by folder path, as a package with relative imports."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_import_is_light_and_exports_mappings():
    pack = import_pack()
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert all(k.startswith("WanFlow") for k in pack.NODE_CLASS_MAPPINGS)
    assert all(v.startswith("WanFlow ") for v in pack.NODE_DISPLAY_NAME_MAPPINGS.values())
    heavy = [m for m in ("folder_paths", "comfy") if m in sys.modules]
    assert heavy == [], f"importing the pack outside ComfyUI pulled in {heavy}"


ALL_NODES = ["WanFlowLoadDiffusionModel", "WanFlowModelInfo", "WanFlowLoadVAE", "WanFlowLoadTextEncoder",
             "WanFlowLoadCLIPVision", "WanFlowTextEncode", "WanFlowVAEEncode", "WanFlowVAEDecode",
             "WanFlowEmptyLatent", "WanFlowImageToVideo", "WanFlowSampler", "WanFlowSaveVideo",
             "WanFlowLoadLoRA", "WanFlowVideoDataset", "WanFlowCacheLatents", "WanFlowTrainLoRA", "WanFlowTrainFull",
             "WanFlowDemoModels", "WanFlowDemoDataset", "WanFlowLoadRewardModel", "WanFlowSRPOTrain",
             "WanFlowLoRATraining", "WanFlowFullTraining", "WanFlowTrainingSettings", "WanFlowSRPOTraining",
             "WanFlowSRPOSettings"]


def test_every_node_is_registered():
    assert sorted(import_pack().NODE_CLASS_MAPPINGS) == sorted(ALL_NODES)


@pytest.mark.parametrize("node_id", ALL_NODES)
def test_v1_contract(node_id):
    cls = import_pack().NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    for name, entry in {**spec["required"], **spec.get("optional", {})}.items():
        kind, options = entry
        assert isinstance(kind, (str, list)), name
        assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY.startswith("WanFlow/") and cls.DESCRIPTION


def test_loader_and_info_outside_comfyui(tmp_path, monkeypatch, tiny_models):
    model = tiny_models["i2v"]
    folder = tmp_path / "diffusion_models"
    save_safetensors(comfyui_state_dict(model.state_dict(), fp8="scaled"), folder / "wan2.1_i2v_480p_14B_fp8_scaled.safetensors")
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path))
    nodes = import_pack().NODE_CLASS_MAPPINGS
    loader = nodes["WanFlowLoadDiffusionModel"]
    choices = loader.INPUT_TYPES()["required"]["model_name"][0]
    assert choices == ["wan2.1_i2v_480p_14B_fp8_scaled.safetensors"]
    (handle,) = loader().load(choices[0], "keep file dtype (low memory)", "fp32")
    module = handle.load()  # outside ComfyUI: stays where it is
    assert module.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert module.compute_dtype == torch.float32
    result = nodes["WanFlowModelInfo"]().describe(handle)
    text = result["result"][0]
    assert result["ui"]["text"] == [text]
    assert "variant: wan2.1-i2v-14b" in text and "in/out channels: 36/16" in text and "float8_e4m3fn" in text
    with pytest.raises(FileNotFoundError, match="not found"):
        loader().load("../outside.safetensors")
