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
  stack_experts_mxfp4  V4 FP4 experts (int8 pairs + e8m0 scales) -> stacked mxfp4 weight/scales, bytes kept

Families whose official names differ from the HF layout have their own rename table below
(DeepSeek-V4: `V4_TOP_RENAMES` + `V4_BLOCK_RENAMES`), applied before RULES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Optional

import mlx.core as mx

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .fp4 import MXFP4, decode_e8m0, dequant_fp4, fp4_to_mxfp4
from .fp8 import dequant_block_fp8
from .quant_record import quant_params
from .v4_names import SCALE_SUFFIX
# V3 stores its FP8 block scales as floats, V4 as ue8m0 exponent bytes.
_SCALE_DTYPES = ("F32", "BF16", "F16", "F8_E8M0")


def _mtp_renames(cfg: ModelConfig) -> list[tuple[re.Pattern, str]]:
    n = cfg.mtp_layer_index
    return [
        (re.compile(rf"^model\.layers\.{n}\.(enorm|hnorm|eh_proj|shared_head|embed_tokens)\."), r"mtp.\1."),
        (re.compile(rf"^model\.layers\.{n}\."), "mtp.block."),
    ]


def _fp4_experts(cfg: ModelConfig, keys, source_of: dict) -> bool:
    """V4 releases declare FP4 experts with `expert_dtype: fp4`; each expert weight then has a scale."""
    return cfg.expert_dtype == "fp4" and all(k + SCALE_SUFFIX in source_of for k in keys)


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
    has_mtp: bool  # the checkpoint holds a drafter (V3/V4 MTP, or DSpark)
    quantization: dict = field(default_factory=dict)  # module path -> params, for weights imported packed
    dspark_stages: int = 0  # DSpark stages stored (`mtp.{s}.` prefixes), never num_nextn_predict_layers


def build_plan(keys: list[str], cfg: ModelConfig, *, rename: Optional[Callable[[str], str]] = None) -> Plan:
    """`rename`: the family's own names -> mlxseek paths, applied first (`models.families`: V4 and V4.1
    official names); None for families whose checkpoints use the HF layout."""
    renames = _mtp_renames(cfg)
    source_of: dict[str, str] = {}
    ignored = [re.compile(p) for p in cfg.ignored_checkpoint_keys]
    for k in keys:
        new = k
        if any(p.search(k) for p in ignored):
            source_of[k] = k  # kept by name so the loader sees it used (dropped below)
            continue
        if rename is not None:
            new = rename(k)
        for pat, repl in renames:
            if pat.search(new):
                new = pat.sub(repl, new, count=1)
                break
        if new in source_of:  # two stored tensors would fill one parameter: one would silently win
            raise CheckpointError(f"{k} and {source_of[new]} both map to {new}; config.json's num_hidden_layers "
                                  f"({cfg.num_hidden_layers}) or the checkpoint's names are wrong")
        source_of[new] = k
    targets, dropped, quantization = [], [], {}
    experts: dict[tuple[str, str, str], dict[int, str]] = {}
    kv_b: dict[str, list[str]] = {}
    for key in source_of:
        if any(p.search(key) for p in ignored):
            dropped.append(key)
            continue
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
        n = _expert_count(cfg, prefix)
        unexpected = sorted(e for e in by_e if e >= n)
        if unexpected or len(by_e) != n:
            # islice, not a set of range(n): n comes from config.json and may be absurd (10**12)
            missing = list(islice((e for e in range(n) if e not in by_e), 8))
            raise CheckpointError(
                f"{prefix}.mlp.experts.*.{proj}.{suffix}: expected experts 0..{n - 1} (config.json "
                f"n_routed_experts = {n}) but the checkpoint stores {len(by_e)}: missing {missing}, "
                f"unexpected {unexpected[:8]}"
            )
        out = f"{prefix}.mlp.switch_mlp.{proj}.{suffix}"
        sources = tuple(by_e[e] for e in sorted(by_e))
        if _fp4_experts(cfg, sources, source_of):  # MLX mxfp4 is the same encoding: keep the bytes
            module = out.rsplit(".", 1)[0]
            targets.append(Target("stack_experts_mxfp4", (out, f"{module}.scales"), sources))
            quantization[module] = dict(MXFP4)
        else:
            targets.append(Target("stack_experts", (out,), sources))
    for prefix, ks in sorted(kv_b.items()):
        suffixes = sorted(k.rsplit(".", 1)[1] for k in ks)
        outs = tuple(f"{prefix}.self_attn.{n}.{s}" for n in ("embed_q", "unembed_out") for s in suffixes)
        targets.append(Target("split_kv_b", outs, tuple(sorted(ks))))
    stages = dspark_stages(source_of) if cfg.has_dspark else 0
    has_mtp = stages > 0 or any(k.startswith("mtp.") and k not in dropped for k in source_of)
    return Plan(targets, dropped, source_of, has_mtp, quantization, stages)


def _expert_count(cfg: ModelConfig, prefix: str) -> int:
    """Routed experts of the block at `prefix`: V4.1's DSpark stages have their own (dspark_n_routed_experts)."""
    if prefix.startswith("dspark.") and cfg.dspark_n_routed_experts:
        return cfg.dspark_n_routed_experts
    return cfg.n_routed_experts or 0


DRAFTER_PREFIXES = ("mtp.", "dspark.")  # internal paths of a drafter: MTP (V3/V4) or DSpark


def with_drafter_stages(cfg: ModelConfig, plan: Plan) -> ModelConfig:
    """cfg with the DSpark stage count the checkpoint stores (what builds the drafter), else unchanged."""
    return cfg.replace(dspark_stages=plan.dspark_stages) if plan.dspark_stages else cfg


def dspark_stages(source_of: dict) -> int:
    """How many DSpark stages the checkpoint stores, from its `mtp.{s}.` prefixes; a gap (a whole stage
    missing) is a CheckpointError naming the stage."""
    found: dict[int, str] = {}
    for new, old in source_of.items():
        m = re.match(r"^dspark\.stages\.(\d+)\.", new)
        if m:
            found.setdefault(int(m[1]), old)
    if not found:
        return 0
    missing = [s for s in range(max(found) + 1) if s not in found]
    if missing:
        raise CheckpointError(f"the DSpark drafter stores stages {sorted(found)} but no key of stage {missing[0]} "
                              f"(mtp.{missing[0]}.*): the checkpoint is incomplete; re-download its shards, or "
                              "convert with --drop-drafter to leave the drafter out")
    return len(found)


class Materializer:
    """Turns Targets into lazy arrays read from a WeightStore, in the compute dtype."""

    def __init__(self, store, cfg: ModelConfig, plan: Plan, dtype=mx.float32,
                 keep_fp32: Callable[[str], bool] = lambda k: False):
        self.store, self.cfg, self.plan, self.dtype, self.keep_fp32 = store, cfg, plan, dtype, keep_fp32
        self.used_scales: set[str] = set()

    def _scale_of(self, key: str) -> tuple[Optional[mx.array], Optional[str]]:
        """The checkpoint's scale for renamed weight `key` (V3 `weight_scale_inv`, V4 `scale`) and its dtype."""
        scale_key = self.plan.source_of.get(key + SCALE_SUFFIX)
        if scale_key is None:
            return None, None
        self.used_scales.add(scale_key)
        kind = self.store.dtype(scale_key)
        if kind not in _SCALE_DTYPES:  # an integer here would be read as scale values, silently wrong
            raise CheckpointError(f"{self.store.file_of(scale_key)}: scale {scale_key} is {kind}; block scales "
                                  f"are {' or '.join(_SCALE_DTYPES)}; re-download or re-convert this shard")
        return self.store.get(scale_key), kind

    def fetch(self, key: str) -> mx.array:
        """Read renamed `key` from its checkpoint key, dequantizing DeepSeek FP8 blocks / V4 FP4 in float32."""
        src = self.plan.source_of[key]
        w, kind = self.store.get(src), self.store.dtype(src)
        if kind not in ("F8_E4M3", "I8"):
            return w
        scale, scale_kind = self._scale_of(key)
        if kind == "I8":  # V4 FP4 e2m1 pairs when a scale comes with it, else a plain int8 tensor
            return w if scale is None else dequant_fp4(w, scale, key=src)
        if scale_kind == "F8_E8M0":  # V4's ue8m0 block scales: powers of two stored as exponent bytes
            scale = decode_e8m0(scale)
        if scale is None:
            v4 = not src.startswith("model.")  # official V4 names: the scale is `X.scale` (V3: X.weight_scale_inv)
            expected = src.removesuffix("weight") + "scale" if v4 else src + SCALE_SUFFIX
            raise CheckpointError(f"{self.store.file_of(src)}: {src} is float8 but {expected} is missing")
        if self.cfg.fp8_block_size is None:
            raise ConfigError(
                f"{self.store.folder / 'config.json'}: {src} is float8 but config.json has no "
                "quantization_config.weight_block_size"
            )
        return dequant_block_fp8(w, scale, self.cfg.fp8_block_size, key=src)

    def _stack_mxfp4(self, t: Target) -> dict[str, mx.array]:
        """V4 FP4 experts -> stacked mxfp4 (E, M, N/8) uint32 weight and (E, M, N/32) uint8 scales."""
        ws, ss = [], []
        for key in t.sources:
            src = self.plan.source_of[key]
            scale_key = self.plan.source_of[key + SCALE_SUFFIX]
            if self.store.dtype(src) != "I8" or self.store.dtype(scale_key) != "F8_E8M0":
                raise CheckpointError(
                    f"{self.store.file_of(src)}: config.json declares expert_dtype fp4, but {src} is "
                    f"{self.store.dtype(src)} with a {self.store.dtype(scale_key)} scale (expected I8 + F8_E8M0)"
                )
            self.used_scales.add(scale_key)
            w, s = fp4_to_mxfp4(self.store.get(src), self.store.get(scale_key), key=src)
            ws.append(w)
            ss.append(s)
        return {t.outputs[0]: mx.stack(ws), t.outputs[1]: mx.stack(ss)}

    def _cast(self, name: str, a: mx.array) -> mx.array:
        if not mx.issubdtype(a.dtype, mx.floating):
            return a  # packed quantized weights, token tables
        return a.astype(mx.float32 if self.keep_fp32(name) else self.dtype)

    def materialize(self, t: Target) -> dict[str, mx.array]:
        if t.op == "copy":
            out = {t.outputs[0]: self.fetch(t.sources[0])}
        elif t.op == "stack_experts":
            out = {t.outputs[0]: mx.stack([self.fetch(s) for s in t.sources])}
        elif t.op == "stack_experts_mxfp4":
            out = self._stack_mxfp4(t)
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
