"""The text of the workflows' Markdown notes: notes/<workflow name>.md, filled in at generation time.

A note file is a Python format string (str.format): `{model_files}` becomes the list of the workflow's
model files with download links and the ComfyUI folder tree, `{negative_prompt_tip}` and `{sampler_tip}`
the shared sentences in notes/shared/, and any other field is passed by the catalogue (e.g.
`{c.learning_rate:g}`). A literal brace is written twice: `{{` / `}}`.
"""
from __future__ import annotations

from pathlib import Path

NOTES_DIR = Path(__file__).resolve().parent


def shared_text(name: str) -> str:
    """notes/shared/<name>.md without its final newline, for use inside a sentence or paragraph."""
    return (NOTES_DIR / "shared" / f"{name}.md").read_text(encoding="utf-8").removesuffix("\n")


def note_text(workflow: str, models: tuple | list = (), **fields) -> str:
    """notes/<workflow>.md filled in; `models`: the model entries ({name, url, directory}) that
    `{model_files}` lists (a note that names a field it is not given fails with a KeyError)."""
    if models:
        fields["model_files"] = model_files_md(*models)
    template = (NOTES_DIR / f"{workflow}.md").read_text(encoding="utf-8")
    return template.format(negative_prompt_tip=shared_text("negative_prompt_tip"),
                           sampler_tip=shared_text("sampler_tip"), **fields)


def model_files_md(*entries: dict) -> str:
    """The model files as Markdown: download links, then where they go under ComfyUI/models/."""
    folders: dict[str, list[str]] = {}
    for e in entries:
        folders.setdefault(e["directory"], []).append(e["name"])
    links = "\n".join(f"- [{e['name']}]({e['url']}) → `models/{e['directory']}/`" for e in entries)
    tree = ["ComfyUI/", "└── models/"]
    dirs = sorted(folders)
    for i, d in enumerate(dirs):
        last = i == len(dirs) - 1
        tree.append(f"    {'└' if last else '├'}── {d}/")
        for j, f in enumerate(folders[d]):
            tree.append(f"    {' ' if last else '│'}   {'└' if j == len(folders[d]) - 1 else '├'}── {f}")
    others = any("/Comfy-Org/" not in e["url"] for e in entries)
    return ("**Model files** (Comfy-Org's repackaged files, as ComfyUI's own Wan templates use"
            + ("; the others from their authors' repositories" if others else "") + ")\n\n"
            + links + "\n\n```\n" + "\n".join(tree) + "\n```\n")
