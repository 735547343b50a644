"""The embedded demo: stand-in codec and text encoder, procedural data and checker, loss plot, and a
quick end-to-end run of `python -m wan_core demo`."""
import json
import math

import numpy as np
import pytest
import torch

from wan_core.demo import data as dd
from wan_core.demo.codec import GAIN, DemoCodec
from wan_core.demo.run import QUICK, demo_model, run_demo
from wan_core.demo.text import END_OF_TEXT, DemoTextEncoder, word_vector, words_of
from wan_core.models.vae import denormalize_latent, normalize_latent
from wan_core.training.plots import loss_curve_image, moving_average


def block_constant_video(b=2, t=3, h=32, w=48, seed=0):
    """A random video [B, 3, 1 + 4(T-1), H, W] in [-1, 1], constant over 4x4 blocks and each temporal group."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, t, h // 4, w // 4, generator=gen) * 2 - 1
    pixels = coarse.repeat_interleave(4, 3).repeat_interleave(4, 4)
    return torch.cat([pixels[:, :, :1], pixels[:, :, 1:].repeat_interleave(4, 2)], dim=2)


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------


def test_codec_geometry_matches_wan21_vae():
    codec = DemoCodec()
    assert codec.config.stride == (4, 8, 8) and codec.config.z_dim == 16
    video = torch.zeros(2, 3, 17, 64, 48)
    z = codec.encode(video)
    assert z.shape == (2, 16, 5, 8, 6) == codec.latent_shape(video.shape)
    assert codec.decode(z).shape == video.shape
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32


def test_codec_round_trips_exactly():
    codec = DemoCodec()
    video = block_constant_video()
    assert torch.allclose(codec.decode(codec.encode(video)), video, atol=1e-6)
    # and latents with zero spare channels survive decode -> encode
    z = torch.rand(1, 16, 4, 4, 6, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9  # inside the clamp
    z[:, 12:] = 0
    assert torch.allclose(codec.encode(codec.decode(z)), z, atol=1e-6)


def test_codec_temporal_layout_is_causal_groups_of_four():
    """Latent frame 0 <-> video frame 0; latent frame k <-> the mean of frames 4k-3..4k."""
    codec = DemoCodec()
    levels = torch.linspace(-0.8, 0.8, 9)
    video = levels.view(1, 1, 9, 1, 1).expand(1, 3, 9, 16, 16).contiguous()
    z = codec.encode(video)
    expected = torch.stack([levels[0], levels[1:5].mean(), levels[5:9].mean()]) * GAIN
    assert torch.allclose(z[0, :12].mean(dim=(0, 2, 3)), expected, atol=1e-6)
    assert z[0, 12:].abs().max() == 0
    # colours land in their own channel groups (colour * 4 + position in the 2x2 fold)
    red = torch.zeros(1, 3, 1, 8, 8)
    red[:, 0] = 0.5
    assert torch.allclose(codec.encode(red)[0, :4], torch.full((4, 1, 1, 1), 0.5 * GAIN))
    assert codec.encode(red)[0, 4:].abs().max() == 0


def test_codec_normalized_flag_uses_the_packs_latent_statistics():
    codec = DemoCodec()
    video = block_constant_video(seed=3)
    z = codec.encode(video, normalized=True)
    raw = codec.encode(video, normalized=False)
    assert torch.allclose(raw, denormalize_latent(z), atol=1e-6)
    assert torch.allclose(normalize_latent(raw), z, atol=1e-5)
    assert torch.allclose(codec.decode(raw, normalized=False), codec.decode(z, normalized=True), atol=1e-5)
    assert not torch.allclose(raw, z)  # the flag really changes the output


def test_codec_rejects_bad_shapes():
    codec = DemoCodec()
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        codec.encode(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        codec.encode(torch.zeros(1, 3, 17, 60, 64))
    with pytest.raises(ValueError, match="\\[B, 16, T, h, w\\]"):
        codec.decode(torch.zeros(1, 48, 2, 4, 4))


# ---------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------


def test_text_encoder_is_deterministic_and_a_bag_of_words():
    a, b = DemoTextEncoder(32), DemoTextEncoder(32)
    (x,) = a.encode(["A red square moving left."])
    (y,) = b.encode(["a red square moving left"])
    assert x.shape == (6, 32) and torch.equal(x, y)  # 5 words + </s>; case and punctuation ignored
    assert torch.equal(x[-1], word_vector(END_OF_TEXT, 32))
    (shuffled,) = a.encode(["left moving square red a"])
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(shuffled) == key(x) and not torch.equal(shuffled, x)
    (other,) = a.encode(["a blue square moving left"])
    assert not torch.allclose(other[1], x[1]) and torch.equal(other[2:], x[2:])
    # stable across machines and runs: seeded from a BLAKE2 hash of the word, not from Python's hash()
    assert word_vector("red", 32)[:3].tolist() == pytest.approx([0.18082, 0.905, -1.834612], abs=1e-5)

def test_text_encoder_edge_cases():
    enc = DemoTextEncoder(8)
    empty, chinese = enc.encode(["", "色调艳丽，过曝"])
    assert empty.shape == (1, 8)  # only </s>
    assert chinese.shape == (3, 8) and words_of("色调艳丽，过曝") == ["色调艳丽", "过曝"]
    assert len(enc.encode(["word " * 600])[0]) == 512  # cut to the DiT's text length, </s> kept
    with pytest.raises(TypeError, match="list of str"):
        enc.encode([3])


# ---------------------------------------------------------------------------------------------
# Data and checker
# ---------------------------------------------------------------------------------------------


def test_held_out_split():
    all_combos = {(c, d) for c in dd.COLOURS for d in dd.DIRECTIONS}
    held, train = set(dd.HELD_OUT), set(dd.TRAIN)
    assert held.isdisjoint(train) and held | train == all_combos
    assert {c for c, _ in held} == set(dd.COLOURS) and {d for _, d in held} == set(dd.DIRECTIONS)
    assert {c for c, _ in train} == set(dd.COLOURS) and {d for _, d in train} == set(dd.DIRECTIONS)
    assert set(dd.held_out_prompts()).isdisjoint(dd.caption(c, d) for c, d in dd.TRAIN)


def test_checker_reads_ground_truth_and_rejects_swapped_captions():
    codec = DemoCodec()
    gen = torch.Generator().manual_seed(5)
    combos = [(c, d) for c in dd.COLOURS for d in dd.DIRECTIONS]
    clips = [dd.render_clip(c, d, dd.random_motion(d, gen)) for c, d in combos for _ in range(2)]
    decoded = [dd.to_frames(v) for v in codec.decode(codec.encode(torch.cat([dd.to_video(c) for c in clips])))]
    colours, directions = list(dd.COLOURS), list(dd.DIRECTIONS)
    for i, (c, d) in enumerate(combos):
        for clip in (clips[2 * i], clips[2 * i + 1], decoded[2 * i + 1]):
            reading = dd.read_clip(clip)
            assert (reading.colour, reading.direction) == (c, d), reading
        # the score itself, on the decoded clip: right caption 1, any swap 0
        other_c = colours[(colours.index(c) + 1) % len(colours)]
        other_d = directions[(directions.index(d) + 1) % len(directions)]
        scores = [dd.score_clip(decoded[2 * i], dd.caption(*pair)) for pair in
                  ((c, d), (other_c, d), (c, other_d), (other_c, other_d))]
        assert scores == [True, False, False, False], (c, d)

def test_checker_sees_nothing_in_an_empty_or_still_clip():
    blank = torch.tensor(dd.BACKGROUND).expand(17, 64, 64, 3)
    assert dd.read_clip(blank) == dd.Reading(None, None)
    still = dd.render_clip("red", "left", dd.Motion(32, 32, 16, 0.0))
    reading = dd.read_clip(still)
    assert reading.colour == "red" and reading.direction is None
    with pytest.raises(ValueError, match="one colour"):
        dd.parse_caption("a square moving left")
    with pytest.raises(ValueError, match="\\[F, H, W, 3\\]"):
        dd.read_clip(torch.zeros(17, 3, 64, 64))


def test_squares_stay_in_frame_and_move_as_drawn():
    gen = torch.Generator().manual_seed(2)
    for d, (dx, dy) in dd.DIRECTIONS.items():
        for _ in range(20):
            m = dd.random_motion(d, gen)
            travel = m.speed * (dd.FRAMES - 1)
            for x in (m.x, m.x + dx * travel):
                assert m.size / 2 - 1e-9 <= x <= dd.WIDTH - m.size / 2 + 1e-9
            for y in (m.y, m.y + dy * travel):
                assert m.size / 2 - 1e-9 <= y <= dd.HEIGHT - m.size / 2 + 1e-9
    clip = dd.render_clip("blue", "right", dd.Motion(20.0, 30.0, 10.0, 2.0))
    area = (clip - torch.tensor(dd.BACKGROUND)).norm(dim=-1).sum(dim=(1, 2)) / torch.tensor(
        [x - y for x, y in zip(dd.COLOURS["blue"], dd.BACKGROUND)]).norm()
    assert torch.allclose(area, torch.full((17,), 100.0), atol=1e-3)  # 10 x 10 px in every frame
    assert dd.read_clip(clip).travel[0] == pytest.approx(2.0 * 13, abs=0.5)  # quarters: frames 0-3 and 13-16


def test_dataset_protocol():
    codec, words = DemoCodec(), DemoTextEncoder(16)
    ds = dd.make_dataset(codec, words, clips_per_combo=2, seed=3, chunk=7)
    assert len(ds) == 2 * len(dd.TRAIN) and ds.skipped == []
    item = ds[5]
    assert set(item) >= {"latent", "context", "caption", "source"}
    assert item["latent"].shape == (16, 5, 8, 8) and item["latent"].dtype == torch.float32
    assert item["context"].shape == (6, 16)  # unpadded
    assert torch.equal(item["context"], words.encode([item["caption"]])[0])
    assert ds.bucket_of(0) == ds.bucket_of(len(ds) - 1) == (16, 5, 8, 8)
    assert {ds[i]["caption"] for i in range(len(ds))} == {dd.caption(c, d) for c, d in dd.TRAIN}
    for i in range(0, len(ds), 3):  # every latent decodes to a clip showing its caption
        frames = dd.to_frames(codec.decode(ds[i]["latent"][None])[0])
        assert dd.score_clip(frames, ds[i]["caption"]), ds[i]["source"]
    again = dd.make_dataset(codec, words, clips_per_combo=2, seed=3)
    assert torch.equal(again.latents, ds.latents)  # chunking does not matter; the seed fixes everything


# ---------------------------------------------------------------------------------------------
# Loss plot
# ---------------------------------------------------------------------------------------------


def test_loss_plot():
    losses = [1.0 / (1 + i / 10) for i in range(200)]
    image = loss_curve_image(losses, width=400, height=240)
    assert image.size == (400, 240) and image.mode == "RGB"
    pixels = torch.from_numpy(np.asarray(image)).reshape(-1, 3).float()
    assert (pixels == torch.tensor([20.0, 70.0, 170.0])).all(dim=1).sum() > 200  # the smoothed curve is drawn
    with_nan = loss_curve_image(losses + [math.nan], width=400, height=240)
    assert with_nan.size == (400, 240)
    assert loss_curve_image([], width=200, height=150).size == (200, 150)
    assert loss_curve_image([0.5], width=200, height=150).size == (200, 150)
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    with pytest.raises(ValueError, match="at least 160x120"):
        loss_curve_image(losses, width=100, height=100)


# ---------------------------------------------------------------------------------------------
# The demo run
# ---------------------------------------------------------------------------------------------


def test_demo_model_is_a_wan_t2v_dit_drawn_from_the_seed():
    a, b, c = demo_model(0), demo_model(0), demo_model(1)
    cfg = a.config
    assert (cfg.model_type, cfg.in_dim, cfg.out_dim, cfg.patch_size, cfg.text_len) == ("t2v", 16, 16, (1, 2, 2), 16)
    assert torch.equal(a.blocks[0].self_attn.q.weight, b.blocks[0].self_attn.q.weight)
    assert not torch.equal(a.blocks[0].self_attn.q.weight, c.blocks[0].self_attn.q.weight)


def test_quick_demo_writes_a_report(tmp_path):
    lines = []
    report = run_demo(tmp_path, quick=True, seed=3, log=lines.append)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["prompt_accuracy"] == report["prompt_accuracy"]
    for key in ("prompt_accuracy", "train_seconds", "final_loss", "accuracy", "held_out_prompts", "steps",
                "model_config", "seed", "sampling"):
        assert key in on_disk, key
    assert on_disk["prompt_accuracy"] == min(on_disk["accuracy"]["euler"], on_disk["accuracy"]["heun"])
    assert 0 <= on_disk["prompt_accuracy"] <= 1 and on_disk["steps"] == QUICK.steps and on_disk["seed"] == 3
    assert on_disk["held_out_prompts"] == dd.held_out_prompts()
    assert math.isfinite(on_disk["final_loss"]) and on_disk["final_loss"] < on_disk["first_loss"]
    assert on_disk["train_seconds"] > 0 and on_disk["model_config"]["text_len"] == 16
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "demo_dit.safetensors").is_file()
    clips = sorted(p.name for p in (tmp_path / "clips").iterdir())
    assert len(clips) == 2 * 2 * len(dd.HELD_OUT)  # mp4 + png per held-out prompt and solver
    assert any("accuracy" in line for line in lines)


def test_training_gradients_equal_diffusers_on_the_demo_model():
    """Our training path through the demo DiT against diffusers' WanTransformer3DModel on the same weights:
    the flow-matching loss and every parameter's gradient agree (so a demo that learns badly is not a bug in
    our forward or backward). Measured: loss bit-equal, worst relative gradient difference 1.1e-5."""
    from wan_core.formats.dit import diffusers_to_official_name
    from wan_core.models.text_encoder import pad_context
    from wan_core.testing.diffusers_reference import diffusers_model

    model = demo_model(0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the adaLN-zero init, where most gradients are exactly zero
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    cfg = model.config
    ref = diffusers_model(cfg, model.state_dict()).train()
    x0, noise = torch.randn(2, 16, 5, 8, 8, generator=gen), torch.randn(2, 16, 5, 8, 8, generator=gen)
    sigma = torch.tensor([0.9, 0.3])
    noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    context = pad_context([torch.randn(7, 32, generator=gen), torch.randn(5, 32, generator=gen)], cfg.text_len)
    ours = torch.nn.functional.mse_loss(model(noisy, sigma * 1000, context), noise - x0)
    theirs = torch.nn.functional.mse_loss(ref(noisy, sigma * 1000, context, return_dict=False)[0], noise - x0)
    ours.backward()
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < 1e-6 * ours.item()
    grads = dict(model.named_parameters())
    relative = {name: ((p.grad - grads[diffusers_to_official_name(name)].grad).norm()
                       / grads[diffusers_to_official_name(name)].grad.norm()).item()
                for name, p in ref.named_parameters()}
    assert len(relative) == len(grads) and max(relative.values()) < 1e-4, max(relative.items(), key=lambda kv: kv[1])
