"""Reading tensors from checkpoint files one at a time, without holding a second copy.

safetensors files are read with plain file I/O straight into the destination tensor's memory
(no mmap: mapped pages would count in the process' RSS next to the model's own copy). A torch
pickle (.pth/.pt) is opened with `torch.load(weights_only=True, mmap=True)`; arbitrary objects
are refused.

`TensorSource` is the common interface: `keys()`, `shape(k)`, `dtype(k)`, `read(k)`.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
# model-file suffixes, lower case: what `open_tensor_file` reads (and what the model dropdowns list)
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


def is_safetensors(path) -> bool:
    return Path(path).suffix.lower() in SAFETENSORS_SUFFIXES


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: the message names the file, what was expected and found."""


class SafetensorsFile:
    """Lazy reader of one .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: expected a safetensors file, found only {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{self.path}: not a valid safetensors file (header length {n} does not fit in "
                    f"{size} bytes); the file is truncated, corrupt, or in another format"
                )
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{self.path}: safetensors header is not valid JSON ({exc}); file corrupt?") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = {}
        for name, info in header.items():
            try:
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                shape = tuple(info["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has an unreadable header entry {info!r}") from None
            if self._data_start + end > size:
                raise CheckpointError(
                    f"{self.path}: truncated - tensor {name!r} ends at byte {self._data_start + end} "
                    f"but the file has {size} bytes"
                )
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * dtype.itemsize:
                raise CheckpointError(f"{self.path}: tensor {name!r} has {end - begin} bytes for shape {shape} {dtype}")
            self._entries[name] = (dtype, shape, begin, end)

    def keys(self):
        return list(self._entries)

    def shape(self, key) -> tuple:
        return self._entries[key][1]

    def dtype(self, key) -> torch.dtype:
        return self._entries[key][0]

    def read(self, key, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor into freshly allocated CPU memory, or into `scratch` (a uint8 buffer the
        caller reuses for tensors it converts anyway: the result is only valid until the next read)."""
        dtype, shape, begin, end = self._entries[key]
        if scratch is not None and scratch.numel() >= end - begin:
            buf = scratch[: end - begin]
        else:
            buf = torch.empty(end - begin, dtype=torch.uint8)
        if end > begin:
            with open(self.path, "rb") as f:
                f.seek(self._data_start + begin)
                got = f.readinto(memoryview(buf.numpy()))
            if got != end - begin:
                raise CheckpointError(f"{self.path}: short read for tensor {key!r} ({got} of {end - begin} bytes)")
        return buf.view(dtype).reshape(shape)


class PickleFile:
    """A torch pickle opened safely: weights_only=True (no arbitrary code), memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "zip" in str(exc).lower() or "mmap" in str(exc).lower():
                # legacy (non-zip) pickles cannot be memory-mapped; still weights-only
                obj = self._load_plain()
            else:
                raise CheckpointError(f"{self.path}: cannot read as a torch checkpoint: {exc}") from None
        except Exception as exc:  # UnpicklingError and friends: refuse, do not retry unsafely
            raise CheckpointError(
                f"{self.path}: refused to load - a weights-only torch checkpoint (tensors in dicts) was "
                f"expected, but the file needs arbitrary unpickling or is corrupt ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Convert it to .safetensors."
            ) from None
        self._tensors = _find_state_dict(obj, self.path)
        self.metadata = {}

    def _load_plain(self):
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{self.path}: refused to load as a weights-only torch checkpoint ({exc})") from None

    def keys(self):
        return list(self._tensors)

    def shape(self, key) -> tuple:
        return tuple(self._tensors[key].shape)

    def dtype(self, key) -> torch.dtype:
        return self._tensors[key].dtype

    def read(self, key, scratch=None) -> torch.Tensor:
        return self._tensors[key]  # memory-mapped: nothing to reuse


def _find_state_dict(obj, path) -> dict:
    """Accept a flat {name: tensor} dict, or one nested under a usual wrapper key."""
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for wrapper in ("state_dict", "model", "module", "ema", "model_state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict):
                return _find_state_dict(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), found {type(obj).__name__}")


class MultiFile:
    """Several files seen as one key space (sharded checkpoints)."""

    def __init__(self, files):
        self.files = files
        self._owner = {}
        for f in files:
            for k in f.keys():
                self._owner[k] = f
        self.metadata = files[0].metadata if files else {}
        self.path = files[0].path if files else None

    def keys(self):
        return list(self._owner)

    def shape(self, key):
        return self._owner[key].shape(key)

    def dtype(self, key):
        return self._owner[key].dtype(key)

    def read(self, key, scratch=None):
        return self._owner[key].read(key, scratch)


def read_json(path: Path) -> dict | None:
    """A JSON file next to the weights (config.json, ...), or None when absent."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def open_weights_folder(folder: Path, what: str, prefer: str | None = None) -> MultiFile:
    """The weights of a model folder as one key space: the file `prefer` when present, else the
    shards a `*.safetensors.index.json` lists, else every .safetensors, else the .pth/.pt/.bin files.
    `what` names the expected content in the error when there are none."""
    index = sorted(folder.glob("*.safetensors.index.json"), key=lambda p: (p.name != f"{prefer}.index.json", p.name))
    if prefer and (folder / prefer).exists():
        files = [folder / prefer]
    elif index:
        try:
            shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index[0]}: expected a shard index with a 'weight_map', got {exc!r}") from None
        files = [folder / s for s in shards]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index[0]}: lists shard(s) {missing} that are not in {folder}")
    else:
        files = sorted(folder.glob("*.safetensors")) or sorted(
            p for suffix in (".pth", ".pt", ".bin") for p in folder.glob("*" + suffix))
    if not files:
        raise CheckpointError(f"{folder}: expected {what}; found no weights (.safetensors, shards with an index "
                              f"json, or .pth/.pt/.bin)")
    return MultiFile([open_tensor_file(f) for f in files])


def open_tensor_file(path: str | os.PathLike):
    """Open a .safetensors / .sft or .pth / .pt / .ckpt / .bin file by its extension."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return SafetensorsFile(path)
    if suffix in PICKLE_SUFFIXES:
        return PickleFile(path)
    raise CheckpointError(f"{path}: unsupported file type {suffix!r}; expected .safetensors, .sft, .pth or .pt")
