"""pyproject.toml's dependencies are the requirements files' (ComfyUI-Manager installs requirements.txt,
the registry reads pyproject.toml: the two must not drift apart)."""
from pathlib import Path

import tomllib

PACK_DIR = Path(__file__).resolve().parents[1]


def requirements(name: str) -> list[str]:
    lines = (PACK_DIR / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_pyproject_dependencies_match_requirements():
    project = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == requirements("requirements.txt")
    assert project["optional-dependencies"]["test"] == requirements("requirements-test.txt")
