"""Writing a Wan DiT state dict in the layouts users have on disk.

The same weights can be written as the official release (config.json + safetensors, optionally
sharded with an index json), as a ComfyUI single file (optionally with the `model.diffusion_model.`
prefix, in fp16/bf16, plain fp8 or ComfyUI "scaled fp8"), or as a torch .pth. Files are written
atomically (temporary file, then rename), so an interrupted save never leaves a broken checkpoint.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) and move the result into place only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved model should read like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_pth(state_dict: dict, path) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp))
