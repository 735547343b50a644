"""The official sampling settings of each Wan release, as one table (docs/conventions.md §5–§7).

One row per release: the steps, shift and guidance scale(s) of the official `generate.py`, the
Wan2.2 A14B expert boundary, frames / fps, and the default negative prompt. `official_defaults`
picks the row for a DiT config; `default_negative_prompt` reads a row's negative prompt by the
row's name or by the node dropdown label.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

NEGATIVE_BASE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
NEGATIVE_I2V = "镜头晃动，" + NEGATIVE_BASE          # Wan2.1 I2V-14B
NEGATIVE_FLF2V = "镜头切换，" + NEGATIVE_I2V          # Wan2.1 FLF2V-14B

BOUNDARY = {"t2v": 0.875, "i2v": 0.9}  # Wan2.2 A14B expert switch, fraction of the 1000 train steps


@dataclass(frozen=True)
class SamplingDefaults:
    """The official `generate.py` settings of a release."""

    steps: int
    shift: float
    guide_scale: float  # the single model's, or the high-noise expert's
    guide_scale_low: float | None = None  # the low-noise expert's (A14B)
    boundary: float | None = None
    frames: int = 81
    fps: int = 16
    variant: str = "wan2.1-t2v"  # the row's name
    label: str = ""  # the node dropdown label
    negative: str = NEGATIVE_BASE


def _release(variant: str, label: str, steps: int, shift: float, guide_scale: float, **rest) -> SamplingDefaults:
    return SamplingDefaults(steps, shift, guide_scale, variant=variant, label=label, **rest)


RELEASES = {r.variant: r for r in (
    _release("wan2.1-t2v", "wan2.1 t2v (1.3B / 14B)", 50, 5.0, 5.0),
    _release("wan2.1-i2v-14b", "wan2.1 i2v 14B", 40, 5.0, 5.0, negative=NEGATIVE_I2V),  # shift 3.0 at 832x480
    _release("wan2.1-flf2v-14b", "wan2.1 flf2v 14B", 50, 16.0, 5.0, negative=NEGATIVE_FLF2V),
    _release("wan2.2-t2v-a14b", "wan2.2 t2v A14B", 40, 12.0, 4.0, guide_scale_low=3.0, boundary=BOUNDARY["t2v"]),
    _release("wan2.2-i2v-a14b", "wan2.2 i2v A14B", 40, 5.0, 3.5, guide_scale_low=3.5, boundary=BOUNDARY["i2v"]),
    _release("wan2.2-ti2v-5b", "wan2.2 ti2v 5B", 50, 5.0, 5.0, frames=121, fps=24),
)}
WAN21_I2V_480P_SHIFT = 3.0  # the official I2V-14B shift at 832x480 (5.0 at other sizes)

# Node dropdown label -> the official default negative prompt of that release
NEGATIVE_BY_VARIANT = {r.label: r.negative for r in RELEASES.values()}


def release_of(config, *, two_experts: bool = False) -> str:
    """The release row for a DiT config (and whether a second, low-noise expert is used)."""
    mt = config.model_type
    if mt == "ti2v":
        return "wan2.2-ti2v-5b"
    if mt == "flf2v":
        return "wan2.1-flf2v-14b"
    if mt == "i2v":
        return "wan2.2-i2v-a14b" if two_experts or not config.image_branch else "wan2.1-i2v-14b"
    return "wan2.2-t2v-a14b" if two_experts else "wan2.1-t2v"


def official_defaults(config, *, two_experts: bool = False, width: int = 0, height: int = 0) -> SamplingDefaults:
    """Defaults for a DiT config (the pixel size picks the Wan2.1 I2V shift: 3.0 at 832x480, else 5.0)."""
    row = RELEASES[release_of(config, two_experts=two_experts)]
    if row.variant == "wan2.1-i2v-14b" and sorted((width, height)) == [480, 832]:
        row = replace(row, shift=WAN21_I2V_480P_SHIFT)
    return row


def default_negative(config, *, two_experts: bool = False) -> str:
    return official_defaults(config, two_experts=two_experts).negative


def default_negative_prompt(variant: str) -> str:
    """Default negative prompt for a dropdown label or a model variant name (e.g. 'wan2.1-i2v-14b')."""
    if variant in NEGATIVE_BY_VARIANT:
        return NEGATIVE_BY_VARIANT[variant]
    v = variant.lower()
    if not v.startswith(("wan2.1", "wan2.2")):
        raise ValueError(f"unknown Wan variant {variant!r}; expected one of {list(NEGATIVE_BY_VARIANT)} "
                         "or a model variant name such as 'wan2.1-i2v-14b'")
    if "flf2v" in v:
        return NEGATIVE_FLF2V
    if v.startswith("wan2.1") and "i2v" in v:
        return NEGATIVE_I2V
    return NEGATIVE_BASE
