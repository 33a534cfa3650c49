"""The one key map: checkpoint names -> mlxseek parameter paths, with the layout transforms.

Sources are an official HF DeepSeek folder (per-expert keys, `kv_b_proj`, FP8 blocks, the MTP layer at
`model.layers.{num_hidden_layers}`) or an mlx-lm/mlx-community folder (already stacked and split).
Both map to one internal layout (mlx-lm's, plus `mtp.*`), through a plan of Targets that the loader
materialises all at once and the converter one tensor at a time.

Operations, applied once at load/convert time and never in a forward pass:
  keep_mtp      model.layers.{N}.{enorm,hnorm,eh_proj,shared_head}.* -> mtp.*, the block -> mtp.block.*
  dequant_fp8   an e4m3 `weight` with its `weight_scale_inv` -> a float weight (any op's input)
  stack_experts mlp.experts.{e}.{gate,up,down}_proj.* -> mlp.switch_mlp.{gate,up,down}_proj.* (E, out, in)
  split_kv_b    self_attn.kv_b_proj -> self_attn.embed_q (H, R, Dn) + self_attn.unembed_out (H, Dv, R)
  drop          precomputed rotary buffers; the MTP's copy of the shared embedding
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .fp8 import dequant_block_fp8

SCALE_SUFFIX = "_scale_inv"


def _mtp_renames(cfg: ModelConfig) -> list[tuple[re.Pattern, str]]:
    n = cfg.mtp_layer_index
    return [
        (re.compile(rf"^model\.layers\.{n}\.(enorm|hnorm|eh_proj|shared_head|embed_tokens)\."), r"mtp.\1."),
        (re.compile(rf"^model\.layers\.{n}\."), "mtp.block."),
    ]


# (pattern on the renamed key, operation). First match wins.
RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"rotary_emb\.inv_freq$"), "drop"),  # recomputed from config.json
    (re.compile(r"^mtp\.embed_tokens\.weight$"), "drop"),  # V3 report 2.2: MTP shares the main embedding
    (re.compile(r"\.weight_scale_inv$"), "scale"),  # consumed by dequant_fp8 of its weight
    (re.compile(r"^(.*)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|scales|biases)$"), "stack_experts"),
    (re.compile(r"^(.*)\.self_attn\.kv_b_proj\.(weight|scales|biases)$"), "split_kv_b"),
    (re.compile(r".*"), "copy"),
]


@dataclass(frozen=True)
class Target:
    op: str  # copy | stack_experts | split_kv_b
    outputs: tuple[str, ...]  # internal parameter paths this target produces
    sources: tuple[str, ...]  # checkpoint keys it reads (FP8 scales are implied)


@dataclass
class Plan:
    targets: list[Target]
    dropped: list[str]
    source_of: dict[str, str]  # renamed key -> original checkpoint key
    has_mtp: bool


def build_plan(keys: list[str], cfg: ModelConfig) -> Plan:
    renames = _mtp_renames(cfg)
    source_of: dict[str, str] = {}
    for k in keys:
        new = k
        for pat, repl in renames:
            if pat.search(new):
                new = pat.sub(repl, new, count=1)
                break
        source_of[new] = k
    targets, dropped = [], []
    experts: dict[tuple[str, str, str], dict[int, str]] = {}
    kv_b: dict[str, list[str]] = {}
    for key in source_of:
        for pat, op in RULES:
            m = pat.search(key)
            if m:
                break
        if op == "drop":
            dropped.append(key)
        elif op == "stack_experts":
            experts.setdefault((m[1], m[3], m[4]), {})[int(m[2])] = key
        elif op == "split_kv_b":
            kv_b.setdefault(m[1], []).append(key)
        elif op == "copy":
            targets.append(Target("copy", (key,), (key,)))
    for (prefix, proj, suffix), by_e in sorted(experts.items()):
        if sorted(by_e) != list(range(cfg.n_routed_experts or 0)):
            missing = sorted(set(range(cfg.n_routed_experts or 0)) - set(by_e))
            raise CheckpointError(
                f"{prefix}.mlp.experts.*.{proj}.{suffix}: expected experts 0..{(cfg.n_routed_experts or 0) - 1} "
                f"(n_routed_experts), missing {missing[:8]}, unexpected {sorted(set(by_e) - set(range(cfg.n_routed_experts or 0)))[:8]}"
            )
        out = f"{prefix}.mlp.switch_mlp.{proj}.{suffix}"
        targets.append(Target("stack_experts", (out,), tuple(by_e[e] for e in sorted(by_e))))
    for prefix, ks in sorted(kv_b.items()):
        suffixes = sorted(k.rsplit(".", 1)[1] for k in ks)
        outs = tuple(f"{prefix}.self_attn.{n}.{s}" for n in ("embed_q", "unembed_out") for s in suffixes)
        targets.append(Target("split_kv_b", outs, tuple(sorted(ks))))
    has_mtp = any(k.startswith("mtp.") and k not in dropped for k in source_of)
    return Plan(targets, dropped, source_of, has_mtp)


class Materializer:
    """Turns Targets into lazy arrays read from a WeightStore, in the compute dtype."""

    def __init__(self, store, cfg: ModelConfig, plan: Plan, dtype=mx.float32,
                 keep_fp32: Callable[[str], bool] = lambda k: False):
        self.store, self.cfg, self.plan, self.dtype, self.keep_fp32 = store, cfg, plan, dtype, keep_fp32
        self.used_scales: set[str] = set()

    def fetch(self, key: str) -> mx.array:
        """Read renamed `key` from its checkpoint key, dequantizing DeepSeek FP8 blocks in float32."""
        src = self.plan.source_of[key]
        w = self.store.get(src)
        if self.store.dtype(src) != "F8_E4M3":
            return w
        scale_key = src + SCALE_SUFFIX
        if scale_key not in self.store:
            raise CheckpointError(f"{self.store.file_of(src)}: {src} is float8 but {scale_key} is missing")
        if self.cfg.fp8_block_size is None:
            raise ConfigError(
                f"{self.store.folder / 'config.json'}: {src} is float8 but config.json has no "
                "quantization_config.weight_block_size"
            )
        self.used_scales.add(scale_key)
        return dequant_block_fp8(w, self.store.get(scale_key), self.cfg.fp8_block_size, key=src)

    def _cast(self, name: str, a: mx.array) -> mx.array:
        if not mx.issubdtype(a.dtype, mx.floating):
            return a  # packed quantized weights, token tables
        return a.astype(mx.float32 if self.keep_fp32(name) else self.dtype)

    def materialize(self, t: Target) -> dict[str, mx.array]:
        if t.op == "copy":
            out = {t.outputs[0]: self.fetch(t.sources[0])}
        elif t.op == "stack_experts":
            out = {t.outputs[0]: mx.stack([self.fetch(s) for s in t.sources])}
        else:
            out = self._split_kv_b(t)
        return {k: self._cast(k, v) for k, v in out.items()}

    def _split_kv_b(self, t: Target) -> dict[str, mx.array]:
        cfg = self.cfg
        by_suffix = {k.rsplit(".", 1)[1]: k for k in t.sources}
        prefix = by_suffix["weight"].rsplit(".", 2)[0]  # ...self_attn
        w = self.fetch(by_suffix["weight"])
        qp = quant_params(cfg, f"{prefix}.kv_b_proj") if "scales" in by_suffix else None
        if qp:
            biases = self.fetch(by_suffix["biases"]) if "biases" in by_suffix else None
            w = mx.dequantize(w, self.fetch(by_suffix["scales"]), biases, **qp)
        H, Dn = cfg.num_attention_heads, cfg.qk_nope_head_dim
        w = w.reshape(H, Dn + cfg.v_head_dim, -1)  # (H, Dn+Dv, R)
        parts = {"embed_q": mx.contiguous(w[:, :Dn, :].swapaxes(-1, -2)), "unembed_out": mx.contiguous(w[:, Dn:, :])}
        out = {}
        for name, p in parts.items():
            if qp:  # keep the source's precision choice: requantize with the recorded parameters
                q = mx.quantize(p, **qp)
                out.update({f"{prefix}.{name}.weight": q[0], f"{prefix}.{name}.scales": q[1]})
                if len(q) > 2:
                    out[f"{prefix}.{name}.biases"] = q[2]
            else:
                out[f"{prefix}.{name}.weight"] = p
        return out


def quant_params(cfg: ModelConfig, path: str) -> Optional[dict]:
    """Recorded (never guessed) quantization parameters for module `path`, or None if it is not quantized."""
    q = cfg.quantization
    if not q:
        return None
    per = q.get(path, True)
    if per is False:
        return None
    src = per if isinstance(per, dict) else q
    try:
        return {"group_size": int(src["group_size"]), "bits": int(src["bits"]), "mode": src.get("mode", "affine")}
    except KeyError as e:
        raise ConfigError(f"config.json: quantization entry for {path!r} lacks {e.args[0]!r}") from None
