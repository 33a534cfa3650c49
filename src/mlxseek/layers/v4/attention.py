"""DeepSeek-V4 attention (DeepSeek-V4 report section 2.3): shared-KV multi-query attention over a sliding
window, plus, on compressed layers, compressed KV entries (HCA: all complete ones; CSA: those the
lightning indexer picks), with per-head attention sinks and a grouped low-rank output projection.

- One KV head of head_dim serves as both key and value; RoPE covers its trailing qk_rope_head_dim
  channels, so the output's rotary part is rotated back at the query position (relative positions).
- Queries: low-rank (q_a -> RMSNorm -> q_b), then an unweighted RMSNorm per head.
- Sinks: one learned logit per head joins every softmax and absorbs probability mass (gpt-oss style).
- Window: the query at position t sees keys t - sliding_window < p <= t.

Shapes: B batch, L queries, S window keys, T compressed entries, H heads, d head_dim, G o_groups.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..norms import RMSNorm
from .compressor import Compressor
from .grouped_linear import GroupedLinear
from .indexer import V4Indexer, complete_windows
from .mhc import rms_unweighted
from .partial_rope import Offset, positions, rope_for_layer


def window_mask(offset: int, L: int, start: int, S: int, window: int) -> mx.array:
    """(L, S) bool: the query at offset + i sees the key at start + j."""
    return sliding_mask(positions(offset, L), positions(start, S), window)[0]


def sliding_mask(q_pos: mx.array, k_pos: mx.array, window: int) -> mx.array:
    """q_pos (B|1, L), k_pos (B|1, S) positions (negative: an empty slot) -> (B|1, L, S) bool: the query at
    t sees the key at p when t - window < p <= t (batched rows: each against its own ring's positions)."""
    q, k = q_pos[..., :, None], k_pos[..., None, :]
    return (k <= q) & (k > q - window) & (k >= 0)


def sink_attention_reference(q, keys, mask, sinks, scale) -> mx.array:
    """Slow path: q (B, H, L, d), keys (B, 1, S, d) as K and V, mask (B|1, 1|H, L, S) bool, sinks (H,)."""
    s = (q.astype(mx.float32) * scale) @ keys.astype(mx.float32).swapaxes(-1, -2)
    s = mx.where(mask, s, -mx.inf)
    sink = mx.broadcast_to(sinks.astype(mx.float32)[None, :, None, None], (*s.shape[:-1], 1))
    p = mx.softmax(mx.concatenate([s, sink], axis=-1), axis=-1)[..., :-1]  # the sink column is dropped
    return (p @ keys.astype(mx.float32)).astype(q.dtype)


class SharedKVProjections(nn.Module):
    """The parameters V4 and V4.1 attention share: low-rank queries, the one shared KV head, the grouped
    low-rank output projection and the per-head sinks (checkpoint names `self_attn.*`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, d, D, eps = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size, cfg.rms_norm_eps
        self.num_heads, self.head_dim, self.groups = H, d, cfg.o_groups
        self.q_a_proj = nn.Linear(D, cfg.q_lora_rank, bias=False)
        self.q_a_norm = RMSNorm(cfg.q_lora_rank, eps=eps)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * d, bias=False)
        self.kv_proj = nn.Linear(D, d, bias=False)
        self.kv_norm = RMSNorm(d, eps=eps)
        self.o_a_proj = GroupedLinear(H * d // cfg.o_groups, cfg.o_lora_rank, cfg.o_groups)
        self.o_b_proj = nn.Linear(cfg.o_groups * cfg.o_lora_rank, D, bias=False)
        self.sinks = mx.zeros((H,))


class V4Attention(SharedKVProjections):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg)
        d, D, eps = cfg.head_dim, cfg.hidden_size, cfg.rms_norm_eps
        self.eps, self.sliding_window, self.scale = eps, cfg.sliding_window, d**-0.5
        self.use_reference = False  # True: naive softmax with sinks instead of mx.fast sdpa (tests)
        ratio = cfg.compress_ratio(layer_idx)
        self.rope = rope_for_layer(cfg, ratio)
        if ratio:
            self.compressor = Compressor(D, d, ratio, rope_for_layer(cfg, ratio), eps)
        if ratio == 4:  # DeepSeek-V4: the indexer sits on CSA (ratio-4) layers only
            self.indexer = V4Indexer(cfg, ratio)

    def _compressed(self, x, q_residual, offset: Offset, cache) -> tuple[mx.array, mx.array]:
        """Compressed entries (B, T, d) and which of them each query reads ((B|1, L, T) bool)."""
        entries = self.compressor(x, offset, cache.compressor if cache is not None else None)
        if "indexer" in self:
            picked = self.indexer(x, q_residual, offset, cache.indexer if cache is not None else None)
        else:
            picked = complete_windows(offset, x.shape[1], entries.shape[1], self.compressor.ratio)
        return entries, picked

    def queries(self, x: mx.array, offset: Offset) -> tuple[mx.array, mx.array]:
        """x (B, L, D) at positions offset.. -> (rotated queries (B, H, L, d), the q LoRA residual (B, L, q_lora))."""
        B, L, _ = x.shape
        q_residual = self.q_a_norm(self.q_a_proj(x))
        q = self.q_b_proj(q_residual).reshape(B, L, self.num_heads, self.head_dim)
        q = rms_unweighted(q.astype(mx.float32), self.eps).astype(x.dtype)
        return self.rope(q.transpose(0, 2, 1, 3), offset), q_residual

    def keys(self, x: mx.array, offset: Offset) -> mx.array:
        """x (B, L, D) at positions offset.. -> the shared key/value rows (B, L, d), rotated."""
        return self.rope(self.kv_norm(self.kv_proj(x)), offset)

    def attend(self, q: mx.array, keys: mx.array, mask: Optional[mx.array], offset: Offset) -> mx.array:
        """q (B, H, L, d), keys (B, 1, S, d), mask (B|1, 1, L, S) bool or None (all visible) -> (B, L, D)."""
        B, _, L, _ = q.shape
        if self.use_reference:
            full = mask if mask is not None else mx.ones((1, 1, L, keys.shape[2]), dtype=mx.bool_)
            out = sink_attention_reference(q, keys, full, self.sinks, self.scale)
        else:
            out = mx.fast.scaled_dot_product_attention(q, keys, keys, scale=self.scale, mask=mask,
                                                       sinks=self.sinks.astype(q.dtype))
        out = self.rope(out, offset, inverse=True).transpose(0, 2, 1, 3)  # (B, L, H, d)
        out = self.o_a_proj(out.reshape(B, L, self.groups, -1))  # (B, L, G, o_lora_rank)
        return self.o_b_proj(out.reshape(B, L, -1))

    def __call__(self, x: mx.array, cache: Optional[object] = None) -> mx.array:
        """x (B, L, D) -> (B, L, D); positions continue from cache.offset (0 without a cache): one int, or
        per-row offsets (B,) from a batch cache (`cache.v4_batch.BatchV4Cache`: each row's window ring and
        compressor state at its own position, one token per row, one attention pass for all rows).
        A list of solo caches (`row_caches`) is attended row by row, each row exactly as alone: the slow
        reference of the batched pass."""
        rows = getattr(cache, "row_caches", None)
        if rows is not None:
            return mx.concatenate([self(x[b: b + 1], c) for b, c in enumerate(rows)])
        B, L, _ = x.shape
        offset = cache.offset if cache is not None else 0
        q, q_residual = self.queries(x, offset)
        kv = self.keys(x, offset)  # (B, L, d)
        keys, start = cache.window.update(kv) if cache is not None else (kv, offset)
        # a solo window holds positions start.. in order; a batch ring says each slot's position (B, S)
        k_pos = start if isinstance(start, mx.array) else positions(start, keys.shape[1])
        mask = sliding_mask(positions(offset, L), k_pos, self.sliding_window)  # (B|1, L, S)
        if "compressor" in self:
            entries, picked = self._compressed(x, q_residual, offset, cache)
            keys = mx.concatenate([keys, entries], axis=1)
            n = max(mask.shape[0], picked.shape[0])
            mask = mx.concatenate([mx.broadcast_to(mask, (n, *mask.shape[1:])),
                                   mx.broadcast_to(picked, (n, *picked.shape[1:]))], axis=-1)
        return self.attend(q, keys[:, None], mask[:, None], offset)  # one KV head; the mask broadcasts over heads
