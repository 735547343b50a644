"""The demo's stand-in text encoder: fixed word embeddings, no weights to download.

Each lower-cased word maps to a fixed random vector drawn from a generator seeded with a stable hash
of the word (the same on every machine and Python run), and every prompt ends with an end-of-text
vector, as UMT5's </s>. There is no position code: the DiT's cross-attention has none either, so a
prompt is a bag of words and word order does not matter (the demo's captions never need it).

It has the interface of `wan_core.text_encoder.WanTextEncoder` where the pack uses it:
`encode(list[str]) -> list[[n_words + 1, dim]]`, `device`, `dtype`, `dim`.
"""
from __future__ import annotations

import hashlib
import re

import torch
from torch import nn

from ..models.tokenizer import TEXT_LEN, check_prompts

END_OF_TEXT = "</s>"
DEFAULT_DIM = 32


def words_of(prompt: str) -> list[str]:
    """Lower-cased words (runs of letters/digits in any script; punctuation is dropped)."""
    return re.findall(r"\w+", prompt.lower())


def word_vector(word: str, dim: int) -> torch.Tensor:
    """A fixed N(0, 1) vector for `word`: seeded from its BLAKE2 hash, so it is stable everywhere."""
    seed = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed >> 1))  # manual_seed wants < 2**63


class DemoTextEncoder(nn.Module):
    """Bag-of-words encoder: prompt -> one fixed vector per word, then the end-of-text vector."""

    def __init__(self, dim: int = DEFAULT_DIM):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, found {dim}")
        self.dim = dim
        # no weights; this buffer tells where the encoder lives (ComfyUI's memory manager moves it like a model)
        self.register_buffer("anchor", torch.zeros(1))
        self._vectors: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def vector(self, word: str) -> torch.Tensor:
        if word not in self._vectors:
            self._vectors[word] = word_vector(word, self.dim)
        return self._vectors[word]

    @torch.no_grad()
    def encode(self, prompts, *, max_length: int = TEXT_LEN) -> list[torch.Tensor]:
        """A [n_words + 1, dim] tensor per prompt (long prompts are cut to max_length rows, </s> kept last)."""
        out = []
        for prompt in check_prompts(prompts):
            words = words_of(prompt)[: max_length - 1] + [END_OF_TEXT]
            out.append(torch.stack([self.vector(w) for w in words]).to(self.device))
        return out
