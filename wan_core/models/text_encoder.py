"""The UMT5-XXL text encoder of Wan 2.1 / 2.2 (docs/architecture.md §13–§14), on top of transformers' `UMT5EncoderModel`.

Wan conditions its DiT on the last hidden states of the encoder half of UMT5-XXL (24 pre-norm blocks,
d_model 4096, gated-GELU feed-forward, a relative position bias in every block, 5.7 B parameters).
`load_text_encoder(source)` reads that encoder from any layout users have:
  * the official `models_t5_umt5-xxl-enc-bf16.pth` (official key names, opened weights-only),
  * ComfyUI single files (HF key names, 16-bit or fp8 / "scaled fp8", an embedded `spiece_model`),
  * HF folders (config.json + model.safetensors or shards with an index json), e.g. a diffusers
    `text_encoder/` folder or the pipeline root around it.
It infers the `UMT5Config` from the tensor shapes, builds the model on the meta device and fills it
one tensor at a time (fp8 dequantized exactly: weight.float() * scale), so the weights are never held
twice. `weight_dtype` keeps the large Linear weights small (fp8/bf16) and upcasts one layer per call.

`WanTextEncoder.encode(prompts)` does what the official pipeline does (docs/architecture.md §14): clean each prompt,
tokenize (</s> appended, padded to 512 with id 0, truncated), run the encoder with the attention mask
and return each prompt's hidden states trimmed to its real length. `pad_context` zero-pads such a
list back to [B, 512, dim], the form the DiT and ComfyUI's CONDITIONING take.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .tokenizer import TEXT_LEN, TokenizerError, check_prompts, clean_prompt


def _gated_ff_forward(self, x: torch.Tensor) -> torch.Tensor:
    # transformers casts the activation to wo's weight dtype (meant for an fp32 wo); with weights kept
    # in fp8/bf16 that would round the activation, so let the casting Linear cast the weight instead.
    return self.wo(self.dropout(self.act(self.wi_0(x)) * self.wi_1(x)))


class WanTextEncoder(nn.Module):
    """A UMT5 encoder (`self.model`, transformers' UMT5EncoderModel) with its tokenizer.

    `encoder(input_ids, attention_mask)` -> last hidden states [B, L, dim];
    `encoder.encode(prompts)` -> one [len_i, dim] tensor per prompt (official cleaning and trimming)."""

    def __init__(self, model: nn.Module, tokenizer=None, *, tokenizer_searched=(), source: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_searched = list(tokenizer_searched)
        self.source = source

    config = property(lambda self: self.model.config)
    dim = property(lambda self: self.model.config.d_model)
    dtype = property(lambda self: self.model.shared.weight.dtype)  # the compute dtype
    device = property(lambda self: self.model.shared.weight.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got "
                             f"{input_ids.min().item()}..{input_ids.max().item()} (tokenizer of another model?)")
        mask = attention_mask.to(self.device) if attention_mask is not None else None
        return self.model(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state

    def tokenize(self, prompts, *, max_length: int = TEXT_LEN, padding: str = "max_length"):
        """Clean and tokenize: -> (input_ids [B, L], attention_mask [B, L]) on the CPU."""
        prompts = check_prompts(prompts)
        if self.tokenizer is None:
            raise TokenizerError(
                f"no tokenizer for the text encoder {self.source}: looked for "
                f"{'; '.join(self.tokenizer_searched) or 'nothing'}. Pass tokenizer=<a google/umt5-xxl folder "
                f"with tokenizer.json or spiece.model, or a spiece.model file> to load_text_encoder")
        return self.tokenizer.tokenize([clean_prompt(p) for p in prompts], max_length, padding)

    @torch.no_grad()
    def encode(self, prompts, *, max_length: int = TEXT_LEN, padding: str = "max_length") -> list[torch.Tensor]:
        """Official prompt encoding: a [len_i, dim] tensor per prompt, len_i = its tokens incl. </s>.

        padding="longest" pads the batch only to its longest prompt: the real rows are the same
        (the mask hides the padding) and a 5.7 B encoder on the CPU runs much faster."""
        prompts = check_prompts(prompts)
        if not prompts:
            return []
        ids, mask = self.tokenize(prompts, max_length=max_length, padding=padding)
        hidden = self(ids, mask)
        return [h[:n].clone() for h, n in zip(hidden, mask.sum(1).tolist())]


def pad_context(contexts, length: int = TEXT_LEN) -> torch.Tensor:
    """Zero-pad a list of [len_i, dim] tensors to [B, length, dim] (what the DiT and ComfyUI take)."""
    if isinstance(contexts, torch.Tensor):
        contexts = [contexts] if contexts.ndim == 2 else list(contexts)
    if not contexts or any(c.ndim != 2 or c.shape[1] != contexts[0].shape[1] for c in contexts):
        raise ValueError(f"pad_context expects a non-empty list of [len, dim] tensors with one dim, got "
                         f"{[tuple(c.shape) for c in contexts]}")
    if max(c.shape[0] for c in contexts) > length:
        raise ValueError(f"a context has {max(c.shape[0] for c in contexts)} rows, more than length={length}")
    out = contexts[0].new_zeros(len(contexts), length, contexts[0].shape[1])
    for i, c in enumerate(contexts):
        out[i, : c.shape[0]] = c
    return out


