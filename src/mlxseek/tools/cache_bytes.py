"""KV cache bytes per layer for `estimate`, by the family's cache layout (`Family.sizing`): what one cached
token costs, what is held whatever the context (V4's windows), and what one decoded token reads."""

from __future__ import annotations

from typing import Callable

from ..config import ModelConfig
from ..models.families import family_of


def _mla_cache(cfg: ModelConfig, i: int, b: int, dsa: bool = False) -> tuple[float, int, int]:
    # MLA caches the compressed latent plus the shared rope key: kv_lora_rank + qk_rope_head_dim values.
    # A per-head cache would hold K (nope + rope) and V for every head.
    latent = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * b
    full = cfg.num_attention_heads * (cfg.q_head_dim + cfg.v_head_dim) * b
    return latent + (cfg.index_head_dim * b if dsa else 0), 0, full  # DSA: plus the indexer keys


def _v4_cache(cfg: ModelConfig, i: int, b: int) -> tuple[float, int, int]:
    # V4: one shared KV head of head_dim. Every layer keeps a sliding window of recent tokens; a ratio-r layer
    # also keeps one compressed entry per r tokens, and ratio-4 layers one indexer key per 4 tokens.
    hd, r = cfg.head_dim, cfg.compress_ratio(i)
    per = (hd / r + (cfg.index_head_dim / r if r == 4 else 0)) * b if r else 0.0
    return per, cfg.sliding_window * hd * b, hd * b


def _mla_reads(cfg: ModelConfig, i: int, n: int, b: int, dsa: bool = False) -> float:
    latent = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * b
    if dsa:  # DSA attends to index_topk tokens, scored over all n
        return min(n, cfg.index_topk) * latent + n * cfg.index_head_dim * b
    return n * latent


def _v4_reads(cfg: ModelConfig, i: int, n: int, b: int) -> float:
    hd, r = cfg.head_dim, cfg.compress_ratio(i)
    entries = n // r if r else 0
    sparse = min(entries, cfg.index_topk) * hd + entries * cfg.index_head_dim if r == 4 else entries * hd
    return (min(n, cfg.sliding_window) * hd + sparse) * b


def layer_cache(cfg: ModelConfig, i: int, b: int) -> tuple[float, int, int]:
    """(bytes per cached token, context-independent bytes, bytes per token without KV compression: a per-head
    K/V cache for MLA, the uncompressed shared KV head for V4), by the family's cache layout."""
    return _CACHE_RULES[family_of(cfg).sizing][0](cfg, i, b)


def layer_cache_reads(cfg: ModelConfig, i: int, n: int, b: int) -> float:
    """Cache bytes one decoded token reads in layer i at context n (absorbed MLA reads the whole latent)."""
    return _CACHE_RULES[family_of(cfg).sizing][1](cfg, i, n, b)


def _csa2_cache(cfg: ModelConfig, i: int, b: int) -> tuple[float, int, int]:
    """V4.1: every layer a window; only KV sources hold compressed entries (and index keys where they index):
    the layers after a source reuse its entries, so they cache nothing per token."""
    hd, r = cfg.head_dim, cfg.compress_ratios[i]
    per = 0.0
    if r and i in (cfg.kv_source_layer_ids or []):
        per = (hd + (cfg.index_head_dim if i in (cfg.index_source_layer_ids or []) else 0)) / r * b
    return per, cfg.sliding_window * hd * b, hd * b


def _csa2_reads(cfg: ModelConfig, i: int, n: int, b: int) -> float:
    """V4.1 layer i at context n: its window, the top-k entries of its source, and (index sources) every key."""
    hd, r = cfg.head_dim, cfg.compress_ratios[i]
    sources = [j for j in cfg.kv_source_layer_ids or [] if j <= i and cfg.compress_ratios[j]]
    entries = n // cfg.compress_ratios[sources[-1]] if r and sources else 0
    keys = entries * cfg.index_head_dim if i in (cfg.index_source_layer_ids or []) else 0
    return (min(n, cfg.sliding_window) * hd + min(entries, cfg.index_topk) * hd + keys) * b


# Family.sizing -> (per-layer cache bytes, per-layer cache reads at a context)
_CACHE_RULES: dict[str, tuple[Callable, Callable]] = {
    "mla": (_mla_cache, _mla_reads),
    "dsa": (lambda cfg, i, b: _mla_cache(cfg, i, b, dsa=True), lambda cfg, i, n, b: _mla_reads(cfg, i, n, b, dsa=True)),
    "v4": (_v4_cache, _v4_reads),
    "csa2": (_csa2_cache, _csa2_reads),
}
