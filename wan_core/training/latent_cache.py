"""Clips -> cached VAE latents and text embeddings on disk, read back as a training dataset.

`build_latent_cache(items, vae, text_encoder, cache_dir)` encodes every scanned `MediaItem` once: the
clip with the VAE (normalized latent [C, T, h, w]) and the caption with the text encoder (unpadded
[L, D]). Each result is a safetensors file in `cache_dir` whose name is a sha256 key of everything
that determines it, so a second run with the same inputs reads the files instead of encoding:

* latent file `latent-<key>.safetensors` ("latent", and with image conditioning "y", "clip_fea"):
  key over the media file's content hash, bucket, fps, picked source frames, the VAE identity,
  the image-conditioning setting and the CLIP identity, and FORMAT_VERSION;
* text file `text-<key>.safetensors` ("context"): key over the caption and the text-encoder identity.
  Latents and texts are separate so that editing a caption re-encodes only the caption.

A model's identity (`model_identity`) is cheap and stable: its class, config, and a sha256 of a
strided sample (<= 4096 values) of up to 8 of its tensors spread over the state dict (names, shapes,
dtypes included); a text encoder with a tokenizer adds the token ids of a probe sentence. Loading
other weights, another dtype or another tokenizer therefore changes the keys; the device does not.

Writes are atomic; a cache file that does not load or has the wrong shapes is recomputed. Files that
fail to decode are skipped with a reason, like the scan's skips. `index.json` lists the entries, so
`load_latent_cache(cache_dir)` reopens the dataset for another training run without any encoder.

Image conditioning (I2V / FLF2V-style models, Wan2.1 VAE): y = [mask | normalized latent of the clip's
first frame followed by grey frames], built with `conditioning.image_condition` + `concat_y` exactly as
for sampling; with a CLIP vision model also clip_fea [257, 1280] of that first frame (as cropped to the
bucket, i.e. the frame the model is trained to continue).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..generation.conditioning import clip_features, concat_y, image_condition, keeps_start_frame
from ..io.write import atomic_write, save_safetensors
from ..models.dit import PATCH_SIZE as DIT_PATCH_SIZE
from .dataset import DatasetError, MediaError, check_bucket_sizes

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
TOKENIZER_PROBE = "wan-flow cache probe: A cat walks on the grass, 一只猫在草地上行走。"


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path) -> str:
    """sha256 of a file's content (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _config_value(config):
    if config is None:
        return None
    if is_dataclass(config):
        return asdict(config)
    if hasattr(config, "to_dict"):  # transformers configs; their version stamp is not part of the model
        return {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    return repr(config)


def _tensor_sample(t: torch.Tensor, limit: int = 4096) -> bytes:
    flat = t.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // limit)][:limit].contiguous().cpu()
    return sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b""


def model_identity(model, tensors: int = 8) -> str:
    """A short stable fingerprint of a model (see the module docstring)."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    h.update(_sha256(_config_value(getattr(model, "config", None))).encode())
    state = sorted(model.state_dict().items()) if isinstance(model, torch.nn.Module) else []
    if state:
        step = max(1, (len(state) - 1) / max(1, tensors - 1))
        picked = sorted({min(len(state) - 1, round(i * step)) for i in range(tensors)})
        for name, t in (state[i] for i in picked):
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(_tensor_sample(t))
    if getattr(model, "tokenizer", None) is not None and hasattr(model, "tokenize"):
        ids, mask = model.tokenize([TOKENIZER_PROBE])
        h.update(str(ids[mask.bool()].tolist()).encode())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# The cached dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    latent_file: str    # names inside the cache folder
    text_file: str
    bucket: tuple       # (width, height, frames)
    caption: str
    source: str
    repeats: int = 1


class CachedLatents:
    """The trainer's dataset: len() counts repeats; [i] -> {"latent" [C, T, h, w], "context" [L, D],
    optional "y" [C_y, T, h, w] and "clip_fea" [257, 1280], "caption", "source"}, read from disk (fp32,
    fresh tensors); bucket_of(i) = (width, height, frames): equal buckets stack; skipped: (file, reason)."""

    def __init__(self, cache_dir, entries: list[CacheEntry], skipped: list, stats: dict | None = None):
        self.cache_dir = Path(cache_dir)
        self.entries = entries
        self.skipped = skipped
        self.stats = stats or {}
        self._order = [k for k, e in enumerate(entries) for _ in range(e.repeats)]

    def __len__(self) -> int:
        return len(self._order)

    def entry_of(self, i: int) -> CacheEntry:
        return self.entries[self._order[i]]

    def bucket_of(self, i: int) -> tuple:
        return tuple(self.entry_of(i).bucket)

    def __getitem__(self, i: int) -> dict:
        entry = self.entry_of(i)
        item = {}
        for name in (entry.latent_file, entry.text_file):
            try:
                item.update(load_file(self.cache_dir / name))
            except Exception as exc:
                raise RuntimeError(f"cache file {self.cache_dir / name} of {entry.source} cannot be read "
                                   f"({type(exc).__name__}: {exc}); build the cache again") from None
        item = {k: v.float() for k, v in item.items()}
        item.update(caption=entry.caption, source=entry.source)
        return item

    def summary(self) -> str:
        s = self.stats
        lines = [f"{len(self.entries)} files cached ({len(self)} clips with repeats) in {self.cache_dir}"]
        if s:
            lines.append(f"latents: {s.get('latents_encoded', 0)} encoded, {s.get('latents_reused', 0)} reused; "
                         f"captions: {s.get('texts_encoded', 0)} encoded, {s.get('texts_reused', 0)} reused")
        lines.append(f"skipped {len(self.skipped)} files" + (":" if self.skipped else ""))
        lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _load_valid(path: Path, expected: dict) -> dict | None:
    """The tensors of a cache file if it loads and has the expected names and shapes (None in a shape
    = any size) with finite values, else None (missing or corrupt: recompute)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
    except Exception:
        return None
    if set(tensors) != set(expected):
        return None
    for name, shape in expected.items():
        t = tensors[name]
        if t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
            return None
        if not torch.isfinite(t).all():
            return None
    return tensors


def _check_models(vae, image_conditioning: bool, clip_vision, buckets) -> None:
    stride, patch = vae.config.stride[1], DIT_PATCH_SIZE[1]
    version = getattr(vae.config, "version", "?")
    check_bucket_sizes(buckets, patch * stride, f" for the Wan{version} VAE (stride {stride} x DiT patch {patch})")
    if image_conditioning and keeps_start_frame(vae.config):
        raise ValueError(f"image conditioning (y = mask + first-frame latent) is for the Wan2.1 VAE (I2V, FLF2V, "
                         f"Wan2.2 I2V-A14B); found the Wan{version} VAE with {vae.config.z_dim} channels. Wan2.2 "
                         f"TI2V-5B trains on the plain latent (its first frame is the image)")
    if clip_vision is not None and not image_conditioning:
        raise ValueError("clip_vision is only used with image_conditioning=True (Wan2.1 I2V / FLF2V training)")


def build_latent_cache(items, vae, text_encoder, cache_dir, *, clip_vision=None, image_conditioning: bool = False,
                       callback=None, memory_budget: int | None = None) -> CachedLatents:
    """Encode (or reuse) every item's latent and caption embedding in `cache_dir` -> CachedLatents.

    items: a MediaDataset from `dataset.scan_media` (its skips are carried over) or a list of MediaItems.
    vae: WanVAE; text_encoder: WanTextEncoder (`.encode([caption])[0]` -> [L, D]); clip_vision: WanClipVision.
    callback(done, total) after each file (raising from it interrupts). memory_budget: bytes for VAE tiling."""
    skipped = list(getattr(items, "skipped", []))
    items = list(getattr(items, "items", items))
    if not items:
        raise DatasetError("build_latent_cache: no items to encode")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_models(vae, image_conditioning, clip_vision, {item.bucket for item in items})
    builder = _Builder(cache_dir, vae, text_encoder, clip_vision, bool(image_conditioning), memory_budget)
    entries = []
    for done, item in enumerate(items, start=1):
        try:
            entries.append(builder.entry(item))
        except MediaError as exc:  # only bad media is skipped; encoder errors and interrupts propagate
            skipped.append((str(item.path), str(exc)))
        if callback is not None:
            callback(done, len(items))
    if not entries:
        reasons = "\n".join(f"  {p}: {why}" for p, why in skipped)
        raise DatasetError(f"build_latent_cache: no file could be encoded:\n{reasons}")
    write_index(cache_dir, entries, skipped)
    return CachedLatents(cache_dir, entries, skipped, builder.stats)


class _Builder:
    """Finds or writes the two cache files of an item."""

    def __init__(self, cache_dir: Path, vae, text_encoder, clip_vision, image_conditioning: bool, memory_budget):
        self.cache_dir = cache_dir
        self.vae, self.text_encoder, self.clip_vision = vae, text_encoder, clip_vision
        self.image_conditioning = image_conditioning
        self.memory_budget = memory_budget
        self.vae_id = model_identity(vae)
        self.text_id = model_identity(text_encoder)
        self.clip_id = model_identity(clip_vision) if clip_vision is not None else None
        self.stats = dict(latents_encoded=0, latents_reused=0, texts_encoded=0, texts_reused=0)

    def entry(self, item) -> CacheEntry:
        b = item.bucket
        try:
            digest = file_digest(item.path)
        except OSError as exc:
            raise MediaError(f"cannot read ({exc})") from None
        latent_key = _sha256(dict(format=FORMAT_VERSION, kind="latent", file=digest, bucket=[b.width, b.height, b.frames],
                                  fps=item.fps, frames=list(item.frame_indices), vae=self.vae_id,
                                  image_conditioning=self.image_conditioning, clip=self.clip_id))
        latent_file = f"latent-{latent_key}.safetensors"
        if _load_valid(self.cache_dir / latent_file, self.latent_shapes(b)) is not None:
            self.stats["latents_reused"] += 1
        else:
            save_safetensors(self.encode_clip(item), self.cache_dir / latent_file, metadata={"source": str(item.path)})
            self.stats["latents_encoded"] += 1

        text_key = _sha256(dict(format=FORMAT_VERSION, kind="text", caption=item.caption, text_encoder=self.text_id))
        text_file = f"text-{text_key}.safetensors"
        if _load_valid(self.cache_dir / text_file, {"context": (None, getattr(self.text_encoder, "dim", None))}) is not None:
            self.stats["texts_reused"] += 1
        else:
            context = self.encode_caption(item.caption)
            save_safetensors({"context": context}, self.cache_dir / text_file, metadata={"caption": item.caption})
            self.stats["texts_encoded"] += 1
        return CacheEntry(latent_file, text_file, (b.width, b.height, b.frames), item.caption, str(item.path),
                          item.repeats)

    def latent_shapes(self, bucket) -> dict:
        z, *dims = self.vae.latent_shape((1, 3, bucket.frames, bucket.height, bucket.width))[1:]
        shapes = {"latent": (z, *dims)}
        if self.image_conditioning:
            shapes["y"] = (4 + z, *dims)
            if self.clip_vision is not None:
                shapes["clip_fea"] = (None, None)
        return shapes

    @torch.no_grad()
    def encode_caption(self, caption: str) -> torch.Tensor:
        # one prompt padded to its own length: the same rows as padding to 512 (the mask hides the
        # padding), many times faster for the 5.7 B encoder on the CPU
        encode = self.text_encoder.encode
        if "padding" in inspect.signature(encode).parameters:
            return encode([caption], padding="longest")[0].float().cpu()
        return encode([caption])[0].float().cpu()

    @torch.no_grad()
    def encode_clip(self, item) -> dict:
        video = item.load()  # MediaError for files that do not decode
        vae = self.vae
        out = {"latent": vae.encode(video[None], normalized=True, memory_budget=self.memory_budget)[0]}
        if self.image_conditioning:
            first = video[None, :, 0]
            raw, known = image_condition(vae, first, None, item.bucket.frames)
            out["y"] = concat_y(vae.normalize(raw), known)[0]
            if self.clip_vision is not None:
                out["clip_fea"] = clip_features(self.clip_vision, first, None)[0]
        return {k: v.float().cpu() for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------


def write_index(cache_dir, entries: list[CacheEntry], skipped: list) -> Path:
    index = {"format": FORMAT_VERSION, "entries": [asdict(e) for e in entries],
             "skipped": [list(s) for s in skipped]}
    text = json.dumps(index, indent=1, ensure_ascii=False)
    return atomic_write(Path(cache_dir) / INDEX_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _readable(path: Path) -> bool:
    """The safetensors header opens (a cheap check; the data is read in __getitem__)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return bool(list(f.keys()))
    except Exception:
        return False


def load_latent_cache(cache_dir) -> CachedLatents:
    """Reopen a cache written by build_latent_cache from its index.json (no encoders needed). Entries
    whose files are missing or unreadable are moved to `skipped`."""
    cache_dir = Path(cache_dir)
    path = cache_dir / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: build the latent cache first") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); build the latent cache again") from None
    found = index.get("format") if isinstance(index, dict) else type(index).__name__
    if found != FORMAT_VERSION:
        raise DatasetError(f"{path}: cache format {found!r}, expected {FORMAT_VERSION}; build the latent cache again")
    entries, skipped = [], [tuple(s) for s in index.get("skipped", [])]
    for raw in index.get("entries", []):
        entry = CacheEntry(**{**raw, "bucket": tuple(raw["bucket"])})
        broken = [name for name in (entry.latent_file, entry.text_file) if not _readable(cache_dir / name)]
        if broken:
            skipped.append((entry.source, f"cache file {broken[0]} is missing or unreadable"))
        else:
            entries.append(entry)
    if not entries:
        reasons = "; ".join(f"{p}: {why}" for p, why in skipped) or "the index lists none"
        raise DatasetError(f"{path}: no usable entries ({reasons})")
    return CachedLatents(cache_dir, entries, skipped)


def check_latents_fit_model(latents, config) -> None:
    """A clear error when cached latents (CachedLatents, or any dataset whose [i] gives "latent",
    "context" and optional "y" / "clip_fea") cannot train the DiT with WanConfig `config`: latent and
    y channels, text width, CLIP features. Reads the first item only (a cache is built with one set of
    models)."""
    sample = latents[0]
    latent, y = sample["latent"], sample.get("y")
    channels = latent.shape[0] + (y.shape[0] if y is not None else 0)
    if latent.shape[0] != config.out_dim or channels != config.in_dim:
        need = "with image conditioning (y) " if config.in_dim != config.out_dim and config.model_type != "ti2v" else ""
        raise ValueError(f"the latents have {latent.shape[0]} channels"
                         f"{' + ' + str(y.shape[0]) + ' of y' if y is not None else ''}, "
                         f"but {config.variant or 'the model'} takes {config.in_dim} input channels: cache the "
                         f"latents {need}with this model's VAE")
    if sample["context"].shape[-1] != config.text_dim:
        raise ValueError(f"the latents' text embeddings are {sample['context'].shape[-1]} wide, the model takes "
                         f"{config.text_dim}: cache them with this model's text encoder")
    if config.image_branch and sample.get("clip_fea") is None:
        raise ValueError(f"{config.variant} needs CLIP image features: cache the latents with a CLIP vision model")
