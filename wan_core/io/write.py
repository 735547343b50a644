"""Writing files safely, with no model knowledge: `atomic_write` (temporary file, then rename, so an
interrupted save never leaves a broken file and the previous one survives), safetensors and weights-only
.pth writers on top of it, and `check_writable` (an output found unwritable before the work, not after).
The model layouts (official, ComfyUI, fp8) are written by `wan_core.formats`.
"""
from __future__ import annotations

import errno
import os
import shutil
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
    # a short temporary name: a final name the file system takes never fails on its temporary twin
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".wanflow-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved model should read like any file
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk shows as either (torch's writer: RuntimeError)
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise OSError(getattr(e, "errno", None) or errno.EIO,
                      f"could not write {path}: {getattr(e, 'strerror', None) or str(e).splitlines()[0][:200]} "
                      f"({free / 2**20:.0f} MiB free on that disk; {kept})") from e
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


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Make sure `path` can be written, before the work that produces it: its folder can be made (no
    path component is a file), the name fits the file system, and a file can be created there. The
    probe leaves nothing behind; an existing file must be writable. -> the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise ValueError(f"cannot write the {what} {path}: a part of its folder is a file ({e.filename})") from e
    except OSError as e:
        raise ValueError(f"cannot write the {what} {path}: cannot make its folder ({e.strerror})") from e
    if len(path.name.encode()) > os.pathconf(path.parent, "PC_NAME_MAX"):
        raise ValueError(f"cannot write the {what} {path}: the file name is {len(path.name.encode())} bytes, "
                         f"the file system takes at most {os.pathconf(path.parent, 'PC_NAME_MAX')}")
    if path.is_dir():
        raise ValueError(f"cannot write the {what} {path}: a folder of that name exists")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"cannot write the {what} {path}: the existing file is not writable")
        return path
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:  # made by someone else meanwhile: it can be replaced like an existing one
        return path
    except OSError as e:
        raise ValueError(f"cannot write the {what} {path}: {e.strerror}") from e
    os.close(fd)
    os.unlink(path)
    return path
