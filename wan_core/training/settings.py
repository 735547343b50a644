"""Trainer settings declared once: each config field carries its help text, allowed range and choices.

The config dataclasses (`TrainConfig`, `SRPOConfig`, ...) declare their fields with `setting(...)`.
From that one declaration come the range checks run on every config (`check_settings`), the
`python -m wan_core train` options, and the ComfyUI widgets (defaults, ranges, tooltips), so the
library, the command line and the nodes cannot disagree.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, field, fields


def setting(default, help: str, *, min=None, max=None, step=None, choices=None, presets=None,
            node: str = "settings"):
    """A config field with its documentation. min / max bound numbers (and each number of a tuple);
    choices lists the allowed strings; presets lists suggested strings (a node offers them, any other
    value is allowed too). node: where the ComfyUI trainer shows it: "main" (the trainer node's own
    widgets), "settings" (its settings node), or "none"."""
    meta = {"help": help, "min": min, "max": max, "step": step, "choices": tuple(choices) if choices else None,
            "presets": tuple(presets) if presets else None, "node": node}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def documented_fields(config_cls, node: str | None = None) -> list:
    """The fields declared with `setting`, optionally only those shown on `node` ("main" or "settings")."""
    return [f for f in fields(config_cls) if "help" in f.metadata and (node is None or f.metadata["node"] == node)]


def check_settings(config) -> None:
    """Every documented field has its declared type, a finite value in its range, an allowed choice;
    raise one ValueError naming the field, what was expected and what was found."""
    name = type(config).__name__
    for f in documented_fields(type(config)):
        value, meta, default = getattr(config, f.name), f.metadata, default_of(f)
        numbers = value if isinstance(value, tuple) else (value,)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{name}.{f.name}: expected true or false, found {value!r}")
            continue
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ValueError(f"{name}.{f.name} must be one of {meta['choices']}, got {value!r}")
            continue
        if isinstance(default, str) or (isinstance(default, tuple) and default and isinstance(default[0], str)):
            continue
        for v in numbers:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name}.{f.name}: expected a number, found {v!r} ({type(v).__name__})")
            if isinstance(default, int) and not isinstance(v, int) and not float(v).is_integer():
                raise ValueError(f"{name}.{f.name}: expected a whole number, found {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name}.{f.name}: expected a finite number, found {v!r}")
            lo, hi = meta["min"], meta["max"]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"{name}.{f.name} must lie in [{lo if lo is not None else '-inf'}, "
                                 f"{hi if hi is not None else 'inf'}], got {v!r}")
