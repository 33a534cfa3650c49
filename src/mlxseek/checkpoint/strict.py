"""Strict loading: every model parameter is produced once with its shape, and nothing else is. One check,
shared by the loader (on the materialized weights) and the converter (on the planned output shapes)."""

from __future__ import annotations

import mlx.core as mx
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


def check_dtypes(lazy: dict[str, mx.array], model, folder, source_of: dict) -> None:
    """A float parameter must come from a float tensor and a packed/integer one from an integer tensor:
    a header whose dtype was edited to another of the same width (F32 -> I32, BF16 -> U16) would
    otherwise load its unchanged bytes as other numbers."""
    expected = dict(tree_flatten(model.parameters()))
    for k, a in lazy.items():
        want = expected.get(k)
        if want is not None and mx.issubdtype(want.dtype, mx.floating) != mx.issubdtype(a.dtype, mx.floating):
            src = source_of.get(k, k)
            raise WeightMismatchError(f"{folder}: {src} is stored as {a.dtype} but the model's {k} is {want.dtype}; "
                                      "the shard header's dtype is wrong: re-download or re-convert this shard")
