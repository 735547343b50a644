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
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..generation.conditioning import clip_features, concat_y, image_condition, keeps_start_frame
from ..io.tensor_files import CheckpointError, SafetensorsFile, file_in_folder
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
        self._shapes = {}  # entry index -> {tensor name: shape}, read from the files' headers

    def entry_shapes(self, k: int) -> dict:
        """{tensor name: shape} of entry k's two files, from their headers (no tensor data is read)."""
        if k not in self._shapes:
            shapes = {}
            for name in (self.entries[k].latent_file, self.entries[k].text_file):
                f = SafetensorsFile(self.cache_dir / name)
                shapes.update({key: tuple(f.shape(key)) for key in f.keys()})
            self._shapes[k] = shapes
        return self._shapes[k]

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


_LATENT_NAMES = {"latent": 4, "y": 4, "clip_fea": 2}  # tensor in a latent file -> its number of dimensions
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _file_shapes(path: Path, expected: dict) -> dict:
    """{name: shape} from a cache file's header, checked: only `expected` names ({name: ndim}) and
    floating tensors of those ranks. Raises CheckpointError (also for a missing or unreadable file)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    f = SafetensorsFile(path)
    unknown = sorted(set(f.keys()) - set(expected))
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensor(s) {unknown}; a cache file holds {sorted(expected)}")
    main = next(iter(expected))  # "latent" / "context": always there
    if main not in f.keys():
        raise CheckpointError(f"{path}: no {main!r} tensor; found {sorted(f.keys())}")
    shapes = {}
    for name in f.keys():
        shape, dtype = tuple(f.shape(name)), f.dtype(name)
        if len(shape) != expected[name] or dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{path}: {name!r} is {dtype} of shape {list(shape)}; expected a floating "
                                  f"{expected[name]}-D tensor")
        shapes[name] = shape
    return shapes


def _index_entry(raw, k: int, path: Path, cache_dir: Path) -> CacheEntry:
    """One entry of index.json, with every field checked (a clear error naming the entry)."""
    where = f"{path}: entry {k}"
    names = [f.name for f in fields(CacheEntry)]
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected an object with {names}; found {type(raw).__name__} {str(raw)[:100]}")
    where += f" ({raw.get('source')!r})" if isinstance(raw.get("source"), str) else ""
    unknown, missing = sorted(set(raw) - set(names)), [n for n in names if n not in raw and n != "repeats"]
    if unknown or missing:
        raise DatasetError(f"{where}: expected the fields {names}; "
                           + (f"missing {missing}" if missing else f"found unknown {unknown}")
                           + "; build the latent cache again")
    for name in ("latent_file", "text_file", "caption", "source"):
        if not isinstance(raw[name], str):
            raise DatasetError(f"{where}: {name} must be a string; found {raw[name]!r}")
    bucket, repeats = raw["bucket"], raw.get("repeats", 1)
    if not (isinstance(bucket, list) and len(bucket) == 3 and all(type(v) is int and v >= 1 for v in bucket)
            and (bucket[2] - 1) % 4 == 0):
        raise DatasetError(f"{where}: bucket must be [width, height, frames] (positive integers, frames 1 + 4k); "
                           f"found {bucket!r}")
    if type(repeats) is not int or repeats < 1:
        raise DatasetError(f"{where}: repeats must be an integer >= 1; found {repeats!r}")
    for name in ("latent_file", "text_file"):
        _, why = file_in_folder(cache_dir, raw[name])
        if why:
            raise DatasetError(f"{where}: refused {name} {why}")
    return CacheEntry(raw["latent_file"], raw["text_file"], tuple(bucket), raw["caption"], raw["source"], repeats)


def _check_entries_agree(cache: CachedLatents, path: Path) -> None:
    """Every item against the first and against its bucket (from the files' headers, no data read):
    same latent channels, text width and conditioning tensors; latents of one bucket of one shape; the
    latent frames those of the bucket; y on the latent's grid. The error names the item."""
    first, by_bucket = None, {}
    for k, entry in enumerate(cache.entries):
        shapes = cache.entry_shapes(k)
        item = f"{path}: item {k} ({entry.source})"
        if "latent" not in shapes or "context" not in shapes:
            raise DatasetError(f"{item}: its cache files hold {sorted(shapes)}; expected 'latent' and 'context'")
        latent, frames = shapes["latent"], entry.bucket[2]
        if latent[1] != (frames - 1) // 4 + 1:
            raise DatasetError(f"{item}: latent {list(latent)} has {latent[1]} frames; its bucket "
                               f"{'x'.join(map(str, entry.bucket))} makes {(frames - 1) // 4 + 1}")
        if "y" in shapes and shapes["y"][1:] != latent[1:]:
            raise DatasetError(f"{item}: y {list(shapes['y'])} is not on the latent's grid {list(latent[1:])}")
        same = by_bucket.setdefault(entry.bucket, (k, latent))
        if same[1] != latent:
            raise DatasetError(f"{item}: latent {list(latent)}, but item {same[0]} of the same bucket "
                               f"{'x'.join(map(str, entry.bucket))} has {list(same[1])}")
        summary = {"latent channels": latent[0], "text embedding width": shapes["context"][1],
                   "y channels": shapes["y"][0] if "y" in shapes else None,
                   "clip_fea": shapes.get("clip_fea")}
        if first is None:
            first = (k, entry, summary)
            continue
        for what, value in summary.items():
            if value != first[2][what]:
                raise DatasetError(f"{item}: {what} {value}, but item {first[0]} ({first[1].source}) has "
                                   f"{first[2][what]}; a cache holds the output of one set of models - build it again")


def load_latent_cache(cache_dir) -> CachedLatents:
    """Reopen a cache written by build_latent_cache from its index.json (no encoders needed). Entries
    whose files are missing or unreadable are moved to `skipped`. Every entry is checked before any
    training: the index's fields, file names inside the cache folder, and each file's header (tensor
    names, ranks, shapes agreeing across items) - a clear DatasetError names the item."""
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
    raw_entries, raw_skipped = index.get("entries", []), index.get("skipped", [])
    if not isinstance(raw_entries, list):
        raise DatasetError(f"{path}: 'entries' must be a list; found {type(raw_entries).__name__}")
    if not (isinstance(raw_skipped, list) and all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, str) for v in s)
                                                  for s in raw_skipped)):
        raise DatasetError(f"{path}: 'skipped' must be a list of [file, reason] pairs; found {str(raw_skipped)[:100]}")
    entries, shapes, skipped = [], [], [tuple(s) for s in raw_skipped]
    for k, raw in enumerate(raw_entries):
        entry = _index_entry(raw, k, path, cache_dir)
        found = {}
        for name, expected in ((entry.latent_file, _LATENT_NAMES), (entry.text_file, {"context": 2})):
            try:
                found.update(_file_shapes(cache_dir / name, expected))
            except CheckpointError as exc:
                why = "" if str(exc).endswith(": missing") else f" ({str(exc).split(': ', 1)[-1]})"
                skipped.append((entry.source, f"cache file {name} is missing or unreadable{why}"))
                found = None
                break
        if found is not None:
            entries.append(entry)
            shapes.append(found)
    if not entries:
        reasons = "; ".join(f"{p}: {why}" for p, why in skipped) or "the index lists none"
        raise DatasetError(f"{path}: no usable entries ({reasons})")
    cache = CachedLatents(cache_dir, entries, skipped)
    cache._shapes = dict(enumerate(shapes))
    _check_entries_agree(cache, path)
    return cache


def _item_shapes(latents):
    """(label, {tensor name: shape}) of every distinct item: CachedLatents from its files' headers
    (no data read), any other dataset item by item."""
    if isinstance(latents, CachedLatents):
        for k, entry in enumerate(latents.entries):
            try:
                shapes = latents.entry_shapes(k)
            except CheckpointError as exc:
                raise DatasetError(f"item {k} ({entry.source}): {exc}; build the latent cache again") from None
            yield f"item {k} ({entry.source})", shapes
        return
    if len(latents) == 0:
        raise DatasetError("the latents dataset is empty")
    for i in range(len(latents)):
        item = latents[i]
        if not isinstance(item, dict) or not torch.is_tensor(item.get("latent")) or not torch.is_tensor(item.get("context")):
            found = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise DatasetError(f"item {i}: expected a dict with 'latent' and 'context' tensors; found {found}")
        label = f"item {i}" + (f" ({item['source']})" if isinstance(item.get("source"), str) else "")
        yield label, {k: tuple(v.shape) for k, v in item.items() if torch.is_tensor(v)}


def check_latents_fit_model(latents, config) -> None:
    """A clear error when cached latents (CachedLatents, or any dataset whose [i] gives "latent",
    "context" and optional "y" / "clip_fea") cannot train the DiT with WanConfig `config`: latent and
    y channels, text width, CLIP features. Checks every item (a CachedLatents from its files' headers,
    without reading tensor data) and names the first that does not fit."""
    for item, shapes in _item_shapes(latents):
        latent, y, context = shapes["latent"], shapes.get("y"), shapes["context"]
        if len(latent) != 4 or len(context) != 2 or (y is not None and len(y) != 4):
            raise ValueError(f"{item}: expected latent [C, T, h, w], context [L, D] and y [C_y, T, h, w]; found "
                             f"latent {list(latent)}, context {list(context)}" + (f", y {list(y)}" if y else ""))
        channels = latent[0] + (y[0] if y is not None else 0)
        if latent[0] != config.out_dim or channels != config.in_dim:
            need = "with image conditioning (y) " if config.in_dim != config.out_dim and config.model_type != "ti2v" else ""
            raise ValueError(f"{item}: the latents have {latent[0]} channels"
                             f"{' + ' + str(y[0]) + ' of y' if y is not None else ''}, "
                             f"but {config.variant or 'the model'} takes {config.in_dim} input channels: cache the "
                             f"latents {need}with this model's VAE")
        if context[-1] != config.text_dim:
            raise ValueError(f"{item}: the latents' text embeddings are {context[-1]} wide, the model takes "
                             f"{config.text_dim}: cache them with this model's text encoder")
        if config.image_branch and shapes.get("clip_fea") is None:
            raise ValueError(f"{item}: {config.variant} needs CLIP image features: cache the latents with a CLIP "
                             f"vision model")
