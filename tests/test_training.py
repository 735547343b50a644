"""Flow-matching trainer: objective in Wan's convention, σ sampling, schedule, batches, resume, bad input."""
from __future__ import annotations

import errno
import math

import pytest
import torch

from wan_core.sampling.solvers import shift_sigma
from wan_core.testing.dit import random_dit
from wan_core.training.flow_matching import (
    STATE_FILE,
    TrainConfig,
    Trainer,
    diffsynth_weights,
    epoch_batches,
    expert_sigma_ranges,
    flow_matching_loss,
    learning_rate_factor,
    sample_sigmas,
    train,
)
from wan_core.training.run import StopReason, load_state

LATENT = (16, 2, 4, 4)


class ToyLatents:
    """The dataset protocol over random latents; `poison` puts NaN into one item."""

    def __init__(self, n=6, poison=None, seed=1, text_dim=64):
        g = torch.Generator().manual_seed(seed)
        self.items = [{"latent": torch.randn(*LATENT, generator=g), "context": torch.randn(3 + i % 3, text_dim, generator=g),
                       "caption": f"clip {i}"} for i in range(n)]
        if poison is not None:
            self.items[poison]["latent"][0, 0, 0, 0] = float("nan")
        self.skipped = []

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def bucket_of(self, i):
        return tuple(self.items[i]["latent"].shape)


def small_model(seed=0):
    return random_dit("t2v", seed, text_len=8)


def quick(**kw):
    base = dict(mode="full", steps=4, learning_rate=1e-3, batch_size=2, precision="fp32", gradient_checkpointing=False,
                sigma_sampling="uniform")
    base.update(kw)
    return TrainConfig(**base)


# ---- σ sampling and loss weights ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "shift"])
def test_sigmas_stay_in_range_and_follow_their_distribution(kind):
    cfg = TrainConfig(sigma_sampling=kind, shift=5.0, logit_mean=0.3, logit_std=1.2)
    s = sample_sigmas(40000, cfg, torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32 and s.min() >= 0 and s.max() <= 1
    median = s.median().item()
    expected = {"uniform": 0.5, "logit_normal": 1 / (1 + math.exp(-0.3)), "shift": shift_sigma(torch.tensor(0.5), 5.0).item()}
    assert median == pytest.approx(expected[kind], abs=0.01)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "shift"])
def test_sigma_range_is_the_truncated_distribution(kind):
    lo, hi = 0.875, 1.0
    cfg = TrainConfig(sigma_sampling=kind, sigma_range=(lo, hi))
    s = sample_sigmas(20000, cfg, torch.Generator().manual_seed(1))
    assert s.min() >= lo and s.max() <= hi
    # same draws as rejection sampling from the full distribution: compare medians
    full = sample_sigmas(400000, TrainConfig(sigma_sampling=kind), torch.Generator().manual_seed(2))
    kept = full[(full >= lo) & (full <= hi)]
    assert s.median().item() == pytest.approx(kept.median().item(), abs=0.005)


def test_expert_ranges_split_at_the_boundary():
    r = expert_sigma_ranges(0.875)
    assert r == {"high_noise": (0.875, 1.0), "low_noise": (0.0, 0.875)}
    with pytest.raises(ValueError, match="boundary"):
        expert_sigma_ranges(1.2)


def test_diffsynth_weights_have_mean_one_and_peak_mid_grid():
    grid = shift_sigma(torch.linspace(1, 0, 1001, dtype=torch.float64)[:1000], 5.0)
    w = diffsynth_weights(grid.float())
    assert w.mean().item() == pytest.approx(1.0, abs=1e-4)
    assert w.min().item() == pytest.approx(0.0, abs=1e-6)
    assert diffsynth_weights(torch.tensor([0.5])).item() > diffsynth_weights(torch.tensor([0.95])).item()


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate_factor(0, cfg) == pytest.approx(0.1)
    assert learning_rate_factor(9, cfg) == pytest.approx(1.0)
    assert learning_rate_factor(10, cfg) == pytest.approx(1.0)
    assert learning_rate_factor(60, cfg) == pytest.approx(0.55)
    assert learning_rate_factor(110, cfg) == pytest.approx(0.1)
    assert learning_rate_factor(50, TrainConfig(steps=100, lr_schedule="constant")) == 1.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sigma_sampling"):
        TrainConfig(sigma_sampling="cosmic")
    with pytest.raises(ValueError, match="sigma_range"):
        TrainConfig(sigma_range=(0.5, 0.2))


# ---- the objective ---------------------------------------------------------------------------

class Oracle(torch.nn.Module):
    """Knows x0, so it can return the exact Wan velocity ε − x0 = (x − x0)/σ from x and 1000σ."""

    def __init__(self, x0, config):
        super().__init__()
        self.x0, self.config, self.seen = x0, config, {}

    def forward(self, x, timestep, context, clip_fea=None, y=None):
        self.seen = {"x": x, "t": timestep}
        sigma = (timestep if timestep.ndim == 1 else timestep[:, -1]) / 1000
        return (x - self.x0) / sigma.view(-1, 1, 1, 1, 1)


def test_loss_is_zero_for_the_exact_velocity_and_positive_for_the_wrong_sign():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, *LATENT, generator=g), torch.randn(2, *LATENT, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    oracle = Oracle(x0, small_model().config)
    ctx = torch.zeros(2, 4, 64)
    assert flow_matching_loss(oracle, x0, ctx, sigma, noise).item() < 1e-10
    expected_x = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(oracle.seen["x"], expected_x)
    torch.testing.assert_close(oracle.seen["t"], sigma * 1000)

    class Flipped(Oracle):
        def forward(self, *a, **k):
            return -super().forward(*a, **k)
    loss = flow_matching_loss(Flipped(x0, oracle.config), x0, ctx, sigma, noise)
    assert loss.item() == pytest.approx((4 * (noise - x0) ** 2).mean().item(), rel=1e-5)


def test_first_frame_clean_keeps_frame_zero_and_leaves_it_out_of_the_loss():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, *LATENT, generator=g), torch.randn(1, *LATENT, generator=g)
    oracle = Oracle(x0, small_model().config)
    sigma = torch.tensor([0.6])

    class WrongOnFrameZero(Oracle):
        def forward(self, x, timestep, *a, **k):
            v = super().forward(x, timestep, *a, **k)
            v[:, :, 0] += 100.0
            return v
    wrong = WrongOnFrameZero(x0, oracle.config)
    loss = flow_matching_loss(wrong, x0, torch.zeros(1, 4, 64), sigma, noise, first_frame_clean=True)
    assert loss.item() < 1e-10
    torch.testing.assert_close(wrong.seen["x"][:, :, 0], x0[:, :, 0])
    t = wrong.seen["t"]
    per_frame = (LATENT[2] // 2) * (LATENT[3] // 2)
    assert t.shape == (1, LATENT[1] * per_frame)
    assert (t[:, :per_frame] == 0).all() and torch.allclose(t[:, per_frame:], torch.tensor(600.0))


@pytest.mark.parametrize("frames", [2, 3])
def test_first_frame_clean_loss_is_the_mean_over_the_trained_frames(frames):
    """The normaliser: a velocity off by c_b on every trained element of sample b (and by anything on frame 0)
    gives the loss mean_b(c_b²) exactly, whatever the frame count (dividing by all frames would give
    (T − 1)/T of it)."""
    g = torch.Generator().manual_seed(2)
    shape = (2, LATENT[0], frames, *LATENT[2:])
    x0, noise = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    offsets = torch.tensor([0.5, 1.5]).view(2, 1, 1, 1, 1)

    class Off(Oracle):
        def forward(self, x, timestep, *a, **k):
            v = super().forward(x, timestep, *a, **k) + offsets
            v[:, :, 0] = 1e3  # frame 0 is left out of the loss
            return v
    model = Off(x0, small_model().config)
    loss = flow_matching_loss(model, x0, torch.zeros(2, 4, 64), torch.tensor([0.3, 0.7]), noise, first_frame_clean=True)
    assert loss.item() == pytest.approx((0.25 + 2.25) / 2, rel=1e-5)
    weighted = flow_matching_loss(model, x0, torch.zeros(2, 4, 64), torch.tensor([0.3, 0.7]), noise,
                                  first_frame_clean=True, weights=torch.tensor([2.0, 0.0]))
    assert weighted.item() == pytest.approx(2 * 0.25 / 2, rel=1e-5)


# ---- batches ---------------------------------------------------------------------------------

def test_epoch_batches_group_buckets_cover_everything_and_repeat_deterministically():
    class Mixed(ToyLatents):
        def bucket_of(self, i):
            return "a" if i % 3 else "b"
    ds = Mixed(n=9)
    batches = epoch_batches(ds, 4, seed=3, epoch=0)
    assert batches == epoch_batches(ds, 4, seed=3, epoch=0)
    assert batches != epoch_batches(ds, 4, seed=3, epoch=1)
    assert all(len(b) == 4 and len({ds.bucket_of(i) for i in b}) == 1 for b in batches)
    assert set(sum(batches, [])) == set(range(9))


# ---- training runs ---------------------------------------------------------------------------

def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_full_training_lowers_the_loss():
    model = small_model()
    result = train(model, ToyLatents(n=4), quick(steps=30, learning_rate=2e-3, warmup_steps=3))
    assert result.steps_done == 30 and len(result.losses) == 30
    assert all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-5:]) / 5 < 0.8 * sum(result.losses[:5]) / 5
    assert not any(p.requires_grad for p in model.parameters())


def test_bf16_autocast_keeps_fp32_master_weights_and_trains():
    model = small_model().to(torch.bfloat16)
    result = train(model, ToyLatents(n=4), quick(steps=12, precision="bf16", learning_rate=2e-3))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(x) for x in result.losses) and result.losses[-1] < result.losses[0]


def test_gradient_checkpointing_gives_the_same_update():
    a, b = small_model(), small_model()
    train(a, ToyLatents(), quick(steps=2, gradient_checkpointing=False))
    train(b, ToyLatents(), quick(steps=2, gradient_checkpointing=True))
    for (n, pa), pb in zip(params(a).items(), params(b).values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)


def test_training_inside_inference_mode_works():
    with torch.inference_mode():  # how ComfyUI runs nodes
        model = small_model()
        data = ToyLatents(n=4)
        result = train(model, data, quick(steps=6))
    assert result.steps_done == 6 and all(math.isfinite(x) for x in result.losses)
    assert not next(model.parameters()).is_inference()


def test_grad_accumulation_equals_the_bigger_batch():
    g = torch.Generator().manual_seed(5)
    big = {"latent": torch.randn(4, *LATENT, generator=g), "context": torch.randn(4, 8, 64, generator=g),
           "sigma": torch.rand(4, generator=g), "noise": torch.randn(4, *LATENT, generator=g)}
    halves = iter([{k: v[:2] for k, v in big.items()}, {k: v[2:] for k, v in big.items()}])
    a, b = small_model(), small_model()
    ta = Trainer(a, ToyLatents(), quick(batch_size=4, lr_schedule="constant"))
    tb = Trainer(b, ToyLatents(), quick(batch_size=2, grad_accum=2, lr_schedule="constant"))
    ta.micro_batch = lambda: big
    tb.micro_batch = lambda: next(halves)
    la, lb = ta.train_step().loss, tb.train_step().loss
    assert la == pytest.approx(lb, rel=1e-5)
    # Adam's first step is ~lr·sign(grad), too sensitive to compare: compare the (clipped) gradients
    grads_a = {n: p.grad for n, p in a.named_parameters()}
    for n, p in b.named_parameters():
        torch.testing.assert_close(p.grad, grads_a[n], rtol=1e-4, atol=1e-7, msg=n)
    assert sum(float(g.abs().sum()) for g in grads_a.values()) > 0


def test_ema_follows_its_closed_form_and_is_the_result():
    """ema_0 = the weights before training, ema_t = d·ema_{t−1} + (1 − d)·w_t after optimizer step t; train()
    ends with the model holding the EMA."""
    d = 0.8
    model = small_model()
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    last = {}

    def record(step, total, metrics):  # the trained weights w_t, right after step t
        for n, p in model.named_parameters():
            ema[n] = d * ema[n] + (1 - d) * p.detach()
            last[n] = p.detach().clone()
    result = train(model, ToyLatents(), quick(steps=4, ema_decay=d, lr_schedule="constant"), callback=record)
    assert result.steps_done == 4
    moved = 0.0
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ema[n], rtol=1e-5, atol=1e-7, msg=n)
        moved = max(moved, (last[n] - ema[n]).abs().max().item())
    assert moved > 1e-4  # the EMA is not simply the last weights: the comparison can fail


def _fixed_batch(seed=5, n=2):
    g = torch.Generator().manual_seed(seed)
    return {"latent": torch.randn(n, *LATENT, generator=g), "context": torch.randn(n, 8, 64, generator=g),
            "sigma": torch.rand(n, generator=g), "noise": torch.randn(n, *LATENT, generator=g)}


def test_gradient_clipping_applies_the_clipped_gradient_and_reports_the_norm_before_it():
    batch = _fixed_batch()
    reference = Trainer(small_model(), ToyLatents(), quick(max_grad_norm=0.0, lr_schedule="constant"))
    reference.micro_batch = lambda: batch
    unclipped = reference.train_step()
    raw = {n: p.grad.clone() for n, p in reference.named_params}
    norm = torch.stack([g.norm() for g in raw.values()]).norm().item()
    assert unclipped.grad_norm == pytest.approx(norm, rel=1e-5)
    for max_norm in (norm / 4, 2 * norm):  # clipped, and left alone below the bound
        model = small_model()
        before = params(model)
        trainer = Trainer(model, ToyLatents(), quick(max_grad_norm=max_norm, lr_schedule="constant"))
        trainer.micro_batch = lambda: batch
        metrics = trainer.train_step()
        assert metrics.grad_norm == pytest.approx(norm, rel=1e-5)  # StepMetrics: the norm before clipping
        factor = min(1.0, max_norm / (norm + 1e-6))
        for n, p in trainer.named_params:
            torch.testing.assert_close(p.grad, raw[n] * factor, rtol=1e-5, atol=1e-9, msg=n)
        applied = torch.stack([p.grad.norm() for _, p in trainer.named_params]).norm().item()
        assert applied == pytest.approx(min(norm, max_norm), rel=1e-4)
        # the optimizer step used that gradient: AdamW from the same start with the clipped gradient
        check = small_model()
        check.load_state_dict(before)
        cfg = trainer.config
        opt = torch.optim.AdamW(check.parameters(), lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)
        for n, p in check.named_parameters():
            p.grad = raw[n] * factor
        opt.step()
        for (n, p), q in zip(model.named_parameters(), check.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-8, msg=n)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = quick(steps=6, ema_decay=0.9, grad_accum=2, warmup_steps=2)
    straight = small_model()
    r_straight = train(straight, ToyLatents(), cfg)

    class Stop(Exception):
        pass

    def interrupt_at_3(step, total, metrics):
        if step == 3:
            raise Stop()
    first = small_model()
    with pytest.raises(Stop):
        train(first, ToyLatents(), cfg, state_dir=tmp_path, callback=interrupt_at_3)
    assert load_state(tmp_path, STATE_FILE)["step"] == 3

    resumed = small_model()  # a fresh process would start from the base weights again
    r_resumed = train(resumed, ToyLatents(), cfg, state_dir=tmp_path)
    assert r_resumed.steps_done == 6
    assert r_resumed.losses == pytest.approx(r_straight.losses, rel=0, abs=0)
    for (n, p), q in zip(params(straight).items(), params(resumed).values()):
        assert torch.equal(p, q), n


def test_resume_with_other_settings_is_refused(tmp_path):
    train(small_model(), ToyLatents(), quick(steps=2), state_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        train(small_model(), ToyLatents(), quick(steps=4, batch_size=3), state_dir=tmp_path)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tmp_path):
    data = ToyLatents(n=4, poison=2)
    model = small_model()
    # the poisoned item shows up in some batch: training must stop there, not crash or step with NaN
    result = train(model, data, quick(steps=50, save_every=1), state_dir=tmp_path)
    assert result.stopped is not None and result.stopped.reason is StopReason.NON_FINITE
    assert "non-finite loss" in result.stopped.message
    assert result.steps_done < 50
    assert all(math.isfinite(p.float().sum().item()) for p in model.parameters())
    state = load_state(tmp_path, STATE_FILE)
    assert state["step"] == result.steps_done == result.checkpoint_step
    for n, p in model.named_parameters():
        assert torch.equal(state["trainable"][n], p.detach()), n


def test_disk_full_on_save_keeps_the_previous_state(tmp_path, monkeypatch):
    train(small_model(), ToyLatents(), quick(steps=2), state_dir=tmp_path)
    before = (tmp_path / STATE_FILE).read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=f"could not write {tmp_path / STATE_FILE}: No space.*MiB free.*previous file is kept"):
        train(small_model(), ToyLatents(), quick(steps=4), state_dir=tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == before
    # torch's own writer reports a full disk as a RuntimeError from its C++ core: the same clear error
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3")))
    with pytest.raises(OSError, match="could not write .*PytorchStreamWriter failed.*MiB free"):
        train(small_model(), ToyLatents(), quick(steps=4), state_dir=tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left behind
    monkeypatch.undo()
    assert load_state(tmp_path, STATE_FILE)["step"] == 2


def test_empty_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        train(small_model(), ToyLatents(n=0), quick())


def test_validation_runs_every_n_steps_without_gradients():
    seen = []

    def validate(step):
        seen.append((step, torch.is_grad_enabled()))
    train(small_model(), ToyLatents(), quick(steps=6), validate=validate, validate_every=2)
    assert seen == [(2, False), (4, False), (6, False)]


def test_first_frame_clean_trains_ti2v_and_is_refused_elsewhere():
    class TI2V(ToyLatents):
        def __init__(self):
            super().__init__(n=2)
            for it in self.items:
                it["latent"] = torch.randn(48, 2, 4, 4)
    result = train(random_dit("ti2v", 0, text_len=8), TI2V(), quick(steps=2, first_frame_clean=True))
    assert result.steps_done == 2 and all(math.isfinite(x) for x in result.losses)
    with pytest.raises(ValueError, match="TI2V"):
        train(small_model(), ToyLatents(), quick(first_frame_clean=True))
