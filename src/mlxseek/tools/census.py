"""The tensor census of a DeepSeek config: every weight its checkpoint holds, derived from config.json alone.

Works on the raw config dict, so it covers deepseek_v2, deepseek_v3, deepseek_v32 and deepseek_v4 without
building a model (ModelConfig builds only V2/V3 today). Each `Tensor` says what sizing needs: its shape,
the component it belongs to, whether it is a linear weight a recipe may quantize, the format DeepSeek ships
it in, and the fraction of it that one decoded token reads.

Layouts follow DeepSeek's reference `inference/model.py` (V3; V3.2-Exp for the DSA indexer) and the tensor
list of the official DeepSeek-V4-Flash checkpoint (tests/data/configs/README.md). Shapes are (out, in) for
linear weights and (E, out, in) for stacked routed experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4")

_REQUIRED = {
    "mla": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
    "deepseek_v32": ("q_lora_rank", "index_n_heads", "index_head_dim", "index_topk"),
    "deepseek_v4": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                    "q_lora_rank", "o_groups", "o_lora_rank", "n_routed_experts", "moe_intermediate_size",
                    "num_experts_per_tok", "compress_ratios", "index_n_heads", "index_head_dim", "index_topk",
                    "hc_mult", "sliding_window"),
}


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


def check_config(c: dict, source: str = "config.json") -> str:
    """Validate the keys sizing needs; returns the model_type."""
    if not isinstance(c, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(c).__name__}")
    mt = c.get("model_type")
    if mt not in MODEL_TYPES:
        raise ConfigError(f"{source}: unsupported model_type {mt!r}; mlxseek sizes {', '.join(MODEL_TYPES)}")
    keys = _REQUIRED["deepseek_v4"] if mt == "deepseek_v4" else _REQUIRED["mla"] + _REQUIRED.get(mt, ())
    if mt != "deepseek_v4" and c.get("n_routed_experts"):
        keys += ("moe_intermediate_size", "num_experts_per_tok")
    if mt != "deepseek_v4" and not all(is_moe_layer(c, i) for i in range(c.get("num_hidden_layers") or 0)):
        keys += ("intermediate_size",)  # the dense MLP of the first_k_dense_replace layers
    missing = [k for k in keys if c.get(k) is None]
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)} for {mt}")
    bad = [k for k in keys if k != "compress_ratios" and not (isinstance(c[k], int) and c[k] > 0)]
    if bad:
        raise ConfigError(f"{source}: key(s) {', '.join(bad)} must be positive integers")
    if mt == "deepseek_v4" and len(c["compress_ratios"]) < c["num_hidden_layers"]:
        raise ConfigError(f"{source}: compress_ratios has {len(c['compress_ratios'])} entries, "
                          f"need one per layer (num_hidden_layers = {c['num_hidden_layers']})")
    return mt


def is_moe_layer(c: dict, i: int) -> bool:
    if c["model_type"] == "deepseek_v4":
        return True  # every V4 block is MoE; the first num_hash_layers route by token id
    # null means "absent", as in ModelConfig.from_dict
    return bool(c.get("n_routed_experts")) and i >= (c.get("first_k_dense_replace") or 0) \
        and i % (c.get("moe_layer_freq") or 1) == 0


def census(c: dict, source: str = "config.json") -> list[Tensor]:
    """Every tensor of the checkpoint `c` describes: main model, MTP modules, and HF-only copies."""
    mt = check_config(c, source)
    build = _v4_layer if mt == "deepseek_v4" else _mla_layer
    L, D, V = c["num_hidden_layers"], c["hidden_size"], c["vocab_size"]
    out = [_t("model.embed_tokens", "embedding", (V, D), kind="embedding", native="bf16", reads=1 / V)]
    for i in range(L):
        out += _at(build(c, i), f"model.layers.{i}.", layer=i)
    out += [_norm("model.norm", D), _t("lm_head", "lm_head", (V, D), native="bf16")]
    if mt == "deepseek_v4":
        out += _at(_hyper(c, "hc_head"), "model.")  # collapses the hc_mult residual streams before the norm
    for j in range(c.get("num_nextn_predict_layers") or 0):
        # mlxseek keeps one MTP module (model.layers.{L}); further ones would need their own prefix.
        pre = "mtp." if j == 0 else f"mtp.{j}."
        out += _at(_mtp_module(c), pre, layer=L + j, mtp=True)
        out += _at(build(c, L + j), pre + "block.", layer=L + j, mtp=True)
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


def _moe(c: dict, hash_routed: bool = False) -> list[Tensor]:
    D, E, k, inter = c["hidden_size"], c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"]
    fp4 = c.get("expert_dtype") == "fp4" or (c.get("quantization_config") or {}).get("expert_dtype") == "fp4"
    out = _mlp("mlp.switch_mlp", "routed_experts", D, inter, native="fp4" if fp4 else "fp8", n=E, reads=k / E)
    if c.get("n_shared_experts"):
        out += _mlp("mlp.shared_experts", "shared_experts", D, inter * c["n_shared_experts"])
    out.append(_t("mlp.gate", "router", (E, D), kind="float", native="bf16"))
    if hash_routed:  # V4: a frozen token-id -> expert-id table; one row per token
        out.append(_t("mlp.gate.tid2eid", "router", (c["vocab_size"], k), kind="table", native="i64",
                      reads=1 / c["vocab_size"]))
    elif c.get("topk_method") == "noaux_tc" or c["model_type"] == "deepseek_v4":
        out.append(_t("mlp.gate", "router", (E,), kind="float", native="fp32"))  # e_score_correction_bias
    return out


def _mla_layer(c: dict, i: int) -> list[Tensor]:
    D, H, R = c["hidden_size"], c["num_attention_heads"], c["kv_lora_rank"]
    nope, rope, v, q = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c.get("q_lora_rank")
    a = "self_attn."
    if q:  # q_a_proj, q_a_layernorm, q_b_proj
        out = [_t(a + "q_a_proj", "attention", (q, D)), _norm(a + "q_a_layernorm", q),
               _t(a + "q_b_proj", "attention", (H * (nope + rope), q))]
    else:  # V2-Lite: direct q_proj
        out = [_t(a + "q_proj", "attention", (H * (nope + rope), D))]
    # kv_b_proj (H*(nope+v), R) is split into embed_q / unembed_out on conversion: same parameters.
    out += [_t(a + "kv_a_proj_with_mqa", "attention", (R + rope, D)), _norm(a + "kv_a_layernorm", R),
            _t(a + "kv_b_proj", "attention", (H * (nope + v), R)), _t(a + "o_proj", "attention", (D, H * v))]
    if c["model_type"] == "deepseek_v32":
        out += _dsa_indexer(c)
    out += _moe(c) if is_moe_layer(c, i) else _mlp("mlp", "dense_mlp", D, c.get("intermediate_size") or 0)
    return out + [_norm("input_layernorm", D), _norm("post_attention_layernorm", D)]


def _dsa_indexer(c: dict) -> list[Tensor]:
    # V3.2-Exp Indexer: wq_b (nh*hd, q_lora), wk (hd, D), k_norm LayerNorm (weight + bias), weights_proj (nh, D).
    D, nh, hd, p = c["hidden_size"], c["index_n_heads"], c["index_head_dim"], "self_attn.indexer."
    return [_t(p + "wq_b", "indexer", (nh * hd, c["q_lora_rank"])), _t(p + "wk", "indexer", (hd, D)),
            _norm(p + "k_norm", hd, "fp32"), _norm(p + "k_norm", hd, "fp32"),
            _t(p + "weights_proj", "indexer", (nh, D), native="bf16")]


def _mtp_module(c: dict) -> list[Tensor]:
    D, V = c["hidden_size"], c["vocab_size"]
    if c["model_type"] == "deepseek_v4":  # e_proj, h_proj (D, D), enorm, hnorm, norm, hc_head
        return [_t("e_proj", "mtp_proj", (D, D)), _t("h_proj", "mtp_proj", (D, D)), _norm("enorm", D),
                _norm("hnorm", D), _norm("norm", D)] + _hyper(c, "hc_head")
    # eh_proj (D, 2D), enorm, hnorm, shared_head.norm. The HF checkpoint also stores copies of the embedding
    # and the output head, which the MTP module shares with the main model (V3 report section 2.2).
    return [_t("eh_proj", "mtp_proj", (D, 2 * D)), _norm("enorm", D), _norm("hnorm", D),
            _norm("shared_head.norm", D),
            _t("embed_tokens", "embedding", (V, D), kind="embedding", native="bf16", reads=1 / V, copy=True,
               hf_only=True),
            _t("shared_head.head", "lm_head", (V, D), native="bf16", copy=True)]


def _hyper(c: dict, name: str) -> list[Tensor]:
    """mHC parameters. A block site (attn_hc, ffn_hc) has fn ((2+n)n, nD), base ((2+n)n,), scale (3,): pre and
    post weights (n each) and the n x n residual mix. The head collapse has fn (n, nD), base (n,), scale (1,)."""
    n, D = c["hc_mult"], c["hidden_size"]
    rows, scales = (n, 1) if name == "hc_head" else ((2 + n) * n, 3)
    return [_t(f"{name}.{leaf}", "hyper_connections", s, kind="float", native="fp32")
            for leaf, s in (("fn", (rows, n * D)), ("base", (rows,)), ("scale", (scales,)))]


def _v4_layer(c: dict, i: int) -> list[Tensor]:
    D, H, hd, q = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["q_lora_rank"]
    g, r, a = c["o_groups"], c["o_lora_rank"], "self_attn."
    ratios = c["compress_ratios"]
    ratio = ratios[i] if i < len(ratios) else 0
    # wq_a, q_norm, wq_b, wkv (one shared KV head), kv_norm, grouped wo_a (g*r, H*hd/g), wo_b, attn_sink
    out = [_t(a + "wq_a", "attention", (q, D)), _norm(a + "q_norm", q), _t(a + "wq_b", "attention", (H * hd, q)),
           _t(a + "wkv", "attention", (hd, D)), _norm(a + "kv_norm", hd),
           _t(a + "wo_a", "attention", (g * r, H * hd // g)), _t(a + "wo_b", "attention", (D, g * r)),
           _t(a + "attn_sink", "attention", (H,), kind="float", native="fp32")]
    if ratio:
        out += _compressor(a + "compressor.", D, hd, ratio, "compressor")
    if ratio == 4:  # CSA layers carry the lightning indexer, with its own compressor at index_head_dim
        nh, ihd, p = c["index_n_heads"], c["index_head_dim"], a + "indexer."
        out += _compressor(p + "compressor.", D, ihd, ratio, "indexer")
        out += [_t(p + "wq_b", "indexer", (nh * ihd, q)), _t(p + "weights_proj", "indexer", (nh, D), native="bf16")]
    out += _moe(c, hash_routed=i < (c.get("num_hash_layers") or 0))
    return out + [_norm("input_layernorm", D), _norm("post_attention_layernorm", D)] + _hyper(c, "attn_hc") \
        + _hyper(c, "ffn_hc")


def _compressor(p: str, D: int, hd: int, ratio: int, component: str) -> list[Tensor]:
    # Ratio-4 (CSA) windows overlap their neighbour, so wkv/wgate/ape carry two series: 2*hd wide.
    w = 2 * hd if ratio == 4 else hd
    return [_t(p + "wkv", component, (w, D), native="bf16"), _t(p + "wgate", component, (w, D), native="bf16"),
            _t(p + "ape", component, (ratio, w), kind="float", native="fp32"), _norm(p + "norm", hd)]
