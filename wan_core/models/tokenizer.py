"""Prompt cleaning and tokenization for the UMT5 text encoder (docs/architecture.md §14).

The official pipeline cleans every prompt (ftfy, HTML entities unescaped twice, whitespace runs
collapsed), tokenizes it with the HF `google/umt5-xxl` tokenizer, which appends only `</s>`, pads with
id 0 to 512 tokens and truncates longer prompts (keeping the final `</s>`).

Two interchangeable backends produce those ids:
* `HFTokenizer`: a local HF tokenizer folder with `tokenizer.json` (google/umt5-xxl, a diffusers
  `tokenizer/` folder). The file is used verbatim through `PreTrainedTokenizerFast`; the model-specific
  `T5Tokenizer` of transformers 5 rebuilds the unigram model with <unk> = 2 and without byte fallback,
  which changes the ids of characters outside the vocabulary for umt5 (whose <unk> is 3).
* `SentencePieceTokenizer`: a sentencepiece model (`spiece.model` file, or the `spiece_model` bytes
  that ComfyUI embeds in its umt5 files), with `</s>` appended the same way.
Both give identical ids on ordinary text; they differ only where a prompt spells out special tokens
such as "</s>" or "<extra_id_0>" (HF parses them as special tokens, sentencepiece as plain text).
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch

TEXT_LEN = 512  # the official max_length; the DiT's text_len
UMT5_PAD_ID, UMT5_EOS_ID = 0, 1
TOKENIZER_DIRS = ("google/umt5-xxl", "umt5-xxl", "tokenizer")  # looked for next to a checkpoint


class TokenizerError(ValueError):
    """A tokenizer that is missing, unreadable, or does not fit the text encoder."""


def clean_prompt(text: str) -> str:
    """The official `clean="whitespace"` cleaning: ftfy, HTML unescape twice, collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def check_prompts(prompts) -> list[str]:
    """str | list[str] -> list[str], or a TypeError naming the offending item."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts must be a str or a list of str; item {i} is {type(p).__name__}: {p!r:.60}")
    return list(prompts)


class TextTokenizer:
    """Thin interface: `tokenize(texts) -> (input_ids [B, L] long, attention_mask [B, L] long)`.

    Every row ends with </s> (eos_id) after its text tokens, followed by pad_id up to the padded length.
    `vocab_size` is the number of ids the tokenizer can produce (max id + 1)."""

    pad_id: int
    eos_id: int
    vocab_size: int
    source: str

    def tokenize(self, texts: list[str], max_length: int = TEXT_LEN, padding: str = "max_length"):
        raise NotImplementedError

    def check_fits(self, embedding_rows: int, where: str) -> None:
        """Refuse a tokenizer whose ids the encoder cannot embed or whose special ids are not umt5's."""
        if self.vocab_size > embedding_rows:
            raise TokenizerError(
                f"tokenizer {self.source} produces ids up to {self.vocab_size - 1}, but the text encoder "
                f"{where} has only {embedding_rows} embedding rows: tokenizer and encoder do not belong together"
            )
        if (self.pad_id, self.eos_id) != (UMT5_PAD_ID, UMT5_EOS_ID):
            raise TokenizerError(
                f"tokenizer {self.source} has pad id {self.pad_id} and </s> id {self.eos_id}; UMT5 expects "
                f"pad {UMT5_PAD_ID} and </s> {UMT5_EOS_ID} - this is not a umt5 tokenizer"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}, {self.vocab_size} ids)"


def _pad_batch(rows: list[list[int]], pad_id: int, max_length: int, padding: str):
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
    length = max_length if padding == "max_length" else max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class SentencePieceTokenizer(TextTokenizer):
    """A sentencepiece model used directly (as ComfyUI does), truncating and padding like HF."""

    def __init__(self, model_proto: bytes, source: str):
        import sentencepiece as spm

        self.source = source
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as exc:  # RuntimeError from the C++ parser
            raise TokenizerError(f"{source}: not a valid sentencepiece model ({exc})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.sp.piece_to_id("<pad>")
        self.eos_id = self.sp.eos_id()

    def tokenize(self, texts: list[str], max_length: int = TEXT_LEN, padding: str = "max_length"):
        rows = [r[: max_length - 1] + [self.eos_id] for r in self.sp.encode(list(texts))]
        return _pad_batch(rows, self.pad_id, max_length, padding)


class HFTokenizer(TextTokenizer):
    """A local HF tokenizer folder with tokenizer.json, loaded verbatim and never from the network."""

    def __init__(self, folder: Path):
        from transformers import PreTrainedTokenizerFast

        self.source = str(folder)
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise TokenizerError(f"{folder}: cannot load the HF tokenizer ({type(exc).__name__}: {exc})") from None
        for attr, piece in (("pad_token", "<pad>"), ("eos_token", "</s>")):
            if getattr(tok, attr) is None and piece in tok.get_vocab():
                setattr(tok, attr, piece)  # a folder without tokenizer_config.json
        if tok.pad_token_id is None or tok.eos_token_id is None:
            raise TokenizerError(f"{folder}: the tokenizer defines no pad or </s> token; not a umt5 tokenizer")
        self.tok, self.pad_id, self.eos_id, self.vocab_size = tok, tok.pad_token_id, tok.eos_token_id, len(tok)
        if tok("a")["input_ids"][-1] != self.eos_id:
            raise TokenizerError(f"{folder}: the tokenizer does not append </s> (id {self.eos_id}) as umt5's does")

    def tokenize(self, texts: list[str], max_length: int = TEXT_LEN, padding: str = "max_length"):
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        out = self.tok(list(texts), padding=padding, max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return out["input_ids"].long(), out["attention_mask"].long()


def load_tokenizer(source) -> TextTokenizer:
    """A TextTokenizer from a folder (tokenizer.json, else spiece.model), a spiece.model file or its
    bytes, or a TextTokenizer (returned as is)."""
    if isinstance(source, TextTokenizer):
        return source
    if isinstance(source, (bytes, bytearray)):
        return SentencePieceTokenizer(bytes(source), "sentencepiece model bytes")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer not found (expected a tokenizer folder or a spiece.model file)")
    if path.name == "tokenizer.json":
        path = path.parent
    if path.is_file():
        return SentencePieceTokenizer(path.read_bytes(), str(path))
    if (path / "tokenizer.json").exists():
        return HFTokenizer(path)
    if (path / "spiece.model").exists():  # slow-tokenizer folder: the same sentencepiece model
        return SentencePieceTokenizer((path / "spiece.model").read_bytes(), str(path / "spiece.model"))
    raise TokenizerError(f"{path}: expected tokenizer.json or spiece.model in this folder, found neither")


def tokenizer_candidates(checkpoint: Path) -> list[Path]:
    """Tokenizer folders that belong to a checkpoint: official `google/umt5-xxl/` next to the .pth,
    a `tokenizer/` next to a file, or for a folder the folder itself and diffusers' `../tokenizer/`."""
    if checkpoint.is_dir():
        return [checkpoint, *(checkpoint / d for d in TOKENIZER_DIRS), checkpoint.parent / "tokenizer"]
    return [checkpoint.parent / d for d in TOKENIZER_DIRS]


def is_tokenizer_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "tokenizer.json").exists() or (path / "spiece.model").exists())
