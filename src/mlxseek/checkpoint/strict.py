"""Strict loading: every model parameter is produced once with its shape, and nothing else is. One check,
shared by the loader (on the materialized weights) and the converter (on the planned output shapes)."""

from __future__ import annotations

from mlx.utils import tree_flatten

from ..errors import WeightMismatchError


def check_against_model(shapes: dict[str, tuple], model, folder, source_of: dict | None = None) -> None:
    """Strict: every model parameter is produced once with its shape, and nothing else is. Unused names
    are reported by their checkpoint key (`source_of`: internal name -> checkpoint key)."""
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    src = (source_of or {}).get
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    bad = [f"{k}: checkpoint {shapes[k]} vs model {expected[k]}"
           for k in sorted(set(shapes) & set(expected)) if shapes[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing[:10])}")
    if unexpected:
        parts.append(f"not used by the model ({len(unexpected)}): {', '.join(src(k, k) for k in unexpected[:10])}")
    if bad:
        parts.append(f"shape mismatch vs config.json ({len(bad)}): {'; '.join(bad[:10])}")
    if parts:
        raise WeightMismatchError(f"{folder}: checkpoint does not match config.json: " + " | ".join(parts))
