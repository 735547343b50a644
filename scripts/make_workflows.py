#!/usr/bin/env python
"""Generate the pack's example workflows: a UI-format file (workflows/<name>.json, what ComfyUI's
Templates dialog lists) and its API-format twin (workflows/api/<name>.json) from one compact graph
description each, so the two can never drift apart.

    .venv/bin/python scripts/make_workflows.py           # (re)write the files
    .venv/bin/python scripts/make_workflows.py --check   # exit 1 if a file is missing or out of date

The workflows and their model files are in tools/workflows/catalogue.py, their notes in
tools/workflows/notes/*.md, the conversion to the two formats in tools/workflows/serializer.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
if str(PACK_DIR) not in sys.path:
    sys.path.insert(0, str(PACK_DIR))

from tools.workflows.catalogue import WORKFLOWS  # noqa: E402
from tools.workflows.pack import load_pack  # noqa: E402
from tools.workflows.serializer import build, json_text, node_defs  # noqa: E402

WORKFLOWS_DIR = PACK_DIR / "workflows"


def outputs(pack=None) -> dict[Path, str]:
    """{path: file text} of every generated file."""
    defs = node_defs(pack or load_pack())
    files = {}
    for make in WORKFLOWS:
        g = make()
        ui, prompt = build(g, defs)
        files[WORKFLOWS_DIR / f"{g.name}.json"] = json_text(ui)
        files[WORKFLOWS_DIR / "api" / f"{g.name}.json"] = json_text(prompt)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        rel = path.relative_to(PACK_DIR)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    if args.check and stale:
        print("out of date (run scripts/make_workflows.py):", *stale, sep="\n  ")
        return 1
    if not stale:
        print("all generated workflows are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
