"""Generation on tiny random models: parity with diffusers' WanPipeline (CFG + UniPC, one model and two
experts), expert routing, CFG batching, image conditioning, TI2V first frame, partial denoising."""
import pytest
import torch

from wan_core.generation.conditioning import (
    clip_features,
    concat_y,
    conditioning_video,
    first_frame_latent,
    frame_mask,
    image_condition,
    resize_image,
)
from wan_core.generation.defaults import official_defaults
from wan_core.generation.pipeline import Conditioning, GuidedVelocity, generate, seeded_noise, token_mask
from wan_core.sampling.solvers import flow_sigmas, official_sigmas, official_timestep, sample
from wan_core.testing.diffusers_reference import diffusers_model, diffusers_vae
from wan_core.testing.dit import random_dit, tiny_config
from wan_core.testing.vae import random_vae

SHAPE = (1, 16, 3, 8, 12)  # latent [B, C, T, h, w]


def texts(cfg, seed=5, tokens=(7, 11)):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in tokens:  # zero rows past the prompt, as the text encode node produces
        ctx = torch.zeros(1, 512, cfg.text_dim)
        ctx[:, :n] = torch.randn(1, n, cfg.text_dim, generator=gen)
        out.append(ctx)
    return out


def diffusers_pipeline(transformer, transformer_2=None, boundary=None, shift=5.0):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    vae = diffusers_vae(random_vae("2.1", seed=1))
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=sched, transformer=transformer,
                       transformer_2=transformer_2, boundary_ratio=boundary)


@torch.no_grad()
def test_t2v_matches_diffusers_wan_pipeline():
    """CFG 5, UniPC, 10 steps, same weights and initial noise: our generate() equals WanPipeline's
    latents (diffusers' own flow grid given to ours; the DiTs differ only by fp32 rounding)."""
    model = random_dit("t2v", seed=11)
    cfg = model.config
    pos, neg = texts(cfg)
    noise = seeded_noise(SHAPE, 42)
    pipe = diffusers_pipeline(diffusers_model(cfg, model.state_dict()))
    ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise.clone(), num_inference_steps=10,
               guidance_scale=5.0, num_frames=9, height=64, width=96, output_type="latent").frames
    pipe.scheduler.set_timesteps(10)
    ours = generate(model, noise, Conditioning(pos, neg), steps=10, shift=5.0, guide_scale=5.0, solver="unipc",
                    sigmas=pipe.scheduler.sigmas.double())
    diff = (ours - ref).abs().max().item()
    print(f"ours vs diffusers WanPipeline (10 UniPC steps, CFG 5): max |diff| {diff:.2e}, |x0| max {ref.abs().max():.2f}")
    assert diff < 1e-4 and ref.abs().max() > 0.5
    # control: guidance off gives a clearly different result
    other = generate(model, noise, Conditioning(pos, neg), steps=10, shift=5.0, guide_scale=1.0, solver="unipc",
                     sigmas=pipe.scheduler.sigmas.double())
    assert (other - ref).abs().max() > 100 * diff


@torch.no_grad()
def test_two_experts_match_diffusers_boundary_and_guide_scales():
    high, low = random_dit("t2v", seed=21), random_dit("t2v", seed=22)
    cfg = high.config
    pos, neg = texts(cfg, seed=6)
    noise = seeded_noise(SHAPE, 7)
    pipe = diffusers_pipeline(diffusers_model(cfg, high.state_dict()), diffusers_model(cfg, low.state_dict()),
                              boundary=0.875, shift=12.0)
    ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise.clone(), num_inference_steps=8,
               guidance_scale=4.0, guidance_scale_2=3.0, num_frames=9, height=64, width=96, output_type="latent").frames
    pipe.scheduler.set_timesteps(8)
    ours = generate(high, noise, Conditioning(pos, neg), steps=8, shift=12.0, guide_scale=4.0, solver="unipc",
                    low_noise_model=low, guide_scale_low=3.0, sigmas=pipe.scheduler.sigmas.double())
    assert (ours - ref).abs().max() < 1e-4
    swapped = generate(high, noise, Conditioning(pos, neg), steps=8, shift=12.0, guide_scale=3.0, solver="unipc",
                       low_noise_model=low, guide_scale_low=4.0, sigmas=pipe.scheduler.sigmas.double())
    assert (swapped - ref).abs().max() > 1e-3


class Recorder(torch.nn.Module):
    """A stand-in DiT that records its calls and returns a simple field."""

    def __init__(self, cfg, tag):
        super().__init__()
        self.config, self.tag, self.calls = cfg, tag, []
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, context, clip_fea=None, y=None):
        self.calls.append((t.clone(), context.shape[0], None if y is None else y.clone(), clip_fea))
        return self.w * x + self.tag + context[:, :1, :1, None, None] * 0.1


@pytest.mark.parametrize("solver", ["unipc", "euler", "heun"])
def test_expert_routing_by_timestep(solver):
    cfg = tiny_config("t2v")
    high, low = Recorder(cfg, 1.0), Recorder(cfg, -1.0)
    pos, neg = texts(cfg)
    generate(high, torch.randn(SHAPE), Conditioning(pos, neg), steps=40, shift=12.0, guide_scale=4.0,
             solver=solver, low_noise_model=low, guide_scale_low=3.0)
    t_high = [float(c[0][0]) for c in high.calls]
    t_low = [float(c[0][0]) for c in low.calls]
    assert min(t_high) >= 875 and max(t_low) < 875
    assert all(c[1] == 2 for c in high.calls + low.calls)  # cond and uncond batched
    # one model call per step; Heun evaluates twice per step (not at sigma 0): 79 in all
    assert len(t_high) + len(t_low) == {"unipc": 40, "euler": 40, "heun": 79}[solver]
    if solver == "unipc":  # docs/sampling.md §2: 26 high-noise steps of 40 at shift 12
        assert len(t_high) == 26 and len(t_low) == 14
    else:  # both experts ran (the grid starts at 1 and ends near 0)
        assert t_high and t_low


@torch.no_grad()
def test_cfg_batched_equals_two_passes_and_formula():
    model = random_dit("t2v", seed=3)
    pos, neg = texts(model.config)
    cond = Conditioning(pos, neg)
    x = torch.randn(SHAPE)
    v_b = GuidedVelocity([(model, 4.0)], cond, boundary=None, exact_timesteps=False, keep_tokens=None,
                         batch_cfg=True)(x, 0.7)
    v_s = GuidedVelocity([(model, 4.0)], cond, boundary=None, exact_timesteps=False, keep_tokens=None,
                         batch_cfg=False)(x, 0.7)
    t = torch.tensor([700.0])
    vp, vn = model(x, t, pos), model(x, t, neg)
    assert torch.allclose(v_b, v_s, atol=1e-5) and torch.allclose(v_s, vn + 4.0 * (vp - vn), atol=1e-6)
    assert (vp - vn).abs().max() > 1e-2


def test_official_defaults():
    t2v, i2v, flf, ti2v = (tiny_config(k) for k in ("t2v", "i2v", "flf2v", "ti2v"))
    d = official_defaults(t2v)
    assert (d.steps, d.shift, d.guide_scale, d.boundary) == (50, 5.0, 5.0, None)
    d = official_defaults(t2v, two_experts=True)
    assert (d.steps, d.shift, d.guide_scale, d.guide_scale_low, d.boundary) == (40, 12.0, 4.0, 3.0, 0.875)
    assert official_defaults(i2v, width=832, height=480).shift == 3.0
    assert official_defaults(i2v, width=1280, height=720).shift == 5.0
    d = official_defaults(tiny_config("i2v-2.2"), two_experts=True)
    assert (d.steps, d.shift, d.guide_scale, d.guide_scale_low, d.boundary) == (40, 5.0, 3.5, 3.5, 0.9)
    assert (official_defaults(flf).steps, official_defaults(flf).shift) == (50, 16.0)
    d = official_defaults(ti2v)
    assert (d.steps, d.frames, d.fps) == (50, 121, 24)


# The official negative prompts, written out (not imported from wan_core): Wan2.1 wan/configs/shared_config.py
# `sample_neg_prompt` (the same in Wan2.2), prefixed with "镜头晃动，" in wan_i2v_14B.py and with "镜头切换，" for FLF2V
# (wan/configs/__init__.py); docs/conventions.md §5.
OFFICIAL_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                     "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
                     "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def test_default_negative_prompts_are_the_official_ones():
    t2v, i2v, flf, ti2v, i2v22 = (tiny_config(k) for k in ("t2v", "i2v", "flf2v", "ti2v", "i2v-2.2"))
    assert official_defaults(t2v).negative == OFFICIAL_NEGATIVE
    assert official_defaults(t2v, two_experts=True).negative == OFFICIAL_NEGATIVE
    assert official_defaults(ti2v).negative == OFFICIAL_NEGATIVE
    assert official_defaults(i2v22, two_experts=True).negative == OFFICIAL_NEGATIVE  # Wan2.2 I2V: no prefix
    assert official_defaults(i2v).negative == "镜头晃动，" + OFFICIAL_NEGATIVE
    assert official_defaults(flf).negative == "镜头切换，镜头晃动，" + OFFICIAL_NEGATIVE


def test_seeded_noise_is_comfyui_noise():
    torch.manual_seed(123)
    expected = torch.randn(SHAPE)
    assert torch.equal(seeded_noise(SHAPE, 123), expected)
    assert not torch.equal(seeded_noise(SHAPE, 124), expected)


def test_frame_masks_match_spec():
    m = frame_mask(81, [0], 2, 3)
    assert m.shape == (4, 21, 2, 3)
    assert m[:, 0].eq(1).all() and m[:, 1:].eq(0).all()
    m = frame_mask(81, [0, 80], 2, 3)
    assert m[:, 0].eq(1).all() and m[3, 20].eq(1).all() and m[:3, 20].eq(0).all() and m[:, 1:20].eq(0).all()
    m = frame_mask(9, [5], 1, 1)[:, :, 0, 0]  # pixel frame 5 = latent frame 2, channel 0
    assert m.nonzero().tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        frame_mask(10, [0], 1, 1)


@torch.no_grad()
def test_image_condition_is_vae_of_image_and_grey():
    vae = random_vae("2.1", seed=2)
    first = torch.rand(1, 3, 32, 48) * 2 - 1
    last = torch.rand(1, 3, 32, 48) * 2 - 1
    latent, mask = image_condition(vae, first, last, 9)
    video = torch.zeros(1, 3, 9, 32, 48)
    video[:, :, 0], video[:, :, -1] = first, last
    assert torch.equal(conditioning_video(first, last, 9), video)
    assert torch.allclose(latent, vae.encode(video, normalized=False))
    assert mask.shape == (1, 4, 3, 4, 6) and mask[0, :, 0].eq(1).all() and mask[0, 3, 2].eq(1).all()
    y = concat_y(vae.normalize(latent), mask)
    assert y.shape == (1, 20, 3, 4, 6) and torch.equal(y[:, :4], mask)
    assert torch.equal(concat_y(vae.normalize(latent), mask[:, :1]), concat_y(vae.normalize(latent), mask[:, :1].expand(1, 4, 3, 4, 6)))


def test_resize_image_crops_to_aspect():
    img = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    out = resize_image(img, 20, 40)  # 40x40 -> crop rows 10..30, then resize
    assert out.shape == (2, 3, 20, 40)
    assert torch.equal(resize_image(img[..., 10:30, :], 20, 40), out)
    assert torch.equal(resize_image(img, 40, 40), img)


@torch.no_grad()
def test_i2v_generation_passes_image_conditioning_to_both_passes():
    cfg = tiny_config("i2v")
    model = Recorder(cfg, 0.0)
    pos, neg = texts(cfg)
    y = torch.randn(1, 20, 3, 8, 12)
    clip = torch.randn(1, 257, 1280)
    generate(model, torch.randn(SHAPE), Conditioning(pos, neg, clip, y), steps=3, shift=3.0, guide_scale=5.0)
    for _, batch, y_seen, clip_seen in model.calls:
        assert batch == 2 and torch.equal(y_seen, torch.cat([y, y])) and torch.equal(clip_seen, torch.cat([clip, clip]))
    with pytest.raises(ValueError, match="image conditioning"):
        generate(model, torch.randn(SHAPE), Conditioning(pos, neg), steps=3, shift=3.0, guide_scale=5.0)


@torch.no_grad()
def test_ti2v_first_frame_matches_official_loop():
    """Official textimage2video: x = (1−m)z + m·noise, per-token t (0 on frame-0 tokens), re-impose
    after every UniPC step; reference loop on diffusers' UniPC with the official grid."""
    from diffusers import UniPCMultistepScheduler

    model = random_dit("ti2v", seed=4)
    vae = random_vae("2.2", seed=3)
    pos, neg = texts(model.config)
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    raw, mask = first_frame_latent(vae, image, 9)
    assert mask.shape == (1, 1, 3, 4, 6) and mask[:, :, 0].eq(0).all() and mask[:, :, 1:].eq(1).all()
    z = vae.normalize(raw)
    noise = seeded_noise((1, 48, 3, 4, 6), 9)
    ours = generate(model, noise, Conditioning(pos, neg), steps=6, shift=5.0, guide_scale=5.0, latent=z,
                    noise_mask=mask)
    assert torch.equal(ours[:, :, 0], z[:, :, 0])
    grid = official_sigmas(6, 5.0, "unipc")
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=2)
    sched.set_timesteps(6)
    sched.sigmas = grid.float()
    sched.timesteps = torch.tensor([official_timestep(float(s)) for s in grid[:-1]])
    x = (1 - mask) * z + mask * noise
    per_token = token_mask(mask, x.shape)
    assert per_token.shape == (1, 3 * 2 * 3) and per_token[0, :6].eq(0).all() and per_token[0, 6:].eq(1).all()
    for t in sched.timesteps:
        ts = per_token * float(t)
        vp, vn = model(x, ts, pos), model(x, ts, neg)
        x = sched.step(vn + 5.0 * (vp - vn), t, x).prev_sample
        x = (1 - mask) * z + mask * x
    assert (ours - x).abs().max() < 1e-5 and (ours - x).abs()[:, :, 1:].max() < 1e-5
    assert x[:, :, 1:].abs().max() > 0.1


def test_denoise_uses_the_tail_of_a_longer_grid():
    cfg = tiny_config("t2v")
    model = Recorder(cfg, 0.3)
    pos, _ = texts(cfg)
    latent, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    out = generate(model, noise, Conditioning(pos), steps=4, shift=3.0, guide_scale=1.0, solver="euler",
                   latent=latent, denoise=0.5)
    grid = official_sigmas(8, 3.0, "euler")[-5:]
    seen = [float(c[0][0]) for c in model.calls]
    assert seen == [float(official_timestep(float(s))) for s in grid[:-1]]
    s0 = float(grid[0])
    ref = sample(lambda x, s: model(x, torch.tensor([float(official_timestep(s))]), pos), (1 - s0) * latent + s0 * noise,
                 grid, solver="euler")
    assert torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match="latent"):
        generate(model, noise, Conditioning(pos), steps=4, shift=3.0, guide_scale=1.0, denoise=0.5)


def test_noise_mask_keeps_known_region_for_wan21():
    cfg = tiny_config("t2v")
    model = Recorder(cfg, 0.3)
    pos, neg = texts(cfg)
    latent = torch.randn(SHAPE)
    mask = torch.ones(1, 1, 3, 8, 12)
    mask[..., :4] = 0
    out = generate(model, torch.randn(SHAPE), Conditioning(pos, neg), steps=5, shift=3.0, guide_scale=3.0,
                   latent=latent, noise_mask=mask)
    assert torch.equal(out[..., :4], latent[..., :4]) and not torch.allclose(out[..., 4:], latent[..., 4:])
    assert all(c[0].ndim == 1 for c in model.calls)  # Wan2.1: one timestep per sample (known part noised)


def test_clip_features_flf_concatenates_tokens():
    class FakeClip:
        def encode(self, images):
            return images.mean(dim=(1, 2, 3))[:, None, None].expand(images.shape[0], 257, 1280)

    a, b = torch.full((1, 3, 8, 8), 0.25), torch.full((1, 3, 8, 8), -0.5)
    fea = clip_features(FakeClip(), a, b)
    assert fea.shape == (1, 514, 1280) and fea[0, 0, 0] == 0.25 and fea[0, 257, 0] == -0.5
    assert clip_features(FakeClip(), a, None).shape == (1, 257, 1280)


def test_generate_rejects_bad_input():
    model = Recorder(tiny_config("t2v"), 0.0)
    pos, _ = texts(model.config)
    with pytest.raises(ValueError, match="16, T, h, w"):
        generate(model, torch.randn(1, 48, 3, 8, 12), Conditioning(pos), steps=2, shift=1.0, guide_scale=1.0)
    with pytest.raises(ValueError, match="solver"):
        generate(model, torch.randn(SHAPE), Conditioning(pos), steps=2, shift=1.0, guide_scale=1.0, solver="ddim")
    assert len(flow_sigmas(2, 1.0)) == 3


@torch.no_grad()
def test_image_to_video_inputs_pick_the_vae_convention():
    """One entry point for nodes and the command line: size check, resize, then image_condition (Wan2.1
    VAE) or first_frame_latent (Wan2.2 VAE)."""
    from wan_core.generation.conditioning import image_to_video_inputs

    first, last = torch.rand(1, 3, 40, 40) * 2 - 1, torch.rand(1, 3, 40, 40) * 2 - 1
    vae21, vae22 = random_vae("2.1", seed=2), random_vae("2.2", seed=3)
    inputs = image_to_video_inputs(vae21, first, last, 48, 32, 9)
    latent, known = image_condition(vae21, resize_image(first, 32, 48), resize_image(last, 32, 48), 9)
    assert inputs.latent is None and torch.equal(inputs.image_latent, latent) and torch.equal(inputs.known, known)
    inputs = image_to_video_inputs(vae22, first, None, 64, 64, 9)
    raw, mask = first_frame_latent(vae22, resize_image(first, 64, 64), 9)
    assert inputs.image_latent is None and torch.equal(inputs.latent, raw) and torch.equal(inputs.noise_mask, mask)
    with pytest.raises(ValueError, match="start image only"):
        image_to_video_inputs(vae22, first, last, 64, 64, 9)
    with pytest.raises(ValueError, match="multiples of 32 and frames 1 \\+ 4k.*48x64"):
        image_to_video_inputs(vae22, first, None, 48, 64, 9)


def test_video_latent_shape_from_the_model_channels():
    from wan_core.generation.shapes import latent_stride, video_latent_shape

    assert video_latent_shape(tiny_config("t2v"), 2, 832, 480, 81) == (2, 16, 21, 60, 104)
    assert video_latent_shape(tiny_config("ti2v"), 1, 1280, 704, 121) == (1, 48, 31, 44, 80)
    assert latent_stride(tiny_config("i2v")) == (4, 8, 8)
    with pytest.raises(ValueError, match="multiples of 32 .*width 80"):
        video_latent_shape(tiny_config("ti2v"), 1, 80, 64, 9)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        video_latent_shape(tiny_config("t2v"), 1, 64, 64, 8)
    with pytest.raises(ValueError, match="20-channel latent matches no Wan VAE \\(16 or 48 channels\\)"):
        latent_stride(tiny_config("t2v", in_dim=20, out_dim=20))
