"""ModelConfig: one frozen dataclass for every DeepSeek variant, keyed by HF `config.json` names.

Unknown keys are kept in `extra` so `to_dict()` round-trips the file. Derived values are properties.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")

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

# Defaults differ by family where DeepSeek's own configuration_deepseek.py files differ.
_FAMILY_DEFAULTS = {
    "deepseek_v2": {"topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": False},
    "deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True},
}


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
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
    quantization_config: Optional[dict] = None  # HF: the official FP8 block format
    quantization: Optional[dict] = None  # MLX: packed affine groups (mlx-lm's key)
    extra: dict = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {mt!r}; mlxseek supports "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        missing = [k for k in REQUIRED_KEYS if d.get(k) is None]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = dict(_FAMILY_DEFAULTS[mt])
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
        d = {k: v for k, v in d.items() if v is not None}
        d.update(self.extra)
        return d

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def validate(self, source: str = "config.json") -> None:
        def bad(key, why):
            raise ConfigError(f"{source}: key {key!r} = {getattr(self, key)!r}: {why}")

        for key in REQUIRED_KEYS:
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                bad(key, "must be a positive integer")
        if self.topk_method not in TOPK_METHODS:
            bad("topk_method", f"must be one of {', '.join(TOPK_METHODS)}")
        if self.scoring_func not in SCORING_FUNCS:
            bad("scoring_func", f"must be one of {', '.join(SCORING_FUNCS)}")
        if self.n_routed_experts:
            if not self.moe_intermediate_size:
                bad("moe_intermediate_size", "MoE layers need a positive moe_intermediate_size")
            if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
                bad("num_experts_per_tok", f"must be in 1..n_routed_experts ({self.n_routed_experts})")
            if self.n_routed_experts % self.num_groups:
                bad("n_group", f"must divide n_routed_experts ({self.n_routed_experts})")
            if not 1 <= self.num_topk_groups <= self.num_groups:
                bad("topk_group", f"must be in 1..n_group ({self.num_groups})")
            if self.topk_method == "noaux_tc" and self.n_routed_experts // self.num_groups < 2:
                bad("n_group", "noaux_tc scores a group by its top-2 experts: need >= 2 experts per group")
        if self.moe_layer_freq < 1:
            bad("moe_layer_freq", "must be >= 1")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            bad("rope_scaling", "must be an object or null")
        qc = self.quantization_config
        if qc is not None:
            method = qc.get("quant_method")
            # mlx-lm mirrors its own `quantization` dict here (bits, no quant_method): not a source format.
            if method != "fp8" and not (method is None and "bits" in qc):
                raise ConfigError(
                    f"{source}: quantization_config.quant_method {method!r} "
                    "is not supported; mlxseek reads DeepSeek's 'fp8' block format"
                )

    # ---- derived ------------------------------------------------------------------------------
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
