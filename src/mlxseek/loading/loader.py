"""`mlxseek.load`: a checkpoint folder -> (model, tokenizer), strictly.

Accepts an official Hugging Face DeepSeek folder (bf16/fp16/fp32 or FP8 128x128 blocks), a folder
written by `mlx_lm.convert` (mlx-community layout, quantized or not), or `mlxseek convert` output.
Every checkpoint key is used exactly once and every parameter is filled; mismatches are named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from ..backend import BackendPolicy, backend_policy, resolve_policy
from ..checkpoint.consistency import check_counts
from ..checkpoint.format import check_format
from ..checkpoint.keymap import DRAFTER_PREFIXES, Materializer, Plan, Target, build_plan, with_drafter_stages
from ..checkpoint.precision import keep_fp32
from ..checkpoint.quant_record import quant_params
from ..checkpoint.store import WeightStore
from ..checkpoint.strict import check_against_model, check_dtypes
from ..config import ModelConfig
from ..errors import CheckpointError, WeightMismatchError
from ..models import CausalLM, KernelLayout, build_checked, build_model, family_of
from .engram import attach_engram
from .placement import placement_for

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def default_dtype() -> mx.Dtype:
    """Compute dtype for this device (the backend policy's): float32 on MLX's CPU backend, whose quantized
    matmuls run ~8x faster with float32 activations; bfloat16 on a GPU (Metal or CUDA)."""
    return backend_policy().dtype


def resolve_dtype(dtype: Any, policy: BackendPolicy | None = None) -> mx.Dtype:
    if dtype is None:
        return (policy or backend_policy()).dtype
    if isinstance(dtype, mx.Dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or None (per device), got {dtype!r}")
    return _DTYPES[dtype]


def _quantize(model: CausalLM, cfg: ModelConfig, produced: set[str]) -> None:
    """Quantize exactly the modules the checkpoint stores quantized, with the recorded parameters."""
    if not cfg.quantization:
        return

    def predicate(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in produced:
            return False
        return quant_params(cfg, path) or False

    nn.quantize(model, class_predicate=predicate)
    from ..cpu.kmajor import stored_kmajor_skeleton

    stored_kmajor_skeleton(model, cfg, lambda p: f"{p}.scales" in produced)


def load_model(path: str | Path, *, dtype: Any = None, with_mtp: bool = True, cpu_layout: Any = None,
               group: Any = None, parallel: str = "pipeline", expert_memory_gb: Optional[float] = None,
               backend: Any = None, engram_memory_gb: Optional[float] = None) -> CausalLM:
    """Build the model described by `path/config.json` and fill it from the folder's shards.
    cpu_layout, group, parallel, expert_memory_gb, backend, engram_memory_gb: see `load`."""
    from ..cpu import blas

    blas.check()  # an MLXSEEK_BLAS that failed at import is reported here, at first use
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass a local checkpoint folder (HF or converted)")
    policy = resolve_policy(backend)
    dt = resolve_dtype(dtype, policy)
    policy = policy.replace(compute_dtype=_dtype_name(dt))
    # An explicit dtype is taken as it is (e.g. bf16 weights to quantize); the policy's own choice falls back.
    keep = _precision_rule(policy) if dtype is None else keep_fp32
    cfg, store, plan = _open(folder)
    if not with_mtp or not plan.has_mtp:
        # mlx-lm's converter drops the MTP layer; a folder without it loads without `model.mtp`.
        plan.dropped.extend(k for k in plan.source_of if k.startswith(DRAFTER_PREFIXES))
        plan.targets = [t for t in plan.targets if not t.outputs[0].startswith(DRAFTER_PREFIXES)]
    placement = placement_for(cfg, store, plan, group=group, parallel=parallel, expert_memory_gb=expert_memory_gb,
                              dtype=dt, keep_fp32=keep)
    if placement:  # one rank's share, or everything but the paged experts: read only what stays resident
        store, plan = placement.restrict(store, plan)
    mat = Materializer(store, cfg, plan, dtype=dt, keep_fp32=keep)
    lazy = {}
    for t in plan.targets:
        lazy.update(_materialize(mat, t, store.folder))
    dropped = set(plan.dropped)  # with_mtp=False drops the MTP's FP8 scales along with its weights
    # V3 `*_scale_inv`, V4 `*.scale`
    scales = {s for k, s in plan.source_of.items() if k.endswith("_scale_inv") and k not in dropped}
    unused_scales = sorted(scales - mat.used_scales)
    if unused_scales:
        raise WeightMismatchError(f"{store.folder}: scale tensors with no float8 weight: {', '.join(unused_scales[:10])}")
    model = _build_strict(placement.build if placement else build_model, cfg, folder, lazy, plan.source_of,
                          with_mtp=with_mtp and plan.has_mtp)
    _load_in_batches(model, lazy, store)
    if cfg.engram_layer_ids:
        attach_engram(model, cfg, store, engram_memory_gb=engram_memory_gb)
    # Drop every handle on the checkpoint's arrays (the store caches what it read) before any re-layout,
    # so the old layout is freed module by module instead of living until load() returns.
    del lazy, mat, store
    _choose_layout(model, cpu_layout, policy)
    if placement:
        placement.finish(model)
    _apply_cache_read(model, policy)
    model.backend = policy.replace(weight_layout="kmajor" if model.kernel_layout != KernelLayout.CHECKPOINT
                                   else "checkpoint")
    model.eval()
    return model


def _materialize(mat: Materializer, t: Target, folder: Path) -> dict[str, mx.array]:
    """One target's lazy arrays; a reshape or stack of stored shapes that config.json contradicts (heads,
    head dims, expert shapes) is a named mismatch, not MLX's ValueError."""
    try:
        return mat.materialize(t)
    except (ValueError, OverflowError, RuntimeError) as e:  # MLX's shape errors (RuntimeError: int32 casts)
        shapes = ", ".join(f"{mat.plan.source_of[s]} {tuple(mat.store.shape(mat.plan.source_of[s]))}"
                           for s in t.sources[:3])
        raise WeightMismatchError(f"{folder}: checkpoint does not match config.json: cannot build "
                                  f"{', '.join(t.outputs)} from {shapes} ({e}); check the head counts and "
                                  "dimensions in config.json") from None


def _open(folder: Path) -> tuple[ModelConfig, WeightStore, Plan]:
    """config.json (types and ranges) and its format version, every shard header, and the counts config.json
    claims against the stored keys: all checked before anything is built or read."""
    cfg = ModelConfig.from_file(folder)
    check_format(cfg, folder)
    store = WeightStore(folder)
    plan = build_plan(store.keys(), cfg, rename=family_of(cfg).key_rename(cfg))
    cfg = with_drafter_stages(cfg, plan)
    check_counts(cfg, plan, store, folder)  # before anything is built: sizes come from the checkpoint
    if plan.quantization:  # weights the key map imports packed (V4 FP4 experts as mxfp4), recorded per path
        cfg = cfg.replace(quantization={**(cfg.quantization or {}), **plan.quantization})
    return cfg, store, plan


def _build_strict(build, cfg: ModelConfig, folder: Path, lazy: dict[str, mx.array], source_of: dict,
                  **kw) -> CausalLM:
    """The lazy skeleton, quantized like the checkpoint, then strict: every parameter produced once with its
    shape and a matching kind of dtype."""
    produced = set(lazy)
    model = build_checked(build, cfg, folder, prepare=lambda m: _quantize(m, cfg, produced), **kw)
    check_against_model({k: tuple(v.shape) for k, v in lazy.items()}, model, folder, source_of)
    check_dtypes(lazy, model, folder, source_of)
    return model


def check_checkpoint(path: str | Path) -> ModelConfig:
    """Everything `load_model` checks before reading a weight: config.json's types and ranges, the format
    version, every shard header, the counts config.json claims, and every parameter's name and shape
    (the model is built lazily: nothing is allocated or read). Returns the config."""
    folder = Path(path)
    cfg, store, plan = _open(folder)
    mat = Materializer(store, cfg, plan, keep_fp32=keep_fp32)
    lazy = {k: v for t in plan.targets for k, v in _materialize(mat, t, folder).items()}
    _build_strict(build_model, cfg, folder, lazy, plan.source_of, with_mtp=plan.has_mtp)
    return cfg


def _dtype_name(dt: mx.Dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dt)


def _precision_rule(policy: BackendPolicy):
    """What stays float32: the precision policy's parameters, plus float routed experts when the policy
    computes in half precision on MLX's CPU backend (its gather_mm is float32-only; the experts cast
    their output back to the compute dtype)."""
    if not policy.float32_float_experts:
        return keep_fp32
    return lambda name: keep_fp32(name) or (".switch_mlp." in name and name.endswith("_proj.weight"))


def _apply_cache_read(model, policy: BackendPolicy) -> None:
    """Tell every attention that reads a quantized latent cache how to read it (policy's choice), unless
    the module was already told."""
    for _, m in model.named_modules():
        if getattr(m, "quantized_cache_read", None) == "auto":
            m.quantized_cache_read = policy.quantized_cache_read


def _choose_layout(model, cpu_layout: Any, policy: BackendPolicy | None = None) -> None:
    """Record (and where the policy says so, by default on MLX's CPU backend, apply) the quantized-weight
    layout. `cpu_layout` True/False overrides the policy."""
    if cpu_layout not in (None, True, False):
        raise ValueError(f"cpu_layout must be None (auto), True or False, got {cpu_layout!r}")
    on_cpu = (policy or backend_policy()).weight_layout == "kmajor"
    from ..cpu.kmajor import (
        KMajorQuantizedLinear,
        KMajorQuantizedSwitchLinear,
        apply_cpu_layout,
    )

    stored = any(isinstance(m, (KMajorQuantizedLinear, KMajorQuantizedSwitchLinear)) for _, m in model.named_modules())
    model.kernel_layout = KernelLayout.KMAJOR_STORED if stored else KernelLayout.CHECKPOINT
    if cpu_layout or (cpu_layout is None and on_cpu):
        if apply_cpu_layout(model):  # the modules still in the checkpoint's layout, if any
            model.kernel_layout = KernelLayout.KMAJOR_STORED_AND_RELAID if stored else KernelLayout.KMAJOR_RELAID


def _load_in_batches(model: CausalLM, lazy: dict[str, mx.array], store) -> None:
    """Evaluate one decoder layer's weights at a time, so FP8 dequant and expert stacking never hold
    more than one layer's temporaries in memory. Releasing the store after each layer frees the source
    arrays that a dtype cast copied (bf16 scales -> float32), instead of keeping them all to the end."""
    groups: dict[str, list] = {}
    for k, v in lazy.items():
        head = ".".join(k.split(".")[:3]) if k.startswith("model.layers.") else k.split(".")[0]
        groups.setdefault(head, []).append((k, v))
    for items in groups.values():
        mx.eval([v for _, v in items])
        model.load_weights(items, strict=False)
        store.release()


def load_tokenizer(path: str | Path):
    """mlx-lm's TokenizerWrapper (tokenizers/transformers underneath, streaming detokenizer included),
    or None when the folder ships no tokenizer files (e.g. the tiny test checkpoints).
    DeepSeek's V3/R1 chat format is used when the tokenizer config has no chat template."""
    from .tokenizer import check_vocabulary
    from .tokenizer import load_tokenizer as load_tok

    folder = Path(path)
    cfg = ModelConfig.from_file(folder)
    tok = load_tok(folder, eos_token_ids=cfg.eos_token_ids or None)
    if tok is not None:
        check_vocabulary(tok._tokenizer, cfg.vocab_size, folder)
    return tok


def load(
    path: str | Path, *, dtype: Any = None, with_mtp: bool = True, tokenizer: bool = True, cpu_layout: Any = None,
    group: Any = None, parallel: str = "pipeline", expert_memory_gb: Optional[float] = None, backend: Any = None,
    engram_memory_gb: Optional[float] = None,
):
    """Load a DeepSeek checkpoint folder. Returns (model, tokenizer); tokenizer is None when the folder
    has no tokenizer files or `tokenizer=False`.

    backend: the per-device choices (`mlxseek.backend`): None = this device's (cpu, or gpu for Metal and
    CUDA alike), "cpu" / "gpu" = that kind's defaults, or a `BackendPolicy` with choices overridden
    (`mlxseek.backend.backend_policy(compute_dtype=...)`). The policy in use is `model.backend`.
    dtype: compute dtype ("float32", "bfloat16", "float16" or an mx.Dtype); None = the backend policy's
    (float32 on MLX's CPU backend, bfloat16 on a GPU).
    cpu_layout: for quantized checkpoints, re-lay weights once into MLX CPU's fast quantized layout
    (K-major, 8-bit; see `mlxseek.cpu.kmajor`). None = the backend policy's (on the CPU backend only);
    True / False = always / never.
    A folder written by `mlxseek convert --layout kmajor` already stores that layout at its own bits
    (no re-layout, no extra memory). The layout in use is `model.kernel_layout`.
    group: an `mx.distributed.Group` (e.g. `mlxseek.parallel.rank.join().group`); with more than one rank, this
    rank loads and runs only its share, `parallel="pipeline"` (contiguous layers) or `"expert"` (a slice
    of every MoE layer's routed experts). See `mlxseek.parallel.distributed`.
    expert_memory_gb: keep at most this many GB of routed experts resident and read the others from the
    checkpoint on demand (LRU; outputs unchanged). `model.pager.stats()` has hits and bytes read.
    engram_memory_gb: DeepSeek-V4.1's Engram tables are never loaded: rows are read from their shards by
    position into a hot-row LRU of at most this many GB (default 1.0; logits identical to resident
    tables). `model.engram_memory.stats` counts lookups, distinct rows and rows read.
    """
    model = load_model(path, dtype=dtype, with_mtp=with_mtp, cpu_layout=cpu_layout, group=group,
                       parallel=parallel, expert_memory_gb=expert_memory_gb, backend=backend,
                       engram_memory_gb=engram_memory_gb)
    return model, (load_tokenizer(path) if tokenizer else None)
