"""A calibrated conversion's steps before any shard is written: check the options, gather the statistics
(calibrate.py), and with a size target choose each module's bits and group size (allocate.py)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from mlx import nn

from ..errors import ConversionError
from ..models.families import family_of
from .allocate import Sensitivity, allocate
from .calibrate import CALIBRATION_CTX, Statistics, collect, read_calibration
from .calibrate_mhc import collect_mhc
from .quantize import size_summary
from .stream import Source

DEFAULT_CALIBRATION_TOKENS = 16384  # imatrix-scale: routes tokens to nearly every expert of small models


def calibrate(source: Source, skeleton: nn.Module, qplan, *, src: Path, path: str | Path, tokens: int,
              target_bpw: float | None) -> tuple[Statistics, dict]:
    """Statistics for importance-weighted quantization and, with `target_bpw`, bits per module written
    into `qplan`. Returns the statistics and the report's `calibration` (and `allocation`) blocks."""
    ctx = min(CALIBRATION_CTX, source.cfg.max_position_embeddings or CALIBRATION_CTX)
    batches = read_calibration(path, src, ctx=ctx, limit=tokens, vocab_size=source.cfg.vocab_size)
    sens = Sensitivity(qplan, source.cfg.num_hidden_layers - 1) if target_bpw is not None else None
    t0 = time.perf_counter()
    run = collect_mhc if family_of(source.cfg).calibrates == "mhc" else collect  # collect refuses the rest
    stats = run(source, batches, on_layer=sens.measure if sens else None)
    block = {"calibration": {"file": str(path), **stats.summary(), "seconds": round(time.perf_counter() - t0, 2)}}
    if sens is not None:
        size = size_summary(skeleton, qplan, source.dtype)
        float_bits = 8 * source.dtype.size
        measured = sum(sens.params[p] * (qplan.params[p]["bits"] + 2 * float_bits / qplan.params[p]["group_size"])
                       for p in sens.cost)
        block["allocation"] = allocate(sens, target_bpw=target_bpw, total_params=size["parameters"],
                                       fixed_bits=size["bits"] - measured, float_bits=float_bits)
    return stats, block


def check_calibration(*, quantize: bool, layout: str, calibration, tokens: int, target_bpw) -> dict:
    """Validate the calibration options; their record for the conversion's options (and fingerprint)."""
    if calibration is None:
        if target_bpw is not None:
            raise ConversionError("--target-bpw: allocating bits needs measured importance; add --calibration FILE")
        return {}
    if not quantize:
        raise ConversionError("--calibration: only quantized weights are calibrated; add -q")
    if layout != "transposed":
        raise ConversionError(f"--calibration with --layout {layout}: importance is per input column, which only "
                              "the transposed layout groups; use --layout transposed")
    if tokens < 2:
        raise ConversionError(f"--calibration-tokens {tokens}: give at least 2 tokens (thousands are typical)")
    if target_bpw is not None and not 1.0 < target_bpw <= 16.0:
        raise ConversionError(f"--target-bpw {target_bpw}: bits per weight lie between 2 and 16")
    path = Path(calibration)
    if not path.is_file():
        raise ConversionError(f"--calibration {path}: not a file; pass a text file (held-out text excluded)")
    return {"calibration": str(path.resolve()), "calibration_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "calibration_tokens": tokens, "target_bpw": target_bpw}
