"""ModelConfig: one frozen dataclass for every DeepSeek variant, keyed by HF `config.json` names.

Unknown keys are kept in `extra` so `to_dict()` round-trips the file. Derived values are properties.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config_checks import (
    FAMILY_DEFAULTS,
    REQUIRED_KEYS,
    SCORING_FUNCS,
    SUPPORTED_MODEL_TYPES,
    TOPK_METHODS,
    V4_REQUIRED_KEYS,
    required_keys,
    validate,
)
from .errors import ConfigError

__all__ = ["ModelConfig", "REQUIRED_KEYS", "SCORING_FUNCS", "SUPPORTED_MODEL_TYPES", "TOPK_METHODS", "V4_REQUIRED_KEYS",
           "required_keys"]


# config.json keys spelled two ways in the wild -> the field that reads them. The alias stays in `extra`, so
# the file round-trips as written. engram_pad_token_id: DeepSeek-V4.1-Flash's released text_config (as vLLM,
# sglang and llama.cpp read it); engram_pad_id: transformers' port at 0a2080b4 and DeepSeek's inference code.
ALIASES = {"engram_pad_token_id": "engram_pad_id"}


def _aliased(d: dict, source: str) -> dict:
    out = {}
    for alias, name in ALIASES.items():
        if d.get(alias) is None:
            continue
        if d.get(name) is not None and d[name] != d[alias]:
            raise ConfigError(f"{source}: {alias} = {d[alias]} and {name} = {d[name]} name the same setting; "
                              "keep one")
        out[name] = d[alias]
    return out


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_lora_rank: Optional[int] = None  # MLA (V2/V3/V3.2) only; required per family, see required_keys()
    qk_nope_head_dim: Optional[int] = None
    qk_rope_head_dim: Optional[int] = None
    v_head_dim: Optional[int] = None
    intermediate_size: int = 0
    moe_intermediate_size: int = 0
    num_key_value_heads: Optional[int] = None
    q_lora_rank: Optional[int] = None
    n_routed_experts: Optional[int] = None
    n_shared_experts: Optional[int] = None
    num_experts_per_tok: int = 1
    routed_scaling_factor: float = 1.0
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    norm_topk_prob: bool = False
    n_group: Optional[int] = None
    topk_group: Optional[int] = None
    moe_layer_freq: int = 1
    first_k_dense_replace: int = 0
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = None
    eos_token_id: Any = None
    num_nextn_predict_layers: int = 0
    index_n_heads: Optional[int] = None  # DSA lightning indexer (deepseek_v32)
    index_head_dim: Optional[int] = None
    index_topk: Optional[int] = None
    head_dim: Optional[int] = None  # DeepSeek-V4 (deepseek_v4) from here on
    o_groups: Optional[int] = None
    o_lora_rank: Optional[int] = None
    sliding_window: Optional[int] = None
    compress_ratios: Optional[list] = None  # per layer (MTP layers appended): 0 sliding, 4 CSA, 128 HCA
    compress_rope_theta: Optional[float] = None
    hc_mult: Optional[int] = None
    hc_sinkhorn_iters: Optional[int] = None
    hc_eps: Optional[float] = None
    num_hash_layers: Optional[int] = None
    swiglu_limit: Optional[float] = None
    kv_source_layer_ids: Optional[list] = None  # DeepSeek-V4.1 (deepseek_v41) from here on: CSA2 sources
    index_source_layer_ids: Optional[list] = None
    candidate_source_layer_id: Optional[int] = None  # the two-level top-k's first level (-1: none)
    candidate_topk_blocks: Optional[int] = None
    candidate_block_size: Optional[int] = None
    gate_temp: Optional[float] = None
    engram_layer_ids: Optional[list] = None  # Engram n-gram memory, read before attention at these layers
    engram_num_embeddings: Optional[list] = None  # rows of each layer's table
    engram_vocab_size: Optional[int] = None  # the primes of the bucket ranges are drawn above it
    engram_compressed_vocab_size: Optional[int] = None
    engram_max_ngram_size: Optional[int] = None
    engram_n_heads: Optional[int] = None
    engram_head_dim: Optional[int] = None
    engram_pad_id: Optional[int] = None  # the released config.json spells it engram_pad_token_id: ALIASES
    dspark_block_size: Optional[int] = None  # DSpark block drafter (V4-Flash-0731, V4-Pro-0813, V4-Flash-DSpark)
    dspark_markov_rank: Optional[int] = None
    dspark_target_layer_ids: Optional[list] = None
    dspark_noise_token_id: Optional[int] = None
    # V4.1's drafter: its own MoE sizes (None: the backbone's). These are the released text_config's names
    # (transformers' DeepseekV41TextConfig, vLLM's deepseek_v41 MoE: 128 and 3); DeepSeek's own inference
    # ModelArgs says dspark_n_activated_experts, but that file is not a config.json.
    dspark_n_routed_experts: Optional[int] = None
    dspark_num_experts_per_tok: Optional[int] = None
    # Not a config.json key: the DSpark stages the checkpoint stores, counted from its `mtp.{s}.` prefixes at
    # load (num_nextn_predict_layers still says 1 in the releases); to_dict() leaves it out.
    dspark_stages: Optional[int] = None
    quantization_config: Optional[dict] = None  # HF: the official FP8 block format
    quantization: Optional[dict] = None  # MLX: packed affine groups (mlx-lm's key)
    extra: dict = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        mt = d.get("model_type")
        if isinstance(d.get("text_config"), dict):
            # V4.1's composite config.json: the text model's keys live in text_config; the rest (vision_config,
            # image_token_id, quantization_config) stays at the top level and round-trips through `extra`.
            d = {**{k: v for k, v in d.items() if k != "text_config"}, **d["text_config"], "model_type": mt,
                 "_composite_keys": sorted(d["text_config"])}
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {mt!r}; mlxseek supports "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        missing = [k for k in required_keys(mt) if d.get(k) is None]
        if mt == "deepseek_v4" and "compress_ratios" in missing and "layer_types" in d:
            raise ConfigError(f"{source}: a transformers-saved V4 config (layer_types, rope_parameters) is not "
                              "supported; use the official config.json (compress_ratios, num_hash_layers, rope_scaling)")
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = dict(FAMILY_DEFAULTS[mt])
        kwargs.update(_aliased(d, source))
        # null means "absent" except for q_lora_rank, where null selects the direct q_proj (V2-Lite).
        kwargs.update({k: v for k, v in d.items() if k in names and (v is not None or k == "q_lora_rank")})
        extra = {k: v for k, v in d.items() if k not in names}
        cfg = cls(**kwargs, extra=extra)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"{path}: not found; a model folder needs a config.json")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {k: v for k, v in d.items() if v is not None and k != "dspark_stages"}
        d.update(self.extra)
        text_keys = d.pop("_composite_keys", None)
        if text_keys is not None:  # back to the composite layout it was read from
            d["text_config"] = {k: d.pop(k) for k in text_keys if k in d and k != "model_type"}
        return d

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def validate(self, source: str = "config.json") -> None:
        """Types and ranges of every key the model reads; ConfigError names the key (see config_checks)."""
        validate(self, source)

    # ---- derived ------------------------------------------------------------------------------
    def compress_ratio(self, idx: int) -> int:
        """V4 layer `idx`'s KV compression: 0 sliding window only, 4 CSA (+ indexer), 128 HCA.
        MTP layers (idx >= num_hidden_layers) read their entries appended after the main stack's."""
        if idx >= len(self.compress_ratios):
            raise ConfigError(f"config.json: compress_ratios has {len(self.compress_ratios)} entries; layer {idx} "
                              "(an MTP layer) needs one more: append its ratio (0 in DeepSeek's releases)")
        return self.compress_ratios[idx]

    @property
    def uses_csa2(self) -> bool:
        """DeepSeek-V4.1: cross-layer compressed KV (CSA2), lagged mHC and Engram memory."""
        return self.model_type == "deepseek_v41"

    @property
    def candidate_source(self) -> int:
        """V4.1's two-level top-k layer: `candidate_source_layer_id`, else the last KV source; < 0 is off."""
        if self.candidate_source_layer_id is not None:
            return self.candidate_source_layer_id
        return max(self.kv_source_layer_ids or [-1])

    @property
    def is_v4_family(self) -> bool:
        """V4 and V4.1: DeepSeek's official V4 key names and ue8m0 `X.scale` tensors, sqrtsoftplus routing
        (V4: hash-routed first layers) and SwiGLU-clamped experts."""
        return self.model_type in ("deepseek_v4", "deepseek_v41")

    @property
    def ignored_checkpoint_keys(self) -> tuple[str, ...]:
        """Regexes of stored keys the text model never loads as parameters. V4.1: the vision tower and
        aligner, the image delimiters, image-token routing biases (`gate.bias_vl`), a drafter config.json does
        not describe (`mtp.*`), and the Engram tables, which stay on disk (loading/engram.py)."""
        if self.model_type != "deepseek_v41":
            return ()
        # A checkpoint whose config.json describes no DSpark drafter: its `mtp.*` keys are not loaded.
        drafter = () if self.has_dspark else (r"^mtp\.",)
        return drafter + (r"^(vision|aligner)\.", r"^image_(start|end|newline)$", r"\.gate\.bias_vl$",
                r"\.engram\.embed\.(weight|scale)$")

    def is_hash_layer(self, idx: int) -> bool:
        """V4: the first `num_hash_layers` MoE layers pick experts by token id (tid2eid), not by score."""
        return idx < (self.num_hash_layers or 0)

    @property
    def routed_scale_after_norm(self) -> bool:
        """The router multiplies by routed_scaling_factor after normalising the top-k weights (V2: before)."""
        return self.model_type != "deepseek_v2"

    @property
    def uses_dsa(self) -> bool:
        """DeepSeek Sparse Attention (V3.2): every MLA layer has a lightning indexer and attends top-k keys."""
        return self.model_type == "deepseek_v32"

    @property
    def q_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_groups(self) -> int:
        return self.n_group or 1

    @property
    def num_topk_groups(self) -> int:
        return self.topk_group or 1

    @property
    def mtp_layer_index(self) -> int:
        # DeepSeek stores MTP modules right after the main stack: model.layers.{num_hidden_layers}.
        return self.num_hidden_layers

    @property
    def has_dspark(self) -> bool:
        """config.json describes a DSpark block drafter (its target layers are the one key it cannot do without)."""
        return self.is_v4_family and self.dspark_target_layer_ids is not None

    @property
    def fp8_block_size(self) -> Optional[tuple[int, int]]:
        if not self.quantization_config or self.quantization_config.get("quant_method") != "fp8":
            return None
        bs = self.quantization_config.get("weight_block_size")
        if not (isinstance(bs, (list, tuple)) and len(bs) == 2):
            raise ConfigError(
                "config.json: quantization_config.weight_block_size must be a [rows, cols] pair"
            )
        return int(bs[0]), int(bs[1])

    def is_moe_layer(self, idx: int) -> bool:
        return (
            self.n_routed_experts is not None
            and idx >= self.first_k_dense_replace
            and idx % self.moe_layer_freq == 0
        )

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        if e is None:
            return []
        return list(e) if isinstance(e, (list, tuple)) else [e]

    # ---- derived, for the tools that size a config without building a model (tools/census, estimate, info)
    @property
    def is_v4(self) -> bool:
        """DeepSeek-V4: one shared KV head, compressed caches and mHC instead of MLA's latent (V2/V3/V3.2)."""
        return self.model_type == "deepseek_v4"

    @property
    def expert_dtype(self) -> Optional[str]:
        """"fp4" where the release stores routed experts as FP4 (V4: top level or in quantization_config)."""
        return self.extra.get("expert_dtype") or (self.quantization_config or {}).get("expert_dtype")

    @property
    def routed_expert_fraction(self) -> float:
        """The share of an MoE layer's routed experts one token runs: top-k / E (0.0 without experts)."""
        return self.num_experts_per_tok / self.n_routed_experts if self.n_routed_experts else 0.0

    def has_correction_bias(self, idx: int) -> bool:
        """Whether MoE layer `idx`'s router stores `e_score_correction_bias`: noaux_tc MLA, V4's non-hash layers."""
        return not self.is_hash_layer(idx) if self.is_v4 else self.topk_method == "noaux_tc"
