"""Reading tensors from checkpoint files one at a time, without holding a second copy.

safetensors files are read with plain file I/O straight into the destination tensor's memory
(no mmap: mapped pages would count in the process' RSS next to the model's own copy); the header is
checked against the format's full rules when the file is opened (`parse_safetensors_header`, with the
`safetensors` library's verdicts as the reference, tests/test_reliability_safetensors.py). A torch
pickle (.pth/.pt) is opened with `torch.load(weights_only=True, mmap=True)`; arbitrary objects
are refused.

`TensorSource` is the common interface: `keys()`, `shape(k)`, `dtype(k)`, `read(k)`.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
import warnings
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
# every dtype the safetensors format defines -> bits per element (the format's own table); the ones
# torch can hold are added to SAFETENSORS_DTYPES, the others (sub-byte floats) are refused on read
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
for _name, _torch_name in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("C64", "complex64"),
                           ("F8_E8M0", "float8_e8m0fnu"), ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
                           ("F8_E5M2FNUZ", "float8_e5m2fnuz")):
    if hasattr(torch, _torch_name):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _torch_name)
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's limit
_MAX_JSON_DEPTH = 127  # nesting the reference parser (serde_json) accepts
_U64_MAX = 2**64 - 1
# model-file suffixes, lower case: what `open_tensor_file` reads (and what the model dropdowns list)
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


def is_safetensors(path) -> bool:
    return Path(path).suffix.lower() in SAFETENSORS_SUFFIXES


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: the message names the file, what was expected and found."""


class _HeaderError(Exception):
    """What is wrong in a safetensors header; SafetensorsFile turns it into a CheckpointError naming the file."""


def _json_kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _json_object(pairs) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _HeaderError(f"the key {key!r} appears twice in one JSON object")
        out[key] = value
    return out


def _json_constant(name):
    raise _HeaderError(f"{name} is not a JSON value")


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _HeaderError(f"the number {text[:40]} is out of range")
    return value


def _json_int(text: str):
    value = int(text)  # ValueError past Python's digit limit: refused like any unreadable header
    if abs(value) > sys.float_info.max:
        raise _HeaderError(f"the number {text[:40]}... is out of range")
    return -0.0 if text == "-0" else value  # the format's parser reads -0 as a float


def _check_json_tree(value, depth: int = 0) -> None:
    """JSON the format's reference parser (serde_json) refuses although Python's json reads it:
    nesting deeper than 127 containers, strings with a lone surrogate escape."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _HeaderError(f"the string {value[:40]!r} holds a lone surrogate escape (not Unicode)") from None
    elif isinstance(value, (dict, list)):
        if depth + 1 > _MAX_JSON_DEPTH:
            raise _HeaderError(f"JSON nested deeper than {_MAX_JSON_DEPTH} levels")
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            if isinstance(key, str):
                _check_json_tree(key)
            _check_json_tree(item, depth + 1)


def _is_u64(value) -> bool:
    return type(value) is int and 0 <= value <= _U64_MAX


def parse_safetensors_header(raw: bytes) -> tuple[dict, list]:
    """The format's rules for a header (the `safetensors` library's checks are the reference) ->
    (metadata, [(name, dtype name, shape, begin, end)] sorted by offset); raises _HeaderError.

    The header is UTF-8 JSON: an object whose `__metadata__` (optional) maps strings to strings and
    whose every other key is a tensor {"dtype": one of the format's dtypes, "shape": [non-negative
    integers], "data_offsets": [begin, end]}; the offsets, sorted, tile the data area from byte 0
    without gap or overlap, and end - begin = the bytes shape x dtype takes. Duplicate keys are refused
    (the reference keeps the last one silently)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _HeaderError(f"the header is not UTF-8 ({exc})") from None
    try:
        header = json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant,
                            parse_float=_json_float, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise _HeaderError(f"the header is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:
        raise _HeaderError(f"the header is not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    _check_json_tree(header)
    if not isinstance(header, dict):
        raise _HeaderError(f"the header must be a JSON object {{name: {{dtype, shape, data_offsets}}}}; "
                           f"found a JSON {_json_kind(header)}")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _HeaderError(f"__metadata__ must be an object of strings; found {str(metadata)[:200]}")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _HeaderError(f"tensor {name!r}: expected an object {{dtype, shape, data_offsets}}; "
                               f"found a JSON {_json_kind(info)}")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise _HeaderError(f"tensor {name!r}: the entry has no {missing[0]!r}; found {str(info)[:200]}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
            raise _HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}; the format defines "
                               f"{', '.join(SAFETENSORS_DTYPE_BITS)}")
        if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
            raise _HeaderError(f"tensor {name!r}: the shape must be a list of non-negative integers; "
                               f"found {str(shape)[:200]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
            raise _HeaderError(f"tensor {name!r}: data_offsets must be [begin, end], two non-negative integers; "
                               f"found {str(offsets)[:200]}")
        entries.append((name, dtype, tuple(shape), offsets[0], offsets[1]))
    entries.sort(key=lambda e: (e[3], e[4]))
    data_end = 0
    for name, dtype, shape, begin, end in entries:
        if begin != data_end or end < begin:
            why = ("ends before it begins" if end < begin else
                   "overlaps the tensor before it" if begin < data_end else "leaves a gap before it")
            raise _HeaderError(f"tensor {name!r}: data_offsets [{begin}, {end}] {why}; the tensors must tile the "
                               f"data area from byte 0 without gaps or overlaps (expected it to begin at {data_end})")
        data_end = end
        numel = 1
        for d in shape:
            numel *= d
            if numel > _U64_MAX:
                raise _HeaderError(f"tensor {name!r}: shape {list(shape)} overflows the element count")
        bits = numel * SAFETENSORS_DTYPE_BITS[dtype]
        if bits > _U64_MAX:
            raise _HeaderError(f"tensor {name!r}: shape {list(shape)} of {dtype} overflows the byte count")
        if bits % 8:
            raise _HeaderError(f"tensor {name!r}: shape {list(shape)} of {dtype} is not a whole number of bytes")
        if end - begin != bits // 8:
            raise _HeaderError(f"tensor {name!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes, but shape "
                               f"{list(shape)} of {dtype} takes {bits // 8}")
    return metadata or {}, entries


class SafetensorsFile:
    """Lazy reader of one .safetensors file: the header is checked against the format's rules when
    the file is opened (see `parse_safetensors_header`); the data is only read by `read`."""

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
            raw = f.read(n)
        try:
            self.metadata, entries = parse_safetensors_header(raw)
        except _HeaderError as exc:
            raise CheckpointError(f"{self.path}: not a valid safetensors file: {exc}") from None
        self._data_start = 8 + n
        data_end = entries[-1][4] if entries else 0
        if self._data_start + data_end > size:
            raise CheckpointError(
                f"{self.path}: truncated - the header describes {data_end} bytes of tensor data (up to byte "
                f"{self._data_start + data_end}) but the file has {size} bytes"
            )
        if self._data_start + data_end < size:
            raise CheckpointError(
                f"{self.path}: not a valid safetensors file: {size - self._data_start - data_end} byte(s) after "
                f"the last tensor belong to none (expected the tensors to cover the data area exactly)"
            )
        self._entries = {}
        self._dtype_names = {}
        for name, dtype_name, shape, begin, end in entries:
            self._entries[name] = (SAFETENSORS_DTYPES.get(dtype_name), shape, begin, end)
            self._dtype_names[name] = dtype_name

    def keys(self):
        return list(self._entries)

    def shape(self, key) -> tuple:
        return self._entries[key][1]

    def dtype(self, key) -> torch.dtype:
        dtype = self._entries[key][0]
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} is stored as {self._dtype_names[key]}, which this "
                                  f"reader does not support (expected one of {', '.join(SAFETENSORS_DTYPES)})")
        return dtype

    def read(self, key, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor into freshly allocated CPU memory, or into `scratch` (a uint8 buffer the
        caller reuses for tensors it converts anyway: the result is only valid until the next read)."""
        dtype, shape, begin, end = self._entries[key]
        dtype = self.dtype(key)
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
                raise CheckpointError(f"{self.path}: cannot read as a torch checkpoint "
                                      f"({_torch_error_detail(exc)}); the file is corrupt or not a torch file") from None
        except Exception as exc:  # UnpicklingError and friends: refuse, do not retry unsafely
            raise _pickle_refusal(self.path, exc) from None
        self._tensors = _find_state_dict(obj, self.path)
        self.metadata = {}

    def _load_plain(self):
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _pickle_refusal(self.path, exc) from None

    def keys(self):
        return list(self._tensors)

    def shape(self, key) -> tuple:
        return tuple(self._tensors[key].shape)

    def dtype(self, key) -> torch.dtype:
        return self._tensors[key].dtype

    def read(self, key, scratch=None) -> torch.Tensor:
        return self._tensors[key]  # memory-mapped: nothing to reuse


def _torch_error_detail(exc: Exception) -> str:
    """One line of what torch.load found, without torch's advice to load the file unsafely
    (weights_only=False) or to allowlist its globals: the pack never does either."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    found = next((line for line in lines if "GLOBAL" in line), None) or (lines[0] if lines else "")
    found = found.split(". Please")[0].split(" whose module")[0]
    if "weights_only" in found or "trust" in found or "allowlist" in found:
        found = ""
    return f"{type(exc).__name__}: {found}" if found else type(exc).__name__


def _pickle_refusal(path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused to load - a weights-only torch checkpoint (tensors in dicts) was expected, but the file "
        f"needs arbitrary unpickling or is corrupt ({_torch_error_detail(exc)}). Unpickling such a file can run "
        f"code: use a .safetensors release of these weights instead."
    )


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


class NonFiniteWeightsWarning(RuntimeWarning):
    """Weights that hold NaN or Inf: the model loads, but its outputs will likely be NaN."""


def count_non_finite(tensor: torch.Tensor, chunk: int = 1 << 24) -> int:
    """How many values of a floating (or fp8, or complex) tensor are NaN or +-Inf; 0 for other dtypes.
    Checked in chunks, so the temporary memory stays small whatever the tensor's size."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return 0
    flat = tensor.detach().reshape(-1)
    upcast = tensor.dtype.itemsize == 1  # fp8: isfinite is not implemented for every fp8 dtype
    bad = 0
    for part in flat.split(chunk):
        part = part.float() if upcast else part
        finite = torch.isfinite(part)
        if not bool(finite.all()):
            bad += int(finite.numel() - finite.sum())
    return bad


class NonFiniteCheck:
    """Per-tensor NaN/Inf check for a loader, as each tensor is read: `check(name, tensor)`, then
    `warn()` once at the end issues one NonFiniteWeightsWarning naming every affected tensor."""

    def __init__(self, path, what: str):
        self.path, self.what = path, what
        self.found = []  # (name, bad values, values, dtype)

    def check(self, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None:
            return
        bad = count_non_finite(tensor)
        if bad:
            self.found.append((name, bad, tensor.numel(), tensor.dtype))

    def warn(self, stacklevel: int = 3) -> None:
        if not self.found:
            return
        listed = "; ".join(f"{name!r}: {bad} of {n} values ({str(dtype).replace('torch.', '')})"
                           for name, bad, n, dtype in self.found[:10])
        more = f"; and {len(self.found) - 10} more tensor(s)" if len(self.found) > 10 else ""
        warnings.warn(f"{self.path}: the {self.what} has NaN/Inf weights in {len(self.found)} tensor(s) - "
                      f"{listed}{more}. Its outputs will likely be NaN: the file is corrupt, or the weights do not "
                      f"fit the chosen dtype", NonFiniteWeightsWarning, stacklevel=stacklevel)


class MultiFile:
    """Several files seen as one key space (sharded checkpoints)."""

    def __init__(self, files):
        self.files = files
        self._owner = {}
        for f in files:
            for k in f.keys():
                if k in self._owner:
                    raise CheckpointError(f"tensor {k!r} is in two of the files: {self._owner[k].path} and {f.path}; "
                                          f"expected each tensor in one shard")
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
    """A JSON object file next to the weights (config.json, ...), or None when absent."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object {{...}}, found a JSON {_json_kind(data)}")
    return data


def file_in_folder(folder: Path, name) -> tuple[Path | None, str | None]:
    """(path, None) when `name`, listed in an index file of `folder`, is a plain file name or relative
    path inside `folder` - not absolute, no '..', no symlink leading out - else (None, why not)."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None, f"expected a file name inside the folder, found {name!r}"
    rel = Path(name)
    if rel.is_absolute() or rel.drive or name.startswith(("/", "\\")):
        return None, f"{name!r} is an absolute path; an index may only name files in its own folder"
    if ".." in rel.parts or ".." in name.replace("\\", "/").split("/"):
        return None, f"{name!r} leads out of the folder ('..'); an index may only name files in its own folder"
    root = Path(folder).resolve()
    path = Path(folder) / rel
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        return None, f"{name!r} resolves to {resolved}, outside {root} (a symlink?); an index may only name files in its own folder"
    return path, None


def read_shard_index(index_path: Path) -> list[Path]:
    """The shard files a `*.safetensors.index.json` lists ({"weight_map": {tensor name: shard file}}),
    checked: names of files that exist inside the index's own folder."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{index_path}: expected a shard index (JSON), found invalid JSON ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        found = (f"a JSON {_json_kind(index)}" if not isinstance(index, dict) else
                 f"weight_map = {str(weight_map)[:100]}" if "weight_map" in index else "no 'weight_map'")
        raise CheckpointError(f"{index_path}: expected a shard index {{\"weight_map\": {{tensor name: shard file}}}}; "
                              f"found {found}")
    bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v), None)
    if bad is not None:
        raise CheckpointError(f"{index_path}: weight_map must map tensor names to shard file names; "
                              f"found {bad[0]!r}: {bad[1]!r}")
    folder = index_path.parent
    files = []
    for shard in sorted(set(weight_map.values())):
        path, why = file_in_folder(folder, shard)
        if why:
            raise CheckpointError(f"{index_path}: refused shard {why}")
        files.append(path)
    missing = [str(f.relative_to(folder)) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index_path}: lists shard(s) {missing} that are not in {folder}")
    return files


def open_weights_folder(folder: Path, what: str, prefer: str | None = None) -> MultiFile:
    """The weights of a model folder as one key space: the file `prefer` when present, else the
    shards a `*.safetensors.index.json` lists, else every .safetensors, else the .pth/.pt/.bin files.
    `what` names the expected content in the error when there are none."""
    index = sorted(folder.glob("*.safetensors.index.json"), key=lambda p: (p.name != f"{prefer}.index.json", p.name))
    if prefer and (folder / prefer).exists():
        files = [folder / prefer]
    elif index:
        files = read_shard_index(index[0])
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
