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

# The released per-channel latent statistics, written out here (not imported from the code under test) so a
# typo in wan_core/models/vae.py fails a test. Source: the official Wan repositories, wan/modules/vae2_1.py
# (`Wan2_1_VAE.__init__`, also Wan2.1's wan/modules/vae.py `WanVAE.__init__`) and wan/modules/vae2_2.py
# (`Wan2_2_VAE.__init__`); the same numbers are in ComfyUI latent_formats.Wan21 / Wan22 and in this repository's
# docs/conventions.md §8.
OFFICIAL_MEAN = {
    "2.1": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "2.2": [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
            -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
            -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
            -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
            -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
            0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
}
OFFICIAL_STD = {
    "2.1": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160],
    "2.2": [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
            0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
            0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
            0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
            0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
            0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
}


def official_stats(version):
    """The official (mean, std) as [1, C, 1, 1, 1] fp32 tensors."""
    mean = torch.tensor(OFFICIAL_MEAN[version], dtype=torch.float32).view(1, -1, 1, 1, 1)
    return mean, torch.tensor(OFFICIAL_STD[version], dtype=torch.float32).view(1, -1, 1, 1, 1)


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
def test_latent_statistics_are_the_official_ones(version):
    """The table itself, digit for digit, against the literals above (and diffusers' own default for 2.1)."""
    from diffusers import AutoencoderKLWan

    from wan_core.models.vae import VAEConfig, latent_stats
    assert LATENT_MEAN[version] == OFFICIAL_MEAN[version]
    assert LATENT_STD[version] == OFFICIAL_STD[version]
    mean, std = official_stats(version)
    got_mean, got_inv_std = latent_stats(VAEConfig.released(version))
    assert torch.equal(got_mean, mean) and torch.allclose(got_inv_std, 1 / std, rtol=1e-7, atol=0)
    # diffusers' AutoencoderKLWan defaults are the Wan2.1 statistics (its Wan2.2 has no default): a second source.
    # The parity fixture (wan_core/testing/vae.py) passes our table to diffusers, so its config is checked here too.
    if version == "2.1":
        defaults = AutoencoderKLWan().config
        assert list(defaults.latents_mean) == OFFICIAL_MEAN["2.1"]
        assert list(defaults.latents_std) == pytest.approx(OFFICIAL_STD["2.1"], abs=0)
    ref = diffusers_vae(random_vae(version, seed=3))
    assert list(ref.config.latents_mean) == OFFICIAL_MEAN[version]
    assert list(ref.config.latents_std) == OFFICIAL_STD[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_normalization_uses_official_constants(vaes, version):
    vae = vaes[version]
    mean, std = official_stats(version)  # literals, not the code's own table
    video = video_for(vae, frames=5)
    raw = vae.encode(video, normalized=False)
    assert_close(vae.encode(video), (raw - mean) / std, 1e-5, "normalized encode")
    z = torch.randn_like(raw)
    assert_close(vae.decode(z), vae.decode(z * std + mean, normalized=False), 1e-5, "normalized decode")
    # the latent at the node edges (raw LATENT <-> what the DiT sees) uses the same official numbers
    from wan_core.models.vae import denormalize_latent, normalize_latent
    raw = torch.randn(2, vae.config.z_dim, 3, 4, 5) * 2
    torch.testing.assert_close(normalize_latent(raw), (raw - mean) / std, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(denormalize_latent(raw), raw * std + mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vae.normalize(raw), (raw - mean) / std, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vae.denormalize(raw), raw * std + mean, rtol=1e-6, atol=1e-6)


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
    err = (out - rounded.encode(video)).abs().max().item()
    assert 0 < err < 0.04, f"bf16 compute: max abs diff {err:.3e}"  # measured 1.0e-2 (latents up to ~1.2); ~4x


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
