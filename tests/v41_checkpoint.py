"""A tiny DeepSeek-V4.1 folder in the official layout: composite config.json, DeepSeek's key names
(`layers.N.attn.wq_a.weight`, `ffn.experts.E.w1.weight`, `hc_attn_fn`, ...), the Engram tables in shards of
their own, keys the text model ignores (vision, `gate.bias_vl`, an `mtp.0.*` config.json does not describe),
the DSpark drafter under `mtp.{s}.*` when the model carries one, and a 256-token
tokenizer whose ids pair up in the compressed vocabulary ("wK" and "WK")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
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
_DTYPE = {("f", False): "F32", ("u", False): "F8_E4M3", ("u", True): "F8_E8M0", ("i", False): "I8"}


def write_tokenizer(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from tokenizers.pre_tokenizers import WhitespaceSplit

    words = {(f"w{i // 2}" if i % 2 == 0 else f"W{i // 2}"): i for i in range(vocab)}
    tok = Tokenizer(WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


# As DeepSeek ships V4.1: FP8 e4m3 in 32x32 blocks with ue8m0 scales for these, FP4 routed experts.
_FP8 = re.compile(r"\.(attn\.(wq_a|wq_b|wkv|wo_a|wo_b)|ffn\.shared_experts\.w[123])\.weight$")
QUANT = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [32, 32]}


def fp8_32(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, N) float32 -> (e4m3 bytes, ue8m0 scale bytes per 32x32 block, the exact dequantized values)."""
    M, N = a.shape
    b = a.reshape(M // 32, 32, N // 32, 32)
    scale = 2.0 ** np.ceil(np.log2(np.maximum(np.abs(b).max(axis=(1, 3)), 1e-12) / 448.0))
    q = mx.to_fp8(mx.array((b / scale[:, None, :, None]).astype(np.float32)))
    deq = np.array(mx.from_fp8(q, mx.float32)) * scale[:, None, :, None]
    return np.array(q).reshape(M, N), (np.log2(scale) + 127).astype(np.uint8), deq.reshape(M, N)


def fp4_experts(a: np.ndarray) -> tuple[list, list, np.ndarray]:
    """(E, M, N) -> per expert (e2m1 bytes (M, N/2), e8m0 scales (M, N/32)), and the dequantized stack."""
    ws, ss, deq = [], [], []
    for e in range(a.shape[0]):
        w, s = mx.quantize(mx.array(a[e]), group_size=32, bits=4, mode="mxfp4")
        ws.append(np.array(w.view(mx.uint8)).view(np.int8))
        ss.append(np.array(s))
        deq.append(np.array(mx.dequantize(w, s, None, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)))
    return ws, ss, np.stack(deq)


def _drafter_as_layer(name: str, stages: int) -> str:
    """Our `dspark.*` paths -> `model.layers.mtpS.*` (renamed with the block rules, then to `mtp.S.*`): the
    official layout stores stage s under `mtp.{s}.`, main_proj / main_norm with stage 0 and the head parts
    (norm, markov_head.{embed,head}, confidence_head) with the last stage."""
    m = re.match(r"^dspark\.stages\.(\d+)\.(.*)$", name)
    if m:
        return f"model.layers.mtp{m[1]}.{m[2]}"
    if name.startswith("dspark.main_"):
        return "layers.mtp0." + name[len("dspark."):]
    if name.startswith("dspark."):
        return f"layers.mtp{stages - 1}." + name[len("dspark."):]
    return name


def write_official(folder: Path, model, base: dict, *, quantized: bool = False, drop: tuple = ()) -> ModelConfig:
    """`model`: our V41Model (or anything with our parameter names) holding the weights to write.
    quantized: store FP8 32x32 / FP4 experts, and load the dequantized values back into `model`."""
    folder.mkdir(parents=True, exist_ok=True)
    text = {**engram_config(base), "engram_compressed_vocab_size": base["vocab_size"] // 2}
    if quantized:
        text.update(quantization_config=QUANT, expert_dtype="fp4")
    cfg = ModelConfig.from_dict(text)
    tensors, exact = {}, []
    stages = len(model.dspark.stages) if "dspark" in model else 0
    for name, p in tree_flatten(model.parameters()):
        a = np.array(p, dtype=np.float32)
        ours, name = name, _drafter_as_layer(name, stages)
        m = re.match(r"model\.layers\.([\w]+)\.mlp\.switch_mlp\.(\w+)\.weight$", name)
        if m:
            key = f"layers.{m[1]}.ffn.experts.{{}}.{_EXPERT[m[2]]}"
            if quantized:
                ws, ss, deq = fp4_experts(a)
                exact.append((ours, deq))
                for e in range(a.shape[0]):
                    tensors[key.format(e) + ".weight"], tensors[key.format(e) + ".scale"] = ws[e], ss[e]
                continue
            for e in range(a.shape[0]):
                tensors[key.format(e) + ".weight"] = a[e]
            continue
        for pat, repl in _RENAMES:
            name = re.sub(pat, repl, name)
        if quantized and _FP8.search(name):
            q, s, deq = fp8_32(a)
            tensors[name], tensors[name.removesuffix("weight") + "scale"] = q, s
            exact.append((ours, deq.reshape(np.array(p).shape)))
            continue
        tensors[name] = a
    tensors = {re.sub(r"^layers\.mtp(\d+)\.", r"mtp.\1.", k): v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if k not in drop}  # a partial checkpoint
    tensors["layers.3.ffn.gate.bias_vl"] = np.zeros(base["n_routed_experts"], np.float32)
    tensors["vision.patch_embed.weight"] = np.zeros((4, 4), np.float32)
    if not stages:  # a drafter config.json does not describe: ignored on load
        tensors["mtp.0.main_proj.weight"] = np.zeros((4, 4), np.float32)
    write_st(folder / "model-00001-of-00002.safetensors", {k: (_DTYPE[(v.dtype.kind, k.endswith(".scale"))], v, v.shape)
                                                          for k, v in tensors.items()})
    if exact:
        model.load_weights([(k, mx.array(v.astype(np.float32))) for k, v in exact], strict=False)
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
