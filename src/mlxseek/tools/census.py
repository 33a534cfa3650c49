"""The tensor census of a DeepSeek config: every weight its checkpoint holds, derived from config.json alone.

Reads `ModelConfig`, so it covers deepseek_v2, deepseek_v3, deepseek_v32, deepseek_v4 and deepseek_v41 without building a
model (no weights, no MLX arrays). Each `Tensor` says what sizing needs: its shape, the component it belongs
to, whether it is a linear weight a recipe may quantize, the format DeepSeek ships it in, and the fraction of
it that one decoded token reads.

Layouts follow DeepSeek's reference `inference/model.py` (V3; V3.2-Exp for the DSA indexer) and the tensor
list of the official DeepSeek-V4-Flash checkpoint (tests/data/configs/README.md). Shapes are (out, in) for
linear weights and (E, out, in) for stacked routed experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..config import ModelConfig
from ..layers.v41.dspark import stage_config
from ..models.families import family_of


@dataclass(frozen=True)
class Tensor:
    path: str  # module path in mlx-lm's layout (the converter's recipes decide bits by path)
    component: str  # embedding | attention | indexer | compressor | dense_mlp | shared_experts |
    #                 routed_experts | router | norms | hyper_connections | lm_head | mtp_proj
    shape: tuple[int, ...]
    kind: str = "linear"  # linear | embedding | float | table
    native: str = "fp8"  # as DeepSeek ships it: fp8 | fp4 | bf16 | fp32 | i64
    reads: float = 1.0  # fraction of the tensor one decoded token reads (routed experts: top-k / E)
    layer: int | None = None  # decoder layer; MTP module j is layer num_hidden_layers + j; None: embed/head
    mtp: bool = False
    copy: bool = False  # duplicate of a main-model tensor (V3's MTP embed_tokens and shared_head.head)
    hf_only: bool = False  # present on Hugging Face, dropped by `mlxseek convert` (the MTP's embedding copy)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def census(cfg: ModelConfig) -> list[Tensor]:
    """Every tensor of the checkpoint `cfg` describes: main model, MTP modules, and HF-only copies."""
    layout = _LAYOUTS[family_of(cfg).sizing]  # the family says which layout its checkpoint has
    if layout.whole is not None:
        return layout.whole(cfg)
    build = layout.layer
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    out = [_t("model.embed_tokens", "embedding", (V, D), kind="embedding", native="bf16", reads=1 / V)]
    for i in range(L):
        out += _at(build(cfg, i), f"model.layers.{i}.", layer=i)
    out += [_norm("model.norm", D), _t("lm_head", "lm_head", (V, D), native="bf16")]
    out += layout.top(cfg)
    if cfg.has_dspark:  # 0731 / 0813 / -DSpark: the DSpark drafter instead of an MTP head
        return out + _dspark(cfg, build)
    for j in range(cfg.num_nextn_predict_layers):
        # mlxseek keeps one MTP module (model.layers.{L}); further ones would need their own prefix.
        pre, idx = ("mtp." if j == 0 else f"mtp.{j}."), cfg.mtp_layer_index + j
        out += _at(layout.mtp(cfg), pre, layer=idx, mtp=True)
        out += _at(build(cfg, idx), pre + "block.", layer=idx, mtp=True)
    return out


def _t(path: str, component: str, shape: tuple, **kw) -> Tensor:
    return Tensor(path, component, tuple(shape), **kw)


def _at(ts: list[Tensor], prefix: str, **fields) -> list[Tensor]:
    return [Tensor(**{**t.__dict__, "path": prefix + t.path, **fields}) for t in ts]


def _norm(path: str, n: int, native: str = "bf16") -> Tensor:
    return _t(path, "norms", (n,), kind="float", native=native)


def _mlp(prefix: str, component: str, D: int, inter: int, native: str = "fp8", n: int | None = None,
         reads: float = 1.0) -> list[Tensor]:
    # gate_proj (w1) and up_proj (w3) are (inter, D), down_proj (w2) is (D, inter); experts stack (n, out, in).
    lead = (n,) if n else ()
    return [_t(f"{prefix}.{name}", component, lead + s, native=native, reads=reads)
            for name, s in (("gate_proj", (inter, D)), ("up_proj", (inter, D)), ("down_proj", (D, inter)))]


def _moe(cfg: ModelConfig, i: int) -> list[Tensor]:
    D, E, inter = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
    native = "fp4" if cfg.expert_dtype == "fp4" else "fp8"
    out = _mlp("mlp.switch_mlp", "routed_experts", D, inter, native=native, n=E, reads=cfg.routed_expert_fraction)
    if cfg.n_shared_experts:
        out += _mlp("mlp.shared_experts", "shared_experts", D, inter * cfg.n_shared_experts)
    out.append(_t("mlp.gate", "router", (E, D), kind="float", native="bf16"))
    if cfg.is_hash_layer(i):  # V4: a frozen token-id -> expert-id table; one row per token
        V = cfg.vocab_size
        out.append(_t("mlp.gate.tid2eid", "router", (V, cfg.num_experts_per_tok), kind="table", native="i64",
                      reads=1 / V))
    elif cfg.has_correction_bias(i):
        out.append(_t("mlp.gate", "router", (E,), kind="float", native="fp32"))  # e_score_correction_bias
    return out


def _mla_layer(cfg: ModelConfig, i: int, dsa: bool = False) -> list[Tensor]:
    D, H, R = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_lora_rank
    nope, rope, v, q = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.q_lora_rank
    a = "self_attn."
    if q:  # q_a_proj, q_a_layernorm, q_b_proj
        out = [_t(a + "q_a_proj", "attention", (q, D)), _norm(a + "q_a_layernorm", q),
               _t(a + "q_b_proj", "attention", (H * (nope + rope), q))]
    else:  # V2-Lite: direct q_proj
        out = [_t(a + "q_proj", "attention", (H * (nope + rope), D))]
    # kv_b_proj (H*(nope+v), R) is split into embed_q / unembed_out on conversion: same parameters.
    out += [_t(a + "kv_a_proj_with_mqa", "attention", (R + rope, D)), _norm(a + "kv_a_layernorm", R),
            _t(a + "kv_b_proj", "attention", (H * (nope + v), R)), _t(a + "o_proj", "attention", (D, H * v))]
    if dsa:
        out += _dsa_indexer(cfg)
    out += _moe(cfg, i) if cfg.is_moe_layer(i) else _mlp("mlp", "dense_mlp", D, cfg.intermediate_size)
    return out + [_norm("input_layernorm", D), _norm("post_attention_layernorm", D)]


def _dsa_indexer(cfg: ModelConfig) -> list[Tensor]:
    # V3.2-Exp Indexer: wq_b (nh*hd, q_lora), wk (hd, D), k_norm LayerNorm (weight + bias), weights_proj (nh, D).
    D, nh, hd, p = cfg.hidden_size, cfg.index_n_heads, cfg.index_head_dim, "self_attn.indexer."
    return [_t(p + "wq_b", "indexer", (nh * hd, cfg.q_lora_rank)), _t(p + "wk", "indexer", (hd, D)),
            _norm(p + "k_norm", hd, "fp32"), _norm(p + "k_norm", hd, "fp32"),
            _t(p + "weights_proj", "indexer", (nh, D), native="bf16")]


def _dspark(cfg: ModelConfig, build) -> list[Tensor]:
    """The DSpark drafter (flagged mtp: the drafter, counted apart): S stages that are V4 blocks, main_proj
    (D, T*D) and main_norm, the head's hc_head and norm, and the float32 Markov (2 x (V, r)) and confidence
    ((1, D+r)) heads. A config alone holds no shard index, so S is counted from the compress_ratios entries
    after the main stack (the loader counts the checkpoint's `mtp.{s}.` prefixes)."""
    L, D, V, r = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, cfg.dspark_markov_rank
    stages = cfg.dspark_stages or max(0, len(cfg.compress_ratios) - L)
    out = []
    for s in range(stages):
        out += _at(build(cfg, L + s), f"dspark.stages.{s}.", layer=L + s, mtp=True)
    head = [_t("main_proj", "mtp_proj", (D, len(cfg.dspark_target_layer_ids) * D)), _norm("main_norm", D),
            _norm("norm", D), *_hyper(cfg, "hc_head"),
            _t("markov_head.markov_w1", "dspark_heads", (V, r), kind="embedding", native="fp32"),
            _t("markov_head.markov_w2", "dspark_heads", (V, r), native="fp32"),
            _t("confidence_head.proj", "dspark_heads", (1, D + r), native="fp32")]
    return out + _at(head, "dspark.", layer=L + max(0, stages - 1), mtp=True)


def _v4_mtp_module(cfg: ModelConfig) -> list[Tensor]:
    D = cfg.hidden_size  # e_proj, h_proj (D, D), enorm, hnorm, norm, hc_head
    return [_t("e_proj", "mtp_proj", (D, D)), _t("h_proj", "mtp_proj", (D, D)), _norm("enorm", D),
            _norm("hnorm", D), _norm("norm", D)] + _hyper(cfg, "hc_head")


def _mtp_module(cfg: ModelConfig) -> list[Tensor]:
    D, V = cfg.hidden_size, cfg.vocab_size
    # eh_proj (D, 2D), enorm, hnorm, shared_head.norm. The HF checkpoint also stores copies of the embedding
    # and the output head, which the MTP module shares with the main model (V3 report section 2.2).
    return [_t("eh_proj", "mtp_proj", (D, 2 * D)), _norm("enorm", D), _norm("hnorm", D),
            _norm("shared_head.norm", D),
            _t("embed_tokens", "embedding", (V, D), kind="embedding", native="bf16", reads=1 / V, copy=True,
               hf_only=True),
            _t("shared_head.head", "lm_head", (V, D), native="bf16", copy=True)]


def _hyper(cfg: ModelConfig, name: str) -> list[Tensor]:
    """mHC parameters. A block site (attn_hc, ffn_hc) has fn ((2+n)n, nD), base ((2+n)n,), scale (3,): pre and
    post weights (n each) and the n x n residual mix. The head collapse has fn (n, nD), base (n,), scale (1,)."""
    n, D = cfg.hc_mult, cfg.hidden_size
    rows, scales = (n, 1) if name == "hc_head" else ((2 + n) * n, 3)
    return [_t(f"{name}.{leaf}", "hyper_connections", s, kind="float", native="fp32")
            for leaf, s in (("fn", (rows, n * D)), ("base", (rows,)), ("scale", (scales,)))]


def _v4_layer(cfg: ModelConfig, i: int) -> list[Tensor]:
    D, H, hd, q = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank
    g, r, a, ratio = cfg.o_groups, cfg.o_lora_rank, "self_attn.", cfg.compress_ratio(i)
    # wq_a, q_norm, wq_b, wkv (one shared KV head), kv_norm, grouped wo_a (g*r, H*hd/g), wo_b, attn_sink
    out = [_t(a + "wq_a", "attention", (q, D)), _norm(a + "q_norm", q), _t(a + "wq_b", "attention", (H * hd, q)),
           _t(a + "wkv", "attention", (hd, D)), _norm(a + "kv_norm", hd),
           _t(a + "wo_a", "attention", (g * r, H * hd // g)), _t(a + "wo_b", "attention", (D, g * r)),
           _t(a + "attn_sink", "attention", (H,), kind="float", native="fp32")]
    if ratio:
        out += _compressor(a + "compressor.", D, hd, ratio, "compressor")
    if ratio == 4:  # CSA layers carry the lightning indexer, with its own compressor at index_head_dim
        nh, ihd, p = cfg.index_n_heads, cfg.index_head_dim, a + "indexer."
        out += _compressor(p + "compressor.", D, ihd, ratio, "indexer")
        out += [_t(p + "wq_b", "indexer", (nh * ihd, q)), _t(p + "weights_proj", "indexer", (nh, D), native="bf16")]
    out += _moe(cfg, i)
    return out + [_norm("input_layernorm", D), _norm("post_attention_layernorm", D)] + _hyper(cfg, "attn_hc") \
        + _hyper(cfg, "ffn_hc")


def _compressor(p: str, D: int, hd: int, ratio: int, component: str) -> list[Tensor]:
    # Ratio-4 (CSA) windows overlap their neighbour, so wkv/wgate/ape carry two series: 2*hd wide.
    w = 2 * hd if ratio == 4 else hd
    return [_t(p + "wkv", component, (w, D), native="bf16"), _t(p + "wgate", component, (w, D), native="bf16"),
            _t(p + "ape", component, (ratio, w), kind="float", native="fp32"), _norm(p + "norm", hd)]


# The tensor census of a DeepSeek-V4.1 config (see `census`): the V4 attention without per-layer compressors,
# a compressor only on `kv_source_layer_ids`, an indexer only on `index_source_layer_ids` (its `wk`/`k_norm` where
# the layer is also a KV source), sqrtsoftplus MoE with `bias_vl`, two mHC sites per layer and no hc_head, and
# the Engram modules with their tables (component "engram_table": FP8 rows with one E8M0 scale per 32, read by
# position from disk, `reads` = rows per token / rows), and the DSpark drafter (`_v41_dspark`). The vision tower
# is not counted (mlxseek runs text only). Provenance: transformers' V4.1 port (module list and which tensors
# ship in F32) and the V4.1-Flash description (FP8 32x32 blocks, FP4 experts).

def census_v41(cfg: ModelConfig) -> list[Tensor]:
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    out = [_t("model.embed_tokens", "embedding", (V, D), kind="embedding", native="bf16", reads=1 / V)]
    for i in range(L):
        out += _at(_v41_layer(cfg, i), f"model.layers.{i}.", layer=i)
    out += [_norm("model.norm", D), _t("lm_head", "lm_head", (V, D), native="bf16")]
    return out + (_v41_dspark(cfg) if cfg.has_dspark else [])


def _v41_dspark(cfg: ModelConfig) -> list[Tensor]:
    """V4.1's DSpark drafter (flagged mtp, counted apart): S window-only V4.1 blocks with the drafter's own MoE
    (dspark_n_routed_experts, top dspark_num_experts_per_tok), main_proj (D, T*D) and main_norm, the final
    norm, the float32 Markov head (embed and head, (V, r) each) and confidence head (1, D+r); no hc_head.
    S: the compress_ratios entries past the main stack (3 zeros in the release), as for V4's DSpark."""
    L, D, V, r = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, cfg.dspark_markov_rank
    stages = cfg.dspark_stages or max(0, len(cfg.compress_ratios) - L)
    scfg = stage_config(cfg, stages)
    out = []
    for s in range(stages):
        out += _at(_v41_layer(scfg, L + s), f"dspark.stages.{s}.", layer=L + s, mtp=True)
    head = [_t("main_proj", "mtp_proj", (D, len(cfg.dspark_target_layer_ids) * D)), _norm("main_norm", D),
            _norm("norm", D),
            _t("markov_head.embed", "dspark_heads", (V, r), kind="embedding", native="fp32"),
            _t("markov_head.head", "dspark_heads", (V, r), native="fp32"),
            _t("confidence_head.proj", "dspark_heads", (1, D + r), native="fp32")]
    return out + _at(head, "dspark.", layer=L + max(0, stages - 1), mtp=True)


def _v41_layer(cfg: ModelConfig, i: int) -> list[Tensor]:
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
        out += _v41_engram(cfg, (cfg.engram_layer_ids or []).index(i))
    return out + [_norm("input_layernorm", D), _norm("post_attention_layernorm", D)] + _hyper(cfg, "attn_hc") \
        + _hyper(cfg, "ffn_hc")


def _v41_engram(cfg: ModelConfig, j: int) -> list[Tensor]:
    D, n, d = cfg.hidden_size, cfg.hc_mult, cfg.engram_head_dim
    cols = (cfg.engram_max_ngram_size - 1) * cfg.engram_n_heads
    rows = (cfg.engram_num_embeddings or [0])[j]
    return [_t("engram.wkv", "engram", (D * (n + 1), cols * d)),
            _t("engram.q_weight", "engram", (n, D), kind="float", native="bf16"),
            _t("engram.k_weight", "engram", (n, D), kind="float", native="bf16"),
            _t("engram.embed", "engram_table", (rows, d), kind="table", native="fp8", reads=cols / max(rows, 1))]


@dataclass(frozen=True)
class _Layout:
    """How a family's checkpoint is laid out (`Family.sizing` picks one): its decoder layer, its MTP module,
    what follows the LM head; `whole`: a census of its own (V4.1)."""

    layer: Callable[[ModelConfig, int], list[Tensor]]
    mtp: Callable[[ModelConfig], list[Tensor]]
    top: Callable[[ModelConfig], list[Tensor]] = lambda cfg: []
    whole: Callable[[ModelConfig], list[Tensor]] | None = None


_LAYOUTS = {
    "mla": _Layout(_mla_layer, _mtp_module),
    "dsa": _Layout(lambda cfg, i: _mla_layer(cfg, i, dsa=True), _mtp_module),
    # V4's hc_head collapses the hc_mult residual streams before the norm
    "v4": _Layout(_v4_layer, _v4_mtp_module, top=lambda cfg: _at(_hyper(cfg, "hc_head"), "model.")),
    "csa2": _Layout(_v4_layer, _v4_mtp_module, whole=census_v41),
}
