"""Multi-head Latent Attention (DeepSeek-V2 paper, section 2.1).

Shapes: B batch, L query tokens, S cached+new tokens, H heads, R kv_lora_rank (latent),
Dn qk_nope_head_dim, Dr qk_rope_head_dim, Dv v_head_dim, D hidden.

The checkpoint's `kv_b_proj` (H*(Dn+Dv), R) is split once at load time into
`embed_q` (H, R, Dn): W_UK, absorbed into the query, and `unembed_out` (H, Dv, R): W_UV,
applied after attention. Only the latent (R) and the rotary key (Dr) are cached per token,
for V2 and V3 alike: (R + Dr) values instead of H * (Dn + Dr + Dv).

Two mathematically equal paths:
- naive: expand the latent into per-head K/V and run ordinary attention (cheap for long prompts);
- absorbed: attend in latent space with one shared "KV head" (cheap for decode, reads only the cache).
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.mla import (
    MultiLinear,  # (H, out, in) per-head weights with to_quantized()
)

from ..backend import backend_policy
from ..config import ModelConfig
from .norms import RMSNorm
from .rope import RotaryEmbedding, softmax_scale

ATTENTION_IMPLS = ("auto", "naive", "absorbed")


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.q_lora_rank = cfg.q_lora_rank
        self.kv_lora_rank = cfg.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.q_head_dim = cfg.q_head_dim
        self.scale = softmax_scale(self.q_head_dim, cfg.rope_scaling)
        # "auto": absorbed when few query tokens attend over a cache, naive (MHA-style) otherwise.
        self.impl = "auto"
        # How absorbed attention reads a quantized latent cache: "auto" (the backend policy's; the loader
        # sets the loaded policy's choice), "packed", "dequantize".
        self.quantized_cache_read = "auto"
        H, D, bias = self.num_heads, cfg.hidden_size, cfg.attention_bias

        if self.q_lora_rank is None:  # V2-Lite: direct query projection
            self.q_proj = nn.Linear(D, H * self.q_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, self.q_lora_rank, bias=bias)
            # DeepSeek's reference fixes the low-rank norms' eps at 1e-6, independent of rms_norm_eps.
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, eps=1e-6)
            self.q_b_proj = nn.Linear(self.q_lora_rank, H * self.q_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.kv_lora_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, eps=1e-6)
        self.embed_q = MultiLinear(self.nope_dim, self.kv_lora_rank, H)
        self.unembed_out = MultiLinear(self.kv_lora_rank, self.v_dim, H)
        self.o_proj = nn.Linear(H * self.v_dim, D, bias=bias)
        self.rope = RotaryEmbedding(self.rope_dim, cfg.rope_theta, cfg.rope_scaling)

    def _queries(self, x: mx.array) -> tuple[mx.array, mx.array]:
        B, L, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.reshape(B, L, self.num_heads, self.q_head_dim).transpose(0, 2, 1, 3)  # (B, H, L, Dn+Dr)
        return q[..., : self.nope_dim], q[..., self.nope_dim :]

    def _read_packed(self) -> bool:
        """Attend over a quantized cache with quantized_matmul on the packed bytes (Metal's fast path),
        or dequantize it first and use float attention (MLX's CPU quantized_matmul with transpose=True
        is ~7x slower than dequantize + BLAS at 8K tokens: benchmarks/speed_table.py long context)."""
        if self.quantized_cache_read != "auto":
            return self.quantized_cache_read == "packed"
        return backend_policy().packed_cache_read

    def _use_absorbed(self, L: int, S: int) -> bool:
        if self.impl != "auto":
            return self.impl == "absorbed"
        # Absorbed attention reads R+Dr per cached token but does H*R work per query; expanding K/V
        # costs H*(Dn+Dv)*R per cached token. Expand only when queries outnumber half the keys.
        return 2 * L < S or L == 1

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[Any] = None) -> mx.array:
        B, L, _ = x.shape
        q_nope, q_pe = self._queries(x)
        kv = self.kv_a_proj_with_mqa(x)
        latent = self.kv_a_layernorm(kv[..., : self.kv_lora_rank])[:, None]  # (B, 1, L, R)
        k_pe = kv[..., self.kv_lora_rank :][:, None]  # (B, 1, L, Dr)
        # An int, or (B,) per-row positions for a batched cache (its mask is then (B, 1, L, S) at any L).
        offset = cache.offset if cache is not None else 0
        q_pe, k_pe = self.rope(q_pe, offset), self.rope(k_pe, offset)
        if cache is not None:
            latent, k_pe = cache.update_and_fetch(latent, k_pe)  # (B, 1, S, R), (B, 1, S, Dr)
        absorbed = self._use_absorbed(L, k_pe.shape[2])
        if isinstance(latent, tuple):  # a quantized latent cache: (packed, scales, biases)
            if absorbed and self._read_packed():
                out = self.absorbed_quantized(q_nope, q_pe, latent, k_pe, mask, cache)
            else:
                dense = cache.dequantized(latent)  # one layer's transient (B, 1, S, R) copy
                out = (self.absorbed if absorbed else self.naive)(q_nope, q_pe, dense, k_pe, mask)
        elif absorbed:
            out = self.absorbed(q_nope, q_pe, latent, k_pe, mask)
        else:
            out = self.naive(q_nope, q_pe, latent, k_pe, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def naive(self, q_nope, q_pe, latent, k_pe, mask) -> mx.array:
        """Reference path: per-head K/V from the latent, then standard attention. Returns (B, H, L, Dv)."""
        k_nope = self.embed_q(latent, transpose=False)  # (B, H, S, Dn)
        v = self.unembed_out(latent)  # (B, H, S, Dv)
        k_pe = mx.broadcast_to(k_pe, (*k_nope.shape[:-1], self.rope_dim))
        q = mx.concatenate([q_nope, q_pe], axis=-1)
        k = mx.concatenate([k_nope, k_pe], axis=-1)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)

    def absorbed(self, q_nope, q_pe, latent, k_pe, mask) -> mx.array:
        """Latent-space attention: one shared KV "head" of width R; returns (B, H, L, Dv)."""
        B, H, L, _ = q_nope.shape
        # One KV head, so the heads fold into the query rows: (B, H, L, .) -> (B, 1, H*L, .). The matmuls
        # become one (H*L, R) x (R, S) product instead of H row-vector products (4-5x faster on CPU at 8K).
        q_lat = self.embed_q(q_nope).reshape(B, 1, H * L, -1)  # (B, 1, H*L, R)
        # The rotary part of the score enters sdpa as an additive bias, so K and V are both the latent.
        pe_scores = self._pe_scores(q_pe, k_pe, mask)  # (B, 1, H*L, S)
        out = mx.fast.scaled_dot_product_attention(q_lat, latent, latent, scale=self.scale, mask=pe_scores)
        return self.unembed_out(out.reshape(B, H, L, -1))  # (B, H, L, Dv)

    def _pe_scores(self, q_pe, k_pe, mask) -> mx.array:
        """Scaled rotary scores with the mask applied, heads folded: (B, 1, H*L, S)."""
        B, H, L, _ = q_pe.shape
        scores = (q_pe.reshape(B, 1, H * L, -1) * self.scale) @ k_pe.swapaxes(-1, -2)
        if mask is None:
            return scores
        scores = scores.reshape(B, H, L, -1)  # a free view: the mask broadcasts over heads here
        scores = mx.where(mask, scores, mx.array(-float("inf"), scores.dtype))
        return scores.reshape(B, 1, H * L, -1)

    def absorbed_quantized(self, q_nope, q_pe, packed, k_pe, mask, cache) -> mx.array:
        """Absorbed attention reading the packed latent directly (no dequantized copy of the cache)."""
        B, H, L, _ = q_nope.shape
        qmm = dict(group_size=cache.group_size, bits=cache.bits)
        q_lat = self.embed_q(q_nope).reshape(B, 1, H * L, -1)  # heads folded as in `absorbed`
        scores = mx.quantized_matmul(q_lat, *packed, transpose=True, **qmm) * self.scale  # (B, 1, H*L, S)
        scores = scores + self._pe_scores(q_pe, k_pe, mask)
        p = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q_lat.dtype)
        out = mx.quantized_matmul(p, *packed, transpose=False, **qmm)  # (B, 1, H*L, R)
        return self.unembed_out(out.reshape(B, H, L, -1))  # (B, H, L, Dv)
