"""The inverse of DeepSeek-V4's rename table (`checkpoint/v4_names.py`): a float mlxseek V4 model (April
layout: backbone + MTP head) -> DeepSeek's official tensor names and dtypes, so a model trained in MLX
(`benchmarks/train_tiny_v4.py`) is published as the release stores it and read back by the same loader.

  stack_experts  mlp.switch_mlp.{gate,up,down}_proj.weight (E, out, in) -> ffn.experts.{e}.w{1,3,2}.weight
  dtypes         mHC, sinks, compressor `ape` and the router bias float32 (as released), `tid2eid` int32,
                 every other tensor bf16
"""

from __future__ import annotations

import re
from collections import OrderedDict

import mlx.core as mx
from mlx.utils import tree_flatten

from ..checkpoint.v4_names import rename_by_tables
from ..errors import ConversionError

# internal -> official, top level (first match wins; True: the rest is a block path, renamed by _BLOCK)
_TOP: list[tuple[re.Pattern, str, bool]] = [
    (re.compile(r"^model\.embed_tokens\.weight$"), "embed.weight", False),
    (re.compile(r"^lm_head\.weight$"), "head.weight", False),
    (re.compile(r"^model\.norm\.weight$"), "norm.weight", False),
    (re.compile(r"^model\.hc_head\.(fn|base|scale)$"), r"hc_head_\1", False),
    (re.compile(r"^model\.layers\.(\d+)\."), r"layers.\1.", True),
    (re.compile(r"^mtp\.(e_proj|h_proj|enorm|hnorm|norm)\."), r"mtp.0.\1.", False),
    (re.compile(r"^mtp\.hc_head\.(fn|base|scale)$"), r"mtp.0.hc_head_\1", False),
    (re.compile(r"^mtp\.block\."), "mtp.0.", True),
]
_BLOCK: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^input_layernorm\."), "attn_norm."),
    (re.compile(r"^post_attention_layernorm\."), "ffn_norm."),
    (re.compile(r"^(attn|ffn)_hc\.(fn|base|scale)$"), r"hc_\1_\2"),
    (re.compile(r"^self_attn\.sinks$"), "attn.attn_sink"),
    (re.compile(r"^self_attn\.q_a_proj\."), "attn.wq_a."),
    (re.compile(r"^self_attn\.q_a_norm\."), "attn.q_norm."),
    (re.compile(r"^self_attn\.q_b_proj\."), "attn.wq_b."),
    (re.compile(r"^self_attn\.kv_proj\."), "attn.wkv."),
    (re.compile(r"^self_attn\.kv_norm\."), "attn.kv_norm."),
    (re.compile(r"^self_attn\.o_a_proj\."), "attn.wo_a."),
    (re.compile(r"^self_attn\.o_b_proj\."), "attn.wo_b."),
    (re.compile(r"^self_attn\.(indexer\.)?compressor\.kv_proj\."), r"attn.\1compressor.wkv."),
    (re.compile(r"^self_attn\.(indexer\.)?compressor\.gate_proj\."), r"attn.\1compressor.wgate."),
    (re.compile(r"^self_attn\.(indexer\.)?compressor\.kv_norm\."), r"attn.\1compressor.norm."),
    (re.compile(r"^self_attn\.(indexer\.)?compressor\.position_bias$"), r"attn.\1compressor.ape"),
    (re.compile(r"^self_attn\.indexer\.q_b_proj\."), "attn.indexer.wq_b."),
    (re.compile(r"^self_attn\.indexer\.weights_proj\."), "attn.indexer.weights_proj."),
    (re.compile(r"^mlp\.gate\.weight$"), "ffn.gate.weight"),
    (re.compile(r"^mlp\.gate\.e_score_correction_bias$"), "ffn.gate.bias"),
    (re.compile(r"^mlp\.gate\.tid2eid$"), "ffn.gate.tid2eid"),
    (re.compile(r"^mlp\.switch_mlp\.gate_proj\."), "ffn.experts.{e}.w1."),
    (re.compile(r"^mlp\.switch_mlp\.up_proj\."), "ffn.experts.{e}.w3."),
    (re.compile(r"^mlp\.switch_mlp\.down_proj\."), "ffn.experts.{e}.w2."),
    (re.compile(r"^mlp\.shared_experts\.gate_proj\."), "ffn.shared_experts.w1."),
    (re.compile(r"^mlp\.shared_experts\.up_proj\."), "ffn.shared_experts.w3."),
    (re.compile(r"^mlp\.shared_experts\.down_proj\."), "ffn.shared_experts.w2."),
]
_FLOAT32 = re.compile(r"(hc_(attn|ffn|head)_(fn|base|scale)|attn_sink|\.ape|ffn\.gate\.bias)$")


def official_v4_name(key: str) -> str:
    """One internal V4 path -> its official name; stacked experts keep an `{e}` slot to fill."""
    # a block path no block rule names matches no later top rule either (the top rules are disjoint)
    name = rename_by_tables(key, _TOP, _BLOCK, strict=True)
    if name is not None:
        return name
    raise ConversionError(f"{key}: no official DeepSeek-V4 name for this parameter (export_v4 knows V4 + MTP only)")


def to_official_v4(model) -> "OrderedDict[str, mx.array]":
    """Official V4 names -> arrays in the release's dtypes, sorted; experts split one matrix per expert."""
    out: dict[str, mx.array] = {}
    for key, w in tree_flatten(model.parameters()):
        if key.endswith(".scales"):
            raise ConversionError(f"cannot export a quantized model ({key}); export the float model instead")
        name = official_v4_name(key)
        if "{e}" in name:  # (E, out, in) -> one (out, in) matrix per expert
            out.update({name.format(e=e): w[e] for e in range(w.shape[0])})
        else:
            out[name] = w
    typed = {k: v if v.dtype == mx.int32 else v.astype(mx.float32 if _FLOAT32.search(k) else mx.bfloat16)
             for k, v in out.items()}
    return OrderedDict(sorted(typed.items()))
