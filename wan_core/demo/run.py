"""The embedded demo: train a tiny Wan DiT from scratch on procedural videos, then sample it.

`python -m wan_core demo --out DIR` needs no downloaded weights and runs on a laptop CPU:
  1. render coloured squares moving left/right/up/down with their captions (`demo_data`), encode them
     with the stand-in VAE (`demo_codec`, Wan2.1 latent geometry) and the captions with the stand-in
     word encoder (`demo_text`);
  2. train a real `WanDiT` (Wan2.1 T2V architecture, small widths) from random weights with the pack's
     trainer (`training.train`, full fine-tune, fp32);
  3. sample every held-out prompt (colour x direction combinations never seen in training) with
     Euler and with Heun, decode, and let the checker score colour and direction;
  4. write DIR/report.json, the loss curve, the weights, and an mp4 + PNG contact sheet per clip.
`prompt_accuracy` in the report is the lower of the two solvers' held-out accuracies.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

from ..generation.pipeline import Conditioning, generate, seeded_noise
from ..io.write import atomic_write, save_safetensors
from ..models.dit import WanConfig, WanDiT
from ..models.text_encoder import pad_context
from ..training.flow_matching import TrainConfig, train
from ..training.plots import loss_curve_image
from . import data as demo_data
from .codec import DemoCodec
from .data import HELD_OUT, TRAIN, caption, make_dataset, parse_caption, read_clip, to_frames
from .text import DemoTextEncoder

SOLVERS = ("euler", "heun")
# The demo DiT: Wan2.1 T2V layout at small widths. text_len 16 (captions have 6 tokens): the Sampler node
# trims the Text Encode node's 512 zero-padded rows to the model's text_len, and 512 mostly-padding rows
# made each step 2.5x slower and diluted the caption in cross-attention.
DEMO_MODEL = dict(model_type="t2v", dim=128, ffn_dim=256, num_heads=4, num_layers=4, in_dim=16, out_dim=16,
                  text_dim=32, freq_dim=256, text_len=16, variant="wanflow-demo")
GOAL_ACCURACY = 0.8
TIME_BUDGET_S = 600.0


@dataclass(frozen=True)
class DemoSettings:
    """Everything besides the seed that shapes a demo run (written to the report)."""

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    sigma_sampling: str = "logit_normal"
    train_shift: float = 3.0  # for sigma_sampling "shift"
    clips_per_combo: int = 100
    sample_steps: int = 20
    sample_shift: float = 3.0
    samples_per_prompt: int = 8  # clips per held-out prompt and solver, each from its own noise
    model: dict = field(default_factory=lambda: dict(DEMO_MODEL))


# A smoke version (seconds, for tests): same pipeline, a much smaller model and run.
QUICK = DemoSettings(steps=30, batch_size=8, learning_rate=2e-3, warmup_steps=3, clips_per_combo=4, sample_steps=4,
                     samples_per_prompt=1, model=dict(DEMO_MODEL, dim=32, ffn_dim=64, num_heads=2, num_layers=1,
                                                      freq_dim=32))


def demo_config(settings: DemoSettings = DemoSettings()) -> WanConfig:
    return WanConfig(**settings.model)


def init_weights_(model: WanDiT) -> WanDiT:
    """The initialisation a DiT trains well from: Xavier-uniform Linear layers (as the official Wan
    `init_weights`), and the output head plus the time projection at zero ("adaLN-zero"): every block's
    gates start at 0, so each block starts as the identity and the untrained model predicts v = 0."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)
        for layer in (model.head.head, model.time_projection[1]):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    return model


def demo_model(seed: int = 0, settings: DemoSettings = DemoSettings()) -> WanDiT:
    """A freshly initialised demo DiT (`init_weights_`), drawn from `seed` without touching the global
    random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_weights_(WanDiT(demo_config(settings)))


def train_config(settings: DemoSettings, seed: int) -> TrainConfig:
    return TrainConfig(mode="full", steps=settings.steps, learning_rate=settings.learning_rate,
                       batch_size=settings.batch_size, warmup_steps=settings.warmup_steps, lr_schedule="cosine",
                       sigma_sampling=settings.sigma_sampling, shift=settings.train_shift, precision="fp32",
                       gradient_checkpointing=False, ema_decay=0.0, seed=seed)


# --------------------------------------------------------------------------------------------
# Sampling and scoring
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_prompts(model, codec, text_encoder, prompts: list[str], *, solver: str, steps: int, shift: float,
                   noise_seed: int, batch: int = 40) -> torch.Tensor:
    """Sample one clip per prompt (guide scale 1: the conditional pass only) and decode it:
    -> frames [N, F, H, W, 3] in 0..1. Noise row i depends on (noise_seed, i) only."""
    f, h, w = demo_data.FRAMES, demo_data.HEIGHT, demo_data.WIDTH
    shape = codec.latent_shape((len(prompts), 3, f, h, w))
    noise = seeded_noise(shape, noise_seed)
    clips = []
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        context = pad_context(text_encoder.encode(part), model.config.text_len)
        x0 = generate(model, noise[start:start + len(part)], Conditioning(context), steps=steps, shift=shift,
                      guide_scale=1.0, solver=solver)
        video = codec.decode(x0, normalized=True)
        clips.extend(to_frames(v) for v in video)
    return torch.stack(clips)


def score(clips: torch.Tensor, prompts: list[str]) -> dict:
    """Accuracy (colour and direction both right), colour and direction accuracies, and the readings."""
    readings = [read_clip(c) for c in clips]
    wanted = [parse_caption(p) for p in prompts]
    n = len(prompts)
    return {
        "accuracy": sum((r.colour, r.direction) == w for r, w in zip(readings, wanted)) / n,
        "colour_accuracy": sum(r.colour == w[0] for r, w in zip(readings, wanted)) / n,
        "direction_accuracy": sum(r.direction == w[1] for r, w in zip(readings, wanted)) / n,
        "readings": [{"prompt": p, "colour": r.colour, "direction": r.direction,
                      "travel_px": [round(r.travel[0], 2), round(r.travel[1], 2)]} for p, r in zip(prompts, readings)],
    }


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_mp4(path: Path, frames: torch.Tensor, fps: int = 8, upscale: int = 4) -> Path:
    """frames [F, H, W, 3] in 0..1 -> an H.264 mp4 (yuv420p), pixels enlarged `upscale` times."""
    import av  # noqa: PLC0415 - only needed when writing videos

    big = frames.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    rgb = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    def write(tmp):
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps), options={"crf": "12"})
            stream.width, stream.height, stream.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
            for i, image in enumerate(rgb):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())

    return atomic_write(path, write)


def contact_sheet(frames: torch.Tensor, upscale: int = 2, gap: int = 2):
    """frames [F, H, W, 3] in 0..1 -> a PIL image with the frames side by side."""
    from PIL import Image  # noqa: PLC0415

    f, h, w, _ = frames.shape
    big = F.interpolate(frames.permute(0, 3, 1, 2), scale_factor=upscale, mode="nearest").permute(0, 2, 3, 1)
    sheet = torch.ones(h * upscale, f * (w * upscale + gap) - gap, 3)
    for i in range(f):
        x = i * (w * upscale + gap)
        sheet[:, x:x + w * upscale] = big[i]
    return Image.fromarray((sheet * 255).round().to(torch.uint8).numpy())


def save_image(image, path: Path) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_json(data: dict, path: Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def _slug(text: str) -> str:
    return "_".join(text.split()[1:]).replace("_moving", "")  # "a red square moving left" -> "red_square_left"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_demo(out, *, seed: int = 0, steps: int | None = None, quick: bool = False,
             settings: DemoSettings | None = None, log=print) -> dict:
    """Train and evaluate the demo; write everything to `out`; return the report."""
    settings = settings or (QUICK if quick else DemoSettings())
    if steps is not None:
        settings = replace(settings, steps=steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    codec, text_encoder = DemoCodec(), DemoTextEncoder(settings.model["text_dim"])
    dataset = make_dataset(codec, text_encoder, clips_per_combo=settings.clips_per_combo, seed=seed)
    model = demo_model(seed, settings)
    params = sum(p.numel() for p in model.parameters())
    log(f"demo: {len(dataset)} training clips of {len(TRAIN)} colour x direction combos; "
        f"held out: {', '.join(caption(*c) for c in HELD_OUT)}")
    log(f"demo: training a {params / 1e6:.2f} M-parameter Wan DiT from scratch for {settings.steps} steps "
        f"(batch {settings.batch_size}, {torch.get_num_threads()} CPU threads)")

    every = max(1, settings.steps // 10)

    def progress(step, total, metrics):
        if step % every == 0 or step == total:
            log(f"  step {step:5d}/{total}  loss {metrics.loss:.4f}  {time.perf_counter() - started:6.1f} s")

    result = train(model, dataset, train_config(settings, seed), callback=progress)
    if result.stopped:
        raise RuntimeError(f"demo training failed: {result.stopped}")
    losses = result.losses
    tail = max(1, len(losses) // 20)
    save_image(loss_curve_image(losses, title=f"demo training loss ({len(losses)} steps)"), out / "loss.png")
    save_safetensors(model.state_dict(), out / "demo_dit.safetensors",
                     metadata={"config": json.dumps(model.config.as_dict())})

    held_out = demo_data.held_out_prompts()
    prompts = [p for p in held_out for _ in range(settings.samples_per_prompt)]
    accuracy, details = {}, {}
    sample_started = time.perf_counter()
    for solver in SOLVERS:
        clips = sample_prompts(model, codec, text_encoder, prompts, solver=solver, steps=settings.sample_steps,
                               shift=settings.sample_shift, noise_seed=seed + 1)
        details[solver] = score(clips, prompts)
        accuracy[solver] = details[solver]["accuracy"]
        for k, prompt in enumerate(held_out):  # the first sample of each held-out prompt
            frames = clips[k * settings.samples_per_prompt]
            name = f"{_slug(prompt)}_{solver}"
            write_mp4(out / "clips" / f"{name}.mp4", frames)
            save_image(contact_sheet(frames), out / "clips" / f"{name}.png")
    # the same check on combinations seen in training (Euler), to tell memorisation from composition
    seen = [caption(*c) for c in TRAIN]
    seen_score = score(sample_prompts(model, codec, text_encoder, seen, solver="euler", steps=settings.sample_steps,
                                      shift=settings.sample_shift, noise_seed=seed + 2), seen)
    sample_seconds = time.perf_counter() - sample_started

    report = {
        "prompt_accuracy": min(accuracy.values()),
        "prompt_accuracy_is": "the lower of the Euler and Heun accuracies on the held-out prompts",
        "accuracy": accuracy,
        "goal_accuracy": GOAL_ACCURACY,
        "train_seconds": round(result.seconds, 2),
        "train_time_budget_seconds": TIME_BUDGET_S,
        "final_loss": sum(losses[-tail:]) / tail,
        "final_loss_is": f"mean of the last {tail} step losses",
        "first_loss": losses[0],
        "steps": result.steps_done,
        "seed": seed,
        "held_out_prompts": held_out,
        "train_prompts": seen,
        "training_clips": len(dataset),
        "seen_prompt_accuracy_euler": seen_score["accuracy"],
        "per_solver": details,
        "sampling": {"steps": settings.sample_steps, "shift": settings.sample_shift, "guide_scale": 1.0,
                     "samples_per_prompt": settings.samples_per_prompt, "seconds": round(sample_seconds, 2)},
        "settings": {k: v for k, v in asdict(settings).items() if k != "model"},
        "model_config": model.config.as_dict(),
        "parameters": params,
        "cpu_threads": torch.get_num_threads(),
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    write_json(report, out / "report.json")
    log(f"demo: final loss {report['final_loss']:.4f} after {report['steps']} steps in {report['train_seconds']:.0f} s "
        f"(budget {TIME_BUDGET_S:.0f} s)")
    log(f"demo: held-out prompt accuracy  euler {accuracy['euler']:.2f}  heun {accuracy['heun']:.2f}  "
        f"(goal {GOAL_ACCURACY}); on training combos (euler) {seen_score['accuracy']:.2f}")
    log(f"demo: wrote {out / 'report.json'}, {out / 'loss.png'} and clips in {out / 'clips'}")
    return report
