"""A tiny DeepSeek-V4.1 for tests: the Flash schedule in miniature (window-only layers, ratio-2 KV source and
reuse layers, ratio-1 source, index sources reusing keys, the two-level top-k) and random weights shared
with mlx-lm's `deepseek_v41` (an independent reference on identical weights)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxseek.config import ModelConfig
from mlxseek.models.deepseek_v41 import V41Model

# 10 layers: [0, 1] window only, 2 a ratio-2 KV + index source, 3 reuses 2, 4 re-indexes on 2's keys,
# 5 a ratio-1 KV + index source and the candidate source (two-level top-k), 6..9 reuse / re-index on 5.
TINY = {
    "model_type": "deepseek_v41", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 10,
    "num_attention_heads": 4, "head_dim": 64, "q_lora_rank": 32, "qk_rope_head_dim": 16, "o_groups": 2,
    "o_lora_rank": 16, "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_shared_experts": 1, "routed_scaling_factor": 1.5, "swiglu_limit": 10.0, "rms_norm_eps": 1e-20,
    "sliding_window": 8, "compress_ratios": [0, 0, 2, 2, 2, 1, 1, 1, 1, 1],
    "kv_source_layer_ids": [2, 5], "index_source_layer_ids": [2, 4, 5, 7, 9], "candidate_source_layer_id": 5,
    "candidate_topk_blocks": 3, "candidate_block_size": 4, "index_n_heads": 2, "index_head_dim": 32,
    "index_topk": 6, "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32,
                     "beta_slow": 1},
    "max_position_embeddings": 1024, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
}


def mlx_lm_model(cfg: dict = TINY, seed: int = 0):
    """mlx-lm's V4.1 on random weights (every parameter random: zero-initialised ones would hide mistakes)."""
    from mlx_lm.models import deepseek_v41 as ref

    args = ref.ModelArgs.from_dict({**cfg, "compress_ratios": tuple(cfg["compress_ratios"])})
    model = ref.Model(args)
    rng = np.random.default_rng(seed)
    params = []
    for name, p in tree_flatten(model.parameters()):
        scale = 0.5 if name.endswith(("norm.weight", "layernorm.weight")) else 0.1
        v = rng.normal(0, scale, p.shape).astype(np.float32)
        if name.endswith(("norm.weight", "layernorm.weight")):
            v = 1.0 + v
        if name.endswith(".scale"):  # mHC logit scales
            v = 1.0 + v
        params.append((name, mx.array(v)))
    model.load_weights(params)
    return model


# A V4.1 DSpark drafter in miniature: the last three layers as targets, the drafter's own (smaller) MoE.
DSPARK = {"dspark_target_layer_ids": [7, 8, 9], "dspark_block_size": 5, "dspark_markov_rank": 8,
          "dspark_noise_token_id": 3, "dspark_n_routed_experts": 4, "dspark_num_experts_per_tok": 3}


def ours_from(ref_model, cfg: dict = TINY, *, stages: int = 0) -> V41Model:
    """Our model with the reference's weights (the names differ only where the layouts do); `stages` > 0
    adds a random DSpark drafter (cfg must carry the dspark_* keys, as DSPARK)."""
    mcfg = ModelConfig.from_dict(cfg)
    model = V41Model(mcfg.replace(dspark_stages=stages) if stages else mcfg)
    weights = []
    for name, p in tree_flatten(ref_model.parameters()):
        name = name.replace(".mlp.experts.switch_mlp.", ".mlp.switch_mlp.")
        if name.endswith("o_a_proj.weight"):
            p = p.reshape(-1, p.shape[-1])  # (G, R, in) -> the checkpoint's (G*R, in)
        weights.append((name, p))
    # Parameters mlx-lm has no counterpart for (Engram's wkv, q_weight, k_weight): random too, seeded.
    have, rng = {n for n, _ in weights}, np.random.default_rng(7)
    for name, p in tree_flatten(model.parameters()):
        if name not in have:
            v = rng.normal(1.0 if name.endswith("_weight") else 0.0, 0.3 if name.endswith("_weight") else 0.05, p.shape)
            weights.append((name, mx.array(v.astype(np.float32))))
    model.load_weights(weights, strict=True)
    return model
