"""Training curves drawn as PIL images (no plotting library needed).

`loss_curve_image(losses)` draws the per-step losses (thin, light) and their moving average (bold),
with labelled axes; the y axis is logarithmic when the losses span more than a factor of 20.
Non-finite losses (a diverged step) are left out of the curve and counted in the title.
`metrics_image(history)` stacks one such panel per metric every trainer reports (`training.run`).
"""
from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
RAW = (160, 190, 235)
SMOOTH = (20, 70, 170)
TEXT = (30, 30, 30)
LOG_SPAN = 20.0  # max/min ratio above which the y axis becomes logarithmic


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each step (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round numbers (1, 2, 5 x 10^k steps) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def loss_curve_image(losses, *, width: int = 640, height: int = 360, title: str = "training loss",
                     smooth: int | None = None, log_scale: bool | None = None) -> Image.Image:
    """An RGB image of the loss curve. losses: one float per optimizer step. smooth: moving-average
    window (default: about a fiftieth of the steps). log_scale: None = automatic."""
    if width < 160 or height < 120:
        raise ValueError(f"the loss plot needs at least 160x120 pixels, found {width}x{height}")
    values = [float(v) for v in losses]
    finite = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    bad = len(values) - len(finite)
    heading = title + (f"  ({bad} non-finite step{'s' * (bad > 1)} left out)" if bad else "")
    draw.text((8, 6), heading, fill=TEXT, font=font)
    if not finite:
        draw.text((width // 3, height // 2), "no finite losses to plot", fill=TEXT, font=font)
        return image

    left, right, top, bottom = 62, width - 16, 26, height - 34
    steps = [i for i, _ in finite]
    ys = [v for _, v in finite]
    use_log = log_scale if log_scale is not None else (min(ys) > 0 and max(ys) / min(ys) > LOG_SPAN)
    if use_log and min(ys) <= 0:
        raise ValueError("a logarithmic loss axis needs positive losses")
    scale = math.log10 if use_log else (lambda v: v)
    lo, hi = scale(min(ys)), scale(max(ys))
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    x_max = max(len(values) - 1, 1)

    def point(step: float, value: float) -> tuple[float, float]:
        x = left + (right - left) * step / x_max
        y = bottom - (bottom - top) * (scale(value) - lo) / (hi - lo)
        return x, y

    # grid, ticks and labels
    if use_log:
        y_ticks = [10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) if lo <= e <= hi]
        if len(y_ticks) < 2:
            y_ticks = [10.0 ** t for t in _nice_ticks(lo, hi)]
    else:
        y_ticks = _nice_ticks(lo, hi)
    for t in y_ticks:
        _, y = point(0, t)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((4, y - 6), _label(t), fill=TEXT, font=font)
    for t in _nice_ticks(0, x_max):
        x, _ = point(t, 10.0 ** lo if use_log else lo)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.text((x - 8, bottom + 4), str(int(t)), fill=TEXT, font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS)
    draw.text(((left + right) // 2 - 12, height - 16), "step", fill=TEXT, font=font)

    # the curves
    window = smooth or max(1, len(ys) // 50)
    if len(ys) == 1:
        x, y = point(steps[0], ys[0])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=SMOOTH)
        return image
    draw.line([point(s, v) for s, v in zip(steps, ys)], fill=RAW, width=1)
    if window > 1:
        draw.line([point(s, v) for s, v in zip(steps, moving_average(ys, window))], fill=SMOOTH, width=2)
    return image


METRIC_TITLES = {"loss": "loss", "grad_norm": "gradient norm (before clipping)", "learning_rate": "learning rate",
                 "v_ratio": "|v_pred| / |v_target|", "v_cosine": "cosine(v_pred, v_target)",
                 "score": "reward score of the step's branches", "heldout_reward": "held-out reward"}


def metrics_image(history, *, width: int = 640, panel_height: int = 180) -> Image.Image:
    """The per-step metrics every trainer reports (`training.run.StepMetrics`), one panel each, stacked:
    loss, gradient norm, learning rate, then the trainer's own (flow matching: |v_pred|/|v_target| and
    their cosine; SRPO: score, held-out reward). A figure missing at some steps is plotted where present."""
    rows = [m if isinstance(m, dict) else m.as_dict() for m in history]
    names = ["loss", "grad_norm", "learning_rate"]
    for row in rows:
        names += [k for k in row.get("extra", {}) if k not in names]
    image = Image.new("RGB", (width, panel_height * len(names)), BACKGROUND)
    for i, name in enumerate(names):
        values = [row.get(name, row.get("extra", {}).get(name, float("nan"))) for row in rows]
        panel = loss_curve_image(values or [float("nan")], width=width, height=panel_height,
                                 title=METRIC_TITLES.get(name, name), log_scale=False if name != "loss" else None)
        image.paste(panel, (0, i * panel_height))
    return image
