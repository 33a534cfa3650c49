"""The inverse of the key map: an mlxseek model's parameters -> the official Hugging Face DeepSeek layout.

Used to publish models trained or edited in MLX (e.g. `benchmarks/train_tiny.py`) as checkpoints that the
real converter and loader read like any DeepSeek release. Operations, each undoing one in keymap.py:
  stack_experts  mlp.switch_mlp.{gate,up,down}_proj.weight (E, out, in) -> mlp.experts.{e}.{proj}.weight
  split_kv_b     self_attn.embed_q (H, R, Dn) + self_attn.unembed_out (H, Dv, R) -> kv_b_proj (H*(Dn+Dv), R)
  keep_mtp       mtp.block.* -> model.layers.{N}.*; mtp.{enorm,hnorm,eh_proj,shared_head}.* -> model.layers.{N}.*,
                 plus model.layers.{N}.embed_tokens (the official release stores the shared embedding there)
  fp8            (optional) official block FP8: e4m3 `weight` + float32 `weight_scale_inv` per block
Only float (unquantized) models can be exported.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..checkpoint import safetensors
from ..checkpoint.fp8 import quant_block_fp8
from ..checkpoint.keymap import SCALE_SUFFIX
from ..config import ModelConfig
from ..errors import ConversionError

# Weights DeepSeek ships as FP8 blocks (V3 README_WEIGHTS.md): every projection inside a decoder layer
# (the MTP layer included). Embeddings, the LM head, norms and the router stay bf16; the bias is float32.
FP8_SUFFIXES = (
    "self_attn.q_proj.weight", "self_attn.q_a_proj.weight", "self_attn.q_b_proj.weight",
    "self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_b_proj.weight", "self_attn.o_proj.weight",
    "gate_proj.weight", "up_proj.weight", "down_proj.weight", "eh_proj.weight",
)
# What an export holds: float weights, and FP8 weights as their e4m3 bits in uint8 arrays.
_ST_DTYPES = {**{d: safetensors.name_of(d) for d in (mx.bfloat16, mx.float32, mx.float16, mx.int32)},
              mx.uint8: "F8_E4M3"}
_SWITCH = re.compile(r"^(.*)\.mlp\.switch_mlp\.(gate_proj|up_proj|down_proj)\.weight$")


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def to_official(model, cfg: ModelConfig) -> "OrderedDict[str, mx.array]":
    """Official HF DeepSeek keys -> arrays (in the model's dtype), naturally sorted."""
    params = dict(tree_flatten(model.parameters()))
    quantized = [k for k in params if k.endswith(".scales")]
    if quantized:
        raise ConversionError(f"cannot export a quantized model ({quantized[0]}); export the float model instead")
    n = cfg.mtp_layer_index
    out: dict[str, mx.array] = {}
    for key, w in params.items():
        if key.startswith("mtp.block."):
            key = f"model.layers.{n}." + key[len("mtp.block."):]
        elif key.startswith("mtp."):
            key = f"model.layers.{n}." + key[len("mtp."):]
        m = _SWITCH.match(key)
        if m:  # (E, out, in) -> one (out, in) matrix per expert
            for e in range(w.shape[0]):
                out[f"{m[1]}.mlp.experts.{e}.{m[2]}.weight"] = w[e]
        elif key.endswith(".self_attn.embed_q.weight"):
            prefix = key[: -len(".embed_q.weight")]
            up = params_key(params, key.replace("embed_q", "unembed_out"), n)
            # (H, R, Dn) -> (H, Dn, R) next to (H, Dv, R): per head [W_UK; W_UV], rows H*(Dn+Dv)
            kv_b = mx.concatenate([w.swapaxes(-1, -2), up], axis=1)
            out[f"{prefix}.kv_b_proj.weight"] = kv_b.reshape(-1, kv_b.shape[-1])
        elif not key.endswith(".self_attn.unembed_out.weight"):
            out[key] = w
    if any(k.startswith(f"model.layers.{n}.") for k in out):
        out[f"model.layers.{n}.embed_tokens.weight"] = out["model.embed_tokens.weight"]
    return OrderedDict((k, out[k]) for k in sorted(out, key=_natural))


def params_key(params: dict, key: str, n: int) -> mx.array:
    """The internal parameter behind an official-named `key` (only MTP keys are renamed back)."""
    internal = key.replace(f"model.layers.{n}.", "mtp.block.", 1) if key.startswith(f"model.layers.{n}.") else key
    return params[internal]


def to_bf16_official(tensors: dict) -> "OrderedDict[str, mx.array]":
    """The release's dtypes: bf16 everywhere except the router's float32 correction bias."""
    return OrderedDict(
        (k, v.astype(mx.float32 if k.endswith("e_score_correction_bias") else mx.bfloat16)) for k, v in tensors.items()
    )


def to_fp8_official(tensors: dict, block: tuple[int, int]) -> "OrderedDict[str, mx.array]":
    """FP8 copy: each decoder-layer projection -> e4m3 bits (uint8) + float32 `weight_scale_inv` blocks."""
    out = OrderedDict()
    for k, v in to_bf16_official(tensors).items():
        if k.startswith("model.layers.") and k.endswith(FP8_SUFFIXES):
            q, scale = quant_block_fp8(tensors[k].astype(mx.float32), block)
            out[k], out[k + SCALE_SUFFIX] = q, scale
        else:
            out[k] = v
    return out


def write_safetensors(path: Path, tensors: dict) -> None:
    """Plain safetensors writer (uint8 arrays are written as F8_E4M3, which MLX cannot save itself)."""
    entries, blobs = [], []
    for k, v in tensors.items():
        if v.dtype not in _ST_DTYPES:
            raise ConversionError(f"{path}: cannot write {k} of dtype {v.dtype}")
        raw = safetensors.host_bits(v).tobytes()
        entries.append((k, _ST_DTYPES[v.dtype], v.shape, len(raw)))
        blobs.append(raw)
    header, _ = safetensors.layout_header(entries, {"format": "pt"})
    with open(path, "wb") as f:
        f.write(safetensors.encode_header(header, compact=False))
        for b in blobs:
            f.write(b)


def write_official(folder: str | Path, tensors: dict, config: dict, *, shards: int = 2,
                   groups: list[list[str]] | None = None) -> Path:
    """Write `tensors` as `shards` safetensors files + model.safetensors.index.json + config.json, the
    official layout (consecutive keys per shard, so one layer's experts may straddle two files). `groups`
    (key lists, one per shard) chooses the split instead: a backbone shard written alone is byte-identical
    across checkpoints that share it (git stores it once)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(tensors)
    if groups is None:
        cut = [round(i * len(keys) / shards) for i in range(shards + 1)]
        groups = [keys[cut[i]: cut[i + 1]] for i in range(shards)]
    if sorted(k for g in groups for k in g) != sorted(keys):
        raise ConversionError(f"{folder}: the shard groups must hold every tensor exactly once")
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {k: tensors[k] for k in group}
        write_safetensors(folder / name, part)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.nbytes for v in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
