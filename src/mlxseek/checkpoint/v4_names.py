"""DeepSeek-V4's official tensor names (DeepSeek-V4 `inference/model.py`, the released shards) -> mlxseek's
internal paths: the rename half of the key map (`keymap`), for V4 and the DSpark releases (0731, 0813).
"""

from __future__ import annotations

import re

SCALE_SUFFIX = "_scale_inv"  # V3's FP8 scale suffix; V4's `X.scale` is renamed to it

# ---- DeepSeek-V4: official names (DeepSeek-V4 inference/model.py, the released shards) -> mlxseek paths.
# A key first matches one top-level rule (first match wins); block rules (third field True) then rename
# the rest of the key with V4_BLOCK_RENAMES. Quantization scales `X.scale` become `X.weight_scale_inv`
# first (mHC scales are spelled `hc_*_scale`, without the dot), so the FP8 rules below serve V4 too.
V4_TOP_RENAMES: list[tuple[re.Pattern, str, bool]] = [
    (re.compile(r"^embed\.weight$"), "model.embed_tokens.weight", False),
    (re.compile(r"^head\.weight$"), "lm_head.weight", False),
    (re.compile(r"^norm\.weight$"), "model.norm.weight", False),
    (re.compile(r"^hc_head_(fn|base|scale)$"), r"model.hc_head.\1", False),
    (re.compile(r"^layers\.(\d+)\."), r"model.layers.\1.", True),
    (re.compile(r"^mtp\.0\.(e_proj|h_proj|enorm|hnorm|norm)\."), r"mtp.\1.", False),
    (re.compile(r"^mtp\.0\.hc_head_(fn|base|scale)$"), r"mtp.hc_head.\1", False),
    (re.compile(r"^mtp\.0\."), "mtp.block.", True),
]
# DSpark releases (V4-Flash-0731, V4-Pro-0813, V4-Flash-DSpark) store their drafter under the same `mtp.`
# prefix, one `mtp.{s}.` per stage, so the table is picked by config.json (`dspark_target_layer_ids`).
DSPARK_TOP_RENAMES: list[tuple[re.Pattern, str, bool]] = [
    *V4_TOP_RENAMES[:5],
    (re.compile(r"^mtp\.\d+\.(main_proj|main_norm|norm|markov_head|confidence_head)\."), r"dspark.\1.", False),
    (re.compile(r"^mtp\.\d+\.hc_head_(fn|base|scale)$"), r"dspark.hc_head.\1", False),
    (re.compile(r"^mtp\.(\d+)\."), r"dspark.stages.\1.", True),
]
V4_BLOCK_RENAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^attn_norm\."), "input_layernorm."),
    (re.compile(r"^ffn_norm\."), "post_attention_layernorm."),
    (re.compile(r"^hc_(attn|ffn)_(fn|base|scale)$"), r"\1_hc.\2"),
    (re.compile(r"^attn\.attn_sink$"), "self_attn.sinks"),
    (re.compile(r"^attn\.wq_a\."), "self_attn.q_a_proj."),
    (re.compile(r"^attn\.q_norm\."), "self_attn.q_a_norm."),
    (re.compile(r"^attn\.wq_b\."), "self_attn.q_b_proj."),
    (re.compile(r"^attn\.wkv\."), "self_attn.kv_proj."),
    (re.compile(r"^attn\.kv_norm\."), "self_attn.kv_norm."),
    (re.compile(r"^attn\.wo_a\."), "self_attn.o_a_proj."),
    (re.compile(r"^attn\.wo_b\."), "self_attn.o_b_proj."),
    (re.compile(r"^attn\.(indexer\.)?compressor\.wkv\."), r"self_attn.\1compressor.kv_proj."),
    (re.compile(r"^attn\.(indexer\.)?compressor\.wgate\."), r"self_attn.\1compressor.gate_proj."),
    (re.compile(r"^attn\.(indexer\.)?compressor\.norm\."), r"self_attn.\1compressor.kv_norm."),
    (re.compile(r"^attn\.(indexer\.)?compressor\.ape$"), r"self_attn.\1compressor.position_bias"),
    (re.compile(r"^attn\.indexer\.wq_b\."), "self_attn.indexer.q_b_proj."),
    (re.compile(r"^attn\.indexer\.weights_proj\."), "self_attn.indexer.weights_proj."),
    (re.compile(r"^attn\.indexer\.wk\."), "self_attn.indexer.k_proj."),  # V4.1: keys from the KV source's latent
    (re.compile(r"^attn\.indexer\.k_norm\."), "self_attn.indexer.k_norm."),
    (re.compile(r"^ffn\.gate\.weight$"), "mlp.gate.weight"),
    (re.compile(r"^ffn\.gate\.bias$"), "mlp.gate.e_score_correction_bias"),
    (re.compile(r"^ffn\.gate\.tid2eid$"), "mlp.gate.tid2eid"),
    (re.compile(r"^ffn\.experts\.(\d+)\.w1\."), r"mlp.experts.\1.gate_proj."),
    (re.compile(r"^ffn\.experts\.(\d+)\.w3\."), r"mlp.experts.\1.up_proj."),
    (re.compile(r"^ffn\.experts\.(\d+)\.w2\."), r"mlp.experts.\1.down_proj."),
    (re.compile(r"^ffn\.shared_experts\.w1\."), "mlp.shared_experts.gate_proj."),
    (re.compile(r"^ffn\.shared_experts\.w3\."), "mlp.shared_experts.up_proj."),
    (re.compile(r"^ffn\.shared_experts\.w2\."), "mlp.shared_experts.down_proj."),
]


def v4_rename(key: str, dspark: bool = False) -> str:
    """One official V4 key -> its mlxseek path; unknown keys pass through (and are reported unused)."""
    key = re.sub(r"\.scale$", "." + "weight" + SCALE_SUFFIX, key)
    renamed = rename_by_tables(key, DSPARK_TOP_RENAMES if dspark else V4_TOP_RENAMES, V4_BLOCK_RENAMES)
    return key if renamed is None else renamed


def rename_by_tables(key: str, top: list, block: list, *, strict: bool = False) -> str | None:
    """Two-level renaming (this file's tables and export_v4's inverse ones): the first top rule `key` matches
    renames its head; after a block rule the first block rule matching the rest renames it (none matching:
    the rest is kept, or None when strict). None when no top rule matches."""
    for pat, repl, is_block in top:
        m = pat.match(key)
        if not m:
            continue
        head, rest = m.expand(repl), key[m.end():]
        if is_block:
            for bpat, brepl in block:
                if bpat.match(rest):
                    return head + bpat.sub(brepl, rest, count=1)
            if strict:
                return None
        return head + rest
    return None


def official_v4_key(key: str, dspark: bool = False) -> str:
    """A V4-family checkpoint key -> its mlxseek path: official names renamed, converted paths kept."""
    return key if is_internal(key, dspark) else v4_rename(key, dspark)


def is_internal(key: str, dspark: bool = False) -> bool:
    """Already an mlxseek path (a converted folder). Official V4 names never start like this, and
    renaming again would turn the mHC `model.hc_head.scale` into an FP8 scale. In a DSpark release every
    `mtp.{s}.` key is official (its converted paths start with `dspark.`)."""
    if key.startswith(("model.", "lm_head.", "dspark.")):
        return True
    return not dspark and key.startswith("mtp.") and not key.startswith("mtp.0.")


