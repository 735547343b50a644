"""VAE, text-encoder and CLIP-vision nodes outside ComfyUI: same numbers as wan_core, ComfyUI
types at the edges (IMAGE [N,H,W,3] 0..1, raw LATENT [B,C,T,h,w], CONDITIONING), clear errors."""
import pytest
import torch
from test_nodes import import_pack

from wan_core import load_text_encoder
from wan_core.generation.defaults import NEGATIVE_I2V
from wan_core.io.write import save_safetensors
from wan_core.testing.clip_vision import random_clip_vision, save_comfy_safetensors
from wan_core.testing.text_encoder import random_umt5, save_comfyui_file, save_tokenizer_folder, tiny_spiece_model
from wan_core.testing.vae import random_vae


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def vae21():
    return random_vae("2.1", seed=5)


def nodes():
    return import_pack().NODE_CLASS_MAPPINGS


def frames(n=5, h=32, w=48, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_vae_nodes_match_wan_core(models_dir, vae21):
    save_safetensors({k: v.to(torch.bfloat16) for k, v in vae21.state_dict().items()}, models_dir / "vae" / "wan_2.1_vae.safetensors")
    loader = nodes()["WanFlowLoadVAE"]
    assert loader.INPUT_TYPES()["required"]["vae_name"][0] == ["wan_2.1_vae.safetensors"]
    (handle,) = loader().load("wan_2.1_vae.safetensors", "auto")
    vae = handle.load()
    assert vae.dtype == torch.float32  # auto on the CPU
    images = frames()
    (latent,) = nodes()["WanFlowVAEEncode"]().encode(images, handle, 0)
    video = images.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1
    expected = vae.encode(video, normalized=False)  # raw latent, like native Wan nodes
    assert latent["samples"].shape == (1, 16, 2, 4, 6)
    assert torch.equal(latent["samples"], expected)
    (decoded,) = nodes()["WanFlowVAEDecode"]().decode(latent, handle, 0)
    assert decoded.shape == (5, 32, 48, 3) and decoded.dtype == torch.float32
    reference = (vae.decode(expected, normalized=False) + 1) / 2
    assert torch.allclose(decoded, reference[0].permute(1, 2, 3, 0), atol=1e-6)
    assert 0 <= decoded.min() and decoded.max() <= 1
    # a batch of two latents decodes to two clips, one after the other
    (pair,) = nodes()["WanFlowVAEDecode"]().decode({"samples": torch.cat([expected, -expected])}, handle, 0)
    assert pair.shape[0] == 10 and torch.allclose(pair[:5], decoded, atol=1e-5)
    # tiling through the node's tile_size (pixels) gives a result close to the untiled one
    (tiled,) = nodes()["WanFlowVAEDecode"]().decode(latent, handle, 32)
    assert tiled.shape == decoded.shape and not torch.equal(tiled, decoded)


def test_vae_nodes_tile_at_the_requested_size(models_dir, monkeypatch):
    """tile_size is in pixels: the tiles the VAE actually gets are tile_size / 8 latent pixels (Wan2.1), for decode
    and encode, and the tiled decode stays close to the untiled one."""
    import importlib

    vae = random_vae("2.1", seed=5)
    with torch.no_grad():  # random global attention is what keeps a random decoder from being local; trained
        vae.decoder.middle[1].proj.weight.zero_()  # decoders are close to local, as tiling assumes
        vae.decoder.middle[1].proj.bias.zero_()
    save_safetensors(vae.state_dict(), models_dir / "vae" / "wan_2.1_vae.safetensors")
    (handle,) = nodes()["WanFlowLoadVAE"]().load("wan_2.1_vae.safetensors", "fp32")
    vae_module = importlib.import_module(f"{import_pack().__name__}.wan_core.models.vae")
    tiles = []

    def spy(real):
        def tiled(module, x, tile, callback=None):
            tiles.append((real.__name__, tuple(tile)))
            return real(module, x, tile, callback)
        return tiled
    monkeypatch.setattr(vae_module, "tiled_decode", spy(vae_module.tiled_decode))
    monkeypatch.setattr(vae_module, "tiled_encode", spy(vae_module.tiled_encode))
    latent = {"samples": torch.randn(1, 16, 1, 16, 16, generator=torch.Generator().manual_seed(1))}
    (full,) = nodes()["WanFlowVAEDecode"]().decode(latent, handle, 0)
    assert tiles == []  # 0 = automatic: on the CPU nothing is tiled
    (tiled,) = nodes()["WanFlowVAEDecode"]().decode(latent, handle, 64)
    assert tiles == [("tiled_decode", (8, 8))]  # 64 px / 8
    assert tiled.shape == full.shape == (1, 128, 128, 3)
    # measured mean |Δ| (pixels in 0..1): 0.045 with these 8x8 tiles (0.116 with 4x4, 0.141 with 2x2; the image's
    # mean |x - 0.5| is 0.148). The difference is deterministic (no rounding noise), so the bound is 1.5x
    diff = (tiled - full).abs().mean().item()
    assert 0 < diff < 0.07, diff
    tiles.clear()
    nodes()["WanFlowVAEEncode"]().encode(frames(n=5, h=64, w=96), handle, 32)
    assert tiles == [("tiled_encode", (4, 4))]  # 32 px / 8


def test_vae_node_errors(models_dir, vae21):
    save_safetensors(vae21.state_dict(), models_dir / "vae" / "wan_2.1_vae.safetensors")
    (handle,) = nodes()["WanFlowLoadVAE"]().load("wan_2.1_vae.safetensors", "fp32")
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        nodes()["WanFlowVAEEncode"]().encode(frames(n=4), handle, 0)
    with pytest.raises(ValueError, match="multiples of 8"):
        nodes()["WanFlowVAEEncode"]().encode(frames(h=36), handle, 0)
    with pytest.raises(ValueError, match="IMAGE frames"):
        nodes()["WanFlowVAEEncode"]().encode(torch.rand(5, 32, 48), handle, 0)
    with pytest.raises(ValueError, match="Wan2.2 latent: use the Wan2.2 VAE"):
        nodes()["WanFlowVAEDecode"]().decode({"samples": torch.zeros(1, 48, 2, 4, 4)}, handle, 0)


@pytest.fixture(scope="module")
def umt5():
    return random_umt5(seed=2)


def test_text_encode_node(models_dir, umt5):
    save_comfyui_file(umt5, models_dir / "text_encoders" / "umt5_xxl_fp16.safetensors")
    loader = nodes()["WanFlowLoadTextEncoder"]
    spec = loader.INPUT_TYPES()["required"]
    assert spec["text_encoder_name"][0] == ["umt5_xxl_fp16.safetensors"]
    (handle,) = loader().load("umt5_xxl_fp16.safetensors", spec["tokenizer"][0][0], "cpu", "default")
    positive, negative = nodes()["WanFlowTextEncode"]().encode(handle, "a cat  walks\n on grass", "", "wan2.1 i2v 14B")
    encoder = handle.load()
    expected_pos, expected_neg = encoder.encode(["a cat walks on grass", NEGATIVE_I2V])
    for cond, expected in ((positive, expected_pos), (negative, expected_neg)):
        tensor, extras = cond[0]
        n = expected.shape[0]
        assert tensor.shape == (1, 512, umt5.config.d_model) and tensor.dtype == torch.float32
        assert extras["wanflow_tokens"] == n
        assert torch.equal(tensor[0, :n], expected.float())
        assert torch.count_nonzero(tensor[0, n:]) == 0  # zero rows past the prompt, as official / native
    # an explicit negative prompt replaces the default
    _, custom = nodes()["WanFlowTextEncode"]().encode(handle, "a cat", "blurry", "wan2.1 i2v 14B")
    assert not torch.equal(custom[0][0], negative[0][0])


def test_text_encoder_tokenizer_dropdown(models_dir, umt5):
    save_comfyui_file(umt5, models_dir / "text_encoders" / "plain.safetensors", spiece=None)
    save_tokenizer_folder(tiny_spiece_model(), models_dir / "text_encoders" / "tokenizers" / "umt5-xxl")
    loader = nodes()["WanFlowLoadTextEncoder"]
    choices = loader.INPUT_TYPES()["required"]["tokenizer"][0]
    assert "tokenizers/umt5-xxl" in choices
    (handle,) = loader().load("plain.safetensors", "tokenizers/umt5-xxl", "cpu", "default")
    reference = load_text_encoder(models_dir / "text_encoders" / "plain.safetensors",
                                  tokenizer=models_dir / "text_encoders" / "tokenizers" / "umt5-xxl")
    assert torch.equal(handle.load().encode(["hello"])[0], reference.encode(["hello"])[0])
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        loader().load("plain.safetensors", "../../etc", "cpu", "default")


def test_clip_vision_loader_node(models_dir):
    clip = random_clip_vision(seed=1)
    save_comfy_safetensors(clip, models_dir / "clip_vision" / "clip_vision_h.safetensors", dtype=torch.float32)
    (handle,) = nodes()["WanFlowLoadCLIPVision"]().load("clip_vision_h.safetensors", "auto")
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    assert torch.allclose(handle.load().encode(images), clip.encode(images), atol=1e-6)
