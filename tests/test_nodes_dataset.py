"""Training-data nodes outside ComfyUI: folders confined to the input directory, summaries with the
reasons for skipped files, a cache in output/wanflow_cache reused on the second run, inference mode."""
import importlib

import pytest
import torch
from test_dataset import caption, write_image, write_video
from test_nodes import import_pack

from wan_core.models.text_encoder import WanTextEncoder
from wan_core.models.tokenizer import SentencePieceTokenizer
from wan_core.testing.clip_vision import random_clip_vision
from wan_core.testing.text_encoder import random_umt5, tiny_spiece_model
from wan_core.testing.vae import random_vae

BUCKETS = "32x16x5, 16x32x5, 16x16x1"


def module(name):
    return importlib.import_module(f"{import_pack().__name__}.nodes.{name}")


def handle(model, role):
    return module("comfy_bridge").ModelHandle(model, role=role)


@pytest.fixture()
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("WANFLOW_OUTPUT_DIR", str(tmp_path / "output"))
    train = tmp_path / "input" / "train" / "cats"
    caption(write_video(train / "a.mp4", frames=16, width=64, height=32), "a cat walks")
    write_image(train / "b.png", 40, 64)
    caption(train / "b.png", "a portrait")
    write_video(train / "nocap.mp4", frames=5, width=64, height=32)
    (tmp_path / "outside").mkdir()
    return tmp_path


@pytest.mark.parametrize("name", ["WanFlowVideoDataset", "WanFlowCacheLatents"])
def test_v1_contract(name):
    cls = getattr(module("dataset"), name)
    spec = cls.INPUT_TYPES()
    for key, (kind, options) in {**spec["required"], **spec.get("optional", {})}.items():
        assert isinstance(kind, (str, list)) and options.get("tooltip"), key
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert callable(getattr(cls, cls.FUNCTION)) and cls.CATEGORY == "WanFlow/training" and cls.DESCRIPTION


def test_dataset_node(dirs):
    node = module("dataset").WanFlowVideoDataset()
    dataset, summary = node.scan("train/cats", BUCKETS, 8.0, 3, "", "shorten")
    assert sorted(item.path.name for item in dataset.items) == ["a.mp4", "b.png"] and len(dataset) == 6
    assert "nocap.mp4: no caption file nocap.txt" in summary and "2 files (6 clips with repeats)" in summary
    with_default, summary = node.scan("train/cats", BUCKETS, 8.0, 1, "a cat", "shorten")
    by_name = {item.path.name: item for item in with_default.items}
    assert by_name["nocap.mp4"].caption == "a cat" and by_name["a.mp4"].caption == "a cat walks"
    assert "nocap.mp4: shortened to 1 frames" in summary  # 5 frames at 24 fps = 2 at 8 fps
    _, summary = node.scan("train/cats", BUCKETS, 8.0, 1, "a cat", "skip")
    assert "nocap.mp4: too short for bucket 32x16x5" in summary


def test_dataset_folder_is_confined(dirs):
    scan = module("dataset").WanFlowVideoDataset().scan
    (dirs / "input" / "link").symlink_to(dirs / "outside")
    for folder in ["../outside", str(dirs / "outside"), "train/../../outside", "link"]:
        with pytest.raises(ValueError, match="must stay inside the input directory"):
            scan(folder, BUCKETS)
    with pytest.raises(ValueError, match="no folder 'train/dogs' in the input directory"):
        scan("train/dogs", BUCKETS)
    with pytest.raises(ValueError, match="folder must be a folder inside the input directory"):
        scan("  ", BUCKETS)
    assert len(scan(str(dirs / "input" / "train"), BUCKETS)[0].items) == 2  # an absolute path inside is fine


def test_dataset_node_rescans_when_files_change(dirs):
    cls = module("dataset").WanFlowVideoDataset
    before = cls.IS_CHANGED(folder="train/cats", buckets=BUCKETS)
    assert cls.IS_CHANGED(folder="train/cats", buckets=BUCKETS) == before
    caption(dirs / "input" / "train" / "cats" / "nocap.mp4", "now captioned")
    assert cls.IS_CHANGED(folder="train/cats", buckets=BUCKETS) != before


def test_cache_node_in_inference_mode(dirs):
    vae = handle(random_vae("2.1", seed=1), "vae")
    encoder = handle(WanTextEncoder(random_umt5(seed=2), SentencePieceTokenizer(tiny_spiece_model(), "tiny")),
                     "text_encoder")
    nodes = module("dataset")
    dataset, _ = nodes.WanFlowVideoDataset().scan("train/cats", BUCKETS, 8.0, 2, "", "shorten")
    with torch.inference_mode():  # as ComfyUI runs nodes
        latents, summary = nodes.WanFlowCacheLatents().cache(dataset, vae, encoder, False)
    assert type(latents).__name__ == "CachedLatents" and len(latents) == 4  # the pack's own wan_core
    assert latents.cache_dir == dirs / "output" / "wanflow_cache" / "train_cats"
    assert len(list(latents.cache_dir.glob("latent-*.safetensors"))) == 2
    assert "latents: 2 encoded, 0 reused" in summary and "nocap.mp4: no caption file" in summary
    item = latents[0]  # read outside inference mode: ordinary tensors a trainer can use
    assert not item["latent"].is_inference() and item["latent"].shape == (16, 2, 2, 4)
    expected = vae.module.encode(dataset.items[0].load()[None])[0]
    torch.testing.assert_close(item["latent"], expected, atol=1e-6, rtol=1e-6)
    with torch.inference_mode():
        again, summary = nodes.WanFlowCacheLatents().cache(dataset, vae, encoder, False)
    assert "latents: 0 encoded, 2 reused; captions: 0 encoded, 2 reused" in summary
    with pytest.raises(ValueError, match="dataset must come from WanFlow Video Dataset"):
        nodes.WanFlowCacheLatents().cache(latents, vae, encoder, False)


def test_cache_node_clip_vision_turns_image_conditioning_on(dirs):
    (dirs / "input" / "train" / "cats" / "a.mp4").unlink()
    nodes = module("dataset")
    dataset, _ = nodes.WanFlowVideoDataset().scan("train/cats", BUCKETS, 8.0, 1, "", "shorten")
    encoder = WanTextEncoder(random_umt5(seed=2), SentencePieceTokenizer(tiny_spiece_model(), "tiny"))
    latents, _ = nodes.WanFlowCacheLatents().cache(dataset, handle(random_vae("2.1", seed=1), "vae"),
                                                   handle(encoder, "text_encoder"), False,
                                                   handle(random_clip_vision(seed=0), "clip_vision"))
    item = latents[0]
    assert item["y"].shape == (20, 1, 4, 2) and item["clip_fea"].ndim == 2 and item["y"][:4].eq(1).all()
