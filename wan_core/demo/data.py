"""The demo's procedural data: coloured squares moving in known directions, their captions, a
train / held-out split of colour x direction combinations, and the checker that scores clips.

A clip is a plain grey background with one square of a palette colour that moves in a straight line
(left, right, up or down) at a random speed from a random start; its caption says so: "a red square
moving left". The held-out combinations never appear in training, but every colour and every
direction does (with other partners), so a model that gets them right has learnt colour and motion
from separate words and composes them.

The checker reads decoded RGB frames [F, H, W, 3] in 0..1: the foreground is what differs from the
background; its mean colour picks the nearest palette colour, and the shift of its centroid between
the first and the last quarter of the clip gives the direction.

`DemoDataset` implements the trainer's dataset protocol over in-memory tensors (latents from the
demo codec, normalized; contexts from the demo text encoder, unpadded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

COLOURS = {  # name -> RGB in 0..1, far from each other and from the background
    "red": (0.90, 0.12, 0.12),
    "green": (0.12, 0.80, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "white": (1.00, 1.00, 1.00),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), rows grow downwards
BACKGROUND = (0.5, 0.5, 0.5)
FRAMES, HEIGHT, WIDTH = 17, 64, 64  # latent [16, 5, 8, 8]: 80 DiT tokens
SQUARE_SIZE = (16.0, 20.0)  # pixels, drawn uniformly
SPEED = (2.0, 2.5)  # pixels per frame, drawn uniformly: more than a latent pixel per latent frame

# One held-out direction per colour, cycling through the directions: every colour and every direction
# is held out at least once, and each still appears in training with the other partners.
HELD_OUT = tuple((c, list(DIRECTIONS)[i % len(DIRECTIONS)]) for i, c in enumerate(COLOURS))
TRAIN = tuple((c, d) for c in COLOURS for d in DIRECTIONS if (c, d) not in HELD_OUT)

FOREGROUND_DISTANCE = 0.2  # RGB distance from the background above which a pixel is foreground
MIN_FOREGROUND_PIXELS = 16  # per clip: less than a 4x4 block in total means "no object"
MIN_TRAVEL = 4.0  # pixels the centroid must move along the dominant axis to count as motion


def caption(colour: str, direction: str) -> str:
    return f"a {colour} square moving {direction}"


def parse_caption(text: str) -> tuple[str, str]:
    """(colour, direction) named in a caption; a clear error when it names not exactly one of each."""
    words = text.lower().replace(",", " ").split()
    colours = [w for w in words if w in COLOURS]
    directions = [w for w in words if w in DIRECTIONS]
    if len(colours) != 1 or len(directions) != 1:
        raise ValueError(f"a demo caption names one colour of {list(COLOURS)} and one direction of "
                         f"{list(DIRECTIONS)}; found {text!r}")
    return colours[0], directions[0]


def held_out_prompts() -> list[str]:
    return [caption(c, d) for c, d in HELD_OUT]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Motion:
    """A square's path: centre (x, y) at frame 0 in pixels, side, and speed in pixels per frame."""

    x: float
    y: float
    size: float
    speed: float


def random_motion(direction: str, gen: torch.Generator, *, frames: int = FRAMES, height: int = HEIGHT,
                  width: int = WIDTH) -> Motion:
    """A random start, size and speed such that the square stays fully inside the frame all along."""
    u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
    size = SQUARE_SIZE[0] + u[0] * (SQUARE_SIZE[1] - SQUARE_SIZE[0])
    speed = SPEED[0] + u[1] * (SPEED[1] - SPEED[0])
    travel = speed * (frames - 1)
    dx, dy = DIRECTIONS[direction]
    half = size / 2

    def start(extent: int, step: int, r: float) -> float:
        low = half + max(0.0, -step * travel)
        high = extent - half - max(0.0, step * travel)
        if high < low:
            raise ValueError(f"a {size:.0f} px square moving {travel:.0f} px does not fit in {extent} px")
        return low + r * (high - low)

    return Motion(start(width, dx, u[2]), start(height, dy, u[3]), size, speed)


def _coverage(centres: torch.Tensor, size: float, extent: int) -> torch.Tensor:
    """[F, extent] fraction of each pixel [i, i+1) covered by the interval centre ± size/2 (anti-aliased)."""
    pixels = torch.arange(extent, dtype=torch.float64)
    left, right = (centres - size / 2)[:, None], (centres + size / 2)[:, None]
    return (torch.minimum(pixels + 1, right) - torch.maximum(pixels, left)).clamp(0, 1)


def render_clip(colour: str, direction: str, motion: Motion, *, frames: int = FRAMES, height: int = HEIGHT,
                width: int = WIDTH) -> torch.Tensor:
    """RGB frames [F, H, W, 3] in 0..1 of one square moving in a straight line."""
    dx, dy = DIRECTIONS[direction]
    t = torch.arange(frames, dtype=torch.float64)
    cover_x = _coverage(motion.x + dx * motion.speed * t, motion.size, width)  # [F, W]
    cover_y = _coverage(motion.y + dy * motion.speed * t, motion.size, height)  # [F, H]
    alpha = (cover_y[:, :, None] * cover_x[:, None, :])[..., None]  # [F, H, W, 1]
    fg = torch.tensor(COLOURS[colour], dtype=torch.float64)
    bg = torch.tensor(BACKGROUND, dtype=torch.float64)
    return (bg + alpha * (fg - bg)).float()


def to_video(frames: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] in 0..1 -> [1, 3, F, H, W] in [-1, 1], the VAE's input."""
    return (frames.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1).contiguous()


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] (one decoded clip) -> [F, H, W, 3] in 0..1."""
    return ((video.float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What the checker sees in a clip: palette colour and direction, None where it sees none."""

    colour: str | None
    direction: str | None
    travel: tuple[float, float] = (0.0, 0.0)  # centroid shift (dx, dy) in pixels, first to last quarter


def read_clip(frames: torch.Tensor) -> Reading:
    """Colour and motion direction of the object in frames [F, H, W, 3] (0..1)."""
    if not torch.is_tensor(frames) or frames.ndim != 4 or frames.shape[-1] != 3:
        found = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
        raise ValueError(f"the checker reads RGB frames [F, H, W, 3] in 0..1; found {found}")
    frames = frames.float()
    distance = (frames - torch.tensor(BACKGROUND)).norm(dim=-1)  # [F, H, W]
    mask = distance > FOREGROUND_DISTANCE
    if int(mask.sum()) < MIN_FOREGROUND_PIXELS:
        return Reading(None, None)

    mean = frames[mask].mean(0)
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names])
    colour = names[int((palette - mean).norm(dim=-1).argmin())]

    # centroid of the foreground (weighted by how far it is from the background) per quarter of the clip
    weight = distance * mask
    n = frames.shape[0]
    quarter = max(1, n // 4)
    ys = torch.arange(frames.shape[1], dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(frames.shape[2], dtype=torch.float32)[None, :] + 0.5

    def centroid(part: torch.Tensor):
        total = part.sum()
        if total <= 0:
            return None
        return float((part * xs).sum() / total), float((part * ys).sum() / total)

    first, last = centroid(weight[:quarter]), centroid(weight[n - quarter:])
    if first is None or last is None:
        return Reading(colour, None)
    dx, dy = last[0] - first[0], last[1] - first[1]
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return Reading(colour, None, (dx, dy))
    if abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    return Reading(colour, direction, (dx, dy))


def score_clip(frames: torch.Tensor, prompt: str) -> bool:
    """True when the clip shows the prompt's colour moving in the prompt's direction."""
    reading = read_clip(frames)
    return (reading.colour, reading.direction) == parse_caption(prompt)


# --------------------------------------------------------------------------------------------
# The training set
# --------------------------------------------------------------------------------------------


class DemoDataset:
    """The trainer's dataset protocol over in-memory tensors (one bucket: all clips share one shape).

    Item i: {"latent": [16, T, h, w] fp32 normalized, "context": [L, D] fp32 unpadded, "caption",
    "source"}; `bucket_of(i)` is the latent shape; `skipped` is always empty.
    """

    def __init__(self, latents: torch.Tensor, captions: list[str], contexts: dict[str, torch.Tensor],
                 sources: list[str]):
        if not (len(latents) == len(captions) == len(sources)):
            raise ValueError(f"one caption and source per latent expected; found {len(latents)} latents, "
                             f"{len(captions)} captions, {len(sources)} sources")
        self.latents = latents
        self.captions = captions
        self.contexts = contexts  # caption -> [L, D]; the few distinct captions are encoded once
        self.sources = sources
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        text = self.captions[i]
        return {"latent": self.latents[i], "context": self.contexts[text], "caption": text, "source": self.sources[i]}

    def bucket_of(self, i: int) -> tuple:
        return tuple(self.latents[i].shape)


def make_dataset(codec, text_encoder, *, clips_per_combo: int, seed: int = 0, combos=TRAIN,
                 chunk: int = 64) -> DemoDataset:
    """Render `clips_per_combo` random clips of each (colour, direction) combo, encode them with the demo
    codec (normalized latents) and their captions with the demo text encoder."""
    if clips_per_combo < 1:
        raise ValueError(f"clips_per_combo must be >= 1, found {clips_per_combo}")
    gen = torch.Generator().manual_seed(seed)
    plan = [(colour, direction, k, random_motion(direction, gen))
            for colour, direction in combos for k in range(clips_per_combo)]
    latents = []
    for start in range(0, len(plan), chunk):  # render and encode in chunks: the pixels never pile up
        video = torch.cat([to_video(render_clip(c, d, m)) for c, d, _, m in plan[start:start + chunk]])
        latents.append(codec.encode(video, normalized=True).cpu())
    captions = [caption(c, d) for c, d, _, _ in plan]
    sources = [f"procedural/{c}-{d}-{k:03d}" for c, d, k, _ in plan]
    unique = sorted(set(captions))
    contexts = {text: ctx.float().cpu() for text, ctx in zip(unique, text_encoder.encode(unique))}
    return DemoDataset(torch.cat(latents), captions, contexts, sources)

