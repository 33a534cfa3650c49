"""Checks on what a conversion is given, before anything is planned or written: the source and output
folders, the source config, the float dtype, free disk space; and the fingerprints a resumable run compares."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlx.core as mx

from ..config import ModelConfig
from ..errors import ConversionError
from .failures import check_output_parent
from .reader import SourceReader

_DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


def check_paths(src: Path, dst: Path, force: bool) -> tuple[Path, Path]:
    src, dst = src.expanduser().resolve(), dst.expanduser().resolve()
    if not src.is_dir():
        raise ConversionError(f"--hf-path {src}: not a folder; pass a local Hugging Face checkpoint folder")
    if dst == src or src in dst.parents or dst in src.parents:
        raise ConversionError(f"--mlx-path {dst}: must not be, contain or lie inside --hf-path {src} "
                              "(the source is never modified)")
    if dst.exists() and not force:
        raise ConversionError(f"--mlx-path {dst}: already exists; pass --force to replace it, or choose another path")
    check_output_parent(dst)
    return src, dst


def read_config(src: Path) -> tuple[dict, ModelConfig]:
    cfg = ModelConfig.from_file(src)
    if cfg.quantization:
        raise ConversionError(f"{src / 'config.json'}: already an MLX-quantized checkpoint ('quantization' is set); "
                              "convert the original Hugging Face release instead")
    return json.loads((src / "config.json").read_text()), cfg


def resolve_dtype(dtype: str | None, raw_cfg: dict) -> mx.Dtype:
    if dtype is None:
        dtype = raw_cfg.get("torch_dtype") or raw_cfg.get("dtype")
        dtype = dtype if dtype in _DTYPES else "bfloat16"
    if dtype not in _DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def dtype_name(dtype: mx.Dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)


def check_disk(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    margin = 64 << 20  # config, index, report, tokenizer files
    if need + margin > free:
        raise ConversionError(f"{folder}: the output needs about {(need + margin) / 1e9:.2f} GB more but the "
                              f"filesystem has {free / 1e9:.2f} GB free; free some space or choose another --mlx-path")


def index_sha256(src: Path, reader: SourceReader) -> str:
    index = src / "model.safetensors.index.json"
    return _sha256_bytes(index.read_bytes()) if index.exists() else reader.fingerprint()


def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_json(obj) -> str:
    return _sha256_bytes(json.dumps(obj, sort_keys=True).encode())
