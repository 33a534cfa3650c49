"""`mlxseek info`: what a checkpoint folder holds, from config.json and the safetensors headers alone.

No weight is read, so it is instant on a 685B checkpoint. Works on official HF folders (bf16 or FP8
blocks), on mlx-lm / mlx-community folders and on mlxseek's converted ones. Parameters are counted from the
stored tensors: quantization metadata (`weight_scale_inv`, `scales`, `biases`) is not a parameter, and a
packed affine weight (uint32 holding 32/bits values) counts the values it packs, at the bits config.json
records for its module. Bytes per decoded token are summed over the tensors as stored, with the same rule
as `estimate`: routed experts read top-k / E of their bytes, the embedding one row, everything else once.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Union

from ..checkpoint.store import WeightStore
from ..config import ModelConfig
from ..errors import CheckpointError
from ..loading.loader import check_checkpoint
from .estimate import resolve_config

_ROUTED = re.compile(r"\.experts\.\d+\.|\.switch_mlp\.")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
# The HF MTP layer stores copies of the embedding and output head, which the model shares (V3 report 2.2).
_MTP_COPY = re.compile(r"\.(embed_tokens|shared_head\.head)\.")
# V4.1's Engram tables (official `layers.N.`, converted `model.layers.N.`): read by position from disk.
_ENGRAM = re.compile(r"^(?:model\.)?layers\.(\d+)\.engram\.embed\.(weight|scale)$")


def _aux_of(key: str, keys: set[str]) -> bool:
    """Quantization metadata: FP8 `weight_scale_inv`, or the `scales`/`biases` of a packed weight."""
    if key.endswith("_scale_inv"):
        return True
    base, _, leaf = key.rpartition(".")
    return leaf in ("scales", "biases", "scale") and f"{base}.weight" in keys


def _logical(key: str, store: WeightStore, cfg: ModelConfig, keys: set[str]) -> int:
    n = math.prod(store.shape(key))
    module = key.rpartition(".")[0]
    scale = f"{module}.scale"
    if store.dtype(key) == "I8" and scale in keys and store.shape(scale)[-1] * 32 == 2 * store.shape(key)[-1]:
        return 2 * n  # V4/V4.1 official FP4 experts: two e2m1 values per byte, one e8m0 scale per 32
    if store.dtype(key) != "U32" or f"{module}.scales" not in keys:
        return n
    q = cfg.quantization or {}
    spec = q.get(module) if isinstance(q.get(module), dict) else q
    if "bits" not in spec:
        raise CheckpointError(f"{store.file_of(key)}: {key} is packed (uint32 with {module}.scales) but "
                              f"config.json records no quantization bits for it; re-convert with mlxseek convert")
    return n * 32 // int(spec["bits"])


def quantization(cfg: ModelConfig) -> dict:
    """How config.json says the weights are stored."""
    q = cfg.quantization
    if isinstance(q, dict) and "bits" in q:
        per_path = {k: v for k, v in q.items() if k not in ("bits", "group_size", "mode")}
        overrides: dict[str, int] = {}
        for v in per_path.values():
            if isinstance(v, dict) and (v.get("bits"), v.get("group_size")) == (q["bits"], q.get("group_size")):
                continue  # recorded only for its layout
            label = "float" if v is False else f"{v.get('bits')}-bit" if isinstance(v, dict) else None
            if isinstance(v, dict) and v.get("group_size") != q.get("group_size"):
                label += f" g{v.get('group_size')}"  # a --target-bpw mix also chooses group sizes
            if label:
                overrides[label] = overrides.get(label, 0) + 1
        kmajor = sum(isinstance(v, dict) and v.get("layout") == "kmajor" for v in per_path.values())
        block = cfg.extra.get("mlxseek") or {}
        return {"format": "mlx", "mode": q.get("mode", "affine"), "bits": q["bits"],
                "group_size": q.get("group_size"), "recipe": block.get("recipe"),
                "calibrated": bool(block.get("calibration")), "target_bpw": block.get("target_bpw"),
                "overrides": overrides, "layout": f"kmajor ({kmajor} modules)" if kmajor else "transposed"}
    qc = cfg.quantization_config or {}
    if qc.get("quant_method") == "fp8":
        return {"format": "fp8", "fmt": qc.get("fmt"), "weight_block_size": qc.get("weight_block_size"),
                "scale_fmt": qc.get("scale_fmt"), "expert_dtype": cfg.expert_dtype}
    return {"format": "none", "dtype": cfg.extra.get("torch_dtype")}


def info(path: Union[str, Path]) -> dict:
    """Architecture, layer schedule, parameters, bytes on disk and per decoded token of the folder `path`."""
    folder = Path(path)
    cfg, _ = resolve_config(folder)
    store = WeightStore(folder)
    L, V, k_over_e = cfg.num_hidden_layers, cfg.vocab_size, cfg.routed_expert_fraction
    keys = set(store.keys())
    params, drafter_bytes, main_bytes = {"main": 0, "mtp": 0, "copy": 0}, 0, 0
    active, per_token, tensor_bytes, by_dtype = 0.0, 0.0, 0, {}
    engram: dict = {}
    ignored, unused = cfg.ignored_checkpoint_keys, 0
    for key in sorted(keys):
        nbytes = store.nbytes_of(key)
        tensor_bytes += nbytes
        by_dtype[store.dtype(key)] = by_dtype.get(store.dtype(key), 0) + nbytes
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a recomputed buffer some HF checkpoints carry, not a parameter
        if (e := _ENGRAM.match(key)) is not None:
            engram.setdefault(int(e[1]), {})[e[2]] = (store.shape(key), nbytes)
            continue
        if any(re.search(p, key) for p in ignored):  # V4.1: the vision tower, image-token routing biases
            unused += nbytes
            continue
        m = _LAYER.match(key)
        part = "mtp" if key.startswith(("mtp.", "dspark.")) or (m and int(m[1]) >= L) else "main"
        part = "copy" if part == "mtp" and _MTP_COPY.search(key) else part
        embedding = "embed_tokens" in key or key.startswith("embed.")
        reads = k_over_e if _ROUTED.search(key) else 1 / V if embedding else 1.0
        n = 0 if _aux_of(key, keys) else _logical(key, store, cfg, keys)
        params[part] += n
        drafter_bytes += nbytes if part != "main" else 0
        if part == "main":
            active += n * reads
            per_token += nbytes * reads
            main_bytes += nbytes
    check_checkpoint(folder)  # the view `load` validates: no figure below from a config the shards contradict
    n_mtp = 0 if cfg.has_dspark else cfg.num_nextn_predict_layers  # 0731/0813 still say 1, with no MTP head
    moe = sum(cfg.is_moe_layer(i) for i in range(L))
    return {
        "path": str(folder), "architecture": (cfg.extra.get("architectures") or [cfg.model_type])[0],
        "model_type": cfg.model_type,
        "layers": {"total": L, "dense": L - moe, "moe": moe, "mtp": n_mtp, "mtp_in_checkpoint": params["mtp"] > 0},
        "total_params": params["main"], "active_params": round(active), "mtp_params": params["mtp"],
        "backbone_bytes": main_bytes, "unused_bytes": unused,
        "drafter": _drafter(cfg, keys, params["mtp"] + params["copy"], drafter_bytes),
        "engram": _engram(cfg, engram),
        "stored_params": sum(params.values()),
        "bytes_on_disk": sum((folder / f).stat().st_size for f in set(store.weight_map.values())),
        "tensor_bytes": tensor_bytes, "bytes_by_dtype": by_dtype, "bytes_per_token": round(per_token),
        "bits_per_weight": 8 * (tensor_bytes - sum(b for t in engram.values() for _, b in t.values()))
        / max(1, sum(params.values())),
        "quantization": quantization(cfg),
        "runtime": runtime(),
    }


def _drafter(cfg, keys: set, n: int, nbytes: int) -> Optional[dict]:
    """The checkpoint's drafter, apart from the main model: kind, stages, parameters and bytes stored."""
    if cfg.has_dspark and n:
        stages = {m[1] for k in keys if (m := re.match(r"^(?:mtp|dspark\.stages)\.(\d+)\.", k))}
        return {"kind": "dspark", "stages": len(stages), "block_size": cfg.dspark_block_size, "params": n,
                "bytes": nbytes, "target_layer_ids": cfg.dspark_target_layer_ids}
    return {"kind": "mtp", "stages": cfg.num_nextn_predict_layers, "params": n, "bytes": nbytes} if n else None


def _engram(cfg, tables: dict) -> Optional[dict]:
    """V4.1's Engram tables, apart from the backbone (never resident: rows are read by position). Each token
    reads (max n-gram - 1) x heads rows of each table; a row is its weight row + its scale row as stored."""
    if not tables:
        return None
    per_table = (cfg.engram_max_ngram_size - 1) * cfg.engram_n_heads
    rows = sum(t["weight"][0][0] for t in tables.values())
    nbytes = sum(b for t in tables.values() for _, b in t.values())
    row_bytes = [sum(b / shape[0] for shape, b in t.values()) for t in tables.values()]
    return {"layers": sorted(tables), "tables": len(tables), "rows": rows, "bytes": nbytes,
            "params": sum(math.prod(t["weight"][0]) for t in tables.values()),
            "rows_per_token": per_table * len(tables), "bytes_per_token": round(per_table * sum(row_bytes)),
            "resident": False}


def runtime() -> dict:
    """What this process would run the model on: MLX version, default device, BLAS (see mlxseek.cpu.blas)."""
    import mlx.core as mx

    from ..cpu import blas

    return {"mlx": mx.__version__, "device": str(mx.default_device()), **blas.status()}
