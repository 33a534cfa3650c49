"""A tiny DeepSeek-V4.1 folder in the official layout: composite config.json, DeepSeek's key names
(`layers.N.attn.wq_a.weight`, `ffn.experts.E.w1.weight`, `hc_attn_fn`, ...), the Engram tables in shards of
their own, keys the text model ignores (vision, `gate.bias_vl`, a DSpark `mtp.0.*`), and a 256-token
tokenizer whose ids pair up in the compressed vocabulary ("wK" and "WK")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from engram_fixture import engram_config, write_st, write_tables
from mlx.utils import tree_flatten

from mlxseek.config import ModelConfig

_RENAMES = [
    (r"^model\.embed_tokens\.", "embed."), (r"^lm_head\.", "head."), (r"^model\.norm\.", "norm."),
    (r"^model\.layers\.", "layers."), (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."), (r"\.(attn|ffn)_hc\.(fn|base|scale)$", r".hc_\1_\2"),
    (r"\.self_attn\.sinks$", ".attn.attn_sink"), (r"\.self_attn\.compressor\.kv_proj\.", ".attn.compressor.wkv."),
    (r"\.self_attn\.compressor\.gate_proj\.", ".attn.compressor.wgate."),
    (r"\.self_attn\.compressor\.kv_norm\.", ".attn.compressor.norm."),
    (r"\.self_attn\.indexer\.q_b_proj\.", ".attn.indexer.wq_b."), (r"\.self_attn\.indexer\.k_proj\.", ".attn.indexer.wk."),
    (r"\.self_attn\.indexer\.", ".attn.indexer."), (r"\.self_attn\.q_a_proj\.", ".attn.wq_a."),
    (r"\.self_attn\.q_a_norm\.", ".attn.q_norm."), (r"\.self_attn\.q_b_proj\.", ".attn.wq_b."),
    (r"\.self_attn\.kv_proj\.", ".attn.wkv."), (r"\.self_attn\.kv_norm\.", ".attn.kv_norm."),
    (r"\.self_attn\.o_a_proj\.", ".attn.wo_a."), (r"\.self_attn\.o_b_proj\.", ".attn.wo_b."),
    (r"\.mlp\.gate\.e_score_correction_bias$", ".ffn.gate.bias"), (r"\.mlp\.gate\.", ".ffn.gate."),
    (r"\.mlp\.shared_experts\.gate_proj\.", ".ffn.shared_experts.w1."),
    (r"\.mlp\.shared_experts\.up_proj\.", ".ffn.shared_experts.w3."),
    (r"\.mlp\.shared_experts\.down_proj\.", ".ffn.shared_experts.w2."),
]
_EXPERT = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def write_tokenizer(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    words = {(f"w{i // 2}" if i % 2 == 0 else f"W{i // 2}"): i for i in range(vocab)}
    Tokenizer(WordLevel(words, unk_token="w0")).save(str(folder / "tokenizer.json"))


def write_official(folder: Path, model, base: dict) -> ModelConfig:
    """`model`: our V41Model (or anything with our parameter names) holding the weights to write."""
    folder.mkdir(parents=True, exist_ok=True)
    text = {**engram_config(base), "engram_compressed_vocab_size": base["vocab_size"] // 2}
    cfg = ModelConfig.from_dict(text)
    tensors = {}
    for name, p in tree_flatten(model.parameters()):
        a = np.array(p, dtype=np.float32)
        m = re.match(r"model\.layers\.(\d+)\.mlp\.switch_mlp\.(\w+)\.weight$", name)
        if m:
            for e in range(a.shape[0]):
                tensors[f"layers.{m[1]}.ffn.experts.{e}.{_EXPERT[m[2]]}.weight"] = a[e]
            continue
        for pat, repl in _RENAMES:
            name = re.sub(pat, repl, name)
        tensors[name] = a
    tensors["layers.3.ffn.gate.bias_vl"] = np.zeros(base["n_routed_experts"], np.float32)
    tensors["vision.patch_embed.weight"] = np.zeros((4, 4), np.float32)
    tensors["mtp.0.main_proj.weight"] = np.zeros((4, 4), np.float32)
    write_st(folder / "model-00001-of-00002.safetensors",
             {k: ("F32", v, v.shape) for k, v in tensors.items()})
    sources = write_tables(folder, cfg)
    shards = {k: "model-00001-of-00002.safetensors" for k in tensors}
    for s in sources:
        shards[s.weight_key] = shards[s.scale_key] = s.path.name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    composite = {"model_type": "deepseek_v41", "architectures": ["DeepseekV41ForCausalLM"],
                 "text_config": {k: v for k, v in text.items() if k != "model_type"},
                 "vision_config": {"hidden_size": 16}, "image_token_id": base["vocab_size"] - 1}
    (folder / "config.json").write_text(json.dumps(composite))
    write_tokenizer(folder, base["vocab_size"])
    return cfg
