"""Parameter-name helpers with no model knowledge: natural ordering and the missing/unexpected-key check."""
from __future__ import annotations

from .tensor_files import CheckpointError


def numeric_order(name: str):
    """Sort key for parameter names: 'blocks.2.x' before 'blocks.10.x' (numbers and words never compared)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def _check_keys(expected: set, found: set, path):
    missing = sorted(expected - found, key=numeric_order)
    unexpected = sorted(found - expected, key=numeric_order)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the detected architecture - "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
