"""wan_core.io.write: atomic writes leave a file with the permissions any new file gets (0o666 & ~umask), not
mkstemp's 0o600, replace the old file in one step and leave nothing behind when writing fails."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from wan_core.io.write import atomic_write, save_pth, save_safetensors


@pytest.fixture(params=[0o022, 0o077, 0o002, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_saved_files_get_the_normal_permissions(tmp_path, umask):
    expected = 0o666 & ~umask
    plain = tmp_path / "plain.txt"  # what open() makes under the same umask: the yardstick
    plain.write_text("x")
    assert mode(plain) == expected
    tensors = {"w": torch.arange(6.0).view(2, 3)}
    written = [
        save_safetensors(tensors, tmp_path / "model.safetensors"),
        save_pth(tensors, tmp_path / "model.pth"),
        atomic_write(tmp_path / "sub" / "notes.json", lambda tmp: Path(tmp).write_text("{}")),
    ]
    for path in written:
        assert mode(path) == expected, (path.name, oct(mode(path)), oct(expected))
    # replacing an existing file gives the same permissions again (the temporary file's, fixed before the rename)
    os.chmod(written[0], 0o600)
    save_safetensors(tensors, written[0])
    assert mode(written[0]) == expected


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("old"))

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
