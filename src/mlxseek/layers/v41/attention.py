"""DeepSeek-V4.1 attention with CSA2 (cross-layer compressed KV): V4's shared-KV multi-query attention with
sinks, a sliding window and a grouped low-rank output projection, plus compressed entries that only the
`kv_source_layer_ids` layers compute; every later layer with a compress ratio reuses its source's entries,
and the top-k selection the last index source (`index_source_layer_ids`) published.

Differences from V4 (`layers/v4/attention.py`): q is normalised only in its low-rank part (no per-head RMS
norm after `wq_b`); window KV rows are FP8-rounded and compressed entries FP4-rounded (`fake_quant`).
`shared` carries, within one forward: compress_kv (B, T, d), index_k (B, T, di), picked (B, L, T) bool,
candidates (B, L, T) bool.
Shapes: B batch, L queries, S window keys, T compressed entries, H heads, d head_dim, G o_groups.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ...config import ModelConfig
from ..v4.attention import SharedKVProjections, window_mask
from ..v4.partial_rope import rope_for_layer
from .compressor import CSA2Compressor, append
from .fake_quant import fake_fp4, fake_fp8
from .indexer import CSA2Indexer


class CSA2Attention(SharedKVProjections):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg)
        d, D, eps = cfg.head_dim, cfg.hidden_size, cfg.rms_norm_eps
        self.window = cfg.sliding_window
        self.ratio = cfg.compress_ratios[layer_idx]
        self.fake_quant = True  # False: skip the in-forward FP8/FP4 rounding (tight comparisons only)
        # A function rounding the inputs of the projections DeepSeek ships FP8 (wq_a, wq_b, wkv, wo_b) as its
        # GEMMs do, or None; its reference runs wo_a on dequantized weights, unrounded (set_fake_quant)
        self.input_rounding = None
        self.rope = rope_for_layer(cfg, self.ratio)  # window-only layers: base theta, no YaRN
        if self.ratio and layer_idx in cfg.kv_source_layer_ids:
            self.compressor = CSA2Compressor(D, d, self.ratio, eps)
        if self.ratio and layer_idx in cfg.index_source_layer_ids:
            self.indexer = CSA2Indexer(cfg, layer_idx)

    def _publish(self, x: mx.array, offset: int, cache, shared: dict) -> None:
        """A KV source: compress this chunk's complete groups into the cache and share the running entries."""
        latent, first = self.compressor(x, offset, cache)
        if latent is not None:
            kv = self.rope(latent, first * self.ratio, stride=self.ratio)
            cache.compress_kv = append(cache.compress_kv, fake_fp4(kv, 16, e4m3_scale=True) if self.fake_quant
                                       else kv)
            if "indexer" in self:
                cache.index_k = append(cache.index_k, self.indexer.keys(latent, first, self.rope))
        shared["compress_kv"] = cache.compress_kv
        if "indexer" in self:
            shared["index_k"] = cache.index_k

    def _compressed_mask(self, x, q_residual, offset: int, cache, shared: dict):
        """(entries (B, T, d), picked (B, L, T)) this layer reads, or None before any entry exists."""
        if "compressor" in self:
            self._publish(x, offset, cache, shared)
        if "indexer" in self:
            index_k = shared.get("index_k")
            if index_k is None or index_k.shape[1] == 0:
                shared["picked"] = None
            else:
                shared["picked"], candidates = self.indexer(x, q_residual, index_k, shared.get("candidates"),
                                                            self.rope, offset)
                if self.indexer.is_candidate_source:
                    shared["candidates"] = candidates
        entries, picked = shared.get("compress_kv"), shared.get("picked")
        if entries is None or picked is None:
            return None
        return entries, picked

    def queries(self, x: mx.array, offset: int) -> tuple[mx.array, mx.array]:
        """x (B, L, D) at positions offset.. -> (rotated queries (B, H, L, d), the q LoRA residual (B, L, q_lora)).
        No per-head norm after q_b_proj: V4.1 normalises only the low-rank part."""
        B, L, _ = x.shape
        # rounded once for this wq_b and the indexer's, both FP8 in the release
        q_residual = self._round(self.q_a_norm(self.q_a_proj(self._round(x))))
        q = self.q_b_proj(q_residual).reshape(B, L, self.num_heads, self.head_dim)
        return self.rope(q.transpose(0, 2, 1, 3), offset), q_residual

    def keys(self, x: mx.array, offset: int) -> mx.array:
        """x (B, L, D) at positions offset.. -> rotated (FP8-rounded) key/value rows (B, L, d)."""
        kv = self.rope(self.kv_norm(self.kv_proj(self._round(x))), offset)
        return fake_fp8(kv, 32) if self.fake_quant else kv

    def attend(self, q: mx.array, keys: mx.array, mask: Optional[mx.array], offset: int, dtype) -> mx.array:
        """q (B, H, L, d), keys (B, S, d), mask (B, L, S) bool or None (all visible) -> (B, L, D) in `dtype`."""
        B, _, L, _ = q.shape
        keys = keys[:, None].astype(mx.float32)  # one KV head; float32: sdpa rounds scores to its input dtype
        out = mx.fast.scaled_dot_product_attention(q.astype(mx.float32), keys, keys, scale=self.head_dim**-0.5,
                                                   mask=None if mask is None else mask[:, None],
                                                   sinks=self.sinks.astype(mx.float32))
        out = self.rope(out.astype(dtype), offset, inverse=True).transpose(0, 2, 1, 3)  # (B, L, H, d)
        out = self.o_a_proj(out.reshape(B, L, self.groups, -1))
        return self.o_b_proj(self._round(out.reshape(B, L, -1)))

    def _round(self, x: mx.array) -> mx.array:
        return x if self.input_rounding is None else self.input_rounding(x)

    def __call__(self, x: mx.array, cache, shared: dict) -> mx.array:
        """x (B, L, D) -> (B, L, D); positions continue from cache.offset."""
        B, L, _ = x.shape
        offset = cache.offset
        q, q_residual = self.queries(x, offset)
        keys, start = cache.update_window(self.keys(x, offset))
        mask = mx.broadcast_to(window_mask(offset, L, start, keys.shape[1], self.window)[None],
                               (B, L, keys.shape[1]))
        if self.ratio:
            extra = self._compressed_mask(x, q_residual, offset, cache, shared)
            if extra is not None:
                keys = mx.concatenate([keys, extra[0]], axis=1)
                mask = mx.concatenate([mask, extra[1]], axis=-1)
        return self.attend(q, keys, mask, offset, x.dtype)
