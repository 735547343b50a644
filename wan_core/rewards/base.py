"""Differentiable image-text rewards for reward fine-tuning (`wan_core.rewards.srpo`).

A reward model embeds images and texts into one space; the reward of an image for a text is
`score_scale · <f_img, f_text>` with both embeddings of unit length. SRPO's Semantic Relative
Preference needs the text side twice, so the interface exposes the two embeddings:

    image_features(images)  [B, 3, H, W] in [0, 1] -> [B, D], differentiable in the pixels
    text_features(texts)    list of B strings     -> [B, D], no gradient (the reward is frozen)

`score` and `preference_score` are built from them. Any frozen, differentiable model that
provides the two methods plugs in (`RewardModel` is the base to subclass). The CLIP family (HPS
v2.1, PickScore, plain CLIP) lives in `wan_core.reward_clip`; `ColourReward` below is a tiny
reward with a known optimum for tests and the embedded demo.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class RewardModel(nn.Module):
    """Base of every reward: frozen, evaluated in eval mode, gradients flow only to the pixels."""

    name: str = "reward"
    score_scale: float = 1.0  # multiplies the cosine (CLIP-style rewards: logit_scale / 20, as SRPO does)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def freeze(self) -> "RewardModel":
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "RewardModel":
        return super().train(False)  # a reward never trains (no dropout while scoring)

    def score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """[B] reward of each image for its text."""
        check_images(images)
        _check_texts(texts, images.shape[0])
        f_img = self.image_features(images)
        f_text = self.text_features(list(texts)).to(f_img.device, f_img.dtype)
        return self.score_scale * (f_img * f_text).sum(-1)

    def preference_score(self, images: torch.Tensor, preferred: Sequence[str], rejected: Sequence[str],
                         k: float | torch.Tensor) -> torch.Tensor:
        """SRPO's relative preference: score_scale · f_img · ((1 + k)·f_text(preferred) − f_text(rejected)).

        With the same prompt behind both texts (differing only in control words), what the two
        texts share cancels and the image is pushed towards what separates them."""
        check_images(images)
        _check_texts(preferred, images.shape[0])
        _check_texts(rejected, images.shape[0])
        f_img = self.image_features(images)
        f_a = self.text_features(list(preferred)).to(f_img.device, f_img.dtype)
        f_b = self.text_features(list(rejected)).to(f_img.device, f_img.dtype)
        return self.score_scale * (f_img * ((1 + k) * f_a - f_b)).sum(-1)


def check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        found = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"a reward scores images [B, 3, H, W] with values in [0, 1], found {found}")


def _check_texts(texts, batch: int) -> None:
    if isinstance(texts, str) or len(texts) != batch:
        found = "one string" if isinstance(texts, str) else f"{len(texts)} texts"
        raise ValueError(f"a reward needs one text per image: {batch} image(s), found {found}")


# --------------------------------------------------------------------------------------------
# A tiny reward with a known optimum (tests, the embedded demo)
# --------------------------------------------------------------------------------------------

COLOURS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0), "purple": (0.5, 0.0, 1.0),
}
# Control words move the text's saturation preference: the realism words of the official SRPO
# ask for less, its "CG / oily" words for more (in the toy: more saturated = more CG-looking).
CONTROL_WORDS = {
    "real": -1.0, "natural-lighting": -1.0, "detail": -1.0, "detailed": -1.0, "natural": -1.0, "muted": -1.0,
    "concept art": 1.0, "painting": 1.0, "anime": 1.0, "flat": 1.0, "oil": 1.0, "vivid": 1.0,
    "oversaturated": 1.0,
}


class ColourReward(RewardModel):
    """Is the image's mean colour the hue named in the text?

    Image embedding (not unit length): the hue of the mean colour as a unit vector in the chroma
    plane (mean RGB minus its grey level, normalised; near grey it fades to 0) and the mean
    per-pixel saturation (spread of R, G, B), scaled so a pure primary colour gives 1. Text
    embedding (unit length): the named hue, plus a saturation preference `saturation_bias` that
    every text carries, moved by `control_strength` per control word. The saturation term is the
    built-in shortcut: more saturation scores higher whatever the prompt, as real reward models
    reward oversaturation. For a plain prompt the optimum is the named hue at full saturation;
    with SRP's "Real" / "Painting" words the hue still counts and saturation is penalised.
    """

    name = "colour"
    SATURATION_SCALE = (1 / 3) ** 0.5  # per-pixel RGB std of a pure primary colour
    GREY = 0.02  # chroma magnitude below which the hue fades out (keeps the gradient finite at grey)

    def __init__(self, saturation_bias: float = 1.0, control_strength: float = 0.5):
        super().__init__()
        self.saturation_bias = saturation_bias
        self.control_strength = control_strength
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # follows .to(device)
        self.freeze()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        mean = x.mean(dim=(2, 3))
        chroma = mean - mean.mean(dim=1, keepdim=True)
        hue = chroma / (chroma.square().sum(1, keepdim=True) + self.GREY ** 2).sqrt()
        return torch.cat([hue, saturation(x)[:, None] / self.SATURATION_SCALE], dim=1)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self._text(t) for t in texts]).to(self.anchor.device)

    def _text(self, text: str) -> torch.Tensor:
        lowered = text.lower()
        rgb = torch.zeros(3)
        for word, colour in COLOURS.items():
            if _has_word(lowered, word):
                rgb = torch.tensor(colour)
                break
        chroma = F.normalize(rgb - rgb.mean(), dim=0)  # zero when no colour is named
        saturation = self.saturation_bias + self.control_strength * sum(
            shift for word, shift in CONTROL_WORDS.items() if _has_word(lowered, word))
        return F.normalize(torch.cat([chroma, torch.tensor([saturation])]), dim=0)


def _has_word(text: str, word: str) -> bool:
    import re

    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def saturation(images: torch.Tensor) -> torch.Tensor:
    """[B] mean per-pixel spread of R, G, B (std over channels) of images in [0, 1]: the drift
    monitor for reward hacking by oversaturation."""
    check_images(images)
    return images.float().std(dim=1).mean(dim=(1, 2))
