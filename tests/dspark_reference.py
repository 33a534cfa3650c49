"""A slow NumPy reference of the DSpark drafter's forward, written from DeepSeek's description (the forward
spec transcribed in warpfront/hipfire docs/design/2026-06-28-dspark-deepseek4-forward-spec.md and
DeepSeek-V4's `inference/model.py` semantics for mHC, sink attention and the clamped-SwiGLU MoE), not
from mlxseek's modules: it reads only the loaded parameters, as float64 NumPy arrays.

Shapes: K block slots, S ring rows, n hc streams, D hidden, H heads, d head_dim, V vocab, r Markov rank.
"""

from __future__ import annotations

import numpy as np
from mlx.utils import tree_flatten


def params_of(model) -> dict[str, np.ndarray]:
    import mlx.core as mx

    return {k: np.array(v.astype(mx.float32)).astype(np.float64) for k, v in tree_flatten(model.parameters())}


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 if w is None else w)


def rope(x, positions, dims, theta, inverse=False):
    """Interleaved RoPE on the trailing `dims` channels; positions along axis 0 of x (L, ..., d)."""
    inv = 1.0 / theta ** (np.arange(0, dims, 2) / dims)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None]  # (L, dims/2)
    cos, sin = np.cos(ang), np.sin(ang) * (-1 if inverse else 1)
    shape = (len(positions),) + (1,) * (x.ndim - 2) + (dims // 2,)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    x0, x1 = x[..., -dims::2], x[..., -dims + 1::2]
    out = x.copy()
    out[..., -dims::2], out[..., -dims + 1::2] = x0 * cos - x1 * sin, x1 * cos + x0 * sin
    return out


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def hc_site(streams, fn, base, scale, cfg):
    """mHC pre/post/comb of (K, n, D) streams: sigmoid gates and a Sinkhorn-projected comb (n, n)."""
    n = cfg.hc_mult
    flat = streams.reshape(streams.shape[0], -1)
    mixes = rms(flat, None, cfg.rms_norm_eps) @ fn.T
    pre = 1 / (1 + np.exp(-(mixes[:, :n] * scale[0] + base[:n]))) + cfg.hc_eps
    post = 2 / (1 + np.exp(-(mixes[:, n:2 * n] * scale[1] + base[n:2 * n])))
    comb = softmax((mixes[:, 2 * n:] * scale[2] + base[2 * n:]).reshape(-1, n, n)) + cfg.hc_eps
    comb = comb / (comb.sum(-2, keepdims=True) + cfg.hc_eps)
    for _ in range(cfg.hc_sinkhorn_iters - 1):
        comb = comb / (comb.sum(-1, keepdims=True) + cfg.hc_eps)
        comb = comb / (comb.sum(-2, keepdims=True) + cfg.hc_eps)
    return (pre[..., None] * streams).sum(1), post, comb


def merge(streams, out, post, comb):
    return post[..., None] * out[:, None, :] + np.einsum("tjk,tjd->tkd", comb, streams)


def attention(p, a, x, ring, pos, cfg):
    """Window-only, non-causal block attention with sinks: x (K, D) at positions pos.., ring (S, d)."""
    K, H, d, rd = x.shape[0], cfg.num_attention_heads, cfg.head_dim, cfg.qk_rope_head_dim
    positions = pos + np.arange(K)
    q = rms(x @ p[a + "q_a_proj.weight"].T, p[a + "q_a_norm.weight"], cfg.rms_norm_eps) @ p[a + "q_b_proj.weight"].T
    q = rope(rms(q.reshape(K, H, d), None, cfg.rms_norm_eps), positions, rd, cfg.rope_theta)
    kv = rms(x @ p[a + "kv_proj.weight"].T, p[a + "kv_norm.weight"], cfg.rms_norm_eps)
    kv = rope(kv, positions, rd, cfg.rope_theta)
    keys = np.concatenate([ring, kv])  # (S + K, d): every slot sees the ring and every block slot
    s = np.einsum("khd,sd->khs", q, keys) * d ** -0.5
    sink = np.broadcast_to(p[a + "sinks"][None, :, None], (K, H, 1))
    prob = softmax(np.concatenate([s, sink], -1))[..., :-1]
    o = rope(np.einsum("khs,sd->khd", prob, keys), positions, rd, cfg.rope_theta, inverse=True)
    G = cfg.o_groups
    wa = p[a + "o_a_proj.weight"].reshape(G, -1, H * d // G)  # (G, R, in)
    o = np.einsum("kgi,gri->kgr", o.reshape(K, G, -1), wa).reshape(K, -1)
    return o @ p[a + "o_b_proj.weight"].T


def swiglu(x, g, u, dn, limit):
    a, b = x @ g.T, x @ u.T
    if limit:
        a, b = np.minimum(a, limit), np.clip(b, -limit, limit)
    return (a / (1 + np.exp(-a)) * b) @ dn.T


def moe(p, m, x, cfg):
    """sqrtsoftplus noaux_tc routing (one group), weights normalised and scaled, plus the shared expert."""
    scores = np.sqrt(np.log1p(np.exp(x @ p[m + "gate.weight"].T)))
    chosen = np.argsort(-(scores + p[m + "gate.e_score_correction_bias"]), axis=-1)[:, : cfg.num_experts_per_tok]
    out = swiglu(x, p[m + "shared_experts.gate_proj.weight"], p[m + "shared_experts.up_proj.weight"],
                 p[m + "shared_experts.down_proj.weight"], cfg.swiglu_limit)
    e = m + "switch_mlp."
    for t in range(x.shape[0]):
        w = scores[t, chosen[t]]
        w = w / w.sum() * cfg.routed_scaling_factor
        for j, ei in enumerate(chosen[t]):
            out[t] += w[j] * swiglu(x[t:t + 1], p[e + "gate_proj.weight"][ei], p[e + "up_proj.weight"][ei],
                                    p[e + "down_proj.weight"][ei], cfg.swiglu_limit)[0]
    return out


def dspark_reference(p, cfg, taps, y, k, stages):
    """taps (P, T*D) target hiddens at positions 0..P-1, y the token at P, k block slots -> dict of raw
    logits (k, V), Markov biases (k, V) and embeddings (k, r), biased logits, greedy drafts, confidence (k,)."""
    P, eps = taps.shape[0], cfg.rms_norm_eps
    main_x = rms(taps @ p["dspark.main_proj.weight"].T, p["dspark.main_norm.weight"], eps)
    ids = [y] + [cfg.dspark_noise_token_id] * (k - 1)
    streams = np.repeat(p["model.embed_tokens.weight"][ids][:, None, :], cfg.hc_mult, axis=1)
    for s in range(stages):
        b = f"dspark.stages.{s}."
        a = b + "self_attn."
        ring = rope(rms(main_x @ p[a + "kv_proj.weight"].T, p[a + "kv_norm.weight"], eps), np.arange(P),
                    cfg.qk_rope_head_dim, cfg.rope_theta)[-cfg.sliding_window:]
        x, post, comb = hc_site(streams, p[b + "attn_hc.fn"], p[b + "attn_hc.base"], p[b + "attn_hc.scale"], cfg)
        out = attention(p, a, rms(x, p[b + "input_layernorm.weight"], eps), ring, P, cfg)
        streams = merge(streams, out, post, comb)
        x, post, comb = hc_site(streams, p[b + "ffn_hc.fn"], p[b + "ffn_hc.base"], p[b + "ffn_hc.scale"], cfg)
        out = moe(p, b + "mlp.", rms(x, p[b + "post_attention_layernorm.weight"], eps), cfg)
        streams = merge(streams, out, post, comb)
    flat = rms(streams.reshape(k, -1), None, eps)
    mixes = flat @ p["dspark.hc_head.fn"].T * p["dspark.hc_head.scale"][0] + p["dspark.hc_head.base"]
    pre = 1 / (1 + np.exp(-mixes))  # the head's gate is a sigmoid, not Sinkhorn
    h = ((pre + cfg.hc_eps)[..., None] * streams).sum(1)
    raw = rms(h, p["dspark.norm.weight"], eps) @ p["lm_head.weight"].T
    w1, w2 = p["dspark.markov_head.markov_w1.weight"], p["dspark.markov_head.markov_w2.weight"]
    prev, biases, embs, drafts = y, [], [], []
    for i in range(k):  # left to right: each slot's bias reads the token drafted before it
        emb = w1[prev]
        biases.append(emb @ w2.T)
        embs.append(emb)
        prev = int(np.argmax(raw[i] + biases[-1]))
        drafts.append(prev)
    embs = np.stack(embs)
    conf = 1 / (1 + np.exp(-(np.concatenate([h, embs], -1) @ p["dspark.confidence_head.proj.weight"].T)[:, 0]))
    biases = np.stack(biases)
    return {"raw": raw, "bias": biases, "emb": embs, "logits": raw + biases, "drafts": drafts, "confidence": conf}
