"""The package version: one home, pyproject.toml's [project] version."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def read_version() -> str:
    """[project] version of the checkout this package sits in, else the installed distribution's, else
    "0+unknown".
    (A regex, not tomllib: the pack supports Python 3.10, which has no tomllib.)"""
    if PYPROJECT.is_file():
        project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", PYPROJECT.read_text(), re.M | re.S)
        version = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1) if project else "", re.M)
        if version:
            return version.group(1)
    try:
        return metadata.version("wan-flow")
    except metadata.PackageNotFoundError:  # the package copied on its own (e.g. next to ComfyUI's python)
        return "0+unknown"


__version__ = read_version()
