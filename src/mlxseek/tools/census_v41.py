"""The tensor census of a DeepSeek-V4.1 config (see `census`): the V4 attention without per-layer compressors,
a compressor only on `kv_source_layer_ids`, an indexer only on `index_source_layer_ids` (its `wk`/`k_norm` where
the layer is also a KV source), sqrtsoftplus MoE with `bias_vl`, two mHC sites per layer and no hc_head, and
the Engram modules with their tables (component "engram_table": FP8 rows with one E8M0 scale per 32, read by
position from disk, `reads` = rows per token / rows). The vision tower and the DSpark drafter are not counted.
Provenance: transformers' V4.1 port (module list and which tensors ship in F32) and the issue's V4.1-Flash
description (FP8 32x32 blocks, FP4 experts)."""

from __future__ import annotations

from ..config import ModelConfig
from .census import Tensor, _at, _hyper, _moe, _norm, _t


def census_v41(cfg: ModelConfig) -> list[Tensor]:
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    out = [_t("model.embed_tokens", "embedding", (V, D), kind="embedding", native="bf16", reads=1 / V)]
    for i in range(L):
        out += _at(_layer(cfg, i), f"model.layers.{i}.", layer=i)
    return out + [_norm("model.norm", D), _t("lm_head", "lm_head", (V, D), native="bf16")]


def _layer(cfg: ModelConfig, i: int) -> list[Tensor]:
    D, H, hd, q = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank
    g, r, a, ratio = cfg.o_groups, cfg.o_lora_rank, "self_attn.", cfg.compress_ratios[i]
    out = [_t(a + "wq_a", "attention", (q, D)), _norm(a + "q_norm", q), _t(a + "wq_b", "attention", (H * hd, q)),
           _t(a + "wkv", "attention", (hd, D)), _norm(a + "kv_norm", hd),
           _t(a + "wo_a", "attention", (g * r, H * hd // g)), _t(a + "wo_b", "attention", (D, g * r)),
           _t(a + "attn_sink", "attention", (H,), kind="float", native="fp32")]
    kv_source, index_source = i in (cfg.kv_source_layer_ids or []), i in (cfg.index_source_layer_ids or [])
    if ratio and kv_source:
        p = a + "compressor."
        out += [_t(p + "wkv", "compressor", (hd, D), native="bf16"), _norm(p + "norm", hd)]
        if ratio > 1:
            out.append(_t(p + "wgate", "compressor", (hd, D), native="bf16"))
    if ratio and index_source:
        nh, ihd, p = cfg.index_n_heads, cfg.index_head_dim, a + "indexer."
        out += [_t(p + "wq_b", "indexer", (nh * ihd, q)), _t(p + "weights_proj", "indexer", (nh, D), native="bf16")]
        if kv_source:
            out += [_t(p + "wk", "indexer", (ihd, hd), native="bf16"), _norm(p + "k_norm", ihd)]
    out += _moe(cfg, i) + [_t("mlp.gate.bias_vl", "router", (cfg.n_routed_experts,), kind="float", native="fp32")]
    if i in (cfg.engram_layer_ids or []):
        out += _engram(cfg, (cfg.engram_layer_ids or []).index(i))
    return out + [_norm("input_layernorm", D), _norm("post_attention_layernorm", D)] + _hyper(cfg, "attn_hc") \
        + _hyper(cfg, "ffn_hc")


def _engram(cfg: ModelConfig, j: int) -> list[Tensor]:
    D, n, d = cfg.hidden_size, cfg.hc_mult, cfg.engram_head_dim
    cols = (cfg.engram_max_ngram_size - 1) * cfg.engram_n_heads
    rows = (cfg.engram_num_embeddings or [0])[j]
    return [_t("engram.wkv", "engram", (D * (n + 1), cols * d)),
            _t("engram.q_weight", "engram", (n, D), kind="float", native="bf16"),
            _t("engram.k_weight", "engram", (n, D), kind="float", native="bf16"),
            _t("engram.embed", "engram_table", (rows, d), kind="table", native="fp8", reads=cols / max(rows, 1))]
