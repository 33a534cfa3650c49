"""The DeepSeek families a ModelConfig may name, each family's defaults and required keys, and validation:
the type and range of every key the model reads, and the relations between keys (top-k within the experts,
heads that divide, block sizes that are positive). Each failure is a ConfigError naming the key, its value
and what it must be, raised before anything is built from it.
"""

from __future__ import annotations

from .errors import ConfigError

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4", "deepseek_v41")

# Defaults differ by family where DeepSeek's own configuration_deepseek.py files differ.
FAMILY_DEFAULTS = {
    "deepseek_v2": {"topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": False},
    "deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True},
    # V3.2 = the V3.1 body + DSA; indexer defaults from DeepSeek-V3.2-Exp inference/model.py ModelArgs.
    "deepseek_v32": {
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048,
    },
    # V4 defaults: transformers' DeepseekV4Config (the official config.json files set every one of them).
    "deepseek_v4": {
        "topk_method": "noaux_tc", "scoring_func": "sqrtsoftplus", "norm_topk_prob": True,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512, "sliding_window": 128,
        "compress_rope_theta": 160000.0, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
        "num_hash_layers": 3, "swiglu_limit": 10.0,
    },
    # V4.1 defaults: transformers' DeepseekV41TextConfig; no hash layers, one shared expert. An absent
    # candidate_source_layer_id means the last KV source (`candidate_source`); mlx-lm 0.32.2 turns the
    # two-level top-k off instead, so it disagrees on a config.json without the key.
    "deepseek_v41": {
        "topk_method": "noaux_tc", "scoring_func": "sqrtsoftplus", "norm_topk_prob": True,
        "index_n_heads": 32, "index_head_dim": 128, "index_topk": 512, "sliding_window": 128,
        "compress_rope_theta": 160000.0, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
        "num_hash_layers": 0, "swiglu_limit": 10.0, "n_shared_experts": 1,
        "candidate_topk_blocks": 2048, "candidate_block_size": 8, "engram_max_ngram_size": 4,
        "engram_n_heads": 8, "engram_head_dim": 256, "engram_pad_id": 2,
    },
}

TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus")

# Keys every DeepSeek MLA config must carry; a missing one is named in the error.
REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
)
# DeepSeek-V4 has no MLA latent: one shared KV head of head_dim, grouped output projection, compressors.
V4_REQUIRED_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "qk_rope_head_dim",
    "q_lora_rank", "o_groups", "o_lora_rank", "n_routed_experts", "moe_intermediate_size", "compress_ratios",
)


def required_keys(model_type: str) -> tuple[str, ...]:
    return V4_REQUIRED_KEYS if model_type in ("deepseek_v4", "deepseek_v41") else REQUIRED_KEYS


# Every numeric key the model reads, with its smallest legal value (None: may be absent or null).
# ints refuse bools and floats ("2" or 2.0 for a layer count is a broken file, not a number to coerce).
_INT_MIN = {
    "vocab_size": 1, "hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1, "kv_lora_rank": 1,
    "qk_nope_head_dim": 1, "qk_rope_head_dim": 1, "v_head_dim": 1, "intermediate_size": 0,
    "moe_intermediate_size": 0, "num_key_value_heads": 1, "q_lora_rank": 1, "n_routed_experts": 1,
    "n_shared_experts": 0, "num_experts_per_tok": 1, "n_group": 1, "topk_group": 1, "moe_layer_freq": 1,
    "first_k_dense_replace": 0, "max_position_embeddings": 1, "bos_token_id": 0, "num_nextn_predict_layers": 0,
    "index_n_heads": 1, "index_head_dim": 1, "index_topk": 1, "head_dim": 1, "o_groups": 1, "o_lora_rank": 1,
    "sliding_window": 1, "hc_mult": 1, "hc_sinkhorn_iters": 1, "num_hash_layers": 0,
}
_MAX_DIM = 2**31
# Real-valued keys: int or float, strictly positive (swiglu_limit 0 means "no clamp").
_POSITIVE = ("routed_scaling_factor", "rms_norm_eps", "rope_theta", "compress_rope_theta", "hc_eps")
_BOOLS = ("norm_topk_prob", "attention_bias", "tie_word_embeddings")
_ROPE_NUMBERS = ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "original_max_position_embeddings")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and v == v and v not in (float("inf"), float("-inf"))



def validate(cfg, source: str = "config.json") -> None:
    """Raise ConfigError naming the first key of `cfg` (a ModelConfig) whose type or range is wrong."""
    def bad(key, why):
        raise ConfigError(f"{source}: key {key!r} = {getattr(cfg, key)!r}: {why}")

    _validate_types(cfg, bad, source)
    if cfg.topk_method not in TOPK_METHODS:
        bad("topk_method", f"must be one of {', '.join(TOPK_METHODS)}")
    if cfg.scoring_func not in SCORING_FUNCS:
        bad("scoring_func", f"must be one of {', '.join(SCORING_FUNCS)}")
    if cfg.qk_rope_head_dim % 2:
        bad("qk_rope_head_dim", "must be even: RoPE rotates pairs of dimensions")
    if cfg.num_key_value_heads and cfg.num_attention_heads % cfg.num_key_value_heads:
        bad("num_key_value_heads", f"must divide num_attention_heads ({cfg.num_attention_heads})")
    if cfg.n_routed_experts:
        if not cfg.moe_intermediate_size:
            bad("moe_intermediate_size", "MoE layers need a positive moe_intermediate_size")
        if not 1 <= cfg.num_experts_per_tok <= cfg.n_routed_experts:
            bad("num_experts_per_tok", f"must be in 1..n_routed_experts ({cfg.n_routed_experts})")
        if cfg.n_routed_experts % cfg.num_groups:
            bad("n_group", f"must divide n_routed_experts ({cfg.n_routed_experts})")
        if not 1 <= cfg.num_topk_groups <= cfg.num_groups:
            bad("topk_group", f"must be in 1..n_group ({cfg.num_groups})")
        if cfg.topk_method == "noaux_tc" and cfg.n_routed_experts // cfg.num_groups < 2:
            bad("n_group", "noaux_tc scores a group by its top-2 experts: need >= 2 experts per group")
        reachable = cfg.num_topk_groups * (cfg.n_routed_experts // cfg.num_groups)
        if cfg.num_experts_per_tok > reachable:
            bad("num_experts_per_tok", f"must be <= topk_group x experts per group ({reachable}): routing "
                "picks experts only inside the chosen groups")
    elif cfg.intermediate_size < 1:
        bad("intermediate_size", "a model without routed experts needs a positive intermediate_size")
    if cfg.uses_dsa:
        _validate_dsa(cfg, bad)
    if cfg.model_type == "deepseek_v4":
        _validate_v4(cfg, bad)
    if cfg.moe_layer_freq < 1:
        bad("moe_layer_freq", "must be >= 1")
    qc = cfg.quantization_config
    if qc is not None:
        if not isinstance(qc, dict):
            bad("quantization_config", "must be an object or null")
        method = qc.get("quant_method")
        # mlx-lm mirrors its own `quantization` dict here (bits, no quant_method): not a source format.
        if method != "fp8" and not (method is None and "bits" in qc):
            raise ConfigError(
                f"{source}: quantization_config.quant_method {method!r} "
                "is not supported; mlxseek reads DeepSeek's 'fp8' block format"
            )
        bs = qc.get("weight_block_size") if method == "fp8" else [1, 1]
        if not (isinstance(bs, list) and len(bs) == 2 and all(_is_int(b) and b > 0 for b in bs)):
            bad("quantization_config", f"weight_block_size {bs!r} must be two positive integers [rows, cols]")

def _validate_types(cfg, bad, source: str) -> None:
    for key, lo in _INT_MIN.items():
        v = getattr(cfg, key)
        if v is None and key not in required_keys(cfg.model_type):
            continue
        if not _is_int(v) or v < lo:
            bad(key, "must be a positive integer" if lo else "must be a non-negative integer")
        if v >= _MAX_DIM:
            bad(key, f"must be below 2**31 ({_MAX_DIM}): MLX array dimensions are 32-bit")
    for key in _POSITIVE:
        v = getattr(cfg, key)
        if v is not None and not (_is_number(v) and v > 0):
            bad(key, "must be a positive number")
    if cfg.swiglu_limit is not None and not (_is_number(cfg.swiglu_limit) and cfg.swiglu_limit >= 0):
        bad("swiglu_limit", "must be a non-negative number (0: no clamp)")
    for key in _BOOLS:
        if not isinstance(getattr(cfg, key), bool):
            bad(key, "must be true or false")
    for key in ("topk_method", "scoring_func", "hidden_act"):
        if not isinstance(getattr(cfg, key), str):
            bad(key, "must be a string")
    e = cfg.eos_token_id
    ids = e if isinstance(e, list) else [] if e is None else [e]
    if not all(_is_int(i) and 0 <= i for i in ids):
        bad("eos_token_id", "must be a token id (a non-negative integer), a list of them, or null")
    r = cfg.rope_scaling
    if r is not None and not isinstance(r, dict):
        bad("rope_scaling", "must be an object or null")
    for k in _ROPE_NUMBERS if r else ():
        lo_ok = (lambda v: v >= 0) if k.startswith("mscale") else (lambda v: v > 0)  # mscale 0: no scaling
        if r.get(k) is not None and not (_is_number(r[k]) and lo_ok(r[k])):
            bad("rope_scaling", f"rope_scaling.{k} = {r[k]!r} must be a {'non-negative' if k.startswith('mscale') else 'positive'} number")
    if cfg.quantization is not None and not isinstance(cfg.quantization, dict):
        bad("quantization", "must be an object or null")
    # Kept in `extra`, read by tools (info prints them): HF's own types.
    arch, torch_dtype = cfg.extra.get("architectures"), cfg.extra.get("torch_dtype")
    if arch is not None and not (isinstance(arch, list) and arch and all(isinstance(a, str) for a in arch)):
        raise ConfigError(f"{source}: key 'architectures' = {arch!r}: must be a list of class names")
    if torch_dtype is not None and not isinstance(torch_dtype, str):
        raise ConfigError(f"{source}: key 'torch_dtype' = {torch_dtype!r}: must be a dtype name such as \"bfloat16\"")

def _validate_dsa(cfg, bad) -> None:
    for key in ("index_n_heads", "index_head_dim", "index_topk"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) <= 0:
            bad(key, "DeepSeek sparse attention needs a positive integer")
    if cfg.q_lora_rank is None:
        bad("q_lora_rank", "the DSA indexer reads the query's low-rank latent; V3.2 needs q_lora_rank")
    if cfg.index_head_dim < cfg.qk_rope_head_dim:
        bad("index_head_dim", f"must be >= qk_rope_head_dim ({cfg.qk_rope_head_dim}): its head starts with the rotary part")

def _validate_v4(cfg, bad) -> None:
    ratios = cfg.compress_ratios
    if not isinstance(ratios, list) or not all(isinstance(r, int) and r >= 0 for r in ratios):
        bad("compress_ratios", "must be a list of non-negative integers (0 sliding-only, 4 CSA, 128 HCA)")
    if len(ratios) < cfg.num_hidden_layers:
        bad("compress_ratios", f"needs one entry per layer (num_hidden_layers = {cfg.num_hidden_layers})")
    if not 0 < cfg.qk_rope_head_dim < cfg.head_dim or cfg.qk_rope_head_dim % 2:
        bad("qk_rope_head_dim", f"must be even and below head_dim ({cfg.head_dim}): RoPE rotates its trailing pairs")
    if (cfg.num_attention_heads * cfg.head_dim) % cfg.o_groups:
        bad("o_groups", "must divide num_attention_heads * head_dim (the grouped output projection splits heads)")
    if 4 in ratios[: cfg.num_hidden_layers] and not (cfg.index_head_dim or 0) > cfg.qk_rope_head_dim:
        bad("index_head_dim", "ratio-4 layers carry an indexer whose head must exceed qk_rope_head_dim")
    for key in ("sliding_window", "hc_mult", "hc_sinkhorn_iters"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            bad(key, "must be a positive integer")
    if not 0 <= cfg.num_hash_layers <= cfg.num_hidden_layers:
        bad("num_hash_layers", f"must be in 0..num_hidden_layers ({cfg.num_hidden_layers})")
    if cfg.dspark_target_layer_ids is not None:
        _validate_dspark(cfg, bad)


def _validate_dspark(cfg, bad) -> None:
    ids = cfg.dspark_target_layer_ids
    if not isinstance(ids, list) or not ids or not all(_is_int(i) and 0 <= i < cfg.num_hidden_layers for i in ids):
        bad("dspark_target_layer_ids", f"must be a non-empty list of layer indices in 0..{cfg.num_hidden_layers - 1}")
    for key in ("dspark_block_size", "dspark_markov_rank"):
        if not _is_int(getattr(cfg, key)) or getattr(cfg, key) < 1:
            bad(key, "must be a positive integer (a DSpark config sets it beside dspark_target_layer_ids)")
    noise = cfg.dspark_noise_token_id
    if not _is_int(noise) or not 0 <= noise < cfg.vocab_size:
        bad("dspark_noise_token_id", f"must be a token id below vocab_size ({cfg.vocab_size})")
