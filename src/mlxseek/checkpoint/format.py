"""The converted format: `mlxseek convert` records `{"mlxseek": {"format_version": N, ...}}` in
config.json; the loader refuses a version it does not read, naming the command that fixes it."""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..errors import FormatVersionError

FORMAT_VERSION = 1  # of the `mlxseek` block that `mlxseek convert` writes into config.json


def check_format(cfg: ModelConfig, folder: Path) -> None:
    block = cfg.extra.get("mlxseek")
    if block is None:
        return
    version = block.get("format_version") if isinstance(block, dict) else None
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{folder / 'config.json'}: mlxseek.format_version {version!r} is not supported by this mlxseek "
            f"(reads version {FORMAT_VERSION}); re-run `mlxseek convert` on the original checkpoint"
        )
