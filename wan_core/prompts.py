"""The official default negative prompts (used whenever the negative prompt is left empty:
the official code never encodes an empty string)."""
from __future__ import annotations

NEGATIVE_BASE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
NEGATIVE_I2V = "镜头晃动，" + NEGATIVE_BASE          # Wan2.1 I2V-14B
NEGATIVE_FLF2V = "镜头切换，" + NEGATIVE_I2V          # Wan2.1 FLF2V-14B

# Node dropdown label -> the official default negative prompt of that release
NEGATIVE_BY_VARIANT = {
    "wan2.1 t2v (1.3B / 14B)": NEGATIVE_BASE,
    "wan2.1 i2v 14B": NEGATIVE_I2V,
    "wan2.1 flf2v 14B": NEGATIVE_FLF2V,
    "wan2.2 t2v A14B": NEGATIVE_BASE,
    "wan2.2 i2v A14B": NEGATIVE_BASE,
    "wan2.2 ti2v 5B": NEGATIVE_BASE,
}


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
