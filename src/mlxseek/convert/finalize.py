"""The last steps of a conversion: metadata files, tokenizer files, and the atomic move into place.

config.json is the source's own (every key kept, sorted as mlx-lm sorts it) minus the FP8
`quantization_config` (the weights are no longer FP8), plus mlx-lm's `quantization` record (and the
`quantization_config` mirror mlx-lm writes next to it) and an `mlxseek` provenance block.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .manifest import PROGRESS_NAME
from .report import REPORT_NAME
from .writer import write_index, write_json

# Files a tokenizer or chat template may live in (as mlx-lm's converter, custom code *.py too).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json",
    "chat_template.json", "chat_template.jinja",
)
TOKENIZER_GLOBS = ("*.py", "*.jinja", "*.tiktoken")


def output_config(raw_cfg: dict, quantization: dict | None, mlxseek_block: dict) -> dict:
    cfg = {k: v for k, v in raw_cfg.items() if k not in ("quantization_config", "quantization", "mlxseek")}
    if quantization is not None:
        cfg["quantization"] = quantization
        cfg["quantization_config"] = quantization  # mlx-lm's save_config mirrors it for HF tooling
    cfg["mlxseek"] = mlxseek_block
    return dict(sorted(cfg.items()))


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    names = {n for n in TOKENIZER_FILES if (src / n).is_file()}
    names |= {p.name for g in TOKENIZER_GLOBS for p in src.glob(g) if p.is_file()}
    for n in sorted(names):
        shutil.copyfile(src / n, dst / n)
    return sorted(names)


def finish(partial: Path, dst: Path, src: Path, *, config: dict, report: dict, weight_map: dict,
           total_size: int, total_parameters: int) -> None:
    """Write the metadata into `partial`, then make it `dst` in one rename."""
    write_index(partial, weight_map, total_size, total_parameters)
    write_json(partial / REPORT_NAME, report, indent=1)
    copy_tokenizer_files(src, partial)
    write_json(partial / "config.json", config, indent=4)
    _fsync_dir(partial)
    old = None
    if dst.exists() or dst.is_symlink():  # --force: move the old output aside first, delete it after
        old = dst.with_name(f"{dst.name}.replaced-{os.getpid()}")
        os.replace(dst, old)
    os.replace(partial, dst)
    _fsync_dir(dst.parent)
    # Left behind only if killed between the two renames; the folder is complete either way.
    (dst / PROGRESS_NAME).unlink()
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)
