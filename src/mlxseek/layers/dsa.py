"""DeepSeek Sparse Attention (DSA, DeepSeek-V3.2): MLA in which each query attends only to the
`index_topk` keys its lightning indexer ranks highest (and, as always, only to earlier positions).

Shapes: B batch, L query tokens, S cached+new tokens, H heads, K index_topk, R kv_lora_rank,
Dn qk_nope_head_dim, Dr qk_rope_head_dim, Dv v_head_dim, D hidden.

While S <= K every key is selected and DSA is plain causal MLA. Past that, both MLA paths stay
available and equal:
- naive / absorbed over all S keys, with the top-k selection folded into the boolean mask (prefill);
- absorbed over the K gathered keys per query (decode and short verify steps): reads K instead of S
  cached latents per query, which is the point of DSA at long context.
The indexer keys live in the layer's DSACache beside the latent, so trimming rolls both back.
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx

from ..config import ModelConfig
from .indexer import LightningIndexer
from .mla import MultiHeadLatentAttention


class SparseLatentAttention(MultiHeadLatentAttention):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.indexer = LightningIndexer(cfg)

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[Any] = None) -> mx.array:
        B, L, _ = x.shape
        qr = self.q_a_layernorm(self.q_a_proj(x))  # (B, L, Rq): shared by MLA's queries and the indexer
        q = self.q_b_proj(qr).reshape(B, L, self.num_heads, self.q_head_dim).transpose(0, 2, 1, 3)
        q_nope, q_pe = q[..., : self.nope_dim], q[..., self.nope_dim :]
        kv = self.kv_a_proj_with_mqa(x)
        latent = self.kv_a_layernorm(kv[..., : self.kv_lora_rank])[:, None]  # (B, 1, L, R)
        k_pe = kv[..., self.kv_lora_rank :][:, None]  # (B, 1, L, Dr)
        offset = cache.offset if cache is not None else 0
        q_pe, k_pe = self.rope(q_pe, offset), self.rope(k_pe, offset)
        index_keys = self.indexer.keys(x, offset)  # (B, 1, L, Di)
        if cache is not None:
            latent, k_pe = cache.update_and_fetch(latent, k_pe)  # (B, 1, S, R), (B, 1, S, Dr)
            index_keys = cache.update_index_keys(index_keys)  # (B, 1, S, Di)
        S = latent.shape[2]
        if S <= self.indexer.topk:  # every key is selected: plain causal MLA
            out = self._dense(q_nope, q_pe, latent, k_pe, mask)
        else:
            ragged = mask is not None and mask.ndim == 4  # batched ragged rows: (B, 1, L, S)
            if ragged:
                mask = mask[:, 0]  # (B, L, S): one mask for all heads
            top = self.indexer.top_keys(x, qr, index_keys, offset, mask)  # (B, L, K)
            if self._use_absorbed(L, S) and L * self.indexer.topk <= S:
                # A ragged row shorter than K keys (or than L*K) picks masked columns too: keep them out.
                keep = mx.take_along_axis(mask, top, axis=-1) if ragged else None  # (B, L, K)
                out = self.gathered(q_nope, q_pe, latent, k_pe, top, keep)
            else:
                out = self._dense(q_nope, q_pe, latent, k_pe, self._sparse_mask(top, mask, S))
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def _dense(self, q_nope, q_pe, latent, k_pe, mask) -> mx.array:
        if self._use_absorbed(q_nope.shape[2], latent.shape[2]):
            return self.absorbed(q_nope, q_pe, latent, k_pe, mask)
        return self.naive(q_nope, q_pe, latent, k_pe, mask)

    @staticmethod
    def _sparse_mask(top: mx.array, mask: Optional[mx.array], S: int) -> mx.array:
        """(B, 1, L, S) boolean: True at the selected keys that the causal mask also allows."""
        B, L, _ = top.shape
        keep = mx.put_along_axis(mx.zeros((B, L, S), dtype=mx.bool_), top, mx.array(True), axis=-1)
        if mask is not None:
            keep = keep & mask
        return keep[:, None]

    def gathered(self, q_nope, q_pe, latent, k_pe, top, keep: Optional[mx.array] = None) -> mx.array:
        """Absorbed attention over each query's K selected keys; returns (B, H, L, Dv).

        Used only when L * K <= S. Then every query of a single row sees at least S - L + 1 >= K earlier
        keys, so the top-K never contains a future position and no mask is needed. Batched ragged rows
        (S is the longest row's) pass `keep` (B, L, K): which selected keys the row's mask allows."""
        B, H, L, _ = q_nope.shape
        K = top.shape[-1]
        idx = top[..., None]  # (B, L, K, 1), broadcast over the feature axis
        lat = mx.take_along_axis(latent, idx, axis=2).reshape(B * L, 1, K, -1)  # (B*L, 1, K, R)
        pe = mx.take_along_axis(k_pe, idx, axis=2).reshape(B * L, 1, K, -1)  # (B*L, 1, K, Dr)

        def per_query(t):  # (B, H, L, d) -> (B*L, H, 1, d): each query becomes its own batch row
            return t.transpose(0, 2, 1, 3).reshape(B * L, H, 1, t.shape[-1])

        m = None if keep is None else keep.reshape(B * L, 1, 1, K)  # broadcast over heads
        out = self.absorbed(per_query(q_nope), per_query(q_pe), lat, pe, m)  # (B*L, H, 1, Dv)
        return out.reshape(B, L, H, -1).transpose(0, 2, 1, 3)
