"""ComfyUI widgets made from the trainer config dataclasses (one source of truth).

Each config field declared with `wan_core.training.settings.setting` becomes one widget (a pair of
number fields becomes `<name>_low` / `<name>_high`, a tuple of words one comma-separated STRING),
with the field's default, range, step, choices and help as tooltip. `config_values` turns the
widget values back into config fields.
"""
from __future__ import annotations

from ..wan_core.training.settings import default_of, documented_fields

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _number_spec(kind: str, default, meta: dict) -> tuple:
    spec = {"default": default, "tooltip": meta["help"]}
    for key in ("min", "max", "step"):
        if meta[key] is not None:
            spec[key] = meta[key]
    if kind == "FLOAT":
        spec["round"] = False  # keep small learning rates exact
    return (kind, spec)


def widgets_for(config_cls, node: str) -> dict:
    """{widget name: ComfyUI input spec} for the fields of `config_cls` shown on `node` ("main" / "settings")."""
    out = {}
    for f in documented_fields(config_cls, node):
        meta, default = f.metadata, default_of(f)
        if meta["choices"] is not None:
            out[f.name] = (list(meta["choices"]), {"default": default, "tooltip": meta["help"]})
        elif meta["presets"] is not None:
            out[f.name] = (list(meta["presets"]), {"default": default, "tooltip": meta["help"]})
        elif isinstance(default, bool):
            out[f.name] = ("BOOLEAN", {"default": default, "tooltip": meta["help"]})
        elif isinstance(default, tuple) and all(isinstance(v, str) for v in default):
            out[f.name] = ("STRING", {"default": ", ".join(default), "tooltip": meta["help"] + " Comma-separated."})
        elif isinstance(default, tuple):
            kind = "INT" if all(isinstance(v, int) for v in default) else "FLOAT"
            for part, value in zip(("low", "high"), default):
                out[f"{f.name}_{part}"] = _number_spec(kind, value, meta)
        elif isinstance(default, int):
            spec = _number_spec("INT", default, meta)
            if f.name == "seed":
                spec[1].update(max=SEED_MAX, control_after_generate=True)
            out[f.name] = spec
        elif isinstance(default, float):
            out[f.name] = _number_spec("FLOAT", default, meta)
        elif isinstance(default, str):
            out[f.name] = ("STRING", {"default": default, "tooltip": meta["help"]})
    return out


def config_values(config_cls, values: dict) -> dict:
    """Widget values (any subset of `widgets_for`'s names) -> config field values."""
    out = {}
    for f in documented_fields(config_cls):
        default = default_of(f)
        if isinstance(default, tuple) and all(isinstance(v, str) for v in default):
            if f.name in values:
                out[f.name] = tuple(w.strip() for w in str(values[f.name]).split(",") if w.strip())
        elif isinstance(default, tuple):
            parts = [f"{f.name}_low", f"{f.name}_high"]
            if any(p in values for p in parts):
                out[f.name] = tuple(values.get(p, d) for p, d in zip(parts, default))
        elif f.name in values:
            out[f.name] = values[f.name]
    return out


def settings_output(kind: str, config_cls, options_cls, values: dict) -> dict:
    """What a settings node sends its trainer: {"kind", "config": fields, "options": fields}."""
    return {"kind": kind, "config": config_values(config_cls, values), "options": config_values(options_cls, values)}


def read_settings(settings, kind: str, node: str) -> tuple[dict, dict]:
    """A settings node's output -> (config fields, options fields); none connected: the defaults."""
    if settings is None:
        return {}, {}
    if not isinstance(settings, dict) or settings.get("kind") != kind:
        found = settings.get("kind") if isinstance(settings, dict) else type(settings).__name__
        raise ValueError(f"settings: expected the output of {node}; found {found}")
    return settings["config"], settings["options"]
