"""The pack as the workflow generator sees it: its folder, its id and version (pyproject.toml), and
its node classes imported the way ComfyUI imports a custom-node folder."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import tomllib

PACK_DIR = Path(__file__).resolve().parents[2]


def pack_id_and_version() -> tuple[str, str]:
    """pyproject.toml [project] name and version: the cnr_id / ver stored on the pack's nodes."""
    with open(PACK_DIR / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return project["name"], project["version"]


def load_pack():
    """The pack's node classes, imported the way ComfyUI imports a custom-node folder. File dropdowns
    are listed from an empty folder, so the output does not depend on local model files."""
    for module in list(sys.modules.values()):
        # a package only: pytest imports the pack's __init__.py as a lone module "__init__" (no nodes)
        # when the checkout's folder name is no valid package name (e.g. "wan-flow")
        if getattr(module, "__file__", None) == str(PACK_DIR / "__init__.py") and \
                hasattr(module, "__path__") and hasattr(module, "NODE_CLASS_MAPPINGS"):
            return module
    os.environ.setdefault("WANFLOW_MODELS_DIR", tempfile.mkdtemp(prefix="wanflow-no-models-"))
    spec = importlib.util.spec_from_file_location("wanflow_pack_workflows", PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str):
    """A module of the loaded pack by its path inside the pack, e.g. "wan_core.demo"."""
    return importlib.import_module(f"{load_pack().__name__}.{name}")
