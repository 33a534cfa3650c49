"""Manifold-constrained hyper-connections (mHC; DeepSeek-V4 report section 2.2, Xie et al. 2026).

The residual stream is widened to n = `hc_mult` parallel streams. Around each attention / FFN block an
mHC site reads all streams and produces three mappings with a one-layer perceptron:
  pre  (n,)   collapses the n streams into the block input       (sigmoid + hc_eps)
  post (n,)   spreads the block output back over the n streams   (2 * sigmoid)
  comb (n, n) mixes the incoming streams into the outgoing ones, projected onto the doubly stochastic
              matrices by Sinkhorn-Knopp (`hc_sinkhorn_iters` alternating column/row normalisations).
new_streams[k] = post[k] * block_out + sum_j comb[j, k] * streams[j].

Shapes: B batch, L tokens, n streams, D hidden. All mixing weights are computed in float32, as in
DeepSeek's reference (its mHC parameters ship as float32).
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn


def rms_unweighted(x: mx.array, eps: float) -> mx.array:
    """RMS-normalise the last axis with no learned weight (float32 in, float32 out)."""
    return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps)


def sinkhorn(m: mx.array, iters: int, eps: float) -> mx.array:
    """Project positive (..., n, n) matrices towards doubly stochastic: columns first, then
    `iters - 1` rounds of rows-then-columns (the order of DeepSeek-V4's reference)."""
    m = m / (m.sum(axis=-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(axis=-1, keepdims=True) + eps)
        m = m / (m.sum(axis=-2, keepdims=True) + eps)
    return m


def _mixes(streams: mx.array, fn: mx.array, norm_eps: float) -> mx.array:
    """(B, L, n, D) streams -> (B, L, rows(fn)) float32 mixing logits from the RMS-normed flat streams."""
    flat = streams.reshape(*streams.shape[:-2], -1).astype(mx.float32)  # (B, L, n*D)
    return rms_unweighted(flat, norm_eps) @ fn.astype(mx.float32).T


@partial(mx.compile, shapeless=False)
def _site_mappings(mixes, base, scale, n: int, iters: int, hc_eps: float):
    """Mixing logits (B, L, (2+n)*n) -> pre (B, L, n), post (B, L, n), comb (B, L, n, n); compiled because
    the Sinkhorn loop is ~4 * iters tiny element-wise ops that dominate a decode step otherwise."""
    pre = mx.sigmoid(mixes[..., :n] * scale[0] + base[:n]) + hc_eps
    post = 2 * mx.sigmoid(mixes[..., n : 2 * n] * scale[1] + base[n : 2 * n])
    comb_logits = mixes[..., 2 * n :] * scale[2] + base[2 * n :]
    comb_logits = comb_logits.reshape(*comb_logits.shape[:-1], n, n)  # [j, k]: stream j -> stream k
    return pre, post, sinkhorn(mx.softmax(comb_logits, axis=-1) + hc_eps, iters, hc_eps)


class HyperConnection(nn.Module):
    """One mHC site. Parameters (checkpoint `hc_{attn,ffn}_{fn,base,scale}`): fn ((2+n)*n, n*D),
    base ((2+n)*n,), scale (3,) = the pre / post / comb logit scales."""

    def __init__(self, dim: int, n: int, sinkhorn_iters: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.n, self.iters, self.hc_eps, self.norm_eps = n, sinkhorn_iters, hc_eps, norm_eps
        self.fn = mx.zeros(((2 + n) * n, n * dim))
        self.base = mx.zeros(((2 + n) * n,))
        self.scale = mx.ones((3,))

    def mappings(self, streams: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """streams (B, L, n, D) -> pre (B, L, n), post (B, L, n), comb (B, L, n, n), float32 (V4.1's lagged
        mHC collapses with another site's `pre`)."""
        mixes = _mixes(streams, self.fn, self.norm_eps)
        return _site_mappings(mixes, self.base.astype(mx.float32), self.scale.astype(mx.float32),
                              self.n, self.iters, self.hc_eps)

    def __call__(self, streams: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """streams (B, L, n, D) -> (block input (B, L, D), post (B, L, n), comb (B, L, n, n))."""
        pre, post, comb = self.mappings(streams)
        collapsed = (pre[..., None] * streams.astype(mx.float32)).sum(axis=-2)
        return collapsed.astype(streams.dtype), post, comb

    @staticmethod
    def merge(streams: mx.array, out: mx.array, post: mx.array, comb: mx.array) -> mx.array:
        """new_streams[k] = post[k] * out + sum_j comb[j, k] * streams[j]; shapes as in __call__."""
        dt = streams.dtype
        mixed = comb.astype(dt).swapaxes(-1, -2) @ streams  # (B, L, n, n) @ (B, L, n, D)
        return post.astype(dt)[..., None] * out[..., None, :] + mixed


class HyperHead(nn.Module):
    """Final collapse of the n streams before the output norm (checkpoint `hc_head_{fn,base,scale}`):
    fn (n, n*D), base (n,), scale (1,)."""

    def __init__(self, dim: int, n: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc_eps, self.norm_eps = hc_eps, norm_eps
        self.fn = mx.zeros((n, n * dim))
        self.base = mx.zeros((n,))
        self.scale = mx.ones((1,))

    def __call__(self, streams: mx.array) -> mx.array:
        """(B, L, n, D) -> (B, L, D)."""
        mixes = _mixes(streams, self.fn, self.norm_eps)
        pre = mx.sigmoid(mixes * self.scale.astype(mx.float32) + self.base.astype(mx.float32)) + self.hc_eps
        return (pre[..., None] * streams.astype(mx.float32)).sum(axis=-2).astype(streams.dtype)


def expand_streams(h: mx.array, n: int) -> mx.array:
    """(B, L, D) embeddings -> (B, L, n, D): every stream starts as a copy of the embedding."""
    return mx.broadcast_to(h[..., None, :], (*h.shape[:-1], n, h.shape[-1]))
