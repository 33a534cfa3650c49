"""Sizing a DeepSeek model from config.json alone: parameters, bytes on disk, bytes per decoded token, the
KV cache, resident memory, whether it fits a Mac, and the memory-bandwidth roofline (DESIGN.md,
"Performance model").

Decode at batch 1 is memory-bound: each token reads the attention weights, the dense and shared MLPs, the
top-k routed experts of every MoE layer, the routers, norms, the LM head and one embedding row, each at its
packed size, plus the KV cache it attends over. So tok/s <= bandwidth / bytes per token.

"Active parameters" are the weights one decoded token multiplies; the embedding table contributes the one
row it looks up. This reproduces DeepSeek's published activated counts within ~2% (V3: 36.6B vs 36.7B).
Counting the whole embedding table instead (V3's README says its 36.7B includes the 0.9B embedding) gives
37.6B for V3 and misses V2-Lite's and V4-Flash's published figures by 11% and 6%.

Sizes use the converter's recipes (convert/quantize.py) on mlx-lm's module paths, so `estimate` predicts what
`mlxseek convert` writes. N machines: pipeline parallel gives each machine a contiguous range of layers
(balanced by bytes; the embedding on the first, the head and MTP on the last); at batch 1 the stages run one
after another, so the roofline is the single-machine one. Expert parallel gives each machine
n_routed_experts / N experts of every MoE layer and a replica of everything else; machines read
concurrently, so a token costs the replicated bytes plus top-k / N experts (balanced routing; the all_sum
over the network per MoE layer is not modelled).
"""

from __future__ import annotations

import math
from itertools import accumulate
from pathlib import Path
from typing import Callable, Optional, Union

from ..config import ModelConfig
from ..convert.quantize import BITS, GROUP_SIZES, RECIPES, RecipeContext, is_router
from ..errors import ConfigError
from ..models.families import family_of
from . import machines as machines_mod
from .cache_bytes import layer_cache as _layer_cache, layer_cache_reads as _layer_cache_reads
from .census import Tensor, census

# The converter's recipes (convert/quantize.py: uniform, experts, mixed), plus two reference formats:
# bf16 (unquantized) and native (as DeepSeek ships it: FP8 blocks, V4's FP4 experts).
FORMATS = tuple(RECIPES) + ("bf16", "native")
PARALLEL = ("pipeline", "expert")


def resolve_config(config: Union[str, Path, dict, ModelConfig]) -> tuple[ModelConfig, str]:
    """The ModelConfig and the name to use in errors, from a ModelConfig, a dict, a config.json or a model folder."""
    if isinstance(config, ModelConfig):
        return config, "config"
    if isinstance(config, dict):
        return ModelConfig.from_dict(config, source="config"), "config"
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; expected a DeepSeek config.json or a model folder holding one")
    return ModelConfig.from_file(path), str(path)


def bytes_fn(cfg: ModelConfig, fmt: str, q_bits: int, group_size: int) -> Callable[[Tensor], float]:
    """Stored bytes of a tensor under format `fmt`: a converter recipe, "bf16" or "native"."""
    if fmt not in FORMATS:
        raise ConfigError(f"--recipe {fmt!r}: unknown; choose one of {', '.join(FORMATS)}")
    if q_bits not in BITS or group_size not in GROUP_SIZES:
        raise ConfigError(f"--q-bits {q_bits} / --q-group-size {group_size}: MLX affine quantization packs "
                          f"{', '.join(map(str, BITS))} bits in groups of {', '.join(map(str, GROUP_SIZES))}")
    if fmt == "native":
        return lambda t: _native_bytes(t, cfg)
    if fmt == "bf16":
        return lambda t: _native_bytes(t, cfg) if t.kind == "table" else t.numel * 2
    choose, ctx = RECIPES[fmt], RecipeContext(cfg, q_bits)

    def module_bytes(path: str, numel: int, in_dim: int) -> float:
        bits = choose(path, ctx)
        # Groups run along the input dimension; a module it does not divide stays in float.
        if bits is None or in_dim % group_size:
            return numel * 2
        # Affine groups carry one fp16 scale and one fp16 bias per group: bits + 32 / group_size per weight.
        return numel * (bits + 32 / group_size) / 8

    def nbytes(t: Tensor) -> float:
        if t.kind == "table":
            return _native_bytes(t, cfg)
        if is_router(t.path):
            return t.numel * 4  # the converter keeps the router (gate and correction bias) in float32
        if t.kind == "float":
            return t.numel * 2
        if t.path.endswith("kv_b_proj"):
            # Converted for absorbed MLA into embed_q (H, R, nope) and unembed_out (H, v, R): other input dims.
            p, H, R, nope = t.path[: -len("kv_b_proj")], cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_nope_head_dim
            return (module_bytes(p + "embed_q", H * R * nope, nope)
                    + module_bytes(p + "unembed_out", H * cfg.v_head_dim * R, R))
        return module_bytes(t.path, t.numel, t.shape[-1])

    return nbytes


def _native_bytes(t: Tensor, cfg: ModelConfig) -> float:
    block = cfg.fp8_block_size
    if t.component == "engram_table":  # V4.1: FP8 rows, one E8M0 scale per 32 values (264 B per 256-wide row)
        return t.numel + t.numel / 32
    if t.native in ("fp8", "fp4") and block is None:
        return t.numel * 2  # a bf16 release (V2, V2-Lite)
    if t.native == "fp4":  # V4 routed experts: e2m1 packed two per byte, one e8m0 scale per 32 values
        return t.numel / 2 + t.numel / 32
    if t.native == "fp8":
        # One scale per weight_block_size block (128x128): float32 in V3/V3.1/V3.2, e8m0 bytes in V4
        # (the official V4-Flash tensor list stores them as float8_e8m0fnu).
        br, bc = block
        blocks = math.prod(t.shape[:-2]) * math.ceil(t.shape[-2] / br) * math.ceil(t.shape[-1] / bc)
        return t.numel + blocks * family_of(cfg).fp8_scale_bytes
    return t.numel * {"bf16": 2, "fp32": 4, "i64": 8}[t.native]


def parameters(tensors: list[Tensor]) -> dict:
    """Totals over a census: main model, MTP modules (without HF's shared copies), and as stored on HF."""
    main = [t for t in tensors if not t.mtp]
    mtp = [t for t in tensors if t.mtp and not t.copy]
    by_comp: dict[str, dict] = {}
    for t in main:
        d = by_comp.setdefault(t.component, {"params": 0, "active_params": 0.0})
        d["params"] += t.numel
        d["active_params"] += t.numel * t.reads
    return {
        "total_params": sum(t.numel for t in main),
        "active_params": round(sum(t.numel * t.reads for t in main)),
        "mtp_params": sum(t.numel for t in mtp),
        "mtp_active_params": round(sum(t.numel * t.reads for t in mtp)),
        "hf_params": sum(t.numel for t in tensors),
        "by_component": {k: {**v, "active_params": round(v["active_params"])} for k, v in by_comp.items()},
    }


def _split(weights: list[float], n: int) -> list[range]:
    """Contiguous ranges of layers with about equal weight bytes each (pipeline stages)."""
    cum = list(accumulate(weights))
    cuts = [0]
    for k in range(1, n):
        nearest = min(range(len(cum)), key=lambda j: abs(cum[j] - cum[-1] * k / n)) + 1
        cuts.append(min(max(nearest, cuts[-1] + 1), len(weights) - (n - k)))
    return [range(a, b) for a, b in zip(cuts, cuts[1:] + [len(weights)])]


def _groups(kept: list[Tensor], n_layers: int) -> tuple[list[list[Tensor]], list[Tensor], list[Tensor]]:
    """Tensors per decoder layer (MTP modules last), plus those that sit before and after the stack."""
    per_layer: list[list[Tensor]] = [[] for _ in range(n_layers)]
    for t in kept:
        if t.layer is not None:
            per_layer[t.layer].append(t)
    first = [t for t in kept if t.layer is None and t.component == "embedding"]
    last = [t for t in kept if t.layer is None and t.component != "embedding"]
    return per_layer, first, last


def _ranks(cfg: ModelConfig, kept: list[Tensor], n_layers: int, nbytes, ctx: int, b: int, n: int, parallel: str):
    """Per-machine weights, cache and bytes read per token for n machines (n == 1: the whole model)."""
    per_layer, first, last = _groups(kept, n_layers)
    L = cfg.num_hidden_layers

    def share(ts: list[Tensor], layers: range, expert_frac: float = 1.0) -> dict:
        frac = [expert_frac if t.component == "routed_experts" else 1.0 for t in ts]
        cache = [_layer_cache(cfg, i, b) for i in layers]
        weights = sum(nbytes(t) * f for t, f in zip(ts, frac))
        return {
            "layers": [layers.start, layers.stop],
            "weight_bytes": round(weights),
            "resident_bytes": round(weights + sum(fx + per * ctx for per, fx, _ in cache)),
            "bytes_per_token": round(sum(nbytes(t) * t.reads * f for t, f in zip(ts, frac) if not t.mtp)
                                     + sum(_layer_cache_reads(cfg, i, ctx, b) for i in layers if i < L)),
        }

    if parallel == "expert" or n == 1:
        everything = first + [t for ts in per_layer for t in ts] + last
        return [share(everything, range(n_layers), 1 / n) for _ in range(n)]
    if n > L:
        raise ConfigError(f"--machines {n}: more pipeline stages than layers (num_hidden_layers = {L})")
    stages = _split([sum(nbytes(t) for t in ts) for ts in per_layer[:L]], n)
    stages[-1] = range(stages[-1].start, n_layers)  # MTP modules run after the last layer
    return [share((first if k == 0 else []) + [t for i in r for t in per_layer[i]] + (last if k == n - 1 else []), r)
            for k, r in enumerate(stages)]


def _fit(m: machines_mod.Machine, ranks: list[dict], parallel: str) -> dict:
    worst = max(r["resident_bytes"] for r in ranks)
    # Pipeline stages run one after another for a single sequence; expert-parallel ranks read concurrently.
    per_token = sum(r["bytes_per_token"] for r in ranks) if parallel == "pipeline" else max(
        r["bytes_per_token"] for r in ranks)
    return {
        "machine": m.name, "chip": m.chip, "ram_bytes": m.ram_bytes, "bandwidth_gbs": m.bandwidth_gbs,
        "wired_limit_bytes": m.wired_limit_bytes, "raised_limit_bytes": m.raised_limit_bytes,
        "fits": worst <= m.wired_limit_bytes, "fits_raised_limit": worst <= m.raised_limit_bytes,
        "roofline_tps": m.bandwidth / per_token,
    }


def _engram(cfg: ModelConfig, tables: list[Tensor], nbytes) -> dict:
    """V4.1's Engram tables: on SSD, read by position (rows per token, their bytes), never resident."""
    return {"on_disk_bytes": round(sum(map(nbytes, tables))), "tables": len(tables),
            "layers": list(cfg.engram_layer_ids or []), "rows": sum(t.shape[0] for t in tables),
            "rows_per_token": round(sum(t.numel * t.reads for t in tables) / cfg.engram_head_dim),
            "bytes_per_token": round(sum(nbytes(t) * t.reads for t in tables)), "resident": False}


def estimate(config: Union[str, Path, dict, ModelConfig], *, q_bits: int = 4, q_group_size: int = 64,
             recipe: str = "uniform", machine: Optional[str] = None, machines: int = 1,
             parallel: str = "pipeline", context: int = 4096, drop_mtp: bool = False,
             cache_dtype_bytes: int = 2) -> dict:
    """Everything `mlxseek estimate` reports, as one JSON-ready dict (see the module docstring)."""
    cfg, source = resolve_config(config)
    tensors = census(cfg)
    nbytes = bytes_fn(cfg, recipe, q_bits, q_group_size)
    if parallel not in PARALLEL:
        raise ConfigError(f"--parallel {parallel!r}: choose one of {', '.join(PARALLEL)}")
    if machines < 1 or context < 0:
        raise ConfigError(f"--machines {machines} / --context {context}: need machines >= 1 and context >= 0")
    if parallel == "expert" and (cfg.n_routed_experts or 0) % machines:
        raise ConfigError(f"--machines {machines}: expert parallel needs it to divide n_routed_experts "
                          f"({cfg.n_routed_experts}) in {source}")
    # V4.1's Engram tables stay on disk (read by position): sized apart, never counted as resident.
    tables = [t for t in tensors if t.component == "engram_table"]
    kept = [t for t in tensors if not t.hf_only and not (drop_mtp and t.mtp) and t.component != "engram_table"]
    n_layers = 1 + max(t.layer for t in kept if t.layer is not None)
    b = cache_dtype_bytes
    whole = _ranks(cfg, kept, n_layers, nbytes, context, b, 1, parallel)[0]
    cache = [_layer_cache(cfg, i, b) for i in range(n_layers)]
    main_layers = range(cfg.num_hidden_layers)
    out = {
        "config": source, "model_type": cfg.model_type, **parameters(tensors),
        "drafter": "DSpark" if cfg.has_dspark else "MTP",
        "recipe": recipe, "q_bits": q_bits, "q_group_size": q_group_size, "with_mtp": not drop_mtp,
        "size_bytes": whole["weight_bytes"],
        "bits_per_weight": 8 * whole["weight_bytes"] / sum(t.numel for t in kept),
        "weight_bytes_per_token": round(sum(nbytes(t) * t.reads for t in kept if not t.mtp)),
        "kv_bytes_per_token": sum(cache[i][0] for i in main_layers),
        "kv_full_bytes_per_token": sum(cache[i][2] for i in main_layers),
        "kv_fixed_bytes": sum(cache[i][1] for i in main_layers),
        "context": context, "kv_bytes_at_context": whole["resident_bytes"] - whole["weight_bytes"],
        "bytes_per_token": whole["bytes_per_token"], "resident_bytes": whole["resident_bytes"],
        "fits": None, "roofline_tps": None, "machine": None, "parallel": None,
    }
    out["drafter_bytes"] = round(sum(nbytes(t) for t in kept if t.mtp))
    # What a release may ship that mlxseek neither runs nor sizes (V4.1: the vision tower and its aligner).
    out["not_counted"] = ["vision tower (vision_config)"] if cfg.extra.get("vision_config") is not None else []
    if tables:
        out["engram"] = _engram(cfg, tables, nbytes)
        out["shipped_bytes"] = out["size_bytes"] + out["engram"]["on_disk_bytes"]
    for comp, d in out["by_component"].items():
        ts = [t for t in (tables if comp == "engram_table" else kept) if t.component == comp and not t.mtp]
        d["bytes"], d["bytes_per_token"] = round(sum(map(nbytes, ts))), round(sum(nbytes(t) * t.reads for t in ts))
    if machines > 1:
        ranks = _ranks(cfg, kept, n_layers, nbytes, context, b, machines, parallel)
        out["parallel"] = {"kind": parallel, "machines": machines, "ranks": ranks}
    if machine is not None:
        fit = _fit(machines_mod.machine(machine), out["parallel"]["ranks"] if machines > 1 else [whole], parallel)
        out.update(machine=fit, fits=fit["fits"], roofline_tps=fit["roofline_tps"])
    else:  # no machine named: how the model does on each one, alone
        out["machines_table"] = [_fit(m, [whole], parallel) for m in machines_mod.MACHINES.values()]
    if tables:  # the tables never count as resident, so every fit above is one with Engram on SSD
        fits = [out["machine"]] if out["machine"] else out["machines_table"]
        out["engram"]["fits_with_tables_on_ssd"] = [f["machine"] for f in fits if f["fits"]]
    return out
