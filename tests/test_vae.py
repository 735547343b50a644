"""Wan VAEs: parity with diffusers' AutoencoderKLWan, every file layout, the spec's definitions
(patchify, shortcuts, normalization, causal chunking), tiling, and bad input."""
import einops
import pytest
import torch
from conftest import assert_close

from wan_core import load_vae
from wan_core.io.write import save_pth, save_safetensors
from wan_core.models.vae import LATENT_MEAN, LATENT_STD, AvgDown3D, DupUp3D, patchify, unpatchify
from wan_core.models.vae_tiling import _tiles, tile_starts
from wan_core.testing.diffusers_reference import diffusers_vae
from wan_core.testing.dit import random_dit
from wan_core.testing.vae import random_vae

VERSIONS = ["2.1", "2.2"]


@pytest.fixture(scope="module")
def vaes():
    return {v: random_vae(v, seed=3) for v in VERSIONS}


def video_for(vae, frames=9, h=4, w=6, seed=0):
    s = vae.config.stride[1]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h * s, w * s, generator=g) * 2 - 1


@pytest.mark.parametrize("version", VERSIONS)
def test_encode_decode_match_diffusers(vaes, version):
    vae = vaes[version]
    ref = diffusers_vae(vae)
    video = video_for(vae)
    mu = vae.encode(video, normalized=False)
    with torch.no_grad():
        expected = ref.encode(video).latent_dist.mode()
    assert mu.shape == (1, vae.config.z_dim, 3, 4, 6)
    assert_close(mu, expected, 1e-4, f"{version} encode")
    z = torch.randn_like(mu)
    with torch.no_grad():
        expected = ref.decode(z).sample
    out = vae.decode(z, normalized=False)
    assert out.shape == video.shape
    assert_close(out, expected, 1e-4, f"{version} decode")
    assert out.abs().mean() > 0.05  # not a degenerate (saturated or zero) output


@pytest.mark.parametrize("version", VERSIONS)
def test_normalization_uses_official_constants(vaes, version):
    vae = vaes[version]
    mean = torch.tensor(LATENT_MEAN[version]).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENT_STD[version]).view(1, -1, 1, 1, 1)
    video = video_for(vae, frames=5)
    raw = vae.encode(video, normalized=False)
    assert_close(vae.encode(video), (raw - mean) / std, 1e-5, "normalized encode")
    z = torch.randn_like(raw)
    assert_close(vae.decode(z), vae.decode(z * std + mean, normalized=False), 1e-5, "normalized decode")


@pytest.mark.parametrize("version", VERSIONS)
def test_chunked_processing_is_causal(vaes, version):
    """Latent frame j depends only on pixel frames up to 4j (and decoding is causal the same way)."""
    vae = vaes[version]
    video = video_for(vae, frames=9)
    full = vae.encode(video)
    assert_close(vae.encode(video[:, :, :5]), full[:, :, :2], 1e-5, "prefix encode")
    changed = video.clone()
    changed[:, :, 5:] = 0
    assert torch.equal(vae.encode(changed)[:, :, :2], vae.encode(video)[:, :, :2])
    assert not torch.allclose(vae.encode(changed)[:, :, 2], full[:, :, 2], atol=1e-3)
    z = torch.randn_like(full)
    frames = vae.decode(z)
    assert frames.shape[2] == 9
    assert_close(vae.decode(z[:, :, :2]), frames[:, :, :5], 1e-5, "prefix decode")


def test_patchify_matches_spec_einops():
    x = torch.randn(2, 3, 5, 8, 12)
    expected = einops.rearrange(x, "b c f (h q) (w r) -> b (c r q) f h w", q=2, r=2)
    assert torch.equal(patchify(x, 2), expected)
    assert torch.equal(unpatchify(expected, 2), x)


def test_avg_down_matches_definition():
    x = torch.randn(1, 4, 3, 4, 6)
    down = AvgDown3D(4, 8, ft=2, fs=2)(x)  # 4 ch * 8 block positions = 32 = 8 out * group 4
    padded = torch.cat([torch.zeros(1, 4, 1, 4, 6), x], dim=2)  # T=3 -> one zero frame in front
    # channel-major flattening of (c, dt, dh, dw), then mean over consecutive groups of 4
    blocks = einops.rearrange(padded, "b c (t a) (h p) (w q) -> b (c a p q) t h w", a=2, p=2, q=2)
    expected = blocks.reshape(1, 8, 4, 2, 2, 3).mean(2)
    assert torch.allclose(down, expected, atol=1e-6)


def test_dup_up_matches_definition():
    x = torch.randn(1, 8, 2, 3, 3)
    up = DupUp3D(8, 4, ft=2, fs=2)
    rep = x.repeat_interleave(4 * 8 // 8, dim=1)
    expected = einops.rearrange(rep, "b (c a p q) t h w -> b c (t a) (h p) (w q)", c=4, a=2, p=2, q=2)
    assert torch.equal(up(x, first_chunk=False), expected)
    assert torch.equal(up(x, first_chunk=True), expected[:, :, 1:])  # the image frame is not doubled


def _write_layouts(vae, folder):
    """The same weights as the official .pth, ComfyUI safetensors (prefixed and not) and diffusers."""
    sd = vae.state_dict()
    pth = save_pth(sd, folder / "Wan_VAE.pth")
    comfy = save_safetensors(sd, folder / "wan_vae.safetensors")
    prefixed = save_safetensors({"first_stage_model." + k: v for k, v in sd.items()}, folder / "ckpt.safetensors")
    ref = diffusers_vae(vae)
    ref.save_pretrained(folder / "pipeline" / "vae")
    return [pth, comfy, prefixed, folder / "pipeline" / "vae", folder / "pipeline"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_layout_loads_the_same_model(tmp_path, vaes, version):
    vae = vaes[version]
    video = video_for(vae, frames=5, h=2, w=2)
    expected = vae.encode(video)
    for source in _write_layouts(vae, tmp_path):
        loaded = load_vae(source)
        assert loaded.config == vae.config, source
        assert torch.equal(loaded.encode(video), expected), source


def test_half_precision_files_and_dtype(tmp_path, vaes):
    vae = vaes["2.1"]
    sd = {k: v.to(torch.bfloat16) for k, v in vae.state_dict().items()}
    path = save_safetensors(sd, tmp_path / "wan_2.1_vae_bf16.safetensors")
    loaded = load_vae(path)
    assert loaded.dtype == torch.float32  # official: the VAE computes in fp32
    rounded = random_vae("2.1", seed=3)
    rounded.load_state_dict({k: v.float() for k, v in sd.items()})
    video = video_for(vae, frames=5)
    assert torch.equal(loaded.encode(video), rounded.encode(video))
    half = load_vae(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    out = half.encode(video)
    assert out.dtype == torch.float32
    assert_close(out, rounded.encode(video), 0.1, "bf16 compute")


def test_tile_blending_is_exact_for_a_local_map(vaes, monkeypatch):
    """With a per-pixel 'decoder', tiles and ramps must reassemble the untiled result exactly."""
    vae = random_vae("2.1", seed=3)

    def local_decode(z, callback=None, offset=0, total=None):
        frames = 1 + 4 * (z.shape[2] - 1)
        x = torch.tanh(z[:, :3]).repeat_interleave(8, -1).repeat_interleave(8, -2)
        return x[:, :, :1].expand(-1, -1, frames, -1, -1) * torch.arange(1, frames + 1).view(1, 1, -1, 1, 1) / frames

    monkeypatch.setattr(vae, "decode_untiled", local_decode)
    z = torch.randn(1, 16, 2, 21, 30)
    assert_close(vae.decode(z, tile=(8, 12)), local_decode(vae.denormalize(z)).clamp(-1, 1), 1e-6, "blend")


def test_tiling_is_close_to_untiled_and_exact_when_one_tile(vaes):
    vae = vaes["2.1"]
    z = torch.randn(1, 16, 2, 12, 16)
    full = vae.decode(z)
    assert torch.equal(vae.decode(z, tile=(12, 16)), full)  # one tile = the untiled path
    # random tiny weights are far less local than trained ones: only a loose bound holds here
    diff = (vae.decode(z, tile=(8, 12)) - full).abs().mean()
    assert diff < 0.25 * full.abs().mean(), (diff, full.abs().mean())
    video = video_for(vae, frames=5, h=12, w=16)
    full = vae.encode(video)
    diff = (vae.encode(video, tile=(8, 12)) - full).abs().mean()
    assert diff < 0.25 * full.abs().mean(), (diff, full.abs().mean())


def test_tiles_cover_with_overlap():
    for size, tile, overlap in [(60, 32, 8), (104, 32, 8), (33, 16, 4), (16, 16, 4)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, size) == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert len(_tiles(30, 52, (16, 16))) == len(tile_starts(30, 16, 4)) * len(tile_starts(52, 16, 4))


def test_memory_budget_chooses_tiles(vaes):
    vae = vaes["2.1"]
    z = torch.randn(1, 16, 1, 24, 24)
    calls = []
    vae.decode(z, memory_budget=10 ** 12, callback=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]  # fits: one untiled chunk
    calls.clear()
    out = vae.decode(z, memory_budget=2 * 10 ** 6, callback=lambda d, t: calls.append((d, t)))
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1]  # several tiles, progress reaches the total
    assert out.shape == (1, 3, 1, 192, 192)


def test_callback_can_interrupt(vaes):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    vae = vaes["2.1"]
    with pytest.raises(Stop):
        vae.decode(torch.randn(1, 16, 3, 2, 2), callback=stop)
    # the model is left clean: the next call gives the same result as a fresh one
    z = torch.randn(1, 16, 2, 2, 2)
    assert torch.equal(vae.decode(z), random_vae("2.1", seed=3).decode(z))


@pytest.mark.parametrize("shape,match", [
    ((1, 3, 8, 32, 32), "1 \\+ 4k"),
    ((1, 3, 5, 36, 32), "multiples of 8"),
    ((1, 4, 5, 32, 32), "\\[B, 3, F, H, W\\]"),
    ((3, 5, 32, 32), "\\[B, 3, F, H, W\\]"),
])
def test_bad_video_input(vaes, shape, match):
    with pytest.raises(ValueError, match=match):
        vaes["2.1"].encode(torch.zeros(shape))


def test_bad_latent_input(vaes):
    with pytest.raises(ValueError, match="Wan2.2 latent: use the Wan2.2 VAE"):
        vaes["2.1"].decode(torch.zeros(1, 48, 2, 4, 4))
    with pytest.raises(ValueError, match="multiples of 16"):
        vaes["2.2"].encode(torch.zeros(1, 3, 5, 40, 32))


def test_vae_and_model_pairing(vaes):
    ti2v = random_dit("ti2v").config
    t2v = random_dit("t2v").config
    vaes["2.2"].check_compatible(ti2v)
    vaes["2.1"].check_compatible(t2v)
    with pytest.raises(ValueError, match="needs the Wan2.2 VAE.*found the Wan2.1 VAE"):
        vaes["2.1"].check_compatible(ti2v)
    with pytest.raises(ValueError, match="needs the Wan2.1 VAE.*found the Wan2.2 VAE"):
        vaes["2.2"].check_compatible(t2v)


def test_loader_errors(tmp_path, vaes):
    dit = random_dit("t2v")
    path = save_safetensors(dit.state_dict(), tmp_path / "dit.safetensors")
    with pytest.raises(ValueError, match="not a Wan VAE.*diffusion model"):
        load_vae(path)
    sd = dict(vaes["2.1"].state_dict())
    del sd["decoder.middle.1.proj.weight"]
    path = save_safetensors(sd, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="missing \\['decoder.middle.1.proj.weight'\\]"):
        load_vae(path)
    sd = dict(vaes["2.1"].state_dict())
    sd["decoder.middle.1.proj.weight"] = torch.zeros(3, 3, 1, 1)
    path = save_safetensors(sd, tmp_path / "misshapen.safetensors")
    with pytest.raises(ValueError, match="decoder.middle.1.proj.weight.*shape"):
        load_vae(path)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("version,millions,tensors", [("2.1", 126.9, 194), ("2.2", 704.7, 196)])
def test_released_architecture_sizes(version, millions, tensors):
    """The released widths give the spec's parameter and tensor counts (126.9 M / 194, 704.7 M / 196)."""
    from wan_core.models.vae import VAEConfig, WanVAE
    with torch.device("meta"):
        vae = WanVAE(VAEConfig.released(version))
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6, 1) == millions
    assert len(vae.state_dict()) == tensors
    assert vae.config.stride == ((4, 8, 8) if version == "2.1" else (4, 16, 16))


def test_one_table_of_vae_geometry():
    """VAE_VERSIONS is the one home of latent channels, strides and patch; the rest derives from it."""
    from wan_core.models.vae import (
        LATENT_VERSIONS,
        SIZE_MULTIPLE,
        VAE_VERSIONS,
        VAEConfig,
        latent_channel_choices,
        vae_for_latent,
    )
    from wan_core.training import dataset
    geometry = {k: (v.name, v.latent_channels, v.stride, v.patch, v.size_multiple) for k, v in VAE_VERSIONS.items()}
    assert geometry == {"2.1": ("Wan2.1", 16, (4, 8, 8), 1, 16), "2.2": ("Wan2.2", 48, (4, 16, 16), 2, 32)}
    assert LATENT_VERSIONS == {16: "2.1", 48: "2.2"} and latent_channel_choices() == "16 or 48"
    assert vae_for_latent(48) is VAE_VERSIONS["2.2"] and vae_for_latent(36) is None
    assert SIZE_MULTIPLE == dataset.SIZE_MULTIPLE == 16
    for version, spec in VAE_VERSIONS.items():
        cfg = VAEConfig.released(version)
        assert (cfg.z_dim, cfg.stride, cfg.patch, cfg.enc_dim, cfg.dec_dim, cfg.width_ratio) == (
            spec.latent_channels, spec.stride, spec.patch, spec.enc_dim, spec.dec_dim, 1.0)
    with pytest.raises(ValueError, match="VAE version must be one of"):
        VAEConfig(version="3.0")
    with pytest.raises(ValueError, match="do not give the Wan2.1 VAE's stride"):
        VAEConfig(dim_mult=(1, 2, 4))
    with pytest.raises(ValueError, match=r"expected a Wan video latent \[B, 16 or 48, T, h, w\]"):
        from wan_core.models.vae import normalize_latent
        normalize_latent(torch.zeros(1, 20, 1, 2, 2))
